"""Ray Tune front end: the same search as ``sparsesearch run``, driven by a ``ray.tune.Tuner``.

For teams whose tooling is built on Ray Tune (schedulers, ``ResultGrid``, Tune's experiment
folders): the spec's evaluator becomes a Tune function trainable and the spec's sampler runs
inside ``OptunaSearch``; the trial log is the same Parquet log the runner writes, so
``sparsesearch pareto EXP_DIR`` and :func:`search.trial_log.load_trials` read both alike.

Same as the runner: the search space (:class:`search.space.SearchSpace` genes as ``tune.choice``),
the objectives and directions, the sampler (with the latency constraint: predicted ms - budget),
the latency gate (an over-budget config is reported ``rejected`` without an evaluation), the
evaluation code (:class:`search.workers.EvalWorker`: the checkpoint bytes come from the object store,
are checked against the sidecar's sha256 and loaded once per Tune actor, ``reuse_actors=True``), the
Parquet schema. Different: Tune schedules the trials (one trial = one config, concurrency
``[workers] num_workers``); a config already evaluated by the same actor is reported ``cached``;
there is no ``resume`` of a Tune run through this module (use Tune's own ``Tuner.restore``).

Example::

    from search.spec import load_spec
    from search.tune import make_tuner
    tuner = make_tuner(load_spec("spec.toml"), "runs/tune_exp")
    grid = tuner.fit()                      # trial log: runs/tune_exp/trials/*.parquet
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from ray.tune import Callback

__all__ = ["make_trainable", "make_tuner", "tune_search_space", "TrialLogCallback", "LatencyConstraint",
           "log_schema"]

_STATE: Dict[Any, Dict[str, Any]] = {}  # per Tune actor process: the loaded supernet (reuse_actors)


def log_schema(space, metric: str):
    """The trial-log schema the runner writes (``search.runner``): same columns, same extras."""
    import pyarrow as pa

    from .trial_log import trial_schema

    return trial_schema(space.n_blocks, [metric], {"metrics_json": pa.string(), "sampler_attrs": pa.string(),
                                                   "params_json": pa.string()})


def _policy(spec):
    """The search policy of a spec (:class:`search.policy.SearchPolicy`): the same decode, gate, cache key
    and objectives as the runner; every input validated."""
    from .policy import SearchPolicy

    return SearchPolicy.from_spec(spec)


def tune_search_space(space) -> Dict[str, Any]:
    """A :class:`search.space.SearchSpace` as a Tune ``param_space``: one ``tune.choice`` per gene."""
    from ray import tune

    return {name: tune.choice(list(dist.choices)) for name, dist in space.distributions().items()}


class LatencyConstraint:
    """``constraints_func`` for the sampler: ``[predicted ms - budget]`` from the trial's parameters
    (<= 0 feasible), the same value the runner's latency gate stores. Picklable (Tune saves its searcher)."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, trial) -> List[float]:
        pol = self.policy
        cfg = pol.decode({k: trial.params[k] for k in pol.space.distributions()})
        return [pol.constraint(pol.predict(cfg))]


