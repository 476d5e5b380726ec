"""Supernet checkpoints: safetensors weights + a JSON sidecar. Loading never unpickles.

A checkpoint is two files with the same stem::

    X.safetensors   the SegSupernet state_dict (timm keys under ``backbone.``, head under ``decode.``)
    X.json          the sidecar: how to rebuild the model, what it was trained on, how good it is,
                    and the sha256 of X.safetensors

Sidecar fields (``format_version`` 1)::

    format_version   int, 1
    arch             {"timm_name": str, "timm_kwargs": {embed_dim, depths, num_heads, window_size, ...},
                      "head_dim": int, "num_classes": int, "input_size": int (optional: the backbone's
                      input size when images are resized before it, the reduced-resolution baseline)}
    img_size         int or [H, W], input size in pixels
    num_classes      int, segmentation classes (11 for FashionMosaic)
    search_space     dict or null, e.g. {"ratios": [0.0, 0.1, ..., 0.8]}
    dataset          dict or null, MosaicSpec fields + "name", "val_seed", "val_length", ...
    training         dict or null, the training config and progress (epoch, step, ...)
    metrics          dict or null, e.g. the :func:`supernet.evaluate.reference_table` output
    weights_file     str, the weights file name (X.safetensors)
    weights_sha256   str, hex sha256 of the bytes of X.safetensors
    tensors          {name: shape}, every tensor of the weights file
    created          str, ISO-8601 UTC time of writing
    versions         {"torch": ..., "timm": ..., "safetensors": ...}

The model is rebuilt with ``SegSupernet.from_timm(timm_name, img_size=..., num_classes=...,
head_dim=..., **timm_kwargs)`` (``pretrained=False``: nothing is downloaded), then the weights are
loaded strictly. SparseViT (arXiv 2303.17605, Sec. 3.2 "sparsity-aware adaptation") trains one set
of weights for every sparsity config; this file is that supernet, shipped to the search workers.

Ray workers receive the raw bytes of the weights file through the object store:
:func:`read_checkpoint_bytes` on the driver, :func:`load_checkpoint_bytes` on the worker (which
re-verifies the sha256 of the bytes it got).

Every user-fixable problem (missing file, missing or malformed sidecar, corrupted weights,
mismatched tensors) raises :class:`CheckpointError` with a one-line message naming the file and
the fix.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import fileio
from .fileio import atomic_write_bytes, sha256_bytes, strict_json, to_json_safe
from .seg import SegSupernet

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "sidecar_path",
    "weights_path",
    "sha256_file",
    "sha256_bytes",
    "save_checkpoint",
    "read_sidecar",
    "build_model",
    "load_checkpoint",
    "load_from_state_dict",
    "load_state_dict_bytes",
    "read_checkpoint_bytes",
    "load_checkpoint_bytes",
    "load_timm_state_dict",
    "atomic_write_bytes",
    "write_sidecar",
    "to_json_safe",
    "check_checkpoint",
    "Sidecar",
    "export_checkpoint",
]

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "arch", "img_size", "num_classes", "weights_sha256", "tensors")
_PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint file or its sidecar is missing, malformed, corrupted or does not fit the model.

    The message is one line naming the file and the fix.
    """


# --------------------------------------------------------------------------------------------
# paths, hashing, atomic writes
# --------------------------------------------------------------------------------------------
def weights_path(path: _PathLike) -> Path:
    """The ``.safetensors`` weights file of a checkpoint given either of its two files.

    ``X.json`` -> ``X.safetensors``; any other path is returned unchanged.
    """
    p = Path(path)
    return p.with_suffix(".safetensors") if p.suffix == ".json" else p


def sidecar_path(path: _PathLike) -> Path:
    """The JSON sidecar of a checkpoint: same folder and stem, suffix ``.json`` (X.safetensors -> X.json)."""
    return weights_path(path).with_suffix(".json")


