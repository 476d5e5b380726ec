"""Shared fixtures for end-to-end tests: a tiny supernet checkpoint, its latency predictor, a spec."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

TINY_ARCH = {"timm_name": "swin_tiny_patch4_window7_224",
             "timm_kwargs": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
             "head_dim": 16, "num_classes": 11}
TINY_IMG = 112


def make_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny SegSupernet saved as a real checkpoint (weights + sidecar)."""
    from supernet.checkpoint import save_checkpoint
    from supernet.seg import SegSupernet

    torch.manual_seed(seed)
    kw = dict(TINY_ARCH["timm_kwargs"])
    model = SegSupernet.from_timm(TINY_ARCH["timm_name"], img_size=TINY_IMG, num_classes=11, head_dim=16, **kw)
    path = folder / "tiny.safetensors"
    save_checkpoint(model, path, arch=TINY_ARCH, img_size=TINY_IMG, num_classes=11,
                    dataset={"img_size": TINY_IMG, "max_items": 4, "min_scale": 20, "max_scale": 48})
    return path


def make_tiny_predictor(folder: Path, checkpoint: Path) -> Path:
    """Profile the tiny checkpoint (seconds) and save the predictor JSON."""
    from latency.profiler import profile, save
    from supernet.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    table = profile(model, TINY_IMG, threads=1, warmup=1, repeats=2, calib_configs=8, progress=False,
                    checkpoint_sha256=meta["weights_sha256"], model_arch=meta["arch"])
    out = folder / "tiny_latency.json"
    save(table, out)
    return out


def write_spec(folder: Path, checkpoint: Path, predictor: Path, *, name="tiny", n_trials=24, sampler="nsga2",
               population=8, budget_line="budget_fraction = 0.8", workers=2, extra="") -> Path:
    spec = folder / f"{name}.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "{name}"
        output_dir = "{folder / ('exp_' + name)}"
        seed = 0
        n_trials = {n_trials}

        [supernet]
        checkpoint = "{checkpoint}"

        [latency]
        predictor = "{predictor}"
        {budget_line}

        [evaluator]
        subset_size = 4
        batch_size = 4

        [space]
        ratios = [0.0, 0.2, 0.4, 0.6]

        [sampler]
        name = "{sampler}"
        population_size = {population}

        [workers]
        num_workers = {workers}
        max_retries = 1
        """) + extra)
    return spec
