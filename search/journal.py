"""The live Optuna study for optuna-dashboard: ``EXP_DIR/study.journal``.

The driver's Optuna study lives in memory (rebuilt from the Parquet log on resume, so no storage round
trip slows the loop). For the tools people already watch studies with, the driver also mirrors every
trial-log row into Optuna's ``JournalStorage`` (``JournalFileBackend``, an append-only file) as it is
logged, so

    optuna-dashboard EXP_DIR/study.journal

shows the trials, the constrained Pareto front (the latency constraint is stored the way Optuna stores
constraints) and the history while the search runs. The Parquet log stays the source of truth: on every
``run`` / ``resume`` the journal is checked against it and rebuilt from it when it is missing, unreadable
or disagrees (it is a derived view; nothing recorded lives only there).

One journal trial per trial-log row (a retried trial shows its failed attempt too), in log order; each
carries the log's ``trial_number``, ``status`` and ``config`` as user attributes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .policy import finite as _finite

__all__ = ["JOURNAL_FILE", "StudyJournal", "rebuild_journal", "journal_trial_count"]

JOURNAL_FILE = "study.journal"


def _storage(path: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


class StudyJournal:
    """Runner observer mirroring the trial log into ``EXP_DIR/study.journal`` (see the module docstring)."""

    def __init__(self, exp_dir: Path):
        self.exp_dir = Path(exp_dir)
        self.path = self.exp_dir / JOURNAL_FILE
        self.storage = None
        self.study_id: Optional[int] = None
        self.dists: Dict[str, Any] = {}
        self.names: List[str] = []
        self.directions: List[Any] = []
        self.metric = "miou"
        self.seconds = 0.0
        self.rows_written = 0

    # ---- runner hooks -------------------------------------------------------------------------
    def on_restore(self, search) -> None:
        """Open the journal; rebuild it from the Parquet log unless it holds exactly the log's rows."""
        import time

        from .trial_log import load_trials

        t0 = time.perf_counter()
        self._setup(search)
        df = load_trials(self.exp_dir)
        n = journal_trial_count(self.path, search.spec.name)
        if n != len(df):
            rebuild_journal(self.exp_dir, search, df)
        self.storage = _storage(self.path)
        self.study_id = self.storage.get_study_id_from_name(search.spec.name)
        self.seconds += time.perf_counter() - t0

    def on_flush(self, search, rows: Iterable[Mapping[str, Any]]) -> None:
        import time

        t0 = time.perf_counter()
        if self.storage is None:
            self.on_restore(search)
            return  # the rebuild included these rows (they are in the log already)
        for row in rows:
            self.storage.create_new_trial(self.study_id, template_trial=self._frozen(row))
            self.rows_written += 1
        self.seconds += time.perf_counter() - t0

    # ---- rows -> frozen trials ------------------------------------------------------------------
    def _setup(self, search) -> None:
        self.dists = search.space.distributions()
        self.names = list(search.policy.names)
        self.directions = list(search.policy.directions)
        self.metric = search.metric
        self.budget = search.budget

    def _frozen(self, row: Mapping[str, Any]):
        from optuna.trial import TrialState, create_trial

        from .trial_log import FEASIBLE_STATUSES

        status = str(row.get("status"))
        try:
            params = json.loads(row["params_json"]) if isinstance(row.get("params_json"), str) else None
            metrics = json.loads(row["metrics_json"]) if isinstance(row.get("metrics_json"), str) else None
        except ValueError:
            params, metrics = None, None
        if params is not None and any(k not in self.dists or params[k] not in self.dists[k].choices for k in params):
            params = None
        lat = float(row.get("predicted_latency_ms") or float("nan"))
        user = {"trial_number": int(row["trial_number"]), "status": status, "config": row.get("config"),
                "generation": int(row.get("generation") or 0)}
        if _finite(row.get("canvases")):
            user["canvases"] = int(row["canvases"])
        system: Dict[str, Any] = {}
        if self.budget is not None and _finite(lat):
            system["constraints"] = [lat - self.budget]
        values, state = None, TrialState.FAIL
        if status == "partial":  # stopped after the first rung: shown as pruned, never on the dashboard's front
            return create_trial(state=TrialState.PRUNED, params=params or None,
                                distributions={k: self.dists[k] for k in (params or {})} or None,
                                user_attrs={**user, **({f"{self.metric}_first_rung": float(metrics[self.metric])}
                                                       if metrics and _finite(metrics.get(self.metric)) else {})},
                                system_attrs=system)
        if status in FEASIBLE_STATUSES and metrics and _finite(metrics.get(self.metric)):
            values = []
            for name in self.names:
                if name == self.metric:
                    values.append(float(metrics[self.metric]))
                elif name == "latency_ms":
                    values.append(lat)
                elif name == "macs":
                    values.append(float(row.get("macs") or 0))
                else:
                    values.append(float(row.get("params") or 0) if _finite(row.get("params")) else 0.0)
            state = TrialState.COMPLETE
        elif status == "rejected":
            state = TrialState.PRUNED
        return create_trial(state=state, values=values, params=params or None,
                            distributions={k: self.dists[k] for k in (params or {})} or None,
                            user_attrs=user, system_attrs=system)


def journal_trial_count(path: Path, study_name: str) -> int:
    """Trials of ``study_name`` in a journal file; -1 when it is missing or unreadable."""
    if not Path(path).is_file():
        return -1
    try:
        storage = _storage(Path(path))
        sid = storage.get_study_id_from_name(study_name)
        return len(storage.get_all_trials(sid, deepcopy=False))
    except Exception:  # noqa: BLE001 - a broken journal is simply rebuilt
        return -1


def rebuild_journal(exp_dir: Path, search, df=None) -> Path:
    """Write ``EXP_DIR/study.journal`` afresh from the Parquet trial log (every row, in log order).

    The new journal is built beside the old one and renamed over it, so a reader never sees half a journal.
    """
    import optuna

    from .trial_log import load_trials

    exp_dir = Path(exp_dir)
    df = load_trials(exp_dir) if df is None else df
    tmp = exp_dir / f".{JOURNAL_FILE}.rebuild"
    if tmp.exists():
        tmp.unlink()
    j = StudyJournal(exp_dir)
    j._setup(search)
    storage = _storage(tmp)
    study = optuna.create_study(storage=storage, study_name=search.spec.name, directions=j.directions)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(j.names))
    study.set_user_attr("sparsesearch", {"exp_dir": str(exp_dir), "source": "trials/ (Parquet)"})
    sid = study._study_id
    for row in df.to_dict("records"):
        storage.create_new_trial(sid, template_trial=j._frozen(row))
    os.replace(tmp, exp_dir / JOURNAL_FILE)
    lock = exp_dir / f".{JOURNAL_FILE}.rebuild.lock"
    if lock.exists():
        lock.unlink()
    return exp_dir / JOURNAL_FILE
