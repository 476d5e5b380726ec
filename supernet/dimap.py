"""DIMAP: data-independent module-aware weight pruning of timm Swin V1 (+ magnitude baselines).

Implements "Data-independent Module-aware Pruning for Hierarchical Vision Transformers"
(He and Zhou, ICLR 2024, arXiv 2404.13648) for any timm Swin V1 ``SwinTransformer``, or any module
that contains one under a prefix (``backbone.layers.0.blocks.0.attn.qkv.weight``; timm's
``features_only`` spelling ``layers_0.blocks...`` is matched too). Parameters are matched by name
suffix, never by exact prefix, and masks are keyed by the names of the model that is passed in.

Read top to bottom:

- :func:`dimap_scores` -- the per-layer importance of Sec. 3.2, Eq. 10 (equals LAMP).
- :data:`MODULES` / :func:`group_modules` -- QKV-M, PRJ-M, MLP-M of Sec. 3.1 / App. B; the AUX-M
  (patch embedding, PatchMerging, LayerNorms), biases, relative position bias tables and the head
  are never pruned.
- :func:`dimap_masks` -- one pooled threshold per module (Sec. 3.2), exact pruned counts.
- :func:`magnitude_masks` -- uniform per-layer and global |W| baselines (Table 3).
- :func:`apply_masks` / :class:`MaskHandle` -- zero weights in place, keep them at zero through
  fine-tuning (gradient hooks + optimizer step post-hook); ``state_dict`` keys never change.
- :func:`dense_backup` / :func:`restore` / :class:`WeightRestorer` -- bit-exact dense restore
  between joint-search trials.
- :func:`param_report` / :func:`macs_reduction` -- the paper's accounting (masked weights count as
  removed; FLOPs = pruned fraction of each linear layer's MACs, tokens per layer as in Swin).
- :data:`PAPER_TABLE1` / :func:`dimap_report` / :func:`format_report` -- our counts vs Table 1.

Masks are ``dict[str, torch.BoolTensor]``, True = keep, one entry per prunable weight, same shape
and device as the weight.

Example::

    >>> import timm
    >>> from supernet.dimap import dimap_masks, apply_masks
    >>> model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    >>> masks = dimap_masks(model, ratio=0.35)           # DIMAP2
    >>> handle = apply_masks(model, masks).attach(optimizer)
    >>> print(format_report(dimap_report("swin_tiny_patch4_window7_224")))

Unstructured masks bring no wall-clock speed-up with dense kernels: the MACs reported here are the
paper's FLOPs count, not a latency.
"""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = [
    "MODULES",
    "PAPER_TABLE1",
    "MaskHandle",
    "WeightRestorer",
    "apply_masks",
    "dense_backup",
    "dimap_masks",
    "dimap_report",
    "dimap_scores",
    "format_report",
    "group_modules",
    "macs_reduction",
    "magnitude_masks",
    "param_report",
    "restore",
]

#: The prunable modules of Sec. 3.1 / App. B: QKV-M, PRJ-M, MLP-M (AUX-M is never pruned).
MODULES: tuple[str, ...] = ("qkv", "proj", "mlp")

_STAGE_BLOCK = r"(?:^|\.)layers[._](\d+)\.blocks\.(\d+)\."
_MODULE_PATTERNS: dict[str, re.Pattern[str]] = {
    "qkv": re.compile(_STAGE_BLOCK + r"attn\.qkv\.weight$"),
    "proj": re.compile(_STAGE_BLOCK + r"attn\.proj\.weight$"),
    "mlp": re.compile(_STAGE_BLOCK + r"mlp\.fc[12]\.weight$"),
}

# --------------------------------------------------------------------------------------------
# Paper Table 1 (ImageNet-1k, 224 x 224; params and FLOPs count masked weights as removed).
# --------------------------------------------------------------------------------------------

