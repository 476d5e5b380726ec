"""Tests of search.pareto: non-dominated filter, Pareto front, hypervolume (+ history)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from search import pareto
from search.pareto import (
    default_reference_point,
    hypervolume,
    hypervolume_history,
    non_dominated_mask,
    pareto_front,
)

from optuna._hypervolume import compute_hypervolume as optuna_hv


def brute_force_mask(points: np.ndarray) -> np.ndarray:
    """Reference O(n^2) non-dominated test (minimisation), duplicates all kept."""
    n = len(points)
    out = np.ones(n, dtype=bool)
    for i, j in itertools.product(range(n), range(n)):
        if np.all(points[j] <= points[i]) and np.any(points[j] < points[i]):
            out[i] = False
    return out


def brute_force_hv_grid(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact HV of integer points by counting unit cells (minimisation)."""
    lo = points.min(axis=0)
    axes = [np.arange(lo[k], ref[k]) for k in range(len(ref))]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(ref))
    covered = (points[None, :, :] <= cells[:, None, :]).all(axis=2).any(axis=1)
    return float(covered.sum())


# ----------------------------------------------------------------------------- dominance


def test_non_dominated_mask_2d_hand_made():
    pts = np.array([
        [1.0, 5.0],  # 0 front
        [2.0, 3.0],  # 1 front
        [2.0, 4.0],  # 2 dominated by 1 (same f0, worse f1)
        [3.0, 3.0],  # 3 dominated by 1 (worse f0, same f1)
        [4.0, 1.0],  # 4 front
        [2.0, 3.0],  # 5 duplicate of 1
        [5.0, 5.0],  # 6 dominated
    ])
    assert non_dominated_mask(pts).tolist() == [True, True, False, False, True, True, False]
    assert non_dominated_mask(pts, unique=True).tolist() == [
        True, True, False, False, True, False, False]
    # maximising both flips the picture: only (5, 5) survives
    assert non_dominated_mask(pts, "max").tolist() == [False] * 6 + [True]


def test_non_dominated_mask_3d_hand_made():
    pts = np.array([
        [1, 1, 9],  # front
        [9, 1, 1],  # front
        [1, 9, 1],  # front
        [2, 2, 9],  # dominated by 0
        [5, 5, 5],  # front (nothing is <= in all three)
        [5, 5, 5],  # duplicate
        [5, 6, 5],  # dominated by 4
    ], dtype=float)
    assert non_dominated_mask(pts).tolist() == [True, True, True, False, True, True, False]
    assert non_dominated_mask(pts, unique=True).tolist() == [
        True, True, True, False, True, False, False]


@pytest.mark.parametrize("m", [2, 3, 4])
def test_non_dominated_mask_matches_brute_force(m):
    rng = np.random.default_rng(m)
    pts = rng.integers(0, 6, size=(80, m)).astype(float)  # many ties and duplicates
    senses = ["min", "max", "min", "max"][:m]
    expected = brute_force_mask(pts * np.array([1 if s == "min" else -1 for s in senses]))
    assert non_dominated_mask(pts, senses).tolist() == expected.tolist()


def test_non_dominated_mask_rejects_nan_and_bad_senses():
    with pytest.raises(ValueError, match="NaN"):
        non_dominated_mask(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="min"):
        non_dominated_mask(np.ones((2, 2)), ["min", "up"])
    assert non_dominated_mask(np.zeros((0, 2))).shape == (0,)


# ----------------------------------------------------------------------------- front


def trials_frame() -> pd.DataFrame:
    rows = [
        # trial, gen, status, miou, latency
        (0, 0, "complete", 0.50, 10.0),  # front
        (1, 0, "complete", 0.60, 20.0),  # front
        (2, 0, "complete", 0.55, 25.0),  # dominated by 1
        (3, 1, "rejected", np.nan, 5.0),  # no metrics
        (4, 1, "failed", np.nan, 8.0),
        (5, 1, "cached", 0.60, 20.0),  # exact duplicate of 1 -> dropped (higher trial)
        (6, 1, "complete", 0.70, 40.0),  # front, over a 30 ms budget
        (7, 2, "complete", 0.65, 30.0),  # front, exactly at a 30 ms budget
        (8, 2, "complete", 0.40, 10.0),  # dominated by 0 (same latency)
        (9, 2, "failed", 0.99, 1.0),  # failed: ignored even with a value
    ]
    return pd.DataFrame(rows, columns=["trial_number", "generation", "status", "miou",
                                       "predicted_latency_ms"])


