"""Benchmark: latency predictor throughput and accuracy on the default-sized segmentation supernet.

Model: SegSupernet on a timm Swin with embed_dim 32, depths 2-2-6-2, heads 1-2-4-8, window 7,
at 224 x 224 (random weights: latency does not depend on weight values), batch 1.

1. Profile it (``latency.profile``, default ratio set 0.0..0.8, warm-up 3, 11 drift-corrected
   repeats, 40 calibration configs) and report the profiling time.
2. Prediction throughput: ``--n-predict`` random configs (default 1e6) predicted in batches of
   ``--batch`` (default 100k) as numpy [n, 12] arrays; configs/s over the whole run (best of 3).
3. Validation: ``--n`` held-out random configs measured end to end (drift-corrected median of 11
   repeats, each run between two dense runs) against
   the predictions: share within +-10 %, MAPE, Spearman rho, max error (``latency.validate``).

Usage:
    python bench/latency_predictor.py [--n 200] [--n-predict 1000000] [--device cpu|cuda]
        [--threads 1] [--batch-size 1] [--img-size 224] [--out bench/results/latency_predictor.json]
        [--predictor-out PATH] [--plot PATH.png] [--json]

Writes JSON (``--out``), prints it with ``--json`` (exactly one object on stdout), and a
one-line summary otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from latency import Predictor, profile, save, validate  # noqa: E402
from latency.profiler import DEFAULT_RATIOS, random_configs  # noqa: E402
from supernet.seg import SegSupernet  # noqa: E402

ARCH = dict(embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=7)


def _loadavg():
    """1-minute load average at the end of the run (the machine is shared: context for the figures)."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def throughput(pred: Predictor, n: int, batch: int, seed: int = 0, rounds: int = 3) -> dict:
    """configs/s of ``pred.predict`` over ``n`` random configs in batches (best of ``rounds``)."""
    rng = np.random.default_rng(seed)
    cfgs = random_configs(pred.depths, DEFAULT_RATIOS, n, rng)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(0, n, batch):
            pred.predict(cfgs[i:i + batch])
        times.append(time.perf_counter() - t)
    one = random_configs(pred.depths, DEFAULT_RATIOS, 2000, rng)
    nested = [[list(map(float, one[j, s:s + d])) for s, d in zip(np.cumsum([0, *pred.depths[:-1]]), pred.depths)]
              for j in range(len(one))]
    t = time.perf_counter()
    for c in nested:
        pred.predict_one(c)
    t_one = (time.perf_counter() - t) / len(nested)
    return {"n": n, "batch": batch, "seconds": min(times), "configs_per_s": n / min(times),
            "predict_one_us": t_one * 1e6}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="validation configs")
    p.add_argument("--n-predict", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=100_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/latency_predictor.json")
    p.add_argument("--predictor-out", default=None, help="also save the profiled predictor JSON here")
    p.add_argument("--plot", default=None, help="validation scatter PNG")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    model = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=a.img_size, **ARCH)
    t = time.perf_counter()
    table = profile(model, batch_size=a.batch_size, device=a.device, threads=a.threads, seed=a.seed,
                    progress=not a.json, model_arch=dict(ARCH, img_size=a.img_size))
    prof_s = time.perf_counter() - t
    if a.predictor_out:
        save(table, a.predictor_out)
    pred = Predictor(table, source=a.predictor_out or "<bench>")
    thr = throughput(pred, a.n_predict, a.batch, a.seed)
    val = validate(pred, model, n=a.n, seed=a.seed, plot=a.plot, progress=not a.json)
    cal = table["calibration"]
    res = {
        "bench": "latency_predictor",
        "model": dict(ARCH, img_size=a.img_size, head="FPN-lite seg head"),
        "fingerprint": table["fingerprint"],
        "profile_seconds": prof_s,
        "dense_pred_ms": float(pred.predict(np.zeros((1, pred.n_blocks)))[0]),
        "calibration": {k: cal[k] for k in ("a", "b", "n", "mape", "mape_uncalibrated")},
        "throughput": thr,
        "validation": {k: val[k] for k in ("n", "within_10pct", "mape", "spearman", "max_abs_pct_err",
                                           "max_abs_err_ms", "mean_pct_err", "relative_within_10pct",
                                           "relative_mape", "dense_ms_measured", "dense_ms_predicted",
                                           "dense_ms_at_profiling", "seconds", "plot")},
        "load_during_run": _loadavg(),
        "validation_points": {"measured_ms": val["measured_ms"], "predicted_ms": val["predicted_ms"],
                              "measured_ratio": val["measured_ratio"], "configs": val["configs"]},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    v = res["validation"]
    if a.json:
        print(json.dumps(res))
    else:
        print(f"latency predictor ({a.device}, {a.threads} thr, batch {a.batch_size}, {a.img_size}px): profile "
              f"{prof_s:.0f} s, {thr['configs_per_s']:.3g} configs/s ({thr['predict_one_us']:.1f} us/predict_one), "
              f"validation n={v['n']}: {v['within_10pct'] * 100:.0f}% within +-10%, MAPE {v['mape']:.1f}%, "
              f"Spearman {v['spearman']:.3f}, max err {v['max_abs_pct_err']:.1f}%, relative to dense "
              f"{v['relative_within_10pct'] * 100:.0f}% within +-10% -> {out}")
    return res


if __name__ == "__main__":
    main()
