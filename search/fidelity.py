"""Multi-fidelity evaluation: successive halving over evaluation canvases, with a paired stopping rule.

A new config is first scored on the first ``m`` canvases of the fixed evaluation subset (``m`` =
``[evaluator] first_fraction`` of it, a multiple of the batch size). It finishes the rest only if it
could still enter the Pareto front. The test is *paired*: every fully evaluated config also recorded
its metric on the same first ``m`` canvases, so the candidate is compared with the front on the same
pixels, and most of the canvas-to-canvas variation cancels.

Rule (for a metric to maximise; mirrored for one to minimise). Let ``v_c`` be the candidate's metric on
the first ``m`` canvases and ``L_c`` its predicted latency. Stop the candidate when a front member f
with ``L_f <= L_c`` has ``v_f(m) - v_c > margin``: on the shared canvases it is clearly better and no
slower, so the candidate would be dominated on the full subset as well.

Margin: ``margin = z * sd`` where ``sd`` is the standard deviation of the paired error, estimated from
the fully evaluated configs: each has ``e = v(m) - v(full)`` (its subset score minus its full score),
and a paired comparison of two configs errs by ``e_c - e_f``, whose spread is ``sqrt(2) * std(e)``.
Until ``min_pairs`` configs are fully evaluated every config is evaluated fully (no estimate, no stop).
With Gaussian errors, z = 2 stops a config that truly belongs on the front with probability <= 2.3 %
(one-sided); ``bench/search_efficiency.py`` measures the real rate by finishing every stopped config.

A stopped config is logged with status ``partial`` and the canvases it saw; it is never a front member,
and the sampler is told its subset score (its honest estimate).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["subset_key", "paired_margin", "front_gap", "front_gaps", "front_rivals", "could_enter_front", "first_canvases"]


def subset_key(metric: str, canvases: int) -> str:
    """Name of the metric on the first ``canvases`` canvases in a result's metrics (``"miou@64"``)."""
    return f"{metric}@{int(canvases)}"


def first_canvases(subset_size: int, batch_size: int, fraction: float) -> int:
    """Canvases of the first rung: ``fraction`` of the subset rounded down to whole batches (>= 1 batch),
    or the whole subset when that leaves nothing for the second rung."""
    m = max(batch_size, int(subset_size * fraction) // batch_size * batch_size)
    return m if m < subset_size else subset_size


def paired_margin(subset_values: Sequence[float], full_values: Sequence[float], z: float = 2.0,
                  min_pairs: int = 8) -> Optional[float]:
    """The stopping margin ``z * sqrt(2) * std(v(m) - v(full))`` from fully evaluated configs, or None.

    Args:
        subset_values: each fully evaluated config's metric on the first-rung canvases.
        full_values: the same configs' metric on the whole subset.
        z: how many paired standard deviations a stop needs.
        min_pairs: fewer configs than this -> None (evaluate everything fully).
    """
    a = np.asarray(subset_values, dtype=np.float64)
    b = np.asarray(full_values, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if int(ok.sum()) < max(2, min_pairs):
        return None
    e = a[ok] - b[ok]
    return float(z * math.sqrt(2.0) * e.std(ddof=1))


def front_rivals(latency_ms: Sequence[float], values: Sequence[float], point_latency_ms: Sequence[float],
                 point_values: Sequence[float], maximize: bool = True,
                 strictly_faster: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """For each query ``(latency_ms[i], values[i])``: the best point that is no slower, and how far it is ahead.

    Args:
        latency_ms: (q,) query latencies (ms).
        values: (q,) query metric values.
        point_latency_ms, point_values: (p,) the points (the front, or every config) on the same canvases.
        maximize: the metric's direction.
        strictly_faster: compare with the strictly faster points only (a front member's lead is minus the gap).

    Returns:
        ``(gaps, rivals)``: float64 (q,) gap in metric units (``> 0``: that point is better by that much; ``-inf``
        where no point is no slower) and int64 (q,) the index of that point into the points (``-1`` where none).
        O((p + q) log p).
    """
    sign = 1.0 if maximize else -1.0
    q_lat = np.asarray(latency_ms, dtype=np.float64).reshape(-1)
    q_val = sign * np.asarray(values, dtype=np.float64).reshape(-1)
    p_lat = np.asarray(point_latency_ms, dtype=np.float64).reshape(-1)
    if not len(p_lat):
        return np.full(len(q_lat), -np.inf), np.full(len(q_lat), -1, dtype=np.int64)
    order = np.argsort(p_lat, kind="stable")
    p_lat = p_lat[order]
    v = sign * np.asarray(point_values, dtype=np.float64).reshape(-1)[order]
    best = np.fmax.accumulate(v)  # fmax: a point without a value (NaN) is skipped, not propagated
    at = np.maximum.accumulate(np.where(v == best, np.arange(len(v)), 0))  # where the running best was set
    k = np.searchsorted(p_lat, q_lat, side="left" if strictly_faster else "right")
    j = np.maximum(k - 1, 0)
    ahead = np.where(k > 0, best[j], -np.inf)
    return ahead - q_val, np.where(k > 0, order[at[j]], -1)


def front_gaps(latency_ms: Sequence[float], values: Sequence[float], point_latency_ms: Sequence[float],
               point_values: Sequence[float], maximize: bool = True, strictly_faster: bool = False) -> np.ndarray:
    """For each query: how far the best point that is no slower is ahead of it (the gaps of :func:`front_rivals`).

    Returns:
        float64 (q,): the gap in metric units (``> 0``: some no-slower point is better by that much); ``-inf``
        where no point is no slower.
    """
    return front_rivals(latency_ms, values, point_latency_ms, point_values, maximize, strictly_faster)[0]


def front_gap(value: float, latency_ms: float, points: Iterable[Tuple[float, float]], maximize: bool = True) -> float:
    """How far the best of ``points`` (``(latency_ms, value)`` pairs: the front, or every config) that is no
    slower than ``latency_ms`` is ahead of ``value``; ``-inf`` when none is no slower (see :func:`front_gaps`)."""
    pts = list(points)
    lat = [p[0] for p in pts]
    val = [p[1] for p in pts]
    return float(front_gaps([latency_ms], [value], lat, val, maximize)[0])


def could_enter_front(value: float, latency_ms: float, front: Iterable[Tuple[float, float]], margin: float,
                      maximize: bool = True) -> bool:
    """Whether a candidate scoring ``value`` on the first-rung canvases could still enter the front.

    Args:
        value: the candidate's metric on the first-rung canvases.
        latency_ms: its predicted latency.
        front: ``(latency_ms, value on the same canvases)`` of the current front members.
        margin: the paired margin (>= 0).
        maximize: the metric's direction.

    Returns:
        False when some member is no slower and better by more than ``margin`` on the same canvases
        (:func:`front_gap` > ``margin``), or ``value`` is not finite.
    """
    return math.isfinite(value) and not front_gap(value, latency_ms, front, maximize) > margin


def front_points(rows: Iterable[Tuple[float, float, float]], maximize: bool = True) -> List[Tuple[float, float]]:
    """The (latency, first-rung value) pairs of the non-dominated rows among ``(latency, full value, first-rung
    value)`` (dominance on the full value and latency)."""
    pts = sorted(rows, key=lambda r: (r[0], -r[1] if maximize else r[1]))
    out, best = [], -math.inf
    for lat, full, sub in pts:
        score = full if maximize else -full
        if score > best:
            best = score
            out.append((lat, sub))
    return out
