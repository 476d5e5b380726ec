"""The front table: ``EXP_DIR/front.parquet``, one row per trial with its Pareto flag and rank.

What users of search tools ask for as a table (optuna#6780 asks for a Pareto flag in the trials
table, katib#642 for CSV export): every trial once (its final row, :func:`search.trial_log.final_trials`)
with

=======================  =========  =====================================================================
column                   type       meaning
=======================  =========  =====================================================================
experiment               string     experiment name (several experiments can share one table)
trial_number             int64      trial number
status                   string     complete / cached / partial / failed / rejected
feasible                 bool       a full measurement (complete / cached) within the latency budget
is_pareto                bool       on the Pareto front of the feasible trials (metric, predicted latency); an
                                    exact repeat of a front point (a cached trial of the same computation) is
                                    rank 0 but not flagged: the lowest trial number stands for it, as ``pareto``
                                    lists the front (:func:`search.pareto.pareto_front`)
rank                     int64      non-domination rank among feasible trials (0 = the front), -1 otherwise
<metric>                 float64    the spec's metric (NaN when not measured)
predicted_latency_ms     float64    predicted latency (ms)
measured_latency_ms      float64    end-to-end latency measured on this device by ``sparsesearch measure``
                                    (NaN until measured)
confirmed_metric         float64    the metric re-scored on more canvases by ``sparsesearch confirm`` (NaN for a
                                    config it did not re-score)
is_confirmed_pareto      bool       on the front of the confirmed scores (metric, predicted latency); the trial
                                    ``confirm`` re-scored, not its cached repeats
macs                     int64      analytic MACs per image
canvases                 int64      evaluation canvases the metric covers
config                   string     nested per-stage ratios (JSON)
config_hash              string     identity of (config, checkpoint)
=======================  =========  =====================================================================

It is rewritten atomically after every generation of a search (and by ``sparsesearch measure`` / ``confirm``), so
it can be opened at any time with pandas, DuckDB or a spreadsheet (``sparsesearch pareto --format csv``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from supernet.fileio import atomic_write

__all__ = ["FRONT_FILE", "MEASURED_FILE", "CONFIRMED_FILE", "front_table", "front_members", "write_front_table",
           "read_front_table", "nondomination_ranks", "FrontTable"]

FRONT_FILE = "front.parquet"
#: Measured end-to-end latencies of ``sparsesearch measure`` (config_hash -> record).
MEASURED_FILE = "measured.json"
#: Metrics re-scored on more canvases by ``sparsesearch confirm`` (config_hash -> record).
CONFIRMED_FILE = "confirmed.json"


def nondomination_ranks(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Non-domination rank of every point (0 = non-dominated, 1 = non-dominated once those are removed, ...).

    Args:
        points: (n, m) objective values.
        senses: "min" / "max" per objective.

    Returns:
        int64 (n,) ranks (Deb et al. 2002, fast non-dominated sorting by repeated front peeling).
    """
    from .pareto import non_dominated_mask

    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    ranks = np.full(n, -1, dtype=np.int64)
    left = np.arange(n)
    r = 0
    while len(left):
        mask = non_dominated_mask(pts[left], senses)
        ranks[left[mask]] = r
        left = left[~mask]
        r += 1
    return ranks


