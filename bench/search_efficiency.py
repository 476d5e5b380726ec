"""Benchmark: evaluation seconds to a given hypervolume, before and after this round's search efficiency.

Runs the main job's search (``experiments/fashion_mosaic/search_main.toml`` on the shipped supernet, or
``--spec``) twice per seed, side by side on the same machine:

- **before**: the previous round's loop (``[sampler] feasible_only = false``: over-budget proposals become
  rejected trials that count; ``[space] canonical = false``; ``[evaluator] fidelity = false``;
  ``[workers] prefix_cache_mb = 0``);
- **after**: the defaults (feasible proposals, canonical space, multi-fidelity, stage-prefix cache).

From each trial log: hypervolume (the spec's metric vs predicted latency, reference = (0, budget)) of the
full measurements after each evaluation, against the cumulative evaluation CPU-seconds (eval_seconds x torch
threads per worker). Reported per seed and as the mean: the evaluation seconds *after* needs to reach the
final hypervolume of *before* (and the ratio), the final hypervolumes at equal ``n_trials``, rejected trials,
evaluations of a computation already evaluated, the prefix cache's hit rate / stage-seconds saved / bytes, and
the multi-fidelity audit (seed 0): every stopped config is evaluated fully afterwards and the share that
would have entered the final front is the rule's false-stop rate.

Usage: python bench/search_efficiency.py [--spec SPEC] [--seeds 0 1 2] [--n-trials 200] [--plot PNG] [--json]
Writes bench/results/search_efficiency.json (+ the plot) and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._result import write_result  # noqa: E402
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BEFORE = {"sampler": {"feasible_only": False, "seed_uniform": False, "seed_sparsest": False}, "space": {"canonical": False},
          "evaluator": {"fidelity": False}, "workers": {"prefix_cache_mb": 0}}


def _variant(spec, out: Path, seed: int, n_trials: int, before: bool):
    from search.spec import ExperimentSpec

    data = json.loads(spec.model_dump_json())
    data.update(name=f"{'before' if before else 'after'}_s{seed}", output_dir=str(out), seed=seed, n_trials=n_trials)
    if before:
        for section, kv in BEFORE.items():
            data[section].update(kv)
    return ExperimentSpec.model_validate(data)


class WalkRow(NamedTuple):
    """The state of a trial log's walk after one row (:func:`hv_walk`)."""
    evaluations: int  # evaluations so far
    cpu_seconds: float  # evaluation CPU-seconds so far
    hypervolume: float
    ran: bool  # the row ran an evaluation (a cached row did not)
    best: float  # best metric within the budget so far


def hv_walk(exp: Path, budget: float, metric: str, threads: int = 1) -> List[WalkRow]:
    """One walk of a trial log in end-time order: a :class:`WalkRow` after each row. Hypervolume of the complete / cached rows under ``budget``
    (``metric`` max, predicted ms min, reference (0, budget)); CPU-seconds = eval_seconds x ``threads``; a cached
    row (eval_seconds NaN) costs nothing but may raise the hypervolume."""
    import numpy as np

    from search.pareto import hypervolume
    from search.trial_log import load_trials

    df = load_trials(exp).sort_values(["end_time", "trial_number"], kind="stable")
    rows, pts, n, t = [], [], 0, 0.0
    for r in df.itertuples():
        v = getattr(r, metric)
        if r.status in ("complete", "cached") and v == v and r.predicted_latency_ms <= budget:
            pts.append((float(v), float(r.predicted_latency_ms)))
        ran = r.eval_seconds is not None and r.eval_seconds == r.eval_seconds
        if ran:
            n, t = n + 1, t + float(r.eval_seconds) * threads
        hv = float(hypervolume(np.asarray(pts), [0.0, budget], ["max", "min"])) if pts else 0.0
        rows.append(WalkRow(n, t, hv, ran, max((p[0] for p in pts), default=0.0)))
    return rows


