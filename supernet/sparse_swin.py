"""SparseSwin: timm's Swin Transformer (V1) with SparseViT window-level activation pruning.

SparseViT (Chen et al., CVPR 2023, arXiv 2303.17605, Sec. 3.1 "Window activation pruning") prunes
whole windows of activations: each window is scored by the L2 norm of its tokens' importance
(token importance = mean |x| over channels, x = block input before ``norm1``), the top-k windows of
a block run LN -> window attention -> residual -> LN -> MLP -> residual at window level, and the
pruned windows pass through the block unchanged. Per-block sparsity ratios are set at run time, so
one set of weights (the supernet) serves every configuration.

One addition, opt-in per model (``window_importance="centred"``, recorded in the checkpoint sidecar): token
importance = mean |x - mean token of the image| instead of mean |x| (:func:`token_importance`), for scenes
whose background maps to large uniform activations, where magnitude ranks background windows first.

The file reads like timm's ``swin_transformer.py``: helpers, then the block-level sparse forward,
then the model. The weights stay the timm modules themselves (``patch_embed``, ``layers``,
``norm``, ``head``), so a timm Swin state_dict loads unchanged and a SparseSwin state_dict loads
into timm.

Facts kept from the reference code (mit-han-lab/sparsevit, ``mmdet/models/backbones/sparsevit.py``):

* scores are computed once per stage, at the first block whose ratio is > 0, and reused by the
  later blocks of that stage; shifted blocks get their own ranking, scored on the rolled map;
* ``k = int(nW * (1 - r))`` windows are kept per image (the same k for every image of a batch);
  ratios are non-decreasing inside a stage, so later blocks keep a prefix of the ranking;
* the shifted-window attention mask ``(nW, N, N)`` is gathered with the same indices;
* a block with ``k = 0`` is the identity.

Where timm and the reference differ, timm's semantics win so that a kept window computes exactly
what the dense model computes for it: the map is rolled before it is padded (timm's order) and
padded tokens are zero after ``norm1`` (timm pads after the norm). With every ratio 0 the dense timm
blocks run as they are, so the output equals timm's bit for bit.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SparseSwin", "validate_sparsity", "keep_count", "SparsityConfig", "DEFAULT_RATIOS", "WINDOW_IMPORTANCE",
           "token_importance", "StageRanking"]

SparsityConfig = List[List[float]]

#: The SparseViT reference ratio grid {0, 0.1, ..., 0.8} (training draws, search space, profiling).
DEFAULT_RATIOS: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(9))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def keep_count(num_windows: int, ratio: float) -> int:
    """Windows a block keeps: ``int(nW * (1 - r))`` (SparseViT reference, ``BasicLayer.forward``).

    Args:
        num_windows: nW, windows per image of the block (after padding).
        ratio: sparsity ratio r, 0 <= r < 1.

    Returns:
        k, 0 <= k <= nW. ``r == 0`` always gives nW.
    """
    if ratio <= 0.0:
        return num_windows
    return max(0, min(num_windows, int(num_windows * (1.0 - ratio))))


def validate_sparsity(ratios: Any, depths: Sequence[int]) -> SparsityConfig:
    """Check a per-block sparsity config against a model's depths and return it as floats.

    Args:
        ratios: one list per stage, one ratio per block, e.g. ``[[.7,.7],[0,0],[.2,.2,.4,.4,.5,.5],[0,0]]``
            for Swin-T (depths 2-2-6-2). A single number is broadcast to every block.
        depths: blocks per stage.

    Returns:
        The config as ``list[list[float]]``.

    Raises:
        ValueError: the number of stages or of blocks in a stage does not match ``depths``, a ratio
            is outside [0, 1), not a finite number, or a stage's ratios decrease (SparseViT keeps a
            prefix of the previous block's windows, so ratios must be non-decreasing in a stage).
    """
    if isinstance(ratios, (int, float)):
        ratios = [[float(ratios)] * d for d in depths]
    try:
        stages = [list(s) for s in ratios]
    except TypeError as e:
        raise ValueError(f"sparsity config must be a list of per-stage lists of ratios, got {ratios!r}") from e
    if len(stages) != len(depths):
        raise ValueError(
            f"sparsity config has {len(stages)} stages but the model has {len(depths)} (depths {list(depths)})")
    out: SparsityConfig = []
    for i, (stage, depth) in enumerate(zip(stages, depths)):
        if len(stage) != depth:
            raise ValueError(f"stage {i} has {len(stage)} ratios but {depth} blocks (depths {list(depths)})")
        vals = []
        for j, r in enumerate(stage):
            try:
                r = float(r)
            except (TypeError, ValueError) as e:
                raise ValueError(f"stage {i} block {j}: ratio {r!r} is not a number") from e
            if not math.isfinite(r) or r < 0.0 or r >= 1.0:
                raise ValueError(f"stage {i} block {j}: ratio {r} is outside [0, 1)")
            if vals and r < vals[-1]:
                raise ValueError(
                    f"stage {i}: ratios must be non-decreasing inside a stage, got {stage} "
                    f"(block {j} has {r} < {vals[-1]})")
            vals.append(r)
        out.append(vals)
    return out


def _window_geometry(blk: nn.Module, H: int, W: int) -> Tuple[int, int, int, int]:
    """(Hp, Wp, nH, nW_cols) of a block's padded map and window grid."""
    wh, ww = blk.window_size
    Hp = math.ceil(H / wh) * wh
    Wp = math.ceil(W / ww) * ww
    return Hp, Wp, Hp // wh, Wp // ww


