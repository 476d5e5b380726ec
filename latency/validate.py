"""Validation of a latency predictor against end-to-end measurements, and the CLI entry points.

:func:`validate` times held-out random configs end to end (the profiler's calibration code:
warm-up, then the median of a few interleaved repeats), compares them with the predictions and
reports the share of configs within +-10 %, the MAPE, Spearman's rho (the search ranks configs,
so the ordering matters as much as the absolute error) and the worst error; optionally it saves a
predicted-vs-measured scatter plot (PNG).

:func:`cli_profile` and :func:`cli_validate` are the bodies of ``sparsesearch latency profile`` and
``sparsesearch latency validate``; they take an ``argparse.Namespace`` and return an exit code.
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .predictor import Predictor, PredictorError, current_fingerprint
from .profiler import (
    DEFAULT_RATIOS,
    VALIDATION_STREAM,
    _backbone,
    _make_input,
    _session,
    check_device,
    measure_configs_drift,
    profile,
    random_configs,
    save,
)

__all__ = ["validate", "plot_validation", "cli_profile", "cli_validate", "speed_drift", "speed_drift_warning"]


def validate(predictor: Predictor, model: nn.Module, n: int = 200, seed: int = 0,
             plot: Union[str, os.PathLike, None] = None, progress: bool = True, *,
             warmup: int = 3, repeats: int = 11, device: Optional[str] = None, spread: bool = False) -> Dict[str, Any]:
    """Measure ``n`` held-out random configs end to end and compare with the predictions.

    Measurements are drift-corrected (every config run between two dense runs, see
    :func:`latency.profiler.measure_configs_drift`). Besides the absolute errors, the scale-free
    ones compare predicted / predicted dense with measured / interleaved dense: the quantity a
    ``budget_fraction`` gate decides on, and what stays valid when the shared machine runs at
    another speed than when it was profiled (``dense_ms_measured`` vs ``dense_ms_at_profiling``).

    The measuring setting comes from the predictor's fingerprint: device (``device`` overrides),
    threads, batch size and image size. Configs are drawn like the calibration's (random ratios
    of the profiled ratio set, sorted per stage) from a different random stream, and configs that
    were calibration points are redrawn, so they are held out. The model is moved to the device in
    place; its mode, sparsity and the thread count are restored.

    Args:
        predictor: the predictor to check.
        model: the SegSupernet / SparseSwin it was profiled on (same architecture).
        n: number of configs (>= 2).
        seed: random seed of the configs (and of the input batch).
        plot: PNG path for the predicted-vs-measured scatter (y = x line, +-10 % band), or None.
        progress: tqdm bar over the measurements.
        warmup: dense warm-up forwards before timing.
        repeats: timed forwards per config (median ratio kept; 11 measured here to bring the
            drift-corrected noise of one config to ~2 %).
        device: measuring device; default the profiled one.
        spread: draw the configs evenly from dense to the sparsest (``random_configs(spread=True)``): the
            sparse end a latency budget drives a search to, which independent draws per block rarely reach.

    Returns:
        dict: ``n``, ``within_10pct`` (share 0..1 of configs with |pred - meas| <= 10 % of meas),
        ``mape`` (%), ``spearman`` (rho), ``max_abs_pct_err`` (%), ``max_abs_err_ms``,
        ``mean_pct_err`` (signed bias, %), ``relative_within_10pct`` / ``relative_mape`` (the
        same on latency / dense latency), ``dense_ms_measured`` / ``dense_ms_predicted`` /
        ``dense_ms_at_profiling`` (ms), ``measured_ms`` / ``predicted_ms`` / ``measured_ratio`` (lists), ``configs``
        (flat lists), ``fingerprint``, ``plot`` (path or None), ``seconds``.

    Raises:
        PredictorError: the model does not match the predictor (depths / windows); this machine lacks its device.
        ValueError: n < 2.
    """
    from scipy.stats import spearmanr

    t0 = time.perf_counter()
    if int(n) < 2:
        raise ValueError(f"validate(): n must be >= 2, got {n}")
    predictor.check_model(model)
    fp = predictor.fingerprint
    dev = predictor_device(predictor, device)
    threads = int(fp.get("threads") or torch.get_num_threads())
    bs = predictor.batch_size
    hw = predictor.img_size or tuple(_backbone(model).img_size)
    model.to(dev)
    dtype = next(model.parameters()).dtype
    predictor.check_fingerprint(current_fingerprint(dev, threads, bs, dtype, hw), stacklevel=2)

    bb = _backbone(model)
    ratios = predictor.ratios or list(DEFAULT_RATIOS)
    rng = np.random.default_rng([int(seed), VALIDATION_STREAM])
    calib = {tuple(c) for c in (predictor.table.get("calibration", {}).get("configs") or [])}
    cfgs = random_configs(bb.depths, ratios, int(n), rng, include_dense=False, spread=spread)
    for i in range(len(cfgs)):  # redraw calibration points (held-out set)
        tries = 0
        while tuple(cfgs[i]) in calib and tries < 20:
            cfgs[i] = random_configs(bb.depths, ratios, 1, rng, include_dense=False, spread=spread)[0]
            tries += 1
    x = _make_input(bs, hw, seed + 1, dev, dtype)
    with _session(model, threads):
        m = measure_configs_drift(model, x, cfgs, warmup=warmup, repeats=repeats, progress=progress,
                                  desc="latency validation", seed=seed)
    measured = m.ms
    predicted = predictor.predict(cfgs)
    err = (predicted - measured) / measured
    rho = float(spearmanr(predicted, measured).statistic) if len(np.unique(measured)) > 1 else float("nan")
    # scale-free check: predicted / predicted dense vs measured / interleaved dense (what a
    # budget_fraction gate decides on; immune to the machine's speed differing from profiling time)
    pred_dense = float(predictor.predict(np.zeros((1, predictor.n_blocks)))[0])
    rel_err = (predicted / pred_dense - m.ratio) / m.ratio
    out: Dict[str, Any] = {
        "n": int(n),
        "sampling": "spread" if spread else "independent",
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "mape": float(np.mean(np.abs(err)) * 100.0),
        "spearman": rho,
        "max_abs_pct_err": float(np.max(np.abs(err)) * 100.0),
        "max_abs_err_ms": float(np.max(np.abs(predicted - measured))),
        "mean_pct_err": float(np.mean(err) * 100.0),
        "relative_within_10pct": float(np.mean(np.abs(rel_err) <= 0.10)),
        "relative_mape": float(np.mean(np.abs(rel_err)) * 100.0),
        "dense_ms_measured": m.reference_ms,
        "dense_ms_predicted": pred_dense,
        "dense_ms_at_profiling": predictor.table.get("reference_ms"),
        "speed_drift": speed_drift(m.reference_ms, pred_dense),
        "measured_ms": [float(v) for v in measured],
        "predicted_ms": [float(v) for v in predicted],
        "measured_ratio": [float(v) for v in m.ratio],
        "configs": [[float(v) for v in c] for c in cfgs],
        "fingerprint": current_fingerprint(dev, threads, bs, dtype, hw),
        "predictor": predictor.source,
        "plot": None,
    }
    if plot is not None:
        out["plot"] = str(plot_validation(measured, predicted, plot, title=_plot_title(predictor, out)))
    out["seconds"] = float(time.perf_counter() - t0)
    return out


def _plot_title(predictor: Predictor, res: Dict[str, Any]) -> str:
    fp = predictor.fingerprint
    return (f"{fp.get('device', '?')} {fp.get('device_name', '')} | {fp.get('threads', '?')} thr, batch "
            f"{predictor.batch_size}, {predictor.img_size}\n n={res['n']}: {res['within_10pct'] * 100:.0f}% within "
            f"+-10%, MAPE {res['mape']:.1f}%, Spearman {res['spearman']:.3f}")


def plot_validation(measured, predicted, path: Union[str, os.PathLike], title: str = "") -> Path:
    """Predicted vs measured scatter (ms) with y = x and the +-10 % band, saved as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot state, no display needed).

    Returns:
        The PNG path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = np.asarray(measured, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    fig = Figure(figsize=(5.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lo = float(min(measured.min(), predicted.min())) * 0.95
    hi = float(max(measured.max(), predicted.max())) * 1.05
    line = np.linspace(lo, hi, 50)
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="+-10 %")
    ax.plot(line, line, color="k", lw=1, label="y = x")
    inside = np.abs(predicted - measured) <= 0.1 * measured
    ax.scatter(measured[inside], predicted[inside], s=12, color="tab:blue", label="within 10 %")
    ax.scatter(measured[~inside], predicted[~inside], s=12, color="tab:red", label="outside")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------------------------
# CLI entry points (wired into `sparsesearch` by search/cli.py)
# --------------------------------------------------------------------------------------------
def _load_model(checkpoint: Union[str, os.PathLike], img_size: Any = None):
    """(model, meta) via supernet.checkpoint.load_checkpoint, built for ``img_size`` (default: the sidecar's)."""
    from supernet.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, img_size=img_size)


def predictor_device(predictor: Predictor, device: Union[str, torch.device, None] = None) -> torch.device:
    """Where a predictor's configs are measured: ``device``, else the device it was profiled on (its fingerprint),
    checked by :func:`latency.profiler.check_device` (a refusal names the predictor file when the device is its).

    Raises:
        PredictorError: this machine lacks that device."""
    if device:
        return check_device(device)
    return check_device(predictor.fingerprint.get("device") or "cpu", predictor=str(predictor.source))


def _arch_from_meta(meta: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    for key in ("arch", "model_arch", "model_kwargs"):
        v = meta.get(key) if isinstance(meta, dict) else None
        if v is not None:
            return v
    return None


def _ratios_from_meta(meta: Dict[str, Any]):
    """The checkpoint's search-space ratio set (sidecar ``search_space.ratios``), or the default."""
    space = meta.get("search_space") if isinstance(meta, dict) else None
    ratios = space.get("ratios") if isinstance(space, dict) else None
    if isinstance(ratios, (list, tuple)) and ratios:
        return [float(r) for r in ratios]
    return list(DEFAULT_RATIOS)


def _emit(args: Any, payload: Dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):  # strict JSON: NaN (a Spearman of 2 configs) -> null
        from supernet.fileio import strict_json

        sys.stdout.write(strict_json(payload, default=str) + "\n")
    else:
        sys.stdout.write(human + "\n")
    sys.stdout.flush()


def busy_machine_warning(calibration: Dict[str, Any], dense_ms: float, tolerance: float = 0.15) -> Optional[str]:
    """A warning when a profile's calibration is far from the identity, or ``None``.

    The calibration fits ``measured = a * (sum of the table's terms) + b`` on end-to-end runs of random configs
    (``a`` unitless, ``b`` in ms). On a quiet machine the per-block table already adds up to the end-to-end time
    (here: a = 1.01, b = -0.2 ms at 448 px); a profile taken while another process competed for the cores gave
    a = 0.82, b = +26.5 ms, and a predictor whose validation had 0 % of configs within +-10 % (RESULTS.md R2).

    Args:
        calibration: the predictor file's ``calibration`` (``a``, ``b``).
        dense_ms: the predicted dense latency (ms).
        tolerance: allowed ``|a - 1|`` and ``|b| / dense_ms``.
    """
    a, b = float(calibration.get("a", 1.0)), float(calibration.get("b", 0.0))
    if abs(a - 1.0) <= tolerance and abs(b) <= tolerance * max(dense_ms, 1e-9):
        return None
    return (f"the calibration is far from the identity (a={a:.3f}, b={b:.1f} ms for a {dense_ms:.1f} ms dense model): "
            "the machine was probably busy while profiling; fix: profile again with nothing else running")


#: Relative change of the dense model's measured latency since profiling above which the absolute errors of a
#: validation or a measured front say more about the machine than about the predictor.
SPEED_DRIFT_TOLERANCE = 0.05


def speed_drift(dense_ms_measured: float, dense_ms_predicted: float) -> float:
    """Relative change of the machine's speed since profiling: dense measured now / dense predicted - 1 (ratio;
    > 0: slower now)."""
    return float(dense_ms_measured) / max(float(dense_ms_predicted), 1e-9) - 1.0


def speed_drift_warning(dense_ms_measured: float, dense_ms_predicted: float,
                        tolerance: float = SPEED_DRIFT_TOLERANCE) -> Optional[str]:
    """A note when the machine runs at another speed than when the predictor was profiled, or ``None``.

    A predictor prices configs in the ms of the profiling session. On a shared machine the same dense forward
    measured 61.7 ms while profiling and 68.6-69.8 ms ten minutes later (RESULTS.md R2): every absolute error
    then carries that +11-13 %, while the errors relative to the dense model (what a ``budget_fraction``
    decides on) stay within a few %.

    Args:
        dense_ms_measured: the dense model's latency measured now (ms).
        dense_ms_predicted: the predictor's dense latency (ms).
        tolerance: allowed relative drift (ratio 0..1).
    """
    drift = speed_drift(dense_ms_measured, dense_ms_predicted)
    if abs(drift) <= tolerance:
        return None
    return (f"this machine runs {abs(drift) * 100:.0f} % {'slower' if drift > 0 else 'faster'} than when the predictor "
            f"was profiled (dense {dense_ms_measured:.2f} ms now, {dense_ms_predicted:.2f} ms predicted): the absolute "
            "errors carry that drift, the errors relative to dense do not; fix: read the relative figures, or profile "
            "again on a quiet machine")


def _check_profile_out(out: Path, checkpoint: Path, overwrite: bool = False) -> None:
    """A predictor ``--out`` that would replace something recorded, or could not be written, is refused before the
    minutes of profiling: the checkpoint's weights or sidecar, a folder, anything not named ``*.json``, and an
    existing file unless ``overwrite`` (an experiment's latency gate may be reading that predictor).

    Raises:
        PredictorError: with the fix."""
    from supernet.checkpoint import sidecar_path, weights_path
    from supernet.fileio import refuse_overwrite

    if out.suffix != ".json" or out.is_dir():
        raise PredictorError(f"latency profile: --out {out} is not a .json file name; fix: pass --out predictor.json")
    refuse_overwrite("latency profile --out", (out,), overwrite=overwrite,
                     reads=(weights_path(checkpoint), sidecar_path(checkpoint)),
                     fix="write the predictor to another file", error=PredictorError)


def cli_profile(args: Any) -> int:
    """``sparsesearch latency profile``: profile a checkpoint and write the predictor JSON.

    Args:
        args: namespace with ``checkpoint`` (path), ``device`` ("cpu"), ``batch_size`` (1),
            ``threads`` (1), ``img_size`` (None: the model's), ``out`` (predictor JSON path),
            ``json`` (bool: print exactly one JSON object on stdout), ``repeats`` (11).
            Optional: ``calib_configs`` (40), ``seed`` (0), ``progress`` (True), ``overwrite`` (False: an
            existing ``out`` is refused before profiling).
            The ratio set profiled is the sidecar's ``search_space.ratios`` (default 0.0..0.8);
            the sidecar's ``arch`` and ``weights_sha256`` are stored in the predictor file.

    Returns:
        0. Errors propagate (``PredictorError`` / the checkpoint loader's errors).
    """
    t0 = time.perf_counter()
    out = getattr(args, "out", None)
    if not out:
        raise PredictorError("sparsesearch latency profile: no --out given; fix: pass --out predictor.json")
    _check_profile_out(Path(out), Path(args.checkpoint), bool(getattr(args, "overwrite", False)))
    model, meta = _load_model(args.checkpoint, getattr(args, "img_size", None))
    meta = meta or {}
    table = profile(
        model, getattr(args, "img_size", None),
        batch_size=int(getattr(args, "batch_size", 1) or 1),
        device=getattr(args, "device", None) or "cpu",
        threads=getattr(args, "threads", 1),
        ratios=_ratios_from_meta(meta),
        repeats=int(getattr(args, "repeats", 11) or 11),
        calib_configs=int(getattr(args, "calib_configs", 40) or 40),
        seed=int(getattr(args, "seed", 0) or 0),
        progress=bool(getattr(args, "progress", True)),
        checkpoint_sha256=meta.get("weights_sha256"),
        model_arch=_arch_from_meta(meta),
    )
    path = save(table, out)
    pred = Predictor(table, source=str(path))
    dense = float(pred.predict(np.zeros((1, pred.n_blocks)))[0])
    cal = table["calibration"]
    payload = {
        "predictor": str(path),
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": table.get("checkpoint_sha256"),
        "fingerprint": table["fingerprint"],
        "dense_ms": dense,
        "calibration": {k: cal[k] for k in ("a", "b", "n", "mape", "mape_uncalibrated")},
        "seconds": time.perf_counter() - t0,
    }
    busy = busy_machine_warning(cal, dense)
    payload["warnings"] = [busy] if busy else []
    if busy:
        sys.stderr.write(f"sparsesearch: warning: {path}: {busy}\n")
    fp = table["fingerprint"]
    human = (f"profiled {args.checkpoint} on {fp['device']} ({fp['device_name']}, {fp['threads']} threads, "
             f"batch {fp['batch_size']}, {fp['img_size'][0]}x{fp['img_size'][1]}) in {payload['seconds']:.0f} s: "
             f"dense {dense:.2f} ms, calibration a={cal['a']:.3f} b={cal['b']:.3f} ms, "
             f"MAPE {cal['mape']:.1f}% on {cal['n']} configs -> {path}")
    _emit(args, payload, human)
    return 0


def cli_validate(args: Any) -> int:
    """``sparsesearch latency validate``: check a predictor against end-to-end measurements.

    Args:
        args: namespace with ``predictor`` (JSON path), ``checkpoint`` (path), ``n`` (200),
            ``seed`` (0), ``plot`` (PNG path or None), ``json`` (bool: print one JSON object).
            Optional: ``repeats`` (11), ``progress`` (True), ``device`` (default the profiled one).

    Returns:
        0. Errors propagate (``PredictorError`` for a bad file or a model that does not match).
        A checkpoint whose sha256 differs from the one recorded in the predictor only warns
        (latency depends on the architecture, which :meth:`Predictor.check_model` checks).
    """
    pred = Predictor.load(args.predictor)
    model, meta = _load_model(args.checkpoint, pred.img_size)
    meta = meta or {}
    sha = meta.get("weights_sha256")
    if pred.checkpoint_sha256 and sha and sha != pred.checkpoint_sha256:
        warnings.warn(f"predictor {pred.source} was profiled on checkpoint sha256 {pred.checkpoint_sha256[:12]}..., "
                      f"{args.checkpoint} is {sha[:12]}...; latency depends on the architecture only, so this is "
                      "fine if the architectures match", stacklevel=2)
    res = validate(pred, model, n=int(getattr(args, "n", 200) or 200), seed=int(getattr(args, "seed", 0) or 0),
                   plot=getattr(args, "plot", None), progress=bool(getattr(args, "progress", True)),
                   repeats=int(getattr(args, "repeats", 11) or 11), device=getattr(args, "device", None),
                   spread=bool(getattr(args, "spread", False)))
    payload = {k: v for k, v in res.items() if k not in ("configs",)}
    human = (f"latency predictor {pred.source} on {res['n']} held-out configs: {res['within_10pct'] * 100:.1f}% within "
             f"+-10%, MAPE {res['mape']:.2f}%, Spearman {res['spearman']:.3f}, max error "
             f"{res['max_abs_pct_err']:.1f}% ({res['max_abs_err_ms']:.2f} ms); relative to dense: "
             f"{res['relative_within_10pct'] * 100:.1f}% within +-10%, MAPE {res['relative_mape']:.2f}%; dense "
             f"{res['dense_ms_measured']:.2f} ms now, {res['dense_ms_predicted']:.2f} ms predicted"
             + (f"; plot {res['plot']}" if res["plot"] else ""))
    drift = speed_drift_warning(res["dense_ms_measured"], res["dense_ms_predicted"])
    if drift:
        human += f"\nnote: {drift}"
    _emit(args, payload, human)
    return 0