def curve(exp: Path, threads: int):
    """(cumulative eval CPU-seconds, hypervolume, best metric within the budget) after each evaluation, in
    end-time order. The hypervolume (reference at the budget) weighs the latency span of the front; the best metric
    is the front's other end, the most accurate config the budget admits (on the search's canvases)."""
    frozen = json.loads((exp / "experiment.json").read_text())
    rows = hv_walk(exp, frozen["budget_ms"], frozen["spec"]["objectives"]["metric"], threads)
    ran = [r for r in rows if r.ran]
    return ([0.0] + [r.cpu_seconds for r in ran], [0.0] + [r.hypervolume for r in ran],
            [0.0] + [r.best for r in ran])


def repeated_computations(exp: Path, policy) -> int:
    from search.space import Config
    from search.trial_log import load_trials

    df = load_trials(exp)
    ev = df[df["status"].isin(["complete", "partial", "failed"]) & df["eval_seconds"].notna()]
    keys = [policy.key(Config(json.loads(c))) for c in ev["config"]]
    return len(keys) - len(set(keys))


def audit_fidelity(exp: Path, spec, threads: int) -> dict:
    """Finish every stopped config; the share that would have entered the final front = false stops."""
    import numpy as np
    import torch

    from search.evaluators import build_evaluator
    from search.pareto import non_dominated_mask
    from search.policy import SearchPolicy
    from search.space import Config
    from search.trial_log import final_trials, load_trials
    from supernet.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    pol = SearchPolicy.from_spec(spec)
    df = final_trials(load_trials(exp))
    stopped = df[df["status"] == "partial"]
    full = df[df["status"].isin(["complete", "cached"]) & (df["predicted_latency_ms"] <= pol.budget)]
    if not len(stopped):
        return {"stopped": 0, "false_stops": 0, "false_stop_rate": 0.0}
    model, _ = load_checkpoint(spec.supernet.checkpoint, img_size=pol.img_size)
    ev = spec.evaluator
    evaluator = build_evaluator(ev.name, subset_size=ev.subset_size, batch_size=ev.batch_size, split=ev.split,
                                kwargs=dict(ev.kwargs), meta=pol.meta, img_size=list(pol.img_size),
                                mosaic=dict(ev.mosaic))
    finished = []
    for c, lat in zip(stopped["config"], stopped["predicted_latency_ms"]):
        model.set_sparsity(Config(json.loads(c)).ratios)
        finished.append((float(evaluator(model)[pol.metric]), float(lat)))
    pts = np.asarray([(float(v), float(l)) for v, l in zip(full[pol.metric], full["predicted_latency_ms"])] + finished)
    nd = non_dominated_mask(pts, ["max", "min"])
    false = int(nd[len(full):].sum())
    return {"stopped": int(len(stopped)), "false_stops": false, "false_stop_rate": false / len(stopped)}


