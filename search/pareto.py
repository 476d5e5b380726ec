"""Pareto front and hypervolume of a trial log.

Objectives are ``(column, "min" | "max")`` pairs; the default is accuracy vs. latency,
``(("miou", "max"), ("predicted_latency_ms", "min"))``. Internally every objective is
converted to minimisation (``"max"`` columns are negated).

Algorithms:

* Non-dominated filter: exact duplicates are collapsed first (``numpy.unique``); two
  objectives use the sort-based sweep of Kung, Luccio & Preparata (1975), "On finding the
  maxima of a set of vectors", J. ACM 22(4), O(n log n); three or more use vectorised
  block-wise culling in order of the objective sum (O(n * front * m), worst case
  O(n^2 m); fine up to ~10^4 points).
* Hypervolume: two objectives use the exact sweep (sum of rectangle slabs after sorting
  the front), O(n log n). Three or more use Optuna's exact implementation
  (``optuna._hypervolume.compute_hypervolume``: O(n^2) for 3-D, WFG of While, Bradstreet &
  Barone (2012), "A fast way of calculating exact hypervolumes", IEEE TEC 16(1), above)
  when the installed Optuna has it, else Hypervolume-by-Slicing-Objectives (HSO, While,
  Hingston, Barone & Huband (2006), IEEE TEC 10(1)).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from search.trial_log import FEASIBLE_STATUSES, final_trials

__all__ = [
    "DEFAULT_OBJECTIVES",
    "LATENCY_COLUMN",
    "Objective",
    "default_reference_point",
    "hypervolume",
    "hypervolume_history",
    "non_dominated_mask",
    "pareto_front",
]

Sense = Literal["min", "max"]
#: One objective: (column name, "min" | "max").
Objective = tuple[str, Sense]
#: Column holding the predicted latency (ms); the latency budget applies to it.
LATENCY_COLUMN = "predicted_latency_ms"
#: mIoU (ratio 0..1) maximised, predicted latency (ms) minimised.
DEFAULT_OBJECTIVES: tuple[Objective, ...] = (("miou", "max"), (LATENCY_COLUMN, "min"))

_CHUNK_ELEMS = 1 << 22  # booleans per chunk of the pairwise dominance test


# --------------------------------------------------------------------------- helpers


def _senses(senses: Sequence[str] | str | None, m: int) -> list[str]:
    if senses is None:
        return ["min"] * m
    if isinstance(senses, str):
        senses = [senses] * m
    senses = list(senses)
    if len(senses) != m:
        raise ValueError(f"got {len(senses)} senses for {m} objectives")
    bad = [s for s in senses if s not in ("min", "max")]
    if bad:
        raise ValueError(f"objective senses must be 'min' or 'max', got {bad}")
    return senses


def _to_min(points: np.ndarray | Sequence, senses: Sequence[str] | str | None) -> np.ndarray:
    """[n, m] float64 array with every "max" column negated; NaN -> ValueError."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts.reshape(1, -1) if pts.size else pts.reshape(0, 0)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D array [n, m], got shape {pts.shape}")
    sign = np.array([-1.0 if s == "max" else 1.0 for s in _senses(senses, pts.shape[1])])
    if np.isnan(pts).any():
        raise ValueError("points contain NaN; drop those rows first")
    return pts * sign


def _check_objectives(objectives: Sequence[Objective]) -> list[tuple[str, str]]:
    objs = [(str(c), str(s)) for c, s in objectives]
    if not objs:
        raise ValueError("at least one objective is required")
    _senses([s for _, s in objs], len(objs))
    if len({c for c, _ in objs}) != len(objs):
        raise ValueError(f"objective columns repeat: {objs}")
    return objs


# --------------------------------------------------------------------------- dominance