def make_trainable(spec) -> Callable[..., None]:
    """The spec's evaluator as a Ray Tune function trainable.

    ``trainable(config, weights=None)``: ``config`` holds one value per gene (``tune_search_space``).
    The trainable decodes it, prices it with the latency predictor and, within budget, sets the
    supernet's sparsity and runs the evaluator, then ``tune.report``s once::

        {<metric>: .., "latency_ms": predicted, "macs": .., "params": .., "metrics": {all metrics},
         "status": "complete" | "cached" | "rejected", "config_hash": .., "ratios": nested list,
         "eval_seconds": .., "worker_pid": .., "node": .., "model_loads": loads in this process}

    The supernet is built once per process (Tune actor) and reused by every later trial of that actor
    (``reuse_actors=True``); ``weights`` (the ``.safetensors`` bytes as a uint8 array, e.g. through
    ``tune.with_parameters``) spares the file read, otherwise the checkpoint file is read once.
    An evaluator exception is reported as ``status: "failed"`` with its one-line ``error`` and NaN
    objectives (the Optuna trial is told FAIL); the actor stays up for the next trial.
    """
    spec_json = spec.model_dump_json()

    def trainable(config: Dict[str, Any], weights: Optional[np.ndarray] = None) -> None:
        from ray import tune

        from .policy import MetricError
        from .spec import ExperimentSpec
        from .workers import EvalWorker

        key = spec_json
        st = _STATE.get(key)
        if st is None:
            sp = ExperimentSpec.model_validate_json(spec_json)
            st = {"spec": sp, "policy": _policy(sp), "worker": None, "cache": {}, "loads": 0}
            _STATE[key] = st
        sp, pol = st["spec"], st["policy"]
        params = {k: config[k] for k in pol.space.distributions()}
        cfg = pol.decode(params)
        predicted = pol.predict(cfg)
        macs = pol.macs(cfg)
        base = {"latency_ms": predicted, "macs": macs, "config_hash": pol.config_hash(cfg), "ratios": cfg.ratios,
                "weight_ratios": cfg.weight_ratios, "worker_pid": os.getpid()}
        if not pol.feasible(cfg):  # the latency gate (the sampler proposes feasible configs; a foreign one may not)
            out = dict(zip(pol.names, pol.worst(predicted, macs)))
            out.update(base, status="rejected", model_loads=st["loads"], metrics=None, eval_seconds=None, node=None)
            out.setdefault("params", None)  # the weight count when it is not an objective (the worst value when it is)
            tune.report(out)
            return
        ckey = pol.key(cfg)  # the same cache key as the runner: kept windows at the search resolution
        if ckey in st["cache"]:
            res = st["cache"][ckey]
            status = "cached"
        else:
            if st["worker"] is None:  # once per actor process
                data = np.asarray(weights, dtype=np.uint8) if weights is not None else \
                    np.fromfile(sp.supernet.checkpoint, dtype=np.uint8)
                ev = sp.evaluator
                st["worker"] = EvalWorker(data, pol.meta, dict(name=ev.name, subset_size=ev.subset_size,
                                                               batch_size=ev.batch_size, split=ev.split,
                                                               kwargs=dict(ev.kwargs), img_size=list(pol.img_size),
                                                               mosaic=dict(ev.mosaic)),
                                          threads=sp.workers.torch_threads or sp.workers.cpus_per_worker,
                                          worker_id=f"tune-{os.getpid()}", img_size=list(pol.img_size))
                st["loads"] += 1
            res = st["worker"].evaluate(-1, cfg.ratios, cfg.weight_ratios)
            error = res.error
            if res.metrics is not None:
                try:
                    res.metrics = pol.check_metrics(res.metrics)
                except MetricError as e:
                    res.metrics, error = None, str(e)
            if res.metrics is None:
                # NaN objectives: OptunaSearch's tell marks the Optuna trial FAIL (as the runner does);
                # the Tune trial itself ends normally so its actor (and the loaded supernet) is reused
                out = {n: float("nan") for n in pol.names}
                out.update(base, status="failed", error=error, model_loads=st["loads"], metrics=None,
                           eval_seconds=res.eval_seconds, params=None, node=res.node,
                           start_time=res.start_time, end_time=res.end_time)
                tune.report(out)
                return
            st["cache"][ckey] = res
            status = "complete"
        out = dict(zip(pol.names, pol.objectives(res.metrics, predicted, macs, res.params)))
        out.update(base, status=status, metrics=dict(res.metrics), eval_seconds=res.eval_seconds,
                   params=res.params, node=res.node, model_loads=st["loads"],
                   start_time=res.start_time, end_time=res.end_time)
        tune.report(out)

    trainable.__name__ = f"sparsesearch_{spec.name}".replace("-", "_").replace(".", "_")
    return trainable


