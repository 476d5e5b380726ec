"""Latency profiler: per-block latency tables of a SparseSwin as a function of the kept windows k.

SparseViT runs a pruned block on its k kept windows only (window-level execution), so a block's
latency is a function of k alone (Chen et al., CVPR 2023, Sec. 3.1; the search gates every config
with a latency table, Sec. 3.3). :func:`profile` measures, for a given device / thread count /
batch size / image size:

* every block's latency (ms) at every kept-window count k the ratio set can produce,
  ``{keep_count(nW, r) for r in ratios}``: ``k = nW`` runs the dense timm block ``blk(x)``,
  ``0 < k < nW`` runs :func:`supernet.sparse_swin.sparse_block_forward` on a random subset of k
  windows per image, ``k = 0`` (identity) costs 0. The input is the block's real input features
  from a dense forward of a fixed random batch. The k values of a block are interleaved inside
  every repeat, in a fresh random order;
* the fixed parts: patch embedding, each stage's downsample (PatchMerging; ``Identity`` for
  stage 0), each stage's window scoring (token importance + window ranking for every shift of the
  stage; it runs only when a block of the stage has ratio > 0) and the head (the segmentation
  head for a :class:`supernet.seg.SegSupernet`, timm's ``norm`` + classifier for a bare
  :class:`supernet.sparse_swin.SparseSwin`);
* a calibration: ``calib_configs`` configs (dense + random per-stage-sorted ratios from the set, half
  of them spread from dense to the sparsest: :func:`calibration_configs`) are timed end to end and
  ``measured = a * table_sum + b`` is fitted by least squares, which captures framework overhead outside
  the profiled parts (Python dispatch of ``forward_stage``, allocator effects, cache misses between blocks).

Drift correction: a shared CPU changes speed by tens of % within seconds, so every timed run is
bracketed by dense forwards of the whole model and recorded as a ratio to them; the median ratio
times the median dense forward of the whole session gives the ms in the table and the calibration
(see :func:`measure_configs_drift`; the table stores that dense time as ``reference_ms``). Blocks
profiled seconds apart, and the calibration, therefore share one machine speed.

The result is the predictor file (JSON, see :data:`FORMAT_VERSION` and :func:`save`), read by
:class:`latency.predictor.Predictor`. Times are milliseconds per forward of one batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from supernet.evaluate import resolve_device
from supernet.sparse_swin import (DEFAULT_RATIOS, SparseSwin, keep_count, rank_windows, sparse_block_forward,
                                   token_importance)

from .predictor import FORMAT_VERSION, Predictor, PredictorError, current_fingerprint, save  # noqa: F401 - save re-exported

__all__ = [
    "DEFAULT_RATIOS",
    "profile",
    "save",
    "measure_configs",
    "measure_configs_drift",
    "DriftMeasurement",
    "random_configs",
    "calibration_configs",
    "kept_window_counts",
    "CALIBRATION_STREAM",
    "VALIDATION_STREAM",
]

#: Default ratio set: 0.0, 0.1, ..., 0.8 (SparseViT's search space).

#: Random streams (``numpy.random.default_rng([seed, stream])``): calibration and validation
#: configs never share a stream, so validation configs are held out for the same ``seed``.
CALIBRATION_STREAM = 0xCA1
VALIDATION_STREAM = 0x7A1


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _backbone(model: nn.Module) -> SparseSwin:
    bb = getattr(model, "backbone", model)
    if not isinstance(bb, SparseSwin):
        raise TypeError(
            f"latency profiling needs a SegSupernet or a SparseSwin, got {type(model).__name__}; "
            "fix: wrap the timm Swin with supernet.SparseSwin / supernet.seg.SegSupernet")
    return bb


def _hw(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(img_size, (int, np.integer)):
        return int(img_size), int(img_size)
    h, w = img_size
    return int(h), int(w)


def _resolve_img_size(bb: SparseSwin, img_size) -> Tuple[int, int]:
    if img_size is None:
        if bb.img_size is None:
            raise ValueError("the model has no img_size; fix: pass img_size=(H, W) to profile()")
        return _hw(bb.img_size)
    return _hw(img_size)


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _time_ms(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Wall time of one call of ``fn`` in ms (device synchronised before and after)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


@contextlib.contextmanager
def _session(model: nn.Module, threads: Optional[int]):
    """eval() + fixed thread count + inference_mode; restores mode, threads and sparsity."""
    prev_threads = torch.get_num_threads()
    was_training = model.training
    bb = _backbone(model)
    prev_sparsity = bb.sparsity
    if threads is not None:
        torch.set_num_threads(int(threads))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        bb.set_sparsity(prev_sparsity)
        model.train(was_training)
        torch.set_num_threads(prev_threads)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)


def kept_window_counts(num_windows: int, ratios: Sequence[float]) -> List[int]:
    """Sorted distinct k = ``keep_count(nW, r)`` over ``ratios``, always with k = nW (dense).

    Args:
        num_windows: nW of the block.
        ratios: the ratio set (0 <= r < 1).

    Returns:
        Ascending list of ints in [0, nW] (0 included when some ratio prunes every window).
    """
    ks = {keep_count(num_windows, float(r)) for r in ratios}
    ks.add(num_windows)
    return sorted(ks)


def calibration_configs(depths: Sequence[int], ratios: Sequence[float], n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """The calibration's configs: dense, then half independent draws, half spread from dense to the sparsest.

    Independent draws alone sit in the middle of the latency range (at 672 px the main job's 40 spanned 0.58-0.80
    of dense, its front 0.36-0.60), so the fitted line was extrapolated to the sparse end a budget drives a search
    to, and mispredicted it by up to 13 % relative to dense; the spread half puts calibration points there.

    Args:
        depths, ratios, rng: as :func:`random_configs`.
        n: number of configs (>= 1): ``ceil(n / 2)`` independent (the first all zeros), the rest spread.

    Returns:
        float64 array [n, sum(depths)] (flat form, non-decreasing in a stage).
    """
    n_ind = (int(n) + 1) // 2
    return np.concatenate([random_configs(depths, ratios, n_ind, rng, include_dense=True),
                           random_configs(depths, ratios, int(n) - n_ind, rng, include_dense=False, spread=True)])


def random_configs(depths: Sequence[int], ratios: Sequence[float], n: int,
                   rng: np.random.Generator, include_dense: bool = True, spread: bool = False) -> np.ndarray:
    """Random configs: every block draws a ratio from ``ratios``, then each stage is sorted.

    Independent uniform draws put almost every config near the middle of the latency range (the mean of many
    draws), while a latency budget drives a search to its sparse end. With ``spread=True`` each config first
    draws a level t uniformly in [min, max] of ``ratios`` and every block then draws a ratio with probability
    proportional to exp(-((r - t) / 0.15)^2 / 2): configs from dense to the sparsest, evenly over the range.

    Args:
        depths: blocks per stage.
        ratios: the ratio set.
        n: number of configs.
        rng: numpy Generator.
        include_dense: make the first config all zeros.
        spread: draw configs evenly over the sparsity range (above) instead of independently per block.

    Returns:
        float64 array [n, sum(depths)] (flat form, stage by stage, non-decreasing in a stage).
    """
    r = np.asarray(sorted(float(v) for v in ratios), dtype=np.float64)
    nb = int(sum(depths))
    if spread and len(r) > 1:
        t = rng.uniform(r[0], r[-1], size=(n, 1))
        w = np.exp(-0.5 * ((r[None, :] - t) / 0.15) ** 2)
        cdf = np.cumsum(w / w.sum(1, keepdims=True), axis=1)  # [n, len(r)]
        u = rng.random((n, nb))
        idx = (u[:, :, None] > cdf[:, None, :]).sum(-1).clip(0, len(r) - 1)
        out = r[idx]
    else:
        out = r[rng.integers(0, len(r), size=(n, nb))]
    start = 0
    for d in depths:
        out[:, start:start + d] = np.sort(out[:, start:start + d], axis=1)
        start += d
    if include_dense and n > 0:
        out[0] = 0.0
    return out


def _nested(flat: np.ndarray, depths: Sequence[int]) -> List[List[float]]:
    out, start = [], 0
    for d in depths:
        out.append([float(v) for v in flat[start:start + d]])
        start += d
    return out


def _make_input(batch_size: int, hw: Tuple[int, int], seed: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(batch_size, 3, hw[0], hw[1], generator=g).to(device=device, dtype=dtype)


def _model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


# --------------------------------------------------------------------------------------------
# end-to-end measurement (shared by the calibration and latency.validate)
# --------------------------------------------------------------------------------------------
class DriftMeasurement(NamedTuple):
    """End-to-end latencies measured against an interleaved dense reference.

    Attributes:
        ms: float64 [n] drift-corrected latency of each config, ms (``ratio * reference_ms``).
        ratio: float64 [n] median over repeats of (config time / mean of the dense runs just before
            and after it): latency relative to the dense model at the machine's speed of the moment.
        reference_ms: median of every dense reference run of the session, ms.
        reference_samples: every dense reference run, ms (pooled by :func:`profile`).
    """

    ms: np.ndarray
    ratio: np.ndarray
    reference_ms: float
    reference_samples: List[float]


def measure_configs_drift(model: nn.Module, x: torch.Tensor, configs: np.ndarray, *, warmup: int = 1,
                          repeats: int = 5, progress: bool = False, desc: str = "end-to-end",
                          seed: int = 0) -> DriftMeasurement:
    """End-to-end latency of ``model(x)`` at each config, corrected for the machine's drift.

    A shared CPU changes speed by tens of % over seconds (other tenants, frequency): measured here,
    the dense forward of the default supernet ranged 44-90 ms in one minute, in regimes lasting
    seconds, so two medians of 5 runs of the same config differed by 7 % on average. Every timed
    config run therefore sits between two dense runs (``d, c1, d, c2, d, ...``; each dense run is
    shared by its neighbours), the config's time is divided by the mean of its two neighbours, and
    the median ratio over ``repeats`` (config order shuffled every repeat) is scaled by the median
    of all dense runs: the latency at the session's typical speed. Measured here: half-vs-half
    disagreement of 5-run estimates drops from 7.4 % to 3.2 % MAPE (60 random configs).

    Call inside an inference session (:func:`profile` and :func:`latency.validate.validate` do); the
    model is left at the last config.

    Args:
        model: SegSupernet or SparseSwin (on its device, eval mode).
        x: (B, 3, H, W) input batch on the model's device.
        configs: float64 [n, n_blocks] flat configs.
        warmup: dense warm-up forwards (>= 0); every config also runs once untimed.
        repeats: timed runs per config (>= 1).
        progress: show a tqdm bar.
        seed: seed of the per-repeat config order.

    Returns:
        A :class:`DriftMeasurement` (ms per forward of the batch).
    """
    bb = _backbone(model)
    depths = bb.depths
    configs = np.asarray(configs, dtype=np.float64)
    nested = [_nested(c, depths) for c in configs]
    dense = [[0.0] * d for d in depths]
    run = (lambda: model(x))
    points = [((lambda c=c: bb.set_sparsity(c)), run) for c in nested]
    return measure_drift(points, ((lambda: bb.set_sparsity(dense)), run), sync=_sync_fn(x.device), warmup=warmup,
                         repeats=repeats, progress=progress, desc=desc, seed=seed)


def measure_drift(points: Sequence[Tuple[Callable[[], Any], Callable[[], Any]]],
                  reference: Tuple[Callable[[], Any], Callable[[], Any]], *, sync: Callable[[], None] = lambda: None,
                  warmup: int = 1, repeats: int = 5, progress: bool = False, desc: str = "end-to-end",
                  seed: int = 0) -> DriftMeasurement:
    """Drift-corrected latency of arbitrary forwards: the measurement of :func:`measure_configs_drift`
    for points that need not share a model (a reduced-resolution or a narrower model beside sparse configs).

    Every timed point run sits between two runs of ``reference`` (``r, p1, r, p2, r, ...``, each reference run
    shared by its neighbours, point order shuffled every repeat); a point's latency is the median over repeats
    of its time / the mean of its two neighbours, scaled by the median of all reference runs.

    Args:
        points: ``(setup, run)`` pairs: ``setup()`` untimed (e.g. set a sparsity), ``run()`` timed.
        reference: the ``(setup, run)`` pair every point is bracketed by (e.g. the dense model).
        sync: device synchronisation called before reading the clock (CUDA).
        warmup: reference warm-up runs; every point also runs once untimed.
        repeats: timed runs per point (>= 1).
        progress / desc: tqdm bar.
        seed: seed of the per-repeat order.

    Returns:
        A :class:`DriftMeasurement` (ms per call of ``run``).
    """
    n = len(points)
    rng = np.random.default_rng([int(seed), 0xD71F7])

    def timed(pair) -> float:
        pair[0]()
        return _time_ms(pair[1], sync)

    reference[0]()
    for _ in range(max(0, int(warmup))):
        reference[1]()
    bar = _progress(n * (1 + repeats), desc, progress)
    for pt in points:
        pt[0]()
        pt[1]()
        if bar is not None:
            bar.update(1)
    ratios: List[List[float]] = [[] for _ in range(n)]
    refs: List[float] = []
    for _ in range(max(1, int(repeats))):
        prev = timed(reference)
        refs.append(prev)
        for i in rng.permutation(n):
            t = timed(points[i])
            nxt = timed(reference)
            refs.append(nxt)
            ratios[i].append(t / (0.5 * (prev + nxt)))
            prev = nxt
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    ratio = np.asarray([statistics.median(r) for r in ratios], dtype=np.float64)
    ref = float(statistics.median(refs))
    return DriftMeasurement(ratio * ref, ratio, ref, refs)


def measure_configs(model: nn.Module, x: torch.Tensor, configs: np.ndarray, *, warmup: int = 1,
                    repeats: int = 5, progress: bool = False, desc: str = "end-to-end") -> np.ndarray:
    """Drift-corrected end-to-end latency (ms) of ``model(x)`` at each config.

    Same as ``measure_configs_drift(...).ms`` (see :func:`measure_configs_drift`).

    Returns:
        float64 array [n] of ms per forward of the batch.
    """
    return measure_configs_drift(model, x, configs, warmup=warmup, repeats=repeats, progress=progress, desc=desc).ms


# --------------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------------
def _interleaved_ratios(fns: Sequence[Callable[[], Any]], warmup: int, repeats: int,
                        sync: Callable[[], None], rng: np.random.Generator,
                        reference: Callable[[], Any]) -> Tuple[List[float], List[float]]:
    """Median time of each fn relative to ``reference``, and the reference's samples.

    Every repeat runs the reference, one untimed fn (to warm the caches the reference evicted),
    then all fns once in a fresh random order, then the reference again; each fn time is divided
    by the mean of the two reference runs of its repeat, so a change
    of machine speed between repeats (or between the blocks of a profile) cancels out. The caller
    scales the median ratios by the median reference time of the whole session.

    Returns:
        (median ratio per fn, reference samples in ms).
    """
    for _ in range(max(0, warmup)):
        reference()
        for f in fns:
            f()
    ratios: List[List[float]] = [[] for _ in fns]
    refs: List[float] = []
    for _ in range(max(1, repeats)):
        before = _time_ms(reference, sync)
        order = rng.permutation(len(fns))
        fns[order[-1]]()  # untimed: the reference evicted the caches; time every fn warm, as in a tight loop
        times = [0.0] * len(fns)
        for i in order:
            times[i] = _time_ms(fns[i], sync)
        after = _time_ms(reference, sync)
        refs += [before, after]
        for i, t in enumerate(times):
            ratios[i].append(t / (0.5 * (before + after)))
    return [float(statistics.median(r)) for r in ratios], refs


def _dense_trace(model: nn.Module, bb: SparseSwin, x: torch.Tensor):
    """Dense forward keeping every block's input, stage inputs and stage outputs."""
    emb = bb.patch_embed(x)
    stage_in, block_in, stage_out = [], [], []
    h = emb
    for stage in bb.layers:
        stage_in.append(h)
        h = stage.downsample(h)
        ins = []
        for blk in stage.blocks:
            ins.append(h)
            h = blk(h)
        block_in.append(ins)
        stage_out.append(h)
    return emb, stage_in, block_in, stage_out


