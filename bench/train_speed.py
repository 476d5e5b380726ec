"""Benchmark: training canvases/s of the task model before and after the speed levers, 1 and 2 threads.

Settings (one optimizer step = forward + backward + AdamW on a batch of 224 px FashionMosaic canvases, the
task model: Swin embed_dim 32, depths 2-2-6-2, FPN-lite head):

- ``before``: float32, the loss on logits upsampled to 224 x 224 (the previous recipe);
- ``bf16``: bfloat16 autocast of forward and backward (AMX / AVX-512 BF16 on this CPU);
- ``after``: bf16 + the loss at the head's 1/4 resolution against soft targets (no upsampling),
  item-weighted CE + the per-item loss (the recipe's loss);

each at 1 and 2 torch threads. Measured side by side: ``--rounds`` rounds, every round runs ``--steps``
timed steps of every setting in a fresh random order (after warm-up steps), so a machine that changes speed
affects every setting alike; the ratio to ``before`` at 1 thread is the median over rounds of the per-round
ratios. Writes bench/results/train_speed.json and prints a one-line summary.

Usage: python bench/train_speed.py [--rounds 5] [--steps 6] [--batch 16] [--json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._result import write_result  # noqa: E402

SETTINGS = {
    "before": dict(bf16=False, loss=None),
    "bf16": dict(bf16=True, loss=None),
    "after": dict(bf16=True, loss={"kind": "item", "bg_weight": 1.0, "aux_weight": 0.5, "at": "quarter"}),
}


def main(argv=None) -> dict:
    import numpy as np
    import torch

    from supernet.data import FashionMosaic, MosaicSpec
    from supernet.seg import SegSupernet
    from supernet.train import make_optimizer, train_step

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "bench/results/train_speed.json"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    ds = FashionMosaic("train", length=10 ** 6, spec=MosaicSpec(img_size=224, min_items=2, max_items=10), seed=0)
    batches = []
    for i in range(8):
        b = [ds[j] for j in range(i * a.batch, (i + 1) * a.batch)]
        batches.append((torch.stack([x[0] for x in b]), torch.stack([x[1] for x in b])))
    runs = {}
    for name in SETTINGS:
        for threads in (1, 2):
            torch.manual_seed(0)
            model = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=224, num_classes=11, head_dim=64,
                                          embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
            runs[(name, threads)] = {"model": model.train(), "opt": make_optimizer(model, 0.05), "rates": []}
    dense = [[0.0] * d for d in (2, 2, 6, 2)]

    def steps(key, n):
        r = runs[key]
        torch.set_num_threads(key[1])
        s = SETTINGS[key[0]]
        t0 = time.perf_counter()
        for k in range(n):
            x, y = batches[k % len(batches)]
            for g in r["opt"].param_groups:
                g["lr"] = 1e-4
            train_step(r["model"], r["opt"], x, y, [dense], 1.0, None, s["loss"], s["bf16"])
        return n * a.batch / (time.perf_counter() - t0)

    for key in runs:
        steps(key, a.warmup)
    rng = np.random.default_rng(0)
    keys = list(runs)
    for _ in range(a.rounds):
        for i in rng.permutation(len(keys)):
            runs[keys[i]]["rates"].append(steps(keys[i], a.steps))
    base = runs[("before", 1)]["rates"]
    out = {"benchmark": "train_speed", "batch": a.batch, "rounds": a.rounds, "steps": a.steps, "settings": {}}
    for (name, threads), r in runs.items():
        ratio = statistics.median(x / b for x, b in zip(r["rates"], base))
        out["settings"][f"{name}@{threads}"] = {"canvases_per_s": statistics.median(r["rates"]),
                                                "ratio_to_before_1_thread": ratio, "samples": r["rates"]}
    s = out["settings"]
    out["summary"] = (f"train_speed: canvases/s relative to float32 + full-resolution loss at 1 thread: "
                      + ", ".join(f"{k} {v['ratio_to_before_1_thread']:.2f}x" for k, v in s.items())
                      + f" ({s['before@1']['canvases_per_s']:.1f} canvases/s at 1 thread before; side by side, "
                        f"median of {a.rounds} rounds)")
    write_result(out, a.out, a.json)
    return out


if __name__ == "__main__":
    main()
