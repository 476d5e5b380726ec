"""NSGA-II vs random vs the SparseViT reference evolution vs TPE on the real supernet.

Every run uses the product's own path (spec -> sampler -> latency gate -> Ray workers -> Parquet)
on the same checkpoint, predictor, budget and canvas subset; evaluations are shared between runs
through ``experiments.fashion_mosaic.memo`` (a config's mIoU on a fixed subset is deterministic),
so the comparison costs the union of the configs the runs visit, not their sum. Hypervolume is
computed against one reference point (mIoU 0, latency = budget) for every run. Rerunning the command
continues where it stopped: a run killed part-way, or made with fewer ``--trials``, is resumed to ``--trials``
(``sparsesearch resume``: its completed trials are kept); finished runs are read as they are.

Usage:
    python experiments/fashion_mosaic/compare_samplers.py --checkpoint runs/quick/supernet.safetensors \
        --predictor runs/quick/latency_cpu.json [--trials 300] [--seeds 0 1 2] [--out experiments/fashion_mosaic]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SAMPLERS = {
    "nsga2": "population_size = 30",
    "random": "",
    "sparsevit": "population_size = 30\nparents = 8",
    "tpe": "",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--predictor", required=True)
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    p.add_argument("--budget-fraction", type=float, default=0.6)
    p.add_argument("--subset", type=int, default=32)
    p.add_argument("--work", default="runs/compare")
    p.add_argument("--out", default="experiments/fashion_mosaic/results")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np

    from search.pareto import hypervolume_history
    from search.runner import experiment_summary, resume, run
    from search.spec import load_spec
    from search.trial_log import final_trials, load_trials

    from latency import Predictor
    from search.evaluators import mosaic_fields
    from supernet.checkpoint import read_sidecar

    # the canvases of the search resolution (the predictor's size), laid out as the checkpoint's training canvases
    img = (Predictor.load(a.predictor).img_size or (None,))[0]
    mosaic = {k: v for k, v in mosaic_fields(read_sidecar(a.checkpoint), img).items()
              if k in ("img_size", "min_items", "max_items", "min_scale", "max_scale", "threshold", "noise")}
    mosaic_toml = "{" + ", ".join(f"{k} = {v}" for k, v in mosaic.items()) + "}"
    work = Path(a.work).resolve()
    # the memo and the finished runs are only valid for one checkpoint, predictor, budget and canvas subset:
    # a work folder made with others is refused, never silently reused
    from search.spec import file_sha256
    made_with = {"checkpoint_sha256": file_sha256(a.checkpoint), "predictor_sha256": file_sha256(a.predictor),
                 "budget_fraction": a.budget_fraction, "subset": a.subset, "mosaic": mosaic}
    stamp = work / "comparison.json"
    if stamp.exists() and json.loads(stamp.read_text()) != made_with:
        p.error(f"{work} holds runs made with another checkpoint, predictor, budget or subset ({stamp}); "
                f"fix: pass a new --work folder, or delete that one")
    if not stamp.exists() and (work / "memo.sqlite").exists():
        p.error(f"{work} holds a memo of unknown origin; fix: pass a new --work folder, or delete that one")
    work.mkdir(parents=True, exist_ok=True)
    if not stamp.exists():
        stamp.write_text(json.dumps(made_with, indent=1))
    db = work / "memo.sqlite"
    curves, final = {}, {}
    for sampler in a.samplers:
        for seed in a.seeds:
            name = f"{sampler}_s{seed}"
            exp = work / name
            if not (exp / "experiment.json").exists():
                spec = work / f"{name}.toml"
                spec.write_text(textwrap.dedent(f"""
                    name = "{name}"
                    output_dir = "{exp}"
                    seed = {seed}
                    n_trials = {a.trials}
                    [supernet]
                    checkpoint = "{Path(a.checkpoint).resolve()}"
                    [latency]
                    predictor = "{Path(a.predictor).resolve()}"
                    budget_fraction = {a.budget_fraction}
                    [evaluator]
                    name = "experiments.fashion_mosaic.memo:evaluate"
                    img_size = {mosaic["img_size"]}
                    [evaluator.kwargs]
                    factory = true
                    db = "{db}"
                    subset_size = {a.subset}
                    mosaic = {mosaic_toml}
                    [sampler]
                    name = "{sampler}"
                    """) + SAMPLERS[sampler] + "\n[workers]\nnum_workers = 2\n")
                run(load_spec(spec), progress=True)
            elif experiment_summary(exp)["n_trials"] < a.trials:  # killed part-way, or run with fewer --trials:
                resume(exp, n_trials=a.trials, progress=True)    # continue it (completed trials are never re-run)
            frozen = json.loads((exp / "experiment.json").read_text())
            budget = frozen["budget_ms"]
            fin = final_trials(load_trials(exp))
            h = hypervolume_history(fin, (("miou", "max"), ("predicted_latency_ms", "min")), ref_point=[0.0, budget],
                                    by="trial", budget_ms=budget)
            hv = np.zeros(a.trials)
            for _, r in h.iterrows():
                hv[int(r["trial_number"]):] = r["hypervolume"]
            curves.setdefault(sampler, []).append(hv.tolist())
            final.setdefault(sampler, []).append(float(hv[-1]))
    summary = {s: {"hv_mean": float(np.mean(v)), "hv_std": float(np.std(v)), "per_seed": v} for s, v in final.items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_comparison.json").write_text(json.dumps({"trials": a.trials, "seeds": a.seeds,
                                                             "budget_fraction": a.budget_fraction,
                                                             "summary": summary}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    for s, cs in curves.items():
        m = np.mean(cs, axis=0)
        ax.plot(np.arange(1, a.trials + 1), m, label=f"{s} (final {summary[s]['hv_mean']:.4f})")
    ax.set_xlabel("trials")
    ax.set_ylabel(f"hypervolume (mean of {len(a.seeds)} seeds)")
    ax.set_title(f"hypervolume against trials, {Path(a.checkpoint).name} at {mosaic['img_size']} px, "
                 f"budget {a.budget_fraction:.0%} of dense")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sampler_comparison.png")
    lines = ["| sampler | hypervolume after %d trials (mean ± std, %d seeds) | per seed |" % (a.trials, len(a.seeds)),
             "|---|---|---|"]
    for s, v in summary.items():
        lines.append(f"| {s} | {v['hv_mean']:.4f} ± {v['hv_std']:.4f} | {', '.join(f'{x:.4f}' for x in v['per_seed'])} |")
    table = "\n".join(lines)
    (out / "sampler_comparison.md").write_text(table + "\n")
    print(json.dumps(summary) if a.json else table)


if __name__ == "__main__":
    main()