def _nd_unique_sorted(u: np.ndarray) -> np.ndarray:
    """Non-dominated mask of unique, lexicographically sorted rows (minimisation)."""
    k, m = u.shape
    if k == 0:
        return np.zeros(0, dtype=bool)
    if m == 1:
        mask = np.zeros(k, dtype=bool)
        mask[0] = True
        return mask
    if m == 2:
        # Sorted by (f0, f1) and unique: row i is dominated iff an earlier row has f1 <= f1[i].
        prev_min = np.minimum.accumulate(np.concatenate(([np.inf], u[:-1, 1])))
        return u[:, 1] < prev_min
    # Rows are unique, so "j <= i in every objective" (j != i) means j dominates i, and a
    # dominator has a strictly smaller objective sum: visit rows by increasing sum in
    # blocks, testing each block against the front found so far and against itself
    # (a row dominated by a dominated row is dominated by that row's dominator too).
    order = np.argsort(u.sum(axis=1), kind="stable")
    mask = np.zeros(k, dtype=bool)
    front = np.zeros((0, m))
    block = 256
    for lo in range(0, k, block):
        idx = order[lo : lo + block]
        blk = u[idx]
        inner = (blk[None, :, :] <= blk[:, None, :]).all(axis=2)
        np.fill_diagonal(inner, False)
        dominated = inner.any(axis=1)
        step = max(1, _CHUNK_ELEMS // max(1, len(blk) * m))
        for f_lo in range(0, front.shape[0], step):
            f_blk = front[f_lo : f_lo + step]
            dominated |= (f_blk[None, :, :] <= blk[:, None, :]).all(axis=2).any(axis=1)
        mask[idx[~dominated]] = True
        front = np.vstack([front, blk[~dominated]])
    return mask


def non_dominated_mask(
    points: np.ndarray | Sequence,
    senses: Sequence[str] | str | None = None,
    *,
    unique: bool = False,
) -> np.ndarray:
    """Mask of the points not dominated by any other point.

    ``a`` dominates ``b`` when ``a`` is at least as good in every objective and strictly
    better in one. Exact duplicates do not dominate each other: all copies of a
    non-dominated vector are ``True`` unless ``unique=True``, which keeps only the first
    copy (in input order).

    Args:
        points: ``[n, m]`` objective values (any units).
        senses: per objective ``"min"`` or ``"max"`` (a single string applies to all;
            default all ``"min"``).
        unique: mark only the first of several identical non-dominated vectors.

    Returns:
        ``bool`` array of shape ``[n]``.

    Raises:
        ValueError: NaN in ``points``, wrong shape, or bad senses.

    Two objectives: O(n log n) sort + running minimum; more: block-wise culling against the
    front in order of the objective sum, O(n * front size * m) (worst case O(n^2 m)).
    """
    pts = _to_min(points, senses)
    n = pts.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    u, first, inverse = np.unique(pts, axis=0, return_index=True, return_inverse=True)
    nd_u = _nd_unique_sorted(u)
    if unique:
        mask = np.zeros(n, dtype=bool)
        mask[first[nd_u]] = True
        return mask
    return nd_u[np.asarray(inverse).reshape(-1)]


# --------------------------------------------------------------------------- front


def _check_budget(budget_ms: Any) -> None:
    """A latency budget is None or a positive, finite number of ms (NaN would silently empty every front)."""
    if budget_ms is not None and (isinstance(budget_ms, bool) or not isinstance(budget_ms, numbers.Real)
                                  or not math.isfinite(budget_ms) or budget_ms <= 0):
        raise ValueError(f"budget_ms must be a positive number of ms or None, got {budget_ms!r}")


def _prepare(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    feasible_only: bool,
    budget_ms: float | None,
    latency_column: str,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows eligible for the front: final row per trial, feasible, within budget, finite."""
    objs = _check_objectives(objectives)
    _check_budget(budget_ms)
    missing = [c for c, _ in objs if c not in df.columns]
    if budget_ms is not None and latency_column not in df.columns:
        missing.append(latency_column)
    if missing:
        raise KeyError(f"trial table has no column(s) {missing}; columns: {list(df.columns)}")
    work = df
    if (
        {"trial_number", "status"} <= set(work.columns)
        and work["trial_number"].duplicated().any()
    ):
        work = final_trials(work)
    if feasible_only and "status" in work.columns:
        work = work[work["status"].isin(FEASIBLE_STATUSES)]
    if budget_ms is not None:
        work = work[work[latency_column].astype(float) <= float(budget_ms)]
    vals = work[[c for c, _ in objs]].to_numpy(dtype=np.float64, na_value=np.nan)
    work = work[~np.isnan(vals).any(axis=1)]
    return work, objs


def pareto_front(
    df: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    feasible_only: bool = True,
    budget_ms: float | None = None,
    *,
    latency_column: str = LATENCY_COLUMN,
) -> pd.DataFrame:
    """Non-dominated trials of a trial table.

    Eligible rows: when a ``trial_number`` repeats (retries), only the row chosen by
    :func:`search.trial_log.final_trials`; with ``feasible_only`` only status ``complete``
    or ``cached``; with ``budget_ms`` only ``latency_column <= budget_ms`` (ms); rows with a
    null / NaN objective are dropped (rejected and failed trials have no metrics).
    Exact duplicates of an objective vector are kept once, the lowest ``trial_number``.

    Args:
        df: trial table (e.g. :func:`search.trial_log.load_trials`).
        objectives: ``(column, "min" | "max")`` pairs; default mIoU max, latency (ms) min.
        feasible_only: keep only ``complete`` / ``cached`` rows.
        budget_ms: latency budget in ms, or ``None``.
        latency_column: column the budget applies to.

    Returns:
        The front rows (all columns of ``df``), sorted by the first ``"min"`` objective
        ascending (latency), ties by the other objectives best-first, then
        ``trial_number``; a fresh index. With no ``"min"`` objective, by the first objective
        best-first.

    Raises:
        KeyError: an objective column (or ``latency_column`` with a budget) is missing.
        ValueError: bad objectives, or a budget that is not a positive number.
    """
    work, objs = _prepare(df, objectives, feasible_only, budget_ms, latency_column)
    if "trial_number" in work.columns:
        work = work.sort_values("trial_number", kind="stable")
    vals = work[[c for c, _ in objs]].to_numpy(dtype=np.float64)
    front = work[non_dominated_mask(vals, [s for _, s in objs], unique=True)]

    mins = [i for i, (_, s) in enumerate(objs) if s == "min"]
    order = ([mins[0]] if mins else [0]) + [i for i in range(len(objs)) if i not in mins[:1]]
    by = [objs[i][0] for i in order]
    ascending = [objs[i][1] == "min" for i in order]
    if "trial_number" in front.columns:
        by.append("trial_number")
        ascending.append(True)
    return front.sort_values(by, ascending=ascending, kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- hypervolume


def _hv_2d(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume (minimisation; every point strictly better than ``ref``)."""
    front = np.unique(pts, axis=0)  # lexsorted by (f0, f1)
    front = front[_nd_unique_sorted(front)]  # f0 ascending, f1 descending
    widths = np.diff(np.append(front[:, 0], ref[0]))
    return float(np.dot(widths, ref[1] - front[:, 1]))


def _hv_hso(pts: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing objectives (While et al. 2006), any m >= 1."""
    m = pts.shape[1]
    if pts.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return _hv_2d(pts, ref)
    u = np.unique(pts, axis=0)
    u = u[_nd_unique_sorted(u)]
    u = u[np.argsort(u[:, -1], kind="stable")]
    z = np.append(u[:, -1], ref[-1])
    total = 0.0
    for i in range(u.shape[0]):
        depth = z[i + 1] - z[i]
        if depth > 0:
            total += depth * _hv_hso(u[: i + 1, :-1], ref[:-1])
    return float(total)


def _hv_nd(pts: np.ndarray, ref: np.ndarray) -> float:
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # pragma: no cover - depends on the installed Optuna
        return _hv_hso(pts, ref)
    try:
        return float(compute_hypervolume(pts, ref))
    except TypeError:  # pragma: no cover - private API changed its signature
        return _hv_hso(pts, ref)


def hypervolume(
    points: np.ndarray | Sequence,
    ref_point: np.ndarray | Sequence[float],
    senses: Sequence[str] | str | None = None,
) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``ref_point``.

    The volume (product of the objectives' units, e.g. mIoU x ms) of the region that is
    dominated by at least one point and dominates the reference point. Points that do not
    strictly dominate ``ref_point`` contribute nothing (they are dropped). Dominated points
    and duplicates are harmless.

    Args:
        points: ``[n, m]`` objective values, in the objectives' own senses.
        ref_point: ``[m]`` reference point in the same senses (e.g. ``(0.0, budget_ms)``
            for (mIoU max, latency min)); see :func:`default_reference_point`.
        senses: per objective ``"min"`` or ``"max"`` (default all ``"min"``).

    Returns:
        The hypervolume (``0.0`` without contributing points; ``inf`` if a point is
        infinitely good).

    Raises:
        ValueError: NaN in ``points``, non-finite ``ref_point``, shape mismatch, bad senses.

    2-D: exact O(n log n) sweep; m >= 3: Optuna's exact ``compute_hypervolume`` if
    available, else HSO.
    """
    ref_arr = np.asarray(ref_point, dtype=np.float64).reshape(-1)
    m = ref_arr.shape[0]
    if m == 0:
        raise ValueError("ref_point is empty")
    if not np.isfinite(ref_arr).all():
        raise ValueError(f"ref_point must be finite, got {ref_arr.tolist()}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return 0.0
    pts = _to_min(pts.reshape(-1, m) if pts.ndim == 1 else pts, senses)
    if pts.shape[1] != m:
        raise ValueError(f"points have {pts.shape[1]} objectives, ref_point has {m}")
    ref = _to_min(ref_arr.reshape(1, m), senses)[0]
    pts = pts[(pts < ref).all(axis=1)]
    if pts.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - pts[:, 0].min())
    if m == 2:
        return _hv_2d(pts, ref)
    return _hv_nd(pts, ref)


def default_reference_point(
    df: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    budget_ms: float | None = None,
    *,
    latency_column: str = LATENCY_COLUMN,
    margin: float = 0.1,
) -> np.ndarray:
    """Reference point for :func:`hypervolume`, in the objectives' own senses.

    Per objective:

    * ``latency_column`` with a budget: ``budget_ms`` (ms) -- configs over the budget add
      nothing.
    * other ``"min"`` objectives (latency without budget, MACs, ...): the worst observed
      value plus ``margin`` of its magnitude (``max * 1.1`` for positive values; ``+margin``
      when it is 0), so that the worst trial still contributes.
    * ``"max"`` objectives (mIoU, pixel accuracy, ratio 0..1): ``0.0``, or the worst
      observed value minus ``margin`` of its magnitude when values are negative.

    For the default (mIoU max, latency min) this is ``(0.0, budget_ms or 1.1 * max
    latency)``. Observed values come from ``complete`` / ``cached`` rows when there are
    any, else from all rows (rejected trials still have a predicted latency). Compare
    hypervolumes only under the same reference point.

    Raises:
        KeyError: a column is missing.
        ValueError: a ``"min"`` objective has no finite value to derive a bound from.
    """
    objs = _check_objectives(objectives)
    missing = [c for c, _ in objs if c not in df.columns]
    if missing:
        raise KeyError(f"trial table has no column(s) {missing}")
    feasible = df
    if "status" in df.columns:
        feasible = df[df["status"].isin(FEASIBLE_STATUSES)]
    ref = []
    for col, sense in objs:
        if col == latency_column and budget_ms is not None:
            ref.append(float(budget_ms))
            continue
        vals = np.array([], dtype=np.float64)
        for source in (feasible, df):
            vals = source[col].to_numpy(dtype=np.float64, na_value=np.nan)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                break
        if sense == "max":
            worst = float(vals.min()) if vals.size else 0.0
            ref.append(0.0 if worst >= 0 else worst - margin * abs(worst))
        else:
            if not vals.size:
                raise ValueError(
                    f"cannot derive a reference value for {col!r}: no finite values; "
                    "pass ref_point explicitly"
                )
            worst = float(vals.max())
            ref.append(worst + margin * abs(worst) if worst != 0 else margin)
    return np.asarray(ref, dtype=np.float64)


def hypervolume_history(
    df: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    ref_point: np.ndarray | Sequence[float] | None = None,
    by: Literal["generation", "trial"] = "generation",
    *,
    feasible_only: bool = True,
    budget_ms: float | None = None,
    latency_column: str = LATENCY_COLUMN,
) -> pd.DataFrame:
    """Cumulative hypervolume after each generation (or trial).

    Every ``generation`` / ``trial_number`` value present in ``df`` gets one row, in
    ascending order, holding the hypervolume of the eligible trials (same eligibility as
    :func:`pareto_front`) with key ``<=`` that value. The result is non-decreasing.

    Args:
        df: trial table.
        objectives: ``(column, "min" | "max")`` pairs.
        ref_point: reference point in the objectives' senses; default
            :func:`default_reference_point` of the whole table (fixed for all rows).
        by: ``"generation"`` or ``"trial"``.
        feasible_only, budget_ms, latency_column: as in :func:`pareto_front`.

    Returns:
        DataFrame with columns ``[generation | trial_number, n_trials, n_front,
        hypervolume]``: ``n_trials`` = trials seen so far (any status), ``n_front`` = size
        of the Pareto front so far (points dominating the reference point).

    Raises:
        KeyError: missing column. ValueError: bad ``by`` / objectives / reference point.
    """
    keys = {"generation": "generation", "trial": "trial_number"}
    if by not in keys:
        raise ValueError(f"by must be 'generation' or 'trial', got {by!r}")
    key = keys[by]
    if key not in df.columns:
        raise KeyError(f"trial table has no column {key!r}")
    objs = _check_objectives(objectives)
    senses = [s for _, s in objs]
    columns = [key, "n_trials", "n_front", "hypervolume"]

    _check_budget(budget_ms)
    table = df
    if {"trial_number", "status"} <= set(df.columns) and df["trial_number"].duplicated().any():
        table = final_trials(df)
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "hypervolume" else "int64")
                             for c in columns})
    if ref_point is None:
        ref_point = default_reference_point(
            table, objectives, budget_ms, latency_column=latency_column
        )
    ref = np.asarray(ref_point, dtype=np.float64).reshape(-1)
    if ref.shape[0] != len(objs) or not np.isfinite(ref).all():
        raise ValueError(f"ref_point must be {len(objs)} finite numbers, got {ref.tolist()}")
    ref_min = _to_min(ref.reshape(1, -1), senses)[0]

    eligible, _ = _prepare(table, objs, feasible_only, budget_ms, latency_column)
    pts = _to_min(eligible[[c for c, _ in objs]].to_numpy(dtype=np.float64), senses)
    inside = (pts < ref_min).all(axis=1)
    pts, pts_keys = pts[inside], eligible[key].to_numpy()[inside]

    all_keys = table[key].to_numpy()
    steps = np.unique(all_keys)
    counts = np.searchsorted(np.sort(all_keys), steps, side="right")
    front = np.zeros((0, len(objs)))
    hv = 0.0
    rows = []
    for step, n_seen in zip(steps, counts):
        new = pts[pts_keys == step]
        if new.shape[0]:
            cand = np.vstack([front, new])
            front = cand[non_dominated_mask(cand, unique=True)]
            hv = hypervolume(front, ref_min)
        rows.append((step, int(n_seen), int(front.shape[0]), hv))
    out = pd.DataFrame(rows, columns=columns)
    out["hypervolume"] = out["hypervolume"].astype("float64")
    return out
