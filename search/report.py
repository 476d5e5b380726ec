"""Pareto report of an experiment directory: table, CSV, JSON, plot and hypervolume history."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["pareto_report", "plot_front"]


def plot_front(df, front, metric: str, reference: Dict[str, Any], budget_ms: Optional[float], path: str,
               title: str = "", confirmed: Optional[list] = None) -> str:
    """PNG: every trial (grey: rejected at their predicted latency), the front, references, budget line, and the
    front ``sparsesearch confirm`` re-scored (``confirmed``: records with ``predicted_latency_ms``,
    ``confirmed_value``, ``canvases``), when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    from .trial_log import FEASIBLE_STATUSES

    ok = df[df["status"].isin(FEASIBLE_STATUSES)]
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
    if confirmed:
        cx = [r["predicted_latency_ms"] for r in confirmed]
        cy = [r["confirmed_value"] for r in confirmed]
        ax.step(cx, cy, where="post", color="tab:purple", lw=1.2, ls=":")
        ax.scatter(cx, cy, s=24, marker="D", facecolors="none", edgecolors="tab:purple", zorder=3,
                   label=f"confirmed front ({len(confirmed)}, on {confirmed[0].get('canvases', '?')} canvases)")
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


def _plot_path(plot: str) -> str:
    """Where ``--plot`` writes: FOLDER/front.png for a folder (existing, or ending in /), a ``.png`` suffix
    added when the name has none (what matplotlib would append), the path as given otherwise.

    Raises:
        UserError: a file type matplotlib cannot write (e.g. ``front.txt``)."""
    p = Path(plot)
    for up in (p.resolve(), *p.resolve().parents):  # a file in an experiment's trials/ is read as a trial-log part
        if up.name == "trials" and (up.parent / "experiment.json").is_file():
            from .errors import UserError

            raise UserError(f"--plot {plot}: inside the trial log {up}; fix: write the plot elsewhere, e.g. "
                            f"{up.parent / 'front.png'}")
    if p.is_dir() or str(plot).endswith(("/", "\\")):
        return str(p / "front.png")
    if not p.suffix:
        return str(p.with_suffix(".png"))
    from matplotlib.backend_bases import FigureCanvasBase

    from .errors import UserError

    # what savefig writes without extra software (pgf needs LaTeX; avif a Pillow built with it)
    if p.suffix[1:].lower() not in set(FigureCanvasBase.get_supported_filetypes()) - {"pgf", "avif"}:
        raise UserError(f"--plot {plot}: matplotlib cannot write {p.suffix} files; fix: name a .png (or .pdf, .svg) "
                        "file, or a folder")
    return str(p)


def _load_experiment(exp_dir: Path):
    from .runner import ResumeError, load_frozen_spec

    try:
        frozen, _ = load_frozen_spec(exp_dir)
    except ResumeError as e:
        from .errors import UserError

        raise UserError(str(e).replace("`sparsesearch run SPEC.toml` first", "pass the output_dir of a "
                                       "`sparsesearch run`")) from None
    return frozen


