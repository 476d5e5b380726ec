"""Searched front vs uniform sparsity vs reduced width vs reduced input resolution, at measured latency.

SparseViT (arXiv 2303.17605, Sec. 4.4 and Fig. 1) compares its searched non-uniform window sparsity
with uniform sparsity, with a narrower model and with a lower input resolution, at equal latency.
This script does the same on the fashion-mosaic task:

1. the searched Pareto front of an experiment (every non-dominated config, all latencies) and the
   dense / uniform 0.3 / 0.5 / 0.7 configs of the same supernet are re-scored on ``--length``
   validation canvases (the search scores them on a small subset; re-scoring on a larger set
   removes the winner's curse of picking configs that were lucky on the subset);
2. every baseline checkpoint (``--baseline NAME=X.safetensors``: e.g. 0.5x / 0.75x embed_dim, or
   160 / 192 px input, trained with the same recipe) is scored densely on the same canvases;
3. the end-to-end latency of every point is *measured* in one session, interleaved (every repeat
   times each point once, in a fresh random order), batch 1, ``--threads`` threads, median of
   ``--repeats``: all points share the machine's state, so their ratios are comparable;
4. for each uniform and baseline point, the best front config at the same or lower measured latency
   is named, with the mIoU difference.

Usage:
    python experiments/fashion_mosaic/baselines.py --checkpoint runs/full/supernet.safetensors \
        --exp runs/full/search --baseline "width 0.5x=runs/full/w050.safetensors" \
        [--length 256] [--threads 1] [--repeats 15] [--out experiments/fashion_mosaic/results] [--json]

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


def measure_points(points: List[Dict[str, Any]], img_size: int, threads: int, repeats: int, warmup: int = 3,
                   seed: int = 0) -> List[float]:
    """Median end-to-end ms (batch 1) of every ``{"model", "config"}`` point, interleaved over repeats."""
    import numpy as np
    import torch

    from latency.profiler import _time_ms

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    samples: List[List[float]] = [[] for _ in points]
    try:
        with torch.inference_mode():
            for p in points:
                p["model"].eval()
            for _ in range(warmup):
                for p in points:
                    p["model"].set_sparsity(p["config"])
                    p["model"](x)
            for _ in range(repeats):
                for i in rng.permutation(len(points)):
                    p = points[i]
                    p["model"].set_sparsity(p["config"])
                    samples[i].append(_time_ms(lambda: p["model"](x), lambda: None))
    finally:
        torch.set_num_threads(prev)
    return [float(np.median(s)) for s in samples]


def best_front_at(front: List[Dict[str, Any]], latency_ms: float) -> Optional[Dict[str, Any]]:
    """The front point with the highest mIoU among those measured at or under ``latency_ms``."""
    ok = [p for p in front if p["measured_ms"] <= latency_ms]
    return max(ok, key=lambda p: p["miou"]) if ok else None


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the supernet X.safetensors")
    p.add_argument("--exp", required=True, help="the search's experiment directory")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=X.safetensors")
    p.add_argument("--length", type=int, default=256, help="validation canvases")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--budget-fraction", type=float, default=0.6,
                   help="report the best front config measured at <= this fraction of dense latency (ratio 0..1)")
    p.add_argument("--max-front", type=int, default=12, help="front configs kept (evenly spread in latency)")
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from search.pareto import pareto_front
    from search.trial_log import final_trials, load_trials
    from supernet.checkpoint import load_checkpoint
    from supernet.data import MosaicSpec
    from supernet.evaluate import evaluate_config, uniform_config
    from supernet.macs import count_macs

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, meta = load_checkpoint(a.checkpoint)
    ds = meta.get("dataset") or {}
    spec = MosaicSpec(**{k: ds[k] for k in MosaicSpec.model_fields if k in ds and k != "data_dir"})
    img = spec.img_size
    depths = list(model.depths)
    frozen = json.loads((Path(a.exp) / "experiment.json").read_text())
    metric = frozen["spec"]["objectives"]["metric"]
    fin = final_trials(load_trials(a.exp))
    front_df = pareto_front(fin, ((metric, "max"), ("predicted_latency_ms", "min")))
    front_df = front_df.sort_values("predicted_latency_ms").reset_index(drop=True)
    if len(front_df) > a.max_front:  # evenly spread over the latency range, both ends kept
        idx = np.unique(np.round(np.linspace(0, len(front_df) - 1, a.max_front)).astype(int))
        front_df = front_df.iloc[idx].reset_index(drop=True)

    def score(m, cfg):
        return evaluate_config(m, cfg, length=a.length, batch_size=16, spec=spec)

    points: List[Dict[str, Any]] = []
    dense_cfg = [[0.0] * d for d in depths]
    points.append({"kind": "dense", "name": "dense", "model": model, "config": dense_cfg})
    for r in (0.3, 0.5, 0.7):
        points.append({"kind": "uniform", "name": f"uniform {r:g}", "model": model, "config": uniform_config(depths, r)})
    for row in front_df.to_dict("records"):
        points.append({"kind": "front", "name": f"front trial {int(row['trial_number'])}", "model": model,
                       "config": json.loads(row["config"]), "search_metric": float(row[metric])})
    for item in a.baseline:
        name, _, path = item.partition("=")
        bm, bmeta = load_checkpoint(path)
        if (bmeta.get("img_size") or img) != img:
            raise SystemExit(f"error: baseline {path} takes {bmeta.get('img_size')} px canvases, the supernet {img}; "
                             "fix: train the baseline on the same canvases (use [model] input_size for a lower resolution)")
        points.append({"kind": "baseline", "name": name, "model": bm, "config": [[0.0] * d for d in bm.depths],
                       "checkpoint": str(path)})
    for pt in points:
        res = score(pt["model"], pt["config"])
        pt["miou"], pt["pixel_acc"] = res["miou"], res["pixel_acc"]
        bb = pt["model"].backbone
        pt["macs"] = int(count_macs(pt["model"], bb.img_size, ratios=pt["config"]))
        pt["params"] = int(sum(q.numel() for q in pt["model"].parameters()))
    lat = measure_points(points, img, a.threads, a.repeats)
    for pt, ms in zip(points, lat):
        pt["measured_ms"] = ms
    dense = points[0]
    for pt in points:
        pt["latency_ratio"] = pt["measured_ms"] / dense["measured_ms"]
        pt["miou_retention"] = pt["miou"] / dense["miou"] if dense["miou"] > 0 else float("nan")
    front = [pt for pt in points if pt["kind"] == "front"]
    # the front re-scored on the larger set: keep its non-dominated part at measured latency
    comparisons = []
    for pt in points:
        if pt["kind"] in ("uniform", "baseline"):
            best = best_front_at(front, pt["measured_ms"])
            comparisons.append({"point": pt["name"], "miou": pt["miou"], "measured_ms": pt["measured_ms"],
                                "front": best["name"] if best else None,
                                "front_miou": best["miou"] if best else None,
                                "front_ms": best["measured_ms"] if best else None,
                                "front_wins": bool(best and best["miou"] >= pt["miou"])})
    # the target: the best front config measured at <= 60 % of dense latency vs dense mIoU
    at = best_front_at(front, a.budget_fraction * dense["measured_ms"])
    at_budget = {"budget_fraction": a.budget_fraction, "budget_ms": a.budget_fraction * dense["measured_ms"],
                 "front": at["name"] if at else None, "miou": at["miou"] if at else None,
                 "measured_ms": at["measured_ms"] if at else None,
                 "retention": at["miou_retention"] if at else None}
    rows = [{k: v for k, v in pt.items() if k != "model"} for pt in points]
    out = {"at_budget": at_budget, "checkpoint": str(a.checkpoint), "exp": str(a.exp), "metric": metric, "length": a.length,
           "threads": a.threads, "repeats": a.repeats, "img_size": img, "points": rows, "comparisons": comparisons,
           "seconds": time.perf_counter() - t0}
    od = Path(a.out)
    od.mkdir(parents=True, exist_ok=True)
    (od / "baselines.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [f"| point | mIoU ({a.length} val canvases) | retention | measured ms (batch 1, {a.threads} thr) | latency / dense | GMACs | params (M) |",
          "|---|---|---|---|---|---|---|"]
    for pt in rows:
        cfg = f" `{json.dumps(pt['config'])}`" if pt["kind"] == "front" else ""
        md.append(f"| {pt['name']}{cfg} | {pt['miou']:.4f} | {pt['miou_retention']:.3f} | {pt['measured_ms']:.2f} | "
                  f"{pt['latency_ratio']:.2f} | {pt['macs'] / 1e9:.3f} | {pt['params'] / 1e6:.2f} |")
    md += ["", "| point | its mIoU @ ms | best front config at <= its latency | front mIoU @ ms | front wins |",
           "|---|---|---|---|---|"]
    for c in comparisons:
        fr = f"{c['front_miou']:.4f} @ {c['front_ms']:.2f}" if c["front"] else "none that fast"
        md.append(f"| {c['point']} | {c['miou']:.4f} @ {c['measured_ms']:.2f} | {c['front'] or '-'} | {fr} | "
                  f"{'yes' if c['front_wins'] else 'no'} |")
    if at:
        md += ["", f"Best front config at <= {a.budget_fraction:.0%} of dense measured latency: {at['name']}, "
               f"mIoU {at['miou']:.4f} at {at['measured_ms']:.2f} ms = {at['miou_retention']:.1%} of dense mIoU."]
    else:
        md += ["", f"No front config measured at <= {a.budget_fraction:.0%} of dense latency."]
    (od / "baselines.md").write_text("\n".join(md) + "\n")
    _plot(rows, od / "baselines.png", dense["measured_ms"])
    if a.json:
        print(json.dumps(out))
    else:
        print("\n".join(md))
        wins = sum(c["front_wins"] for c in comparisons)
        print(f"front wins {wins}/{len(comparisons)} comparisons at equal or lower measured latency -> {od}/baselines.md")
    torch.set_num_threads(prev_threads)
    return out


def _plot(rows: List[Dict[str, Any]], path: Path, dense_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fr = sorted((r for r in rows if r["kind"] == "front"), key=lambda r: r["measured_ms"])
    ax.plot([r["measured_ms"] for r in fr], [r["miou"] for r in fr], "o-", color="tab:blue", label="searched front")
    style = {"dense": ("k", "*"), "uniform": ("tab:orange", "s"), "baseline": ("tab:red", "^")}
    for r in rows:
        if r["kind"] in style:
            c, m = style[r["kind"]]
            ax.scatter([r["measured_ms"]], [r["miou"]], color=c, marker=m, s=60, zorder=3)
            ax.annotate(r["name"], (r["measured_ms"], r["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(0.6 * dense_ms, color="grey", ls=":", lw=1, label="60 % of dense")
    ax.set_xlabel("measured latency (ms, batch 1)")
    ax.set_ylabel("val mIoU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
