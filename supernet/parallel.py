"""Data-parallel training on the CPU: ``[train] processes = P`` ranks, each on its share of every batch.

On a small CPU the intra-op threads of one process scale poorly on this model's many small operators (2 threads
give 1.6x one thread), while P processes of one thread each run side by side (measured in RESULTS.md R1,
``bench/train_parallel.py``). Each rank holds the whole model and optimizer, computes the loss and gradients of
``batch_size / P`` canvases of the step's batch (the same canvases a single process would use, split in order),
and the gradients are averaged across ranks (one all-reduce over a flat buffer, ``torch.distributed`` with the
gloo backend on 127.0.0.1) before clipping and the AdamW step, so every rank applies the same update and the
ranks' weights stay equal bit for bit. The update is the gradient of the mean of the ranks' losses: the same as
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
import signal
import tempfile
import time
import traceback
from pathlib import Path
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


def _die_with_parent() -> None:
    """Linux: this rank gets SIGTERM when the launching process dies (even by ``kill -9``), so no rank is left
    behind holding the CPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - other platforms: ranks end when their collective calls fail
        pass


def _rank_main(rank: int, world: int, init_file: str, cfg: Any, kwargs: Dict[str, Any], queue: Any) -> None:
    _die_with_parent()
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(hours=6))
        from .train import train

        out = train(cfg, _rank=Rank(rank, world), **kwargs)
        queue.put(("ok", rank, out))
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which re-raises it
        queue.put(("error", rank, (type(e).__name__, str(e), traceback.format_exc())))
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
        RuntimeError: a rank failed otherwise, or died without a word (its exit code is given).
    """
    import torch.multiprocessing as mp

    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError
    from .train import TrainSpecError

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="sparsesearch-dp-") as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank_main, args=(r, world, init_file, cfg, kwargs, queue), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        results: Dict[int, Any] = {}
        error: Optional[Tuple[int, Tuple[str, str, str]]] = None
        try:
            while len(results) < world and error is None:
                while not queue.empty():
                    kind, rank, payload = queue.get()
                    if kind == "ok":
                        results[rank] = payload
                    elif error is None:
                        error = (rank, payload)
                if error is None and len(results) < world:
                    dead = [(i, p.exitcode) for i, p in enumerate(procs)
                            if p.exitcode is not None and i not in results]
                    if dead and queue.empty():
                        error = (dead[0][0], ("RuntimeError", f"training rank {dead[0][0]} exited with code "
                                              f"{dead[0][1]} without a result", ""))
                    else:
                        time.sleep(0.05)
        finally:
            for p in procs:
                if p.is_alive() and (error is not None or len(results) < world):
                    p.terminate()
            for p in procs:
                p.join(timeout=30)
    if error is not None:
        rank, (name, msg, tb) = error
        known = {"TrainSpecError": TrainSpecError, "CheckpointError": CheckpointError,
                 "DatasetNotFoundError": DatasetNotFoundError}
        if name in known:
            raise known[name](msg)
        raise RuntimeError(f"training rank {rank} failed: {name}: {msg}\n{tb}")
    return results[0]