def pareto_report(exp_dirs, budget_ms: Optional[float] = None, plot: Optional[str] = None,
                  history: bool = False) -> Dict[str, Any]:
    """Build the ``sparsesearch pareto`` output for one experiment, or the joint front of several.

    Args:
        exp_dirs: an experiment directory, or a list of them (the joint front of experiments that searched
            the same checkpoint at the same resolution with the same metric; each point keeps its experiment).
        budget_ms: keep front configs at or under this predicted latency (default: the experiment's budget; for
            several experiments with different budgets, the largest).
        plot: PNG path to write (a folder: FOLDER/front.png).
        history: add the hypervolume per generation (one experiment).

    Returns:
        ``{"json": dict, "text": str, "front_df": DataFrame}``.

    Raises:
        search.trial_log.TrialLogError: a corrupted part file (named, with the fix).
        search.errors.UserError: not an experiment directory; experiments of different checkpoints or metrics.
    """
    import pandas as pd

    from .errors import UserError
    from .front import read_measured
    from .pareto import hypervolume, hypervolume_history, pareto_front
    from .trial_log import final_trials, load_trials

    plot_path = _plot_path(plot) if plot else None  # an unwritable file type is refused before any work
    dirs = [Path(exp_dirs)] if isinstance(exp_dirs, (str, Path)) else [Path(d) for d in exp_dirs]
    frozens = [_load_experiment(d) for d in dirs]
    first = frozens[0]
    spec = first["spec"]
    metric = spec["objectives"]["metric"]
    maximize = spec["objectives"].get("metric_direction", "maximize") == "maximize"
    seen: Dict[Path, Path] = {}
    for d in dirs:
        if d.resolve() in seen:
            raise UserError(f"{d} is given twice (as {seen[d.resolve()]}); fix: pass each experiment once")
        seen[d.resolve()] = d
    if history and len(dirs) > 1:
        raise UserError("--history follows one experiment's generations; fix: pass one experiment with --history")
    for d, f in zip(dirs[1:], frozens[1:]):
        if f.get("checkpoint_sha256") != first.get("checkpoint_sha256") or f["spec"]["objectives"]["metric"] != metric \
                or f.get("search_img_size") != first.get("search_img_size") \
                or f["spec"]["objectives"].get("metric_direction", "maximize") != spec["objectives"].get(
                    "metric_direction", "maximize"):
            raise UserError(f"{d} searched another checkpoint, resolution or metric than {dirs[0]}; fix: a joint "
                            "front needs experiments of the same supernet (pass them separately)")
        if f.get("predictor_sha256") != first.get("predictor_sha256"):
            raise UserError(f"{d} predicted latency with another predictor than {dirs[0]} (another device or "
                            "profile); fix: a joint front needs one latency model (pass them separately)")
    budgets = [f.get("budget_ms", f["spec"]["latency"].get("budget_ms")) for f in frozens]
    budget = budget_ms if budget_ms is not None else (
        None if any(b is None for b in budgets) else max(budgets))
    parts = []
    for d, f in zip(dirs, frozens):
        df = load_trials(d)
        fin = final_trials(df) if len(df) else df
        if len(fin):
            fin = fin.assign(experiment=f["spec"]["name"], exp_dir=str(d))
            measured = read_measured(d)
            fin["measured_latency_ms"] = [float((measured.get(h) or {}).get("measured_latency_ms", float("nan")))
                                          for h in fin["config_hash"]]
            parts.append(fin)
    fin = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["trial_number", "generation", "status",
                                                                                metric, "predicted_latency_ms"])
    objectives = ((metric, "max" if maximize else "min"), ("predicted_latency_ms", "min"))
    if len(dirs) > 1 and len(fin):  # trial numbers repeat across experiments: one front over all rows
        fin = fin.assign(_uid=range(len(fin)))
        front = pareto_front(fin.rename(columns={"trial_number": "_tn", "_uid": "trial_number"}), objectives,
                             budget_ms=budget).rename(columns={"trial_number": "_uid", "_tn": "trial_number"})
    else:
        front = pareto_front(fin, objectives, budget_ms=budget) if len(fin) else fin
    from .runner import _read_reference

    reference = _read_reference(dirs[0]) or {}  # the runner's reader: a malformed file is one error line
    dense_ms = (reference.get("dense") or {}).get("predicted_latency_ms")
    ref_lat = budget or (dense_ms * 1.1 if dense_ms else (float(fin["predicted_latency_ms"].max()) * 1.1 if len(fin) else 1.0))
    hv = float(hypervolume(front[[metric, "predicted_latency_ms"]].to_numpy(), [0.0, ref_lat],
                           ["max" if maximize else "min", "min"])) if len(front) else 0.0
    cols = ["experiment", "trial_number", "generation", metric, "predicted_latency_ms", "measured_latency_ms",
            "macs", "config"]
    front_df = front[[c for c in cols if c in front.columns]].reset_index(drop=True) if len(front) else front
    names = [f["spec"]["name"] for f in frozens]
    out: Dict[str, Any] = {
        "experiment": names[0] if len(names) == 1 else names, "exp_dir": str(dirs[0]) if len(dirs) == 1 else
        [str(d) for d in dirs], "budget_ms": budget, "metric": metric,
        "n_trials": int(len(fin)), "hypervolume": hv, "hypervolume_reference": [0.0, ref_lat],
        "front": [{**{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if k != "config"},
                   "config": json.loads(r["config"])} for r in front_df.to_dict("records")],
        "reference": reference,
    }
    if dense_ms and reference.get("dense", {}).get("metrics"):
        dm = reference["dense"]["metrics"][metric]
        out["front_vs_dense"] = [{"trial_number": r["trial_number"], "latency_ratio": r["predicted_latency_ms"] / dense_ms,
                                  "metric_retention": r[metric] / dm if dm else None} for r in out["front"]]
    confirmed = None
    if len(dirs) == 1:  # the front `sparsesearch confirm` re-scored on more canvases, when it ran
        from .front import read_confirmed

        recs = read_confirmed(dirs[0])
        if recs:
            confirmed = sorted((r for r in recs.values() if r.get("confirmed_pareto")),
                               key=lambda r: r["predicted_latency_ms"])
            out["confirmed_front"] = confirmed
    if history and len(dirs) == 1:
        h = hypervolume_history(fin, objectives, ref_point=[0.0, ref_lat], by="generation", budget_ms=budget)
        out["history"] = h.to_dict("records")
    if plot:
        out["plot"] = plot_front(fin, front, metric, reference, budget, plot_path,
                                 title=f"{', '.join(names)}: {len(fin)} trials", confirmed=confirmed)
    lines = [f"{'experiments' if len(names) > 1 else 'experiment'} {', '.join(names)} "
             f"({', '.join(str(d) for d in dirs)}): {len(fin)} trials, front of {len(front_df)}"
             + (f" under {budget:g} ms" if budget else "") + f", hypervolume {hv:.4g}",
             (f"{'experiment':>14} " if len(names) > 1 else "")
             + f"{'trial':>6} {'gen':>4} {metric:>8} {'latency ms':>11} {'measured':>9} {'GMACs':>7}  config"]
    for r in out["front"]:
        meas = r.get("measured_latency_ms")
        meas_txt = f"{meas:>9.2f}" if meas is not None and meas == meas else f"{'-':>9}"
        lines.append((f"{r['experiment'][:14]:>14} " if len(names) > 1 else "")
                     + f"{r['trial_number']:>6} {r['generation']:>4} {r[metric]:>8.4f} {r['predicted_latency_ms']:>11.2f} "
                     f"{meas_txt} {r['macs'] / 1e9:>7.3f}  {json.dumps(r['config'])}")
    if confirmed:
        lines.append(f"confirmed front (`sparsesearch confirm`, {confirmed[0].get('canvases', '?')} canvases):")
        for r in confirmed:
            lines.append(f"  trial {r['trial_number']:>5} {metric} {r['confirmed_value']:.4f} "
                         f"({r['retention'] * 100:.1f} % of dense) @ {r['predicted_latency_ms']:.2f} ms  "
                         f"{json.dumps(r['config'])}")
    if reference:
        lines.append("reference points:")
        for name, ref in reference.items():
            m = (ref.get("metrics") or {}).get(metric, float("nan"))
            lines.append(f"  {name:12s} {metric} {m if m is not None else float('nan'):.4f} @ "
                         f"{ref['predicted_latency_ms']:.2f} ms, {ref['macs'] / 1e9:.3f} GMACs")
    if "history" in out:
        lines.append("hypervolume per generation:")
        for r in out["history"]:
            lines.append(f"  gen {int(r['generation']):>3}: {r['hypervolume']:.4g} ({int(r['n_trials'])} trials)")
    if plot:
        lines.append(f"plot: {out['plot']}")
    return {"json": out, "text": "\n".join(lines), "front_df": front_df}
