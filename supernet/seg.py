"""SegSupernet: a SparseSwin backbone with a light FPN-style segmentation head.

SparseViT targets dense prediction at high resolution (Sec. 4: Mask R-CNN, semantic segmentation);
this is the project's dense-prediction model: the four stage outputs of the SparseSwin are
projected to ``head_dim`` channels (1x1 conv), fused
top-down FPN-style (upsample + add), and a 3x3 conv + 1x1 classifier predicts logits at 1/4 of the
input resolution, bilinearly upsampled to the input size.

State dict: backbone keys are the timm keys under ``backbone.`` (``backbone.layers.0.blocks.0...``);
the head's keys live under ``decode.``.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sparse_swin import SparseSwin

__all__ = ["SegSupernet", "FPNLiteHead"]


class FPNLiteHead(nn.Module):
    """Top-down multi-scale fusion head (FPN-lite).

    Args:
        in_dims: channels of each stage output, e.g. (96, 192, 384, 768).
        head_dim: fused channels.
        num_classes: output classes (11 for the Fashion mosaic task: background + 10).
        stage_norm: a LayerNorm over channels on each used stage output (keys ``norms.*``).
        first_stage: the finest stage fused (0: logits at 1/4 of the input, 1: at 1/8).

    Shapes:
        ``forward(feats)``: list of (B, C_i, H_i, W_i), stage 0 first -> (B, num_classes, H_s, W_s),
        s = ``first_stage``.

    Raises:
        ValueError: ``first_stage`` out of range.
    """

    def __init__(self, in_dims: Sequence[int], head_dim: int = 64, num_classes: int = 11,
                 stage_norm: bool = False, first_stage: int = 0):
        super().__init__()
        if not 0 <= first_stage < len(in_dims):
            raise ValueError(f"first_stage {first_stage} out of range for {len(in_dims)} stages")
        self.in_dims = tuple(in_dims)
        self.head_dim = head_dim
        self.num_classes = num_classes
        self.first_stage = int(first_stage)
        self.stage_norm = bool(stage_norm)
        used = self.in_dims[self.first_stage:]
        if self.stage_norm:  # a LayerNorm over channels on every stage output (timm's stages end un-normalised)
            from timm.layers import LayerNorm2d

            self.norms = nn.ModuleList(LayerNorm2d(c) for c in used)
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_dim, 1) for c in used)
        self.fuse = nn.Sequential(
            nn.Conv2d(head_dim, head_dim, 3, padding=1, bias=False),
            nn.GroupNorm(8 if head_dim % 8 == 0 else 1, head_dim),
            nn.GELU(),
        )
        self.classifier = nn.Conv2d(head_dim, num_classes, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        feats = feats[self.first_stage:]
        if self.stage_norm:
            feats = [n(f) for n, f in zip(self.norms, feats)]
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            y = lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(y))

    def macs(self, resolutions: Sequence[Tuple[int, int]]) -> int:
        """Analytic MACs per image given each stage's (H, W) (stage norms not counted)."""
        total = 0
        resolutions = list(resolutions)[self.first_stage:]
        for (h, w), c in zip(resolutions, self.in_dims[self.first_stage:]):
            total += h * w * c * self.head_dim
        h0, w0 = resolutions[0]
        total += h0 * w0 * self.head_dim * self.head_dim * 9
        total += h0 * w0 * self.head_dim * self.num_classes
        return total