def test_pareto_front_default_objectives():
    front = pareto_front(trials_frame())
    assert front["trial_number"].tolist() == [0, 1, 7, 6]
    assert front["predicted_latency_ms"].is_monotonic_increasing
    assert front["miou"].is_monotonic_increasing


def test_pareto_front_budget_and_feasibility():
    df = trials_frame()
    assert pareto_front(df, budget_ms=30.0)["trial_number"].tolist() == [0, 1, 7]
    assert pareto_front(df, budget_ms=15.0)["trial_number"].tolist() == [0]
    # without the feasibility filter the failed trial 9 (with a value) dominates everything
    assert pareto_front(df, feasible_only=False)["trial_number"].tolist() == [9]
    assert pareto_front(df, budget_ms=1.0).empty
    for bad in (float("nan"), -1.0, 0, True, "30"):  # never a silently empty front
        with pytest.raises(ValueError, match="budget_ms"):
            pareto_front(df, budget_ms=bad)
        with pytest.raises(ValueError, match="budget_ms"):
            hypervolume_history(df.assign(generation=0), budget_ms=bad)


def test_pareto_front_duplicate_keeps_lowest_trial_number_regardless_of_order():
    df = trials_frame().iloc[::-1]
    front = pareto_front(df)
    assert 1 in front["trial_number"].tolist() and 5 not in front["trial_number"].tolist()


def test_pareto_front_uses_final_row_of_retried_trials():
    df = trials_frame()
    retry = pd.DataFrame([(4, 1, "complete", 0.58, 8.0)], columns=df.columns)
    df = pd.concat([df.assign(attempt=0), retry.assign(attempt=1)], ignore_index=True)
    front = pareto_front(df)
    assert front["trial_number"].tolist() == [4, 1, 7, 6]
    assert front["trial_number"].is_unique


def test_pareto_front_three_objectives():
    df = trials_frame().assign(macs=[5, 1, 1, 1, 1, 1, 9, 9, 1, 1])
    objs = (("miou", "max"), ("predicted_latency_ms", "min"), ("macs", "min"))
    front = pareto_front(df, objs)
    # trial 8 (0.40, 10 ms, 1 MAC) is no longer dominated by trial 0 (5 MACs)
    assert front["trial_number"].tolist() == [0, 8, 1, 7, 6]
    with pytest.raises(KeyError, match="nope"):
        pareto_front(df, (("nope", "min"), ("miou", "max")))


# ----------------------------------------------------------------------------- hypervolume


def test_hypervolume_2d_hand_made_staircase():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    # unit-wide slabs of heights 1, 2, 3 under reference (4, 4)
    assert hypervolume(pts, [4.0, 4.0]) == pytest.approx(6.0)
    extra = np.vstack([pts, [[3.0, 3.0], [2.0, 2.0], [5.0, 0.0], [4.0, 0.5]]])
    # dominated, duplicate, outside the reference box, on its boundary: no change
    assert hypervolume(extra, [4.0, 4.0]) == pytest.approx(6.0)
    assert hypervolume(pts[:1], [4.0, 4.0]) == pytest.approx(3.0)
    assert hypervolume(np.zeros((0, 2)), [4.0, 4.0]) == 0.0


def test_hypervolume_mixed_senses_miou_latency():
    # (miou max, latency min) with reference (0 mIoU, 30 ms)
    pts = np.array([[0.5, 10.0], [0.6, 20.0]])
    expected = 0.5 * 20.0 + (0.6 - 0.5) * 10.0  # = 11.0
    assert hypervolume(pts, [0.0, 30.0], ["max", "min"]) == pytest.approx(expected)
    # the same in minimisation form
    assert hypervolume(pts * [-1, 1], [0.0, 30.0]) == pytest.approx(expected)


def test_hypervolume_3d_cubes():
    assert hypervolume([[0.0, 0.0, 0.0]], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    pts = np.array([[0.0, 0.0, 0.5], [0.5, 0.5, 0.0]])
    expected = 0.5 + 0.25 - 0.125  # union by inclusion-exclusion
    assert hypervolume(pts, [1.0, 1.0, 1.0]) == pytest.approx(expected)
    assert pareto._hv_hso(pts, np.ones(3)) == pytest.approx(expected)
    # corners of a 2x2x2 cube: three unit slabs staircase
    corners = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float)
    assert hypervolume(corners, [2, 2, 2]) == pytest.approx(brute_force_hv_grid(corners,
                                                                             np.full(3, 2)))
    # covered unit cells: (1,1,1) and the three corners themselves; 4 of 8
    assert hypervolume(corners, [2, 2, 2]) == pytest.approx(4.0)


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_sweep_matches_optuna(seed):
    rng = np.random.default_rng(seed)
    pts = rng.random((200, 2))
    ref = np.array([1.1, 1.1])
    assert hypervolume(pts, ref) == pytest.approx(optuna_hv(pts, ref), rel=1e-12)
    assert pareto._hv_2d(pts, ref) == pytest.approx(optuna_hv(pts, ref), rel=1e-12)