def sha256_file(path: _PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file (:func:`supernet.fileio.sha256_file`).

    Raises:
        CheckpointError: the file does not exist.
    """
    try:
        return fileio.sha256_file(path, chunk_size)
    except FileNotFoundError:
        raise CheckpointError(f"{Path(path)} not found; fix: pass the path of an existing file") from None


def write_sidecar(weights: _PathLike, meta: Mapping[str, Any]) -> Path:
    """Atomically write ``meta`` as the sidecar of the weights file ``weights`` (``Y.json`` beside
    ``Y.safetensors``): indented strict JSON (NaN -> ``null``), each list of numbers on one line.

    Returns:
        The sidecar's path."""
    return fileio.atomic_write_json(sidecar_path(weights), meta, indent=2, number_lists_on_one_line=True)


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------
def _check_arch(arch: Any, where: str) -> Dict[str, Any]:
    if not isinstance(arch, Mapping) or not isinstance(arch.get("timm_name"), str) \
            or not isinstance(arch.get("timm_kwargs", {}), Mapping):
        raise CheckpointError(
            f"{where}: arch must be a dict with 'timm_name' (str) and 'timm_kwargs' (dict), got {arch!r}; "
            "fix: pass arch={'timm_name': ..., 'timm_kwargs': {...}, 'head_dim': ..., 'num_classes': ...}")
    return dict(arch)


def _canonical_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """``data`` (a serialised safetensors file) with its ``__metadata__`` keys in sorted order.

    safetensors writes the metadata from a hash map, so its key order (and the file's sha256) changes from one
    save to the next; the shipped weights' recorded sha256 must be reproducible by their command. The sorted
    form has the same length as any other order, so the header length and the tensor offsets stay as they are."""
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].decode("utf-8")
    want = json.dumps(dict(sorted(metadata.items())), separators=(",", ":"))
    tag = '"__metadata__":'
    at = header.find(tag)
    while at >= 0:  # decode the metadata object where it stands, swap in its sorted form of equal byte length
        start = at + len(tag)
        try:
            got, end = json.JSONDecoder().raw_decode(header, start)
        except ValueError:
            got, end = None, start
        if got == dict(metadata) and len(header[start:end].encode("utf-8")) == len(want):
            return data[:8] + (header[:start] + want + header[end:]).encode("utf-8") + data[8 + n:]
        at = header.find(tag, start)
    return data  # an unforeseen serialisation: left as written


