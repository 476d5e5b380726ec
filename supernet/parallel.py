"""Data-parallel training on the CPU: ``[train] processes = P`` ranks, each on its share of every batch.

The intra-op threads of one process scale below linearly on this model's many small operators (2 threads give
1.5-1.6x one thread); P processes of one thread each are the other way to use P cores. On the project's 2-core CPU
they break even at the recipes' batch (1.02x, ``bench/train_parallel.py``, RESULTS.md R1), so the recipes keep one
process; the option is for machines with more cores. Each rank holds the whole model and optimizer, computes the
loss and gradients of ``batch_size / P`` canvases of the step's batch (the same canvases a single process would
use, split in order), and the gradients are averaged across ranks (one all-reduce over a flat buffer,
``torch.distributed`` with the gloo backend on the loopback interface) before clipping and the AdamW step, so every
rank applies the same update and the ranks' weights stay equal bit for bit. The update is the gradient of the mean of the ranks' losses: the same as
one process's for a per-canvas mean, and close to it for the item-weighted loss (normalised per rank's canvases).

Rank 0 alone validates, writes the checkpoint and the training state, logs and draws the progress bar; the
other ranks wait at a barrier meanwhile. Sparsity configs come from the same seeded generator on every rank, so
every rank runs the same config at every step. ``torch``'s generator (DropPath) is reseeded per (seed, epoch,
rank) at each epoch start, so a resume stays bit-exact with any number of ranks.

Standard data parallelism (PyTorch ``DistributedDataParallel``'s arithmetic, without its autograd hooks:
the reduction runs once per step, after the configs' gradients are accumulated).
"""
from __future__ import annotations

import datetime
import os
import pickle
import signal
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["Rank", "average_gradients", "check_ranks_agree", "rank_batches", "launch"]


