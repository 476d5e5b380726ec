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
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import torch

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
    "atomic_write_json",
    "to_json_safe",
]

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "arch", "img_size", "num_classes", "weights_sha256", "tensors")
_PathLike = Union[str, "os.PathLike[str]"]
_NUM_LIST = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")


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
    """Hex sha256 of a file, read in ``chunk_size``-byte chunks (constant memory).

    Raises:
        CheckpointError: the file does not exist.
    """
    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                h.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"{p} not found; fix: pass the path of an existing file") from None
    return h.hexdigest()


def sha256_bytes(data: Union[bytes, bytearray, memoryview, np.ndarray]) -> str:
    """Hex sha256 of an in-memory buffer (bytes, memoryview or a contiguous numpy uint8 array)."""
    return hashlib.sha256(_as_buffer(data)).hexdigest()


def _as_buffer(data: Any) -> Union[bytes, memoryview]:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    raise TypeError(f"expected bytes, memoryview or a numpy uint8 array, got {type(data).__name__}")


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: _PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_json(path: _PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (strict: NaN becomes ``null``) atomically."""
    text = json.dumps(to_json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    # one line per list of numbers (shapes, configs): a match spanning a line break cannot be inside a string
    text = _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"
                         if "\n" in m.group(0) else m.group(0), text)
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_json_safe(obj: Any) -> Any:
    """Convert tuples, numpy scalars, Paths and non-finite floats to strict-JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


def save_checkpoint(model: SegSupernet, path: _PathLike, *, arch: Dict[str, Any],
                    img_size: Union[int, Tuple[int, int]], num_classes: int,
                    search_space: Optional[Dict[str, Any]] = None, dataset: Optional[Dict[str, Any]] = None,
                    training: Optional[Dict[str, Any]] = None, metrics: Optional[Dict[str, Any]] = None) -> Path:
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

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file(state, tmp, metadata={"format": "pt", "sparsesearch_format": str(FORMAT_VERSION)})
        sha = sha256_file(tmp)
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
            "weights_sha256": sha,
            "tensors": {k: list(v.shape) for k, v in state.items()},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "timm": timm.__version__,
                         "safetensors": getattr(safetensors, "__version__", "?")},
        }
        os.chmod(tmp, _file_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(sidecar_path(p), meta)
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
    return meta


def build_model(meta: Mapping[str, Any]) -> SegSupernet:
    """Build the (randomly initialised) :class:`SegSupernet` a sidecar describes; no weights are loaded.

    Raises:
        CheckpointError: timm cannot build the described model (unknown name, bad kwargs).
    """
    arch = _check_arch(meta.get("arch"), "checkpoint sidecar")
    img = meta.get("img_size", 224)
    img = tuple(img) if isinstance(img, list) else int(img)
    num_classes = int(arch.get("num_classes", meta.get("num_classes", 11)))
    kwargs = dict(arch.get("timm_kwargs") or {})
    for key in ("depths", "num_heads"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    inp = arch.get("input_size")
    inp = tuple(inp) if isinstance(inp, list) else (int(inp) if inp is not None else None)
    try:
        return SegSupernet.from_timm(arch["timm_name"], img_size=img, num_classes=num_classes,
                                     head_dim=int(arch.get("head_dim", 64)), input_size=inp, **kwargs)
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
                         map_location: Union[str, torch.device] = "cpu", source: str = "state_dict") -> SegSupernet:
    """Build the model a sidecar describes and load an in-memory state_dict into it (no disk access).

    Args:
        meta: the sidecar dict (:func:`read_sidecar`).
        state_dict: ``{name: torch.Tensor or numpy array}`` with exactly the model's keys and shapes.
        map_location: device of the returned model.
        source: name used in error messages (a file name).

    Returns:
        The :class:`SegSupernet` in eval mode, all ratios 0 (dense).

    Raises:
        CheckpointError: keys or shapes differ from the model's or from the sidecar's ``tensors``.
    """
    model = build_model(meta)
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

    buf = data if isinstance(data, bytes) else bytes(_as_buffer(data))
    try:
        return safetensors.torch.load(buf)
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends
        raise CheckpointError(f"weights bytes are not a valid safetensors file ({str(e).splitlines()[0]}); "
                              "fix: re-save the checkpoint") from None


def load_checkpoint(path: _PathLike, *, verify: bool = True,
                    map_location: Union[str, torch.device] = "cpu") -> Tuple[SegSupernet, Dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: ``X.safetensors`` (or its sidecar ``X.json``).
        verify: check the sha256 of the weights file against the sidecar's ``weights_sha256``.
        map_location: device of the returned model.

    Returns:
        ``(model, meta)``: the :class:`SegSupernet` in eval mode (dense) and the sidecar dict.

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
    model = load_from_state_dict(meta, sd, map_location=map_location, source=w.name)
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
                          verify: bool = True, map_location: Union[str, torch.device] = "cpu") -> SegSupernet:
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
    return load_from_state_dict(meta, sd, map_location=map_location, source=name)


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