#: Table 1 of the paper per timm model name: ``dense`` figures and ``dimap`` rows keyed by the
#: pruning ratio r of the qkv + proj + fc1 + fc2 weights (DIMAP1/2/3 = 0.15/0.35/0.55).
#: ``params_m`` in millions, ``flops_g`` in G (multiply-accumulates), reductions in percent,
#: top-1 / top-5 in percent.
PAPER_TABLE1: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": {
        "short": "T",
        "dense": {"params_m": 28.3, "flops_g": 4.5, "top1": 81.16, "top5": 95.48},
        "dimap": {
            0.15: {"label": "T-DIMAP1", "params_m": 24.4, "params_reduction_pct": 13.7,
                   "flops_g": 3.8, "flops_reduction_pct": 13.9, "top1": 81.17, "top5": 95.47},
            0.35: {"label": "T-DIMAP2", "params_m": 19.2, "params_reduction_pct": 32.0,
                   "flops_g": 3.0, "flops_reduction_pct": 32.4, "top1": 81.11, "top5": 95.42},
            0.55: {"label": "T-DIMAP3", "params_m": 14.0, "params_reduction_pct": 50.3,
                   "flops_g": 2.2, "flops_reduction_pct": 50.8, "top1": 80.35, "top5": 95.22},
        },
    },
    "swin_small_patch4_window7_224": {
        "short": "S",
        "dense": {"params_m": 49.6, "flops_g": 8.7, "top1": 83.19, "top5": 96.23},
        "dimap": {
            0.15: {"label": "S-DIMAP1", "params_m": 42.5, "params_reduction_pct": 14.2,
                   "flops_g": 7.5, "flops_reduction_pct": 14.3, "top1": 83.08, "top5": 96.25},
            0.35: {"label": "S-DIMAP2", "params_m": 33.1, "params_reduction_pct": 33.2,
                   "flops_g": 5.8, "flops_reduction_pct": 33.2, "top1": 82.99, "top5": 96.26},
            0.55: {"label": "S-DIMAP3", "params_m": 23.7, "params_reduction_pct": 52.2,
                   "flops_g": 4.1, "flops_reduction_pct": 52.3, "top1": 82.63, "top5": 96.12},
        },
    },
    "swin_base_patch4_window7_224": {
        "short": "B",
        "dense": {"params_m": 87.8, "flops_g": 15.4, "top1": 83.48, "top5": 96.46},
        "dimap": {
            0.15: {"label": "B-DIMAP1", "params_m": 75.2, "params_reduction_pct": 14.3,
                   "flops_g": 13.2, "flops_reduction_pct": 14.4, "top1": 83.52, "top5": 96.43},
            0.35: {"label": "B-DIMAP2", "params_m": 58.4, "params_reduction_pct": 33.4,
                   "flops_g": 10.2, "flops_reduction_pct": 33.5, "top1": 83.43, "top5": 96.42},
            0.55: {"label": "B-DIMAP3", "params_m": 41.7, "params_reduction_pct": 52.5,
                   "flops_g": 7.3, "flops_reduction_pct": 52.7, "top1": 83.28, "top5": 96.39},
        },
    },
}


# --------------------------------------------------------------------------------------------
# Eq. 10 score
# --------------------------------------------------------------------------------------------

def dimap_scores(weight: Tensor, ties: Literal["stable", "shared"] = "stable") -> Tensor:
    """Data-independent importance of every weight of one layer (Sec. 3.2, Eq. 10).

    With the layer's weights sorted by magnitude, descending (``|W_1| >= |W_2| >= ...``)::

        Imp(W_j) = W_j^2 / sum_{i <= j} W_i^2

    i.e. a weight's square over the sum of squares of every weight at least as large (itself
    included); equals the LAMP score (Lee et al., 2020). The largest weight of a layer scores 1,
    scores lie in [0, 1] and order the weights of one layer like their magnitude. Computed with
    one sort and one cumulative sum, accumulated in float64.

    Ties (equal magnitudes): with ``ties="stable"`` (default, as a LAMP-style sort) the sort is
    stable, so among equal magnitudes the weight with the lower flat (row-major) index comes first,
    gets the smaller denominator and so the higher score. With ``ties="shared"`` every weight of a
    tie group uses the denominator that includes the whole group (all weights with
    ``|W_i| >= |W_j|``), so equal magnitudes get equal scores. A weight whose denominator is 0
    (only possible when every weight of the layer is 0) scores 0.

    Args:
        weight: floating-point tensor of any shape (e.g. ``[out, in]`` linear weight).
        ties: ``"stable"`` or ``"shared"`` tie rule, see above.

    Returns:
        float64 tensor, same shape and device as ``weight``, values in [0, 1].

    Raises:
        ValueError: ``weight`` is not a floating-point tensor, holds NaN/inf, or ``ties`` is unknown.
    """
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point torch.Tensor, got {type(weight).__name__}"
                         f"{'' if not isinstance(weight, Tensor) else ' of dtype ' + str(weight.dtype)}")
    if ties not in ("stable", "shared"):
        raise ValueError(f"ties must be 'stable' or 'shared', got {ties!r}")
    w = weight.detach().reshape(-1).to(torch.float64)
    if w.numel() == 0:
        return w.reshape(weight.shape)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight holds NaN or inf values; DIMAP scores need finite weights")
    mag = w.abs()
    order = torch.argsort(mag, descending=True, stable=True)
    sorted_sq = mag[order].square()
    denom = torch.cumsum(sorted_sq, dim=0)
    if ties == "shared":
        _, counts = torch.unique_consecutive(mag[order], return_counts=True)
        group_end = torch.cumsum(counts, dim=0) - 1
        denom = denom[group_end].repeat_interleave(counts)
    sorted_scores = torch.where(denom > 0, sorted_sq / denom.clamp_min(torch.finfo(torch.float64).tiny),
                                torch.zeros_like(denom))
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