def main(argv=None) -> dict:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(ROOT / "experiments/fashion_mosaic/search_main.toml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-trials", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "bench/results/search_efficiency.json"))
    p.add_argument("--plot", default=str(ROOT / "bench/results/search_efficiency.png"))
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from search.policy import SearchPolicy
    from search.runner import run
    from search.spec import load_spec

    spec = load_spec(a.spec)
    threads = spec.workers.torch_threads or spec.workers.cpus_per_worker
    pol = SearchPolicy.from_spec(spec)
    work = Path(tempfile.mkdtemp(prefix="ss-eff-"))
    runs = {}
    try:
        for seed in a.seeds:
            for before in (True, False):
                name = f"{'before' if before else 'after'}_s{seed}"
                exp = work / name
                t0 = time.time()
                s = run(_variant(spec, exp, seed, a.n_trials, before), progress=False)
                secs, hv, best = curve(exp, threads)
                runs[name] = {"seed": seed, "mode": "before" if before else "after", "wall_s": time.time() - t0,
                              "counts": s["counts"], "evaluations": s["evaluations"],
                              "eval_cpu_s": secs[-1], "final_hv": hv[-1], "final_best": best[-1],
                              "curve": {"eval_cpu_s": secs, "hv": hv, "best": best},
                              "repeated_computations": repeated_computations(exp, pol),
                              "prefix_cache": s.get("prefix_cache"), "proposals": s.get("proposals"),
                              "space_size": s.get("space_size")}
                if not before and seed == a.seeds[0] and not a.no_audit:
                    runs[name]["fidelity_audit"] = audit_fidelity(exp, _variant(spec, exp, seed, a.n_trials, False),
                                                                  threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_seed = []
    for seed in a.seeds:
        b, f = runs[f"before_s{seed}"], runs[f"after_s{seed}"]
        target = b["final_hv"]
        reach = next((s for s, h in zip(f["curve"]["eval_cpu_s"], f["curve"]["hv"]) if h >= target - 1e-12), math.inf)
        reach_best = next((s for s, m in zip(f["curve"]["eval_cpu_s"], f["curve"]["best"]) if m >= b["final_best"] - 1e-12),
                          math.inf)
        per_seed.append({"seed": seed, "before_eval_cpu_s": b["eval_cpu_s"], "after_eval_cpu_s_to_before_hv": reach,
                         "ratio": b["eval_cpu_s"] / reach if reach > 0 else math.inf,
                         "before_final_hv": b["final_hv"], "after_final_hv": f["final_hv"],
                         "after_eval_cpu_s_to_before_best": reach_best,
                         "best_ratio": b["eval_cpu_s"] / reach_best if reach_best > 0 else math.inf,
                         "before_final_best": b["final_best"], "after_final_best": f["final_best"],
                         "before_rejected": b["counts"].get("rejected", 0), "after_rejected": f["counts"].get("rejected", 0),
                         "after_repeated_computations": f["repeated_computations"],
                         "before_repeated_computations": b["repeated_computations"]})
    ratios = [r["ratio"] for r in per_seed]
    pc = [runs[f"after_s{s}"]["prefix_cache"] or {} for s in a.seeds]
    out = {"benchmark": "search_efficiency", "spec": a.spec, "n_trials": a.n_trials, "seeds": a.seeds,
           "per_seed": per_seed, "runs": runs,
           "mean_ratio": float(np.mean(ratios)), "min_ratio": float(np.min(ratios)),
           "mean_best_ratio": float(np.mean([r["best_ratio"] for r in per_seed])),
           "min_best_ratio": float(np.min([r["best_ratio"] for r in per_seed])),
           "hv_after_ge_before_every_seed": all(r["after_final_hv"] >= r["before_final_hv"] for r in per_seed),
           "prefix_cache_hit_rate_mean": float(np.mean([c.get("hit_rate", 0.0) for c in pc])),
           "prefix_cache_stage_seconds_saved_mean": float(np.mean([c.get("stage_seconds_saved", 0.0) for c in pc]))}
    audit = runs[f"after_s{a.seeds[0]}"].get("fidelity_audit")
    out["summary"] = (f"search_efficiency: after reaches before's final hypervolume with {out['mean_ratio']:.2f}x fewer "
                      f"evaluation CPU-seconds (min {out['min_ratio']:.2f}x over seeds {a.seeds}); final HV after >= "
                      f"before on every seed: {out['hv_after_ge_before_every_seed']}; to before's best {spec.objectives.metric} "
                      f"within the budget: {out['mean_best_ratio']:.2f}x (min {out['min_best_ratio']:.2f}x); rejected "
                      f"{sum(r['after_rejected'] for r in per_seed)} (before {sum(r['before_rejected'] for r in per_seed)}), "
                      f"repeated computations {sum(r['after_repeated_computations'] for r in per_seed)}; prefix-cache hit "
                      f"rate {out['prefix_cache_hit_rate_mean']:.2f}"
                      + (f"; multi-fidelity false stops {audit['false_stops']}/{audit['stopped']}" if audit else ""))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        for name, r in runs.items():
            ax.step(r["curve"]["eval_cpu_s"], r["curve"]["hv"], where="post",
                    color="tab:grey" if r["mode"] == "before" else "tab:red", alpha=0.8,
                    label=f"{r['mode']} (seed {r['seed']})")
        ax.set_xlabel("evaluation CPU-seconds")
        ax.set_ylabel("hypervolume (mIoU x ms under the budget)")
        ax.set_title(f"main-job search, {a.n_trials} trials: before vs after")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.plot)
        plt.close(fig)
        out["plot"] = a.plot
    write_result(out, a.out, a.json, shown={k: v for k, v in out.items() if k != "runs"})
    return out


if __name__ == "__main__":
    main()
