"""Ray worker pool: each actor holds the supernet once and switches sparsity in place per trial.

The driver reads the checkpoint file once and ``ray.put``s its bytes as a numpy uint8 array, which
every worker maps zero-copy from the object store, checks against the sidecar's sha256 and loads
with safetensors (no unpickling). A trial is then only ``set_sparsity`` (+ DIMAP masks for a joint
search, restored bit-exactly afterwards) and one evaluator call.

Fault tolerance uses Ray's own machinery: actors are created with ``max_restarts`` so Ray replaces
an actor whose process or node died (it re-runs ``__init__`` on a live node); the pool re-submits a
trial whose actor died to another actor up to ``max_retries`` times, then reports it failed.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["EvalWorker", "WorkerPool", "Task", "Result", "ray_init_local"]


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
        weights: numpy uint8 array of the ``.safetensors`` file (from the object store, zero-copy).
        meta: the checkpoint sidecar dict (its ``weights_sha256`` is verified).
        evaluator: dict(name, subset_size, batch_size, split, kwargs) of the spec's evaluator.
        threads: torch intra-op threads of this worker.
        worker_id: a label for the trial log.

    Raises:
        supernet.checkpoint.CheckpointError: the bytes do not match the sidecar's sha256.
    """

    def __init__(self, weights: np.ndarray, meta: Dict[str, Any], evaluator: Dict[str, Any], threads: int = 1,
                 worker_id: str = "w0"):
        import torch

        from supernet.checkpoint import load_checkpoint_bytes
        from .evaluators import build_evaluator

        torch.set_num_threads(threads)
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
        self.actors = [self._new_actor(i) for i in range(num_workers)]
        self._idle: Deque[int] = deque(range(num_workers))
        self._inflight: Dict[Any, Tuple[int, Task]] = {}
        self._queue: Deque[Task] = deque()

    def _new_actor(self, i: int):
        return self._cls.remote(self.weights_ref, self.meta, self.evaluator, self.threads, f"w{i}")

    def wait_ready(self, timeout: float = 600) -> List[Tuple[str, str, int]]:
        """Block until every actor has loaded the supernet; returns (worker_id, node, pid)."""
        return self.ray.get([a.ping.remote() for a in self.actors], timeout=timeout)

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

    def results(self, timeout: Optional[float] = None) -> Iterator[Result]:
        """Yield results as they complete (each finished task once: success, error or final failure)."""
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        while self._inflight or self._queue:
            self._dispatch()
            ready, _ = self.ray.wait(list(self._inflight), num_returns=1, timeout=timeout)
            if not ready:
                return
            ref = ready[0]
            i, task = self._inflight.pop(ref)
            try:
                res: Result = self.ray.get(ref)
            except (RayActorError, WorkerCrashedError) as e:  # actor / node died mid-evaluation
                self._idle.append(i)  # Ray restarts the actor (max_restarts); its handle stays valid
                if task.attempt < self.max_retries:
                    task.attempt += 1
                    self._queue.appendleft(task)
                    continue
                now = time.time()
                res = Result(task.number, None, 0.0, now, now, f"w{i}", "?", task.attempt,
                             f"worker died {task.attempt + 1} times: {type(e).__name__}")
            except RayTaskError as e:
                now = time.time()
                res = Result(task.number, None, 0.0, now, now, f"w{i}", "?", task.attempt,
                             str(e).splitlines()[0][:500])
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
