"""Re-score dense checkpoints side by side on the same validation canvases, in several canvas layouts.

A training run scores its checkpoint on its own ``[data]`` layout; the targets of RESULTS.md R1 are on the default
task (224 px, 1-8 items, 256 canvases of seed ``DEFAULT_VAL_SEED``) and on the search's 448 px scenes. This script
puts any checkpoints on those canvases, paired (same canvases for every checkpoint), densely.

Usage:
    python experiments/fashion_mosaic/rescore.py NAME=X.safetensors [NAME=Y.safetensors ...] [--length 256]
        [--layout default=224:1:8] [--layout train=224:2:10] [--layout scenes=448:2:8] [--threads 2]
        [--seed 12345] [--out results/rescored.json] [--json]

A layout is ``NAME=SIZE:MIN_ITEMS:MAX_ITEMS``; the rest of the canvas spec (item sizes, threshold) follows the
checkpoint's dataset, as the search's evaluator builds it (:func:`search.evaluators.mosaic_spec`). ``--seed`` draws
another canvas set (default: the targets' ``DEFAULT_VAL_SEED``), to see how far a figure moves with the canvases.
Prints one line per checkpoint and layout: mIoU, item-pixel class accuracy, pixel accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEFAULT_LAYOUTS = ["default=224:1:8", "train=224:2:10", "scenes=448:2:8"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", metavar="NAME=X.safetensors")
    p.add_argument("--layout", action="append", default=None, metavar="NAME=SIZE:MIN:MAX")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=None, help="canvas seed (default: the val seed of the targets)")
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from search.evaluators import mosaic_spec
    from supernet.checkpoint import load_checkpoint
    from supernet.evaluate import DEFAULT_VAL_SEED, evaluate_config
    from supernet.fileio import atomic_write_json

    torch.set_num_threads(a.threads)
    seed = DEFAULT_VAL_SEED if a.seed is None else a.seed
    layouts = {}
    for item in a.layout or DEFAULT_LAYOUTS:
        name, _, rest = item.partition("=")
        size, lo, hi = (int(v) for v in rest.split(":"))
        layouts[name] = (size, lo, hi)
    out = {"length": a.length, "seed": seed, "layouts": {k: list(v) for k, v in layouts.items()},
           "checkpoints": {}}
    for item in a.checkpoints:
        name, _, path = item.partition("=")
        row = {"file": path}
        models = {size: load_checkpoint(path, img_size=size) for size in {v[0] for v in layouts.values()}}
        for lay, (size, lo, hi) in layouts.items():
            model, meta = models[size]  # one load per canvas size, not per layout
            spec = mosaic_spec(meta, size, {"min_items": lo, "max_items": hi})
            r = evaluate_config(model, None, length=a.length, batch_size=8 if size > 224 else 16, spec=spec,
                                seed=seed)
            row[lay] = {k: float(r[k]) for k in ("miou", "item_class_acc", "pixel_acc")}
            if not a.json:
                print(f"{name:>12} {lay:>8} ({size} px, {lo}-{hi} items): mIoU {r['miou']:.4f}  item-pixel class acc "
                      f"{r['item_class_acc']:.3f}  pixel acc {r['pixel_acc']:.3f}", flush=True)
        out["checkpoints"][name] = row
    if a.out:
        atomic_write_json(Path(a.out), out)
    if a.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
