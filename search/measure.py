"""Measured front: end-to-end latency of every Pareto-front member on this device.

A latency predictor can be wrong on the device (hardware-aware-transformers#13): ``sparsesearch measure
EXP_DIR`` times each front config end to end the way the profiler times its calibration configs (every
config run between two dense runs, ratios to the interleaved dense time, median over repeats, scaled by
the session's median dense time: :func:`latency.profiler.measure_configs_drift`), in the predictor's
setting (device, threads, batch size, search resolution). It reports the share of members within +-10 %
of their predicted latency (absolute, and relative to the dense model, which is what a
``budget_fraction`` decides on) and flags members whose measured latency breaks the budget (relative to the
dense model measured beside them for a ``budget_fraction``, in ms for a ``budget_ms``); the values
go to ``EXP_DIR/measured.json`` and the ``measured_latency_ms`` column of ``EXP_DIR/front.parquet``. After
``sparsesearch confirm`` the members of the confirmed front are measured too.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from supernet.fileio import atomic_write_json

__all__ = ["measure_front"]


def measure_front(exp_dir, *, repeats: int = 11, warmup: int = 3, progress: bool = True,
                  device: Optional[str] = None) -> Dict[str, Any]:
    """Measure the end-to-end latency of the front of ``exp_dir`` (see the module docstring).

    Args:
        exp_dir: the experiment directory.
        repeats: timed runs per config (>= 1).
        warmup: dense warm-up forwards.
        progress: tqdm bar on stderr.
        device: measuring device (default: the predictor's).

    Returns:
        ``{"n", "within_10pct", "relative_within_10pct", "mape", "over_budget": [trial numbers],
        "over_budget_rule", "budget_ms", "dense_ms_measured", "dense_ms_predicted", "speed_drift" (measured /
        predicted dense - 1), "members": [{trial_number, predicted_latency_ms, measured_latency_ms,
        measured_vs_dense, error_pct, over_budget}], "seconds"}``. With a ``budget_fraction`` a member is over
        the budget when its latency measured relative to the interleaved dense runs exceeds the fraction (the
        machine's speed drift cancels); with a ``budget_ms``, when its measured ms exceed it.

    Raises:
        search.runner.ResumeError / search.policy.InputError: unreadable experiment or inputs.
        ValueError: repeats < 1.
    """
    import torch

    from latency.predictor import current_fingerprint
    from latency.validate import speed_drift
    from latency.profiler import _make_input, _session, measure_configs_drift
    from supernet.checkpoint import load_checkpoint

    from .front import MEASURED_FILE, front_members, front_table, read_confirmed, write_front_table
    from .policy import SearchPolicy
    from .runner import check_frozen, load_frozen_spec
    from .space import Config
    from .trial_log import final_trials, load_trials

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    exp_dir = Path(exp_dir)
    frozen, spec = load_frozen_spec(exp_dir)
    check_frozen(frozen, spec, exp_dir)  # a changed checkpoint or predictor would rewrite measured.json with it
    policy = SearchPolicy.from_spec(spec)
    metric = policy.metric
    maximize = policy.directions[0] == "maximize"
    df = load_trials(exp_dir)
    fin = final_trials(df) if len(df) else df
    confirmed = read_confirmed(exp_dir)  # the front ``sparsesearch confirm`` re-scored is measured beside the search's
    front = front_members(fin, metric, maximize=maximize, budget_ms=policy.budget, confirmed=confirmed)
    pred = policy.predictor
    fp = pred.fingerprint
    from latency.validate import predictor_device

    dev = predictor_device(pred, device)  # a device this machine lacks: one line naming the predictor
    threads = int(fp.get("threads") or torch.get_num_threads())
    model, _ = load_checkpoint(spec.supernet.checkpoint, img_size=policy.img_size)
    model.to(dev)
    members = []
    out: Dict[str, Any] = {"n": int(len(front)), "budget_ms": policy.budget, "members": members}
    if len(front):
        configs = [Config(json.loads(c)) for c in front["config"]]
        arr = policy.space.to_array(configs)
        x = _make_input(pred.batch_size, policy.img_size, 1, dev, next(model.parameters()).dtype)
        with _session(model, threads):
            m = measure_configs_drift(model, x, arr, warmup=warmup, repeats=repeats, progress=progress,
                                      desc="measuring the front")
        predicted = pred.predict(arr)
        pred_dense = float(pred.predict(np.zeros((1, pred.n_blocks)))[0])
        err = (predicted - m.ms) / m.ms
        rel_err = (predicted / pred_dense - m.ratio) / m.ratio
        # a budget_fraction is a share of the dense model: judged against the dense runs interleaved in this
        # session (a CPU that drifts 10 % slower would otherwise flag every member near the budget); a budget_ms
        # is absolute
        frac = spec.latency.budget_fraction
        if frac is not None:
            over, rule = m.ratio > float(frac), f"measured / dense > {float(frac):g}"
        elif policy.budget is not None:
            over, rule = m.ms > policy.budget, f"measured > {policy.budget:.2f} ms"
        else:
            over, rule = np.zeros(len(arr), dtype=bool), None
        records = {}
        for (_, r), c, ms, e, o, ratio in zip(front.iterrows(), configs, m.ms, err, over, m.ratio):
            rec = {"trial_number": int(r["trial_number"]), "config_hash": r["config_hash"], "config": c.ratios,
                   "predicted_latency_ms": float(r["predicted_latency_ms"]), "measured_latency_ms": float(ms),
                   "measured_vs_dense": float(ratio), "error_pct": float(e * 100.0), "over_budget": bool(o)}
            members.append(rec)
            records[r["config_hash"]] = rec
        out.update(within_10pct=float(np.mean(np.abs(err) <= 0.10)),
                   relative_within_10pct=float(np.mean(np.abs(rel_err) <= 0.10)),
                   mape=float(np.mean(np.abs(err)) * 100.0), dense_ms_measured=float(m.reference_ms),
                   dense_ms_predicted=pred_dense, speed_drift=speed_drift(m.reference_ms, pred_dense),
                   over_budget=[rec["trial_number"] for rec in members if rec["over_budget"]], over_budget_rule=rule)
        atomic_write_json(exp_dir / MEASURED_FILE, {
            "configs": records, "fingerprint": current_fingerprint(dev, threads, pred.batch_size,
                                                                   next(model.parameters()).dtype, policy.img_size),
            "repeats": int(repeats), "dense_ms_measured": float(m.reference_ms),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_front_table(exp_dir, front_table(df, metric, maximize=maximize, budget_ms=policy.budget,
                                               experiment=spec.name, measured=records, confirmed=confirmed))
    out["seconds"] = time.perf_counter() - t0
    return out