@pytest.mark.parametrize("m", [3, 4])
def test_hso_matches_optuna_and_cell_count(m):
    rng = np.random.default_rng(10 + m)
    pts = rng.random((25, m))
    ref = np.full(m, 1.05)
    assert pareto._hv_hso(pts, ref) == pytest.approx(optuna_hv(pts, ref), rel=1e-10)
    assert hypervolume(pts, ref) == pytest.approx(optuna_hv(pts, ref), rel=1e-10)
    ints = rng.integers(0, 5, size=(12, m)).astype(float)
    cells = brute_force_hv_grid(ints, np.full(m, 5.0))
    assert pareto._hv_hso(ints, np.full(m, 5.0)) == pytest.approx(cells)
    assert hypervolume(ints, np.full(m, 5.0)) == pytest.approx(cells)


def test_hypervolume_input_errors():
    with pytest.raises(ValueError, match="finite"):
        hypervolume([[1.0, 1.0]], [np.inf, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        hypervolume([[np.nan, 1.0]], [2.0, 2.0])
    with pytest.raises(ValueError, match="objectives"):
        hypervolume([[1.0, 1.0, 1.0]], [2.0, 2.0])


# ----------------------------------------------------------------------------- reference / history


def test_default_reference_point():
    df = trials_frame()
    # miou floor 0; latency = max feasible latency (40 ms, trial 6) * 1.1
    np.testing.assert_allclose(default_reference_point(df), [0.0, 44.0])
    np.testing.assert_allclose(default_reference_point(df, budget_ms=30.0), [0.0, 30.0])
    rejected_only = df[df.status == "rejected"]
    np.testing.assert_allclose(default_reference_point(rejected_only), [0.0, 5.5])


@pytest.mark.parametrize("by, key", [("generation", "generation"), ("trial", "trial_number")])
def test_hypervolume_history_is_cumulative_and_non_decreasing(by, key):
    rng = np.random.default_rng(7)
    n = 120
    lat = rng.uniform(5, 50, n)
    df = pd.DataFrame({
        "trial_number": np.arange(n),
        "generation": np.arange(n) // 10,
        "status": rng.choice(["complete", "complete", "rejected", "failed", "cached"], n),
        "miou": np.clip(0.2 + 0.01 * lat + rng.normal(0, 0.05, n), 0, 1),
        "predicted_latency_ms": lat,
    })
    df.loc[df.status.isin(["rejected", "failed"]), "miou"] = np.nan
    ref = [0.0, 55.0]
    hist = hypervolume_history(df, ref_point=ref, by=by)
    assert list(hist.columns) == [key, "n_trials", "n_front", "hypervolume"]
    assert hist[key].tolist() == sorted(df[key].unique().tolist())
    assert np.all(np.diff(hist["hypervolume"].to_numpy()) >= -1e-12)
    assert hist["n_trials"].iloc[-1] == n and hist["n_trials"].is_monotonic_increasing
    front = pareto_front(df)
    final = hypervolume(front[["miou", "predicted_latency_ms"]].to_numpy(), ref, ["max", "min"])
    assert hist["hypervolume"].iloc[-1] == pytest.approx(final)
    assert hist["n_front"].iloc[-1] == len(front)
    # an intermediate step equals the hypervolume of the prefix
    mid = hist[key].iloc[len(hist) // 2]
    prefix = pareto_front(df[df[key] <= mid])
    hv_mid = hypervolume(prefix[["miou", "predicted_latency_ms"]].to_numpy(), ref, ["max", "min"])
    assert hist.loc[hist[key] == mid, "hypervolume"].item() == pytest.approx(hv_mid)
    assert hist["hypervolume"].iloc[-1] > hist["hypervolume"].iloc[0]


def test_hypervolume_history_empty_and_bad_by():
    empty = trials_frame().iloc[:0]
    assert hypervolume_history(empty).empty
    with pytest.raises(ValueError, match="by"):
        hypervolume_history(trials_frame(), by="epoch")
