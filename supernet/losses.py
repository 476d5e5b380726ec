"""Segmentation losses of the task model: pixel cross-entropy, item-weighted cross-entropy, and an
auxiliary per-item classification loss read off the label map.

All take logits ``(B, K, h, w)`` and labels ``(B, H, W)`` (int64, 0 = background, ``c + 1`` = item
class c) where ``(H, W)`` is ``(h, w)`` times an integer factor ``f`` (1 = full resolution, 4 = the
head's native 1/4 resolution). At ``f > 1`` the targets are *soft*: the class proportions of each
``f x f`` cell (average-pooled one-hot labels), so no label pixel is dropped and the loss needs no
upsampling of the logits to the image size (16x fewer pixels at f = 4).

- ``"ce"``: mean pixel cross-entropy (the background, ~80 % of the pixels of a canvas, optionally
  down-weighted by ``bg_weight``).
- ``"item"``: item-weighted cross-entropy: every (image, class) region of the label map weighs the
  same whatever its area (mean CE inside each region, then the mean over regions; background
  regions weighted by ``bg_weight``), so a 28 px item counts as much as a 112 px one.
- ``aux_weight > 0`` adds the region-pooled classification loss: for every (image, item class)
  region, the logits averaged over its pixels are classified as that class with cross-entropy, the
  loss a classifier on the item would get (a per-item signal instead of a per-pixel one).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["soft_targets", "seg_loss_from_logits", "seg_loss"]


def soft_targets(labels: torch.Tensor, num_classes: int, factor: int) -> torch.Tensor:
    """Class proportions of every ``factor x factor`` cell.

    Args:
        labels: int64 (B, H, W), values 0..num_classes-1; H, W divisible by ``factor``.
        num_classes: K.
        factor: cell side in pixels (1 = one-hot).

    Returns:
        float32 (B, K, H / factor, W / factor), summing to 1 over K.

    Raises:
        ValueError: H or W not divisible by ``factor``.
    """
    B, H, W = labels.shape
    if H % factor or W % factor:
        raise ValueError(f"soft_targets: label size {H}x{W} not divisible by {factor}")
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, factor) if factor > 1 else onehot


def seg_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, kind: str = "ce", bg_weight: float = 1.0,
                         aux_weight: float = 0.0) -> torch.Tensor:
    """Loss of ``logits`` (B, K, h, w) against ``labels`` (B, H, W), ``H = f * h`` (see the module doc).

    Args:
        kind: "ce" (pixel cross-entropy) or "item" (item-weighted cross-entropy).
        bg_weight: weight of background pixels (ce) or background regions (item), 0 < w <= 1.
        aux_weight: weight of the region-pooled per-item classification loss (0 = off).

    Returns:
        Scalar loss (float32).

    Raises:
        ValueError: unknown ``kind`` or label size not a multiple of the logits' size.
    """
    B, K, h, w = logits.shape
    H, W = labels.shape[-2:]
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"seg_loss: labels {H}x{W} are not an integer multiple of logits {h}x{w}")
    f = H // h
    logits = logits.float()
    target = soft_targets(labels, K, f)  # (B, K, h, w)
    logp = F.log_softmax(logits, dim=1)
    ce = -(target * logp).sum(1)  # (B, h, w)
    if kind == "ce":
        if bg_weight != 1.0:
            wmap = 1.0 - (1.0 - bg_weight) * target[:, 0]
            loss = (ce * wmap).sum() / wmap.sum()
        else:
            loss = ce.mean()
    elif kind == "item":
        # per (image, class) region: mean CE over its (soft) pixels, then the mean over regions
        mass = target.sum((2, 3))  # (B, K) pixels of each region
        region_ce = torch.einsum("bkhw,bhw->bk", target, ce) / mass.clamp_min(1e-6)
        present = (mass > 0.5).float()
        rw = present.clone()
        rw[:, 0] *= bg_weight
        loss = (region_ce * rw).sum() / rw.sum().clamp_min(1e-6)
    else:
        raise ValueError(f"seg_loss: kind must be 'ce' or 'item', got {kind!r}")
    if aux_weight > 0:
        mass = target.sum((2, 3))  # (B, K)
        pooled = torch.einsum("bkhw,bjhw->bkj", target, logits) / mass.clamp_min(1e-6).unsqueeze(-1)  # (B, K, K)
        present = mass[:, 1:] > 0.5  # item regions only
        if present.any():
            cls = torch.arange(1, K, device=logits.device).expand(B, K - 1)
            aux = F.cross_entropy(pooled[:, 1:][present], cls[present])
            loss = loss + aux_weight * aux
    return loss


def seg_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, kind: str = "ce",
             bg_weight: float = 1.0, aux_weight: float = 0.0, at: str = "full",
             class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward ``model`` (a :class:`supernet.seg.SegSupernet`) and return the loss.

    Args:
        images: float (B, 3, H, W); labels: int64 (B, H, W).
        at: "full" (logits upsampled to H x W, the metric's resolution) or "quarter" (the head's own
            1/4-resolution logits against soft targets: no upsampling, 16x fewer loss pixels).
        kind, bg_weight, aux_weight: see :func:`seg_loss_from_logits`.
        class_weight: legacy per-class weights of plain pixel CE at full resolution (overrides ``kind``).
    """
    if at == "full":
        logits = model(images)
        if class_weight is not None:
            return F.cross_entropy(logits, labels, weight=class_weight)
    elif at == "quarter":
        logits = model.forward_logits(images)
    else:
        raise ValueError(f"seg_loss: at must be 'full' or 'quarter', got {at!r}")
    return seg_loss_from_logits(logits, labels, kind=kind, bg_weight=bg_weight, aux_weight=aux_weight)
