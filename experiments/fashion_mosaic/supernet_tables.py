"""Tables of the full recipe's trained models, read from their checkpoint sidecars (no re-evaluation).

Every ``sparsesearch supernet train`` run records in its JSON sidecar the val mIoU of the dense
config and of uniform sparsity 0.3 / 0.5 / 0.7 on stages 0-2 (SparseViT, arXiv 2303.17605, Sec. 3.2:
the last stage is never pruned), the retention (mIoU at ratio / dense mIoU of the same model) and the
training time. This script puts them side by side:

* **adaptation** - the dense checkpoint (``supernet_dense.toml``), the same checkpoint trained further
  densely (``supernet_denseonly.toml``), with the reference's random per-stage configs
  (``supernet.toml``) and with sandwich sampling (``supernet_sandwich.toml``), same steps and canvases;
  "what adaptation buys" is the mIoU at each ratio minus the dense-only model's;
* **baselines** - reduced width (0.5x / 0.75x embed_dim) and reduced input resolution (160 / 192 px),
  each trained the same way (same phases, canvases and steps) and evaluated densely on the same
  224 px validation canvases; params and analytic MACs (``supernet.macs.count_macs``) from the weights.

Usage:
    python experiments/fashion_mosaic/supernet_tables.py [--runs runs/full] \
        [--out experiments/fashion_mosaic/results] [--json]

Writes ``supernet_full.json`` and ``supernet_full.md`` under ``--out``. Missing runs are listed as
missing, not invented.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ADAPTATION = [("dense checkpoint (supernet_dense.toml)", "dense"),
              ("+ dense-only training (supernet_denseonly.toml)", "denseonly"),
              ("+ reference adaptation (supernet.toml)", "supernet"),
              ("+ sandwich adaptation (supernet_sandwich.toml)", "sandwich")]
BASELINES = [("width 0.75x (baseline_w075.toml)", "baseline_w075"),
             ("width 0.5x (baseline_w050.toml)", "baseline_w050"),
             ("input 192 px (baseline_r192.toml)", "baseline_r192"),
             ("input 160 px (baseline_r160.toml)", "baseline_r160")]
RATIOS = ("0.3", "0.5", "0.7")


def read_run(runs: Path, stem: str) -> Optional[Dict[str, Any]]:
    """The sidecar of ``runs/STEM.json`` reduced to the table's fields, or None if absent / unfinished."""
    path = runs / f"{stem}.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    m = meta.get("metrics")
    if not m or not (meta.get("training") or {}).get("complete", True):
        return None
    seconds = float(m["train"]["seconds"])
    init = ((meta.get("training") or {}).get("config") or {}).get("model", {}).get("init")
    if init:  # the adaptation variants continue the dense checkpoint: count its training time too
        parent = read_run(Path(init).parent, Path(init).stem)
        seconds += parent["train_seconds"] if parent else 0.0
    row = {"run": stem, "sidecar": str(path), "train_seconds": seconds, "val_canvases": m["length"],
           "dense_miou": m["dense"]["miou"], "dense_pixel_acc": m["dense"]["pixel_acc"],
           "uniform": {r: m["uniform"][r]["miou"] for r in RATIOS if r in m.get("uniform", {})},
           "sampling": meta["training"]["config"]["train"]["sampling"],
           "embed_dim": meta["arch"]["timm_kwargs"]["embed_dim"],
           "input_size": (meta.get("arch") or {}).get("input_size") or meta["img_size"]}
    row["retention"] = {r: v / row["dense_miou"] for r, v in row["uniform"].items()}
    return row


def model_cost(runs: Path, stem: str) -> Dict[str, int]:
    """Params and dense analytic MACs per image of ``runs/STEM.safetensors`` at its own input size."""
    from supernet.checkpoint import load_checkpoint
    from supernet.macs import count_macs

    model, _ = load_checkpoint(runs / f"{stem}.safetensors")
    return {"params": int(sum(p.numel() for p in model.parameters())),
            "macs": int(count_macs(model, model.backbone.img_size))}


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/full", help="folder of the recipes' checkpoints and sidecars")
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    runs = Path(a.runs)
    out: Dict[str, Any] = {"runs": str(runs), "adaptation": [], "baselines": [], "missing": []}
    for section, items in (("adaptation", ADAPTATION), ("baselines", BASELINES)):
        for label, stem in items:
            row = read_run(runs, stem)
            if row is None:
                out["missing"].append(stem)
                continue
            row["label"] = label
            row.update(model_cost(runs, stem))
            out[section].append(row)
    ref = next((r for r in out["adaptation"] if r["run"] == "denseonly"), None)
    for r in out["adaptation"]:
        if ref is not None:
            r["gain_vs_denseonly"] = {k: v - ref["uniform"][k] for k, v in r["uniform"].items() if k in ref["uniform"]}

    md: List[str] = ["| model | train (min) | dense mIoU | uniform 0.3 | uniform 0.5 | uniform 0.7 | "
                     "retention 0.3 / 0.5 / 0.7 |", "|---|---|---|---|---|---|---|"]
    for r in out["adaptation"]:
        cells = [f"{r['uniform'][k]:.4f}" if k in r["uniform"] else "-" for k in RATIOS]
        ret = " / ".join(f"{r['retention'][k]:.3f}" for k in RATIOS if k in r["retention"])
        md.append(f"| {r['label']} | {r['train_seconds'] / 60:.1f} | {r['dense_miou']:.4f} | " + " | ".join(cells)
                  + f" | {ret} |")
    if ref is not None:
        md += ["", "What adaptation buys (mIoU at the ratio minus the dense-only model's, same canvases):", "",
               "| model | 0.3 | 0.5 | 0.7 | dense |", "|---|---|---|---|---|"]
        for r in out["adaptation"]:
            if r["run"] in ("supernet", "sandwich"):
                g = r["gain_vs_denseonly"]
                md.append(f"| {r['label']} | " + " | ".join(f"{g[k]:+.4f}" for k in RATIOS if k in g)
                          + f" | {r['dense_miou'] - ref['dense_miou']:+.4f} |")
    if out["baselines"]:
        md += ["", "| baseline (run densely) | train (min) | dense mIoU | params (M) | GMACs |", "|---|---|---|---|---|"]
        full = [r for r in out["adaptation"] if r["run"] == "denseonly"] or out["adaptation"][:1]
        for r in full + out["baselines"]:  # the full-width 224 px model trained for the same steps first
            md.append(f"| {r['label']} | {r['train_seconds'] / 60:.1f} | {r['dense_miou']:.4f} | "
                      f"{r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.3f} |")
    if out["missing"]:
        md += ["", "Not trained yet: " + ", ".join(out["missing"])]
    od = Path(a.out)
    od.mkdir(parents=True, exist_ok=True)
    (od / "supernet_full.json").write_text(json.dumps(out, indent=1) + "\n")
    (od / "supernet_full.md").write_text("\n".join(md) + "\n")
    print(json.dumps(out) if a.json else "\n".join(md))
    return out


if __name__ == "__main__":
    main()
