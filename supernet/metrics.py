"""Semantic-segmentation metrics: confusion matrix -> mIoU, per-class IoU, pixel accuracy.

The confusion matrix ``cm`` is ``[K, K]`` with rows = target class and columns = predicted
class; matrices from several batches are combined by summation. IoU of class c is
``TP / (TP + FP + FN)`` = ``cm[c, c] / (cm[c, :].sum() + cm[:, c].sum() - cm[c, c])``.

Example::

    >>> metric = SegMetric(num_classes=11)
    >>> for images, labels in loader:
    ...     metric.update(model(images), labels)   # logits [B, K, H, W], labels [B, H, W]
    >>> metric.compute()["miou"]
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["confusion_matrix", "per_class_iou", "miou", "pixel_accuracy", "item_class_accuracy", "item_recall",
           "SegMetric"]


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Confusion matrix of integer predictions against integer targets (one ``bincount``).

    Args:
        pred: integer tensor of any shape ``[...]``, values in ``0..num_classes-1``.
        target: integer tensor of the same shape, values in ``0..num_classes-1`` or
            ``ignore_index``.
        num_classes: K >= 1.
        ignore_index: target value whose pixels are left out (e.g. 255); ``None`` = none.

    Returns:
        int64 tensor ``[K, K]`` on ``target``'s device; ``cm[t, p]`` counts pixels of target class
        ``t`` predicted as ``p``. Sum the results of several batches to accumulate.

    Raises:
        ValueError: shape mismatch, non-integer dtype, ``num_classes < 1``, or values out of range.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be an int >= 1, got {num_classes!r}")
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    for name, t in (("pred", pred), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(
                f"confusion_matrix: {name} must be an integer tensor, got {t.dtype} "
                "(take logits.argmax(1) first)"
            )
    k = num_classes
    pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
    target = target.reshape(-1).to(torch.int64)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() == 0:
        return torch.zeros((k, k), dtype=torch.int64, device=target.device)
    lo = torch.minimum(pred.min(), target.min()).item()
    hi = torch.maximum(pred.max(), target.max()).item()
    if lo < 0 or hi >= k:
        raise ValueError(
            f"confusion_matrix: values must lie in 0..{k - 1}"
            + ("" if ignore_index is None else f" (or ignore_index={ignore_index} in target)")
            + f", got {lo}..{hi}; check num_classes / ignore_index"
        )
    return torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)


def _as_numpy_cm(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {cm.shape}")
    if (cm < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return cm.astype(np.float64)


def per_class_iou(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class, float64 numpy ``[K]``; NaN for classes absent from target and prediction.

    Raises:
        ValueError: ``cm`` is not a square non-negative matrix.
    """
    cm = _as_numpy_cm(cm)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = np.full(cm.shape[0], np.nan)
    present = union > 0
    iou[present] = tp[present] / union[present]
    return iou


def miou(cm: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes present in target or prediction; NaN when ``cm`` is all zero.

    Raises:
        ValueError: ``cm`` is not a square non-negative matrix.
    """
    iou = per_class_iou(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else math.nan


def pixel_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    """Fraction of (non-ignored) pixels predicted correctly, ``trace / sum``; NaN when empty.

    Raises:
        ValueError: ``cm`` is not a square non-negative matrix.
    """
    cm = _as_numpy_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else math.nan


def item_class_accuracy(cm: torch.Tensor | np.ndarray, background: int = 0) -> float:
    """Item-pixel class accuracy: of the pixels whose target is an item (not ``background``), the
    fraction predicted as exactly their class, ``sum_c cm[c, c] / sum_c cm[c, :]`` over c != background.

    Tells "knows the classes" apart from "finds the items" (see :func:`item_recall`); chance is
    1 / (number of item classes). NaN when no item pixel was seen.

    Raises:
        ValueError: ``cm`` is not a square non-negative matrix.
    """
    cm = _as_numpy_cm(cm)
    items = [c for c in range(cm.shape[0]) if c != background]
    total = cm[items, :].sum()
    return float(cm[items, items].sum() / total) if total > 0 else math.nan


def item_recall(cm: torch.Tensor | np.ndarray, background: int = 0) -> float:
    """Item-pixel recall: of the item pixels, the fraction predicted as *some* item class (any class
    but ``background``). NaN when no item pixel was seen.

    Raises:
        ValueError: ``cm`` is not a square non-negative matrix.
    """
    cm = _as_numpy_cm(cm)
    items = [c for c in range(cm.shape[0]) if c != background]
    total = cm[items, :].sum()
    return float(cm[np.ix_(items, items)].sum() / total) if total > 0 else math.nan


class SegMetric:
    """Streaming segmentation metric: accumulates a confusion matrix over batches.

    Args:
        num_classes: K (11 for :class:`supernet.data.FashionMosaic`).
        ignore_index: target value to leave out, or ``None``.

    ``update(x, target)`` accepts logits float ``[B, K, H, W]`` (argmax over dim 1) or integer
    predictions of ``target``'s shape ``[B, H, W]``. ``compute()`` returns
    ``{"miou", "pixel_acc", "item_class_acc", "item_recall": float, "per_class_iou": list[float]}``
    (NaN for absent classes; class 0 is the background of the item metrics).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SegMetric: num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def reset(self) -> None:
        """Forget all accumulated pixels."""
        self.cm = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch.

        Args:
            logits_or_pred: float logits ``[B, K, H, W]`` or integer predictions ``[B, H, W]``.
            target: integer labels ``[B, H, W]``.

        Raises:
            ValueError: shapes do not match (logits must already be at the label resolution:
                ``F.interpolate(logits, size=target.shape[-2:], mode="bilinear")``), the class
                dimension is not ``num_classes``, or values are out of range.
        """
        x = logits_or_pred
        if x.is_floating_point():
            if x.ndim != target.ndim + 1:
                raise ValueError(
                    f"SegMetric.update: logits {tuple(x.shape)} must be [B, K, *target.shape[1:]] "
                    f"for target {tuple(target.shape)}"
                )
            if x.shape[1] != self.num_classes:
                raise ValueError(
                    f"SegMetric.update: logits have {x.shape[1]} classes, metric has {self.num_classes}"
                )
            if x.shape[:1] + x.shape[2:] != target.shape:
                raise ValueError(
                    f"SegMetric.update: logits {tuple(x.shape)} do not match target {tuple(target.shape)}; "
                    "upsample with F.interpolate(logits, size=target.shape[-2:], mode='bilinear') first"
                )
            x = x.argmax(1)
        cm = confusion_matrix(x, target, self.num_classes, self.ignore_index)
        self.cm += cm.cpu()

    def compute(self) -> dict:
        """``{"miou", "pixel_acc", "item_class_acc", "item_recall", "per_class_iou"}`` since the last reset.

        Raises:
            RuntimeError: no pixel was accumulated yet.
        """
        if int(self.cm.sum()) == 0:
            raise RuntimeError("SegMetric.compute: no pixels accumulated; call update() first")
        return {
            "miou": miou(self.cm),
            "pixel_acc": pixel_accuracy(self.cm),
            "item_class_acc": item_class_accuracy(self.cm),
            "item_recall": item_recall(self.cm),
            "per_class_iou": [float(v) for v in per_class_iou(self.cm)],
        }