class SegSupernet(nn.Module):
    """Semantic-segmentation supernet: SparseSwin backbone + FPN-lite head.

    Args:
        backbone: a :class:`SparseSwin` (its per-block sparsity is the searched config).
        num_classes: segmentation classes.
        head_dim: channels of the fused head.

        head_norm, head_first_stage: see :class:`FPNLiteHead` (``stage_norm``, ``first_stage``).
        img_size: size of the images the model takes, int or (H, W) (default: the backbone's own).
            When it differs from the backbone's ``img_size`` the images are resized (bilinear,
            antialiased) by backbone size / ``img_size`` and the logits upsampled back: the *reduced input
            resolution* baseline of SparseViT (Sec. 4.4), same task, fewer pixels.

    Shapes:
        ``forward(x)``: (B, 3, H, W) -> (B, num_classes, H, W) logits.
    """

    def __init__(self, backbone: SparseSwin, num_classes: int = 11, head_dim: int = 64,
                 img_size: Union[int, Tuple[int, int], None] = None, head_norm: bool = False,
                 head_first_stage: int = 0):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.decode = FPNLiteHead(backbone.stage_dims, head_dim, num_classes, stage_norm=head_norm,
                                  first_stage=head_first_stage)
        own = backbone.img_size
        self.img_size: Optional[Tuple[int, int]] = (
            (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)) if img_size is not None \
            else (tuple(own) if own is not None else None)

    @classmethod
    def from_timm(cls, name: str, img_size: Union[int, Tuple[int, int]] = 224, num_classes: int = 11,
                  head_dim: int = 64, input_size: Union[int, Tuple[int, int], None] = None,
                  head_norm: bool = False, head_first_stage: int = 0, window_importance: str = "magnitude",
                  **timm_kwargs: Any) -> "SegSupernet":
        """Build a timm Swin (``pretrained=False``, classifier removed) and the head around it.

        Args:
            img_size: size of the images the model takes.
            input_size: the backbone's input size when it differs from ``img_size`` (reduced input
                resolution baseline); default ``img_size``.
            window_importance: the backbone's window ranking criterion (``sparse_swin.WINDOW_IMPORTANCE``).
        """
        timm_kwargs.setdefault("num_classes", 0)
        bb = SparseSwin.from_timm(name, img_size=input_size if input_size is not None else img_size,
                                  window_importance=window_importance, **timm_kwargs)
        return cls(bb, num_classes, head_dim, img_size=img_size, head_norm=head_norm,
                   head_first_stage=head_first_stage)

    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """The backbone's input size when the images are resized before it, else ``None``."""
        own = self.backbone.img_size
        if own is None or self.img_size is None or tuple(own) == tuple(self.img_size):
            return None
        return tuple(own)

    @property
    def depths(self) -> Tuple[int, ...]:
        return self.backbone.depths

    @property
    def sparsity(self):
        """Current per-block sparsity config of the backbone."""
        return self.backbone.sparsity

    def set_sparsity(self, ratios: Any) -> "SegSupernet":
        """Set per-block ratios (see :meth:`SparseSwin.set_sparsity`). Raises ValueError."""
        self.backbone.set_sparsity(ratios)
        return self

    def forward_head(self, feats: List[torch.Tensor], out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Stage features (list of NCHW) -> logits (B, K, H, W), upsampled to ``out_size`` if given."""
        logits = self.decode(feats)
        if out_size is not None:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits

    def _resize_input(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.input_size
        if inp is None:
            return x
        # same scale factor for any image size (e.g. the smaller [lowres] canvases)
        size = tuple(max(1, round(o * i / s)) for o, i, s in zip(x.shape[-2:], inp, self.img_size))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes, H, W) logits at the current sparsity."""
        out_size = tuple(x.shape[-2:])
        return self.forward_head(self.backbone.forward_stages(self._resize_input(x)), out_size=out_size)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes, H / 4, W / 4) logits, the head's native 1/4 resolution
        (resampled only when the head works at another scale), for losses against soft 4 x 4 targets
        (:mod:`supernet.losses`). H and W must be multiples of 4."""
        H, W = x.shape[-2:]
        logits = self.decode(self.backbone.forward_stages(self._resize_input(x)))
        if tuple(logits.shape[-2:]) != (H // 4, W // 4):
            logits = F.interpolate(logits, size=(H // 4, W // 4), mode="bilinear", align_corners=False)
        return logits

    def head_macs(self, img_size: Union[int, Tuple[int, int], None] = None) -> int:
        """Analytic MACs per image of the segmentation head (upsampling not counted)."""
        return self.decode.macs(self.backbone.block_resolutions(img_size))
