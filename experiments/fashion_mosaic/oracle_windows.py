"""Where does a supernet lose mIoU under window pruning: the window ranking, or the pruned computation itself?

For each uniform ratio r on stages 0-2 (the reference table's configs), one row per window ranking on the same
val canvases, the same k windows kept per block:

* ``magnitude``: SparseViT's token importance, mean |x| (Sec. 3.1);
* ``centred``: mean |x - mean token| (``supernet.sparse_swin.token_importance``);
* ``oracle``: tokens ranked by their share of item pixels (the label map area-pooled to the block's
  resolution): the best any activation-based ranking could pick;

each with the item coverage of the kept windows per stage (share of item pixels inside the kept windows of
the stage's first block).

If ``oracle`` retention is far above a criterion's, that criterion is the bottleneck (it keeps background
windows); if all are low, pruning item windows is unavoidable at that k (items touch more windows than are
kept) or the pass-through features are.

    python experiments/fashion_mosaic/oracle_windows.py --checkpoint experiments/fashion_mosaic/weights/supernet.safetensors \
        --length 256 --json > experiments/fashion_mosaic/results/window_ranking.json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

from supernet import sparse_swin
from supernet.checkpoint import load_checkpoint
from supernet.data import MosaicSpec, make_loader
from supernet.evaluate import DEFAULT_VAL_SEED, REFERENCE_RATIOS, uniform_config
from supernet.metrics import SegMetric

_rank = sparse_swin.rank_windows


RANKINGS = ("magnitude", "centred", "oracle")


class _Probe:
    """Replaces ``sparse_swin.rank_windows`` during one batch: ranks by item share (oracle) or by the model's
    importance, and records the item mass of every window in ranking order for coverage."""

    def __init__(self) -> None:
        self.item_mask: torch.Tensor | None = None  # (B, Hi, Wi) float 0/1 at input resolution
        self.oracle = False
        self.records: List[tuple] = []  # (H, shifted, masses in ranking order (B, nW))

    def __call__(self, importance: torch.Tensor, blk) -> torch.Tensor:
        B, H, W = importance.shape
        share = F.adaptive_avg_pool2d(self.item_mask[:, None], (H, W))[:, 0]  # (B, H, W) item share per token
        order = _rank(share if self.oracle else importance, blk)
        tokens = sparse_swin._window_tokens(H, W, blk, share.device)  # (nW, N)
        mass = share.reshape(B, -1)[:, tokens].sum(-1)  # (B, nW)
        self.records.append((H, any(blk.shift_size), torch.gather(mass, 1, order)))
        return order


def run(checkpoint: str, length: int, batch_size: int, ratios, rankings=RANKINGS) -> Dict:
    """Rows ``{"ratio", "ranking", "miou", "pixel_acc", "retention", "item_coverage": {stage px: share}}``."""
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    spec = MosaicSpec.from_dataset(meta.get("dataset"))
    depths = tuple(model.depths)
    loader = list(make_loader("val", length=length, batch_size=batch_size, spec=spec, seed=DEFAULT_VAL_SEED))
    probe = _Probe()
    sparse_swin.rank_windows = probe
    own = model.backbone.window_importance
    out: Dict = {"checkpoint": checkpoint, "adapted_with": own, "length": length, "img_size": spec.img_size,
                 "rows": []}
    try:
        for r in (0.0,) + tuple(ratios):
            for ranking in ((own,) if r == 0 else rankings):
                model.set_sparsity(uniform_config(depths, r))
                metric = SegMetric(model.num_classes)
                cover: Dict[int, List[float]] = {}
                probe.oracle = ranking == "oracle"
                if ranking != "oracle":
                    model.backbone.window_importance = ranking
                with torch.inference_mode():
                    for images, labels in loader:
                        probe.item_mask = (labels > 0).float()
                        probe.records = []
                        metric.update(model(images), labels)
                        for H, shifted, mass in probe.records:
                            if shifted:
                                continue
                            k = sparse_swin.keep_count(mass.shape[1], r)
                            tot = mass.sum(1).clamp_min(1e-9)
                            cover.setdefault(H, []).append(float((mass[:, :k].sum(1) / tot).mean()))
                m = metric.compute()
                out["rows"].append({"ratio": r, "ranking": "dense" if r == 0 else ranking,
                                    "miou": float(m["miou"]), "pixel_acc": float(m["pixel_acc"]),
                                    "item_coverage": {str(H): sum(v) / len(v) for H, v in sorted(cover.items(), reverse=True)}})
    finally:
        sparse_swin.rank_windows = _rank
        model.backbone.window_importance = own
    dense = out["rows"][0]["miou"]
    for row in out["rows"]:
        row["retention"] = row["miou"] / dense if dense > 0 else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="experiments/fashion_mosaic/weights/supernet.safetensors")
    p.add_argument("--length", type=int, default=128, help="val canvases")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=list(REFERENCE_RATIOS))
    p.add_argument("--rankings", nargs="+", choices=RANKINGS, default=list(RANKINGS))
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    out = run(a.checkpoint, a.length, a.batch_size, a.ratios, a.rankings)
    if a.json:
        json.dump(out, sys.stdout)
        print()
    else:
        for row in out["rows"]:
            cov = " ".join(f"{H}px:{c:.2f}" for H, c in row["item_coverage"].items())
            print(f"r={row['ratio']:.1f} {row['ranking']:<9} mIoU {row['miou']:.4f} retention {row['retention']:.3f}  "
                  f"item coverage by stage resolution {cov}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