def _scoring_fn(stage: nn.Module, x: torch.Tensor, kind: str = "magnitude") -> Callable[[], Any]:
    """Window scoring of a stage as ``forward_stage`` runs it: importance + one ranking per shift.

    Counted whole (importance plus a ranking for every distinct shift of the stage) whenever a
    block of the stage is pruned: a small over-estimate when only the later (shifted) blocks are
    pruned, which the calibration absorbs.
    """
    reps = {}
    for blk in stage.blocks:
        reps.setdefault(tuple(blk.shift_size), blk)
    blks = list(reps.values())

    def run():
        imp = token_importance(x.detach(), kind)
        for b in blks:
            rank_windows(imp, b)
    return run


def check_device(device: Union[str, torch.device], predictor: Optional[str] = None) -> torch.device:
    """The torch device ``device`` names, refused before any work where this machine lacks it.

    Args:
        device: a torch device or its string (``cpu``, ``cuda``, ``cuda:1``).
        predictor: the predictor file the device comes from (its fingerprint), or None when the caller chose it.

    Raises:
        PredictorError: ``device`` is not a torch device, or names CUDA / MPS where none is available.
    """
    what = f"predictor {predictor} was profiled on {device}" if predictor else f"--device {device}"
    fix = ("run on a machine with that device, or profile a predictor here (`sparsesearch latency profile "
           "--device cpu`)" if predictor else "pass --device cpu, or run on a machine with that device")
    try:
        return resolve_device(device)
    except ValueError as e:
        raise PredictorError(f"{what}: {e}; fix: {fix}") from None


