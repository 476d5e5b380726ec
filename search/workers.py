"""Ray worker pool: each actor holds the supernet once and switches sparsity in place per trial.

The driver reads the checkpoint file once and ``ray.put``s its bytes as a numpy uint8 array, which
every worker maps zero-copy from the object store, checks against the sidecar's sha256 and loads
with safetensors (no unpickling). A trial is then only ``set_sparsity`` (+ DIMAP masks for a joint
search, restored bit-exactly afterwards) and one evaluator call.

Fault tolerance uses Ray's own machinery: actors are created with ``max_restarts`` so Ray replaces
an actor whose process or node died (it re-runs ``__init__`` on a live node); the pool re-submits a
trial whose actor died to another actor up to ``max_retries`` times, then reports it failed. An actor
that died gets no new task until a ``ping`` shows Ray has restarted it; one that Ray gave up on is
replaced by a new actor (up to ``max_restarts`` times per pool).
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .errors import UserError

__all__ = ["EvalWorker", "WorkerPool", "Task", "Result", "ray_init_local", "check_reachable", "WorkerStartError",
           "ClusterUnreachableError", "RayStartError"]


class WorkerStartError(UserError):
    """The Ray workers could not load the supernet or build the evaluator."""


class RayStartError(UserError):
    """The embedded (private, local) Ray did not start, twice: Ray waits 30 s for its raylet, which a machine
    busy with other work can exceed."""


#: How often :func:`ray_init_local` tries to start the embedded Ray before giving up with :class:`RayStartError`.
LOCAL_START_ATTEMPTS = 2


def ray_init_local(num_cpus: Optional[int] = None, address: Optional[str] = None, dashboard: bool = False,
                   runtime_env: Optional[dict] = None):
    """Start (or join) Ray with every address on loopback.

    Embedded mode (``address=None``): a private local Ray bound to 127.0.0.1, no dashboard, no
    usage stats. ``address="auto"`` or ``ray://...`` / ``HOST:PORT`` joins an existing cluster.

    Returns:
        The ``ray`` module, initialised.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1")
    import ray

    if ray.is_initialized():
        return ray
    if address:
        check_reachable(address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # address="local" always starts a private instance: neither RAY_ADDRESS nor the
        # /tmp/ray/ray_current_cluster file of an earlier `ray start` can make it join a cluster
        env_address = os.environ.pop("RAY_ADDRESS", None)
        try:
            for attempt in range(LOCAL_START_ATTEMPTS):
                before = _child_pids()
                try:
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                             dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", runtime_env=runtime_env,
                             log_to_driver=False, configure_logging=False)
                    break
                except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception when its raylet is late
                    if "timed out during startup" not in str(e):
                        raise
                    # the failed start's GCS / raylet: Ray never registered the node, so ray.shutdown() cannot stop them
                    _terminate(_child_pids() - before)
                    if attempt + 1 == LOCAL_START_ATTEMPTS:
                        what = " ".join(str(e).split())
                        raise RayStartError(
                            f"the embedded Ray did not start ({LOCAL_START_ATTEMPTS} tries): {what}; fix: rerun when "
                            "the machine is less busy (`sparsesearch resume EXP` continues a started experiment; "
                            "nothing recorded was changed)") from None
        finally:
            if env_address is not None:
                os.environ["RAY_ADDRESS"] = env_address
    return ray


def _child_pids() -> set:
    """PIDs of this process's direct children (psutil, which Ray ships and puts on ``sys.path`` once imported)."""
    import psutil

    return {c.pid for c in psutil.Process().children()}


