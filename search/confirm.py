"""Confirmed front: the configs a search could not tell apart, re-scored on more canvases.

A search scores every config on a fixed subset of ``[evaluator] subset_size`` canvases (64 in the main job), so
at the front's accurate end, where configs differ by tenths of a point, its ranking is noise: the member it
keeps is partly the one the subset happened to favour (the winner's curse), and configs that are truly better
at the same latency are discarded as dominated. ``sparsesearch confirm EXP_DIR`` spends evaluations only
there. It re-scores on ``canvases`` validation canvases (default 256) the front members and every feasible
config within the subset's noise of the front, then reports the front of the confirmed scores.

Noise (for a metric to maximise; mirrored for one to minimise). Multi-fidelity evaluation
(:mod:`search.fidelity`) records each fully evaluated config's metric on the first ``m`` of the ``n`` subset
canvases, ``v(m)``, beside ``v(n)``. With canvas-to-canvas variance ``s^2`` per canvas, ``e = v(m) - v(n)`` has
variance ``s^2 (1/m - 1/n)`` and ``v(n)`` itself errs by ``s^2 / n``; so the subset score's standard deviation is
``sd(e) * sqrt(m / (n - m))`` and a paired comparison of two configs errs by ``sqrt(2)`` times that. A config
is a candidate when no front member that is no slower beats it by more than ``z`` such paired standard
deviations (``z`` = 1 by default). When more than ``max_candidates`` qualify, those nearest to reordering the
front are kept (:func:`select_candidates`: configs just behind it and members barely ahead of a faster one,
before members that lead every faster config by far), each beside the front member it is measured against.
Without first-rung scores (multi-fidelity off) only the front members are candidates.

The candidates and the dense model are scored on the same canvases (paired), with the built-in evaluator's
canvas layout and the experiment's frozen spec; the values go to ``EXP_DIR/confirmed.json`` and the
``confirmed_metric`` / ``is_confirmed_pareto`` columns of ``EXP_DIR/front.parquet``. The first ``n`` of the
confirmation canvases are the search's own subset (same seed) unless ``seed`` names another set.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from supernet.fileio import atomic_write_json

from .errors import UserError
from .fidelity import front_rivals

__all__ = ["confirm_front", "subset_noise", "select_candidates"]


def subset_noise(first_values: Sequence[float], full_values: Sequence[float], first: int, subset: int,
                 min_pairs: int = 8) -> Optional[float]:
    """Standard deviation of a config's metric on the ``subset`` canvases of a search (see the module docstring).

    Args:
        first_values: each fully evaluated config's metric on the first ``first`` canvases.
        full_values: the same configs' metric on all ``subset`` canvases.
        first, subset: canvas counts, ``0 < first < subset``.
        min_pairs: fewer finite pairs than this -> None.

    Returns:
        ``sd(v(first) - v(subset)) * sqrt(first / (subset - first))`` in metric units, or None.
    """
    a = np.asarray(first_values, dtype=np.float64)
    b = np.asarray(full_values, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if int(ok.sum()) < max(2, min_pairs) or not 0 < first < subset:
        return None
    return float(np.std(a[ok] - b[ok], ddof=1) * math.sqrt(first / (subset - first)))


def select_candidates(latency_ms: Sequence[float], values: Sequence[float], margin: Optional[float],
                      max_candidates: int, maximize: bool = True) -> List[int]:
    """Indices of the configs worth re-scoring: the front, then those within ``margin`` of it, contested first.

    Each qualifying config has a distance to the front's boundary: a config off the front, its gap behind the
    best config that is no slower (:func:`search.fidelity.front_rivals`, at most ``margin``); a front member, its
    lead over the best strictly faster config (infinite for the fastest). When more than ``max_candidates``
    qualify, the nearest are kept: the configs whose confirmed score can reorder the front (the accurate end,
    where configs differ by tenths of a point) before the members that lead every faster config by far. A config
    is kept together with its rival (the front member its distance is measured from), so the confirmed front
    compares the pairs the search could not separate; a pair that no longer fits under the cap is skipped.

    Args:
        latency_ms: (n,) predicted latencies of the feasible configs.
        values: (n,) their metric on the search's subset.
        margin: paired noise margin (metric units); None = the front members only.
        max_candidates: at most this many.
        maximize: the metric's direction.

    Returns:
        Indices into the inputs, ordered by latency.
    """
    lat = np.asarray(latency_ms, dtype=np.float64)
    val = np.asarray(values, dtype=np.float64)
    # gap: how far the best config that is no slower is ahead (0 for a front member); the multi-fidelity rule's
    # could_enter_front is gap <= margin
    gap, behind_rival = front_rivals(lat, val, lat, val, maximize)
    ahead, member_rival = front_rivals(lat, val, lat, val, maximize, strictly_faster=True)
    on_front = gap <= 0.0
    keep = gap <= (margin if margin is not None else 0.0)
    distance = np.where(on_front, -ahead, gap)
    # a config is only worth re-scoring beside its rival: the best no-slower config for one behind the front,
    # the best strictly faster one for a member (both front members); -1 for the fastest member
    rival = np.where(on_front, member_rival, behind_rival)
    cap = max(1, int(max_candidates))
    chosen: List[int] = []
    for i in (int(j) for j in np.lexsort((lat, distance)) if keep[j]):
        unit = [j for j in dict.fromkeys((i, int(rival[i]))) if j >= 0 and j not in chosen]
        if len(chosen) + len(unit) <= cap:
            chosen += unit
        elif not chosen:  # a cap of one: the front member of the nearest pair
            chosen = [unit[-1]]
        if len(chosen) >= cap:
            break
    return sorted(chosen, key=lambda i: (lat[i], i))


def confirm_front(exp_dir, *, canvases: int = 256, z: float = 1.0, max_candidates: int = 24,
                  seed: Optional[int] = None, threads: Optional[int] = None, batch_size: int = 16,
                  progress: bool = True) -> Dict[str, Any]:
    """Re-score the front's neighbourhood of ``exp_dir`` on ``canvases`` canvases (see the module docstring).

    Args:
        exp_dir: the experiment directory.
        canvases: confirmation canvases (> the search's subset size).
        z: paired standard deviations of the subset's noise that still make a config a candidate (> 0).
        max_candidates: re-scored configs at most (>= 1).
        seed: canvas seed (default: the search's, so its subset is the first part of these canvases).
        threads: torch threads (default: all cores).
        batch_size: canvases per forward pass.
        progress: tqdm bar on stderr.

    Returns:
        ``{"n", "canvases", "seed", "z", "noise_sd", "margin", "dense_value", "budget_ms", "metric",
        "members": [{trial_number, config, predicted_latency_ms, predicted_vs_dense, search_value,
        confirmed_value, retention, confirmed_pareto}] (by latency), "best": the most accurate confirmed
        front member (or None), "seconds"}``; values and retention are ratios 0..1, latencies in ms.

    Raises:
        UserError: the experiment uses a user evaluator, a joint weight search, or ``canvases`` is not larger
            than its subset; search.runner.ResumeError: unreadable experiment.
    """
    import torch

    from supernet.checkpoint import load_checkpoint, read_sidecar
    from supernet.evaluate import DEFAULT_VAL_SEED

    from .evaluators import build_evaluator
    from .fidelity import first_canvases, subset_key
    from .front import CONFIRMED_FILE, front_table, read_measured, write_front_table
    from .pareto import non_dominated_mask
    from .policy import SearchPolicy
    from .runner import check_frozen, load_frozen_spec
    from .trial_log import final_trials, load_trials

    t0 = time.perf_counter()
    exp_dir = Path(exp_dir)
    frozen, spec = load_frozen_spec(exp_dir)
    check_frozen(frozen, spec, exp_dir)  # a changed checkpoint or predictor would rewrite confirmed.json with it
    measured = read_measured(exp_dir)  # read (and checked) before anything is re-scored or written
    ev = spec.evaluator
    if ev.name != "fashion_mosaic":
        raise UserError(f"confirm: {exp_dir} uses the evaluator {ev.name!r}; confirm re-scores with the built-in "
                        "fashion_mosaic evaluator only; fix: re-score your front with your own evaluator")
    if canvases <= ev.subset_size:
        raise UserError(f"confirm: --canvases {canvases} is not more than the search's {ev.subset_size} canvases; "
                        f"fix: pass --canvases {4 * ev.subset_size} or more")
    if not z > 0 or max_candidates < 1:
        raise UserError("confirm: --z must be > 0 and --max-candidates >= 1; fix: pass e.g. --z 1 --max-candidates 24")
    policy = SearchPolicy.from_spec(spec)
    metric = policy.metric
    maximize = policy.directions[0] == "maximize"
    df = load_trials(exp_dir)
    fin = final_trials(df) if len(df) else df
    out: Dict[str, Any] = {"n": 0, "canvases": int(canvases), "metric": metric, "z": float(z),
                           "budget_ms": policy.budget, "members": [], "best": None}
    if not len(fin):
        out["seconds"] = time.perf_counter() - t0
        return out
    val = np.asarray(fin[metric], dtype=np.float64)
    lat = np.asarray(fin["predicted_latency_ms"], dtype=np.float64)
    # a ``cached`` row is the same computation as a ``complete`` one: re-scoring its twin covers it
    feasible = (fin["status"] == "complete").to_numpy() & np.isfinite(val) & np.isfinite(lat)
    if policy.budget is not None:
        feasible &= lat <= policy.budget
    rows = fin[feasible].reset_index(drop=True)
    for c in ("w_qkv", "w_proj", "w_mlp"):
        if c in rows and np.isfinite(np.asarray(rows[c], dtype=np.float64)).any():
            raise UserError(f"confirm: {exp_dir} is a joint search with DIMAP weight ratios; confirm re-scores "
                            "activation-sparsity configs only; fix: re-score its front with baselines or your own "
                            "evaluator")
    # the subset's noise, from the first-rung scores multi-fidelity recorded
    m = first_canvases(ev.subset_size, ev.batch_size, ev.first_fraction)
    key = subset_key(metric, m)
    first = [json.loads(s).get(key, math.nan) if isinstance(s, str) else math.nan for s in rows["metrics_json"]]
    noise = subset_noise(first, rows[metric], m, ev.subset_size) if ev.fidelity else None
    margin = None if noise is None else float(z * math.sqrt(2.0) * noise)
    idx = select_candidates(rows["predicted_latency_ms"], rows[metric], margin, max_candidates, maximize)
    meta = read_sidecar(spec.supernet.checkpoint)
    kwargs = dict(ev.kwargs or {})
    seed = int(seed) if seed is not None else int(kwargs.get("seed", DEFAULT_VAL_SEED))
    kwargs["seed"] = seed
    if threads:
        torch.set_num_threads(int(threads))
    model, _ = load_checkpoint(spec.supernet.checkpoint, img_size=policy.img_size)
    model.eval()
    scorer = build_evaluator("fashion_mosaic", subset_size=int(canvases), batch_size=batch_size, split=ev.split,
                             kwargs=kwargs, meta=meta, img_size=list(policy.img_size), mosaic=dict(ev.mosaic))
    configs = [json.loads(rows["config"].iloc[i]) for i in idx]
    dense_cfg = policy.space.dense_config().ratios
    todo = [dense_cfg] + configs
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc=f"confirming on {canvases} canvases", unit="config")
    scores = []
    for cfg in it:
        model.set_sparsity(cfg)
        scores.append(float(scorer(model)[metric]))
    dense_value, conf = scores[0], np.asarray(scores[1:], dtype=np.float64)
    clat = rows["predicted_latency_ms"].to_numpy(dtype=np.float64)[idx]
    on_front = non_dominated_mask(np.stack([conf, clat], 1), ["max" if maximize else "min", "min"]) if len(idx) \
        else np.zeros(0, dtype=bool)
    records: Dict[str, Any] = {}
    for j, i in enumerate(idx):
        r = rows.iloc[i]
        rec = {"trial_number": int(r["trial_number"]), "config_hash": str(r["config_hash"]), "config": configs[j],
               "predicted_latency_ms": float(r["predicted_latency_ms"]),
               "predicted_vs_dense": float(r["predicted_latency_ms"]) / policy.dense_ms,
               "search_value": float(r[metric]), "confirmed_value": float(conf[j]),
               "retention": float(conf[j] / dense_value) if dense_value else math.nan,
               "confirmed_pareto": bool(on_front[j]), "canvases": int(canvases)}
        out["members"].append(rec)
        records[rec["config_hash"]] = rec
    best = [r for r in out["members"] if r["confirmed_pareto"]]
    if best:
        out["best"] = max(best, key=lambda r: r["confirmed_value"] * (1 if maximize else -1))
    out.update(n=len(idx), seed=seed, noise_sd=noise, margin=margin, dense_value=dense_value,
               first_canvases=m, subset=int(ev.subset_size))
    atomic_write_json(exp_dir / CONFIRMED_FILE, {
        "configs": records, "canvases": int(canvases), "seed": seed, "metric": metric, "dense_value": dense_value,
        "z": float(z), "noise_sd": noise, "margin": margin,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    write_front_table(exp_dir, front_table(df, metric, maximize=maximize, budget_ms=policy.budget,
                                           experiment=spec.name, measured=measured, confirmed=records))
    out["seconds"] = time.perf_counter() - t0
    return out