def _partition(x: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * nW, N, C), each image's windows contiguous in row-major order (timm)."""
    B, Hp, Wp, C = x.shape
    wh, ww = window_size
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * (Hp // wh) * (Wp // ww), wh * ww, C)


def _reverse(windows: torch.Tensor, window_size: Tuple[int, int], B: int, Hp: int, Wp: int) -> torch.Tensor:
    """(B * nW, N, C) -> (B, Hp, Wp, C); inverse of :func:`_partition`."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.view(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hp, Wp, C)


def _drop_path(x: torch.Tensor, module: nn.Module, batch: int) -> torch.Tensor:
    """Apply timm's DropPath per *image* to window-level tensors (B * k, N, C)."""
    if isinstance(module, nn.Identity) or not module.training:
        return x
    shape = x.shape
    return module(x.reshape(batch, -1, shape[-1])).reshape(shape)


# --------------------------------------------------------------------------------------------
# window ranking and the block-level sparse forward
# --------------------------------------------------------------------------------------------
#: Token importance criteria (:func:`token_importance`): ``"magnitude"`` is SparseViT's (Sec. 3.1, the reference code);
#: ``"centred"`` measures each token's distance from the image's mean token instead.
WINDOW_IMPORTANCE: Tuple[str, ...] = ("magnitude", "centred")


def token_importance(x: torch.Tensor, kind: str = "magnitude") -> torch.Tensor:
    """Token importance of a block input, from which windows are ranked (:func:`rank_windows`).

    * ``"magnitude"``: mean |x| over channels (SparseViT Sec. 3.1; reference ``x.abs().mean(-1)``).
    * ``"centred"``: mean |x - m| over channels, m = the mean token of the image's map (B, 1, 1, C). Magnitude
      ranks a window by how large its activations are; on scenes whose background maps to large, uniform
      activations (the Fashion-MNIST mosaics after PatchMerging) that puts background first: measured in
      RESULTS.md R1 ("window ranking"), where the shipped supernet's stage-2 kept windows at ratio 0.7 held 6 %
      of item pixels by magnitude and 78 % centred. Centring costs one mean over the map per pruned stage.

    Args:
        x: (B, H, W, C) block input before ``norm1``.
        kind: one of :data:`WINDOW_IMPORTANCE`.

    Returns:
        (B, H, W) importance, float.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "magnitude":
        return x.abs().mean(-1)
    if kind == "centred":
        return (x - x.mean((1, 2), keepdim=True)).abs_().mean(-1)
    raise ValueError(f"window importance must be one of {WINDOW_IMPORTANCE}, got {kind!r}")


def rank_windows(importance: torch.Tensor, blk: nn.Module) -> torch.Tensor:
    """Rank a block's windows by SparseViT window importance, most important first.

    Window importance = L2 norm of the token importances inside the window (SparseViT Sec. 3.1;
    reference ``torch.linalg.vector_norm(win_act, ord=2)``), computed on the map the block
    partitions: rolled by the block's shift, then zero-padded to a multiple of the window size.

    Args:
        importance: (B, H, W) token importance, mean |x| over channels.
        blk: the timm ``SwinTransformerBlock`` whose window grid is ranked.

    Returns:
        (B, nW) int64 window indices sorted by descending importance (ties: lower index first).
    """
    B, H, W = importance.shape
    sh = blk.shift_size
    a = importance
    if any(sh):
        a = torch.roll(a, shifts=(-sh[0], -sh[1]), dims=(1, 2))
    Hp, Wp, _, _ = _window_geometry(blk, H, W)
    if Hp != H or Wp != W:
        a = F.pad(a, (0, Wp - W, 0, Hp - H))
    wins = _partition(a.unsqueeze(-1), blk.window_size).view(B, -1, blk.window_area)
    score = torch.linalg.vector_norm(wins.float(), ord=2, dim=-1)  # (B, nW)
    return torch.sort(score, dim=1, descending=True, stable=True).indices


_VALID_CACHE: Dict[Tuple, torch.Tensor] = {}


def _valid_tokens(H: int, W: int, blk: nn.Module, device: torch.device) -> Optional[torch.Tensor]:
    """(nW, N, 1) float mask of real (not padding) tokens of the padded, partitioned map, or None."""
    Hp, Wp, _, _ = _window_geometry(blk, H, W)
    if Hp == H and Wp == W:
        return None
    key = (H, W, tuple(blk.window_size), str(device))
    m = _VALID_CACHE.get(key)
    if m is None:
        ones = torch.ones(1, H, W, 1, device=device)
        m = _partition(F.pad(ones, (0, 0, 0, Wp - W, 0, Hp - H)), blk.window_size)
        _VALID_CACHE[key] = m
    return m


_TOKEN_CACHE: Dict[Tuple, torch.Tensor] = {}
#: How :func:`sparse_block_forward` runs a block whose map is a multiple of the window size: ``"gather"`` (kept
#: windows' tokens gathered by index, one full-map copy) or ``"partition"`` (roll + partition the whole map, the
#: path padded maps take). Bit-identical results; ``bench/window_pruning.py --compare-paths`` times both.
UNPADDED_PATH = "gather"


def _window_tokens(H: int, W: int, blk: nn.Module, device: torch.device) -> torch.Tensor:
    """(nW, N) int64: for each window of the block's shifted partition, the flat (row-major) positions in the
    unshifted (H, W) map of its tokens, in the token order of timm's partition. The cyclic shift is folded into
    the indices (token (i, j) of the rolled map is ((i + s_h) mod H, (j + s_w) mod W) of the input), so kept
    windows are gathered from, and written back to, the block's input without rolling or partitioning the
    whole map. For maps that are a multiple of the window size (no padding)."""
    key = (H, W, tuple(blk.window_size), tuple(blk.shift_size), str(device))
    t = _TOKEN_CACHE.get(key)
    if t is None:
        wh, ww = blk.window_size
        sh = blk.shift_size
        rows = (torch.arange(H) + sh[0]) % H
        cols = (torch.arange(W) + sh[1]) % W
        flat = (rows[:, None] * W + cols[None, :]).reshape(1, H, W, 1)  # flat position of each rolled token
        t = _partition(flat, (wh, ww)).reshape(-1, wh * ww).to(device)
        _TOKEN_CACHE[key] = t
    return t


class StageRanking:
    """One window ranking of a stage (:func:`rank_windows`) and what the gather path derives from it, computed
    once for every block of the stage that shares it (same shift, so the same window grid): the token positions
    of the ranked windows, and the ranked shifted-window masks. Ratios are non-decreasing in a stage, so each
    later block keeps a prefix of the ranking, and its indices and masks are a prefix (a view for batch 1) of
    the first block's.

    Args:
        order: (B, nW) int64 window indices, most important first.
    """

    __slots__ = ("order", "_index", "_masks")

    def __init__(self, order: torch.Tensor):
        self.order = order
        self._index: Optional[torch.Tensor] = None
        self._masks: Optional[torch.Tensor] = None

    def token_index(self, blk: nn.Module, H: int, W: int, k: int) -> torch.Tensor:
        """(B * k * N,) int64 flat positions in the (B * H * W) input of the top-k windows' tokens (timm's token
        order, cyclic shift folded in; :func:`_window_tokens`)."""
        if self._index is None:
            B, nW = self.order.shape
            tokens = _window_tokens(H, W, blk, self.order.device)  # (nW, N)
            idx = tokens.index_select(0, self.order.reshape(-1)).view(B, -1)
            if B > 1:
                idx = idx + (torch.arange(B, device=idx.device) * (H * W)).unsqueeze(1)
            self._index = idx  # (B, nW * N)
        return self._index[:, :k * blk.window_area].reshape(-1)

    def masks(self, full_mask: torch.Tensor, k: int) -> torch.Tensor:
        """(B * k, N, N) shifted-window attention masks of the top-k windows, from the block's (nW, N, N) mask."""
        if self._masks is None or self._masks.shape[1] < k:
            B = self.order.shape[0]
            self._masks = full_mask.index_select(0, self.order[:, :k].reshape(-1)).view(B, k, *full_mask.shape[1:])
        m = self._masks[:, :k]
        return m.reshape(-1, *m.shape[2:])


