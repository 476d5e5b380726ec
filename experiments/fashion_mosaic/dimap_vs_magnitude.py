"""DIMAP vs uniform and global magnitude pruning on the Fashion-mosaic supernet, no fine-tuning.

The paper's Table 3 order (ImageNet): at 38 % and 50 % of the prunable weights removed, DIMAP keeps
far more accuracy than uniform per-layer magnitude pruning. Here: mIoU of the dense supernet
(all activation ratios 0) after pruning qkv + proj + fc1 + fc2 at each ratio with each method.

Usage:
    python experiments/fashion_mosaic/dimap_vs_magnitude.py --checkpoint runs/quick/supernet.safetensors \
        [--ratios 0.19 0.28 0.38 0.5] [--length 96] [--out experiments/fashion_mosaic] [--json]
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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch

    from search.evaluators import FashionMosaicEvaluator
    from supernet import dimap
    from supernet.checkpoint import load_checkpoint

    torch.set_num_threads(a.threads)
    model, meta = load_checkpoint(a.checkpoint)
    model.eval()
    ev = FashionMosaicEvaluator(subset_size=a.length, batch_size=16, split="val", mosaic=meta.get("dataset"))
    backup = dimap.dense_backup(model)
    dense = ev(model)["miou"]
    rows = []
    methods = {
        "dimap": lambda r: dimap.dimap_masks(model, ratio=r),
        "uniform magnitude": lambda r: dimap.magnitude_masks(model, ratio=r, scope="uniform"),
        "global magnitude": lambda r: dimap.magnitude_masks(model, ratio=r, scope="global"),
    }
    for r in a.ratios:
        row = {"ratio": r}
        for name, make in methods.items():
            masks = make(r)
            dimap.apply_masks(model, masks).remove()
            row[name] = ev(model)["miou"]
            dimap.restore(model, backup)
        rows.append(row)
    out = {"checkpoint": str(a.checkpoint), "dense_miou": dense, "canvases": a.length, "rows": rows}
    lines = [f"Dense mIoU {dense:.4f} ({a.length} val canvases); prunable = qkv + proj + fc1 + fc2 weights; "
             "no fine-tuning.", "", "| weights removed | DIMAP | uniform magnitude | global magnitude |",
             "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['ratio'] * 100:.0f} % | {row['dimap']:.4f} | {row['uniform magnitude']:.4f} | "
                     f"{row['global magnitude']:.4f} |")
    table = "\n".join(lines)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "dimap_vs_magnitude.json").write_text(json.dumps(out, indent=1))
    (Path(a.out) / "dimap_vs_magnitude.md").write_text(table + "\n")
    print(json.dumps(out) if a.json else table)


if __name__ == "__main__":
    main()
