"""Evaluators for benchmarks and tests (``module:function`` form, importable on every worker)."""
from __future__ import annotations

import time
from typing import Dict

import torch

__all__ = ["noop", "sleep_half_second", "sleep", "fixed_work", "TINY_ARCH", "TINY_IMG",
           "make_tiny_checkpoint", "make_tiny_predictor"]


def noop(model: torch.nn.Module) -> Dict[str, float]:
    """No work: a metric derived from the config only, to measure the search loop's own overhead."""
    flat = [r for s in model.sparsity for r in s]
    return {"miou": 1.0 - sum(flat) / max(1, len(flat))}


def sleep(model: torch.nn.Module, seconds: float = 0.5) -> Dict[str, float]:
    """Sleep ``seconds`` (an evaluator of fixed cost), then :func:`noop`'s metric."""
    time.sleep(seconds)
    return noop(model)


def sleep_half_second(model: torch.nn.Module) -> Dict[str, float]:
    """:func:`sleep` for 0.5 s: the 1 -> 2 worker scaling benchmark's evaluator."""
    return sleep(model, 0.5)


def fixed_work(model: torch.nn.Module, repeats: int = 10) -> Dict[str, float]:
    """Run ``repeats`` dense-size forwards of the model on one fixed image (torch compute, fixed cost)."""
    x = torch.zeros(1, 3, 112, 112)
    with torch.inference_mode():
        for _ in range(repeats):
            model(x)
    return noop(model)


TINY_ARCH = {"timm_name": "swin_tiny_patch4_window7_224",
             "timm_kwargs": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
             "head_dim": 16, "num_classes": 11}
TINY_IMG = 112
TINY_RATIOS = (0.0, 0.2, 0.4, 0.6)  # the test search space; its top ratio is the "sparsest" config below


def make_tiny_checkpoint(folder, seed: int = 0):
    """A randomly initialised tiny SegSupernet (embed_dim 16, 112 px) saved as a real checkpoint."""
    from pathlib import Path

    from supernet.checkpoint import save_checkpoint
    from supernet.seg import SegSupernet

    torch.manual_seed(seed)
    model = SegSupernet.from_timm(TINY_ARCH["timm_name"], img_size=TINY_IMG, num_classes=11, head_dim=16,
                                  **TINY_ARCH["timm_kwargs"])
    path = Path(folder) / "tiny.safetensors"
    save_checkpoint(model, path, arch=TINY_ARCH, img_size=TINY_IMG, num_classes=11,
                    dataset={"img_size": TINY_IMG, "max_items": 4, "min_scale": 20, "max_scale": 48})
    return path


def make_tiny_predictor(folder, checkpoint, *, attempts: int = 4):
    """Profile the tiny checkpoint on this CPU (seconds) and save the predictor JSON.

    The tiny model's blocks take tens of microseconds, so a profile taken while the machine is busy can order
    configs wrongly. The profile is repeated (with twice the repeats each time) until the sparsest config of
    the test space (``TINY_RATIOS[-1]`` everywhere) and the next uniform one (``TINY_RATIOS[-2]``) are both
    predicted below 0.9 of dense, so that latency budgets of 0.9 of dense admit uniform configs besides the
    sparsest (measured quiet: about 0.74 and 0.86).

    Raises:
        RuntimeError: still not ordered after ``attempts`` profiles (the machine is too busy to time).
    """
    from pathlib import Path

    import numpy as np

    from latency.predictor import Predictor
    from latency.profiler import profile, save
    from supernet.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    out = Path(folder) / "tiny_latency.json"  # written once, by the attempt that orders the configs
    depths = TINY_ARCH["timm_kwargs"]["depths"]
    ratio = np.inf
    for attempt in range(attempts):
        table = profile(model, TINY_IMG, threads=1, warmup=1, repeats=2 << attempt, calib_configs=8,
                        progress=False, checkpoint_sha256=meta["weights_sha256"], model_arch=meta["arch"])
        dense, sparsest, next_one = Predictor(table).predict([[[0.0] * d for d in depths],
                                                              [[TINY_RATIOS[-1]] * d for d in depths],
                                                              [[TINY_RATIOS[-2]] * d for d in depths]])
        ratio = float(max(sparsest, next_one) / dense)
        if ratio < 0.9:
            save(table, out)
            return out
    raise RuntimeError(f"the tiny model's profile predicts its two sparsest uniform configs at up to {ratio:.2f} of "
                       f"dense after {attempts} profiles: the machine is too busy to time it")