class TrialLogCallback(Callback):
    """Tune callback writing every finished trial to ``EXP_DIR/trials`` (the runner's Parquet log).

    Trial numbers follow Tune's trial creation order (0, 1, ...); ``generation`` is the sampler's
    generation when the searcher exposes it, else ``number // population_size``. One part per trial,
    atomic (``TrialLogWriter``). A trial that errored is a ``failed`` row with the error's last line.
    """

    def __init__(self, spec, exp_dir, searcher=None):
        self.spec_json = spec.model_dump_json()
        self.exp_dir = str(exp_dir)
        self.searcher = searcher
        self.numbers: Dict[str, int] = {}
        self._writer = None
        self._ctx = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_writer"] = d["_ctx"] = None
        return d

    def _setup(self):
        if self._writer is None:
            from .spec import ExperimentSpec
            from .trial_log import TrialLogWriter

            spec = ExperimentSpec.model_validate_json(self.spec_json)
            pol = _policy(spec)
            self._ctx = {"spec": spec, "policy": pol, "space": pol.space, "metric": pol.metric}
            self._writer = TrialLogWriter(self.exp_dir, log_schema(pol.space, pol.metric), experiment_id=spec.name)
        return self._ctx

    def on_trial_start(self, iteration, trials, trial, **info):
        self.numbers.setdefault(trial.trial_id, len(self.numbers))

    def _sampler_attrs(self, trial) -> Dict[str, Any]:
        try:  # OptunaSearch keeps the Optuna trial of each Tune trial (private attribute, best effort)
            ot = self.searcher._ot_trials[trial.trial_id]
            attrs = self.searcher._ot_study._storage.get_trial(ot._trial_id).system_attrs
            return {k: v for k, v in attrs.items() if "generation" in k or "parent" in k}
        except Exception:  # noqa: BLE001
            return {}

    def _row(self, trial, status: str, result: Optional[Dict[str, Any]], error: Optional[str]) -> Dict[str, Any]:
        from .trial_log import FEASIBLE_STATUSES

        ctx = self._setup()
        space, metric = ctx["space"], ctx["metric"]
        params = {k: trial.config[k] for k in space.distributions()}
        cfg = space.decode(params)
        number = self.numbers.setdefault(trial.trial_id, len(self.numbers))
        attrs = self._sampler_attrs(trial)
        gens = [v for k, v in attrs.items() if k.endswith(":generation")]
        pop = ctx["spec"].sampler.options().get("population_size") or 0
        generation = int(gens[0]) if gens else (number // pop if pop else 0)
        now = dt.datetime.now(dt.timezone.utc)
        result = result or {}
        metrics = result.get("metrics") if status in FEASIBLE_STATUSES else None
        predicted = result.get("latency_ms")
        pol = ctx["policy"]
        if predicted is None:
            predicted = pol.predict(cfg)
        row = {
            "trial_number": number, "generation": generation, "attempt": 0,
            "config": json.dumps(cfg.ratios), "config_hash": pol.config_hash(cfg),
            "checkpoint_sha256": pol.checkpoint_sha256, "status": status,
            metric: None if metrics is None else float(metrics.get(metric, float("nan"))),
            "predicted_latency_ms": float(predicted), "macs": result.get("macs"),
            "metrics_json": None if metrics is None else json.dumps(metrics),
            "sampler_attrs": json.dumps(attrs), "params_json": json.dumps(params), "error": error,
            "params": result.get("params") if status in FEASIBLE_STATUSES else None,
            "eval_seconds": result.get("eval_seconds") if status == "complete" else None,
            "worker_id": f"tune-{result['worker_pid']}" if result.get("worker_pid") else None,
            "node": result.get("node"),
            "start_time": result.get("start_time") or now, "end_time": result.get("end_time") or now,
        }
        if cfg.weight_ratios:
            for k in ("qkv", "proj", "mlp"):
                row[f"w_{k}"] = cfg.weight_ratios.get(k)
        return row

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = dict(trial.last_result or {})
        status = result.get("status", "complete")
        self._writer_append(self._row(trial, status, result, result.get("error") if status == "failed" else None))

    def on_trial_error(self, iteration, trials, trial, **info):
        """The trainable itself crashed (its actor died, ...): a failed row with the error's last line."""
        text = ""
        try:
            text = str(trial.get_pickled_error() or "")
            if not text and trial.error_file and os.path.exists(trial.error_file):
                text = Path(trial.error_file).read_text()
        except Exception:  # noqa: BLE001
            pass
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        err = lines[-1] if lines else "the trial raised (see Tune's error.txt of the trial)"
        self._writer_append(self._row(trial, "failed", None, err[:500]))

    def _writer_append(self, row: Dict[str, Any]) -> None:
        self._setup()
        self._writer.append([row])


def make_tuner(spec, exp_dir=None, *, n_trials: Optional[int] = None, address: Optional[str] = None):
    """A ``ray.tune.Tuner`` running the spec's search with ``OptunaSearch``; ``fit()`` it.

    Sets up (like ``sparsesearch run``): ``EXP_DIR/experiment.json`` (frozen spec, checkpoint and
    predictor sha256, budget), the embedded Ray on 127.0.0.1 (or joins ``address`` / the spec's
    ``[ray] address``) since the checkpoint bytes go to the object store here, the sampler from the
    spec (with the latency constraint), ``OptunaSearch(metric=objectives, mode=directions)``,
    ``TuneConfig(num_samples=n_trials, max_concurrent_trials=num_workers, reuse_actors=True)``,
    ``RunConfig(storage_path=EXP_DIR/tune, callbacks=[TrialLogCallback])``.

    Args:
        spec: an :class:`search.spec.ExperimentSpec`.
        exp_dir: experiment directory (default: the spec's ``output_dir``); must not hold another
            experiment.
        n_trials: trial budget (default: the spec's ``n_trials``).
        address: Ray cluster to join (default: the spec's, else an embedded local Ray).

    Raises:
        search.errors.UserError: no directory, missing checkpoint / predictor, directory in use.
    """
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from supernet.fileio import atomic_write_json

    from .errors import UserError
    from .runner import _freeze, _worker_pythonpath
    from .samplers import make_sampler
    from .workers import ray_init_local

    exp_dir = Path(exp_dir or spec.output_dir or "")
    if not str(exp_dir) or str(exp_dir) == ".":
        raise UserError("no experiment directory; fix: pass exp_dir or set output_dir in the spec")
    exp_dir = exp_dir.resolve()
    policy = _policy(spec)  # checkpoint, predictor and budget checked before anything is written
    if (exp_dir / "experiment.json").exists() or (exp_dir / "trials").exists():
        raise UserError(f"{exp_dir} already holds an experiment; fix: choose another directory")
    exp_dir.mkdir(parents=True, exist_ok=True)
    frozen = _freeze(spec, exp_dir, policy)
    frozen.update(driver="ray.tune")
    atomic_write_json(exp_dir / "experiment.json", frozen)
    ck = Path(spec.supernet.checkpoint)

    w = spec.workers
    address = address or spec.ray.address
    if not ray.is_initialized():
        ray_init_local(num_cpus=None if address else max(w.num_workers * w.cpus_per_worker, os.cpu_count() or 1),
                       address=address, dashboard=spec.ray.dashboard,
                       runtime_env=None if address else {"env_vars": {"PYTHONPATH": os.pathsep.join(
                           _worker_pythonpath())}})
    space = policy.space
    sampler = make_sampler(spec.sampler, space, spec.seed, constraints_func=LatencyConstraint(policy),
                           feasible=policy.feasible_params, repair=policy.repair)
    modes = ["max" if d == "maximize" else "min" for d in policy.directions]
    searcher = OptunaSearch(metric=list(policy.names), mode=modes, sampler=sampler, study_name=spec.name)
    weights = np.fromfile(ck, dtype=np.uint8)
    trainable = tune.with_resources(tune.with_parameters(make_trainable(spec), weights=weights),
                                    {"cpu": w.cpus_per_worker})
    callback = TrialLogCallback(spec, exp_dir, searcher=searcher)
    return tune.Tuner(
        trainable,
        param_space=tune_search_space(space),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=int(n_trials or spec.n_trials),
                                    max_concurrent_trials=w.num_workers, reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(exp_dir / "tune"), callbacks=[callback],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
    )
