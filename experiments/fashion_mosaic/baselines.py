"""Searched front vs uniform sparsity vs reduced input resolution vs a narrower model, at measured latency.

SparseViT (arXiv 2303.17605, Sec. 4.4 and Fig. 1) argues that sparse computation on a high-resolution input
beats the same dense model at a reduced resolution, and a narrower model, at equal latency; and that
searched non-uniform sparsity beats uniform sparsity. This script measures that on the fashion-mosaic
task at the search resolution (the shipped supernet's: 448 px sparse scenes):

1. the searched Pareto front of an experiment (``--exp``, with the members of the front ``sparsesearch confirm``
   re-scored: :func:`search.front.front_members`; ``--max-front`` evenly spread members, both ends kept, and every
   member predicted within ``--near`` of a budget line: :func:`pick_front`) and the
   supernet at uniform sparsity 0.3 ... 0.8 (stages 0-2) are re-scored on ``--length`` validation canvases
   (the search scored them on its small subset: re-scoring removes the winner's curse);
2. the supernet run densely on canvases downscaled by ``--scales`` before the backbone (the logits are
   upsampled back: the reduced-resolution baseline), as it is and after a short fine-tune at that size
   (``--finetune-steps`` steps of the dense recipe's loss, ``0`` = none);
3. every ``--baseline NAME=X.safetensors`` (a narrower model trained by the same recipe for the same steps)
   scored densely at the search resolution;
4. the end-to-end latency of every point is measured in one session, drift-corrected as the profiler does
   (every timed run between two runs of the dense supernet, order shuffled per repeat, median of ratios x
   the session's median dense time: :func:`latency.profiler.measure_drift`), batch 1, ``--threads``;
5. comparisons: the best front config at <= 60 % and at <= 50 % of dense measured latency (the median of the
   interleaved dense reference runs, the denominator of every point's ratio) against the best uniform /
   reduced-resolution / narrower point at the same or lower latency: :func:`compare_at_budgets`.

Usage:
    python experiments/fashion_mosaic/baselines.py --checkpoint experiments/fashion_mosaic/weights/supernet.safetensors \
        --exp runs/main/search [--baseline "width 0.75x=runs/task/w24_adapt.safetensors"] [--length 256] \
        [--scales 0.5 0.625 0.75 0.875] [--finetune-steps 150] [--threads 1] [--score-threads 2] [--repeats 11]
        [--out DIR] [--json]
    python experiments/fashion_mosaic/baselines.py --rereport --out DIR   # the comparisons again, from DIR's JSON

Writes ``baselines.json``, ``baselines.md`` and ``baselines.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


BUDGET_FRACTIONS = (0.6, 0.5)  # the comparisons' budget lines, fractions of dense measured latency (issue 14)
MEASUREMENT = ("drift-corrected against the dense supernet, interleaved; budget lines are fractions of the median of "
               "the dense reference runs (dense_measured_ms), the denominator of every latency_ratio")


def pick_front(predicted_ms: List[float], max_front: int, lines_ms: List[float], near: float = 0.1) -> List[int]:
    """Indices of the front members to re-score and measure, in latency order.

    ``max_front`` members evenly spread over the front (by rank in predicted latency, both ends kept when
    ``max_front >= 2``), plus every
    member whose predicted latency lies within ``+-near`` (relative) of a budget line: their measured latency may
    fall either side of it, and the comparison at the line must not depend on which members the even spread hit.

    Args:
        predicted_ms: the front's predicted latencies (ms), shape ``(n,)``, ascending.
        max_front: members of the even spread (>= 1).
        lines_ms: the budget lines in predicted ms (fraction of dense x dense predicted).
        near: relative half-width of the band kept around each line (0.1: the predictor's stated +-10 %).

    Raises:
        ValueError: ``max_front < 1`` or ``near`` not >= 0 (NaN included).
    """
    import numpy as np

    if max_front < 1 or not near >= 0:
        raise ValueError(f"max_front must be >= 1 and near >= 0, got {max_front} and {near}")
    n = len(predicted_ms)
    keep = set(range(n)) if n <= max_front else set(np.round(np.linspace(0, n - 1, max_front)).astype(int).tolist())
    keep |= {i for i, ms in enumerate(predicted_ms) for line in lines_ms if abs(ms - line) <= near * line}
    return sorted(keep)


def reduced_size(img: int, scale: float) -> int:
    """The reduced-resolution input side (px) for a ``scale`` of an ``img`` px canvas, rounded to a multiple of 8."""
    return int(round(scale * img / 8) * 8)


def best_at(points: List[Dict[str, Any]], latency_ms: float) -> Optional[Dict[str, Any]]:
    """The point with the highest mIoU among those measured at or under ``latency_ms``."""
    ok = [p for p in points if p["measured_ms"] <= latency_ms]
    return max(ok, key=lambda p: p["miou"]) if ok else None


class ReducedInput:
    """The reduced-resolution baseline (SparseViT Sec. 4.4): canvases resized to ``size`` px (bilinear,
    antialiased) before the backbone, logits upsampled back to the canvas. The backbone is built for the trained
    size with dynamic input (``strict_img_size=False``), so every window keeps its trained size and the weights
    load unchanged; smaller maps are padded to whole windows as timm pads them.

    Shapes: ``(B, 3, H, W) -> (B, K, H, W)`` logits; :meth:`forward_logits` -> ``(B, K, H / 4, W / 4)``.
    """

    def __init__(self, model, size: int):
        self.model, self.size = model, int(size)
        self.backbone, self.depths, self.num_classes = model.backbone, model.depths, model.num_classes

    def _small(self, x):
        import torch.nn.functional as F

        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def __call__(self, x):
        return self.model.forward_head(self.model.backbone.forward_stages(self._small(x)), out_size=tuple(x.shape[-2:]))

    def forward_logits(self, x):
        H, W = x.shape[-2:]
        return self.model.forward_head(self.model.backbone.forward_stages(self._small(x)), out_size=(H // 4, W // 4))

    def set_sparsity(self, cfg):
        self.model.set_sparsity(cfg)

    @property
    def sparsity(self):
        return self.model.sparsity

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    @property
    def training(self):
        return self.model.training

    def parameters(self):
        return self.model.parameters()

    def macs(self, cfg) -> int:
        from supernet.macs import count_macs

        return int(count_macs(self.model, self.size, ratios=cfg))


def reduced_resolution(checkpoint: Path, img: int, size: int) -> ReducedInput:
    """The checkpoint's model for ``img`` px canvases, run on them resized to ``size`` px."""
    import safetensors.torch

    from supernet.checkpoint import read_sidecar
    from supernet.seg import SegSupernet

    meta = read_sidecar(checkpoint)
    arch = meta["arch"]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in (arch.get("timm_kwargs") or {}).items()}
    model = SegSupernet.from_timm(arch["timm_name"], img_size=img, num_classes=int(meta["num_classes"]),
                                  head_dim=int(arch.get("head_dim", 64)), strict_img_size=False, **kw)
    sd = safetensors.torch.load_file(str(checkpoint))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return ReducedInput(model.eval(), size)


