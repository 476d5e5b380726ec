"""The search loop: spec -> sampler -> latency gate -> Ray workers -> Parquet -> Pareto.

The driver runs Optuna ask/tell on an in-memory study. Every asked config is decoded, hashed and
priced by the latency predictor (microseconds); configs over the budget are told to Optuna as
infeasible (constraint = predicted - budget > 0, so constrained NSGA-II ranks them below every
feasible one) and logged ``rejected`` without an evaluation; configs already evaluated on this
checkpoint are told their recorded values and logged ``cached``. The rest go to the Ray worker
pool, a generation (population) at a time so every worker stays busy; results are told as they
arrive and appended to the Parquet trial log in atomic part files.

Resumable state is the trial log itself plus ``pending.json`` (the trials of the batch in flight):
``resume`` rebuilds the study from the log (values, constraints and the GA sampler's generation
attributes), re-enqueues the pending trials that never reached the log with their original numbers
and parameters, and goes on. No extra storage round trip per trial.

Layout of an experiment directory::

    EXP_DIR/spec.toml          the spec as given (copy)
    EXP_DIR/experiment.json    the frozen spec + checkpoint / predictor sha256 + search-space digest
    EXP_DIR/trials/part-*.parquet   the trial log (search.trial_log)
    EXP_DIR/pending.json       trials asked but not yet logged (resume re-runs them once)
    EXP_DIR/reference.json     dense and uniform-sparsity reference points
    EXP_DIR/.lock              held (flock) by the live driver
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .errors import UserError

__all__ = ["run", "resume", "ExperimentLockedError", "ResumeError", "experiment_summary"]

FORMAT_VERSION = 1
REFERENCE_UNIFORM = (0.3, 0.5, 0.7)
FLUSH_EVAL_S = 0.05  # an evaluation at least this long is appended to the log as soon as it ends
FLUSH_EVERY_S = 0.25  # otherwise results are grouped into one Parquet part at most this long


class ExperimentLockedError(UserError):
    """Another driver is running this experiment."""


class ResumeError(UserError):
    """The experiment cannot be resumed as it stands (changed checkpoint, predictor or space)."""


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    return hashlib.sha256(json.dumps(spec.space.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


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
    """The GA samplers' per-trial state worth keeping (generation, parents, operator)."""
    return {k: v for k, v in system_attrs.items() if "generation" in k or "parent" in k}


