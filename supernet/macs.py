"""Analytic multiply-accumulate (MACs) counts of a SparseSwin at its current sparsity.

Counts what the Swin paper counts as FLOPs (Liu et al. 2021, Table 1: Swin-T 4.5 G at 224 are
multiply-accumulates): every linear / conv layer's MACs and the two attention matmuls
(q @ k^T and attn @ v). LayerNorm, softmax, GELU, additions and the window scoring are not counted.

Window-level execution (SparseViT Sec. 3.1): a block that keeps k of nW windows runs LN, attention
and MLP on k * N tokens (N = window area), so its MACs scale by k / nW exactly.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

__all__ = ["count_macs", "layer_macs"]


def layer_macs(swin: Any, stages: Any, img_size: Tuple[int, int], keep: Optional[Any] = None,
               head: bool = False) -> List[Tuple[Any, float]]:
    """The one MACs model of the project: every multiply-accumulate of a timm Swin V1, layer by layer.

    Returns ``(weight, macs)`` per linear / conv layer (``weight`` = its weight Parameter, so weight pruning can
    scale it by its kept fraction, DIMAP Table 1) and ``(None, macs)`` for the attention matmuls q @ k^T and
    attn @ v. Tokens: patch-embedding grid from ``img_size`` and the conv's stride (padded when the embedding
    pads); PatchMerging halves the map (odd sizes padded); per block, attention over the padded windows and the
    MLP over the H x W real tokens, windows clamped to the map as timm clamps them. With ``keep`` (kept windows
    k of every block, one list per stage: SparseViT, Sec. 3.1) a block keeping k < nW windows runs LN,
    attention and MLP on k windows only (k = 0: nothing).

    Args:
        swin: the timm Swin (``patch_embed``, optional classifier ``head``).
        stages: its stages (``layers``), each with ``downsample`` and ``blocks``.
        img_size: (H, W) in pixels.
        keep: kept windows per block, or None (dense).
        head: add the classifier's linear layers (one token each).

    Raises:
        ValueError: ``img_size`` smaller than the patch.
    """
    import math

    import torch.nn as nn

    out: List[Tuple[Any, float]] = []
    pe = swin.patch_embed
    conv = pe.proj
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    if getattr(pe, "dynamic_img_pad", False) or not getattr(pe, "strict_img_size", True):
        gh, gw = math.ceil(img_size[0] / sh), math.ceil(img_size[1] / sw)
    else:
        gh, gw = (img_size[0] - kh) // sh + 1, (img_size[1] - kw) // sw + 1
    if gh <= 0 or gw <= 0:
        raise ValueError(f"img_size {img_size} is smaller than the patch size {(kh, kw)}")
    out.append((conv.weight, float(gh * gw * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw)))
    h, w = gh, gw
    for s, stage in enumerate(stages):
        ds = getattr(stage, "downsample", None)
        if ds is not None and not isinstance(ds, nn.Identity):
            h, w = (h + 1) // 2, (w + 1) // 2  # PatchMerging pads odd sizes
            out.append((ds.reduction.weight, float(h * w * ds.reduction.in_features * ds.reduction.out_features)))
        for j, blk in enumerate(stage.blocks):
            ws = tuple(blk.window_size)
            if not getattr(blk, "always_partition", False):
                ws = (min(ws[0], h), min(ws[1], w))
            area = ws[0] * ws[1]
            nw = math.ceil(h / ws[0]) * math.ceil(w / ws[1])
            k = nw if keep is None else int(keep[s][j])
            if k >= nw:  # dense timm block: attention over padded windows, MLP over the real tokens
                n_attn, n_mlp = float(nw * area), float(h * w)
            else:  # window-level execution on the k kept windows
                n_attn = n_mlp = float(k * area)
            attn = blk.attn
            attn_dim = attn.qkv.out_features // 3
            out.append((attn.qkv.weight, n_attn * attn.qkv.in_features * attn.qkv.out_features))
            out.append((None, 2.0 * n_attn * area * attn_dim))
            out.append((attn.proj.weight, n_attn * attn.proj.in_features * attn.proj.out_features))
            out.append((blk.mlp.fc1.weight, n_mlp * blk.mlp.fc1.in_features * blk.mlp.fc1.out_features))
            out.append((blk.mlp.fc2.weight, n_mlp * blk.mlp.fc2.in_features * blk.mlp.fc2.out_features))
    if head and isinstance(getattr(swin, "head", None), nn.Module):
        for m in swin.head.modules():
            if isinstance(m, nn.Linear):
                out.append((m.weight, float(m.in_features * m.out_features)))
    return out


def count_macs(model: Any, img_size: Union[int, Tuple[int, int], None] = None, include_head: bool = True,
               ratios: Optional[Any] = None) -> int:
    """Analytic MACs per image of a SparseSwin (or a model with a ``.backbone`` SparseSwin).

    Dense blocks are counted the way timm runs them: attention over the padded windows, MLP over
    the H x W real tokens. A block keeping k < nW windows runs everything on k windows.

    Args:
        model: a :class:`supernet.SparseSwin`, or a model with ``.backbone`` (a SparseSwin) and an
            optional ``head_macs(img_size) -> int`` method (e.g. the segmentation supernet).
        img_size: input size in pixels, int or (H, W); default: the model's own.
        include_head: add the classifier / segmentation head.
        ratios: a sparsity config to count instead of the model's current one.

    Returns:
        MACs per image (int). Dense Swin-T at 224 gives about 4.5 G.

    Raises:
        ValueError: ``ratios`` does not fit the model (see ``validate_sparsity``).
    """
    from .sparse_swin import validate_sparsity

    top = model
    model = getattr(model, "backbone", model)
    cfg = model.sparsity if ratios is None else validate_sparsity(ratios, model.depths)
    size = img_size if img_size is not None else model.img_size
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    keep = model.keep_counts(size, cfg)
    total = sum(m for _, m in layer_macs(model, model.layers, size, keep))
    if include_head:
        if top is not model and hasattr(top, "head_macs"):
            total += int(top.head_macs(img_size))
        elif top is model:
            fc = getattr(model.head, "fc", None)
            if fc is not None and hasattr(fc, "in_features"):
                total += fc.in_features * fc.out_features
    return int(total)
