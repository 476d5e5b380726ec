"""Benchmark: a fork with a new budget against a fresh search with that budget (evaluations to a hypervolume).

For each seed: ``sparsesearch fork PARENT --budget-fraction F`` (the parent: the main job's experiment, searched
at another budget) and a fresh ``run`` of the parent's spec with budget fraction F and the same seed and
``n_trials``. From both trial logs: the hypervolume of the full measurements under the new budget after each
trial that ran an evaluation (cached trials, including the fork's reused ones, cost none). Reported per seed:
the evaluations the fork and the fresh search need to reach the fork's final hypervolume, and the saving.

Usage: python bench/fork_efficiency.py --parent runs/main/search [--fraction 0.5] [--seeds 0 1 2] [--n-trials 100]
Writes bench/results/fork_efficiency.json and prints a one-line summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._result import write_result  # noqa: E402
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def hv_by_evaluation(exp: Path, budget: float, metric: str):
    """[(evaluations so far, hypervolume)] in end-time order, a point per row (reused rows cost no evaluation)."""
    from search_efficiency import hv_walk  # bench/ is on sys.path when a bench runs

    return [(0, 0.0)] + [(r.evaluations, r.hypervolume) for r in hv_walk(exp, budget, metric)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parent", required=True)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-trials", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "bench/results/fork_efficiency.json"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np

    from search.runner import fork, load_frozen_spec, run
    from search.spec import ExperimentSpec

    _, spec = load_frozen_spec(Path(a.parent))
    work = Path(tempfile.mkdtemp(prefix="ss-fork-"))
    rows = []
    try:
        for seed in a.seeds:
            data = json.loads(spec.model_dump_json())
            data.update(name=f"fresh_s{seed}", output_dir=str(work / f"fresh_s{seed}"), seed=seed, n_trials=a.n_trials)
            data["latency"].update(budget_ms=None, budget_fraction=a.fraction)
            fresh = run(ExperimentSpec.model_validate(data), progress=False)
            forked = fork(Path(a.parent), work / f"fork_s{seed}", budget_fraction=a.fraction, n_trials=a.n_trials,
                          seed=seed, progress=False)
            budget = forked["budget_ms"]
            metric = spec.objectives.metric
            f_curve = hv_by_evaluation(work / f"fork_s{seed}", budget, metric)
            n_curve = hv_by_evaluation(work / f"fresh_s{seed}", budget, metric)
            target = f_curve[-1][1]
            need_fork = next((n for n, h in f_curve if h >= target - 1e-12), math.inf)
            need_fresh = next((n for n, h in n_curve if h >= target - 1e-12), math.inf)
            rows.append({"seed": seed, "budget_ms": budget, "fork_final_hv": target, "fresh_final_hv": n_curve[-1][1],
                         "fork_evaluations_to_target": need_fork, "fresh_evaluations_to_target": need_fresh,
                         "fork_evaluations": f_curve[-1][0], "fresh_evaluations": n_curve[-1][0],
                         "saving": 1.0 - need_fork / need_fresh if need_fresh not in (0, math.inf) else (
                             1.0 if need_fresh == math.inf else 0.0),
                         "reused": forked.get("fork")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"benchmark": "fork_efficiency", "parent": a.parent, "fraction": a.fraction, "n_trials": a.n_trials,
           "per_seed": rows, "mean_saving": float(np.mean([r["saving"] for r in rows]))}
    out["summary"] = (f"fork_efficiency: forking {a.parent} to {a.fraction:.0%} of dense latency reaches the fork's final "
                      f"hypervolume with {out['mean_saving']:.0%} fewer evaluations than a fresh search with that budget "
                      f"(mean of seeds {a.seeds}; per seed "
                      + ", ".join(f"{r['fork_evaluations_to_target']} vs {r['fresh_evaluations_to_target']}" for r in rows)
                      + ")")
    return write_result(out, a.out, a.json)


if __name__ == "__main__":
    main()