def front_table(trials: pd.DataFrame, metric: str, *, maximize: bool = True, budget_ms: Optional[float] = None,
                experiment: str = "", measured: Optional[Dict[str, Any]] = None,
                confirmed: Optional[Dict[str, Any]] = None) -> pd.DataFrame:
    """The front table of a trial log (see the module docstring).

    Args:
        trials: rows of :func:`search.trial_log.load_trials` (any number of rows per trial).
        metric: the spec's metric column.
        maximize: its direction.
        budget_ms: the latency budget (ms) or None.
        experiment: the experiment name written in every row.
        measured: ``{config_hash: {"measured_latency_ms": float, ...}}`` of ``sparsesearch measure``.
        confirmed: ``{config_hash: {"confirmed_value": float, "confirmed_pareto": bool, ...}}`` of
            ``sparsesearch confirm``.
    """
    from .trial_log import final_trials, measured_mask

    cols = ["experiment", "trial_number", "status", "feasible", "is_pareto", "rank", metric, "predicted_latency_ms",
            "measured_latency_ms", "confirmed_metric", "is_confirmed_pareto", "macs", "canvases", "config", "config_hash"]
    if trials is None or not len(trials):
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(cols, [
            "string", "int64", "string", "bool", "bool", "int64", "float64", "float64", "float64", "float64", "bool",
            "int64", "int64", "string", "string"])})
    fin = final_trials(trials)
    lat = fin["predicted_latency_ms"].astype("float64").to_numpy()
    val = pd.to_numeric(fin[metric], errors="coerce").astype("float64").to_numpy()
    feasible = measured_mask(fin, metric) & np.isfinite(lat)
    if budget_ms is not None:
        feasible &= lat <= budget_ms
    ranks = np.full(len(fin), -1, dtype=np.int64)
    if feasible.any():
        ranks[feasible] = nondomination_ranks(np.stack([val[feasible], lat[feasible]], 1),
                                              ["max" if maximize else "min", "min"])
    measured = measured or {}
    mlat = np.asarray([float((measured.get(h) or {}).get("measured_latency_ms", np.nan))
                       for h in fin["config_hash"]], dtype=np.float64)
    confirmed = confirmed or {}
    cval = np.asarray([float((confirmed.get(h) or {}).get("confirmed_value", np.nan)) for h in fin["config_hash"]],
                      dtype=np.float64)
    numbers = fin["trial_number"].astype("int64").to_numpy()
    is_pareto = ranks == 0
    seen = set()
    for i in sorted(np.flatnonzero(is_pareto), key=lambda i: numbers[i]):  # exact repeats: the first trial stands
        if (val[i], lat[i]) in seen:
            is_pareto[i] = False
        seen.add((val[i], lat[i]))
    first_of = dict(fin.sort_values("trial_number").drop_duplicates("config_hash")[["config_hash", "trial_number"]]
                    .itertuples(index=False, name=None))  # each computation's first trial
    cfront = np.asarray([bool((confirmed.get(h) or {}).get("confirmed_pareto", False))
                         and int((confirmed.get(h) or {}).get("trial_number", first_of[h])) == n
                         for h, n in zip(fin["config_hash"], numbers)], dtype=bool)
    out = pd.DataFrame({
        "experiment": pd.Series([experiment] * len(fin), dtype="string"),
        "trial_number": fin["trial_number"].astype("int64").to_numpy(),
        "status": fin["status"].astype("string").to_numpy(),
        "feasible": feasible,
        "is_pareto": is_pareto,
        "rank": ranks,
        metric: val,
        "predicted_latency_ms": lat,
        "measured_latency_ms": mlat,
        "confirmed_metric": cval,
        "is_confirmed_pareto": cfront,
        "macs": pd.to_numeric(fin["macs"], errors="coerce").fillna(0).astype("int64").to_numpy(),
        "canvases": (pd.to_numeric(fin["canvases"], errors="coerce").fillna(-1).astype("int64").to_numpy()
                     if "canvases" in fin else np.full(len(fin), -1, dtype=np.int64)),
        "config": fin["config"].astype("string").to_numpy(),
        "config_hash": fin["config_hash"].astype("string").to_numpy(),
    })
    return out.sort_values(["trial_number"]).reset_index(drop=True)


def front_members(fin: pd.DataFrame, metric: str, *, maximize: bool = True, budget_ms: Optional[float] = None,
                  confirmed: Optional[Dict[str, Any]] = None) -> pd.DataFrame:
    """The configs a front report covers: the search's Pareto front of (metric, predicted latency) among the final
    trial rows ``fin`` (:func:`search.pareto.pareto_front`), plus every member of the front ``sparsesearch confirm``
    re-scored (``confirmed_pareto`` in ``confirmed``, :func:`read_confirmed`) that the search's own front lacks, once
    per config: the trial ``confirm`` re-scored (its record's ``trial_number``), else the config's first complete or
    cached trial with a finite metric (as :func:`front_table` flags it). Rows of ``fin``, ascending predicted latency
    (ms); ``sparsesearch measure`` times them and ``baselines.py`` re-scores them.
    """
    from .pareto import pareto_front
    from .trial_log import measured_mask

    if not len(fin):
        return fin
    front = pareto_front(fin, ((metric, "max" if maximize else "min"), ("predicted_latency_ms", "min")),
                         budget_ms=budget_ms)
    confirmed = confirmed or {}
    extra = {h for h, r in confirmed.items() if r.get("confirmed_pareto")} - set(front["config_hash"])
    if extra:
        ok = fin["config_hash"].isin(extra).to_numpy() & measured_mask(fin, metric)
        named = fin["trial_number"].astype("int64") == fin["config_hash"].map(
            lambda h: int((confirmed.get(h) or {}).get("trial_number", -1)))
        more = fin[ok].assign(_named=~named[ok]).sort_values(["_named", "trial_number"]).drop_duplicates(
            "config_hash").drop(columns="_named")
        front = pd.concat([front, more], ignore_index=True)
    return front.sort_values("predicted_latency_ms", kind="stable").reset_index(drop=True)