def save_checkpoint(model: SegSupernet, path: _PathLike, *, arch: Dict[str, Any],
                    img_size: Union[int, Tuple[int, int]], num_classes: int,
                    search_space: Optional[Dict[str, Any]] = None, dataset: Optional[Dict[str, Any]] = None,
                    training: Optional[Dict[str, Any]] = None, metrics: Optional[Dict[str, Any]] = None,
                    storage_dtype: str = "float32") -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its sidecar ``X.json``, both atomically.

    Args:
        model: the supernet; its ``state_dict()`` is saved (tensors moved to CPU, made contiguous).
        path: the weights file, normally ``X.safetensors`` (the sidecar is ``X.json`` next to it).
        arch: ``{"timm_name", "timm_kwargs", "head_dim", "num_classes"}``; enough to rebuild the model
            with :meth:`SegSupernet.from_timm`. ``head_dim`` defaults to the model's, ``num_classes``
            to the argument.
        img_size: input size in pixels (int or (H, W)).
        num_classes: segmentation classes.
        search_space, dataset, training, metrics: JSON-serialisable dicts stored as they are
            (tuples become lists, NaN/inf become null).
        storage_dtype: "float32" (default), "float16" or "bfloat16": how floating tensors are stored
            (half the bytes for shipped weights); loading always gives float32.

    Returns:
        The weights path.

    Raises:
        CheckpointError: ``arch`` lacks ``timm_name`` / ``timm_kwargs`` or ``path`` ends in ``.json``.
    """
    import safetensors
    import safetensors.torch
    import timm

    p = Path(path)
    if p.suffix == ".json":
        raise CheckpointError(f"{p}: weights path ends in .json; fix: pass X.safetensors (X.json is the sidecar)")
    arch = _check_arch(arch, str(p))
    arch.setdefault("head_dim", int(model.decode.head_dim))
    arch.setdefault("num_classes", int(num_classes))
    arch["timm_kwargs"] = dict(arch.get("timm_kwargs", {}))

    store = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if storage_dtype not in store:
        raise CheckpointError(f"{p}: storage_dtype {storage_dtype!r} is not one of {', '.join(store)}")
    cast = store[storage_dtype]
    state = {k: (v.detach().to("cpu").to(cast) if cast is not None and v.is_floating_point() else v.detach().to("cpu"))
             .contiguous().clone() for k, v in model.state_dict().items()}
    fmt = {"format": "pt", "sparsesearch_format": str(FORMAT_VERSION)}
    data = _canonical_metadata(safetensors.torch.save(state, metadata=fmt), fmt)
    p = atomic_write_bytes(p, data)
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "img_size": list(img_size) if isinstance(img_size, (tuple, list)) else int(img_size),
        "num_classes": int(num_classes),
        "search_space": search_space,
        "dataset": dataset,
        "training": training,
        "metrics": metrics,
        "weights_file": p.name,
        "weights_sha256": sha256_file(p),
        "storage_dtype": storage_dtype,
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "timm": timm.__version__,
                     "safetensors": getattr(safetensors, "__version__", "?")},
    }
    write_sidecar(p, meta)
    return p


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------
def read_sidecar(path: _PathLike) -> Dict[str, Any]:
    """Read and check the sidecar ``X.json`` of a checkpoint (``path`` is X.safetensors or X.json).

    Returns:
        The sidecar dict (see the module docstring).

    Raises:
        CheckpointError: the sidecar is missing, not valid JSON, lacks a required field or has an
            unknown ``format_version``.
    """
    side = sidecar_path(path)
    w = weights_path(path)
    try:
        text = side.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(
            f"{side} (sidecar of {w.name}) not found; fix: keep X.json next to X.safetensors "
            "(save_checkpoint writes both) or re-save the checkpoint") from None
    except (UnicodeDecodeError, OSError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror
        raise CheckpointError(f"{side} (sidecar of {w.name}) cannot be read ({why}); fix: restore the X.json "
                              "save_checkpoint wrote beside X.safetensors, or re-save the checkpoint") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{side} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "fix: restore the sidecar written by save_checkpoint or re-save the checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side} must hold a JSON object, got {type(meta).__name__}; "
                              "fix: restore the sidecar written by save_checkpoint")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{side} lacks {', '.join(missing)}; fix: restore the sidecar written by "
                              "save_checkpoint or re-save the checkpoint")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{side} has format_version {meta['format_version']!r}, this code reads "
                              f"{FORMAT_VERSION}; fix: re-save the checkpoint with this version of sparsesearch")
    _check_arch(meta["arch"], str(side))
    try:
        Sidecar.model_validate(meta)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        raise CheckpointError(f"{side}: {loc}: {err.get('msg', '')} (got {err.get('input')!r:.60}); fix: restore the "
                              "sidecar written by save_checkpoint or re-save the checkpoint") from None
    return meta


class SidecarArch(BaseModel):
    """``arch`` of a sidecar: how to rebuild the model (timm kwargs a timm Swin accepts; timm's defaults for
    the ones left out)."""

    model_config = ConfigDict(extra="allow")
    timm_name: str
    timm_kwargs: Dict[str, Any] = Field(default_factory=dict)
    head_dim: int = Field(64, ge=1)
    num_classes: Optional[int] = Field(None, ge=1)
    input_size: Optional[int] = Field(None, ge=1)
    head_norm: bool = False
    head_first_stage: int = Field(0, ge=0)
    window_importance: Literal["magnitude", "centred"] = "magnitude"


class SidecarSearchSpace(BaseModel):
    """``search_space`` of a sidecar: the activation-sparsity ratios (0..1, below 1) the supernet was adapted for."""

    model_config = ConfigDict(extra="allow")
    ratios: Optional[List[Annotated[float, Field(ge=0.0, lt=1.0)]]] = Field(None, min_length=1)


class Sidecar(BaseModel):
    """The checkpoint sidecar ``X.json`` as a typed model (see the module docstring for the fields)."""

    model_config = ConfigDict(extra="allow")
    format_version: int
    arch: SidecarArch
    search_space: Optional[SidecarSearchSpace] = None
    img_size: Union[int, Tuple[int, int]]
    num_classes: int = Field(ge=1)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensors: Dict[str, list]
    storage_dtype: str = "float32"


def check_checkpoint(path: _PathLike) -> Dict[str, Any]:
    """Everything a worker would find wrong with a checkpoint, found on the driver without loading the weights.

    Reads the sidecar (typed), hashes the weights against it, reads the safetensors header (names and shapes
    of the stored tensors) and builds the model the sidecar describes: the stored tensors, the sidecar's
    tensor list and the model must all agree. Every message names the file at fault and the fix.

    Returns:
        The sidecar dict.

    Raises:
        CheckpointError: missing weights or sidecar, hash mismatch, not a safetensors file, or a sidecar
            describing another model than the weights hold.
    """
    import safetensors

    w = weights_path(path)
    side = sidecar_path(w)
    if not w.is_file():
        raise CheckpointError(f"checkpoint weights {w} not found; fix: train it first (`sparsesearch supernet train "
                              "RECIPE`) or correct the path")
    meta = read_sidecar(w)
    sha = sha256_file(w)
    if sha != meta.get("weights_sha256"):
        raise CheckpointError(f"{w} does not match its sidecar {side} (sha256 {sha[:12]}... != "
                              f"{str(meta.get('weights_sha256'))[:12]}...); fix: restore the sidecar written with these "
                              "weights, or the weights it describes")
    try:
        with safetensors.safe_open(str(w), framework="pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"{w} is not a valid safetensors file ({str(e).splitlines()[0][:120]}); fix: re-save "
                              "the checkpoint") from None
    diff = _diff_report(stored, meta["tensors"])
    if diff:
        raise CheckpointError(f"{side} lists other tensors than {w.name} holds ({diff}); fix: restore the sidecar "
                              "written with these weights")
    want = {k: list(v.shape) for k, v in build_model(meta).state_dict().items()}
    diff = _diff_report(stored, want)
    if diff:
        arch = meta["arch"]
        raise CheckpointError(f"{side} describes a model ({arch.get('timm_name')}, {arch.get('timm_kwargs')}) that does "
                              f"not fit the tensors of {w.name} ({diff}); fix: restore the sidecar written with these "
                              "weights (its arch must match them)")
    return meta


def build_model(meta: Mapping[str, Any], img_size: Union[int, Tuple[int, int], None] = None) -> SegSupernet:
    """Build the (randomly initialised) :class:`SegSupernet` a sidecar describes; no weights are loaded.

    Args:
        meta: the sidecar dict.
        img_size: build for this input size instead of the sidecar's (the weights are the same at every
            size at which each stage's map holds at least one window: timm's attention masks and relative-position
            indices are derived buffers, not saved), so a model trained at 224 px evaluates at 448 or 672. With an ``input_size`` (reduced-resolution
            baseline) the backbone's size scales by the same factor.

    Raises:
        CheckpointError: timm cannot build the described model (unknown name, bad kwargs).
    """
    arch = _check_arch(meta.get("arch"), "checkpoint sidecar")
    img = meta.get("img_size", 224)
    img = tuple(img) if isinstance(img, list) else int(img)
    if img_size is not None:
        own = img
        img = tuple(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
        if arch.get("input_size") is not None and img != own:
            o = own[0] if isinstance(own, tuple) else own
            n = img[0] if isinstance(img, tuple) else img
            arch = {**arch, "input_size": int(round(int(arch["input_size"]) * n / o))}
    num_classes = int(arch.get("num_classes", meta.get("num_classes", 11)))
    kwargs = dict(arch.get("timm_kwargs") or {})
    for key in ("depths", "num_heads"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    inp = arch.get("input_size")
    inp = tuple(inp) if isinstance(inp, list) else (int(inp) if inp is not None else None)
    try:
        return SegSupernet.from_timm(arch["timm_name"], img_size=img, num_classes=num_classes,
                                     head_dim=int(arch.get("head_dim", 64)), input_size=inp,
                                     head_norm=bool(arch.get("head_norm", False)),
                                     head_first_stage=int(arch.get("head_first_stage", 0)),
                                     window_importance=str(arch.get("window_importance", "magnitude")), **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError / TypeError / AssertionError
        raise CheckpointError(
            f"checkpoint sidecar arch {arch['timm_name']!r} with {kwargs} cannot be built by timm "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "fix: restore the sidecar written by save_checkpoint") from None


def _to_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise CheckpointError(f"state_dict value of type {type(v).__name__} is not a tensor or numpy array; "
                          "fix: pass a dict of torch tensors or numpy arrays")


def _diff_report(got: Mapping[str, Iterable[int]], want: Mapping[str, Iterable[int]], limit: int = 5) -> str:
    """'missing [...]; unexpected [...]; shape mismatches [...]' (empty string when equal)."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [f"{k} {list(got[k])} vs {list(want[k])}" for k in want
              if k in got and list(got[k]) != list(want[k])]

    def fmt(name: str, items: list) -> str:
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"{name} {len(items)}: {', '.join(items[:limit])}{more}"

    parts = [fmt(n, i) for n, i in (("missing", missing), ("unexpected", unexpected),
                                     ("shape mismatches", shapes)) if i]
    return "; ".join(parts)