def finetune(net: ReducedInput, spec, steps: int, threads: int, seed: int = 0) -> ReducedInput:
    """A short dense fine-tune at the reduced size: the dense recipe's loss (item-weighted CE + 0.5 per-item
    loss at 1/4 resolution, bf16 autocast), AdamW lr 1e-4 with cosine decay, ``steps`` steps of 8 fresh canvases."""
    import math

    import torch

    from supernet.data import FashionMosaic
    from supernet.losses import seg_loss
    from supernet.train import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    ds = FashionMosaic("train", length=8 * steps, spec=spec, seed=seed + 4242)
    opt = make_optimizer(net.model, 0.05)
    net.model.set_sparsity([[0.0] * d for d in net.depths])
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-4 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        batch = [ds[i] for i in range(8 * step, 8 * step + 8)]
        x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = seg_loss(net, x, y, kind="item", aux_weight=0.5, at="quarter")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.model.parameters(), 1.0)
        opt.step()
    return net.eval()


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="the supernet X.safetensors (required unless --rereport)")
    p.add_argument("--exp", help="the search's experiment directory (required unless --rereport)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=X.safetensors")
    p.add_argument("--length", type=int, default=256, help="validation canvases")
    p.add_argument("--scales", type=float, nargs="*", default=[0.5, 0.625, 0.75, 0.875])
    p.add_argument("--uniform", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--finetune-steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=1, help="threads of the latency measurement (the predictor's)")
    p.add_argument("--score-threads", type=int, default=None,
                   help="threads of the fine-tunes and the mIoU scoring (default: --threads; not timed)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--max-front", type=int, default=12,
                   help="front configs evenly spread over the front (both ends), besides those near a budget line")
    p.add_argument("--near", type=float, default=0.1,
                   help="front configs predicted within this relative distance of a budget line (BUDGET_FRACTIONS) "
                        "are always kept (default 0.1: the predictor's +-10 %%)")
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--rereport", action="store_true",
                   help="re-derive the comparisons, table and plot of --out/baselines.json (no scoring or timing)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.max_front < 1 or not a.near >= 0:  # (a NaN --near is refused too)
        p.error(f"--max-front must be >= 1 and --near >= 0, got {a.max_front} and {a.near}")
    if a.rereport:
        src = Path(a.out) / "baselines.json"
        try:
            out = rereport(Path(a.out))
        except FileNotFoundError:
            p.error(f"{src} not found: run baselines.py with --checkpoint and --exp first, or pass its --out")
        except OSError as e:
            p.error(f"{src} cannot be read ({e.strerror}); fix: pass the --out folder of a baselines.py run")
        except (ValueError, KeyError, TypeError) as e:
            p.error(f"{src} is not a baselines result ({type(e).__name__}: {e}); fix: run baselines.py again")
        print(json.dumps({k: v for k, v in out.items() if k != "points"}, default=str) if a.json
              else (Path(a.out) / "baselines.md").read_text())
        return out
    if not a.checkpoint or not a.exp:
        p.error("--checkpoint and --exp are required (or --rereport)")

    import torch

    from latency.profiler import _make_input, measure_drift
    from search.front import front_members, read_confirmed
    from search.runner import load_frozen_spec
    from search.trial_log import final_trials, load_trials
    from supernet.checkpoint import load_checkpoint
    from supernet.evaluate import evaluate_config, uniform_config
    from supernet.macs import count_macs

    prev_threads = torch.get_num_threads()
    score_threads = a.score_threads or a.threads
    torch.set_num_threads(score_threads)
    t0 = time.perf_counter()
    frozen, sspec = load_frozen_spec(Path(a.exp))
    img = int(frozen["search_img_size"][0])
    model, meta = load_checkpoint(a.checkpoint, img_size=img)
    from search.evaluators import mosaic_spec

    spec = mosaic_spec(meta, img, dict(sspec.evaluator.mosaic))
    depths = list(model.depths)
    metric = frozen["spec"]["objectives"]["metric"]
    fin = final_trials(load_trials(a.exp))
    front_df = front_members(fin, metric, maximize=sspec.objectives.metric_direction == "maximize",
                             confirmed=read_confirmed(Path(a.exp)))
    lines = [f * float(frozen["dense_predicted_ms"]) for f in BUDGET_FRACTIONS] if "dense_predicted_ms" in frozen else []
    front_df = front_df.iloc[pick_front(front_df["predicted_latency_ms"].tolist(), a.max_front, lines,
                                        a.near)].reset_index(drop=True)

    points: List[Dict[str, Any]] = []
    dense_cfg = [[0.0] * d for d in depths]
    points.append({"kind": "dense", "name": "dense", "model": model, "config": dense_cfg})
    for r in a.uniform:
        points.append({"kind": "uniform", "name": f"uniform {r:g}", "model": model, "config": uniform_config(depths, r)})
    for row in front_df.to_dict("records"):
        points.append({"kind": "front", "name": f"front trial {int(row['trial_number'])}", "model": model,
                       "config": json.loads(row["config"]), "search_metric": float(row[metric])})
    for f in a.scales:
        size = reduced_size(img, f)
        points.append({"kind": "resolution", "name": f"{size} px input ({f:g}x)", "model":
                       reduced_resolution(Path(a.checkpoint), img, size), "config": dense_cfg, "scale": f})
        if a.finetune_steps > 0:
            ft = finetune(reduced_resolution(Path(a.checkpoint), img, size), spec, a.finetune_steps, score_threads)
            points.append({"kind": "resolution_ft", "name": f"{size} px input ({f:g}x), fine-tuned {a.finetune_steps} steps",
                           "model": ft, "config": dense_cfg, "scale": f})
    for item in a.baseline:
        name, _, path = item.partition("=")
        bm, _ = load_checkpoint(path, img_size=img)
        points.append({"kind": "narrow", "name": name, "model": bm, "config": [[0.0] * d for d in bm.depths],
                       "checkpoint": str(path)})
    for pt in points:
        res = evaluate_config(pt["model"], pt["config"], length=a.length, batch_size=8, spec=spec)
        pt.update(miou=res["miou"], pixel_acc=res["pixel_acc"], item_class_acc=res["item_class_acc"])
        pt["macs"] = pt["model"].macs(pt["config"]) if hasattr(pt["model"], "macs") else int(
            count_macs(pt["model"], img, ratios=pt["config"]))
        pt["params"] = int(sum(q.numel() for q in pt["model"].parameters()))
    torch.set_num_threads(a.threads)
    x = _make_input(1, (img, img), 0, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        for pt in points:
            pt["model"].eval()

        def setter(pt):
            return lambda: pt["model"].set_sparsity(pt["config"])

        meas = measure_drift([(setter(pt), (lambda pt=pt: pt["model"](x))) for pt in points],
                             (lambda: model.set_sparsity(dense_cfg), lambda: model(x)), warmup=3, repeats=a.repeats,
                             progress=not a.json, desc="measuring every point")
    dense = points[0]
    for pt, ms, ratio in zip(points, meas.ms, meas.ratio):
        pt["measured_ms"], pt["latency_ratio"] = float(ms), float(ratio)
    for pt in points:
        pt["miou_retention"] = pt["miou"] / dense["miou"] if dense["miou"] > 0 else float("nan")
    rows = [{k: v for k, v in pt.items() if k != "model"} for pt in points]
    dms = float(meas.reference_ms)
    out = {"targets": compare_at_budgets(rows, dms), "checkpoint": str(a.checkpoint), "exp": str(a.exp),
           "metric": metric, "length": a.length, "threads": a.threads, "score_threads": score_threads,
           "repeats": a.repeats, "img_size": img, "canvases": spec.model_dump(mode="json"), "dense_measured_ms": dms,
           "dense_point_ms": dense["measured_ms"], "points": rows, "seconds": time.perf_counter() - t0,
           "measurement": MEASUREMENT}
    md = write_report(out, Path(a.out))
    print(json.dumps({k: v for k, v in out.items() if k != "points"}, default=str) if a.json else "\n".join(md))
    torch.set_num_threads(prev_threads)
    return out


def compare_at_budgets(rows: List[Dict[str, Any]], dense_ms: float) -> Dict[str, Any]:
    """The issue-14 comparisons: at each budget line ``frac * dense_ms`` (``BUDGET_FRACTIONS``), the best front point
    measured at or under it against the best point of every baseline kind at or under it.

    Args:
        rows: the measured points (``kind``, ``name``, ``miou``, ``miou_retention``, ``measured_ms``).
        dense_ms: the dense model's measured latency (ms): the median of the interleaved dense reference runs, so a
            point's ``measured_ms / dense_ms`` is its ``latency_ratio``.

    Returns:
        ``{"0.60": {"budget_ms", "front", "front_miou", "front_retention", "front_ms", <kind>: {name, miou,
        measured_ms} | None, "front_minus_<kind>_points": float | None, ...}, "0.50": ...}`` (mIoU points = 100 x
        the difference).
    """
    front = [pt for pt in rows if pt["kind"] == "front"]
    targets = {}
    for frac in BUDGET_FRACTIONS:
        f = best_at(front, frac * dense_ms)
        row = {"budget_ms": frac * dense_ms, "front": f and f["name"], "front_miou": f and f["miou"],
               "front_retention": f and f["miou_retention"], "front_ms": f and f["measured_ms"]}
        for kind in ("uniform", "resolution", "resolution_ft", "narrow"):
            b = best_at([q for q in rows if q["kind"] == kind], frac * dense_ms)
            row[kind] = b and {"name": b["name"], "miou": b["miou"], "measured_ms": b["measured_ms"]}
            row[f"front_minus_{kind}_points"] = (100 * (f["miou"] - b["miou"])) if (f and b) else None
        targets[f"{frac:.2f}"] = row
    return targets


def write_report(out: Dict[str, Any], od: Path) -> List[str]:
    """Write ``baselines.json``, ``baselines.md`` and ``baselines.png`` of a result under ``od``; the markdown lines.
    The table is built before anything is written (a result it cannot tabulate leaves the files as they were)."""
    rows, targets = out["points"], out["targets"]
    md = [f"| point | mIoU ({out['length']} val canvases, {out['img_size']} px) | retention | item-pixel class acc | "
          f"measured ms (batch 1, {out['threads']} thr) | latency / dense | GMACs |", "|---|---|---|---|---|---|---|"]
    for pt in sorted(rows, key=lambda r: (r["kind"] != "dense", r["measured_ms"])):
        cfg = f" `{json.dumps(pt['config'])}`" if pt["kind"] == "front" else ""
        md.append(f"| {pt['kind']}: {pt['name']}{cfg} | {pt['miou']:.4f} | {pt['miou_retention']:.3f} | "
                  f"{pt['item_class_acc']:.3f} | {pt['measured_ms']:.2f} | {pt['latency_ratio']:.3f} | {pt['macs'] / 1e9:.3f} |")
    md += ["", f"Dense: {out['dense_measured_ms']:.2f} ms (median of the interleaved dense reference runs; budget lines "
           "are fractions of it).", "",
           "| budget (of dense measured) | best front | vs uniform | vs reduced resolution | vs reduced resolution, "
           "fine-tuned | vs narrower |", "|---|---|---|---|---|---|"]
    for frac, t in targets.items():
        def cell(kind):
            b = t[kind]
            return f"{b['name']}: {b['miou']:.4f} ({t[f'front_minus_{kind}_points']:+.1f} pts)" if b and t["front"] \
                else ("none that fast" if not b else "-")
        fr = f"{t['front']}: {t['front_miou']:.4f} ({t['front_retention']:.1%} of dense)" if t["front"] else "none"
        md.append(f"| {float(frac):.0%} | {fr} | {cell('uniform')} | {cell('resolution')} | {cell('resolution_ft')} | "
                  f"{cell('narrow')} |")
    od.mkdir(parents=True, exist_ok=True)
    (od / "baselines.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (od / "baselines.md").write_text("\n".join(md) + "\n")
    _plot(rows, od / "baselines.png", out["dense_measured_ms"])
    return md


def rereport(od: Path) -> Dict[str, Any]:
    """Re-derive the comparisons, table and plot of ``od/baselines.json`` under the current rules, from its measured
    points (no scoring or timing): the dense time is the reference median, ``measured_ms / latency_ratio``.

    Raises:
        OSError: ``od/baselines.json`` missing or unreadable.
        ValueError: not a baselines result (not JSON, no dense point, a point without a positive ``measured_ms`` /
            ``latency_ratio``).
    """
    import statistics

    out = json.loads((Path(od) / "baselines.json").read_text())
    rows = out.get("points") if isinstance(out, dict) else None
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) and r[k] > 0
                                        for k in ("measured_ms", "latency_ratio", "macs")) for r in rows):
        raise ValueError("no list of measured points (measured_ms, latency_ratio, macs > 0)")
    dense = next((r for r in rows if r.get("kind") == "dense"), None)
    if dense is None:
        raise ValueError("no dense point")
    dms = statistics.median(r["measured_ms"] / r["latency_ratio"] for r in rows)
    out.update(dense_measured_ms=dms, dense_point_ms=dense["measured_ms"], targets=compare_at_budgets(rows, dms),
               measurement=MEASUREMENT)
    write_report(out, Path(od))
    return out


def _plot(rows: List[Dict[str, Any]], path: Path, dense_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    style = {"front": ("tab:blue", "o", "searched front"), "uniform": ("tab:orange", "s", "uniform sparsity"),
             "resolution": ("tab:green", "v", "reduced resolution"),
             "resolution_ft": ("tab:olive", "^", "reduced resolution, fine-tuned"),
             "narrow": ("tab:red", "D", "narrower model"), "dense": ("k", "*", "dense")}
    for kind, (c, m, label) in style.items():
        pts = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["measured_ms"])
        if pts:
            ax.plot([r["measured_ms"] for r in pts], [r["miou"] for r in pts], marker=m, color=c, ms=6,
                    ls="-" if kind in ("front", "uniform", "resolution", "resolution_ft") else "none", label=label)
    for frac, ls in zip(BUDGET_FRACTIONS, (":", "--", "-.")):
        ax.axvline(frac * dense_ms, color="grey", ls=ls, lw=1, label=f"{frac:.0%} of dense")
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