def sparse_block_forward(blk: nn.Module, x: torch.Tensor, keep: torch.Tensor, *, inplace: bool = False,
                         ranking: Optional[StageRanking] = None) -> torch.Tensor:
    """Run one timm ``SwinTransformerBlock`` on the kept windows only (SparseViT window-level execution).

    For the kept windows: LN1 -> (S)W-MSA with the gathered shift mask -> residual -> LN2 -> MLP ->
    residual, exactly the dense block's arithmetic restricted to those windows. Pruned windows pass
    through unchanged (no LN, attention, MLP or residual update).

    Args:
        blk: timm ``SwinTransformerBlock`` (weights are used as they are).
        x: (B, H, W, C) block input.
        keep: (B, k) int64 indices of the kept windows of each image (0 < k < nW).
        inplace: the kept windows' outputs may be written into ``x`` itself (the caller owns it and no longer
            needs it; only without autograd): saves the copy of the whole map a pruned block otherwise makes.
        ranking: the stage's ranking ``keep`` is a prefix of, whose token indices and masks are reused.

    Returns:
        (B, H, W, C) block output (``x`` itself when written in place).
    """
    H, W = x.shape[1:3]
    Hp, Wp, _, _ = _window_geometry(blk, H, W)
    if Hp == H and Wp == W and UNPADDED_PATH == "gather":
        return _gather_block_forward(blk, x, keep, inplace=inplace, ranking=ranking)
    return _partition_block_forward(blk, x, keep)