def profile(model: nn.Module, img_size: Union[int, Tuple[int, int], None] = None, *, batch_size: int = 1,
            device: Union[str, torch.device] = "cpu", threads: Optional[int] = 1,
            ratios: Sequence[float] = DEFAULT_RATIOS, warmup: int = 3, repeats: int = 11,
            calib_configs: int = 40, seed: int = 0, progress: bool = True,
            checkpoint_sha256: Optional[str] = None, model_arch: Optional[Dict[str, Any]] = None,
            calib_repeats: Optional[int] = None) -> Dict[str, Any]:
    """Profile a supernet's latency table (the predictor file contents).

    The model is moved to ``device`` in place (dtype kept), put in eval mode for the run and
    restored to its previous mode, sparsity and the process's thread count afterwards.

    Args:
        model: :class:`supernet.seg.SegSupernet` (head = segmentation head incl. the upsampling
            to the input size) or a bare :class:`supernet.sparse_swin.SparseSwin` (head = timm's
            ``norm`` + classifier head).
        img_size: input size in pixels, int or (H, W); default: the backbone's own.
        batch_size: images per forward (>= 1).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        threads: ``torch.set_num_threads`` during profiling (``None``: leave as is).
        ratios: the ratio set (0 <= r < 1) the search uses; the k values of every block are
            ``{int(nW * (1 - r))}`` plus nW.
        warmup: untimed calls of every measured function before timing.
        repeats: timed calls per value (median of the drift-corrected ratios kept).
        calib_configs: end-to-end configs for the calibration (dense + random), >= 2.
        seed: seed of the input batch, the kept-window subsets and the calibration configs.
        progress: tqdm bars (stderr) over blocks x k and over the calibration.
        checkpoint_sha256: weights hash stored in the file (``None``: unknown).
        model_arch: model kwargs stored in the file (from the checkpoint sidecar), or ``None``.
        calib_repeats: timed forwards per calibration config (default ``repeats``).

    Returns:
        The predictor dict (JSON-ready): ``format_version``, ``units`` ("ms"), ``fingerprint``,
        ``img_size`` [H, W], ``batch_size``, ``depths``, ``num_windows`` [[nW per block]],
        ``ratios``, ``blocks`` [[{"k": [...], "ms": [...]}]], ``fixed_ms`` {patch_embed,
        downsample[], scoring[], head}, ``calibration`` {a, b, method ("lstsq" | "offset"), n,
        mape (%), mape_uncalibrated (%), residuals_ms, measured_ms, table_ms, configs, repeats, seed}, ``model_arch``, ``checkpoint_sha256``,
        ``profile_seconds``.

    Raises:
        ValueError: bad arguments (a ratio outside [0, 1), batch_size < 1, calib_configs < 2,
            repeats < 1), or the model cannot run at ``img_size`` (e.g. a timm model built with
            a strict, different image size).
        TypeError: ``model`` is neither a SegSupernet nor a SparseSwin.
    """
    t_start = time.perf_counter()
    bb = _backbone(model)
    ratios = [float(r) for r in ratios]
    if not ratios or any(not math.isfinite(r) or r < 0.0 or r >= 1.0 for r in ratios):
        raise ValueError(f"profile(): ratios must be numbers in [0, 1), got {ratios}; fix: pass e.g. ratios=(0.0, 0.1, ..., 0.8)")
    if 0.0 not in ratios:
        ratios = [0.0] + ratios
    ratios = sorted(set(ratios))
    if int(batch_size) < 1 or int(repeats) < 1 or int(warmup) < 0:
        raise ValueError(f"profile(): need batch_size >= 1, repeats >= 1, warmup >= 0 "
                         f"(got {batch_size}, {repeats}, {warmup}); fix: pass positive values")
    if int(calib_configs) < 2:
        raise ValueError(f"profile(): calib_configs must be >= 2 to fit a * x + b, got {calib_configs}; fix: pass calib_configs >= 2 (default 40)")
    hw = _resolve_img_size(bb, img_size)
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    model.to(dev)
    _, dtype = _model_device_dtype(model)
    c_rep = int(calib_repeats) if calib_repeats is not None else int(repeats)

    depths = list(bb.depths)
    nws = bb.num_windows(hw)
    rng = np.random.default_rng([int(seed), 0x5EED])
    sync = _sync_fn(dev)
    x = _make_input(int(batch_size), hw, seed, dev, dtype)
    B = int(batch_size)

    with _session(model, threads):
        try:
            emb, stage_in, block_in, stage_out = _dense_trace(model, bb, x)
        except Exception as e:  # shapes that the timm model refuses (strict img_size ...)
            raise ValueError(
                f"profile(): the model does not run at img_size {hw[0]}x{hw[1]} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); fix: profile at the model's own size "
                f"{bb.img_size} or rebuild the model for this size") from e

        # Every measurement below is relative to the dense model's forward run just before and after
        # it (drift correction, see measure_configs_drift); one scale, the median of all those
        # dense runs, turns the ratios into ms, so blocks profiled seconds apart share one speed.
        bb.set_sparsity(0.0)
        reference = lambda: model(x)  # noqa: E731
        ref_samples: List[float] = []

        # ---- blocks x k ------------------------------------------------------------------
        ks_all = [[kept_window_counts(nw, ratios) for nw in row] for row in nws]
        total = sum(len([k for k in ks if k > 0]) for row in ks_all for ks in row)
        bar = _progress(total, "latency blocks x k", progress)
        blocks_out: List[List[Dict[str, List]]] = []
        for s, stage in enumerate(bb.layers):
            row_out = []
            for j, blk in enumerate(stage.blocks):
                nw = nws[s][j]
                xin = block_in[s][j]
                ks = [k for k in ks_all[s][j] if k > 0]
                fns = []
                for k in ks:
                    if k == nw:
                        fns.append(lambda blk=blk, xin=xin: blk(xin))
                    else:
                        keep = torch.stack([torch.from_numpy(rng.permutation(nw)[:k]) for _ in range(B)])
                        keep = keep.to(device=dev, dtype=torch.long)
                        fns.append(lambda blk=blk, xin=xin, keep=keep: sparse_block_forward(blk, xin, keep))
                rel, refs = _interleaved_ratios(fns, int(warmup), int(repeats), sync, rng, reference)
                ref_samples += refs
                entry_k = ([0] if 0 in ks_all[s][j] else []) + ks
                entry_ms = ([0.0] if 0 in ks_all[s][j] else []) + rel  # ratios until scaled below
                row_out.append({"k": [int(k) for k in entry_k], "ms": [float(v) for v in entry_ms]})
                if bar is not None:
                    bar.update(len(ks))
            blocks_out.append(row_out)
        if bar is not None:
            bar.close()

        # ---- fixed parts ----------------------------------------------------------------
        n_st = len(depths)
        fixed_fns: List[Callable[[], Any]] = [lambda: bb.patch_embed(x)]
        for s, stage in enumerate(bb.layers):
            fixed_fns.append(lambda stage=stage, xi=stage_in[s]: stage.downsample(xi))
        for s, stage in enumerate(bb.layers):
            fixed_fns.append(_scoring_fn(stage, block_in[s][0], bb.window_importance))
        if bb is model:
            last = stage_out[-1]
            fixed_fns.append(lambda: bb.forward_head(bb.norm(last)))
        else:
            feats = [o.permute(0, 3, 1, 2) for o in stage_out]
            out_size = tuple(x.shape[-2:])
            fixed_fns.append(lambda: model.forward_head(feats, out_size=out_size))
        fixed, refs = _interleaved_ratios(fixed_fns, int(warmup), int(repeats), sync, rng, reference)
        ref_samples += refs

        # ---- calibration ----------------------------------------------------------------
        crng = np.random.default_rng([int(seed), CALIBRATION_STREAM])
        cfgs = calibration_configs(depths, ratios, int(calib_configs), crng)
        cal = measure_configs_drift(model, x, cfgs, warmup=int(warmup), repeats=c_rep, progress=progress,
                                    desc="latency calibration", seed=seed)
        ref_samples += cal.reference_samples
        scale = float(statistics.median(ref_samples))  # dense forward, ms, at the session's typical speed
        measured = cal.ratio * scale
        for row in blocks_out:
            for entry in row:
                entry["ms"] = [float(v * scale) for v in entry["ms"]]
        fixed = [float(v * scale) for v in fixed]
        fixed_ms = {
            "patch_embed": fixed[0],
            "downsample": fixed[1:1 + n_st],
            "scoring": fixed[1 + n_st:1 + 2 * n_st],
            "head": fixed[1 + 2 * n_st],
        }

        table: Dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "units": "ms",
            "fingerprint": current_fingerprint(dev, threads if threads is not None else torch.get_num_threads(),
                                               B, dtype, hw),
            "img_size": [hw[0], hw[1]],
            "batch_size": B,
            "depths": depths,
            "num_windows": nws,
            "ratios": ratios,
            "blocks": blocks_out,
            "fixed_ms": fixed_ms,
            "calibration": {"a": 1.0, "b": 0.0, "n": 0},
            "reference_ms": scale,
            "drift_correction": "dense-forward reference",
            "head": "segmentation" if bb is not model else "classifier",
            "model_arch": model_arch,
            "checkpoint_sha256": checkpoint_sha256,
        }

    raw = Predictor(table, source="<profile>").table_sum(cfgs)
    a, b, method = _fit_calibration(raw, measured)
    fitted = a * raw + b
    table["calibration"] = {
        "a": a,
        "b": b,
        "method": method,
        "n": int(len(measured)),
        "mape": float(np.mean(np.abs(fitted - measured) / measured) * 100.0),
        "mape_uncalibrated": float(np.mean(np.abs(raw - measured) / measured) * 100.0),
        "residuals_ms": [float(v) for v in (measured - fitted)],
        "measured_ms": [float(v) for v in measured],
        "table_ms": [float(v) for v in raw],
        "configs": [[float(v) for v in c] for c in cfgs],
        "repeats": c_rep,
        "sampling": "independent + spread (calibration_configs)",
        "seed": int(seed),
    }
    table["profile_seconds"] = float(time.perf_counter() - t_start)
    return table


