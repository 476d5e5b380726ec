"""Analytic multiply-accumulate (MACs) counts of a SparseSwin at its current sparsity.

Counts what the Swin paper counts as FLOPs (Liu et al. 2021, Table 1: Swin-T 4.5 G at 224 are
multiply-accumulates): every linear / conv layer's MACs and the two attention matmuls
(q @ k^T and attn @ v). LayerNorm, softmax, GELU, additions and the window scoring are not counted.

Window-level execution (SparseViT Sec. 3.1): a block that keeps k of nW windows runs LN, attention
and MLP on k * N tokens (N = window area), so its MACs scale by k / nW exactly.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

__all__ = ["count_macs", "block_macs_per_window", "backbone_fixed_macs"]


def block_macs_per_window(dim: int, window_area: int, mlp_hidden: int, attn_dim: Optional[int] = None) -> int:
    """MACs of one Swin block on one window of ``window_area`` tokens.

    Per token: qkv (C x 3A), proj (A x C), fc1 (C x hidden), fc2 (hidden x C); per window the
    attention matmuls q @ k^T and attn @ v, N x N x A each (A = heads x head_dim, usually C).
    """
    a = attn_dim or dim
    per_token = dim * 3 * a + a * dim + dim * mlp_hidden + mlp_hidden * dim
    return window_area * per_token + 2 * window_area * window_area * a


def _blk_shapes(blk) -> Tuple[int, int, int]:
    dim = blk.norm1.normalized_shape[0]
    attn_dim = blk.attn.qkv.out_features // 3
    hidden = blk.mlp.fc1.out_features
    return dim, attn_dim, hidden


def backbone_fixed_macs(model: Any, img_size: Union[int, Tuple[int, int], None] = None) -> dict:
    """MACs of the parts that do not depend on the sparsity: patch embedding and PatchMerging.

    Returns:
        ``{"patch_embed": int, "downsample": [int per stage]}`` (MACs per image).
    """
    res = model.block_resolutions(img_size)
    conv = model.patch_embed.proj
    h0, w0 = res[0]
    pe = h0 * w0 * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    down = []
    for i, stage in enumerate(model.layers):
        ds = stage.downsample
        if hasattr(ds, "reduction"):
            h, w = res[i]
            down.append(h * w * ds.reduction.in_features * ds.reduction.out_features)
        else:
            down.append(0)
    return {"patch_embed": pe, "downsample": down}


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
    from .sparse_swin import validate_sparsity, keep_count

    top = model
    model = getattr(model, "backbone", model)
    cfg = model.sparsity if ratios is None else validate_sparsity(ratios, model.depths)
    res = model.block_resolutions(img_size)
    fixed = backbone_fixed_macs(model, img_size)
    total = fixed["patch_embed"] + sum(fixed["downsample"])
    for (h, w), stage, rs in zip(res, model.layers, cfg):
        for blk, r in zip(stage.blocks, rs):
            dim, attn_dim, hidden = _blk_shapes(blk)
            wh, ww = blk.window_size
            n = wh * ww
            nw = -(-h // wh) * -(-w // ww)
            k = keep_count(nw, r)
            if k == nw:  # dense timm block: attention over padded windows, MLP over real tokens
                attn_part = n * (dim * 3 * attn_dim + attn_dim * dim) + 2 * n * n * attn_dim
                total += nw * attn_part + h * w * 2 * dim * hidden
            else:
                total += k * block_macs_per_window(dim, n, hidden, attn_dim)
    if include_head:
        if top is not model and hasattr(top, "head_macs"):
            total += int(top.head_macs(img_size))
        elif top is model:
            fc = getattr(model.head, "fc", None)
            if fc is not None and hasattr(fc, "in_features"):
                total += fc.in_features * fc.out_features
    return int(total)