# --------------------------------------------------------------------------------------------
# Module grouping and ratio validation
# --------------------------------------------------------------------------------------------

def group_modules(model: nn.Module) -> dict[str, list[str]]:
    """Names of the prunable weights of a timm Swin V1, grouped by DIMAP module (Sec. 3.1, App. B).

    ``"qkv"`` (QKV-M): every block's ``attn.qkv.weight`` (``[3C, C]``); ``"proj"`` (PRJ-M): every
    ``attn.proj.weight`` (``[C, C]``); ``"mlp"`` (MLP-M): every ``mlp.fc1.weight`` (``[4C, C]``) and
    ``mlp.fc2.weight`` (``[C, 4C]``). Names are matched by suffix
    (``...layers.{i}.blocks.{j}.attn.qkv.weight``; ``layers_{i}`` also accepted), so a Swin nested
    under any prefix is found. AUX-M (patch embedding, PatchMerging, LayerNorms), biases, relative
    position bias tables and the head never match.

    Args:
        model: a timm ``SwinTransformer`` or any module containing one.

    Returns:
        ``{"qkv": [...], "proj": [...], "mlp": [...]}``, names in ``model.named_parameters()`` order.

    Raises:
        ValueError: the model has no parameter matching any of the three modules.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    groups: dict[str, list[str]] = {m: [] for m in MODULES}
    for name, _ in model.named_parameters():
        for module, pattern in _MODULE_PATTERNS.items():
            if pattern.search(name):
                groups[module].append(name)
                break
    if not any(groups.values()):
        raise ValueError("no Swin block weights (layers.{i}.blocks.{j}.attn.qkv/proj, mlp.fc1/fc2) "
                         "found in model")
    return groups


def _check_ratio(r: Any, what: str) -> float:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(float(r)):
        raise ValueError(f"{what} must be a finite real number in [0, 1), got {r!r}")
    r = float(r)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{what} must satisfy 0 <= r < 1, got {r}")
    return r


def _resolve_ratios(ratio: float | None, module_ratios: Mapping[str, float] | None) -> dict[str, float]:
    """Per-module ratios: ``module_ratios`` overrides ``ratio``; modules in neither get 0."""
    if ratio is None and module_ratios is None:
        raise ValueError("give ratio or module_ratios")
    base = 0.0 if ratio is None else _check_ratio(ratio, "ratio")
    out = {m: base for m in MODULES}
    if module_ratios is not None:
        if not isinstance(module_ratios, Mapping):
            raise ValueError(f"module_ratios must be a dict module -> ratio, got {type(module_ratios).__name__}")
        for m, r in module_ratios.items():
            if m not in MODULES:
                raise ValueError(f"unknown module {m!r} in module_ratios; expected one of {MODULES}")
            out[m] = _check_ratio(r, f"module_ratios[{m!r}]")
    return out


def _prune_count(r: float, n: int) -> int:
    """round(r * n), halves rounded up."""
    return min(n, int(math.floor(r * n + 0.5)))


def _keep_mask_exact(scores: Tensor, k: int) -> Tensor:
    """Keep-mask pruning exactly the ``k`` lowest entries of the flat ``scores``.

    Entries strictly below the k-th smallest value are pruned; among entries equal to it, the ones
    with the lowest flat index are pruned first (the result of a stable ascending sort).
    """
    n = scores.numel()
    keep = torch.ones(n, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return keep
    if k >= n:
        return ~keep
    t = torch.kthvalue(scores, k).values
    below = scores < t
    need = k - int(below.sum())
    ties = torch.nonzero(scores == t).flatten()[:need]
    keep &= ~below
    keep[ties] = False
    return keep


def _named_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def _split(flat_keep: Tensor, names: list[str], params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out, start = {}, 0
    for n in names:
        p = params[n]
        out[n] = flat_keep[start:start + p.numel()].reshape(p.shape).to(p.device)
        start += p.numel()
    return out


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def dimap_masks(model: nn.Module, ratio: float | None = None,
                module_ratios: Mapping[str, float] | None = None,
                ties: Literal["stable", "shared"] = "stable") -> dict[str, Tensor]:
    """DIMAP keep-masks: one Eq. 10 threshold per module, pooled over its layers (Sec. 3.2).

    For each module m of :data:`MODULES` the Imp scores (:func:`dimap_scores`, computed per layer)
    of all its weights are pooled and exactly ``round(r_m * n_m)`` weights with the lowest scores
    are pruned (``n_m`` = weights in the module), i.e. the threshold is the module's r-quantile.
    Ties at the threshold are broken deterministically: weights are ordered by
    ``model.named_parameters()`` order, then flat index, and the earliest tied ones are pruned
    first, so the count is exact even when many scores tie. Per-layer pruned fractions differ from
    r (that is the point of a pooled threshold).

    Args:
        model: timm Swin V1 or a module containing one (see :func:`group_modules`).
        ratio: pruning ratio r in [0, 1) for every module (DIMAP1/2/3: 0.15/0.35/0.55).
        module_ratios: per-module ratios overriding ``ratio``, e.g. ``{"mlp": 0.5}``; modules in
            neither get 0.
        ties: tie rule of :func:`dimap_scores`.

    Returns:
        ``{param_name: BoolTensor}`` (True = keep) for every prunable weight, shape/device of it.

    Raises:
        ValueError: no ratio given, a ratio outside [0, 1), an unknown module name, or no Swin
            weights in ``model``.
    """
    ratios = _resolve_ratios(ratio, module_ratios)
    groups = group_modules(model)
    params = _named_params(model)
    masks: dict[str, Tensor] = {}
    for m in MODULES:
        names = groups[m]
        if not names:
            continue
        dev = params[names[0]].device
        pooled = torch.cat([dimap_scores(params[n], ties=ties).reshape(-1).to(dev) for n in names])
        k = _prune_count(ratios[m], pooled.numel())
        masks.update(_split(_keep_mask_exact(pooled, k), names, params))
        del pooled
    return masks


@torch.no_grad()
def magnitude_masks(model: nn.Module, ratio: float | None = None,
                    scope: Literal["uniform", "global"] = "uniform",
                    module_ratios: Mapping[str, float] | None = None) -> dict[str, Tensor]:
    """Magnitude-pruning baselines at the same ratios as DIMAP (Table 3 "uniform magnitude").

    ``scope="uniform"``: every prunable layer prunes exactly ``round(r * n_layer)`` of its own
    weights with the smallest ``|W|`` (r = its module's ratio). ``scope="global"``: one ``|W|``
    threshold pooled over all qkv + proj + fc1 + fc2 weights, pruning exactly ``round(r * N)``;
    when ``module_ratios`` is given the ratios differ per module, so the pooling is per module
    (one ``|W|`` threshold per module, the magnitude analogue of :func:`dimap_masks`). Ties are
    broken as in :func:`dimap_masks` (earliest parameter / flat index pruned first).

    Args:
        model: timm Swin V1 or a module containing one (see :func:`group_modules`).
        ratio: pruning ratio r in [0, 1) for every module.
        scope: ``"uniform"`` or ``"global"``.
        module_ratios: per-module ratios overriding ``ratio``.

    Returns:
        ``{param_name: BoolTensor}`` (True = keep) for every prunable weight.

    Raises:
        ValueError: bad ratio, unknown module or scope, or no Swin weights in ``model``.
    """
    if scope not in ("uniform", "global"):
        raise ValueError(f"scope must be 'uniform' or 'global', got {scope!r}")
    ratios = _resolve_ratios(ratio, module_ratios)
    groups = group_modules(model)
    params = _named_params(model)
    masks: dict[str, Tensor] = {}
    if scope == "uniform":
        for m in MODULES:
            for n in groups[m]:
                p = params[n]
                keep = _keep_mask_exact(p.detach().reshape(-1).abs(), _prune_count(ratios[m], p.numel()))
                masks[n] = keep.reshape(p.shape)
        return masks
    if module_ratios is None:
        pools = [([n for m in MODULES for n in groups[m]], ratios[MODULES[0]])]
    else:
        pools = [(groups[m], ratios[m]) for m in MODULES]
    for names, r in pools:
        if not names:
            continue
        dev = params[names[0]].device
        pooled = torch.cat([params[n].detach().reshape(-1).abs().to(dev) for n in names])
        masks.update(_split(_keep_mask_exact(pooled, _prune_count(r, pooled.numel())), names, params))
        del pooled
    return masks


def _check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must be a dict name -> BoolTensor, got {type(masks).__name__}")
    params = _named_params(model)
    for n, mk in masks.items():
        if n not in params:
            raise ValueError(f"mask for unknown parameter {n!r}")
        if not isinstance(mk, Tensor) or mk.dtype != torch.bool:
            raise ValueError(f"mask for {n!r} must be a torch.bool tensor")
        if tuple(mk.shape) != tuple(params[n].shape):
            raise ValueError(f"mask for {n!r} has shape {tuple(mk.shape)}, weight has {tuple(params[n].shape)}")
    return params


class MaskHandle:
    """Keeps masked weights at exactly zero while a model is fine-tuned (Sec. 4.1: masks fixed).

    Created by :func:`apply_masks`. Holds one gradient hook per masked parameter (zeroes the
    gradient of pruned entries) and, after :meth:`attach`, an optimizer step post-hook that calls
    :meth:`reapply` (AdamW momentum from before masking would otherwise move zeroed weights).
    Parameters are never re-registered, so ``state_dict`` keys are unchanged.

    Attributes:
        masks: ``{name: BoolTensor}`` (True = keep), on each parameter's device.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]):
        params = _check_masks(model, masks)
        self.masks: dict[str, Tensor] = {}
        self._params: dict[str, nn.Parameter] = {}
        self._pruned: dict[str, Tensor] = {}
        self._hooks: list[Any] = []
        for n, mk in masks.items():
            p = params[n]
            pruned = (~mk).to(p.device)
            self.masks[n] = mk.to(p.device)
            self._params[n] = p
            self._pruned[n] = pruned
            if p.requires_grad:
                self._hooks.append(p.register_hook(lambda g, pr=pruned: g.masked_fill(pr, 0)))

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero every pruned entry in place again (call after ``optimizer.step()``)."""
        for n, p in self._params.items():
            p.masked_fill_(self._pruned[n], 0)
            if p.grad is not None:
                p.grad.masked_fill_(self._pruned[n], 0)

    def attach(self, optimizer: torch.optim.Optimizer) -> MaskHandle:
        """Register a step post-hook on ``optimizer`` that calls :meth:`reapply`; returns ``self``.

        Raises:
            ValueError: ``optimizer`` is not a ``torch.optim.Optimizer``.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._hooks.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.reapply()))
        return self

    def remove(self) -> None:
        """Remove all gradient and optimizer hooks (weights stay as they are)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> MaskHandle:
    """Zero the pruned weights in place (``M * W``) and return a :class:`MaskHandle` (Sec. 3.2).

    Args:
        model: the model the mask names refer to.
        masks: ``{param_name: BoolTensor}`` (True = keep), shapes equal to the weights.

    Returns:
        :class:`MaskHandle` with gradient hooks installed; call ``.attach(optimizer)`` to re-zero
        after each optimizer step and ``.remove()`` to drop the hooks.

    Raises:
        ValueError: a name is not a parameter of ``model``, a mask is not bool, or shapes differ.
    """
    handle = MaskHandle(model, masks)
    handle.reapply()
    return handle


# --------------------------------------------------------------------------------------------
# Dense backup / restore (joint search)
# --------------------------------------------------------------------------------------------

def _resolve_names(model: nn.Module, names: Iterable[str] | None) -> list[str]:
    if names is None:
        return [n for m in MODULES for n in group_modules(model)[m]]
    if isinstance(names, str):
        raise ValueError("names must be an iterable of parameter names, not a single string")
    names = list(names)
    params = _named_params(model)
    for n in names:
        if n not in params:
            raise ValueError(f"unknown parameter {n!r}")
    return names


@torch.no_grad()
def dense_backup(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Copy (``detach().clone()``, same device and dtype) of the named parameters.

    Args:
        model: the model.
        names: parameter names; default: every prunable weight (:func:`group_modules`).

    Returns:
        ``{name: Tensor}`` for :func:`restore`.

    Raises:
        ValueError: an unknown name, or (default names) no Swin weights in ``model``.
    """
    names = _resolve_names(model, names)
    params = _named_params(model)
    return {n: params[n].detach().clone() for n in names}