class Rank(NamedTuple):
    """This process's index among ``world`` data-parallel processes."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        """Rank 0: validates, writes files and logs."""
        return self.rank == 0


def average_gradients(model: torch.nn.Module, loss: float, world: int) -> float:
    """Average the gradients (and the step's loss) over the ``world`` ranks, in place.

    Only parameters with a gradient take part; every rank runs the same sparsity configs, so the same
    parameters have gradients on every rank and the flat buffers line up.

    Args:
        model: the rank's model after ``backward``.
        loss: this rank's loss of the step.
        world: number of ranks.

    Returns:
        The mean loss over the ranks.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:  # every block skipped (the same on every rank: same configs): nothing to average
        return float(loss)
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([float(loss)], dtype=grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n
    return float(flat[-1])


def check_ranks_agree(model: torch.nn.Module) -> None:
    """Check that every rank holds the same weights (each applies the same averaged update, so they must agree bit
    for bit): a float64 checksum of the parameters, gathered from every rank, once per epoch.

    Raises:
        RuntimeError: the ranks' weights differ.
    """
    with torch.no_grad():
        s = torch.stack([sum(p.double().sum() for p in model.parameters()),
                         sum((p.double() ** 2).sum() for p in model.parameters())])
    got = [torch.zeros_like(s) for _ in range(dist.get_world_size())]
    dist.all_gather(got, s)
    if any(not torch.equal(g, got[0]) for g in got):
        raise RuntimeError(f"data-parallel ranks hold different weights (checksums {[g.tolist() for g in got]})")


def rank_batches(order: List[int], batch_size: int, rank: int, world: int) -> List[int]:
    """This rank's canvases of an epoch: ``order`` cut into batches of ``batch_size`` (a last partial batch
    dropped), and of each batch the ``rank``-th of ``world`` equal, consecutive parts.

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``world``.
    """
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not a multiple of {world} processes")
    part = batch_size // world
    n = len(order) // batch_size
    return [order[b * batch_size + rank * part + j] for b in range(n) for j in range(part)]


#: How long a rank waits in a collective for the others (rank 0 validates and writes while they wait).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


def _die_with_parent(parent: int) -> None:
    """Linux: this rank gets SIGTERM when the launching process dies (even by ``kill -9``), so no rank is left
    behind holding the CPU; a parent already gone before the request ends the rank at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other platforms: ranks end when their collective calls fail
        pass
    if os.getppid() != parent:
        os._exit(1)


def _rank_main(rank: int, world: int, init_file: str, cfg: Any, kwargs: Dict[str, Any], queue: Any,
               parent: int) -> None:
    _die_with_parent(parent)
    if sys.platform.startswith("linux"):  # the ranks' gloo connections stay on this machine's loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=COLLECTIVE_TIMEOUT)
        from .train import train

        out = train(cfg, _rank=Rank(rank, world), **kwargs)
        queue.put(("ok", rank, out))
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which re-raises it
        try:
            exc = pickle.dumps(e)
            pickle.loads(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle travels as its name and text
            exc = None
        queue.put(("error", rank, (type(e).__name__, str(e), traceback.format_exc(), exc)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(cfg: Any, world: int, **kwargs: Any) -> Dict[str, Any]:
    """Run :func:`supernet.train.train` on ``world`` data-parallel ranks (new processes) and return rank 0's result.

    Args:
        cfg: the :class:`supernet.train.TrainConfig`.
        world: number of ranks (``[train] processes``).
        **kwargs: ``resume``, ``progress``, ``stop_after`` of :func:`supernet.train.train`.

    Returns:
        What :func:`supernet.train.train` returned on rank 0.

    Raises:
        TrainSpecError, CheckpointError, DatasetNotFoundError: as :func:`supernet.train.train` raised them on a
            rank (same type and message).
        Exception: any other exception a rank raised, re-raised with its type (e.g. ``OSError`` for a checkpoint
            folder it cannot write), chained to the rank's traceback.
        RuntimeError: a rank was killed by a signal (the OOM killer, ``kill -9``) or died without a word (its exit
            code is given), or its exception did not pickle.
    """
    import torch.multiprocessing as mp

    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError
    from .train import TrainSpecError

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    results: Dict[int, Any] = {}
    errors: Dict[int, Tuple[str, str, str, Optional[bytes]]] = {}
    with tempfile.TemporaryDirectory(prefix="sparsesearch-dp-") as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank_main, args=(r, world, init_file, cfg, kwargs, queue, os.getpid()),
                             daemon=True) for r in range(world)]
        try:
            for p in procs:
                p.start()
            while len(results) < world and not errors:
                while not queue.empty():
                    kind, rank, payload = queue.get()
                    (results if kind == "ok" else errors)[rank] = payload
                if not errors and len(results) < world:
                    if any(p.exitcode is not None and i not in results for i, p in enumerate(procs)):
                        time.sleep(0.5)  # a rank's last message may still be on its way
                        if queue.empty():
                            break
                    else:
                        time.sleep(0.05)
            if len(results) < world:  # a failure: the other ranks may be dying of it too; collect their words
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and any(p.exitcode is None for p in procs):
                    time.sleep(0.05)
                while not queue.empty():
                    kind, rank, payload = queue.get()
                    (results if kind == "ok" else errors)[rank] = payload
        finally:
            for p in procs:
                if p.is_alive() and len(results) < world:
                    p.terminate()
            for p in procs:
                if p.pid is not None:
                    p.join(timeout=30)
                    if p.is_alive():
                        p.kill()
                        p.join()
    if len(results) < world:
        codes = {i: p.exitcode for i, p in enumerate(procs)}
        killed = [i for i, c in codes.items() if c is not None and c < 0 and i not in errors and i not in results]
        if killed:  # a rank killed by a signal (the OOM killer, kill -9) is the cause; the others' errors follow from it
            i = killed[0]
            raise RuntimeError(f"training rank {i} was killed by signal {-codes[i]} (out of memory?); the ranks' exit "
                               f"codes: {codes}; continue the run with --resume")
        if not errors:
            i = next(i for i in range(world) if i not in results)
            raise RuntimeError(f"training rank {i} exited with code {codes[i]} without a result; continue the run "
                               "with --resume")
        # a rank's own error, not the connection errors the others got when it left; a user error is raised on
        # every rank alike (the lowest rank's is reported)
        own = [r for r, e in errors.items() if e[0] not in ("DistBackendError", "DistNetworkError", "DistError")]
        rank = min(own or errors)
        name, msg, tb, exc = errors[rank]
        known = {"TrainSpecError": TrainSpecError, "CheckpointError": CheckpointError,
                 "DatasetNotFoundError": DatasetNotFoundError}
        if name in known:
            raise known[name](msg)
        if exc is not None:
            raise pickle.loads(exc) from RuntimeError(f"training rank {rank} failed:\n{tb}")
        raise RuntimeError(f"training rank {rank} failed: {name}: {msg}\n{tb}")
    return results[0]
