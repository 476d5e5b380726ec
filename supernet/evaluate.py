"""Supernet evaluation: mIoU / pixel accuracy of a :class:`SegSupernet` at given sparsity configs.

SparseViT (arXiv 2303.17605, Sec. 3.2-3.3) scores every candidate config with the *same* supernet
weights, no fine-tuning; :func:`reference_table` is the quick health check of such a supernet:
dense, then uniform ratios 0.3 / 0.5 / 0.7 on every stage but the last (at 224 px the last stage
of a window-7 Swin is one window, which any ratio > 0 would prune entirely), each with its
*retention* = sparse mIoU / dense mIoU.

Metrics are computed with :class:`supernet.metrics.SegMetric` over the whole evaluated set (one
confusion matrix, not a mean of per-batch scores), under ``torch.inference_mode`` and in eval mode;
the model's sparsity and train/eval mode are restored afterwards.

Example::

    >>> from supernet.evaluate import evaluate_config, reference_table
    >>> evaluate_config(model, [[.5, .5], [.5, .5], [.5] * 6, [0, 0]], length=64)
    {'miou': 0.61, 'pixel_acc': 0.97}
    >>> reference_table(model, length=64)["uniform"]["0.5"]["retention"]
    0.93
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch

from .data import NUM_SEG_CLASSES, MosaicSpec, make_loader
from .metrics import SegMetric

__all__ = ["REFERENCE_RATIOS", "DEFAULT_VAL_SEED", "uniform_config", "evaluate", "evaluate_config",
           "reference_table", "format_table", "resolve_device"]

#: Uniform ratios of the reference table.
REFERENCE_RATIOS: Tuple[float, ...] = (0.3, 0.5, 0.7)
#: Canvas seed of validation sets (the search's built-in evaluator uses the same default).
DEFAULT_VAL_SEED = 12345


def uniform_config(depths: Sequence[int], ratio: float,
                   sparse_stages: Optional[Iterable[int]] = None) -> list:
    """One ratio on every block of ``sparse_stages`` (default: all stages but the last), 0 elsewhere.

    Args:
        depths: blocks per stage, e.g. (2, 2, 6, 2).
        ratio: 0 <= r < 1.
        sparse_stages: stage indices that get ``ratio``.

    Returns:
        ``list[list[float]]``, e.g. ``[[.5,.5],[.5,.5],[.5]*6,[0,0]]``.
    """
    stages = set(range(len(depths) - 1) if sparse_stages is None else sparse_stages)
    return [[float(ratio) if i in stages else 0.0] * int(d) for i, d in enumerate(depths)]


def resolve_device(device: Any) -> torch.device:
    """The torch device ``device`` names (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked against this machine
    before any work: the one home of that check (training's ``[train] device``, the latency profiler's ``--device``).

    Raises:
        ValueError: not a torch device, a device type other than cpu / cuda / mps, or CUDA / MPS that this machine
            lacks (the message says which, without naming ``device``: the caller names where it came from).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError("not a torch device (cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # xpu / hpu / meta...: not devices this project runs or times on
        raise ValueError(f"{dev.type!r} is not a device sparsesearch runs on (cpu, cuda, cuda:N, mps)")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"no such CUDA device on this machine ({torch.cuda.device_count()} visible)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS is not available here")
    return dev


def _model_img_size(model: torch.nn.Module) -> int:
    size = getattr(model, "img_size", None) or getattr(getattr(model, "backbone", model), "img_size", None) or (224, 224)
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def evaluate(model: torch.nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]], *,
             num_classes: Optional[int] = None, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Score ``model`` at its current sparsity on every batch of ``loader``.

    Args:
        model: maps (B, 3, H, W) float images to (B, K, H, W) logits.
        loader: iterable of ``(images float [B, 3, H, W], labels int64 [B, H, W])``.
        num_classes: K (default ``model.num_classes`` or 11).
        device: where to run (default: the model's parameters' device).

    Returns:
        ``{"miou", "pixel_acc", "per_class_iou", "images"}`` (ratios in 0..1, NaN for absent classes).

    Raises:
        RuntimeError: the loader was empty.
    """
    k = int(num_classes or getattr(model, "num_classes", NUM_SEG_CLASSES))
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    metric = SegMetric(k)
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.inference_mode():
            for images, labels in loader:
                logits = model(images.to(device))
                metric.update(logits, labels.to(device))
                n += int(images.shape[0])
    finally:
        model.train(was_training)
    out = metric.compute()
    out["images"] = n
    return out


def evaluate_config(model: torch.nn.Module, ratios: Any = None, split: str = "val", length: int = 256,
                    batch_size: int = 16, spec: Optional[MosaicSpec] = None, seed: int = DEFAULT_VAL_SEED,
                    loader: Optional[Iterable] = None) -> Dict[str, float]:
    """mIoU and pixel accuracy of ``model`` at one sparsity config on FashionMosaic canvases.

    Args:
        model: a :class:`SegSupernet` (anything with ``set_sparsity`` / ``sparsity``).
        ratios: the per-block config (``list[list[float]]``), one number for every block, or None
            for the model's current config. The previous config is restored afterwards.
        split: "val" or "test" canvases (see :class:`supernet.data.FashionMosaic`).
        length: number of canvases.
        batch_size: canvases per forward pass.
        spec: canvas layout (default ``MosaicSpec(img_size=<the model's img_size>)``).
        seed: canvas seed.
        loader: an explicit iterable of batches instead of (split, length, spec, seed).

    Returns:
        ``{"miou", "pixel_acc", "item_class_acc", "item_recall"}`` (ratios 0..1).

    Raises:
        ValueError: the config does not fit the model (see ``validate_sparsity``).
        supernet.data.DatasetNotFoundError: the Fashion-MNIST files are missing.
    """
    if loader is None:
        spec = spec if spec is not None else MosaicSpec(img_size=_model_img_size(model))
        loader = make_loader(split, length=length, batch_size=batch_size, spec=spec, seed=seed)
    previous = model.sparsity
    if ratios is not None:
        model.set_sparsity(ratios)
    try:
        out = evaluate(model, loader)
    finally:
        model.set_sparsity(previous)
    return {k: float(out[k]) for k in ("miou", "pixel_acc", "item_class_acc", "item_recall")}


def reference_table(model: torch.nn.Module, ratios: Sequence[float] = REFERENCE_RATIOS, *, split: str = "val",
                    length: int = 256, batch_size: int = 16, spec: Optional[MosaicSpec] = None,
                    seed: int = DEFAULT_VAL_SEED, sparse_stages: Optional[Iterable[int]] = None) -> Dict[str, Any]:
    """Dense and uniform-sparsity scores of a supernet, with retention ratios.

    Uniform config r: every block of ``sparse_stages`` (default stages 0..n-2, the last stage dense)
    at ratio r. Retention = mIoU at r / dense mIoU (1.0 = no loss).

    Args:
        model: a :class:`SegSupernet`.
        ratios: the uniform ratios (default 0.3, 0.5, 0.7).
        split, length, batch_size, spec, seed: the evaluated canvases (see :func:`evaluate_config`).
        sparse_stages: stages that get the ratio.

    Returns:
        ``{"split", "length", "seed", "img_size", "dense": {"miou", "pixel_acc"},
        "uniform": {"0.3": {"miou", "pixel_acc", "retention", "config"}, ...}}``.

    Raises:
        supernet.data.DatasetNotFoundError: the Fashion-MNIST files are missing.
    """
    spec = spec if spec is not None else MosaicSpec(img_size=_model_img_size(model))
    common = dict(split=split, length=length, batch_size=batch_size, spec=spec, seed=seed)
    depths = tuple(model.depths)
    dense = evaluate_config(model, [[0.0] * d for d in depths], **common)
    table: Dict[str, Any] = {"split": split, "length": int(length), "seed": int(seed), "img_size": spec.img_size,
                             "dense": dense, "uniform": {}}
    for r in ratios:
        cfg = uniform_config(depths, r, sparse_stages)
        res = evaluate_config(model, cfg, **common)
        res["retention"] = res["miou"] / dense["miou"] if dense["miou"] > 0 else float("nan")
        res["config"] = cfg
        table["uniform"][f"{float(r):g}"] = res
    return table


def format_table(table: Dict[str, Any]) -> str:
    """Human-readable lines of a :func:`reference_table` result."""
    d = table["dense"]
    lines = [f"dense        mIoU {d['miou']:.4f}  pixel acc {d['pixel_acc']:.4f}"]
    for r, row in table["uniform"].items():
        lines.append(f"uniform {r:<4} mIoU {row['miou']:.4f}  pixel acc {row['pixel_acc']:.4f}  "
                     f"retention {row['retention']:.3f}")
    return "\n".join(lines)