@torch.no_grad()
def restore(model: nn.Module, backup: Mapping[str, Tensor]) -> None:
    """Copy a :func:`dense_backup` back into ``model`` in place, bit-exactly (``copy_``).

    Remove any :class:`MaskHandle` first if the restored model is to be trained densely.

    Raises:
        ValueError: unknown name, or shape / dtype differs from the parameter.
    """
    if not isinstance(backup, Mapping):
        raise ValueError(f"backup must be a dict name -> Tensor, got {type(backup).__name__}")
    params = _named_params(model)
    for n, t in backup.items():
        if n not in params:
            raise ValueError(f"backup holds unknown parameter {n!r}")
        p = params[n]
        if t.shape != p.shape or t.dtype != p.dtype:
            raise ValueError(f"backup of {n!r} is {t.dtype}{tuple(t.shape)}, parameter is {p.dtype}{tuple(p.shape)}")
    for n, t in backup.items():
        params[n].copy_(t)


class WeightRestorer:
    """Holds a dense backup of a model's prunable weights and restores it bit-exactly.

    Usable as a context manager: the weights are restored on exit, e.g. around one joint-search
    trial that applies masks.

    Args:
        model: the model.
        names: parameter names to back up; default every prunable weight.

    Raises:
        ValueError: as :func:`dense_backup`.
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None):
        self.model = model
        self.backup = dense_backup(model, names)

    def restore(self) -> None:
        """Copy the backup into the model (bit-exact)."""
        restore(self.model, self.backup)

    def __enter__(self) -> WeightRestorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


# --------------------------------------------------------------------------------------------
# Accounting (Table 1: masked weights count as removed)
# --------------------------------------------------------------------------------------------

def _kept_by_id(model: nn.Module, masks: Mapping[str, Tensor] | None,
                kept_fractions: Mapping[str, float] | None) -> tuple[dict[int, float], dict[str, nn.Parameter]]:
    """Kept fraction of each masked parameter, keyed by ``id(param)``."""
    if masks is not None and kept_fractions is not None:
        raise ValueError("give masks or kept_fractions, not both")
    params = _named_params(model)
    kept: dict[int, float] = {}
    if masks is not None:
        _check_masks(model, masks)
        for n, mk in masks.items():
            kept[id(params[n])] = float(mk.sum()) / max(1, mk.numel())
    elif kept_fractions is not None:
        for n, f in kept_fractions.items():
            if n not in params:
                raise ValueError(f"kept_fractions holds unknown parameter {n!r}")
            if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= float(f) <= 1.0:
                raise ValueError(f"kept_fractions[{n!r}] must be in [0, 1], got {f!r}")
            kept[id(params[n])] = float(f)
    return kept, params


def param_report(model: nn.Module, masks: Mapping[str, Tensor] | None = None, *,
                 kept_fractions: Mapping[str, float] | None = None) -> dict[str, float]:
    """Parameter count with masked weights counted as removed (Table 1 "params (reduction)").

    ``total_params`` counts every parameter of ``model`` (head, biases, norms, position bias
    tables included), as timm's param count does.

    Args:
        model: the model.
        masks: keep-masks (True = keep); pruned = number of False entries.
        kept_fractions: alternative analytic form ``{name: kept fraction}``; pruned =
            ``(1 - f) * numel`` (not rounded).

    Returns:
        ``{"total_params": int, "pruned_params": removed count, "remaining_params": total - pruned,
        "params_reduction": pruned / total (fraction in [0, 1])}``.

    Raises:
        ValueError: both or malformed masks / kept_fractions.
    """
    kept, params = _kept_by_id(model, masks, kept_fractions)
    total = sum(p.numel() for p in params.values())
    pruned = sum((1.0 - kept[id(p)]) * p.numel() for p in params.values() if id(p) in kept)
    if masks is not None:
        pruned = sum(int((~mk).sum()) for mk in masks.values())
    return {"total_params": int(total), "pruned_params": pruned,
            "remaining_params": total - pruned, "params_reduction": pruned / total if total else 0.0}


def _find_swins(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
    """Every timm Swin V1 inside ``model``: (module with ``patch_embed``, its stages in order)."""
    found: list[tuple[str, nn.Module, list[nn.Module]]] = []
    for name, mod in model.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f, _, _ in found):
            continue
        if not hasattr(mod, "patch_embed"):
            continue
        layers = getattr(mod, "layers", None)
        if isinstance(layers, (nn.Sequential, nn.ModuleList)):
            stages = list(layers)
        else:  # timm features_only flattens ``layers.i`` into ``layers_i``
            flat = [(int(m.group(1)), c) for cn, c in mod.named_children()
                    if (m := re.fullmatch(r"layers_(\d+)", cn))]
            stages = [c for _, c in sorted(flat, key=lambda t: t[0])]
        if stages and all(hasattr(s, "blocks") for s in stages):
            found.append((name, mod, stages))
    return [(mod, stages) for _, mod, stages in found]


def _to_2tuple(x: Any, what: str) -> tuple[int, int]:
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        x = (int(x), int(x))
    if (not isinstance(x, (tuple, list)) or len(x) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in x)):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints, got {x!r}")
    return int(x[0]), int(x[1])


def _swin_macs(swin: nn.Module, stages: list[nn.Module], img_size: tuple[int, int],
               kept: Mapping[int, float]) -> tuple[float, float]:
    """(dense, pruned) MACs of one timm Swin V1 for one image: :func:`supernet.macs.layer_macs` with each
    layer's MACs scaled by the kept fraction of its weight (masked weights count as removed)."""
    from .macs import layer_macs

    dense = pruned = 0.0
    for weight, m in layer_macs(swin, stages, img_size, head=True):
        dense += m
        pruned += m * (kept.get(id(weight), 1.0) if weight is not None else 1.0)
    return dense, pruned