def _partition_block_forward(blk: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """:func:`sparse_block_forward` on any map (padded ones too): roll, pad, partition the whole map, gather the
    kept windows, compute, scatter, reverse, crop, roll back."""
    B, H, W, C = x.shape
    sh = blk.shift_size
    has_shift = any(sh)
    Hp, Wp, _, _ = _window_geometry(blk, H, W)
    xs = torch.roll(x, shifts=(-sh[0], -sh[1]), dims=(1, 2)) if has_shift else x
    if Hp != H or Wp != W:
        xs = F.pad(xs, (0, 0, 0, Wp - W, 0, Hp - H))
    windows = _partition(xs, blk.window_size)  # (B * nW, N, C), a fresh tensor
    nW = windows.shape[0] // B
    k = keep.shape[1]
    flat = (keep + torch.arange(B, device=x.device).unsqueeze(1) * nW).reshape(-1)  # (B * k,)

    shortcut = windows.index_select(0, flat)  # (B * k, N, C)
    h = blk.norm1(shortcut)
    valid = _valid_tokens(H, W, blk, x.device)
    if valid is not None:  # timm pads after norm1: padded tokens enter attention as zeros
        h = h * valid.index_select(0, flat % nW)
    mask = None
    if has_shift:
        full_mask = blk.get_attn_mask(xs) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
        mask = full_mask.index_select(0, flat % nW)  # (B * k, N, N): one mask per kept window
    h = blk.attn(h, mask=mask)
    y = shortcut + _drop_path(h, blk.drop_path1, B)
    y = y + _drop_path(blk.mlp(blk.norm2(y)), blk.drop_path2, B)

    if torch.is_grad_enabled() and (y.requires_grad or windows.requires_grad):
        windows = windows.index_copy(0, flat, y)  # out of place: autograd-safe
    else:
        windows.index_copy_(0, flat, y)
    out = _reverse(windows, blk.window_size, B, Hp, Wp)
    if Hp != H or Wp != W:
        out = out[:, :H, :W, :]
    if has_shift:
        out = torch.roll(out, shifts=sh, dims=(1, 2))
    return out.contiguous()


def _gather_block_forward(blk: nn.Module, x: torch.Tensor, keep: torch.Tensor, inplace: bool = False,
                          ranking: Optional[StageRanking] = None) -> torch.Tensor:
    """:func:`sparse_block_forward` for an unpadded map: the kept windows' tokens are gathered from the input by
    index (:func:`_window_tokens`) and the block's outputs written back into a copy of it, one full-map copy in
    all (the roll / partition / reverse / roll path makes four), none with ``inplace``. Same arithmetic on the
    same tokens in the same order, so the result equals that path bit for bit."""
    B, H, W, C = x.shape
    N = blk.window_area
    if ranking is not None:
        idx = ranking.token_index(blk, H, W, keep.shape[1])
    else:
        tokens = _window_tokens(H, W, blk, x.device)  # (nW, N)
        idx = (tokens.index_select(0, keep.reshape(-1)).view(B, -1)
               + (torch.arange(B, device=x.device) * (H * W)).unsqueeze(1)).reshape(-1)  # (B * k * N,)
    flat_x = x.reshape(B * H * W, C)
    shortcut = flat_x.index_select(0, idx).view(-1, N, C)  # (B * k, N, C)
    mask = None
    if any(blk.shift_size):
        full_mask = blk.get_attn_mask(x) if getattr(blk, "dynamic_mask", False) else blk.attn_mask
        if ranking is not None:
            mask = ranking.masks(full_mask, keep.shape[1])
        else:
            mask = full_mask.index_select(0, keep.reshape(-1))  # (B * k, N, N): one mask per kept window
    h = blk.attn(blk.norm1(shortcut), mask=mask)
    y = shortcut + _drop_path(h, blk.drop_path1, B)
    y = y + _drop_path(blk.mlp(blk.norm2(y)), blk.drop_path2, B)
    if inplace and not (torch.is_grad_enabled() and (y.requires_grad or x.requires_grad)):
        return flat_x.index_copy_(0, idx, y.reshape(-1, C)).view(B, H, W, C)
    out = flat_x.index_copy(0, idx, y.reshape(-1, C))  # out of place: a copy of x with the kept windows updated
    return out.view(B, H, W, C)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
class SparseSwin(nn.Module):
    """timm Swin Transformer (V1) with run-time per-block SparseViT window pruning (the supernet).

    ``SparseSwin(timm_model)`` adopts the timm model's modules under the same names, so
    ``state_dict()`` keys are timm's and any timm Swin checkpoint loads with ``load_state_dict``.

    Args:
        model: a ``timm.models.swin_transformer.SwinTransformer``.
        window_importance: token importance of the window ranking (:data:`WINDOW_IMPORTANCE`, default SparseViT's
            ``"magnitude"``).

    Attributes:
        depths: blocks per stage.
        sparsity: the current per-block config (see :meth:`set_sparsity`).

    Input / output layouts:
        ``forward(x)``: (B, 3, H, W) -> (B, num_classes) logits (timm classifier head).
        ``forward_stages(x)``: (B, 3, H, W) -> list of (B, C_i, H_i, W_i) stage outputs (NCHW, no norm),
        for dense-prediction heads.

    Raises:
        TypeError: the model is not a timm Swin V1 ``SwinTransformer``.
        ValueError: unknown ``window_importance``.
    """

    def __init__(self, model: nn.Module, window_importance: str = "magnitude"):
        super().__init__()
        if window_importance not in WINDOW_IMPORTANCE:
            raise ValueError(f"window_importance must be one of {WINDOW_IMPORTANCE}, got {window_importance!r}")
        #: token importance criterion of the window ranking (:func:`token_importance`); weight-independent
        self.window_importance = window_importance
        from timm.models.swin_transformer import SwinTransformer

        if not isinstance(model, SwinTransformer):
            raise TypeError(f"SparseSwin wraps timm's SwinTransformer (V1), got {type(model).__name__}")
        self.patch_embed = model.patch_embed
        self.layers = model.layers
        self.norm = model.norm
        self.head = model.head
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.embed_dim = model.embed_dim
        self.depths = tuple(len(s.blocks) for s in model.layers)
        self.stage_dims = tuple(s.blocks[0].dim for s in model.layers)
        self.patch_size = tuple(model.patch_embed.patch_size)
        self.img_size = tuple(model.patch_embed.img_size) if model.patch_embed.img_size is not None else None
        self.default_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        self._sparsity: SparsityConfig = [[0.0] * d for d in self.depths]

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_timm(cls, name: str, img_size: Union[int, Tuple[int, int]] = 224, window_importance: str = "magnitude",
                  **timm_kwargs: Any) -> "SparseSwin":
        """Build a timm Swin by name (never downloads: ``pretrained=False``) and wrap it.

        Args:
            name: a timm Swin V1 name, e.g. ``swin_tiny_patch4_window7_224``; custom sizes through
                ``embed_dim``, ``depths``, ``num_heads`` in ``timm_kwargs``.
            img_size: input size (int or (H, W)); sizes that are not a multiple of patch * window
                are padded the way timm pads them.
            window_importance: the window ranking's token importance (:data:`WINDOW_IMPORTANCE`).
            **timm_kwargs: passed to ``timm.create_model`` (``num_classes``, ``drop_path_rate`` ...).

        Raises:
            ValueError: ``pretrained=True`` was asked for (no downloads here: load a state_dict).
        """
        import timm

        if timm_kwargs.pop("pretrained", False):
            raise ValueError("pretrained=True would download weights; build the model and load_state_dict a local file")
        model = timm.create_model(name, pretrained=False, img_size=img_size, **timm_kwargs)
        return cls(model, window_importance=window_importance)

    # ---- sparsity -------------------------------------------------------------------------
    @property
    def sparsity(self) -> SparsityConfig:
        """The current per-block sparsity config, one list of ratios (0..1) per stage."""
        return [list(s) for s in self._sparsity]

    def set_sparsity(self, ratios: Any) -> "SparseSwin":
        """Set the per-block sparsity ratios used by the next forward passes.

        Args:
            ratios: one list per stage, one ratio (0 <= r < 1) per block, non-decreasing inside a
                stage; or one number for every block.

        Raises:
            ValueError: see :func:`validate_sparsity`.
        """
        self._sparsity = validate_sparsity(ratios, self.depths)
        return self

    def block_resolutions(self, img_size: Union[int, Tuple[int, int], None] = None) -> List[Tuple[int, int]]:
        """(H, W) token grid of each stage's blocks for an input of ``img_size`` pixels."""
        if img_size is None:
            img_size = self.img_size
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        h, w = math.ceil(h / self.patch_size[0]), math.ceil(w / self.patch_size[1])
        out = []
        for i in range(len(self.depths)):
            if i > 0:
                h, w = (h + 1) // 2, (w + 1) // 2
            out.append((h, w))
        return out

    def num_windows(self, img_size: Union[int, Tuple[int, int], None] = None) -> List[List[int]]:
        """nW, windows per image of every block (after padding), one list per stage."""
        out = []
        for (h, w), stage in zip(self.block_resolutions(img_size), self.layers):
            row = []
            for blk in stage.blocks:
                _, _, nh, nw = _window_geometry(blk, h, w)
                row.append(nh * nw)
            out.append(row)
        return out

    def keep_counts(self, img_size: Union[int, Tuple[int, int], None] = None,
                    ratios: Optional[Any] = None) -> List[List[int]]:
        """Kept windows k of every block at ``ratios`` (default: the current sparsity)."""
        cfg = self._sparsity if ratios is None else validate_sparsity(ratios, self.depths)
        return [[keep_count(n, r) for n, r in zip(nws, rs)] for nws, rs in zip(self.num_windows(img_size), cfg)]

    # ---- forward --------------------------------------------------------------------------
    def forward_stage(self, i: int, x: torch.Tensor, ratios: Optional[Sequence[float]] = None) -> torch.Tensor:
        """Run stage ``i`` (PatchMerging then blocks) at the given ratios.

        Args:
            i: stage index.
            x: (B, H, W, C) stage input (the previous stage's output, or the patch embedding).
            ratios: per-block ratios of this stage (default: the current sparsity).

        Returns:
            (B, H', W', C') stage output.
        """
        stage = self.layers[i]
        ratios = self._sparsity[i] if ratios is None else ratios
        x = stage.downsample(x)
        # x is this stage's own tensor once a block (or PatchMerging) has produced it: a pruned block may then
        # write its kept windows back in place instead of copying the map (the stage input may be held elsewhere)
        owned = not isinstance(stage.downsample, nn.Identity)
        importance: Optional[torch.Tensor] = None
        rankings: Dict[Tuple[int, int], StageRanking] = {}
        for blk, r in zip(stage.blocks, ratios):
            if r <= 0.0:
                x = blk(x)
                owned = True
                continue
            if importance is None:  # once per stage, at the first pruned block (reference)
                importance = token_importance(x.detach(), self.window_importance)
            key = tuple(blk.shift_size)
            ranking = rankings.get(key)
            if ranking is None:
                ranking = rankings[key] = StageRanking(rank_windows(importance, blk))
            order = ranking.order
            k = keep_count(order.shape[1], r)
            if k == 0:
                continue  # every window pruned: the block is the identity
            if k == order.shape[1]:
                x = blk(x)
            else:
                x = sparse_block_forward(blk, x, order[:, :k], inplace=owned, ranking=ranking)
            owned = True
        return x

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Multi-stage features for dense prediction.

        Args:
            x: (B, 3, H, W) images.

        Returns:
            list of (B, C_i, H_i, W_i) stage outputs (NCHW, before any norm), one per stage.
        """
        x = self.patch_embed(x)
        feats = []
        for i in range(len(self.layers)):
            x = self.forward_stage(i, x)
            feats.append(x.permute(0, 3, 1, 2))
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H_last, W_last, C_last) normalised final features (timm layout NHWC)."""
        x = self.patch_embed(x)
        for i in range(len(self.layers)):
            x = self.forward_stage(i, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm classifier head: (B, H, W, C) -> (B, num_classes)."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits at the current sparsity."""
        return self.forward_head(self.forward_features(x))
