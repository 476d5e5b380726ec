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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .errors import UserError

__all__ = ["EvalWorker", "WorkerPool", "Task", "Result", "ray_init_local", "WorkerStartError"]


class WorkerStartError(UserError):
    """The Ray workers could not load the supernet or build the evaluator."""


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
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=False,
                 configure_logging=False)
    return ray


@dataclass
class Task:
    """One evaluation: trial number, nested ratios, optional DIMAP module ratios."""
    number: int
    ratios: List[List[float]]
    weight_ratios: Optional[Dict[str, float]] = None
    attempt: int = 0
    payload: Any = None  # driver-side bookkeeping, never shipped


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


class EvalWorker:
    """Ray actor body: loads the supernet once, evaluates configs on request.

    Args:
        weights: numpy uint8 array of the ``.safetensors`` file, or a one-element list holding the
            Ray ObjectRef of that array (fetched from the object store here, zero-copy).
        meta: the checkpoint sidecar dict (its ``weights_sha256`` is verified).
        evaluator: dict(name, subset_size, batch_size, split, kwargs) of the spec's evaluator.
        threads: torch intra-op threads of this worker.
        worker_id: a label for the trial log.

    Raises:
        supernet.checkpoint.CheckpointError: the bytes do not match the sidecar's sha256.
    """

    def __init__(self, weights: Union[np.ndarray, List[Any]], meta: Dict[str, Any], evaluator: Dict[str, Any], threads: int = 1,
                 worker_id: str = "w0"):
        import torch

        from supernet.checkpoint import load_checkpoint_bytes
        from .evaluators import build_evaluator

        torch.set_num_threads(threads)
        if isinstance(weights, list):
            import ray
            weights = ray.get(weights[0])
        self.worker_id = worker_id
        self.node = socket.gethostname()
        try:
            import ray
            ctx = ray.get_runtime_context()
            self.node = f"{socket.gethostname()}:{ctx.get_node_id()[:8]}"
            self.reconstructed = bool(ctx.was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - running outside Ray (tests)
            self.reconstructed = False
        self.model = load_checkpoint_bytes(memoryview(weights), meta).eval()
        self.evaluator = build_evaluator(meta=meta, **evaluator)
        self._dimap_backup = None
        self._mask_cache: Dict[Tuple, Any] = {}

    def ping(self) -> Tuple[str, str, int]:
        return self.worker_id, self.node, os.getpid()

    def _apply_weights(self, weight_ratios: Optional[Dict[str, float]]) -> Optional[int]:
        if not weight_ratios or not any(weight_ratios.values()):
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
                 attempt: int = 0) -> Result:
        """Evaluate one config; exceptions become a failed Result (one-line error)."""
        t0 = time.time()
        params = None
        try:
            self.model.set_sparsity(ratios)
            params = self._apply_weights(weight_ratios)
            try:
                metrics = {k: float(v) for k, v in dict(self.evaluator(self.model)).items()}
            finally:
                self._restore_weights()
            err = None
        except Exception as e:  # noqa: BLE001 - reported in the trial log
            metrics, err = None, f"{type(e).__name__}: {e}".splitlines()[0][:500]
            traceback.print_exc()
        t1 = time.time()
        return Result(number, metrics, t1 - t0, t0, t1, self.worker_id, self.node, attempt, err, params)


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
                 cpus_per_worker: int = 1, threads: int = 1, max_retries: int = 2, max_restarts: int = 4):
        import ray

        self.ray = ray
        data = np.fromfile(weights_path, dtype=np.uint8)
        self.weights_ref = ray.put(data)
        del data
        self.meta = meta
        self.evaluator = evaluator
        self.threads = threads
        self.max_retries = max_retries
        self._cls = ray.remote(EvalWorker).options(num_cpus=cpus_per_worker, max_restarts=max_restarts,
                                                   max_task_retries=0)
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
        # the ref travels inside a list, so Ray does not resolve it as a constructor argument (which,
        # with max_restarts > 0, logs an error line on every start); the pool keeps the ref alive
        return self._cls.remote([self.weights_ref], self.meta, self.evaluator, self.threads, f"w{i}")

    def wait_ready(self, timeout: float = 600) -> List[Tuple[str, str, int]]:
        """Block until every actor has loaded the supernet; returns (worker_id, node, pid).

        Raises:
            WorkerStartError: an actor's ``__init__`` raised (bad evaluator, unreadable checkpoint bytes);
                the one-line message carries the worker's error.
        """
        from ray.exceptions import RayActorError

        try:
            return self.ray.get([a.ping.remote() for a in self.actors], timeout=timeout)
        except RayActorError as e:
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

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            i = self._idle.popleft()
            t = self._queue.popleft()
            ref = self.actors[i].evaluate.remote(t.number, t.ratios, t.weight_ratios, t.attempt)
            self._inflight[ref] = (i, t)

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