def macs_reduction(model: nn.Module, masks: Mapping[str, Tensor] | None = None,
                   img_size: int | tuple[int, int] = 224, *,
                   kept_fractions: Mapping[str, float] | None = None) -> dict[str, float]:
    """Analytic MACs of the timm Swin V1 inside ``model``, dense and with masks (Table 1 FLOPs).

    Counted per image, as the paper (and Swin) count FLOPs: patch-embedding conv
    (``grid * C * 3 * p^2``); per block, with N tokens at the stage resolution (padded to window
    multiples for the attention branch), qkv / proj / fc1 / fc2 linears ``N * in * out`` and the
    attention matmuls q @ k^T and attn @ v ``2 * N * window_area * C``; PatchMerging reduction
    ``N_out * 4C * 2C``; head linear ``C_final * classes``. LayerNorms, softmax, GELU and pooling
    are not counted. Each masked linear's MACs scale by its kept fraction (masked weights count as
    removed). Tokens come from ``img_size``, the patch embedding's stride, the stages' PatchMerging
    and the blocks' window sizes (clamped to the feature size as timm does). Only Swin backbones
    are counted: modules around them (e.g. a segmentation head) are not. timm swin_tiny at 224
    gives 4.49 G.

    Args:
        model: timm Swin V1 or a module containing one or more.
        masks: keep-masks (True = keep); None = dense.
        img_size: input size, int or (H, W) in pixels.
        kept_fractions: alternative analytic form ``{name: kept fraction}``.

    Returns:
        ``{"dense_macs": float, "pruned_macs": MACs of the pruned model, "removed_macs": dense -
        pruned, "macs_reduction": removed / dense (fraction in [0, 1])}``.

    Raises:
        ValueError: no Swin found, bad ``img_size``, or malformed masks / kept_fractions.
    """
    size = _to_2tuple(img_size, "img_size")
    kept, _ = _kept_by_id(model, masks, kept_fractions)
    swins = _find_swins(model)
    if not swins:
        raise ValueError("no timm Swin V1 (patch_embed + layers[i].blocks) found in model")
    dense = pruned = 0.0
    for swin, stages in swins:
        d, p = _swin_macs(swin, stages, size, kept)
        dense += d
        pruned += p
    return {"dense_macs": dense, "pruned_macs": pruned, "removed_macs": dense - pruned,
            "macs_reduction": (dense - pruned) / dense if dense else 0.0}


