"""Pareto report of an experiment directory: table, CSV, JSON, plot and hypervolume history."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["pareto_report", "plot_front"]


def plot_front(df, front, metric: str, reference: Dict[str, Any], budget_ms: Optional[float], path: str,
               title: str = "") -> str:
    """PNG: every trial (grey: rejected at their predicted latency), the front, references, budget line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ok = df[df["status"].isin(["complete", "cached"])]
    ax.scatter(ok["predicted_latency_ms"], ok[metric], s=10, alpha=0.4, color="tab:blue", label=f"trials ({len(ok)})")
    lo = [v for v in ok[metric].tolist() if v == v]
    floor = max(0.0, min(lo) - 0.05) if lo else 0.0
    rej = df[df["status"] == "rejected"]
    if len(rej):  # never evaluated: drawn on the floor of the plot at their predicted latency
        ax.scatter(rej["predicted_latency_ms"], np.full(len(rej), floor + 0.005), s=10, marker="x", color="0.5",
                   label=f"rejected by the latency gate ({len(rej)}, not evaluated)")
    if len(front):
        ax.step(front["predicted_latency_ms"], front[metric], where="post", color="tab:red", lw=1.5)
        ax.scatter(front["predicted_latency_ms"], front[metric], s=24, color="tab:red", zorder=3,
                   label=f"Pareto front ({len(front)})")
    markers = iter("s^vD<>")
    for name, ref in reference.items():
        m = (ref.get("metrics") or {}).get(metric)
        if m is not None:
            ax.scatter([ref["predicted_latency_ms"]], [m], marker=next(markers, "o"), s=50, color="black",
                       zorder=4, label=name)
    if budget_ms:
        ax.axvline(budget_ms, color="tab:green", ls="--", label=f"budget {budget_ms:.2f} ms")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(metric)
    ax.set_title(title or "sparsity search")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=floor)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_report(exp_dir: Path, budget_ms: Optional[float] = None, plot: Optional[str] = None,
                  history: bool = False) -> Dict[str, Any]:
    """Build the ``sparsesearch pareto`` output for ``exp_dir``.

    Args:
        exp_dir: experiment directory.
        budget_ms: keep front configs at or under this predicted latency (default: the spec's budget).
        plot: PNG path to write.
        history: add the hypervolume per generation.

    Returns:
        ``{"json": dict, "text": str, "front_df": DataFrame}``.

    Raises:
        search.trial_log.TrialLogError: a corrupted part file (named, with the fix).
        search.errors.UserError: not an experiment directory.
    """
    from .errors import UserError
    from .pareto import hypervolume, hypervolume_history, pareto_front
    from .trial_log import final_trials, load_trials

    exp_dir = Path(exp_dir)
    ej = exp_dir / "experiment.json"
    if not ej.exists():
        raise UserError(f"{exp_dir} is not an experiment directory (no experiment.json); "
                        "fix: pass the output_dir of a `sparsesearch run`")
    frozen = json.loads(ej.read_text())
    spec = frozen["spec"]
    metric = spec["objectives"]["metric"]
    budget = budget_ms if budget_ms is not None else frozen.get("budget_ms", spec["latency"]["budget_ms"])
    df = load_trials(exp_dir)
    fin = final_trials(df) if len(df) else df
    objectives = ((metric, "max"), ("predicted_latency_ms", "min"))
    front = pareto_front(fin, objectives, budget_ms=budget) if len(fin) else fin
    reference = json.loads((exp_dir / "reference.json").read_text()) if (exp_dir / "reference.json").exists() else {}
    dense_ms = (reference.get("dense") or {}).get("predicted_latency_ms")
    ref_lat = budget or (dense_ms * 1.1 if dense_ms else (float(fin["predicted_latency_ms"].max()) * 1.1 if len(fin) else 1.0))
    hv = float(hypervolume(front[[metric, "predicted_latency_ms"]].to_numpy(), [0.0, ref_lat], ["max", "min"])) if len(front) else 0.0
    cols = ["trial_number", "generation", metric, "predicted_latency_ms", "macs", "config"]
    front_df = front[cols].reset_index(drop=True) if len(front) else front
    out: Dict[str, Any] = {
        "experiment": spec["name"], "exp_dir": str(exp_dir), "budget_ms": budget, "metric": metric,
        "n_trials": int(len(fin)), "hypervolume": hv, "hypervolume_reference": [0.0, ref_lat],
        "front": [{**{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if k != "config"},
                   "config": json.loads(r["config"])} for r in front_df.to_dict("records")],
        "reference": reference,
    }
    if dense_ms and reference.get("dense", {}).get("metrics"):
        dm = reference["dense"]["metrics"][metric]
        out["front_vs_dense"] = [{"trial_number": r["trial_number"], "latency_ratio": r["predicted_latency_ms"] / dense_ms,
                                  "metric_retention": r[metric] / dm if dm else None} for r in out["front"]]
    if history:
        h = hypervolume_history(fin, objectives, ref_point=[0.0, ref_lat], by="generation", budget_ms=budget)
        out["history"] = h.to_dict("records")
    if plot:
        out["plot"] = plot_front(fin, front, metric, reference, budget, plot, title=f"{spec['name']}: {len(fin)} trials")
    lines = [f"experiment {spec['name']} ({exp_dir}): {len(fin)} trials, front of {len(front_df)}"
             + (f" under {budget:g} ms" if budget else "") + f", hypervolume {hv:.4g}",
             f"{'trial':>6} {'gen':>4} {metric:>8} {'latency ms':>11} {'GMACs':>7}  config"]
    for r in out["front"]:
        lines.append(f"{r['trial_number']:>6} {r['generation']:>4} {r[metric]:>8.4f} {r['predicted_latency_ms']:>11.2f} "
                     f"{r['macs'] / 1e9:>7.3f}  {json.dumps(r['config'])}")
    if reference:
        lines.append("reference points:")
        for name, ref in reference.items():
            m = (ref.get("metrics") or {}).get(metric, float("nan"))
            lines.append(f"  {name:12s} {metric} {m:.4f} @ {ref['predicted_latency_ms']:.2f} ms, "
                         f"{ref['macs'] / 1e9:.3f} GMACs")
    if history:
        lines.append("hypervolume per generation:")
        for r in out["history"]:
            lines.append(f"  gen {int(r['generation']):>3}: {r['hypervolume']:.4g} ({int(r['n_trials'])} trials)")
    if plot:
        lines.append(f"plot: {plot}")
    return {"json": out, "text": "\n".join(lines), "front_df": front_df}