def write_front_table(exp_dir: Path, table: pd.DataFrame) -> Path:
    """Atomically (re)write ``EXP_DIR/front.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(table, preserve_index=False)
    return atomic_write(Path(exp_dir) / FRONT_FILE, lambda tmp: pq.write_table(t, tmp))


def read_front_table(exp_dir: Path) -> pd.DataFrame:
    """``EXP_DIR/front.parquet`` as a DataFrame (pandas)."""
    return pd.read_parquet(Path(exp_dir) / FRONT_FILE)


#: Fields every record of ``confirmed.json`` / ``measured.json`` carries as a number (the readers check them).
CONFIRMED_NUMBERS = ("trial_number", "predicted_latency_ms", "confirmed_value", "retention")
MEASURED_NUMBERS = ("trial_number", "predicted_latency_ms", "measured_latency_ms")


def read_confirmed(exp_dir: Path) -> Dict[str, Any]:
    """``EXP_DIR/confirmed.json`` (``{config_hash: record}``), or {} when the front was never confirmed.

    Raises:
        ResumeError: unreadable, or not ``{"configs": {config_hash: record}}`` with the numbers of
            :data:`CONFIRMED_NUMBERS` in every record (one line naming the file and the fix).
    """
    return _read_records(exp_dir, CONFIRMED_FILE, "confirmed-front file", "sparsesearch confirm", CONFIRMED_NUMBERS)


def read_measured(exp_dir: Path) -> Dict[str, Any]:
    """``EXP_DIR/measured.json`` (``{config_hash: record}``), or {} when the front was never measured.

    Raises:
        ResumeError: unreadable, or not ``{"configs": {config_hash: record}}`` with the numbers of
            :data:`MEASURED_NUMBERS` in every record.
    """
    return _read_records(exp_dir, MEASURED_FILE, "measured-latency file", "sparsesearch measure", MEASURED_NUMBERS)


def _read_records(exp_dir: Path, name: str, what: str, command: str, numbers: Sequence[str]) -> Dict[str, Any]:
    from supernet.fileio import read_json

    from .runner import ResumeError

    path = Path(exp_dir) / name
    if not path.exists():
        return {}
    fix = f"fix: delete it and run `{command}` again"
    data = read_json(path, what, fix, ResumeError)
    configs = data.get("configs") if isinstance(data, dict) else None

    def number(k: str, v: Any) -> bool:  # null is how the strict JSON writer stores NaN (e.g. retention of a 0 dense)
        return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (v is None and k != "trial_number")

    if not isinstance(configs, dict) or not all(
            isinstance(r, dict) and isinstance(r.get("config"), list) and all(k in r and number(k, r[k]) for k in numbers)
            for r in configs.values()):
        raise ResumeError(f"{what} {path} is malformed (expected {{\"configs\": {{config_hash: {{\"config\", "
                          + ", ".join(f'\"{k}\"' for k in numbers) + f"}}}}}}); {fix}")
    return {h: {**r, **{k: math.nan for k in numbers if r.get(k) is None}} for h, r in configs.items()}


class FrontTable:
    """Runner observer: keeps the trial rows in memory and rewrites ``front.parquet`` after every generation."""

    def __init__(self, exp_dir: Path):
        self.exp_dir = Path(exp_dir)
        self.rows: List[Dict[str, Any]] = []
        self.frame: Optional[pd.DataFrame] = None
        self.seconds = 0.0  # time spent keeping the table (reported in the run summary)

    def on_restore(self, search) -> None:
        from .trial_log import load_trials

        self.frame = load_trials(self.exp_dir)

    def on_flush(self, search, rows: Iterable[Dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def on_generation(self, search) -> None:
        import time

        t0 = time.perf_counter()
        new = pd.DataFrame(self.rows) if self.rows else None
        self.rows = []
        if new is not None:
            self.frame = new if self.frame is None or not len(self.frame) else pd.concat(
                [self.frame, new[[c for c in new.columns if c in self.frame.columns]]], ignore_index=True)
        maximize = search.policy.directions[0] == "maximize"
        table = front_table(self.frame, search.metric, maximize=maximize, budget_ms=search.budget,
                            experiment=search.spec.name, measured=read_measured(self.exp_dir),
                            confirmed=read_confirmed(self.exp_dir))
        write_front_table(self.exp_dir, table)
        self.seconds += time.perf_counter() - t0