def _terminate(pids: set, timeout_s: float = 5.0) -> None:
    """SIGTERM ``pids``, then SIGKILL whatever is left after ``timeout_s``; reap them."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].terminate()
        except psutil.NoSuchProcess:
            pass
    for p in psutil.wait_procs(procs, timeout=timeout_s)[1]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)


class ClusterUnreachableError(UserError):
    """``--address`` / ``[ray] address`` names a Ray cluster that does not answer."""


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast (one line) when a Ray address does not accept TCP connections.

    ``ray.init`` keeps retrying a dead address for minutes; this probe opens one TCP connection to the
    address's host and port first. ``auto`` is resolved as ``ray.init`` resolves it, then probed: a ``RAY_ADDRESS``
    with a scheme (``ray://HOST:PORT``, Ray Client) as it is, else Ray's own resolver (a plain ``RAY_ADDRESS``, the
    head that ``ray start`` recorded on this machine, the one running GCS). ``local`` is not a cluster and passes.

    Raises:
        ClusterUnreachableError: nothing listens there within ``timeout_s`` seconds, or ``auto`` finds no cluster;
            the message names ``RAY_ADDRESS`` when the address came from it.
    """
    if address == "local":
        return
    given = "--address / [ray] address"  # where the address came from, for the fix
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        if env:
            given = f"RAY_ADDRESS (={env}, which --address auto uses)"
        if "://" in env:  # ray.init hands a scheme to Ray Client as it is
            address = env
        else:
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die
            except ImportError:  # Ray moved its resolver: leave ``auto`` to ray.init
                return
            try:
                address = canonicalize_bootstrap_address_or_die("auto")
            except (ConnectionError, ValueError) as e:
                raise ClusterUnreachableError(f"--address auto found no running Ray cluster ({str(e).split('. ')[0]}); "
                                              "fix: start the head (`ray start --head --node-ip-address 127.0.0.1`), "
                                              f"or correct {given}") from None
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachableError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT; fix: correct "
                                      f"{given}, e.g. 127.0.0.1:6379 (the head's GCS port), or use --address auto")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterUnreachableError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}); fix: "
                                      "start the head (`ray start --head --node-ip-address 127.0.0.1`) or correct "
                                      f"{given}") from None


@dataclass
class Task:
    """One evaluation: trial number, nested ratios, optional DIMAP module ratios.

    ``fidelity``: multi-fidelity settings for this evaluation (see :mod:`search.fidelity`), or None
    for a full evaluation: ``{"first": canvases of the first rung, "front": [[latency_ms, first-rung
    value], ...], "margin": float, "predicted_ms": float, "metric": name, "maximize": bool}``.
    ``affinity``: the config's stage-prefix keys (driver side, to pick the worker that ran the longest
    shared prefix).
    """
    number: int
    ratios: List[List[float]]
    weight_ratios: Optional[Dict[str, float]] = None
    attempt: int = 0
    payload: Any = None  # driver-side bookkeeping, never shipped
    fidelity: Optional[Dict[str, Any]] = None
    affinity: Optional[List[Any]] = None


@dataclass
class Result:
    """What a worker returns for a task (``metrics`` None when it failed)."""
    number: int
    metrics: Optional[Dict[str, float]]
    eval_seconds: float
    start_time: float
    end_time: float
    worker_id: str
    node: str
    attempt: int
    error: Optional[str] = None
    params: Optional[int] = None
    task: Optional[Task] = field(default=None, repr=False)
    canvases: Optional[int] = None  # evaluation canvases seen (multi-fidelity), None = the evaluator's own
    partial: bool = False  # stopped after the first rung (never a front member)
    cache: Optional[Dict[str, Any]] = None  # the worker's prefix-cache statistics after this evaluation