def load_from_state_dict(meta: Mapping[str, Any], state_dict: Mapping[str, Any], *,
                         map_location: Union[str, torch.device] = "cpu", source: str = "state_dict",
                         img_size: Union[int, Tuple[int, int], None] = None) -> SegSupernet:
    """Build the model a sidecar describes and load an in-memory state_dict into it (no disk access).

    Args:
        meta: the sidecar dict (:func:`read_sidecar`).
        state_dict: ``{name: torch.Tensor or numpy array}`` with exactly the model's keys and shapes.
        map_location: device of the returned model.
        source: name used in error messages (a file name).
        img_size: build for this input size (see :func:`build_model`).

    Returns:
        The :class:`SegSupernet` in eval mode, all ratios 0 (dense), float32.

    Raises:
        CheckpointError: keys or shapes differ from the model's or from the sidecar's ``tensors``.
    """
    model = build_model(meta, img_size=img_size)
    sd = {k: _to_tensor(v) for k, v in state_dict.items()}
    got = {k: list(v.shape) for k, v in sd.items()}
    listed = meta.get("tensors")
    if isinstance(listed, Mapping):
        diff = _diff_report(got, listed)
        if diff:
            raise CheckpointError(
                f"{source} does not match the tensor list of its sidecar ({diff}); "
                "fix: re-save the checkpoint or restore the matching sidecar")
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    diff = _diff_report(got, want)
    if diff and all("relative_position_bias_table" in k for k in want if k in got and list(got[k]) != list(want[k])) \
            and set(got) == set(want):
        raise CheckpointError(
            f"{source}: at {list(model.backbone.img_size)} px a stage's map is smaller than the attention window (timm "
            "shrinks the window there), so the trained relative-position tables do not fit; fix: use an image size at "
            "which every stage's map holds at least one window (e.g. a multiple of patch x window x 8)")
    if diff:
        raise CheckpointError(
            f"{source} does not fit the model its sidecar describes ({meta['arch'].get('timm_name')}, "
            f"{meta['arch'].get('timm_kwargs')}): {diff}; fix: re-save the checkpoint or restore the matching sidecar")
    model.load_state_dict(sd, strict=True)
    return model.to(map_location).eval()