#: Accepted range of the calibration slope ``a``. The table already sums the parts a forward
#: runs, so the slope is ~1 (0.95 measured on the default model); a fit far outside this range
#: means timing noise (a loaded machine) dominated the calibration, and an offset-only fit is safer.
CALIBRATION_SLOPE_RANGE = (0.5, 2.0)


def _fit_calibration(raw: np.ndarray, measured: np.ndarray) -> Tuple[float, float, str]:
    """Least squares ``measured = a * raw + b`` -> (a, b, method).

    Falls back to ``a = 1, b = median(measured - raw)`` (method ``"offset"``) when the fit is
    ill-posed (fewer than 2 points, raw values with almost no spread) or implausible (``a`` outside
    :data:`CALIBRATION_SLOPE_RANGE`, typically timing noise on a loaded machine); otherwise method
    ``"lstsq"``.
    """
    raw = np.asarray(raw, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    if len(raw) >= 2 and np.std(raw) > 1e-6 * max(1e-12, float(np.mean(np.abs(raw)))):
        A = np.stack([raw, np.ones_like(raw)], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, measured, rcond=None)
        lo, hi = CALIBRATION_SLOPE_RANGE
        if math.isfinite(a) and math.isfinite(b) and lo <= a <= hi:
            return float(a), float(b), "lstsq"
    return 1.0, float(np.median(measured - raw)), "offset"
