"""DIMAP vs uniform and global magnitude pruning on the Fashion-mosaic supernet, no fine-tuning.

The paper's Table 3 order (ImageNet): at 38 % and 50 % of the prunable weights removed, DIMAP keeps
far more accuracy than uniform per-layer magnitude pruning. Here: mIoU of the dense supernet
(all activation ratios 0) after pruning qkv + proj + fc1 + fc2 at each ratio with each method.

With several ``--seeds`` (disjoint sets of ``--length`` validation canvases) every set is scored paired (the same
canvases for the dense model and every pruned one) and the table gives the mean over sets, with each method's paired
loss against DIMAP (mean +- std over sets, in mIoU points): the noise a one-set table cannot show.

Usage:
    python experiments/fashion_mosaic/dimap_vs_magnitude.py --checkpoint runs/quick/supernet.safetensors \
        [--ratios 0.19 0.28 0.38 0.5] [--length 96] [--seeds 12345 1001 ...] [--out experiments/fashion_mosaic] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.19, 0.28, 0.38, 0.5])
    p.add_argument("--length", type=int, default=96, help="validation canvases")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="validation canvas sets (default: the standard one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from search.evaluators import FashionMosaicEvaluator
    from supernet import dimap
    from supernet.checkpoint import load_checkpoint
    from supernet.evaluate import DEFAULT_VAL_SEED

    torch.set_num_threads(a.threads)
    model, meta = load_checkpoint(a.checkpoint)
    model.eval()
    seeds = a.seeds or [DEFAULT_VAL_SEED]
    evs = [FashionMosaicEvaluator(subset_size=a.length, batch_size=16, split="val", mosaic=meta.get("dataset"),
                                  seed=s) for s in seeds]
    backup = dimap.dense_backup(model)
    dense_sets = [ev(model)["miou"] for ev in evs]
    methods = {
        "dimap": lambda r: dimap.dimap_masks(model, ratio=r),
        "uniform magnitude": lambda r: dimap.magnitude_masks(model, ratio=r, scope="uniform"),
        "global magnitude": lambda r: dimap.magnitude_masks(model, ratio=r, scope="global"),
    }
    rows = []
    for r in a.ratios:
        per_set = {}
        for name, make in methods.items():
            masks = make(r)
            dimap.apply_masks(model, masks).remove()
            per_set[name] = [ev(model)["miou"] for ev in evs]
            dimap.restore(model, backup)
        row = {"ratio": r, **{k: float(np.mean(v)) for k, v in per_set.items()}}
        if len(seeds) > 1:
            row["per_set"] = per_set
            for k in ("uniform magnitude", "global magnitude"):  # paired, per set, in mIoU points
                d = 100 * (np.array(per_set["dimap"]) - np.array(per_set[k]))
                row[f"dimap minus {k}"] = {"mean": float(d.mean()), "std": float(d.std(ddof=1)),
                                           "sets_above": int((d > 0).sum())}
        rows.append(row)
    dense = float(np.mean(dense_sets))
    out = {"checkpoint": str(a.checkpoint), "dense_miou": dense, "canvases": a.length, "seeds": seeds,
           "dense_per_set": dense_sets, "rows": rows}
    what = f"{a.length} val canvases" if len(seeds) == 1 else f"mean of {len(seeds)} sets of {a.length} val canvases"
    lines = [f"Dense mIoU {dense:.4f} ({what}); prunable = qkv + proj + fc1 + fc2 weights; no fine-tuning.", ""]
    if len(seeds) == 1:
        lines += ["| weights removed | DIMAP | uniform magnitude | global magnitude |", "|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['ratio'] * 100:.0f} % | {row['dimap']:.4f} | {row['uniform magnitude']:.4f} | "
                         f"{row['global magnitude']:.4f} |")
    else:
        lines += ["| weights removed | DIMAP | uniform magnitude (DIMAP's margin, points) | "
                  "global magnitude (DIMAP's margin, points) |", "|---|---|---|---|"]
        n = len(seeds)
        for row in rows:
            cell = [f"{row[k]:.4f} ({row['dimap minus ' + k]['mean']:+.2f} +- {row['dimap minus ' + k]['std']:.2f}, "
                    f"{row['dimap minus ' + k]['sets_above']}/{n} sets)" for k in ("uniform magnitude", "global magnitude")]
            lines.append(f"| {row['ratio'] * 100:.0f} % | {row['dimap']:.4f} | {cell[0]} | {cell[1]} |")
    table = "\n".join(lines)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "dimap_vs_magnitude.json").write_text(json.dumps(out, indent=1))
    (Path(a.out) / "dimap_vs_magnitude.md").write_text(table + "\n")
    print(json.dumps(out) if a.json else table)


if __name__ == "__main__":
    main()
