"""Learning curve of a training run from its checkpoint sidecar (``training.history``: one entry per epoch).

    python experiments/fashion_mosaic/plot_training.py runs/task/dense.safetensors \
        [--out experiments/fashion_mosaic/results/task_dense_curve.png] [--json]

Plots the per-epoch validation mIoU and item-pixel class accuracy (``[train] val_each_epoch``) against the
training canvases seen, with the training loss; writes the PNG and a JSON of the curve beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def curve(checkpoint: Path) -> dict:
    """``{"epochs", "canvases", "seconds", "loss", "miou", "item_class_acc"}`` lists from the sidecar."""
    from supernet.checkpoint import read_sidecar

    hist = (read_sidecar(checkpoint).get("training") or {}).get("history") or []
    out = {k: [] for k in ("epochs", "canvases", "seconds", "loss", "miou", "item_class_acc", "phase")}
    seen = secs = 0.0
    for h in hist:
        seen += h.get("canvases", 0)
        secs += h.get("seconds", 0.0)
        v = h.get("val_dense") or {}
        out["epochs"].append(h["epoch"])
        out["canvases"].append(int(seen))
        out["seconds"].append(secs)
        out["loss"].append(h.get("loss"))
        out["miou"].append(v.get("miou"))
        out["item_class_acc"].append(v.get("item_class_acc"))
        out["phase"].append(h.get("phase"))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/fashion_mosaic/results/task_dense_curve.png")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    c = curve(a.checkpoint)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    k = [x / 1e3 for x in c["canvases"]]
    ax.plot(k, c["miou"], label="val mIoU (64 canvases)", color="tab:blue")
    ax.plot(k, c["item_class_acc"], label="val item-pixel class accuracy", color="tab:red")
    ax.set_xlabel("training canvases (thousands)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(k, c["loss"], color="0.6", lw=1, label="training loss")
    ax2.set_ylabel("training loss")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    ax.set_title(f"{a.checkpoint.name}: {len(c['epochs'])} epochs, {c['seconds'][-1] / 3600:.2f} h" if c["epochs"] else "")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out)
    plt.close(fig)
    a.out.with_suffix(".json").write_text(json.dumps(c))
    print(json.dumps({"plot": str(a.out), "epochs": len(c["epochs"]), "last": {k: v[-1] for k, v in c.items() if v}})
          if a.json else f"{a.out} ({len(c['epochs'])} epochs)")
    return c


if __name__ == "__main__":
    main()