# --------------------------------------------------------------------------------------------
# Table 1 report
# --------------------------------------------------------------------------------------------

def _analytic_fractions(model: nn.Module, ratio: float) -> tuple[dict[str, float], float]:
    """Every prunable layer kept at 1 - r; exact module-pooled pruned count round(r * n_module)."""
    groups = group_modules(model)
    params = _named_params(model)
    kept = {n: 1.0 - ratio for m in MODULES for n in groups[m]}
    pruned = sum(_prune_count(ratio, sum(params[n].numel() for n in groups[m])) for m in MODULES if groups[m])
    return kept, float(pruned)


def dimap_report(model_name: str, ratios: Iterable[float] = (0.15, 0.35, 0.55), img_size: int = 224, *,
                 model: nn.Module | None = None,
                 masks: str | Mapping[float, Mapping[str, Tensor]] | None = None) -> dict[str, Any]:
    """Params / FLOPs reductions of DIMAP at ``ratios`` vs the paper's Table 1.

    Counting (``masks=None``, analytic, the paper-consistent count): pruned params = exactly
    ``round(r * n_module)`` per module (what a pooled DIMAP threshold removes, independent of the
    weights); MACs = every qkv / proj / fc1 / fc2 layer at kept fraction ``1 - r``. A real pooled
    threshold prunes different fractions per layer, and MACs weigh layers by their token count,
    so real masks give other MACs reductions: pass ``masks="dimap"`` to build real
    :func:`dimap_masks` from the model's current weights (random init unless ``model`` holds
    trained weights), or ``masks={ratio: masks_dict}`` to count given masks.

    Args:
        model_name: timm name; Table 1 has ``swin_tiny_patch4_window7_224``,
            ``swin_small_patch4_window7_224``, ``swin_base_patch4_window7_224``.
        ratios: pruning ratios r in [0, 1); 0.15 / 0.35 / 0.55 are DIMAP1/2/3.
        img_size: input size in pixels for MACs.
        model: model to count; default ``timm.create_model(model_name, pretrained=False)``
            (on the meta device when only shapes are needed).
        masks: None (analytic), ``"dimap"`` or ``{ratio: masks}``.

    Returns:
        ``{"model", "img_size", "counting", "dense": {...}, "rows": [...]}``; every row holds
        ``ratio``, ``label``, ``params`` (remaining), ``params_reduction_pct``, ``macs`` (remaining),
        ``macs_reduction_pct`` and the paper's ``paper_*`` figures with ``*_diff_pts`` = ours -
        paper in percentage points (None where Table 1 has no row for the ratio).

    Raises:
        ValueError: bad ratio / masks argument, or no Swin in the model.
    """
    import timm  # local: only the report needs it

    if not isinstance(model_name, str):
        raise ValueError(f"model_name must be a timm model name, got {model_name!r}")
    ratios = [_check_ratio(r, "ratio") for r in ratios]
    if masks is not None and masks != "dimap" and not isinstance(masks, Mapping):
        raise ValueError(f"masks must be None, 'dimap' or a dict ratio -> masks, got {masks!r}")
    if model is None:
        if masks is None or isinstance(masks, Mapping):
            with torch.device("meta"):
                model = timm.create_model(model_name, pretrained=False)
        else:
            model = timm.create_model(model_name, pretrained=False)
    paper = PAPER_TABLE1.get(model_name)
    dense_p = param_report(model, kept_fractions={})
    dense_m = macs_reduction(model, img_size=img_size)
    report: dict[str, Any] = {
        "model": model_name, "img_size": img_size,
        "counting": "analytic" if masks is None else "masks",
        "dense": {"params": dense_p["total_params"], "macs": dense_m["dense_macs"],
                  "paper_params_m": paper["dense"]["params_m"] if paper else None,
                  "paper_flops_g": paper["dense"]["flops_g"] if paper else None,
                  "paper_top1": paper["dense"]["top1"] if paper else None},
        "rows": [],
    }
    for r in ratios:
        if masks is None:
            kept, pruned_params = _analytic_fractions(model, r)
            pr = param_report(model, kept_fractions=kept)
            pr["pruned_params"] = pruned_params
            pr["params_reduction"] = pruned_params / pr["total_params"]
            mr = macs_reduction(model, img_size=img_size, kept_fractions=kept)
        else:
            mk = dimap_masks(model, r) if masks == "dimap" else _lookup_ratio(masks, r)
            pr = param_report(model, mk)
            mr = macs_reduction(model, mk, img_size=img_size)
        row_paper = _lookup_paper(paper, r)
        row: dict[str, Any] = {
            "ratio": r,
            "label": row_paper["label"] if row_paper else f"DIMAP r={r:g}",
            "params": pr["total_params"] - pr["pruned_params"],
            "params_reduction_pct": 100.0 * pr["params_reduction"],
            "macs": mr["pruned_macs"],
            "macs_reduction_pct": 100.0 * mr["macs_reduction"],
        }
        for key, ours in (("params_reduction_pct", row["params_reduction_pct"]),
                          ("flops_reduction_pct", row["macs_reduction_pct"])):
            ref = row_paper[key] if row_paper else None
            row[f"paper_{key}"] = ref
            row[f"{key.removesuffix('_reduction_pct')}_diff_pts"] = None if ref is None else ours - ref
        for key in ("params_m", "flops_g", "top1"):
            row[f"paper_{key}"] = row_paper[key] if row_paper else None
        report["rows"].append(row)
    return report