def _verify(sha: str, meta: Mapping[str, Any], wname: str, sname: str) -> None:
    want = meta.get("weights_sha256")
    if sha != want:
        raise CheckpointError(
            f"{wname} does not match its sidecar {sname} (sha256 {sha[:12]}... != {str(want)[:12]}...); "
            "fix: re-save the checkpoint or restore the matching sidecar")


def load_state_dict_bytes(data: Union[bytes, bytearray, memoryview, np.ndarray]) -> Dict[str, torch.Tensor]:
    """Parse the bytes of a ``.safetensors`` file into a CPU state_dict (no unpickling).

    Raises:
        CheckpointError: the bytes are not a valid safetensors file.
    """
    import safetensors.torch

    if isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    buf = data if isinstance(data, bytes) else bytes(data)
    try:
        return safetensors.torch.load(buf)
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"weights bytes are not a valid safetensors file ({str(e).splitlines()[0]}); "
                              "fix: re-save the checkpoint") from None


def load_checkpoint(path: _PathLike, *, verify: bool = True, map_location: Union[str, torch.device] = "cpu",
                    img_size: Union[int, Tuple[int, int], None] = None) -> Tuple[SegSupernet, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: ``X.safetensors`` (or its sidecar ``X.json``).
        verify: check the sha256 of the weights file against the sidecar's ``weights_sha256``.
        map_location: device of the returned model.
        img_size: build the model for this input size (default: the sidecar's; see :func:`build_model`).

    Returns:
        ``(model, meta)``: the :class:`SegSupernet` in eval mode (dense, float32) and the sidecar dict.

    Raises:
        CheckpointError: the weights file or sidecar is missing, the sidecar is malformed, the sha256
            does not match, the file is not valid safetensors, or its tensors do not fit the model.
    """
    import safetensors.torch

    w = weights_path(path)
    if not w.is_file():
        raise CheckpointError(f"checkpoint weights {w} not found; fix: pass an existing .safetensors written by "
                              "save_checkpoint / `sparsesearch supernet train`")
    meta = read_sidecar(w)
    if verify:
        _verify(sha256_file(w), meta, w.name, sidecar_path(w).name)
    try:
        sd = safetensors.torch.load_file(str(w), device="cpu")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{w} is not a valid safetensors file ({str(e).splitlines()[0]}); "
                              "fix: re-save the checkpoint") from None
    model = load_from_state_dict(meta, sd, map_location=map_location, source=w.name, img_size=img_size)
    return model, meta


def read_checkpoint_bytes(path: _PathLike, *, verify: bool = True) -> Tuple[bytes, Dict[str, Any]]:
    """Read the raw bytes of the weights file and the sidecar (driver side, to ship to Ray workers).

    Args:
        path: ``X.safetensors`` (or ``X.json``).
        verify: check the bytes' sha256 against the sidecar now (the worker checks again).

    Returns:
        ``(data, meta)``.

    Raises:
        CheckpointError: missing files, malformed sidecar, sha256 mismatch.
    """
    w = weights_path(path)
    if not w.is_file():
        raise CheckpointError(f"checkpoint weights {w} not found; fix: pass an existing .safetensors written by "
                              "save_checkpoint / `sparsesearch supernet train`")
    meta = read_sidecar(w)
    data = w.read_bytes()
    if verify:
        _verify(sha256_bytes(data), meta, w.name, sidecar_path(w).name)
    return data, meta


def load_checkpoint_bytes(data: Union[bytes, bytearray, memoryview, np.ndarray], meta: Mapping[str, Any], *,
                          verify: bool = True, map_location: Union[str, torch.device] = "cpu",
                          img_size: Union[int, Tuple[int, int], None] = None) -> SegSupernet:
    """Build the supernet from the bytes of its ``.safetensors`` file and its sidecar (worker side).

    Args:
        data: the file's bytes (bytes, memoryview, or a numpy uint8 array from the Ray object store).
        meta: the sidecar dict.
        verify: check ``sha256(data) == meta["weights_sha256"]``.
        map_location: device of the returned model.

    Returns:
        The :class:`SegSupernet` in eval mode (dense).

    Raises:
        CheckpointError: sha256 mismatch, invalid safetensors bytes, or tensors that do not fit.
    """
    name = str(meta.get("weights_file", "weights bytes"))
    if verify:
        _verify(sha256_bytes(data), meta, name, "sidecar")
    sd = load_state_dict_bytes(data)
    return load_from_state_dict(meta, sd, map_location=map_location, source=name, img_size=img_size)


# --------------------------------------------------------------------------------------------
# a user's own timm Swin weights
# --------------------------------------------------------------------------------------------
_TIMM_DERIVED = ("relative_position_index", "attn_mask")  # buffers older timm/official files carry


def load_timm_state_dict(model: torch.nn.Module, path: _PathLike) -> Dict[str, Any]:
    """Load a timm Swin state_dict file into the backbone of ``model`` (e.g. ImageNet weights).

    ``.safetensors`` files are read with safetensors; ``.pth`` / ``.pt`` / ``.bin`` files with
    ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (a file
    holding other pickled objects is refused). A ``{"state_dict": ...}`` / ``{"model": ...}``
    wrapper is unwrapped. Keys must be timm's own (``layers.0.blocks.0.attn.qkv.weight`` ...);
    classifier keys (``head.*``) and the derived buffers ``relative_position_index`` /
    ``attn_mask`` are ignored when the backbone has no such key. Convert other layouts (the original Microsoft release) with
    ``timm.models.swin_transformer.checkpoint_filter_fn`` first.

    Args:
        model: a :class:`SegSupernet` (loads into ``model.backbone``) or a :class:`SparseSwin`.
        path: the state_dict file.

    Returns:
        ``{"loaded": int, "ignored": list[str]}``.

    Raises:
        CheckpointError: missing file, unreadable / non-tensor content, or key / shape mismatches.
    """
    import safetensors.torch

    p = Path(path)
    backbone = getattr(model, "backbone", model)
    if not p.is_file():
        raise CheckpointError(f"timm weights {p} not found; fix: pass an existing .safetensors or .pth file")
    if p.suffix == ".safetensors":
        try:
            sd: Any = safetensors.torch.load_file(str(p), device="cpu")
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{p} is not a valid safetensors file ({str(e).splitlines()[0]}); "
                                  "fix: re-export it with safetensors.torch.save_file") from None
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, ...
            raise CheckpointError(
                f"{p} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); fix: save a plain state_dict of tensors, or convert "
                "it with safetensors.torch.save_file(state_dict, 'X.safetensors') where you trust the file") from None
        for wrapper in ("state_dict", "model", "state_dict_ema"):
            if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
                sd = sd[wrapper]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p} does not hold a state_dict of tensors; fix: save model.state_dict()")
    want = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    ignored = [k for k in sd if k not in want and (k.startswith("head.") or k.rsplit(".", 1)[-1] in _TIMM_DERIVED)]
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}
    got = {k: list(v.shape) for k, v in sd.items()}
    diff = _diff_report(got, want)
    if diff:
        raise CheckpointError(
            f"{p} does not fit the Swin backbone ({diff}); fix: build the supernet with the same timm "
            "name / embed_dim / depths / num_heads / window_size as the weights, or convert foreign keys with "
            "timm's checkpoint_filter_fn")
    backbone.load_state_dict(sd, strict=True)
    return {"loaded": len(sd), "ignored": ignored}


def export_checkpoint(src: _PathLike, dst: _PathLike, *, storage_dtype: str = "float16",
                      metrics: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Re-save a checkpoint for shipping: floating tensors stored as ``storage_dtype`` (half the bytes with
    float16), the sidecar's fields kept, ``metrics`` replaced when given (they should be re-measured on the
    stored weights: loading gives float32 values rounded to ``storage_dtype``).

    Args:
        src: the training checkpoint (X.safetensors).
        dst: the shipped checkpoint (Y.safetensors; Y.json beside it).
        storage_dtype: "float16", "bfloat16" or "float32".
        metrics: the sidecar's new metrics (default: the source's).
        extra: fields merged into the sidecar's ``training`` dict (e.g. the reproducing command, compute).

    Raises:
        CheckpointError: the source is unreadable or ``storage_dtype`` unknown.
    """
    model, meta = load_checkpoint(src)
    training = dict(meta.get("training") or {})
    training.update(extra or {})
    return save_checkpoint(model, dst, arch=dict(meta["arch"]), img_size=meta["img_size"],
                           num_classes=int(meta["num_classes"]), search_space=meta.get("search_space"),
                           dataset=meta.get("dataset"), training=training,
                           metrics=meta.get("metrics") if metrics is None else metrics, storage_dtype=storage_dtype)
