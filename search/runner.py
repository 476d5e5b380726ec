"""The search loop: spec -> sampler -> latency gate -> Ray workers -> Parquet -> Pareto.

The driver runs Optuna ask/tell on an in-memory study, with one :class:`search.policy.SearchPolicy`
answering everything about a proposal that needs no weights (decode, predicted latency, the gate, the
result-cache key, the objective vector). The sampler is wrapped so that it only proposes configs the
predictor puts within budget and, where it can, computations not yet evaluated
(:mod:`search.samplers._feasible`); a proposal whose computation was already evaluated is told its
recorded values and logged ``cached``. The rest go to the Ray worker pool, a generation at a time so
every worker stays busy, with the multi-fidelity rule (:mod:`search.fidelity`) and the longest-prefix
affinity of the stage cache; results are told as they arrive and appended to the Parquet trial log in
atomic part files. A trial is a proposal that was evaluated (fully, partially, or failed) or served from
the cache: ``n_trials`` counts exactly those.

Every input is validated before anything is written (:meth:`SearchPolicy.from_spec`), and a bad
bookkeeping file gives one line naming it and the fix, never a traceback; what is recorded is never
rewritten.

Resumable state is the trial log itself plus ``pending.json`` (the trials of the batch in flight):
``resume`` rebuilds the study from the log (values, constraints and the GA sampler's generation
attributes), re-enqueues the pending trials that never reached the log with their original numbers
and parameters, and goes on.

Layout of an experiment directory::

    EXP_DIR/spec.toml          the spec as given (copy)
    EXP_DIR/experiment.json    the frozen spec + checkpoint / predictor sha256 + search-space digest
    EXP_DIR/trials/part-*.parquet   the trial log (search.trial_log)
    EXP_DIR/pending.json       trials asked but not yet logged (resume re-runs them once)
    EXP_DIR/reference.json     dense and uniform-sparsity reference points
    EXP_DIR/front.parquet      one row per trial with is_pareto / rank (search.front), after every generation
    EXP_DIR/study.journal      the Optuna study for optuna-dashboard (search.journal), rebuilt from the log
    EXP_DIR/.lock              held (flock) by the live driver
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from supernet.fileio import atomic_write_json, read_json, sha256_bytes, sha256_file

from .errors import UserError
from .policy import MetricError, SearchPolicy, finite as _finite

__all__ = ["run", "resume", "fork", "ExperimentLockedError", "ResumeError", "experiment_summary",
           "load_frozen_spec", "REFERENCE_UNIFORM"]

FORMAT_VERSION = 1
#: Uniform ratios of the reference points (SparseViT's uniform-sparsity baseline).
from supernet.evaluate import REFERENCE_RATIOS as REFERENCE_UNIFORM  # noqa: E402 - one home
FLUSH_EVAL_S = 0.05  # an evaluation at least this long is appended to the log as soon as it ends
FLUSH_EVERY_S = 0.25  # otherwise results are grouped into one Parquet part at most this long
#: Statuses that count as trials (``n_trials``): evaluated (fully, partially, failed) or served by the cache.
TRIAL_STATUSES = ("complete", "cached", "partial", "failed")


class ExperimentLockedError(UserError):
    """Another driver is running this experiment."""


class ResumeError(UserError):
    """The experiment cannot be resumed as it stands (changed checkpoint, predictor or space, bad files)."""


class _Lock:
    """An flock on EXP_DIR/.lock: released by the kernel when the driver dies (stale locks recover)."""

    def __init__(self, exp_dir: Path):
        self.path = exp_dir / ".lock"
        self.fd: Optional[int] = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.read(self.fd, 200).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
            raise ExperimentLockedError(
                f"{self.path.parent} is in use by another sparsesearch driver ({holder or 'unknown pid'}); "
                "fix: wait for it to finish or stop it, then `sparsesearch resume` this directory") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _space_digest(spec) -> str:
    return sha256_bytes(json.dumps(spec.space.model_dump(mode="json"), sort_keys=True))[:16]


@dataclass
class _Pending:
    number: int
    params: Dict[str, Any]
    optuna_trial: Any = None
    config: Any = None
    hash: str = ""
    key: str = ""  # execution identity (kept windows per block + weight ratios): the result-cache key
    predicted_ms: float = float("nan")
    macs: int = 0
    generation: int = -1
    waiters: List["_Pending"] = field(default_factory=list)
    sampler_attrs: Dict[str, Any] = field(default_factory=dict)  # generation / parents at ask time


def _sampler_attrs(system_attrs: Dict[str, Any]) -> Dict[str, Any]:
    """The GA samplers' per-trial state worth keeping (generation, parents, operator, draws)."""
    return {k: v for k, v in system_attrs.items() if "generation" in k or "parent" in k or k.startswith("feasible:")}