# ------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------
class _Search:
    def __init__(self, spec, exp_dir: Path, *, progress: bool, log=print):
        import optuna
        import pyarrow as pa

        from latency import Predictor
        from supernet.checkpoint import read_sidecar
        from supernet.sparse_swin import validate_sparsity  # noqa: F401 - import check
        from .samplers import latency_constraints, make_sampler
        from .space import SearchSpace
        from .trial_log import TrialLogWriter, trial_schema

        self.spec, self.exp_dir, self.progress, self.log = spec, exp_dir, progress, log
        self.optuna = optuna
        ckpt = Path(spec.supernet.checkpoint)
        self.ckpt_path = ckpt
        self.meta = read_sidecar(ckpt)
        self.ckpt_sha = self.meta["weights_sha256"]
        self.depths = tuple(self.meta["arch"]["timm_kwargs"]["depths"])
        self.space = SearchSpace.from_spec(spec.space, self.depths)
        self.predictor = Predictor.load(spec.latency.predictor)
        self.dense_ms = float(self.predictor.predict(np.asarray([self.space.dense_config().flat], dtype=np.float64))[0])
        self.budget = spec.latency.budget_ms
        if spec.latency.budget_fraction is not None:
            self.budget = float(spec.latency.budget_fraction) * self.dense_ms
        self.objective_names = spec.objectives.names()
        self.directions = spec.objectives.directions()
        self.metric = spec.objectives.metric
        self.sampler = make_sampler(spec.sampler, self.space, spec.seed, constraints_func=latency_constraints)
        self.population = getattr(self.sampler, "population_size", None) or getattr(
            getattr(self.sampler, "_sampler", None), "population_size", None)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(directions=self.directions, sampler=self.sampler,
                                         study_name=spec.name)
        self.dists = self.space.distributions()
        schema = trial_schema(self.space.n_blocks, [self.metric],
                              {"metrics_json": pa.string(), "sampler_attrs": pa.string(),
                               "params_json": pa.string()})
        self.writer = TrialLogWriter(exp_dir, schema, experiment_id=spec.name)
        self.cache: Dict[str, Dict[str, Any]] = {}  # config hash -> values/metrics of a complete row
        self.rows: List[Dict[str, Any]] = []
        self.counts = {"complete": 0, "rejected": 0, "failed": 0, "cached": 0}
        self.done_numbers: set = set()
        self.next_number = 0
        self.free_numbers: List[int] = []  # numbers below next_number missing from the log (moved-aside part)
        self.rerun = 0  # pending trials re-enqueued by restore(): the first batch after a resume
        self.hv = 0.0
        self._macs_model = None
        self._front_pts: List[Tuple[float, float]] = []
        self._last_flush = time.time()

    # ---- model-free facts about a config ----------------------------------------------------
    def _arch_model(self):
        """The checkpoint's architecture with random weights (for MACs and kept-window counts)."""
        if self._macs_model is None:
            from supernet.checkpoint import build_model

            self._macs_model = build_model(self.meta)
        return self._macs_model

    def _macs(self, ratios) -> int:
        from supernet.macs import count_macs

        return count_macs(self._arch_model(), None, ratios=ratios)  # at the backbone's own input size

    def _exec_key(self, config) -> str:
        """Result-cache key of a config: the windows every block keeps, plus the weight ratios.

        A block keeps k = int(nW * (1 - r)) of its nW windows (SparseViT, ``supernet.keep_count``), so
        several ratios give the same k: at 224 px a stage-2 block has 4 windows (ratios 0.1 and 0.2
        both keep 3) and a stage-3 block 1 (any r > 0 skips it). Configs with equal counts run the
        same computation and get the same metrics, MACs and predicted latency, so one evaluation
        serves them all. Counted at the backbone's own input size, as the MACs and the predictor are.
        """
        counts = self._arch_model().backbone.keep_counts(None, config.ratios)
        return json.dumps([counts, config.weight_ratios], sort_keys=True, separators=(",", ":"))

    def _values(self, metrics: Dict[str, float], p: _Pending, params: Optional[int]) -> List[float]:
        out = []
        for name in self.objective_names:
            if name == self.metric:
                out.append(float(metrics[self.metric]))
            elif name == "latency_ms":
                out.append(float(p.predicted_ms))
            elif name == "macs":
                out.append(float(p.macs))
            elif name == "params":
                out.append(float(params if params is not None else 0))
        return out

    def _worst_values(self, p: _Pending) -> List[float]:
        vals = []
        for name, d in zip(self.objective_names, self.directions):
            if name == "latency_ms":
                vals.append(float(p.predicted_ms))
            elif name == "macs":
                vals.append(float(p.macs))
            else:
                vals.append(0.0 if d == "maximize" else 1e9)
        return vals

    # ---- rows -------------------------------------------------------------------------------
    def _row(self, p: _Pending, status: str, *, metrics=None, res=None, error=None, attempt=0) -> Dict[str, Any]:
        now = dt.datetime.now(dt.timezone.utc)
        sys_attrs = p.sampler_attrs  # captured once at ask time (GA samplers set them during ask)
        row = {
            "trial_number": p.number, "generation": int(p.generation), "attempt": int(attempt),
            "ratios": list(p.config.flat), "config": json.dumps(p.config.ratios), "config_hash": p.hash,
            "checkpoint_sha256": self.ckpt_sha, "status": status,
            self.metric: None if metrics is None else float(metrics.get(self.metric, float("nan"))),
            "predicted_latency_ms": float(p.predicted_ms), "macs": int(p.macs),
            "metrics_json": None if metrics is None else json.dumps(metrics),
            "sampler_attrs": json.dumps(sys_attrs), "params_json": json.dumps(p.params),
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
                       end_time=dt.datetime.fromtimestamp(res.end_time, dt.timezone.utc), params=res.params)
        else:
            row.update(start_time=now, end_time=now)
        return row

    def _flush(self) -> None:
        if self.rows:
            self.writer.append(self.rows)
            self.rows = []
        self._last_flush = time.time()

    # ---- resume -----------------------------------------------------------------------------
    def restore(self) -> List[Dict[str, Any]]:
        """Rebuild the study from the trial log; return pending trials to re-run."""
        from optuna.trial import TrialState, create_trial

        from .trial_log import final_trials, load_trials

        # an unreadable part stops the resume (TrialLogError: one line naming the file) before anything
        # is written: skipping it would silently drop its trials
        df = load_trials(self.exp_dir)
        if len(df):
            df = final_trials(df).sort_values("trial_number")
        for _, r in df.iterrows():
            params = json.loads(r["params_json"]) if isinstance(r.get("params_json"), str) else None
            if params is None:
                continue
            status = r["status"]
            sys_attrs = json.loads(r["sampler_attrs"]) if isinstance(r.get("sampler_attrs"), str) else {}
            metrics = json.loads(r["metrics_json"]) if isinstance(r.get("metrics_json"), str) else None
            config = self.space.decode(params)
            p = _Pending(int(r["trial_number"]), params, config=config, key=self._exec_key(config),
                         hash=r["config_hash"], predicted_ms=float(r["predicted_latency_ms"]),
                         macs=int(r["macs"]) if r["macs"] == r["macs"] else 0, generation=int(r["generation"]))
            user_attrs = {"number": p.number}
            if status in ("complete", "cached") and metrics is not None:
                values = self._values(metrics, p, r.get("params") if r.get("params") == r.get("params") else None)
                state = TrialState.COMPLETE
                user_attrs["constraint"] = (p.predicted_ms - self.budget) if self.budget else -1.0
                if status == "complete":
                    prm = r.get("params")
                    self.cache[p.key] = {"metrics": metrics, "params": None if prm != prm or prm is None else int(prm)}
            elif status == "rejected":
                values = self._worst_values(p)
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
            if status in ("complete", "cached") and metrics is not None:
                self._track_front(metrics, p)
        self.next_number = (int(df["trial_number"].max()) + 1) if len(df) else 0
        pending_path = self.exp_dir / "pending.json"
        todo = []
        if pending_path.exists():
            for t in json.loads(pending_path.read_text()).get("trials", []):
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
        return float(hypervolume(pts, [0.0, ref_lat], ["max", "min"]))

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
        config = self.space.decode(params)
        p = _Pending(number, params, optuna_trial=trial, config=config, key=self._exec_key(config),
                     hash=self.space.config_hash(config, self.ckpt_sha))
        p.predicted_ms = float(self.predictor.predict(np.asarray([config.flat], dtype=np.float64))[0])
        p.macs = self._macs(config.ratios)
        st = self.study._storage.get_trial(trial._trial_id).system_attrs
        p.sampler_attrs = _sampler_attrs(st)
        gens = [v for k, v in st.items() if k.endswith(":generation")]
        p.generation = int(gens[0]) if gens else (number // self.population if self.population else 0)
        return p

    def tell_complete(self, p: _Pending, metrics: Dict[str, float], status: str, res=None, params=None) -> None:
        p.optuna_trial.set_user_attr("constraint", (p.predicted_ms - self.budget) if self.budget else -1.0)
        self.study.tell(p.optuna_trial, self._values(metrics, p, params))
        row = self._row(p, status, metrics=metrics, res=res, attempt=res.attempt if res else 0)
        if params is not None:
            row["params"] = int(params)
        self.rows.append(row)
        self.counts[status] += 1
        self.done_numbers.add(p.number)
        self._track_front(metrics, p)

    def run(self, n_trials: int, pool, pbar=None) -> None:
        from optuna.trial import TrialState

        from .workers import Task

        batch_size = max(self.population or 0, 2 * pool.size)
        while len(self.done_numbers) < n_trials:
            want = min(batch_size, n_trials - len(self.done_numbers))
            if self.rerun:  # after a resume, first finish the interrupted batch alone (same generations)
                want, self.rerun = min(want, self.rerun), 0
            batch: List[_Pending] = []
            inflight: Dict[str, _Pending] = {}
            for _ in range(want):
                batch.append(self.ask())
            _atomic_write(self.exp_dir / "pending.json", json.dumps(
                {"trials": [{"number": p.number, "params": p.params, "sampler_attrs": p.sampler_attrs}
                            for p in batch]}))
            for p in batch:
                if self.budget is not None and p.predicted_ms > self.budget:
                    p.optuna_trial.set_user_attr("constraint", p.predicted_ms - self.budget)
                    self.study.tell(p.optuna_trial, self._worst_values(p))
                    self.rows.append(self._row(p, "rejected"))
                    self.counts["rejected"] += 1
                    self.done_numbers.add(p.number)
                elif p.key in self.cache:
                    c = self.cache[p.key]
                    self.tell_complete(p, c["metrics"], "cached", params=c.get("params"))
                elif p.key in inflight:
                    inflight[p.key].waiters.append(p)
                else:
                    inflight[p.key] = p
                    pool.submit(Task(p.number, p.config.ratios, p.config.weight_ratios, payload=p))
            self._update(pbar)
            for res in pool.results():
                p: _Pending = res.task.payload
                if res.metrics is not None:
                    self.cache[p.key] = {"metrics": res.metrics, "params": res.params}
                    self.tell_complete(p, res.metrics, "complete", res=res, params=res.params)
                    for w in p.waiters:
                        self.tell_complete(w, res.metrics, "cached", params=res.params)
                else:
                    for q in [p] + p.waiters:
                        self.study.tell(q.optuna_trial, state=TrialState.FAIL)
                        self.rows.append(self._row(q, "failed", res=res, error=res.error, attempt=res.attempt))
                        self.counts["failed"] += 1
                        self.done_numbers.add(q.number)
                # A real evaluation is logged at once (a kill never loses it); results of
                # near-instant evaluators are grouped so the log costs < 1 ms per trial.
                if res.eval_seconds >= FLUSH_EVAL_S or pool.busy == 0 or time.time() - self._last_flush > FLUSH_EVERY_S:
                    self._flush()
                self._update(pbar)
            self._flush()
            self.hv = self._hypervolume()
            self._update(pbar)
        _atomic_write(self.exp_dir / "pending.json", json.dumps({"trials": []}))

    def _update(self, pbar) -> None:
        if pbar is None:
            return
        pbar.n = len(self.done_numbers)
        c = self.counts
        pbar.set_postfix_str(f"complete {c['complete']} rejected {c['rejected']} failed {c['failed']} "
                             f"cached {c['cached']} HV {self.hv:.4g}", refresh=False)
        pbar.refresh()


def _reference_points(search: _Search, pool) -> Dict[str, Any]:
    """Evaluate dense + uniform-sparsity reference configs once (not trials of the search)."""
    from .workers import Task

    path = search.exp_dir / "reference.json"
    if path.exists():
        return json.loads(path.read_text())
    refs = {"dense": search.space.dense_config()}
    for r in REFERENCE_UNIFORM:
        try:
            refs[f"uniform{r:.1f}"] = search.space.uniform_config(r)
        except Exception:  # noqa: BLE001 - the ratio is not in the space
            continue
    names = list(refs)
    for i, name in enumerate(names):
        pool.submit(Task(-1 - i, refs[name].ratios, None, payload=name))
    out = {}
    for res in pool.results():
        name = res.task.payload
        cfg = refs[name]
        out[name] = {
            "config": cfg.ratios, "metrics": res.metrics, "error": res.error,
            "predicted_latency_ms": float(search.predictor.predict(np.asarray([cfg.flat], dtype=np.float64))[0]),
            "macs": search._macs(cfg.ratios),
        }
    _atomic_write(path, json.dumps(out, indent=1))
    return out


def _freeze(spec, exp_dir: Path, ckpt_sha: str, predictor_sha: str) -> Dict[str, Any]:
    frozen = {
        "format_version": FORMAT_VERSION,
        "spec": json.loads(spec.model_dump_json()),
        "checkpoint": str(spec.supernet.checkpoint), "checkpoint_sha256": ckpt_sha,
        "predictor": str(spec.latency.predictor), "predictor_sha256": predictor_sha,
        "space_digest": _space_digest(spec),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    _atomic_write(exp_dir / "experiment.json", json.dumps(frozen, indent=1))
    src = spec.source() if callable(getattr(spec, "source", None)) else None
    if src and Path(src).exists():
        shutil.copyfile(src, exp_dir / "spec.toml")
    return frozen


def _check_frozen(frozen: Dict[str, Any], spec, exp_dir: Path) -> None:
    ck = Path(spec.supernet.checkpoint)
    if not ck.exists():
        raise ResumeError(f"{exp_dir}: its checkpoint {ck} is missing; fix: restore the file "
                          f"(sha256 {frozen['checkpoint_sha256'][:12]}...) or start a new experiment")
    sha = _sha256(ck)
    if sha != frozen["checkpoint_sha256"]:
        raise ResumeError(f"{exp_dir}: checkpoint {ck} changed since the experiment started (sha256 "
                          f"{sha[:12]}... != {frozen['checkpoint_sha256'][:12]}...); results would mix two "
                          "supernets; fix: restore the original checkpoint or run a new experiment (new output_dir)")
    pred = Path(spec.latency.predictor)
    if not pred.exists() or _sha256(pred) != frozen["predictor_sha256"]:
        raise ResumeError(f"{exp_dir}: latency predictor {pred} is missing or changed since the experiment "
                          "started; fix: restore it or run a new experiment (new output_dir)")
    if _space_digest(spec) != frozen["space_digest"]:
        raise ResumeError(f"{exp_dir}: the search space differs from the frozen one in {exp_dir}/experiment.json; "
                          "fix: resume with the original spec or run a new experiment (new output_dir)")


def _worker_pythonpath() -> List[str]:
    """PYTHONPATH of the embedded Ray's workers: this package's root, then the driver's PYTHONPATH
    (where a spec's ``module:function`` evaluator may live)."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [str(Path(__file__).resolve().parents[1])] + extra


def _execute(spec, exp_dir: Path, *, n_trials: int, is_resume: bool, address: Optional[str], progress: bool,
             log) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    from .workers import WorkerPool, ray_init_local

    t0 = time.time()
    search = _Search(spec, exp_dir, progress=progress, log=log)
    repeated = search.restore() if is_resume else []
    ej = exp_dir / "experiment.json"
    frozen = json.loads(ej.read_text())
    if frozen.get("budget_ms") != search.budget or frozen.get("dense_predicted_ms") != search.dense_ms:
        frozen.update(budget_ms=search.budget, dense_predicted_ms=search.dense_ms)
        _atomic_write(ej, json.dumps(frozen, indent=1))
    if len(search.done_numbers) >= n_trials and (exp_dir / "reference.json").exists():
        # a finished experiment resumed without a larger budget: nothing to evaluate, no Ray
        _atomic_write(exp_dir / "pending.json", json.dumps({"trials": []}))
        return experiment_summary(exp_dir, extra={
            "elapsed_s": round(time.time() - t0, 2), "trials_this_run": 0, "resumed": is_resume,
            "rerun_pending": 0, "reference": json.loads((exp_dir / "reference.json").read_text())})
    address = address or spec.ray.address
    owns_ray = False
    import ray

    if not ray.is_initialized():
        w = spec.workers
        ray_init_local(num_cpus=None if address else max(w.num_workers * w.cpus_per_worker, os.cpu_count() or 1),
                       address=address, dashboard=spec.ray.dashboard,
                       runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_worker_pythonpath())}}
                       if not address else None)
        owns_ray = True
    w = spec.workers
    evaluator = dict(name=spec.evaluator.name, subset_size=spec.evaluator.subset_size,
                     batch_size=spec.evaluator.batch_size, split=spec.evaluator.split,
                     kwargs=dict(spec.evaluator.kwargs))
    try:
        pool = WorkerPool(str(search.ckpt_path), search.meta, evaluator, num_workers=w.num_workers,
                          cpus_per_worker=w.cpus_per_worker, threads=w.torch_threads or w.cpus_per_worker,
                          max_retries=w.max_retries)
    except BaseException:
        if owns_ray:
            ray.shutdown()
        raise
    try:
        pool.wait_ready()
        refs = _reference_points(search, pool)
        already = len(search.done_numbers)
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
            n_run = len(search.done_numbers) - already
    finally:
        pool.shutdown()
        if owns_ray:
            ray.shutdown()
    return experiment_summary(exp_dir, extra={
        "elapsed_s": round(time.time() - t0, 2), "search_loop_s": round(t_end - t_loop, 4),
        "trials_this_run": n_run, "resumed": is_resume, "rerun_pending": len(repeated),
        "worker_deaths": pool.worker_deaths, "actors_replaced": pool.replaced, "reference": refs})


def _prepare_dir(spec) -> Path:
    if spec.output_dir is None:
        raise UserError("spec has no output_dir; fix: add `output_dir = \"runs/NAME\"` at the top level")
    exp_dir = Path(spec.output_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    return exp_dir


def run(spec, *, address: Optional[str] = None, n_trials: Optional[int] = None, progress: bool = True,
        log=print) -> Dict[str, Any]:
    """Run a new search described by ``spec`` (an :class:`search.spec.ExperimentSpec`).

    Args:
        spec: the experiment spec (see ``search.spec.load_spec``).
        address: Ray address to join (default: the spec's ``[ray] address``, else an embedded local Ray on
            127.0.0.1).
        n_trials: override the spec's trial budget.
        progress: show a progress bar (stderr).

    Returns:
        The experiment summary (see :func:`experiment_summary`).

    Raises:
        ExperimentLockedError: another driver holds the directory.
        UserError: the directory already holds a different experiment, or any input is invalid.
    """
    exp_dir = _prepare_dir(spec)
    with _Lock(exp_dir):
        if (exp_dir / "experiment.json").exists():
            raise UserError(f"{exp_dir} already holds an experiment; fix: `sparsesearch resume {exp_dir}` to "
                            "continue it, or choose another output_dir")
        ck = Path(spec.supernet.checkpoint)
        for p, what in ((ck, "checkpoint"), (Path(spec.latency.predictor), "latency predictor")):
            if not p.exists():
                raise UserError(f"{what} {p} not found; fix: train/profile it first or correct the path in the spec")
        _freeze(spec, exp_dir, _sha256(ck), _sha256(Path(spec.latency.predictor)))
        return _execute(spec, exp_dir, n_trials=n_trials or spec.n_trials, is_resume=False, address=address,
                        progress=progress, log=log)


def load_frozen_spec(exp_dir: Path):
    """The spec frozen into ``EXP_DIR/experiment.json`` at ``run``."""
    from .spec import ExperimentSpec

    path = exp_dir / "experiment.json"
    if not path.exists():
        raise ResumeError(f"{exp_dir} holds no experiment (no experiment.json); fix: `sparsesearch run SPEC.toml` first")
    frozen = json.loads(path.read_text())
    return frozen, ExperimentSpec.model_validate(frozen["spec"])


def resume(exp_dir, *, n_trials: Optional[int] = None, address: Optional[str] = None, progress: bool = True,
           log=print) -> Dict[str, Any]:
    """Continue a killed or finished experiment.

    Completed trials are never evaluated again; trials that were in flight when the driver died are
    re-run once with their original numbers and parameters; the sampler's generations are restored.

    Args:
        exp_dir: the experiment directory.
        n_trials: new total trial budget (default: the frozen spec's).

    Raises:
        ResumeError: the checkpoint, predictor or search space changed; no experiment there.
        ExperimentLockedError: another driver holds the directory.
    """
    exp_dir = Path(exp_dir)
    frozen, spec = load_frozen_spec(exp_dir)
    with _Lock(exp_dir):
        _check_frozen(frozen, spec, exp_dir)
        total = n_trials or spec.n_trials
        return _execute(spec, exp_dir, n_trials=total, is_resume=True, address=address, progress=progress, log=log)


def experiment_summary(exp_dir, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Counts, the Pareto front and the hypervolume of an experiment directory (JSON-ready dict)."""
    from .pareto import hypervolume, pareto_front
    from .trial_log import final_trials, load_trials

    exp_dir = Path(exp_dir)
    frozen = json.loads((exp_dir / "experiment.json").read_text())
    spec = frozen["spec"]
    metric = spec["objectives"]["metric"]
    budget = frozen.get("budget_ms", spec["latency"]["budget_ms"])
    df = load_trials(exp_dir)
    fin = final_trials(df) if len(df) else df
    counts = {s: int((fin["status"] == s).sum()) if len(fin) else 0 for s in ("complete", "rejected", "failed", "cached")}
    front = pareto_front(fin, ((metric, "max"), ("predicted_latency_ms", "min")), budget_ms=budget) if len(fin) else fin
    ref = {}
    if (exp_dir / "reference.json").exists():
        ref = json.loads((exp_dir / "reference.json").read_text())
    dense_ms = (ref.get("dense") or {}).get("predicted_latency_ms")
    hv = 0.0
    if len(front):
        ref_lat = budget or (dense_ms * 1.1 if dense_ms else float(fin["predicted_latency_ms"].max()) * 1.1)
        hv = float(hypervolume(front[[metric, "predicted_latency_ms"]].to_numpy(), [0.0, ref_lat], ["max", "min"]))
    out = {
        "experiment": spec["name"], "exp_dir": str(exp_dir), "n_trials": int(len(fin)),
        "counts": counts, "evaluations": int(len(df[df["status"].isin(["complete", "failed"])])) if len(df) else 0,
        "budget_ms": budget, "hypervolume": hv,
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