def _lookup_ratio(table: Mapping[float, Any], r: float) -> Any:
    for k, v in table.items():
        if isinstance(k, numbers.Real) and math.isclose(float(k), r, abs_tol=1e-9):
            return v
    raise ValueError(f"masks has no entry for ratio {r}")


def _lookup_paper(paper: Mapping[str, Any] | None, r: float) -> dict[str, Any] | None:
    if paper is None:
        return None
    for k, v in paper["dimap"].items():
        if math.isclose(k, r, abs_tol=1e-9):
            return v
    return None


def format_report(report: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> str:
    """Markdown table of one or several :func:`dimap_report` results (ours vs Table 1).

    Columns: model/row, params (M), params reduction ours / paper / diff (points), MACs (G),
    FLOPs reduction ours / paper / diff (points), paper top-1.

    Raises:
        ValueError: ``report`` is not a :func:`dimap_report` result (or a list of them).
    """
    reports = [report] if isinstance(report, Mapping) else list(report)
    if not reports or not all(isinstance(r, Mapping) and "rows" in r and "dense" in r for r in reports):
        raise ValueError("format_report expects dimap_report() results")

    def f(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = ["| model | r | params (M) | params red. % | paper % | diff (pts) | "
             "MACs (G) | FLOPs red. % | paper % | diff (pts) | paper top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        d = rep["dense"]
        lines.append(f"| {rep['model']} ({rep['counting']}, {rep['img_size']}px) | 0 | "
                     f"{d['params'] / 1e6:.2f} | - | - | - | {d['macs'] / 1e9:.3f} | - | - | - | "
                     f"{f(d['paper_top1'], '.2f')} |")
        for row in rep["rows"]:
            lines.append(
                f"| {row['label']} | {row['ratio']:g} | {row['params'] / 1e6:.2f} | "
                f"{row['params_reduction_pct']:.2f} | {f(row['paper_params_reduction_pct'], '.1f')} | "
                f"{f(row['params_diff_pts'], '+.2f')} | {row['macs'] / 1e9:.3f} | "
                f"{row['macs_reduction_pct']:.2f} | {f(row['paper_flops_reduction_pct'], '.1f')} | "
                f"{f(row['flops_diff_pts'], '+.2f')} | {f(row['paper_top1'], '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m supernet.dimap: Table 1 comparison, analytic counting
    print(format_report([dimap_report(name) for name in PAPER_TABLE1]))