# ------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------
class _Search:
    def __init__(self, spec, exp_dir: Path, *, policy: Optional[SearchPolicy] = None, progress: bool = True,
                 log=print):
        import optuna
        import pyarrow as pa

        from .samplers import latency_constraints, make_sampler
        from .trial_log import TrialLogWriter, trial_schema

        self.spec, self.exp_dir, self.progress, self.log = spec, exp_dir, progress, log
        self.optuna = optuna
        self.policy = policy or SearchPolicy.from_spec(spec)
        pol = self.policy
        self.space, self.predictor, self.budget, self.dense_ms = pol.space, pol.predictor, pol.budget, pol.dense_ms
        self.ckpt_path = Path(spec.supernet.checkpoint)
        self.meta = pol.meta
        self.ckpt_sha = pol.checkpoint_sha256
        self.metric = pol.metric
        self.cache: Dict[str, Dict[str, Any]] = {}  # key -> metrics/params of a complete evaluation
        self.partial: Dict[str, Dict[str, Any]] = {}  # key -> first-rung metrics of a computation stopped early
        self.inflight: Dict[str, _Pending] = {}
        self.feasible_only = bool(spec.sampler.feasible_only)
        self.sampler = make_sampler(spec.sampler, self.space, spec.seed, constraints_func=latency_constraints,
                                    **(dict(feasible=pol.feasible_params, is_new=self._is_new, repair=pol.repair)
                                       if self.feasible_only else {}))
        self.population = getattr(self.sampler, "population_size", None)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(directions=pol.directions, sampler=self.sampler, study_name=spec.name)
        self.dists = self.space.distributions()
        schema = trial_schema(self.space.n_blocks, [self.metric],
                              {"metrics_json": pa.string(), "sampler_attrs": pa.string(),
                               "params_json": pa.string()})
        self.writer = TrialLogWriter(exp_dir, schema, experiment_id=spec.name)
        self.rows: List[Dict[str, Any]] = []
        self.counts = {"complete": 0, "rejected": 0, "failed": 0, "cached": 0, "partial": 0}
        self.done_numbers: set = set()
        self.next_number = 0
        self.free_numbers: List[int] = []  # numbers below next_number missing from the log (moved-aside part)
        self.rerun = 0  # pending trials re-enqueued by restore(): the first batch after a resume
        self.hv = 0.0
        self._front_pts: List[Tuple[float, float]] = []
        self._last_flush = time.time()
        # multi-fidelity: (latency, full value, first-rung value) of fully evaluated configs
        ev = spec.evaluator
        self.fidelity_on = bool(ev.fidelity) and pol.names == [self.metric, "latency_ms"]
        from .fidelity import first_canvases, subset_key

        self.first = first_canvases(ev.subset_size, ev.batch_size, ev.first_fraction)
        self.subset_key = subset_key(self.metric, self.first)
        self._rungs: List[Tuple[float, float, float]] = []
        self.eval_seconds = 0.0
        self.cache_stats: Dict[str, Dict[str, Any]] = {}
        self.observers: List[Any] = []  # objects with .on_flush(search, rows) (journal, front table)

    @property
    def n_trials_done(self) -> int:
        """Trials so far (evaluated, partially evaluated, failed, or cached; with the old gate,
        ``[sampler] feasible_only = false``, rejected proposals count too)."""
        return sum(self.counts[s] for s in TRIAL_STATUSES) + (0 if self.feasible_only else self.counts["rejected"])

    def _is_new(self, params: Dict[str, Any]) -> bool:
        key = self.policy.key(self.policy.decode(params))
        return key not in self.cache and key not in self.partial and key not in self.inflight

    # ---- rows -------------------------------------------------------------------------------
    def _row(self, p: _Pending, status: str, *, metrics=None, res=None, error=None, attempt=0,
             canvases=None) -> Dict[str, Any]:
        now = dt.datetime.now(dt.timezone.utc)
        value = None if metrics is None else metrics.get(self.metric)
        row = {
            "trial_number": p.number, "generation": int(p.generation), "attempt": int(attempt),
            "ratios": list(p.config.flat), "config": json.dumps(p.config.ratios), "config_hash": p.hash,
            "checkpoint_sha256": self.ckpt_sha, "status": status,
            self.metric: float(value) if _finite(value) else None,
            "predicted_latency_ms": float(p.predicted_ms), "macs": int(p.macs),
            "metrics_json": None if metrics is None else json.dumps({k: (v if _finite(v) else None)
                                                                     for k, v in metrics.items()}),
            "sampler_attrs": json.dumps(p.sampler_attrs), "params_json": json.dumps(p.params),
            "error": error,
        }
        for i, r in enumerate(p.config.flat):
            row[f"r_{i:02d}"] = float(r)
        wr = p.config.weight_ratios
        if wr:
            for k in ("qkv", "proj", "mlp"):
                row[f"w_{k}"] = wr.get(k)
        if res is not None:
            row.update(eval_seconds=res.eval_seconds, worker_id=res.worker_id, node=res.node,
                       start_time=dt.datetime.fromtimestamp(res.start_time, dt.timezone.utc),
                       end_time=dt.datetime.fromtimestamp(res.end_time, dt.timezone.utc), params=res.params,
                       canvases=res.canvases)
        else:
            row.update(start_time=now, end_time=now, canvases=canvases)
        return row

    def _flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self.writer.append(rows)
            for obs in self.observers:
                obs.on_flush(self, rows)
        self._last_flush = time.time()

    # ---- resume -----------------------------------------------------------------------------
    def restore(self) -> List[Dict[str, Any]]:
        """Rebuild the study from the trial log; return pending trials to re-run.

        Raises:
            ResumeError: a row's parameters or the pending file cannot be read (one line naming it).
        """
        from optuna.trial import TrialState, create_trial

        from .trial_log import FEASIBLE_STATUSES, final_trials, load_trials

        # an unreadable part stops the resume (TrialLogError: one line naming the file) before anything
        # is written: skipping it would silently drop its trials
        df = load_trials(self.exp_dir)
        if len(df) and "checkpoint_sha256" in df:
            foreign = df[(df["checkpoint_sha256"].astype("string") != self.ckpt_sha).fillna(False).astype(bool)]
            if len(foreign):  # rows of another supernet would enter the result cache as this one's scores
                raise ResumeError(f"{self.exp_dir}/trials: trial(s) {sorted(set(foreign['trial_number'].tolist()))[:5]} "
                                  f"were scored on another checkpoint (sha256 "
                                  f"{str(foreign['checkpoint_sha256'].iloc[0])[:12]}... != {self.ckpt_sha[:12]}...); "
                                  "fix: move the parts of the other experiment out of trials/")
        if len(df):
            df = final_trials(df).sort_values("trial_number")
        pol = self.policy
        for _, r in df.iterrows():
            number = int(r["trial_number"])
            try:
                params = json.loads(r["params_json"]) if isinstance(r.get("params_json"), str) else None
                sys_attrs = json.loads(r["sampler_attrs"]) if isinstance(r.get("sampler_attrs"), str) else {}
                metrics = json.loads(r["metrics_json"]) if isinstance(r.get("metrics_json"), str) else None
                if params is None:
                    continue
                config = pol.decode(params)
            except (ValueError, KeyError, TypeError) as e:
                raise ResumeError(f"{self.exp_dir / 'trials'}: trial {number} has unreadable parameters or metrics "
                                  f"({type(e).__name__}: {str(e)[:120]}); fix: move its part aside (`sparsesearch "
                                  "resume` gives the number to a new trial) or start a new experiment") from None
            status = str(r["status"])
            p = _Pending(number, params, config=config, key=pol.key(config), hash=r["config_hash"],
                         predicted_ms=float(r["predicted_latency_ms"]),
                         macs=int(r["macs"]) if _finite(r["macs"]) else 0, generation=int(r["generation"]))
            if status in ("complete", "cached", "partial") and not (metrics and _finite(metrics.get(self.metric))):
                status = "failed"  # a NaN / missing metric written by an older version: not a measurement
            user_attrs = {"number": p.number}
            prm = r.get("params")
            prm = int(prm) if _finite(prm) else None
            if status in ("complete", "cached", "partial"):
                values = pol.objectives(metrics, p.predicted_ms, p.macs, prm)
                state = TrialState.COMPLETE
                user_attrs["constraint"] = pol.constraint(p.predicted_ms)
                if status == "complete":
                    self.cache[p.key] = {"metrics": metrics, "params": prm}
                    if _finite(metrics.get(self.subset_key)):
                        self._rungs.append((p.predicted_ms, float(metrics[self.metric]),
                                            float(metrics[self.subset_key])))
                if status == "partial":
                    user_attrs["fidelity"] = "partial"
                    cv = r.get("canvases")
                    self.partial.setdefault(p.key, {"metrics": metrics, "canvases": int(cv) if _finite(cv) else None})
            elif status == "rejected":
                values = pol.worst(p.predicted_ms, p.macs)
                state = TrialState.COMPLETE
                user_attrs["constraint"] = p.predicted_ms - (self.budget or 0.0)
            else:
                values, state = None, TrialState.FAIL
            if state == TrialState.COMPLETE:
                # what the sampler's after_trial stored (constraints_func): without it a restored
                # over-budget trial would count as feasible for constrained NSGA-II / sparsevit
                sys_attrs["constraints"] = [float(user_attrs["constraint"])]
            self.study.add_trial(create_trial(params=params, distributions=self.dists, values=values,
                                              state=state, user_attrs=user_attrs, system_attrs=sys_attrs))
            self.done_numbers.add(p.number)
            self.counts[status] = self.counts.get(status, 0) + 1
            if status in FEASIBLE_STATUSES:
                self._track_front(metrics, p)
        self.next_number = (int(df["trial_number"].max()) + 1) if len(df) else 0
        pending = _read_pending(self.exp_dir)
        dists = self.space.distributions()
        for t in pending:  # what the sampler asked once: a number, and one choice of every gene of this space
            ok = t["number"] >= 0 and not isinstance(t["number"], bool) and set(t["params"]) <= set(dists) and all(
                any(v == c for c in dists[k].choices) and not isinstance(v, bool) for k, v in t["params"].items())
            if not ok:
                raise ResumeError(f"pending-trials file {self.exp_dir / 'pending.json'}: trial {t['number']!r} is not a "
                                  "trial of this search space (a negative number, or parameters outside the genes' "
                                  "choices); fix: delete the file (the trials it listed were not recorded; resume "
                                  "gives their numbers to new trials)")
        todo = []
        for t in pending:
            if t["number"] not in self.done_numbers:
                todo.append(t)
                self.next_number = max(self.next_number, t["number"] + 1)
        known = self.done_numbers | {t["number"] for t in todo}
        self.free_numbers = sorted(set(range(self.next_number)) - known)
        for t in sorted(todo, key=lambda t: t["number"]):
            # re-run with the original number, parameters and generation (enqueue_trial + sampler attrs)
            self.study.add_trial(create_trial(
                state=TrialState.WAITING, user_attrs={"number": t["number"]},
                system_attrs={**t.get("sampler_attrs", {}), "fixed_params": t["params"]}))
        self.rerun = len(todo)
        return todo

    # ---- fork: warm start from another experiment on the same checkpoint ----------------------
    def seed_from(self, parent: Path, enqueue: bool) -> Dict[str, int]:
        """Reuse every full evaluation of the ``parent`` experiment (never re-evaluated: its metrics enter the
        result cache) and, with ``enqueue``, seed the first generation with the parent's best configs that are
        feasible under this experiment's budget (non-domination rank, then metric).

        Raises:
            ResumeError: the parent searched another checkpoint or resolution.
        """
        from .front import nondomination_ranks
        from .trial_log import FEASIBLE_STATUSES, final_trials, load_trials

        pfrozen, pspec = load_frozen_spec(parent)
        if pfrozen.get("checkpoint_sha256") != self.ckpt_sha or list(pfrozen.get("search_img_size") or []) != \
                list(self.policy.img_size):
            raise ResumeError(f"{parent} searched another checkpoint or resolution than this fork; fix: fork an "
                              "experiment of the same supernet")
        df = load_trials(parent)
        fin = final_trials(df) if len(df) else df
        seeded, candidates = 0, []
        for _, r in fin.iterrows():
            if r["status"] not in FEASIBLE_STATUSES or not isinstance(r.get("params_json"), str):
                continue
            try:
                params = json.loads(r["params_json"])
                metrics = json.loads(r["metrics_json"])
                config = self.policy.decode(params)
            except (ValueError, KeyError, TypeError):
                continue  # a row this space cannot decode: nothing to reuse
            if not _finite(metrics.get(self.metric)):
                continue
            key = self.policy.key(config)
            if r["status"] == "complete" and key not in self.cache:
                prm = r.get("params")
                self.cache[key] = {"metrics": metrics, "params": int(prm) if _finite(prm) else None}
                if _finite(metrics.get(self.subset_key)):
                    self._rungs.append((float(r["predicted_latency_ms"]), float(metrics[self.metric]),
                                        float(metrics[self.subset_key])))
                seeded += 1
            if self.policy.feasible(config):
                candidates.append((key, params, float(metrics[self.metric]), self.policy.predict(config)))
        enq = 0
        if enqueue and candidates:
            uniq = {c[0]: c for c in candidates}
            cand = list(uniq.values())
            maximize = self.policy.directions[0] == "maximize"
            ranks = nondomination_ranks(np.asarray([[c[2], c[3]] for c in cand]), ["max" if maximize else "min", "min"])
            order = sorted(range(len(cand)), key=lambda i: (ranks[i], -cand[i][2] if maximize else cand[i][2]))
            enq = self._enqueue_first_generation([cand[i][1] for i in order[: max(self.population or 0, 2)]])
        return {"reused_evaluations": seeded, "seeded_trials": enq}

    def _enqueue_first_generation(self, params_list: Sequence[Mapping[str, Any]]) -> int:
        """Add waiting trials with fixed parameters, stamped with generation 0 of a GA sampler so that they form
        (part of) its first population (an ``enqueue_trial`` would skip the sampler, and with it the generation
        stamp). Returns the number added."""
        from optuna.trial import TrialState, create_trial

        base = getattr(self.sampler, "base", self.sampler)
        gen_key = base._get_generation_key() if hasattr(type(base), "_get_generation_key") else None
        for params in params_list:
            attrs = {"fixed_params": dict(params)}
            if gen_key:
                attrs[gen_key] = 0
            self.study.add_trial(create_trial(state=TrialState.WAITING, system_attrs=attrs))
        return len(params_list)

    def seed_uniform(self) -> int:
        """Seed the first generation with the feasible uniform-sparsity configs (SparseViT's baseline: one ratio on
        every block of stages 0 .. n-2, the last stage dense; :meth:`search.space.SearchSpace.uniform_config`),
        one per distinct computation, at most half the population. A fresh search then starts from the baseline
        it has to beat instead of finding it by chance (``[sampler] seed_uniform``); in a fork, beside the parent's
        seeds (a config already seeded is not added twice). Returns the number added."""
        waiting = self._waiting_keys()
        cap = max((self.population or 0) // 2, 1)  # the least sparse: nearest the budget
        chosen = [p for k, p in self.policy.uniform_seeds().items() if k not in waiting][:cap]
        return self._enqueue_first_generation(chosen)

    def _waiting_keys(self) -> set:
        from optuna.trial import TrialState

        return {self.policy.key(self.policy.decode(t.system_attrs["fixed_params"]))
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if "fixed_params" in t.system_attrs}

    def seed_sparsest(self) -> int:
        """Seed the first generation with the sparsest config of the space (every gene at its largest ratio: the
        fastest computation, :meth:`search.policy.SearchPolicy.sparsest_config`) when it is within the budget and
        not seeded already. It anchors the front's fast end at once, as the sandwich rule trains the smallest
        child every step (SparseViT Sec. 3.2): with the reference point at the budget, the hypervolume is mostly
        the latency range the front spans, which a GA otherwise reaches generation by generation
        (``[sampler] seed_sparsest``; RESULTS.md R3). Returns the number added (0 or 1)."""
        params = self.policy.sparsest_params()
        config = self.policy.decode(params)
        if not self.policy.feasible(config) or self.policy.key(config) in self._waiting_keys():
            return 0
        return self._enqueue_first_generation([params])

    # ---- hypervolume (2 objectives: metric, latency) ------------------------------------------
    def _track_front(self, metrics: Dict[str, float], p: _Pending) -> None:
        if self.budget is not None and p.predicted_ms > self.budget:
            return
        self._front_pts.append((float(metrics.get(self.metric, 0.0)), float(p.predicted_ms)))

    def _hypervolume(self) -> float:
        from .pareto import hypervolume

        if not self._front_pts:
            return 0.0
        ref_lat = self.budget if self.budget else self.dense_ms * 1.1
        pts = np.asarray(self._front_pts)
        maximize = self.policy.directions[0] == "maximize"
        return float(hypervolume(pts, [0.0 if maximize else float(pts[:, 0].max()) * 1.1, ref_lat],
                                 ["max" if maximize else "min", "min"]))

    # ---- multi-fidelity ---------------------------------------------------------------------
    def _fidelity(self, p: _Pending) -> Optional[Dict[str, Any]]:
        """The multi-fidelity settings of a task (None: evaluate fully)."""
        if not self.fidelity_on or self.first >= self.spec.evaluator.subset_size:
            return None
        from .fidelity import front_points, paired_margin

        ev = self.spec.evaluator
        maximize = self.policy.directions[0] == "maximize"
        margin = paired_margin([r[2] for r in self._rungs], [r[1] for r in self._rungs], ev.fidelity_z,
                               ev.fidelity_min_pairs)
        front = front_points(self._rungs, maximize) if margin is not None else []
        return {"first": self.first, "front": [list(f) for f in front], "margin": margin,
                "predicted_ms": float(p.predicted_ms), "metric": self.metric, "maximize": maximize}

    # ---- the loop -----------------------------------------------------------------------------
    def ask(self) -> _Pending:
        trial = self.study.ask(self.dists)
        number = trial.user_attrs.get("number")
        if number is None:
            if self.free_numbers:  # refill numbers whose rows were lost (a moved-aside part)
                number = self.free_numbers.pop(0)
            else:
                number = self.next_number
                self.next_number += 1
            trial.set_user_attr("number", number)
        params = {k: trial.params[k] for k in self.dists}
        pol = self.policy
        config = pol.decode(params)
        p = _Pending(number, params, optuna_trial=trial, config=config, key=pol.key(config),
                     hash=pol.config_hash(config))
        p.predicted_ms = pol.predict(config)
        p.macs = pol.macs(config)
        st = self.study._storage.get_trial(trial._trial_id).system_attrs
        p.sampler_attrs = _sampler_attrs(st)
        gens = [v for k, v in st.items() if k.endswith(":generation")]
        p.generation = int(gens[0]) if gens else (number // self.population if self.population else 0)
        return p

    def tell_complete(self, p: _Pending, metrics: Dict[str, float], status: str, res=None, params=None,
                      canvases=None) -> None:
        pol = self.policy
        p.optuna_trial.set_user_attr("constraint", pol.constraint(p.predicted_ms))
        if status == "partial":
            p.optuna_trial.set_user_attr("fidelity", "partial")
        self.study.tell(p.optuna_trial, pol.objectives(metrics, p.predicted_ms, p.macs, params))
        row = self._row(p, status, metrics=metrics, res=res, attempt=res.attempt if res else 0, canvases=canvases)
        if params is not None:
            row["params"] = int(params)
        self.rows.append(row)
        self.counts[status] += 1
        self.done_numbers.add(p.number)
        if status != "partial":
            self._track_front(metrics, p)

    def tell_failed(self, p: _Pending, error: str, res=None) -> None:
        from optuna.trial import TrialState

        self.study.tell(p.optuna_trial, state=TrialState.FAIL)
        self.rows.append(self._row(p, "failed", res=res, error=error[:500], attempt=res.attempt if res else 0))
        self.counts["failed"] += 1
        self.done_numbers.add(p.number)

    def _on_result(self, res) -> None:
        p: _Pending = res.task.payload
        self.inflight.pop(p.key, None)
        self.eval_seconds += float(res.eval_seconds or 0.0)
        if res.cache is not None:
            self.cache_stats[res.worker_id] = res.cache
        if res.metrics is None:
            self.tell_failed(p, res.error or "failed", res=res)
            for q in p.waiters:  # nothing ran for them: no evaluation seconds of their own
                self.tell_failed(q, res.error or "failed")
            return
        try:
            metrics = self.policy.check_metrics(res.metrics)
        except MetricError as e:
            self.tell_failed(p, str(e), res=res)
            for q in p.waiters:
                self.tell_failed(q, str(e))
            if e.configuration:  # every trial would fail the same way: stop with the one-line error
                self._flush()
                raise
            return  # one NaN is one failed trial; the search goes on
        if res.partial:
            self.partial[p.key] = {"metrics": metrics, "canvases": res.canvases}
            self.tell_complete(p, metrics, "partial", res=res, params=res.params)
            for w in p.waiters:
                self.tell_complete(w, metrics, "partial", params=res.params, canvases=res.canvases)
            return
        self.cache[p.key] = {"metrics": metrics, "params": res.params}
        if _finite(metrics.get(self.subset_key)):
            self._rungs.append((p.predicted_ms, metrics[self.metric], metrics[self.subset_key]))
        self.tell_complete(p, metrics, "complete", res=res, params=res.params)
        for w in p.waiters:
            self.tell_complete(w, metrics, "cached", params=res.params)

    def run(self, n_trials: int, pool, pbar=None) -> None:
        from .workers import Task

        batch_size = max(self.population or 0, 2 * pool.size)
        pol = self.policy
        while self.n_trials_done < n_trials:
            want = min(batch_size, n_trials - self.n_trials_done)
            if self.rerun:  # after a resume, first finish the interrupted batch alone (same generations)
                want, self.rerun = min(want, self.rerun), 0
            batch: List[_Pending] = []
            for _ in range(want):
                p = self.ask()
                batch.append(p)
                if (p.key not in self.cache and p.key not in self.partial and p.key not in self.inflight
                        and pol.feasible(p.config)):
                    self.inflight[p.key] = p  # later asks of this batch see it as taken
            atomic_write_json(self.exp_dir / "pending.json",
                              {"trials": [{"number": p.number, "params": p.params, "sampler_attrs": p.sampler_attrs}
                                          for p in batch]})
            for p in batch:
                if self.budget is not None and p.predicted_ms > self.budget:  # only a foreign sampler gets here
                    self.inflight.pop(p.key, None)
                    p.optuna_trial.set_user_attr("constraint", p.predicted_ms - self.budget)
                    self.study.tell(p.optuna_trial, pol.worst(p.predicted_ms, p.macs))
                    self.rows.append(self._row(p, "rejected"))
                    self.counts["rejected"] += 1
                    self.done_numbers.add(p.number)
                elif p.key in self.cache:
                    c = self.cache[p.key]
                    self.tell_complete(p, c["metrics"], "cached", params=c.get("params"))
                elif p.key in self.partial:  # stopped early before: the front only improves, so it stays stopped
                    c = self.partial[p.key]
                    self.tell_complete(p, c["metrics"], "partial", canvases=c.get("canvases"))
                elif self.inflight.get(p.key) is not p:
                    self.inflight[p.key].waiters.append(p)
                else:
                    pool.submit(Task(p.number, p.config.ratios, p.config.weight_ratios, payload=p,
                                     fidelity=self._fidelity(p), affinity=self._affinity(p)))
            self._update(pbar)
            for res in pool.results():
                self._on_result(res)
                # A real evaluation is logged at once (a kill never loses it); results of
                # near-instant evaluators are grouped so the log costs < 1 ms per trial.
                if res.eval_seconds >= FLUSH_EVAL_S or pool.busy == 0 or time.time() - self._last_flush > FLUSH_EVERY_S:
                    self._flush()
                self._update(pbar)
            self._flush()
            self.hv = self._hypervolume()
            for obs in self.observers:
                if hasattr(obs, "on_generation"):
                    obs.on_generation(self)
            self._update(pbar)
        atomic_write_json(self.exp_dir / "pending.json", {"trials": []})

    def _affinity(self, p: _Pending) -> List[Any]:
        counts = self.policy.keep_counts(p.config)
        extra = json.dumps(p.config.weight_ratios, sort_keys=True)
        return [json.dumps([counts[:s + 1], extra]) for s in range(len(counts))]

    def _update(self, pbar) -> None:
        if pbar is None:
            return
        pbar.n = self.n_trials_done
        c = self.counts
        pbar.set_postfix_str(f"evaluated {c['complete']} partial {c['partial']} cached {c['cached']} "
                             f"failed {c['failed']} HV {self.hv:.4g}", refresh=False)
        pbar.refresh()


def _read_pending(exp_dir: Path) -> List[Dict[str, Any]]:
    path = exp_dir / "pending.json"
    if not path.exists():
        return []
    fix = "fix: delete it (the trials it listed were not recorded; resume gives their numbers to new trials)"
    data = read_json(path, "pending-trials file", fix, ResumeError)
    trials = data.get("trials") if isinstance(data, dict) else None
    if not isinstance(trials, list) or not all(
            isinstance(t, dict) and isinstance(t.get("number"), int) and isinstance(t.get("params"), dict)
            for t in trials):
        raise ResumeError(f"pending-trials file {path} is malformed (expected {{\"trials\": [{{\"number\", "
                          f"\"params\"}}, ...]}}); {fix}")
    return trials


def _read_reference(exp_dir: Path) -> Optional[Dict[str, Any]]:
    """``EXP_DIR/reference.json``, or None when it was not written yet.

    Raises:
        ResumeError: unreadable or malformed (one line naming it and the fix).
    """
    path = exp_dir / "reference.json"
    if not path.exists():
        return None
    fix = "fix: delete it; resume evaluates the reference points again (they are not trials)"
    data = read_json(path, "reference-points file", fix, ResumeError)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if isinstance(data, dict) and all(
            isinstance(v, dict) and isinstance(v.get("config"), list) and number(v.get("predicted_latency_ms"))
            and number(v.get("macs")) and isinstance(v.get("metrics", {}), (dict, type(None))) for v in data.values()):
        return data
    raise ResumeError(f"reference-points file {path} is malformed (expected {{name: {{\"config\", "
                      f"\"predicted_latency_ms\", \"macs\", \"metrics\"}}}}); {fix}")


def _reference_points(search: _Search, pool) -> Dict[str, Any]:
    """Evaluate dense + uniform-sparsity reference configs once (not trials of the search)."""
    from .workers import Task

    path = search.exp_dir / "reference.json"
    known = _read_reference(search.exp_dir)
    if known is not None:
        return known
    refs = {"dense": search.space.dense_config()}
    for r in REFERENCE_UNIFORM:
        refs[f"uniform{r:.1f}"] = search.space.uniform_config(r)
    names = list(refs)
    for i, name in enumerate(names):
        pool.submit(Task(-1 - i, refs[name].ratios, None, payload=name))
    out = {}
    for res in pool.results():
        name = res.task.payload
        cfg = refs[name]
        metrics = res.metrics
        err = res.error
        if metrics is not None:
            try:
                metrics = search.policy.check_metrics(metrics)
            except MetricError as e:
                if e.configuration:
                    raise
                metrics, err = None, str(e)
        out[name] = {"config": cfg.ratios, "metrics": metrics, "error": err,
                     "predicted_latency_ms": search.policy.predict(cfg), "macs": search.policy.macs(cfg)}
    atomic_write_json(path, out)
    return out


def _freeze(spec, exp_dir: Path, policy: SearchPolicy, parent: Optional[Path] = None) -> Dict[str, Any]:
    frozen = {
        "format_version": FORMAT_VERSION,
        "spec": json.loads(spec.model_dump_json()),
        "checkpoint": str(spec.supernet.checkpoint), "checkpoint_sha256": policy.checkpoint_sha256,
        "predictor": str(spec.latency.predictor), "predictor_sha256": sha256_file(spec.latency.predictor),
        "space_digest": _space_digest(spec),
        "search_img_size": list(policy.img_size),
        "budget_ms": policy.budget, "dense_predicted_ms": policy.dense_ms,
        "space_size": policy.space.size(),
        "forked_from": str(Path(parent).resolve()) if parent is not None else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    atomic_write_json(exp_dir / "experiment.json", frozen)
    src = getattr(spec, "source", None)
    if src and Path(src).is_file():
        shutil.copyfile(src, exp_dir / "spec.toml")
    return frozen


def check_frozen(frozen: Dict[str, Any], spec, exp_dir: Path) -> None:
    """The checkpoint, predictor and search space an experiment froze must be the ones on disk now: ``resume``,
    ``confirm`` and ``measure`` refuse to mix a changed file into the experiment's records.

    Raises:
        ResumeError: one line naming the changed or missing file and the fix.
    """
    ck = Path(spec.supernet.checkpoint)
    if not ck.exists():
        raise ResumeError(f"{exp_dir}: its checkpoint {ck} is missing; fix: restore the file "
                          f"(sha256 {str(frozen.get('checkpoint_sha256'))[:12]}...) or start a new experiment")
    sha = sha256_file(ck)
    if sha != frozen.get("checkpoint_sha256"):
        raise ResumeError(f"{exp_dir}: checkpoint {ck} changed since the experiment started (sha256 "
                          f"{sha[:12]}... != {str(frozen.get('checkpoint_sha256'))[:12]}...); results would mix two "
                          "supernets; fix: restore the original checkpoint or run a new experiment (new output_dir)")
    pred = Path(spec.latency.predictor)
    if not pred.exists() or sha256_file(pred) != frozen.get("predictor_sha256"):
        raise ResumeError(f"{exp_dir}: latency predictor {pred} is missing or changed since the experiment "
                          "started; fix: restore it or run a new experiment (new output_dir)")
    if _space_digest(spec) != frozen.get("space_digest"):
        raise ResumeError(f"{exp_dir}: the search space differs from the frozen one in {exp_dir}/experiment.json; "
                          "fix: resume with the original spec or run a new experiment (new output_dir)")


def _worker_pythonpath() -> List[str]:
    """PYTHONPATH of the embedded Ray's workers: this package's root, then the driver's PYTHONPATH
    (where a spec's ``module:function`` evaluator may live)."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(Path(__file__).resolve().parents[1])] + extra


def _check_evaluator(spec, policy: SearchPolicy, local: bool = True, where: Optional[str] = None) -> None:
    """What the workers would find wrong with the spec's evaluator, found on the driver before anything is written.

    A ``module:function`` evaluator must import (the workers get the driver's PYTHONPATH). The built-in one:
    its canvases (the checkpoint's dataset spec with ``[evaluator] img_size`` and ``[evaluator.mosaic]`` over it)
    must make a valid ``MosaicSpec``, its ``[evaluator.kwargs]`` may set only ``seed`` (int) and ``data_dir`` (a
    folder), and, when the workers run on this machine (``local``), the Fashion-MNIST files must be there.
    ``where`` names the file the spec came from in the messages (default: the spec's source).

    Raises:
        EvaluatorError: one line naming the spec file and the fix.
        supernet.data.DatasetNotFoundError: the IDX files are missing (local workers).
    """
    from .evaluators import EvaluatorError, _import, mosaic_spec

    ev = spec.evaluator
    where = where or getattr(spec, "source", None) or "the spec"
    if ev.name != "fashion_mosaic":
        _import(ev.name)
        return
    from pydantic import ValidationError

    kw = dict(ev.kwargs)
    unknown = sorted(set(kw) - {"seed", "data_dir"})
    if unknown or not isinstance(kw.get("seed", 0), int) or isinstance(kw.get("seed"), bool) \
            or not isinstance(kw.get("data_dir", ""), str):
        raise EvaluatorError(f"{where}: [evaluator.kwargs] of the built-in evaluator takes seed (an integer) and "
                             f"data_dir (a folder) only, got {kw!r}; fix: remove the other keys")
    try:
        canvases = mosaic_spec(policy.meta, list(policy.img_size), dict(ev.mosaic))
    except (ValidationError, ValueError, TypeError) as e:
        if isinstance(e, ValidationError):
            err = e.errors(include_url=False)[0]
            why = f"{'.'.join(str(x) for x in err.get('loc', ())) or 'canvas'}: {err.get('msg', '')}"
        else:
            why = str(e).splitlines()[0]
        raise EvaluatorError(f"{where}: [evaluator.mosaic] {dict(ev.mosaic)!r} over the checkpoint's canvases is "
                             f"not a valid canvas layout ({why}); fix: correct the value") from None
    if local:
        from supernet.data import load_fashion_mnist

        data_dir = kw.get("data_dir") or canvases.data_dir  # where the workers look (FashionMosaicEvaluator)
        try:
            load_fashion_mnist("test", data_dir)  # the val / test canvases' items; a missing folder names the fix
        except ValueError as e:  # corrupt IDX / gzip files
            raise EvaluatorError(f"the Fashion-MNIST files the evaluator reads are unreadable ({str(e)[:200]}); fix: "
                                 "reinstall them (`apt-get install --reinstall dataset-fashion-mnist`) or point "
                                 "SPARSESEARCH_FASHION_MNIST at good copies") from None


def _execute(spec, exp_dir: Path, *, n_trials: int, is_resume: bool, address: Optional[str], progress: bool,
             log, policy: Optional[SearchPolicy] = None) -> Dict[str, Any]:  # noqa: C901 - one linear start-up
    from tqdm.auto import tqdm

    from .workers import WorkerPool, ray_init_local

    t0 = time.time()
    search = _Search(spec, exp_dir, policy=policy, progress=progress, log=log)
    _attach_observers(search)
    repeated = search.restore() if is_resume else []
    if repeated and search.n_trials_done >= n_trials:  # the loop would not run, and pending.json would be emptied
        raise UserError(f"{exp_dir}/pending.json lists {len(repeated)} unfinished trial(s) but --n-trials "
                        f"{n_trials} is not above the {search.n_trials_done} trials done; fix: pass --n-trials "
                        f"{search.n_trials_done + len(repeated)} or more to finish them")
    from .front import read_confirmed, read_measured

    read_measured(exp_dir), read_confirmed(exp_dir)  # the front table reads them each generation: refused here
    for obs in search.observers:
        if hasattr(obs, "on_restore"):
            obs.on_restore(search)
    ej = exp_dir / "experiment.json"
    frozen = read_json(ej, "experiment file", "fix: restore it (or start a new experiment)", ResumeError)
    _read_reference(exp_dir)  # a broken file is reported now, before Ray starts
    fork_info = None
    first = search.n_trials_done == 0 and not repeated  # the first generation is still to be drawn
    if frozen.get("forked_from"):
        parent = Path(frozen["forked_from"])
        if first or (parent / "experiment.json").is_file():
            fork_info = search.seed_from(parent, enqueue=first)
        else:  # the fork's own log holds what it reused; the parent's other evaluations are simply not reused
            log(f"note: {parent} (the experiment this one was forked from) is gone; resuming without reusing its "
                "other evaluations")
    if first and spec.sampler.seed_uniform:
        search.seed_uniform()  # a fork's first generation: the parent's front under the new budget + the baseline
    if first and spec.sampler.seed_sparsest:
        search.seed_sparsest()  # ... + the front's fast end
    if frozen.get("budget_ms") != search.budget or frozen.get("dense_predicted_ms") != search.dense_ms:
        frozen.update(budget_ms=search.budget, dense_predicted_ms=search.dense_ms)
        atomic_write_json(ej, frozen)
    if search.n_trials_done >= n_trials and (exp_dir / "reference.json").exists():
        # a finished experiment resumed without a larger budget: nothing to evaluate, no Ray
        atomic_write_json(exp_dir / "pending.json", {"trials": []})
        return experiment_summary(exp_dir, extra={
            "elapsed_s": round(time.time() - t0, 2), "trials_this_run": 0, "resumed": is_resume,
            "rerun_pending": 0, "reference": _reference_points(search, None)})
    address = address or spec.ray.address
    owns_ray = False
    import ray

    w = spec.workers
    if not ray.is_initialized():
        ray_init_local(num_cpus=None if address else max(w.num_workers * w.cpus_per_worker, os.cpu_count() or 1),
                       address=address, dashboard=spec.ray.dashboard,
                       runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_worker_pythonpath())}}
                       if not address else None)
        owns_ray = True
    ev = spec.evaluator
    evaluator = dict(name=ev.name, subset_size=ev.subset_size, batch_size=ev.batch_size, split=ev.split,
                     kwargs=dict(ev.kwargs), img_size=list(search.policy.img_size), mosaic=dict(ev.mosaic))
    try:
        pool = WorkerPool(str(search.ckpt_path), search.meta, evaluator, num_workers=w.num_workers,
                          cpus_per_worker=w.cpus_per_worker, threads=w.torch_threads or w.cpus_per_worker,
                          max_retries=w.max_retries, img_size=list(search.policy.img_size),
                          gpus_per_worker=w.gpus_per_worker, prefix_cache_bytes=w.prefix_cache_mb << 20)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    try:
        pool.wait_ready()
        refs = _reference_points(search, pool)
        already = search.n_trials_done
        pbar = tqdm(total=n_trials, initial=already, desc=f"search {spec.name}", unit="trial",
                    disable=not progress, dynamic_ncols=True, file=sys.stderr)
        search.hv = search._hypervolume()
        t_loop = time.time()
        try:
            search.run(n_trials, pool, pbar)
        finally:
            search._flush()
            pbar.close()
            t_end = time.time()
            n_run = search.n_trials_done - already
    finally:
        pool.shutdown()
        if owns_ray:
            ray.shutdown()
    sampler = search.sampler
    return experiment_summary(exp_dir, extra={
        "elapsed_s": round(time.time() - t0, 2), "search_loop_s": round(t_end - t_loop, 4),
        "trials_this_run": n_run, "resumed": is_resume, "rerun_pending": len(repeated),
        "worker_deaths": pool.worker_deaths, "actors_replaced": pool.replaced, "reference": refs,
        "eval_seconds_this_run": round(search.eval_seconds, 3), "fork": fork_info,
        "proposals": {"draws": getattr(sampler, "draws", None), "repaired": getattr(sampler, "repairs", None),
                      "repeats": getattr(sampler, "repeats", None)},
        "prefix_cache": _merge_cache_stats(search.cache_stats),
        "views": {type(o).__name__: {"seconds": round(getattr(o, "seconds", 0.0), 4),
                                     "rows": getattr(o, "rows_written", None)} for o in search.observers}})


def _merge_cache_stats(stats: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not stats:
        return None
    keys = ("hits", "misses", "stage_seconds_saved", "bytes", "evictions")
    out = {k: sum(s.get(k, 0) for s in stats.values()) for k in keys}
    n = out["hits"] + out["misses"]
    out["hit_rate"] = out["hits"] / n if n else 0.0
    out["max_bytes_per_worker"] = max(s.get("max_bytes", 0) for s in stats.values())
    out["workers"] = len(stats)
    return out


def _attach_observers(search: _Search) -> None:
    """The views kept beside the log (front table, optuna-dashboard journal)."""
    from .front import FrontTable
    from .journal import StudyJournal

    search.observers = [FrontTable(search.exp_dir), StudyJournal(search.exp_dir)]


def _check_n_trials(n_trials: Any) -> None:
    """``n_trials``: None or an int >= 1 (a float, a bool or NaN would reach the search loop)."""
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise UserError(f"n_trials must be an integer >= 1, got {n_trials!r}; fix: pass a positive --n-trials")


def _prepare_dir(spec) -> Path:
    if spec.output_dir is None:
        raise UserError("spec has no output_dir; fix: add `output_dir = \"runs/NAME\"` at the top level")
    exp_dir = Path(spec.output_dir)
    if exp_dir.exists() and not exp_dir.is_dir():
        raise UserError(f"output_dir {exp_dir} is a file; fix: choose another output_dir")
    for up in exp_dir.resolve().parents:  # inside another experiment: its trials/ or bookkeeping would take our files
        if (up / "experiment.json").is_file():
            raise UserError(f"output_dir {exp_dir} lies inside the experiment {up}; fix: choose an output_dir outside "
                            "it (e.g. a sibling folder)")
    exp_dir.mkdir(parents=True, exist_ok=True)
    return exp_dir


def run(spec, *, address: Optional[str] = None, n_trials: Optional[int] = None, progress: bool = True,
        log=print, parent: Optional[Path] = None) -> Dict[str, Any]:
    """Run a new search described by ``spec`` (an :class:`search.spec.ExperimentSpec`).

    Every input (checkpoint and sidecar, predictor, budget, evaluator import) is checked before anything
    is written to the experiment directory.

    Args:
        spec: the experiment spec (see ``search.spec.load_spec``), or the path of a spec file (loaded here).
        address: Ray address to join (default: the spec's ``[ray] address``, else an embedded, private
            local Ray on 127.0.0.1).
        n_trials: override the spec's trial budget (> 0): trials evaluated or served by the cache.
        progress: show a progress bar (stderr).
        parent: fork of this experiment directory (see :func:`fork`): its evaluations are reused.

    Returns:
        The experiment summary (see :func:`experiment_summary`).

    Raises:
        ExperimentLockedError: another driver holds the directory.
        UserError: the directory already holds an experiment (or trial-log parts of one), or any input is
            invalid.
    """
    _check_n_trials(n_trials)
    if isinstance(spec, (str, os.PathLike)):  # a spec file: loaded (and validated) here
        from .spec import load_spec

        spec = load_spec(spec)
    policy = SearchPolicy.from_spec(spec)
    _check_evaluator(spec, policy, local=not (address or spec.ray.address))
    if address or spec.ray.address:  # a dead cluster address is an input error too: found before anything is written
        from .workers import check_reachable

        check_reachable(address or spec.ray.address)
    exp_dir = _prepare_dir(spec)
    with _Lock(exp_dir):
        if (exp_dir / "experiment.json").exists():
            raise UserError(f"{exp_dir} already holds an experiment; fix: `sparsesearch resume {exp_dir}` to "
                            "continue it, or choose another output_dir")
        from .trial_log import list_parts

        if list_parts(exp_dir):
            raise UserError(f"{exp_dir}/trials holds trial-log parts but {exp_dir} has no experiment.json; fix: "
                            "choose another output_dir (or move those parts away): a new experiment never "
                            "appends to another one's log")
        _freeze(spec, exp_dir, policy, parent)
        return _execute(spec, exp_dir, n_trials=n_trials or spec.n_trials, is_resume=False, address=address,
                        progress=progress, log=log, policy=policy)


def load_frozen_spec(exp_dir: Path):
    """``(frozen dict, spec)`` of ``EXP_DIR/experiment.json``.

    Raises:
        ResumeError: missing, unreadable or malformed file, or a frozen spec that no longer validates.
    """
    from pydantic import ValidationError

    from .spec import ExperimentSpec, format_validation_error

    exp_dir = Path(exp_dir)
    path = exp_dir / "experiment.json"
    if not exp_dir.is_dir():
        raise ResumeError(f"{exp_dir} is not an experiment directory; fix: pass the output_dir of a `sparsesearch "
                          "run`")
    if not path.exists():
        raise ResumeError(f"{exp_dir} holds no experiment (no experiment.json); fix: `sparsesearch run SPEC.toml` first")
    frozen = read_json(path, "experiment file", "fix: restore it from a backup or start a new experiment "
                       "(the trial log in trials/ is intact)", ResumeError)
    if not isinstance(frozen, dict) or not isinstance(frozen.get("spec"), dict):
        raise ResumeError(f"experiment file {path} is malformed (no frozen spec); fix: restore it from a backup or "
                          "start a new experiment (the trial log in trials/ is intact)")
    try:
        spec = ExperimentSpec.model_validate(frozen["spec"])
    except ValidationError as e:
        first = format_validation_error(e, path).splitlines()[0]
        raise ResumeError(f"{first} (the spec frozen in it no longer validates); fix: restore {path.name} or start a "
                          "new experiment") from None
    budget = frozen.get("budget_ms")
    if budget is not None and not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                                   and math.isfinite(budget) and budget > 0):
        raise ResumeError(f"experiment file {path} is malformed (budget_ms {budget!r} is not a positive number or "
                          "null); fix: restore it from a backup or start a new experiment (the trial log in trials/ "
                          "is intact)")
    # readers take the validated spec (its defaults filled in), never the raw dict
    return {**frozen, "spec": json.loads(spec.model_dump_json())}, spec


def resume(exp_dir, *, n_trials: Optional[int] = None, address: Optional[str] = None, progress: bool = True,
           log=print) -> Dict[str, Any]:
    """Continue a killed or finished experiment.

    Completed trials are never evaluated again; trials that were in flight when the driver died are
    re-run once with their original numbers and parameters; the sampler's generations are restored.

    Args:
        exp_dir: the experiment directory.
        n_trials: new total trial budget (default: the frozen spec's).

    Raises:
        ResumeError: the checkpoint, predictor or search space changed; no experiment there; a bookkeeping
            file is unreadable.
        ExperimentLockedError: another driver holds the directory.
    """
    _check_n_trials(n_trials)
    exp_dir = Path(exp_dir)
    frozen, spec = load_frozen_spec(exp_dir)
    with _Lock(exp_dir):
        check_frozen(frozen, spec, exp_dir)
        policy = SearchPolicy.from_spec(spec)
        _check_evaluator(spec, policy, local=not (address or spec.ray.address), where=str(exp_dir / "experiment.json"))
        total = n_trials or spec.n_trials
        return _execute(spec, exp_dir, n_trials=total, is_resume=True, address=address, progress=progress, log=log,
                        policy=policy)


def experiment_summary(exp_dir, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Counts, the Pareto front and the hypervolume of an experiment directory (JSON-ready dict).

    ``n_trials`` counts evaluated (complete, partial, failed) and cached trials; ``rejected`` rows (a
    foreign sampler's over-budget proposals) are counted apart.

    Raises:
        ResumeError: experiment.json is unreadable.
    """
    from .pareto import hypervolume, pareto_front
    from .trial_log import final_trials, load_trials

    exp_dir = Path(exp_dir)
    frozen, _ = load_frozen_spec(exp_dir)
    spec = frozen["spec"]
    metric = spec["objectives"]["metric"]
    maximize = spec["objectives"].get("metric_direction", "maximize") == "maximize"
    budget = frozen.get("budget_ms", spec["latency"]["budget_ms"])
    df = load_trials(exp_dir)
    fin = final_trials(df) if len(df) else df
    counts = {s: int((fin["status"] == s).sum()) if len(fin) else 0
              for s in ("complete", "partial", "cached", "failed", "rejected")}
    objectives = ((metric, "max" if maximize else "min"), ("predicted_latency_ms", "min"))
    front = pareto_front(fin, objectives, budget_ms=budget) if len(fin) else fin
    ref = _read_reference(exp_dir) or {}
    dense_ms = (ref.get("dense") or {}).get("predicted_latency_ms")
    hv = 0.0
    if len(front):
        ref_lat = budget or (dense_ms * 1.1 if dense_ms else float(fin["predicted_latency_ms"].max()) * 1.1)
        vals = front[[metric, "predicted_latency_ms"]].to_numpy()
        ref_m = 0.0 if maximize else float(vals[:, 0].max()) * 1.1
        hv = float(hypervolume(vals, [ref_m, ref_lat], ["max" if maximize else "min", "min"]))
    evaluated = df[df["status"].isin(["complete", "failed", "partial"]) & df["eval_seconds"].notna()] if len(df) else df
    feasible_only = (spec.get("sampler") or {}).get("feasible_only", True)
    out = {
        "experiment": spec["name"], "exp_dir": str(exp_dir),
        "n_trials": int(sum(counts[s] for s in TRIAL_STATUSES) + (0 if feasible_only else counts["rejected"])),
        "counts": counts, "evaluations": int(len(evaluated)),
        "eval_seconds": float(evaluated["eval_seconds"].fillna(0).sum()) if len(evaluated) else 0.0,
        "budget_ms": budget, "hypervolume": hv, "search_img_size": frozen.get("search_img_size"),
        "space_size": frozen.get("space_size"),
        "front": [
            {"trial_number": int(r["trial_number"]), metric: float(r[metric]),
             "predicted_latency_ms": float(r["predicted_latency_ms"]), "macs": int(r["macs"]),
             "config": json.loads(r["config"])}
            for _, r in front.iterrows()
        ],
    }
    if extra:
        out.update(extra)
    return out


def fork(exp_dir, out_dir, *, budget_ms: Optional[float] = None, budget_fraction: Optional[float] = None,
         n_trials: Optional[int] = None, seed: Optional[int] = None, address: Optional[str] = None,
         progress: bool = True, log=print) -> Dict[str, Any]:
    """A new experiment warm-started from ``exp_dir`` with a new latency budget (and trial budget).

    Every full evaluation of the old experiment is reused (its metrics, never re-evaluated: the result
    cache is keyed by the computation), and the first generation is seeded with the old front re-gated
    under the new budget (the best feasible old configs by non-domination rank). Same supernet, predictor,
    space, evaluator and sampler; the new experiment records where it was forked from and resumes like any
    other.

    Args:
        exp_dir: the experiment to fork.
        out_dir: the new experiment directory (must not hold an experiment).
        budget_ms / budget_fraction: the new budget (at most one; default: the old one).
        n_trials: the new experiment's trial budget (default: the old spec's).
        seed: the new experiment's sampler seed (default: the old one's).

    Raises:
        UserError: both budgets given, bad numbers, ``out_dir`` in use, or what :func:`run` raises.
    """
    from .spec import ExperimentSpec

    if budget_ms is not None and budget_fraction is not None:
        raise UserError("give --budget-ms or --budget-fraction, not both; fix: drop one of them")
    frozen, spec = load_frozen_spec(Path(exp_dir))
    data = json.loads(spec.model_dump_json())
    out = Path(out_dir).expanduser().absolute()
    data["output_dir"] = str(out)
    data["name"] = f"{spec.name}-fork" if out.name in ("", ".") else out.name
    if budget_ms is not None or budget_fraction is not None:
        data["latency"]["budget_ms"] = budget_ms
        data["latency"]["budget_fraction"] = budget_fraction
    if n_trials is not None:
        data["n_trials"] = n_trials
    if seed is not None:
        data["seed"] = int(seed)
    from pydantic import ValidationError

    from .spec import format_validation_error

    try:
        new = ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, "fork").splitlines()[0].removeprefix("fork: ")) from None
    return run(new, address=address, progress=progress, log=log, parent=Path(exp_dir))
