"""Benchmark: the search loop's own cost, worker scaling, and evaluations wasted.

1. Overhead: 1,000 trials of NSGA-II with a no-op evaluator (``search.testing:noop``) through the
   whole loop (sampler ask/tell + latency gate + MACs + dedup + Ray actor round trip + atomic
   Parquet parts + pending.json resumable state), 2 workers. Per-trial overhead = loop wall time /
   trials (Ray start-up and the one-off checkpoint load excluded).
2. Scaling: the same search with an evaluator of fixed torch work (~0.5 s, one torch thread per
   worker) on 1 worker, then 2 workers, random sampler; speed-up = trials/s ratio.
3. Waste: evaluations (status complete/failed) of configs over the budget or of a config already
   evaluated, counted from the trial logs (target 0).

Usage: python bench/search_overhead.py [--trials 1000] [--scaling-trials 16] [--out FILE] [--json]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._result import write_result  # noqa: E402

import os  # noqa: E402

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _spec(d: Path, name: str, ck: Path, pr: Path, n: int, sampler: str, workers: int, evaluator: str,
          kwargs: str = "", budget: str = "") -> Path:
    p = d / f"{name}.toml"
    p.write_text(textwrap.dedent(f"""
        name = "{name}"
        output_dir = "{d / name}"
        n_trials = {n}
        [supernet]
        checkpoint = "{ck}"
        [latency]
        predictor = "{pr}"
        {budget}
        [evaluator]
        name = "{evaluator}"
        subset_size = 1
        [evaluator.kwargs]
        {kwargs}
        [space]
        ratios = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
        [sampler]
        name = "{sampler}"
        {"population_size = 50" if sampler == "nsga2" else ""}
        [workers]
        num_workers = {workers}
        """))
    return p


def _waste(exp: Path, budget) -> dict:
    from search.trial_log import load_trials

    df = load_trials(exp)
    ev = df[df["status"].isin(["complete", "failed", "partial"]) & df["eval_seconds"].notna()]
    over = int((ev["predicted_latency_ms"] > budget).sum()) if budget else 0
    return {"evaluations": int(len(ev)), "infeasible_evaluated": over,
            "duplicate_evaluated": int(ev["config_hash"].duplicated().sum()),
            "rejected": int((df["status"] == "rejected").sum()), "cached": int((df["status"] == "cached").sum())}


def _calibrate_repeats(ck: Path, target_s: float = 0.5) -> int:
    import torch

    from search.testing import fixed_work
    from supernet.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    model, _ = load_checkpoint(ck)
    model.eval()
    fixed_work(model, 2)
    t = time.perf_counter()
    fixed_work(model, 5)
    per = (time.perf_counter() - t) / 5
    return max(1, round(target_s / per))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--scaling-trials", type=int, default=16)
    p.add_argument("--out", default="bench/results/search_overhead.json")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from latency import Predictor
    from search.runner import run
    from search.spec import load_spec
    from search.testing import make_tiny_checkpoint, make_tiny_predictor

    d = Path(tempfile.mkdtemp(prefix="ss-bench-"))
    ck = make_tiny_checkpoint(d)
    pr = make_tiny_predictor(d, ck)
    import numpy as np

    from search.space import SearchSpace
    space = SearchSpace([2, 2, 2, 2])
    lat = Predictor.load(pr).predict(space.to_array(space.sample_uniform(np.random.default_rng(0), 500)))
    budget = float(np.quantile(lat, 0.7))

    s1 = run(load_spec(_spec(d, "overhead", ck, pr, a.trials, "nsga2", 2, "search.testing:noop",
                             budget=f"budget_ms = {budget}")), progress=False)
    overhead_ms = s1["search_loop_s"] / s1["trials_this_run"] * 1e3
    views = s1.get("views") or {}
    journal = views.get("StudyJournal") or {}
    journal_ms = 1e3 * journal.get("seconds", 0.0) / max(1, journal.get("rows") or s1["trials_this_run"])
    front_ms = 1e3 * (views.get("FrontTable") or {}).get("seconds", 0.0) / max(1, s1["trials_this_run"])
    waste = _waste(d / "overhead", budget)

    reps = _calibrate_repeats(ck)
    scaling = {}
    for w in (1, 2):
        s = run(load_spec(_spec(d, f"scale{w}", ck, pr, a.scaling_trials, "random", w, "search.testing:fixed_work",
                                kwargs=f"repeats = {reps}")), progress=False)
        scaling[w] = {"loop_s": s["search_loop_s"], "trials": s["trials_this_run"],
                      "trials_per_s": s["trials_this_run"] / s["search_loop_s"],
                      "waste": _waste(d / f"scale{w}", None)}
    speedup = scaling[2]["trials_per_s"] / scaling[1]["trials_per_s"]
    out = {
        "benchmark": "search_overhead", "trials": a.trials, "overhead_ms_per_trial": round(overhead_ms, 3),
        "overhead_counts": s1["counts"], "waste": waste, "budget_ms": budget,
        "journal_ms_per_trial": round(journal_ms, 3), "front_table_ms_per_trial": round(front_ms, 3),
        "proposals": s1.get("proposals"),
        "scaling": {"evaluator_repeats": reps, "one_worker": scaling[1], "two_workers": scaling[2],
                    "speedup_2_over_1": round(speedup, 3)},
        "summary": (f"search_overhead: {overhead_ms:.2f} ms/trial over {a.trials} trials (NSGA-II, Ray, Parquet, "
                    f"resumable state, optuna-dashboard journal {journal_ms:.2f} ms/trial and front table "
                    f"{front_ms:.2f} ms/trial included); 2 workers {speedup:.2f}x the trials/s of 1 on a ~0.5 s torch evaluator; "
                    f"{waste['infeasible_evaluated']} infeasible and {waste['duplicate_evaluated']} duplicate "
                    f"evaluations ({waste['rejected']} rejected, {waste['cached']} cached)"),
    }
    write_result(out, a.out, a.json, indent=2)
    return out


if __name__ == "__main__":
    main()