class EvalWorker:
    """Ray actor body: loads the supernet once, evaluates configs on request.

    Args:
        weights: numpy uint8 array of the ``.safetensors`` file, or a one-element list holding the
            Ray ObjectRef of that array (fetched from the object store here, zero-copy).
        meta: the checkpoint sidecar dict (its ``weights_sha256`` is verified), or a one-element list holding the
            ObjectRef of it (Ray passes large constructor arguments through the object store, which with
            ``max_restarts`` logs an error line per actor start; a ref inside a list is not resolved by Ray).
        evaluator: dict(name, subset_size, batch_size, split, kwargs, img_size, mosaic) of the spec's
            evaluator.
        threads: torch intra-op threads of this worker.
        worker_id: a label for the trial log.
        img_size: the search resolution (the model is built for it; weights are size-independent).
        device: "cpu" or "cuda": the model, the evaluation canvases and the prefix cache live there.
        prefix_cache_bytes: memory bound of the stage-prefix cache (0 = off).

    Raises:
        supernet.checkpoint.CheckpointError: the bytes do not match the sidecar's sha256.
    """

    def __init__(self, weights: Union[np.ndarray, List[Any], None], meta: Union[Dict[str, Any], List[Any], None],
                 evaluator: Dict[str, Any], threads: int = 1, worker_id: str = "w0", img_size: Any = None,
                 device: str = "cpu", prefix_cache_bytes: int = 0):
        import torch

        torch.set_num_threads(threads)
        if device != "cpu" and not torch.cuda.is_available():
            device = "cpu"  # a GPU was reserved but this process cannot see one: evaluate on the CPU
        self.settings = {"evaluator": dict(evaluator), "img_size": img_size, "prefix_cache_bytes": prefix_cache_bytes}
        self.device = device
        self.model = None
        self.evaluator = None
        self.ranged = False
        self.worker_id = worker_id
        self.node = socket.gethostname()
        self.reconstructed = False
        try:
            import ray
            if ray.is_initialized():  # outside Ray, asking for the runtime context would start a Ray instance
                ctx = ray.get_runtime_context()
                self.node = f"{socket.gethostname()}:{ctx.get_node_id()[:8]}"
                self.reconstructed = bool(ctx.was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - running outside Ray (tests)
            self.reconstructed = False
        self._dimap_backup = None
        self._mask_cache: Dict[Tuple, Any] = {}
        if weights is not None:
            self.load(weights, meta)

    def load(self, weights: Union[np.ndarray, List[Any]], meta: Union[Dict[str, Any], List[Any]]) -> Tuple[str, str, int]:
        """Load the supernet and build the evaluator (the pool calls this right after creating or restarting
        the actor: Ray then never holds object-store constructor arguments, which with ``max_restarts`` it
        warns about on every start).

        Args:
            weights: the ``.safetensors`` bytes, or a one-element list holding their ObjectRef.
            meta: the sidecar dict, or a one-element list holding its ObjectRef.

        Returns:
            :meth:`ping`'s ``(worker_id, node, pid)``.

        Raises:
            supernet.checkpoint.CheckpointError: the bytes do not match the sidecar's sha256.
        """
        from supernet.checkpoint import load_checkpoint_bytes
        from .evaluators import build_evaluator

        if isinstance(meta, list):
            import ray
            meta = ray.get(meta[0])
        if isinstance(weights, list):
            import ray
            weights = ray.get(weights[0])
        st = self.settings
        self.model = load_checkpoint_bytes(memoryview(weights), meta, img_size=st["img_size"]).to(self.device).eval()
        ev = dict(st["evaluator"])
        if ev.get("name") == "fashion_mosaic":
            ev.update(prefix_cache_bytes=st["prefix_cache_bytes"], device=self.device)
        else:
            ev.pop("mosaic", None)
            ev.pop("img_size", None)
        self.evaluator = build_evaluator(meta=meta, **ev)
        self.ranged = callable(getattr(self.evaluator, "confusion", None)) and callable(
            getattr(self.evaluator, "metrics", None))
        self._dimap_backup = None
        self._mask_cache = {}
        return self.ping()

    def ping(self) -> Tuple[str, str, int]:
        return self.worker_id, self.node, os.getpid()

    def cache_stats(self) -> Optional[Dict[str, Any]]:
        """The prefix cache's statistics (None without one; a user evaluator's own ``cache`` is not ours)."""
        from supernet.prefix_cache import StagePrefixCache

        cache = getattr(self.evaluator, "cache", None)
        return cache.stats() if isinstance(cache, StagePrefixCache) else None

    def _score(self, weight_ratios: Optional[Dict[str, float]], fidelity: Optional[Dict[str, Any]]):
        """(metrics, canvases, partial) at the model's current config."""
        if not self.ranged:
            return dict(self.evaluator(self.model)), None, False
        from .fidelity import could_enter_front, subset_key

        ev = self.evaluator
        extra = tuple(sorted(weight_ratios.items())) if weight_ratios else None
        n = ev.n_canvases
        if not fidelity or fidelity["first"] >= n:
            return ev.metrics(ev.confusion(self.model, extra_key=extra)), n, False
        m = int(fidelity["first"])
        cm1 = ev.confusion(self.model, 0, m, extra_key=extra)
        first = ev.metrics(cm1)
        key = subset_key(fidelity["metric"], m)
        v = float(first.get(fidelity["metric"], float("nan")))
        if fidelity.get("margin") is not None and not could_enter_front(
                v, fidelity["predicted_ms"], fidelity.get("front") or [], fidelity["margin"], fidelity.get("maximize", True)):
            return {**first, key: v}, m, True
        full = ev.metrics(cm1 + ev.confusion(self.model, m, n, extra_key=extra))
        return {**full, key: v}, n, False

    def _apply_weights(self, weight_ratios: Optional[Dict[str, float]]) -> Optional[int]:
        if not weight_ratios:  # no joint weight search (all-zero ratios still report the dense params)
            return None
        from supernet import dimap

        if self._dimap_backup is None:
            self._dimap_backup = dimap.dense_backup(self.model)
        key = tuple(sorted(weight_ratios.items()))
        masks = self._mask_cache.get(key)
        if masks is None:
            masks = dimap.dimap_masks(self.model, module_ratios=dict(weight_ratios))
            if len(self._mask_cache) > 32:
                self._mask_cache.clear()
            self._mask_cache[key] = masks
        dimap.apply_masks(self.model, masks).remove()
        return int(dimap.param_report(self.model, masks)["remaining_params"])

    def _restore_weights(self) -> None:
        if self._dimap_backup is not None:
            from supernet import dimap
            dimap.restore(self.model, self._dimap_backup)

    def evaluate(self, number: int, ratios: List[List[float]], weight_ratios: Optional[Dict[str, float]] = None,
                 attempt: int = 0, fidelity: Optional[Dict[str, Any]] = None) -> Result:
        """Evaluate one config (fully, or by the multi-fidelity rule of ``fidelity``); exceptions become a
        failed Result (one-line error). Metric values are returned as the evaluator gave them (the driver
        checks them)."""
        t0 = time.time()
        params = canvases = None
        partial = False
        try:
            if self.model is None:
                raise RuntimeError("the worker has not loaded the supernet (its load failed or did not run)")
            self.model.set_sparsity(ratios)
            params = self._apply_weights(weight_ratios)
            try:
                metrics, canvases, partial = self._score(weight_ratios, fidelity)
            finally:
                self._restore_weights()
            err = None
        except Exception as e:  # noqa: BLE001 - reported in the trial log
            metrics, err = None, f"{type(e).__name__}: {e}".splitlines()[0][:500]
            traceback.print_exc()
        t1 = time.time()
        return Result(number, metrics, t1 - t0, t0, t1, self.worker_id, self.node, attempt, err, params,
                      canvases=canvases, partial=partial, cache=self.cache_stats())


class WorkerPool:
    """A pool of ``EvalWorker`` Ray actors with bounded retries on actor / node death.

    Args:
        weights_path: the checkpoint ``.safetensors`` file (read once, shared via the object store).
        meta: its sidecar dict.
        evaluator: the spec's evaluator settings (dict).
        num_workers: actors.
        cpus_per_worker: Ray CPUs reserved per actor.
        threads: torch threads per actor.
        max_retries: re-submissions of a trial whose actor died before it fails.
        max_restarts: Ray restarts of a dead actor (on another node when its node died).
    """

    def __init__(self, weights_path: str, meta: Dict[str, Any], evaluator: Dict[str, Any], num_workers: int = 2,
                 cpus_per_worker: int = 1, threads: int = 1, max_retries: int = 2, max_restarts: int = 4,
                 img_size: Any = None, gpus_per_worker: float = 0.0, prefix_cache_bytes: int = 0):
        import ray

        self.ray = ray
        data = np.fromfile(weights_path, dtype=np.uint8)
        self.weights_ref = ray.put(data)
        del data
        self.meta = meta
        self.meta_ref = ray.put(dict(meta))  # the sidecar can be large (training history): by reference too
        self.evaluator = evaluator
        self.threads = threads
        self.max_retries = max_retries
        self.img_size = img_size
        self.device = "cuda" if gpus_per_worker > 0 else "cpu"
        self.prefix_cache_bytes = int(prefix_cache_bytes)
        self._cls = ray.remote(EvalWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                                                   max_restarts=max_restarts, max_task_retries=0)
        self._held: Dict[int, "OrderedDict"] = {}  # slot -> prefix keys it ran (driver-side mirror, for affinity)
        self._loads: Dict[int, Any] = {}  # slot -> the ObjectRef of its last load() call
        self.max_replacements = max_restarts
        self.replaced = 0  # actors the pool created anew after Ray gave up restarting them
        self.worker_deaths = 0  # evaluations lost to a dead actor / node (each one re-submitted or failed)
        self.actors = [self._new_actor(i) for i in range(num_workers)]
        self._idle: Deque[int] = deque(range(num_workers))
        self._inflight: Dict[Any, Tuple[int, Task]] = {}
        self._queue: Deque[Task] = deque()
        self._probes: Dict[Any, int] = {}  # ping of an actor that died -> its slot (idle again once it answers)
        self._dead: set = set()  # slots with no actor left

    def _new_actor(self, i: int):
        # no object-store constructor arguments (with max_restarts > 0 Ray logs an error line on every start
        # for those): the weights and the sidecar go to a load() call, repeated after every restart; the pool
        # keeps the refs alive, and an actor runs its calls in submission order, so evaluations wait for it
        self._held[i] = OrderedDict()
        actor = self._cls.remote(None, None, self.evaluator, self.threads, f"w{i}", self.img_size, self.device,
                                 self.prefix_cache_bytes)
        self._loads[i] = actor.load.remote([self.weights_ref], [self.meta_ref])
        return actor

    def wait_ready(self, timeout: float = 600) -> List[Tuple[str, str, int]]:
        """Block until every actor has loaded the supernet; returns (worker_id, node, pid).

        Raises:
            WorkerStartError: an actor's ``__init__`` raised (bad evaluator, unreadable checkpoint bytes);
                the one-line message carries the worker's error; or the actors were not placed within ``timeout``
                seconds (the cluster lacks the resources they ask for).
        """
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return self.ray.get([self._loads[i] for i in range(len(self.actors))], timeout=timeout)
        except GetTimeoutError:
            have = {k: v for k, v in self.ray.cluster_resources().items() if k in ("CPU", "GPU")}
            raise WorkerStartError(f"the Ray workers did not start within {timeout:g} s: the cluster ({have}) may "
                                   "lack the CPUs / GPUs each worker asks for; fix: lower [workers] num_workers, "
                                   "cpus_per_worker or gpus_per_worker, or add nodes") from None
        except (RayActorError, RayTaskError) as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            cause = next((ln for ln in reversed(lines) if "Error" in ln.split(":")[0]), lines[-1] if lines else "")
            raise WorkerStartError(f"the Ray workers could not start: {cause[:500]}; fix: check the spec's "
                                   "[evaluator] and [supernet] settings (the evaluator must be importable "
                                   "on every worker)") from None

    @property
    def size(self) -> int:
        return len(self.actors)

    def submit(self, task: Task) -> None:
        """Queue a task; it is dispatched to the next idle actor."""
        self._queue.append(task)
        self._dispatch()

    def _shared_prefix(self, i: int, task: Task) -> int:
        held = self._held.get(i)
        if not held or not task.affinity:
            return 0
        n = 0
        for key in task.affinity:
            if key not in held:
                break
            n += 1
        return n

    def _dispatch(self) -> None:
        """Give queued tasks to idle actors; each task goes to the idle actor that ran its longest stage
        prefix (the actor whose prefix cache can skip the most stages), ties to the longest-idle one."""
        while self._queue and self._idle:
            t = self._queue.popleft()
            best = max(self._idle, key=lambda i: self._shared_prefix(i, t)) if t.affinity else self._idle[0]
            self._idle.remove(best)
            i = best
            ref = self.actors[i].evaluate.remote(t.number, t.ratios, t.weight_ratios, t.attempt, t.fidelity)
            self._inflight[ref] = (i, t)
            if t.affinity:
                held = self._held.setdefault(i, OrderedDict())
                for key in t.affinity:
                    held[key] = True
                    held.move_to_end(key)
                while len(held) > 4096:
                    held.popitem(last=False)

    @property
    def busy(self) -> int:
        return len(self._inflight) + len(self._queue)

    def _probe(self, i: int) -> None:
        """Watch slot ``i`` (its actor died): it takes tasks again once a ping answers."""
        self._probes[self.actors[i].ping.remote()] = i

    def _probe_done(self, ref) -> None:
        from ray.exceptions import RayError

        i = self._probes.pop(ref)
        try:
            self.ray.get(ref)
        except RayError:  # Ray gave up on it (restarts exhausted): a new actor takes the slot
            if self.replaced < self.max_replacements:
                self.replaced += 1
                self.actors[i] = self._new_actor(i)
                self._probe(i)
            else:
                self._dead.add(i)
            return
        # Ray restarted the actor: a fresh __init__, so the supernet is loaded again before its next task
        self._loads[i] = self.actors[i].load.remote([self.weights_ref], [self.meta_ref])
        self._idle.append(i)

    def results(self, timeout: Optional[float] = None) -> Iterator[Result]:
        """Yield results as they complete (each finished task once: success, error or final failure).

        A task whose actor or node died is re-submitted (``attempt`` + 1) to the next live actor, at
        most ``max_retries`` times, then yielded as failed. With every actor gone for good, the queued
        tasks are yielded as failed.
        """
        from ray.exceptions import (LocalRayletDiedError, NodeDiedError, ObjectLostError, OutOfMemoryError,
                                    RayActorError, RayError, WorkerCrashedError)

        died = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError, OutOfMemoryError,
                LocalRayletDiedError)
        while self._inflight or self._queue:
            self._dispatch()
            if not self._inflight and not self._probes and not self._idle:  # no actor left at all
                while self._queue:
                    t = self._queue.popleft()
                    now = time.time()
                    res = Result(t.number, None, 0.0, now, now, "-", "?", t.attempt,
                                 "no live worker left (every actor died and could not be replaced)")
                    res.task = t
                    yield res
                return
            ready, _ = self.ray.wait(list(self._inflight) + list(self._probes), num_returns=1, timeout=timeout)
            if not ready:
                return
            ref = ready[0]
            if ref in self._probes:
                self._probe_done(ref)
                continue
            i, task = self._inflight.pop(ref)
            try:
                res: Result = self.ray.get(ref)
            except died as e:  # actor / node died mid-evaluation
                self.worker_deaths += 1
                self._probe(i)  # Ray restarts the actor (max_restarts); no task for it until it answers
                if task.attempt < self.max_retries:
                    task.attempt += 1
                    self._queue.appendleft(task)  # the next live actor takes it
                    continue
                now = time.time()
                res = Result(task.number, None, 0.0, now, now, f"w{i}", "?", task.attempt,
                             f"worker died {task.attempt + 1} times: {type(e).__name__}")
                res.task = task
                yield res
                continue
            except RayError as e:  # the call itself failed (e.g. arguments could not be deserialised)
                now = time.time()
                res = Result(task.number, None, 0.0, now, now, f"w{i}", "?", task.attempt,
                             " ".join(str(e).split())[:500])
            self._idle.append(i)
            res.task = task
            yield res

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
