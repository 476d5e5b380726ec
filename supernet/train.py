"""Supernet training: dense pre-training, then SparseViT sparsity-aware adaptation.

SparseViT (arXiv 2303.17605, Sec. 3.2 "Sparsity-aware adaptation"; reference code
mit-han-lab/sparsevit) adapts a dense model so that *one* set of weights works at every per-block
sparsity config: every training step draws a new config and runs the step at that config. The
reference rule (:func:`sample_config`): per stage, ``depth // 2`` ratios drawn uniformly from
{0, 0.1, ..., 0.8}, sorted ascending, each used by the W-MSA and the SW-MSA block of a pair.

Three sampling modes (``[train] sampling``):

* ``"reference"``: one config per step, the rule above (the paper's recipe);
* ``"sandwich"``: OFA/BigNAS-style sandwich rule, an improvement to measure: per step the densest
  config (all 0), the sparsest (all ``max(ratios)``) and ``sandwich_random`` reference draws, their
  gradients accumulated (loss averaged) into one optimizer step;
* ``"dense"``: never sparse, the dense-only baseline with the same schedule.

A run is ``[lowres] epochs`` on smaller canvases (optional, dense), then ``dense_epochs`` at ``lr``
(always dense), then ``adapt_epochs`` at ``adapt_lr`` (sampled configs); the reference adapts at
10x below the dense learning rate. A recipe can also stop after the dense phase and let other
recipes adapt that checkpoint (``[model] init``), as SparseViT adapts a dense checkpoint. AdamW (no weight
decay on norms, biases and relative-position tables), linear warm-up then cosine decay within each
phase, cross-entropy on the (B, 11, H, W) logits (optionally with the background class, about 80 % of
the pixels, down-weighted by ``background_weight``).

Files (``[output] checkpoint = "X.safetensors"``)::

    X.safetensors + X.json   the supernet (see supernet/checkpoint.py), rewritten after every epoch;
                             the final one carries the reference metrics in the sidecar
    X.state.pt               optimizer, scheduler and RNG states for ``resume`` (plain tensors,
                             numbers and strings; read with ``torch.load(weights_only=True)``)

Spec (TOML), every key optional::

    [model]   timm_name, embed_dim, depths, num_heads, window_size, img_size, head_dim,
              drop_path_rate, input_size (reduced-resolution baseline), timm_weights (a local timm Swin
              state_dict to start the backbone from), init (a SegSupernet checkpoint to start from,
              e.g. the dense phase of a two-file recipe)
    [data]    MosaicSpec fields (img_size defaults to [model] img_size), train_length (canvases per
              epoch), val_length, val_seed, fresh_canvases, data_dir
    [lowres]  epochs, img_size, min_items, max_items, train_length, batch_size, lr: dense epochs on
              smaller canvases first (progressive resizing, see :class:`LowresSection`)
    [train]   batch_size, dense_epochs, adapt_epochs, lr, adapt_lr, weight_decay, warmup_steps, seed,
              threads, processes (data-parallel ranks, :mod:`supernet.parallel`), sampling, sandwich_random,
              ratios, grad_clip, background_weight, eval_ratios,
              eval_batch_size, val_each_epoch
    [output]  checkpoint (relative to the spec file's folder)
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .fileio import atomic_write, refuse_overwrite, strict_json
from .checkpoint import (CheckpointError, load_checkpoint, load_timm_state_dict, save_checkpoint,
                         sha256_file, sidecar_path)
from .data import NUM_SEG_CLASSES, DatasetNotFoundError, FashionMosaic, MosaicSpec
from .evaluate import (DEFAULT_VAL_SEED, REFERENCE_RATIOS, evaluate_config, format_table, reference_table,
                       resolve_device)
from .losses import seg_loss
from .parallel import Rank, average_gradients, check_ranks_agree, rank_batches
from .seg import SegSupernet
from .sparse_swin import DEFAULT_RATIOS

__all__ = [
    "TrainSpecError",
    "ModelSection",
    "DataSection",
    "TrainSection",
    "OutputSection",
    "TrainConfig",
    "load_train_spec",
    "sample_config",
    "step_configs",
    "build_supernet",
    "make_optimizer",
    "lr_at",
    "train_step",
    "state_path",
    "spec_diff",
    "train",
    "cli_train",
]

STATE_FORMAT = 1


class TrainSpecError(ValueError):
    """A training spec is unreadable or invalid; the one-line message names the file, the key and the fix."""


# --------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------
class ModelSection(BaseModel):
    """``[model]``: the timm Swin backbone and the FPN-lite head.

    ``embed_dim`` / ``depths`` / ``num_heads`` default to those of ``timm_name``.
    ``timm_weights``: optional local timm Swin state_dict (.safetensors or .pth) loaded into the
    backbone before training (see :func:`supernet.checkpoint.load_timm_state_dict`).
    ``init``: optional SegSupernet checkpoint (``X.safetensors`` + sidecar) of the same
    architecture to start from: SparseViT adapts a *dense* checkpoint (Sec. 3.2), so a recipe can
    be split into a dense file and adaptation files that share it.
    ``input_size``: the backbone's input size when it is below ``img_size``: the canvases are
    resized before the backbone and the logits upsampled back (the reduced-resolution baseline).
    ``window_importance``: the window ranking's token importance, ``"magnitude"`` (SparseViT's) or ``"centred"``
    (see ``supernet.sparse_swin.token_importance``); recorded in the sidecar, so the search ranks as trained.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    timm_name: str = "swin_tiny_patch4_window7_224"
    embed_dim: Optional[int] = Field(None, ge=4)
    depths: Optional[Tuple[int, ...]] = None
    num_heads: Optional[Tuple[int, ...]] = None
    window_size: int = Field(7, ge=1)
    img_size: int = Field(224, ge=32, le=4096)
    head_dim: int = Field(64, ge=1)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    input_size: Optional[int] = Field(None, ge=32, le=4096)
    head_norm: bool = False
    head_first_stage: int = Field(0, ge=0)
    window_importance: Literal["magnitude", "centred"] = "magnitude"
    timm_weights: Optional[Path] = None
    init: Optional[Path] = None

    @model_validator(mode="after")
    def _check(self) -> "ModelSection":
        if self.depths is not None and (not self.depths or min(self.depths) < 1):
            raise ValueError(f"depths must be positive block counts, got {list(self.depths)}")
        if self.timm_weights is not None and self.init is not None:
            raise ValueError("set timm_weights or init, not both")
        n_stages = len(self.depths) if self.depths is not None else 4  # timm's Swin: four stages
        if self.head_first_stage >= n_stages:
            raise ValueError(f"head_first_stage {self.head_first_stage} must be below the number of stages "
                             f"({n_stages}): the head fuses stages head_first_stage..{n_stages - 1}")
        if self.depths is not None and self.num_heads is not None and len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must have one "
                             "entry per stage")
        return self

    def timm_kwargs(self) -> Dict[str, Any]:
        """kwargs for ``timm.create_model`` (those that are set)."""
        out: Dict[str, Any] = {"window_size": self.window_size, "drop_path_rate": self.drop_path_rate}
        for key in ("embed_dim", "depths", "num_heads"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class DataSection(MosaicSpec):
    """``[data]``: :class:`supernet.data.MosaicSpec` fields plus the sizes of the training / validation sets.

    Attributes:
        train_length: training canvases per epoch (``batch_size`` divides them; a last partial batch
            is dropped).
        val_length: validation canvases for the final reference table (and ``val_each_epoch``).
        val_seed: canvas seed of the validation set (``supernet.evaluate.DEFAULT_VAL_SEED``, the search
            evaluator's default).
        fresh_canvases: each epoch draws new canvases (indices ``epoch * train_length + i``) instead
            of reshuffling the same ones.
        val_min_items / val_max_items: items per validation canvas when the validation layout differs from the
            training one (a recipe that trains on denser canvases than the task it is scored on: the task
            recipes train on 2-10 items and validate on the default task's 1-8); ``None`` = the training
            layout's. Validation only: not part of what a resume compares.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    train_length: int = Field(2048, ge=1)
    val_length: int = Field(256, ge=1)
    val_seed: int = Field(DEFAULT_VAL_SEED, ge=0)
    val_min_items: Optional[int] = Field(None, ge=1, le=256)
    val_max_items: Optional[int] = Field(None, ge=1, le=256)
    fresh_canvases: bool = True

    def mosaic(self) -> MosaicSpec:
        """The :class:`MosaicSpec` part (the training canvases' layout)."""
        return MosaicSpec(**{k: getattr(self, k) for k in MosaicSpec.model_fields})

    @model_validator(mode="after")
    def _val_items(self) -> "DataSection":
        lo, hi = self._val_range()
        if lo > hi:
            raise ValueError(f"validation items: min {lo} > max {hi}: set val_min_items <= val_max_items")
        return self

    def _val_range(self) -> Tuple[int, int]:
        return (self.min_items if self.val_min_items is None else self.val_min_items,
                self.max_items if self.val_max_items is None else self.val_max_items)

    def val_mosaic(self) -> MosaicSpec:
        """The validation canvases' layout: :meth:`mosaic` with ``val_min_items`` / ``val_max_items`` where set."""
        lo, hi = self._val_range()
        return self.mosaic().model_copy(update={"min_items": lo, "max_items": hi})


class TrainSection(BaseModel):
    """``[train]``: optimisation, the loss and sparsity sampling (see the module docstring).

    Loss (:mod:`supernet.losses`): ``loss`` = "ce" (pixel cross-entropy) or "item" (item-weighted: every
    (image, class) region of the label map weighs the same whatever its area); ``aux_weight`` adds the
    per-item classification loss (region-pooled logits); ``loss_resolution`` = "quarter" computes it on the
    head's 1/4-resolution logits against soft 4 x 4 targets (no upsampling: faster); ``background_weight``
    down-weights background pixels / regions. ``bf16``: bfloat16 autocast of the forward and backward on the
    CPU (AMX / AVX-512 BF16; the weights, the optimizer and the loss stay float32), or on the GPU.

    ``device``: where the model trains and is evaluated ("cpu", "cuda", "cuda:N"); the canvases are drawn on the
    CPU and moved there per batch, and checkpoints are written from CPU copies, so a run started on one device
    resumes on another (``device``, ``threads`` and ``processes`` are not part of the resume check). A resume is
    bit-exact on the CPU with the same ``processes``; on a GPU it is close, not equal (non-deterministic kernels;
    the CUDA generator is not saved, which matters only with ``drop_path_rate`` > 0, and the recipes use 0).

    ``processes``: data-parallel ranks on the CPU (:mod:`supernet.parallel`), each on ``batch_size / processes``
    canvases of every batch with ``threads / processes`` torch threads (at least 1); gradients are averaged across
    ranks before each step. On this project's 2-core CPU two one-thread processes train no faster than one
    two-thread process (1.02x, ``bench/train_parallel.py``): the option is for machines with more cores.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    batch_size: int = Field(16, ge=1)
    dense_epochs: int = Field(0, ge=0)
    adapt_epochs: int = Field(1, ge=0)
    lr: float = Field(1e-3, gt=0.0)
    adapt_lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy / torch generators take 32-bit seeds
    threads: Optional[int] = Field(None, ge=1)
    processes: int = Field(1, ge=1, le=64)
    device: str = "cpu"
    sampling: Literal["reference", "sandwich", "dense"] = "reference"
    sandwich_random: int = Field(1, ge=0)
    ratios: List[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    grad_clip: float = Field(0.0, ge=0.0)
    background_weight: float = Field(1.0, gt=0.0, le=1.0)
    loss: Literal["ce", "item"] = "ce"
    aux_weight: float = Field(0.0, ge=0.0)
    loss_resolution: Literal["full", "quarter"] = "full"
    bf16: bool = False
    eval_ratios: List[float] = Field(default_factory=lambda: list(REFERENCE_RATIOS))
    eval_batch_size: int = Field(16, ge=1)
    val_each_epoch: bool = False
    val_each_epoch_length: Optional[int] = Field(None, ge=1)

    @field_validator("ratios", "eval_ratios")
    @classmethod
    def _ratios(cls, v: List[float]) -> List[float]:
        if not v:
            raise ValueError("needs at least one ratio")
        if any(not (0.0 <= r < 1.0) for r in v):
            raise ValueError(f"ratios must lie in [0, 1), got {v}")
        if sorted(set(v)) != list(v):
            raise ValueError(f"ratios must be strictly increasing, got {v}")
        return [float(r) for r in v]

    @model_validator(mode="after")
    def _epochs(self) -> "TrainSection":
        if self.dense_epochs + self.adapt_epochs < 1:
            raise ValueError("dense_epochs + adapt_epochs must be >= 1")
        return self


class LowresSection(BaseModel):
    """``[lowres]``: dense epochs on smaller canvases before everything else (progressive resizing).

    A from-scratch Swin learns the item classes slowly per optimizer step and per canvas (measured
    here: the same wall time at 112 px canvases, items scaled by 1/2 and packed 4-12 per canvas,
    reaches a higher 224 px val mIoU than 224 px canvases alone), so the first epochs run on
    ``img_size`` px canvases whose items are scaled by ``img_size / [data] img_size``; the
    following phases run at full size. Progressive resizing: Touvron et al., "Fixing the train-test
    resolution discrepancy" (FixRes, 2019); Tan and Le, EfficientNetV2 (2021), Sec. 4.

    Attributes:
        epochs: low-resolution epochs (0 = off).
        img_size: canvas side in px (timm pads windows when it is not a multiple of patch x window).
        min_items / max_items: items per canvas (default: ``[data]``'s).
        train_length: canvases per epoch.
        batch_size: canvases per step.
        lr: peak learning rate (linear warm-up over ``[train] warmup_steps``, then cosine).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(0, ge=0)
    img_size: int = Field(112, ge=32, le=4096)
    min_items: Optional[int] = Field(None, ge=1, le=256)
    max_items: Optional[int] = Field(None, ge=1, le=256)
    train_length: int = Field(4096, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0.0)


class OutputSection(BaseModel):
    """``[output]``: where the checkpoint goes (``X.safetensors``; ``X.json`` and ``X.state.pt`` beside it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    checkpoint: Path = Path("supernet.safetensors")

    @field_validator("checkpoint")
    @classmethod
    def _suffix(cls, v: Path) -> Path:
        if v.suffix != ".safetensors":
            raise ValueError(f"checkpoint must end in .safetensors, got {str(v)!r}")
        return v


class Phase(NamedTuple):
    """One phase of a run: ``epochs`` epochs of ``steps_per_epoch`` steps on canvases of ``spec``,
    learning rate warm-up over ``warmup`` steps to ``peak_lr`` then cosine to ~0; ``sparse``: the
    adaptation phase (sampled sparsity configs), else always dense."""

    name: str
    epochs: int
    steps_per_epoch: int
    batch_size: int
    length: int
    peak_lr: float
    warmup: int
    sparse: bool
    spec: MosaicSpec


class TrainConfig(BaseModel):
    """A whole training spec: ``[model]``, ``[data]``, ``[lowres]``, ``[train]``, ``[output]``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=lambda: DataSection())
    lowres: LowresSection = Field(default_factory=LowresSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="before")
    @classmethod
    def _data_img_size(cls, values: Any) -> Any:
        """``[data] img_size`` defaults to ``[model] img_size``."""
        if isinstance(values, dict):
            model = values.get("model") or {}
            data = values.get("data")
            img = model.get("img_size", 224) if isinstance(model, dict) else getattr(model, "img_size", 224)
            if data is None:
                values = {**values, "data": {"img_size": img}}
            elif isinstance(data, dict) and "img_size" not in data:
                values = {**values, "data": {**data, "img_size": img}}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.data.img_size != self.model.img_size:
            raise ValueError(f"[data] img_size {self.data.img_size} != [model] img_size {self.model.img_size}; "
                             "set one of them")
        p = self.train.processes
        if p > 1 and self.train.batch_size % p:
            raise ValueError(f"[train] batch_size {self.train.batch_size} is not a multiple of [train] processes {p}: "
                             "each process takes an equal part of every batch")
        if p > 1 and self.lowres.epochs and self.lowres.batch_size % p:
            raise ValueError(f"[lowres] batch_size {self.lowres.batch_size} is not a multiple of [train] processes "
                             f"{p}: each process takes an equal part of every batch")
        if self.data.train_length < self.train.batch_size:
            raise ValueError(f"[data] train_length {self.data.train_length} < [train] batch_size "
                             f"{self.train.batch_size}: no full batch per epoch")
        lo = self.lowres
        m = re.search(r"patch(\d+)", self.model.timm_name)
        patch = int(m.group(1)) if m else 4
        for name, size in (("[model] img_size", self.model.img_size), ("[model] input_size", self.model.input_size),
                           ("[lowres] img_size", lo.img_size if lo.epochs else None)):
            if size is not None and size % patch:
                raise ValueError(f"{name} {size} is not a multiple of the patch size {patch} of {self.model.timm_name}")
        if lo.epochs:
            if lo.train_length < lo.batch_size:
                raise ValueError(f"[lowres] train_length {lo.train_length} < batch_size {lo.batch_size}: "
                                 "no full batch per epoch")
            self.lowres_spec()  # scales and item counts must make a valid canvas spec
        return self

    def lowres_spec(self) -> MosaicSpec:
        """The canvases of the ``[lowres]`` epochs: ``[data]`` scaled to ``[lowres] img_size``.

        Raises:
            ValueError: the scaled spec is invalid (e.g. min_items > max_items).
        """
        d, lo = self.data.mosaic(), self.lowres
        f = lo.img_size / d.img_size
        return MosaicSpec(**{**d.model_dump(), "img_size": lo.img_size,
                             "min_scale": max(4, round(d.min_scale * f)), "max_scale": max(4, round(d.max_scale * f)),
                             "min_items": lo.min_items or d.min_items, "max_items": lo.max_items or d.max_items})

    @property
    def total_epochs(self) -> int:
        return self.lowres.epochs + self.train.dense_epochs + self.train.adapt_epochs

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per full-size epoch (dense and adaptation)."""
        return self.data.train_length // self.train.batch_size

    def phases(self) -> List["Phase"]:
        """The run's phases in order (those with epochs > 0): lowres, dense, adaptation."""
        t, lo = self.train, self.lowres
        full = self.data.mosaic()
        out = [Phase("lowres", lo.epochs, lo.train_length // lo.batch_size, lo.batch_size, lo.train_length,
                     lo.lr, t.warmup_steps, False, self.lowres_spec()),
               Phase("dense", t.dense_epochs, self.steps_per_epoch, t.batch_size, self.data.train_length,
                     t.lr, t.warmup_steps, False, full),
               Phase(f"adapt-{t.sampling}", t.adapt_epochs, self.steps_per_epoch, t.batch_size,
                     self.data.train_length, t.adapt_lr, 0, True, full)]
        out = [p for p in out if p.epochs > 0]
        if out and out[0].sparse:  # adaptation alone (e.g. from [model] init) warms up
            out[0] = out[0]._replace(warmup=t.warmup_steps)
        return out


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}".strip() if loc else "spec"
        msg = err.get("msg", "").replace("Value error, ", "")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def load_train_spec(path: os.PathLike | str) -> TrainConfig:
    """Read a training spec (TOML) into a :class:`TrainConfig`.

    Relative paths (``[output] checkpoint``, ``[data] data_dir``, ``[model] timm_weights`` / ``init``) are
    resolved against the spec file's folder.

    Raises:
        TrainSpecError: the file is missing, is not valid TOML, or fails validation (one line:
            file, section.key, reason, fix).
    """
    import tomllib

    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainSpecError(f"{p}: training spec not found; fix: pass an existing .toml "
                             "(e.g. experiments/fashion_mosaic/supernet_quick.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise TrainSpecError(f"{p}: invalid TOML ({e}); fix: correct the syntax") from None
    except UnicodeDecodeError:
        raise TrainSpecError(f"{p}: not a text file (not UTF-8); fix: pass a training spec .toml") from None
    except OSError as e:
        raise TrainSpecError(f"{p}: cannot be read as a training spec ({e.strerror}); fix: pass a .toml file") from None
    base = p.resolve().parent
    for section, key in (("output", "checkpoint"), ("data", "data_dir"), ("model", "timm_weights"), ("model", "init")):
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key]:
            q = Path(sec[key]).expanduser()
            sec[key] = os.path.normpath(q if q.is_absolute() else base / q)
    try:
        return TrainConfig(**raw)
    except ValidationError as e:
        raise TrainSpecError(f"{p}: {_format_validation(e)}; fix: edit the spec") from None
    except TypeError as e:  # e.g. a section that is not a table
        raise TrainSpecError(f"{p}: {e}; fix: every section must be a TOML table") from None


# --------------------------------------------------------------------------------------------
# sparsity sampling
# --------------------------------------------------------------------------------------------
def sample_config(depths: Sequence[int], ratios: Sequence[float], rng: np.random.Generator) -> List[List[float]]:
    """Draw one sparsity config with the SparseViT reference rule (Sec. 3.2).

    Per stage: ``ceil(depth / 2)`` ratios drawn uniformly (with replacement) from ``ratios``, sorted
    ascending, each repeated for the W-MSA and SW-MSA block of a pair (an odd last block gets the
    last value once). For even depths that is the reference's ``depth // 2`` draws.

    Args:
        depths: blocks per stage, e.g. (2, 2, 6, 2).
        ratios: the allowed values, e.g. 0.0 .. 0.8.
        rng: numpy Generator (the only source of randomness).

    Returns:
        ``list[list[float]]``, non-decreasing inside every stage, pairs equal.
    """
    values = np.asarray(ratios, dtype=np.float64)
    cfg = []
    for d in depths:
        draws = np.sort(rng.choice(values, size=(int(d) + 1) // 2, replace=True))
        cfg.append([float(v) for v in np.repeat(draws, 2)[: int(d)]])
    return cfg


def step_configs(mode: str, depths: Sequence[int], ratios: Sequence[float], rng: np.random.Generator,
                 n_random: int = 1, dense_phase: bool = False) -> List[List[List[float]]]:
    """Configs of one optimizer step.

    Args:
        mode: "reference" (one :func:`sample_config` draw), "sandwich" (dense, sparsest, ``n_random``
            draws) or "dense" (all 0).
        depths, ratios, rng: see :func:`sample_config`.
        n_random: random draws of the sandwich rule.
        dense_phase: the dense pre-training phase (always one dense config).

    Returns:
        A list of configs; gradients of all of them are accumulated into one step.
    """
    dense = [[0.0] * int(d) for d in depths]
    if dense_phase or mode == "dense":
        return [dense]
    if mode == "reference":
        return [sample_config(depths, ratios, rng)]
    if mode == "sandwich":
        top = float(max(ratios))
        return [dense, [[top] * int(d) for d in depths]] + [sample_config(depths, ratios, rng) for _ in range(n_random)]
    raise ValueError(f"sampling must be 'reference', 'sandwich' or 'dense', got {mode!r}")


# --------------------------------------------------------------------------------------------
# model, optimiser, schedule, one step
# --------------------------------------------------------------------------------------------
def build_supernet(cfg: TrainConfig, dynamic_size: bool = False) -> SegSupernet:
    """The :class:`SegSupernet` of ``cfg``: random init, ``[model] timm_weights`` in the backbone, or the
    whole model from ``[model] init``. ``dynamic_size``: the timm model accepts any input size
    (attention masks built per forward, ``strict_img_size=False``), for the ``[lowres]`` epochs;
    the weights and state_dict keys are the same.

    Raises:
        TrainSpecError: timm cannot build the model from ``[model]``.
        CheckpointError: ``timm_weights`` / ``init`` does not fit (missing, corrupted, other architecture).
    """
    m = cfg.model
    try:
        model = SegSupernet.from_timm(m.timm_name, img_size=m.img_size, num_classes=NUM_SEG_CLASSES,
                                      head_dim=m.head_dim, input_size=m.input_size, head_norm=m.head_norm,
                                      head_first_stage=m.head_first_stage, window_importance=m.window_importance,
                                      **m.timm_kwargs(),
                                      **({"strict_img_size": False} if dynamic_size else {}))
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError / AssertionError / TypeError
        raise TrainSpecError(f"[model] {m.timm_name} with {m.timm_kwargs()} cannot be built by timm "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             "fix: correct [model]: embed_dim divisible by num_heads, one num_heads per stage, "
                             "head_first_stage below the number of stages") from None
    if m.timm_weights is not None:
        load_timm_state_dict(model, m.timm_weights)
    if m.init is not None:
        # the weights do not depend on the image size (timm's masks and indices are derived buffers), so a
        # dense model trained at 224 px can be adapted at 448 px
        init, _ = load_checkpoint(m.init, img_size=m.img_size)
        # the window ranking criterion is not a property of the weights: a dense model adapts under either
        mine, theirs = ({k: v for k, v in arch_of(mm, cfg).items() if k != "window_importance"} for mm in (model, init))
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise CheckpointError(f"[model] init {m.init} is another architecture ({diff}: "
                                  "checkpoint vs spec); fix: make [model] match the checkpoint's sidecar")
        try:
            model.load_state_dict(init.state_dict(), strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"[model] init {m.init} does not fit the spec's model ({str(e).splitlines()[0]}); "
                                  "fix: make [model] match the checkpoint's sidecar") from None
    return model


def arch_of(model: SegSupernet, cfg: TrainConfig) -> Dict[str, Any]:
    """The sidecar ``arch`` dict, with every size read back from the built model."""
    bb = model.backbone
    return {
        "timm_name": cfg.model.timm_name,
        "timm_kwargs": {
            "embed_dim": int(bb.embed_dim),
            "depths": [int(d) for d in bb.depths],
            "num_heads": [int(s.blocks[0].attn.num_heads) for s in bb.layers],
            "window_size": int(cfg.model.window_size),
        },
        "head_dim": int(model.decode.head_dim),
        **({"head_norm": True} if model.decode.stage_norm else {}),
        **({"head_first_stage": int(model.decode.first_stage)} if model.decode.first_stage else {}),
        "num_classes": int(model.num_classes),
        **({"input_size": int(model.input_size[0])} if model.input_size is not None else {}),
        **({"window_importance": bb.window_importance} if bb.window_importance != "magnitude" else {}),
    }


def make_optimizer(model: torch.nn.Module, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with base lr 1.0 (the scheduler sets absolute rates); no decay on 1-d params and
    relative-position bias tables (Swin's recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "relative_position_bias_table" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Each phase (:meth:`TrainConfig.phases`) has its own schedule: linear warm-up over
    ``warmup_steps`` to its peak, then cosine decay towards 0 (the phase's last step is just above
    0). Peaks: ``[lowres] lr``, ``[train] lr`` (dense), ``[train] adapt_lr`` (adaptation; warm-up
    only when it is the first phase).
    """
    phases = cfg.phases()
    s = step
    for ph in phases:
        n = ph.epochs * ph.steps_per_epoch
        if s < n or ph is phases[-1]:
            break
        s -= n
    peak, n, warm = ph.peak_lr, max(ph.epochs * ph.steps_per_epoch, 1), ph.warmup
    warm = min(warm, max(n - 1, 0))
    if s < warm:
        return peak * (s + 1) / warm
    return peak * 0.5 * (1.0 + math.cos(math.pi * (s - warm + 1) / (n - warm + 1)))


def train_step(model: SegSupernet, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               configs: Sequence[Any], grad_clip: float = 0.0, class_weight: Optional[torch.Tensor] = None,
               loss: Optional[Dict[str, Any]] = None, bf16: bool = False,
               reduce: Optional[Callable[[torch.nn.Module, float], float]] = None) -> float:
    """One optimizer step: cross-entropy at each config, gradients accumulated (loss averaged).

    Args:
        model: the supernet (in train mode).
        optimizer: its optimizer.
        images: float (B, 3, H, W).
        labels: int64 (B, H, W), classes 0..10.
        configs: sparsity configs of this step (see :func:`step_configs`).
        grad_clip: max global gradient norm (0 = no clipping).
        class_weight: optional (K,) per-class weights of the cross-entropy (weighted mean over pixels).
        loss: ``{"kind", "bg_weight", "aux_weight", "at"}`` of :func:`supernet.losses.seg_loss` (default:
            pixel cross-entropy at full resolution with ``class_weight``).
        bf16: bfloat16 autocast of the forward pass (on the device ``images`` are on).
        reduce: data-parallel ranks: ``reduce(model, loss)`` averages the accumulated gradients across ranks and
            returns the mean loss (:func:`supernet.parallel.average_gradients`), before clipping and the step.

    Returns:
        The mean loss over the configs (float; over the ranks too with ``reduce``).
    """
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for c in configs:
        model.set_sparsity(c)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            if loss is None:
                value = F.cross_entropy(model(images), labels, weight=class_weight)
            else:
                value = seg_loss(model, images, labels, **loss)
        (value / len(configs)).backward()
        total += float(value.detach())
    total /= len(configs)
    if reduce is not None:
        total = reduce(model, total)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total


# --------------------------------------------------------------------------------------------
# training state (resume)
# --------------------------------------------------------------------------------------------
def state_path(checkpoint: os.PathLike | str) -> Path:
    """``X.safetensors`` -> ``X.state.pt`` (optimizer / scheduler / RNG state for resume)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".state.pt")


def _config_fingerprint(cfg: TrainConfig | Dict[str, Any]) -> Dict[str, Any]:
    """What must not change across a resume (threads, data_dir and paths may), of a spec or its JSON dump."""
    d = json.loads(json.dumps(cfg)) if isinstance(cfg, dict) else cfg.model_dump(mode="json")
    d["train"].pop("threads", None)
    d["train"].pop("processes", None)
    d["train"].pop("device", None)
    d["data"].pop("data_dir", None)
    d["data"].pop("val_min_items", None)  # validation layout: scores, never trains
    d["data"].pop("val_max_items", None)
    d.pop("output", None)
    d["model"].pop("timm_weights", None)
    d["model"].pop("init", None)
    return d


def spec_diff(saved: Dict[str, Any], cfg: TrainConfig) -> str:
    """``"[section] key, ..."`` where the fingerprint ``saved`` differs from ``cfg``'s ("" when they agree): the
    check ``--resume`` makes, and ``experiments/fashion_mosaic/ship_weights.py`` makes before shipping a checkpoint
    under a recipe's name.

    ``saved`` is read as a spec first, so a key added to the spec after the checkpoint was written compares as
    its default (the shipped dense model's sidecar predates ``[model] window_importance``); a fingerprint that is
    no longer a valid spec (a key since removed) is compared as it is, and differs."""
    now = _config_fingerprint(cfg)
    try:
        saved = _config_fingerprint(TrainConfig.model_validate(saved))
    except ValidationError:
        pass
    return ", ".join(f"[{s}] {k}" for s in now for k in sorted(set(now[s]) | set(saved.get(s, {})))
                     if now[s].get(k) != saved.get(s, {}).get(k))


def _save_state(path: Path, *, epoch: int, step: int, optimizer, scheduler, rng: np.random.Generator,
                weights_sha256: str, cfg: TrainConfig, history: List[Dict[str, Any]]) -> None:
    state = {
        "format_version": STATE_FORMAT,
        "epoch": int(epoch),
        "step": int(step),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "weights_sha256": weights_sha256,
        "config": json.dumps(_config_fingerprint(cfg), sort_keys=True),
        "history": json.dumps(history),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path) -> Dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              "fix: rerun with --overwrite instead of --resume to train from scratch") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state of format {STATE_FORMAT}; "
                              "fix: rerun with --overwrite instead of --resume to train from scratch")
    try:  # what _save_state wrote, by type: a state that loads but holds anything else is refused here
        ok = (isinstance(state.get("epoch"), int) and isinstance(state.get("step"), int)
              and isinstance(state.get("optimizer"), dict) and isinstance(state.get("scheduler"), dict)
              and isinstance(state.get("torch_rng"), torch.Tensor) and isinstance(state.get("weights_sha256"), str)
              and isinstance(json.loads(state["numpy_rng"]), dict) and isinstance(json.loads(state["config"]), dict)
              and all(isinstance(h, dict) for h in json.loads(state["history"]))
              and isinstance(json.loads(state["history"]), list))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is not a training state written by `sparsesearch supernet train` (a field is "
                              "missing or of the wrong type); fix: rerun with --overwrite instead of --resume to "
                              "train from scratch")
    return state


def _warm_resume(cfg: TrainConfig, ckpt: Path, model: SegSupernet, optimizer: torch.optim.Optimizer,
                 log: Callable[[str], None]) -> Tuple[int, int, List[Dict[str, Any]]]:
    """Continue from a checkpoint whose ``X.state.pt`` is gone (e.g. the shipped, float16-stored weights copied
    to ``[output] checkpoint``): the weights, epoch, step and history come from the sidecar; AdamW starts with
    empty moments at the schedule's learning rate of that step, and the RNGs are reseeded from (seed, epoch).
    Not bit-exact with an uninterrupted run (the optimizer moments are lost); logged as such.

    Returns:
        (epoch, step, history) of the checkpoint; the model holds its weights (float32).

    Raises:
        TrainSpecError: the sidecar has no training record, was written by another spec, or is complete.
        CheckpointError: the weights do not load.
    """
    loaded, meta = load_checkpoint(ckpt, verify=False)
    tr = meta.get("training") or {}
    if not isinstance(tr, dict) or not isinstance(tr.get("config"), dict) or not isinstance(tr.get("step"), int) \
            or not isinstance(tr.get("epoch"), int) or not isinstance(tr.get("history") or [], list):
        raise TrainSpecError(f"{ckpt}: no training record in its sidecar and no {state_path(ckpt).name}; "
                             "fix: rerun with --overwrite instead of --resume to train from scratch")
    try:
        diff = spec_diff(_config_fingerprint(tr["config"]), cfg)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TrainSpecError(f"{ckpt}: the training record in its sidecar is malformed; fix: rerun with --overwrite "
                             "instead of --resume to train from scratch") from None
    if diff:
        raise TrainSpecError(f"{ckpt}: written by another spec ({diff}); "
                             "fix: restore the spec, or rerun with --overwrite instead of --resume")
    if tr.get("complete"):
        raise TrainSpecError(f"{ckpt}: training is complete but {state_path(ckpt).name} is missing; nothing to resume; "
                             "fix: use the checkpoint as it is, or set [output] checkpoint to a new file to train again")
    model.load_state_dict(loaded.state_dict(), strict=True)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    epoch, step = int(tr["epoch"]), int(tr["step"])
    log(f"{state_path(ckpt).name} is missing: continuing {ckpt} from its weights at epoch {epoch}/{cfg.total_epochs} "
        f"(step {step}) with a fresh AdamW state (not bit-exact with an uninterrupted run)")
    return epoch, step, list(tr.get("history") or [])


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _epoch_loader(cfg: TrainConfig, dataset: FashionMosaic, epoch: int, phase: Optional[Phase] = None,
                  phase_epoch: Optional[int] = None, rank: Optional[Rank] = None) -> torch.utils.data.DataLoader:
    """Shuffled canvases of one epoch; the order depends only on (seed, epoch).

    ``dataset`` holds the canvases of ``phase`` (default: the full-size phases, where ``epoch``
    counts full-size epochs); ``phase_epoch`` is the epoch inside that dataset. With a data-parallel
    ``rank``, that rank's part of every batch (:func:`supernet.parallel.rank_batches`).
    """
    n = phase.length if phase is not None else cfg.data.train_length
    bs = phase.batch_size if phase is not None else cfg.train.batch_size
    e = epoch if phase_epoch is None else phase_epoch
    g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
    offset = e * n if cfg.data.fresh_canvases else 0
    order = (torch.randperm(n, generator=g) + offset).tolist()
    if rank is not None and rank.world > 1:
        order, bs = rank_batches(order, bs, rank.rank, rank.world), bs // rank.world
    return torch.utils.data.DataLoader(dataset, batch_size=bs, sampler=order, drop_last=True)


def _sidecar_extras(cfg: TrainConfig) -> Dict[str, Any]:
    d = cfg.data
    dataset = {"name": "fashion_mosaic", **d.mosaic().model_dump(mode="json"), "train_length": d.train_length,
               "train_seed": cfg.train.seed, "fresh_canvases": d.fresh_canvases, "val_split": "val",
               "val_length": d.val_length, "val_seed": d.val_seed}
    space = {"ratios": list(cfg.train.ratios), "rule": "sparsevit-pairs", "sampling": cfg.train.sampling}
    return {"img_size": cfg.model.img_size, "num_classes": NUM_SEG_CLASSES, "search_space": space, "dataset": dataset}


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          log: Optional[Callable[[str], None]] = None, stop_after: Optional[int] = None,
          _rank: Optional[Rank] = None) -> Dict[str, Any]:
    """Train the supernet of ``cfg``; write the checkpoint after every epoch; return the final metrics.

    Args:
        cfg: the spec.
        resume: continue from ``X.state.pt`` + ``X.safetensors`` at the last completed epoch (starts
            from scratch when neither exists; returns the stored metrics when training is complete). With
            ``X.safetensors`` alone (state lost, or shipped weights copied there): a warm restart from its
            sidecar's epoch with a fresh optimizer state (:func:`_warm_resume`).
        progress: tqdm progress bar (loss, canvases/s, lr, ETA) on stderr.
        log: one-line messages (default: ``tqdm.write`` to stderr when ``progress``, else silent).
        stop_after: stop once this many epochs of the run are complete (checkpoint + state written),
            to split a run across jobs; continue later with ``resume=True``.
        _rank: set by :func:`supernet.parallel.launch` in each data-parallel process. With ``[train] processes`` >
            1 a call without it starts that many processes (:mod:`supernet.parallel`; ``log`` is then rank 0's
            default) and returns rank 0's result.

    Returns:
        The metrics written into the sidecar: the :func:`supernet.evaluate.reference_table` result
        (``dense``, ``uniform`` with retention) plus ``"train"`` = {seconds, canvases_per_s, steps,
        epochs, final_loss} and ``"checkpoint"`` = the weights path. When ``stop_after`` ended the
        call early: ``{"complete": False, "epoch", "step", "checkpoint"}``.

    Raises:
        TrainSpecError: the model cannot be built, ``resume`` with a different spec, or ``[train] device`` names a
            device this machine lacks (refused before anything is written).
        CheckpointError: the state file does not belong to the checkpoint, or is unreadable.
        supernet.data.DatasetNotFoundError: the Fashion-MNIST files are missing.
    """
    from tqdm.auto import tqdm

    t = cfg.train
    try:
        device = resolve_device(t.device)
    except ValueError as e:
        raise TrainSpecError(f"[train] device {t.device!r}: {e}; fix: set [train] device = \"cpu\" (or pass "
                             "--device cpu), or train on a machine with that device") from None
    if t.processes > 1 and _rank is None:
        if device.type != "cpu":
            raise TrainSpecError(f"[train] processes = {t.processes} trains data-parallel on the CPU, not on "
                                 f"{device}; fix: set [train] processes = 1 to train on {device}")
        from .parallel import launch

        return launch(cfg, t.processes, resume=resume, progress=progress, stop_after=stop_after)
    world = _rank.world if _rank is not None else 1
    main = _rank is None or _rank.main
    if not main:
        progress, log = False, (lambda s: None)
    if log is None:
        log = (lambda s: tqdm.write(s, file=sys.stderr)) if progress else (lambda s: None)
    all_threads = t.threads or torch.get_num_threads()
    threads = max(1, all_threads // world)  # each rank's share of the threads
    if t.threads or world > 1:
        torch.set_num_threads(threads)
    reduce = (lambda m, loss: average_gradients(m, loss, world)) if world > 1 else None
    ckpt = Path(cfg.output.checkpoint)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    spath = state_path(ckpt)
    extras = _sidecar_extras(cfg)
    total_steps = sum(ph.epochs * ph.steps_per_epoch for ph in cfg.phases())

    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = build_supernet(cfg, dynamic_size=cfg.lowres.epochs > 0).to(device)
    optimizer = make_optimizer(model, t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg))
    epoch, step, history = 0, 0, []
    train_seconds, canvases_seen = 0.0, 0

    if resume and spath.is_file() and ckpt.is_file():
        state = _load_state(spath)
        sha = sha256_file(ckpt)
        if state["weights_sha256"] != sha:
            raise CheckpointError(f"{spath} belongs to a different {ckpt.name} (sha256 "
                                  f"{state['weights_sha256'][:12]}... != {sha[:12]}...); "
                                  "fix: rerun with --overwrite instead of --resume to train from scratch")
        diff = spec_diff(json.loads(state["config"]), cfg)
        if diff:
            raise TrainSpecError(f"{ckpt}: the spec changed since this checkpoint was written ({diff}); "
                                 "fix: restore the spec, or rerun with --overwrite instead of --resume")
        loaded, meta = load_checkpoint(ckpt, verify=False)
        model.load_state_dict(loaded.state_dict(), strict=True)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{spath} does not fit this model's optimizer / schedule / RNGs ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:120] if str(e) else ''}); fix: rerun with --overwrite "
                                  "instead of --resume to train from scratch") from None
        epoch, step = int(state["epoch"]), int(state["step"])
        history = json.loads(state["history"])
        log(f"resuming {ckpt} at epoch {epoch}/{cfg.total_epochs} (step {step})")
        if epoch >= cfg.total_epochs and (meta.get("training") or {}).get("complete") and meta.get("metrics"):
            return {**meta["metrics"], "checkpoint": str(ckpt)}
    elif resume and ckpt.is_file():
        epoch, step, history = _warm_resume(cfg, ckpt, model, optimizer, log)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg), last_epoch=step - 1)
        torch.manual_seed(t.seed * 1_000_003 + epoch)
        rng = np.random.default_rng([t.seed, epoch])
    elif resume:
        start = f"from [model] init {cfg.model.init}" if cfg.model.init else "from scratch"
        log(f"nothing to resume at {ckpt}; training {start}")
    if history:  # resumed: the compute so far, and nothing to do when already past --stop-after
        train_seconds = float(sum(h.get("seconds", 0.0) for h in history))
        canvases_seen = int(sum(h.get("canvases", 0) for h in history))
        if stop_after is not None and stop_after <= epoch < cfg.total_epochs:
            log(f"already past epoch {stop_after}: nothing to do")
            return {"complete": False, "epoch": epoch, "step": step, "checkpoint": str(ckpt)}

    lo = cfg.lowres
    n_full = t.dense_epochs + t.adapt_epochs
    dataset = FashionMosaic("train", length=cfg.data.train_length * (n_full if cfg.data.fresh_canvases else 1),
                            spec=cfg.data.mosaic(), seed=t.seed)
    low_dataset = (FashionMosaic("train", length=lo.train_length * (lo.epochs if cfg.data.fresh_canvases else 1),
                                 spec=cfg.lowres_spec(), seed=t.seed + 7919) if lo.epochs else None)
    schedule = [ph for ph in cfg.phases() for _ in range(ph.epochs)]  # the phase of every epoch
    depths = model.depths
    arch = arch_of(model, cfg)
    class_weight = None
    loss_spec = None
    if t.loss != "ce" or t.aux_weight > 0 or t.loss_resolution != "full":
        loss_spec = {"kind": t.loss, "bg_weight": t.background_weight, "aux_weight": t.aux_weight,
                     "at": t.loss_resolution}
    elif t.background_weight != 1.0:  # class 0 = background, most of the pixels of a canvas
        class_weight = torch.ones(NUM_SEG_CLASSES, device=device)
        class_weight[0] = t.background_weight
    if world > 1:  # the same weights on every rank before the first step (built from the seed, or resumed)
        check_ranks_agree(model)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    loss_ema = None
    try:
        while epoch < cfg.total_epochs:
            ph = schedule[epoch]
            phase = ph.name
            bar.set_description(f"epoch {epoch + 1}/{cfg.total_epochs} {phase}")
            model.train()
            if world > 1:  # DropPath draws per rank, reproducible from (seed, epoch, rank) whatever was resumed
                torch.manual_seed((t.seed * 1_000_003 + epoch) * 64 + _rank.rank)
            t0 = time.perf_counter()
            losses: List[float] = []
            n_img = 0
            if ph.name == "lowres":
                loader = _epoch_loader(cfg, low_dataset, epoch, ph, phase_epoch=epoch, rank=_rank)
            else:  # full-size epochs keep their canvases whether or not a lowres phase came first
                loader = _epoch_loader(cfg, dataset, epoch - lo.epochs, rank=_rank)
            for images, labels in loader:
                if device.type != "cpu":
                    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                configs = step_configs(t.sampling, depths, t.ratios, rng, t.sandwich_random, not ph.sparse)
                loss = train_step(model, optimizer, images, labels, configs, t.grad_clip, class_weight, loss_spec,
                                  t.bf16, reduce)
                scheduler.step()
                step += 1
                n_img += images.shape[0] * world
                losses.append(loss)
                loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
                dt = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{n_img / max(dt, 1e-9):.1f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                bar.update(1)
            seconds = time.perf_counter() - t0
            model.set_sparsity([[0.0] * d for d in depths])
            entry: Dict[str, Any] = {"epoch": epoch + 1, "phase": phase, "loss": float(np.mean(losses)),
                                     "last_loss": losses[-1], "lr_end": float(optimizer.param_groups[0]["lr"]),
                                     "seconds": seconds, "canvases": n_img, "canvases_per_s": n_img / max(seconds, 1e-9),
                                     "device": device.type}
            if t.val_each_epoch and main:
                torch.set_num_threads(all_threads)  # the other ranks wait in check_ranks_agree below
                entry["val_dense"] = evaluate_config(model, None, length=t.val_each_epoch_length or cfg.data.val_length,
                                                     batch_size=t.eval_batch_size, spec=cfg.data.val_mosaic(),
                                                     seed=cfg.data.val_seed)
                torch.set_num_threads(threads)
            history.append(entry)
            train_seconds += seconds
            canvases_seen += n_img
            epoch += 1
            log(f"epoch {epoch}/{cfg.total_epochs} {phase}: loss {entry['loss']:.4f}, "
                f"{entry['canvases_per_s']:.1f} canvases/s, {seconds:.0f} s"
                + (f", val dense mIoU {entry['val_dense']['miou']:.4f} (item-pixel class acc "
                   f"{entry['val_dense']['item_class_acc']:.3f})" if "val_dense" in entry else ""))
            training = {"config": cfg.model_dump(mode="json"), "epoch": epoch, "epochs": cfg.total_epochs,
                        "step": step, "complete": False, "history": history, "state_file": spath.name}
            if world > 1:
                check_ranks_agree(model)
            if main:
                save_checkpoint(model, ckpt, arch=arch, training=training, metrics=None, **extras)
                _save_state(spath, epoch=epoch, step=step, optimizer=optimizer, scheduler=scheduler, rng=rng,
                            weights_sha256=sha256_file(ckpt), cfg=cfg, history=history)
            if world > 1:
                torch.distributed.barrier()
            if stop_after is not None and epoch >= stop_after and epoch < cfg.total_epochs:
                log(f"stopping after epoch {epoch}/{cfg.total_epochs}; continue with resume")
                return {"complete": False, "epoch": epoch, "step": step, "checkpoint": str(ckpt)}
    finally:
        bar.close()

    if not main:  # rank 0 evaluates and writes the final checkpoint
        return {"complete": True, "epoch": epoch, "step": step, "checkpoint": str(ckpt)}
    if world > 1:
        torch.set_num_threads(all_threads)
    log(f"evaluating dense and uniform {', '.join(f'{r:g}' for r in t.eval_ratios)} on "
        f"{cfg.data.val_length} val canvases")
    t0 = time.perf_counter()
    model.set_sparsity([[0.0] * d for d in depths])
    table = reference_table(model, t.eval_ratios, length=cfg.data.val_length, batch_size=t.eval_batch_size,
                            spec=cfg.data.val_mosaic(), seed=cfg.data.val_seed)
    metrics = dict(table)
    metrics["train"] = {"seconds": train_seconds, "eval_seconds": time.perf_counter() - t0, "steps": step,
                        "epochs": epoch, "canvases": canvases_seen,
                        "canvases_per_s": canvases_seen / max(train_seconds, 1e-9),
                        "final_loss": history[-1]["loss"] if history else None}
    training = {"config": cfg.model_dump(mode="json"), "epoch": epoch, "epochs": cfg.total_epochs, "step": step,
                "complete": True, "history": history, "state_file": spath.name}
    save_checkpoint(model, ckpt, arch=arch, training=training, metrics=metrics, **extras)
    _save_state(spath, epoch=epoch, step=step, optimizer=optimizer, scheduler=scheduler, rng=rng,
                weights_sha256=sha256_file(ckpt), cfg=cfg, history=history)
    metrics["checkpoint"] = str(ckpt)
    return metrics


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def cli_train(args: Any) -> int:
    """``sparsesearch supernet train SPEC.toml [--resume | --overwrite] [--stop-after EPOCH] [--device DEV] [--json]``.

    A run without ``--resume`` refuses to start over an existing ``[output] checkpoint`` (or its training state)
    unless ``--overwrite`` says so: what an earlier run recorded is never replaced by accident.

    Args:
        args: a Namespace with ``.spec`` (path), ``.resume`` (bool), ``.overwrite`` (bool, optional),
            ``.stop_after`` (epoch or None), ``.device`` (optional: overrides ``[train] device``), ``.json`` (bool).

    Returns:
        0 on success.

    Raises:
        TrainSpecError, CheckpointError, DatasetNotFoundError: user errors; the ``sparsesearch`` CLI prints
            them as one ``sparsesearch: error:`` line and exits 2.
    """
    cfg = load_train_spec(args.spec)
    if getattr(args, "device", None):  # where to train is not part of the recipe: a run may move between devices
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": args.device})})
    resume = bool(getattr(args, "resume", False))
    ckpt = Path(cfg.output.checkpoint)
    if not getattr(args, "overwrite", False):
        if not resume:
            refuse_overwrite(f"{args.spec}: [output] checkpoint", (ckpt,), error=TrainSpecError,
                             fix="pass --resume to continue it, or set [output] checkpoint to a new file")
        left = [p for p in (state_path(ckpt), sidecar_path(ckpt)) if p.exists()] if not ckpt.exists() else []
        if left:  # the weights are gone: nothing to resume, but these files of an earlier run would be replaced
            raise TrainSpecError(f"{args.spec}: {', '.join(map(str, left))} of an earlier run (its weights {ckpt.name} "
                                 "are gone) would be overwritten; fix: restore the weights"
                                 + (" to resume" if resume else "") + ", delete these files, pass --overwrite, or set "
                                 "[output] checkpoint to a new file")
    try:
        metrics = train(cfg, resume=resume, progress=True, stop_after=getattr(args, "stop_after", None))
    except TrainSpecError as e:  # name the recipe the section came from
        msg = str(e)
        raise TrainSpecError(msg if str(args.spec) in msg else f"{args.spec}: {msg}") from None
    if getattr(args, "json", False):
        print(strict_json(metrics))  # NaN -> null
        return 0
    if metrics.get("complete") is False:  # --stop-after ended the run part-way
        print(f"checkpoint {metrics['checkpoint']} at epoch {metrics['epoch']} of {cfg.total_epochs} "
              f"(step {metrics['step']}); continue with --resume")
        return 0
    tr = metrics.get("train", {})
    print(f"checkpoint {metrics.get('checkpoint')} (sidecar {Path(str(metrics.get('checkpoint'))).with_suffix('.json').name})")
    if tr:
        print(f"trained {tr.get('epochs')} epochs, {tr.get('steps')} steps, {tr.get('canvases')} canvases in "
              f"{tr.get('seconds', 0):.0f} s ({tr.get('canvases_per_s', 0):.1f} canvases/s)")
    print(format_table(metrics))
    return 0
