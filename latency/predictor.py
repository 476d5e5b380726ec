"""Latency predictor: vectorised lookup in a profiled per-block latency table, then calibration.

For a config with ratio ``r`` on a block of ``nW`` windows the block keeps
``k = int(nW * (1 - r))`` windows (``supernet.sparse_swin.keep_count``; ``r == 0`` keeps nW) and
costs ``table[block][k]`` ms. A config's prediction is

    a * (sum_blocks table[b][k_b] + patch_embed + sum(downsample) + head
         + sum over stages with a ratio > 0 of scoring[stage]) + b

with ``a, b`` the end-to-end calibration of the profiler. k values the profiler did not measure
are filled by linear interpolation in k between profiled points (``k = 0`` costs 0), so every
k in 0..nW has a value and ``predict`` is a gather + sum over numpy arrays (millions of configs/s).

Predictor file (JSON, written by :func:`latency.profiler.profile` / :func:`save`,
``format_version`` 1; all times in ms per forward of one batch)::

    {
      "format_version": 1, "units": "ms",
      "fingerprint": {"device": "cpu", "device_name": "AMD EPYC ...", "cpu_name": "...",
                      "torch": "2.15.0", "threads": 1, "batch_size": 1, "dtype": "float32",
                      "img_size": [224, 224], ...},
      "img_size": [224, 224], "batch_size": 1,
      "depths": [2, 2, 6, 2],
      "num_windows": [[64, 64], [16, 16], [4, 4, 4, 4, 4, 4], [1, 1]],
      "ratios": [0.0, 0.1, ..., 0.8],
      "blocks": [[{"k": [12, 19, ..., 64], "ms": [0.21, 0.30, ..., 0.95]}, ...], ...],
      "fixed_ms": {"patch_embed": 0.3, "downsample": [0.0, 0.2, 0.1, 0.05],
                   "scoring": [0.05, 0.03, 0.02, 0.02], "head": 0.8},
      "calibration": {"a": 1.02, "b": 0.4, "method": "lstsq", "n": 40, "mape": 2.1,
                      "residuals_ms": [...], "measured_ms": [...], "configs": [[...]], ...},
      "reference_ms": 36.1,   # dense forward at the profiling session's typical speed (optional)
      "drift_correction": "dense-forward reference",
      "model_arch": {...} | null, "checkpoint_sha256": "..." | null
    }

``blocks[s][j]["k"]`` lists ascending kept-window counts (ints in 0..nW, nW required; a 0 entry,
if present, must have 0 ms).
"""
from __future__ import annotations

import json
import math
import os
import platform
import warnings
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supernet.fileio import atomic_write_json

__all__ = [
    "FORMAT_VERSION",
    "Predictor",
    "PredictorError",
    "PredictorFile",
    "FingerprintWarning",
    "current_fingerprint",
    "compare_fingerprints",
    "save",
]

#: Version of the predictor JSON format this module reads and writes.
FORMAT_VERSION = 1

_PROFILE_FIX = "fix: re-create it with `sparsesearch latency profile --checkpoint CKPT --out FILE`"


class PredictorError(ValueError):
    """A predictor file / table or a config given to the predictor is invalid (one-line message)."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


class FingerprintWarning(UserWarning):
    """The predictor was profiled on a different device / software setup than it is used on."""


# --------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _dtype_name(dtype: Any) -> str:
    s = str(dtype)
    return s[len("torch."):] if s.startswith("torch.") else s


def current_fingerprint(device: Any = "cpu", threads: Optional[int] = None, batch_size: int = 1,
                        dtype: Any = "float32", img_size: Union[int, Sequence[int], None] = None) -> Dict[str, Any]:
    """Fingerprint of the current machine / software for a measurement setting.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
        threads: torch intra-op threads (default: ``torch.get_num_threads()`` now).
        batch_size: images per forward.
        dtype: ``torch.float32`` / ``"float32"`` ...
        img_size: input size, int or (H, W), or ``None`` (not compared).

    Returns:
        dict with ``device`` (type: "cpu" / "cuda"), ``device_name`` (CPU model from
        /proc/cpuinfo "model name", or the GPU name; "unavailable" when CUDA is asked for but
        absent), ``cpu_name``, ``torch`` (version), ``threads``, ``batch_size``, ``dtype``,
        ``img_size`` ([H, W] or None), ``cpu_count``, ``machine``, ``python``.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available():
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(idx)
        else:
            name = "unavailable"
    else:
        name = _cpu_name()
    if img_size is not None:
        img_size = [int(img_size), int(img_size)] if isinstance(img_size, (int, np.integer)) else [int(v) for v in img_size]
    return {
        "device": dev.type,
        "device_name": name,
        "cpu_name": _cpu_name(),
        "torch": torch.__version__,
        "threads": int(threads) if threads is not None else int(torch.get_num_threads()),
        "batch_size": int(batch_size),
        "dtype": _dtype_name(dtype),
        "img_size": img_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _major_minor(v: Any) -> str:
    parts = str(v).split("+")[0].split(".")
    return ".".join(parts[:2])


def compare_fingerprints(profiled: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Differences that invalidate a latency table, as short strings (empty list: compatible).

    Compared: device type, device name (CPU model or GPU name), torch major.minor, threads,
    batch size, dtype, image size. A key missing or ``None`` on either side is not compared.
    """
    diffs = []

    def cmp(key: str, norm=lambda v: v):
        a, b = profiled.get(key), current.get(key)
        if a is None or b is None:
            return
        if norm(a) != norm(b):
            diffs.append(f"{key} {norm(a)!r} -> {norm(b)!r}")

    cmp("device")
    cmp("device_name")
    cmp("torch", _major_minor)
    cmp("threads", int)
    cmp("batch_size", int)
    cmp("dtype", str)
    cmp("img_size", lambda v: [int(x) for x in v])
    return diffs


# --------------------------------------------------------------------------------------------
# the file (typed model), reader checks and writer
# --------------------------------------------------------------------------------------------
_NonNeg = Field(ge=0.0, allow_inf_nan=False)


class _BlockTable(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    k: List[int]
    ms: List[float]


class _FixedMs(BaseModel):
    model_config = ConfigDict(extra="allow")
    patch_embed: float = _NonNeg
    downsample: List[float]
    scoring: List[float]
    head: float = _NonNeg


class _Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: float = Field(gt=0.0, allow_inf_nan=False)
    b: float = Field(allow_inf_nan=False)


_Size = Annotated[List[Annotated[int, Field(ge=1, le=16384)]], Field(min_length=2, max_length=2)]


class _Fingerprint(BaseModel):
    """``fingerprint`` of a predictor file: where it was profiled. The fields a reader uses are typed here."""

    model_config = ConfigDict(extra="allow")
    img_size: Optional[_Size] = None
    batch_size: Optional[int] = Field(None, ge=1)
    threads: Optional[int] = Field(None, ge=1)
    device: Optional[str] = None


class PredictorFile(BaseModel):
    """The predictor JSON file (see the module docstring), as a typed model.

    Types and signs are checked here (every latency >= 0, calibration slope ``a > 0``, finite
    numbers); :class:`Predictor` adds the cross-field checks (one table per block of ``depths``,
    ascending k, k = nW present, predictions positive for every config).
    """

    model_config = ConfigDict(extra="allow")
    format_version: int
    depths: List[int]
    num_windows: List[List[int]]
    blocks: List[List[_BlockTable]]
    fixed_ms: _FixedMs
    calibration: _Calibration
    fingerprint: _Fingerprint = Field(default_factory=_Fingerprint)
    img_size: Optional[_Size] = None
    batch_size: int = Field(1, ge=1)
    ratios: Optional[List[Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]]] = Field(None, min_length=1)
    checkpoint_sha256: Optional[str] = None
    model_arch: Optional[Dict[str, Any]] = None


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False)[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')} (got {err.get('input')!r:.40})")
    more = f" (+{e.error_count() - 3} more)" if e.error_count() > 3 else ""
    return "; ".join(parts) + more


def save(table: Dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Validate a predictor dict (from :func:`latency.profiler.profile`) and write it as JSON, atomically.

    Args:
        table: the predictor dict.
        path: destination ``.json``; parent folders are created.

    Returns:
        The path written.

    Raises:
        PredictorError: the dict is not a valid predictor table (nothing is written).
    """
    Predictor(table, source=str(path))  # validate before writing
    return atomic_write_json(path, table)


# --------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------
def _num(v: Any, what: str, src: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PredictorError(f"predictor {src}: {what} must be a finite number, got {v!r}; {_PROFILE_FIX}")
    return float(v)


class Predictor:
    """Latency predictor of one (model architecture, device, threads, batch size, image size).

    Build from a predictor dict (``Predictor(table)``, e.g. straight from ``profile``) or a file
    (``Predictor.load(path)``). The table is validated on construction.

    Args:
        table: the predictor dict (format: module docstring).
        source: name used in error messages (the file path for ``load``).

    Attributes:
        depths: blocks per stage (tuple).
        num_windows: nW of every block, one list per stage.
        n_blocks: total blocks.
        img_size: (H, W) profiled.
        batch_size: profiled batch size.
        fingerprint: the profiling fingerprint dict.
        calibration: (a, b).
        checkpoint_sha256: weights hash recorded at profiling time, or None.
        table: the (validated) predictor dict.

    Raises:
        PredictorError: the table is malformed (message names ``source`` and the fix).
    """

    def __init__(self, table: Dict[str, Any], *, source: str = "<dict>"):
        self.source = str(source)
        if not isinstance(table, dict):
            raise PredictorError(f"predictor {self.source}: expected a JSON object, got {type(table).__name__}; {_PROFILE_FIX}")
        self.table = table
        self._parse(table)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, path: Union[str, os.PathLike], expect_fingerprint: Optional[Dict[str, Any]] = None) -> "Predictor":
        """Read a predictor JSON file.

        Args:
            path: file written by :func:`save`.
            expect_fingerprint: if given (e.g. ``current_fingerprint("cpu", 1, 1, "float32", 224)``),
                :meth:`check_fingerprint` is run against it (``FingerprintWarning`` on mismatch).

        Raises:
            PredictorError: the file is missing, not JSON, of another format version, or malformed.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise PredictorError(f"predictor file {p} not found; {_PROFILE_FIX}") from None
        except OSError as e:
            raise PredictorError(f"predictor file {p} is unreadable ({e.strerror}); fix: pass the JSON file "
                                 "`sparsesearch latency profile --out` wrote, and check its permissions") from None
        except UnicodeDecodeError:
            raise PredictorError(f"predictor file {p} is not text (a binary file?); {_PROFILE_FIX}") from None
        try:
            table = json.loads(text)
        except json.JSONDecodeError as e:
            raise PredictorError(f"predictor file {p} is not valid JSON ({e.msg} at line {e.lineno}); {_PROFILE_FIX}") from None
        pred = cls(table, source=str(p))
        if expect_fingerprint is not None:
            pred.check_fingerprint(expect_fingerprint, stacklevel=3)
        return pred

    def _err(self, msg: str) -> PredictorError:
        return PredictorError(f"predictor {self.source}: {msg}; {_PROFILE_FIX}")

    def _parse(self, t: Dict[str, Any]) -> None:
        src = self.source
        for key in ("format_version", "depths", "num_windows", "blocks", "fixed_ms", "calibration"):
            if key not in t:
                raise self._err(f"missing key {key!r}")
        if t["format_version"] != FORMAT_VERSION:
            raise PredictorError(f"predictor {src}: format_version {t['format_version']!r}, this code reads "
                                 f"{FORMAT_VERSION}; {_PROFILE_FIX}")
        try:
            PredictorFile.model_validate(t)
        except ValidationError as e:
            raise self._err(_one_line(e)) from None
        depths = t["depths"]
        if (not isinstance(depths, list) or not depths
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in depths)):
            raise self._err(f"depths must be a non-empty list of positive ints, got {depths!r}")
        self.depths: Tuple[int, ...] = tuple(depths)
        self.n_stages = len(depths)
        self.n_blocks = int(sum(depths))
        nws = t["num_windows"]
        if (not isinstance(nws, list) or [len(r) if isinstance(r, list) else -1 for r in nws] != list(depths)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for r in nws for n in r)):
            raise self._err(f"num_windows must be one list of positive ints per stage matching depths {list(depths)}")
        self.num_windows: List[List[int]] = [list(r) for r in nws]
        blocks = t["blocks"]
        if not isinstance(blocks, list) or [len(r) if isinstance(r, list) else -1 for r in blocks] != list(depths):
            raise self._err(f"blocks must be one list of per-block tables per stage matching depths {list(depths)}")

        flat_nw = [n for r in nws for n in r]
        luts, offsets, off = [], [], 0
        for s, row in enumerate(blocks):
            for j, entry in enumerate(row):
                nw = nws[s][j]
                where = f"blocks[{s}][{j}]"
                if not isinstance(entry, dict) or "k" not in entry or "ms" not in entry:
                    raise self._err(f"{where} must be {{'k': [...], 'ms': [...]}}")
                ks, ms = entry["k"], entry["ms"]
                if not isinstance(ks, list) or not isinstance(ms, list) or len(ks) != len(ms) or not ks:
                    raise self._err(f"{where}: 'k' and 'ms' must be lists of the same non-zero length")
                if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= nw for k in ks):
                    raise self._err(f"{where}: k values must be ints in 0..nW={nw}, got {ks}")
                if any(b <= a for a, b in zip(ks, ks[1:])):
                    raise self._err(f"{where}: k values must be strictly ascending, got {ks}")
                if ks[-1] != nw:
                    raise self._err(f"{where} has no entry for the dense block k=nW={nw}")
                vals = [_num(v, f"{where} ms", src) for v in ms]
                if any(v < 0 for v in vals):
                    raise self._err(f"{where}: negative latency in {ms}")
                if ks[0] == 0 and vals[0] != 0.0:
                    raise self._err(f"{where}: k=0 (block skipped) must cost 0 ms, got {vals[0]}")
                xp = np.asarray(([0] if ks[0] != 0 else []) + ks, dtype=np.float64)
                fp = np.asarray(([0.0] if ks[0] != 0 else []) + vals, dtype=np.float64)
                luts.append(np.interp(np.arange(nw + 1, dtype=np.float64), xp, fp))
                offsets.append(off)
                off += nw + 1
        self._lut = np.concatenate(luts)
        self._lut_per_block = luts
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._nw_f = np.asarray(flat_nw, dtype=np.float64)
        self._nw_i = np.asarray(flat_nw, dtype=np.int64)
        self._stage_starts = np.cumsum([0] + list(depths[:-1])).astype(np.int64)
        # inside-stage neighbour pairs (for the non-decreasing check): columns i where i+1 is same stage
        same = np.ones(self.n_blocks - 1, dtype=bool) if self.n_blocks > 1 else np.zeros(0, dtype=bool)
        for st in self._stage_starts[1:]:
            same[st - 1] = False
        self._same_stage_pairs = np.nonzero(same)[0]

        fx = t["fixed_ms"]
        if not isinstance(fx, dict):
            raise self._err("fixed_ms must be an object {patch_embed, downsample, scoring, head}")
        for key in ("patch_embed", "downsample", "scoring", "head"):
            if key not in fx:
                raise self._err(f"fixed_ms lacks {key!r}")
        for key in ("downsample", "scoring"):
            if not isinstance(fx[key], list) or len(fx[key]) != self.n_stages:
                raise self._err(f"fixed_ms.{key} must list one value per stage ({self.n_stages})")
        self._patch_embed = _num(fx["patch_embed"], "fixed_ms.patch_embed", src)
        self._downsample = np.asarray([_num(v, "fixed_ms.downsample", src) for v in fx["downsample"]])
        self._scoring = np.asarray([_num(v, "fixed_ms.scoring", src) for v in fx["scoring"]])
        self._head = _num(fx["head"], "fixed_ms.head", src)
        if (self._downsample < 0).any() or (self._scoring < 0).any():
            raise self._err("fixed_ms.downsample / scoring must be >= 0 ms")
        self._fixed_total = float(self._patch_embed + self._downsample.sum() + self._head)

        cal = t["calibration"]
        if not isinstance(cal, dict) or "a" not in cal or "b" not in cal:
            raise self._err("calibration must be an object with 'a' and 'b'")
        self._a = _num(cal["a"], "calibration.a", src)
        self._b = _num(cal["b"], "calibration.b", src)
        # the dense model must cost > 0 ms, or a budget_fraction of it loses its meaning
        dense = self._a * (self._fixed_total + sum(float(lut[-1]) for lut in luts)) + self._b
        if dense <= 0:
            raise self._err(f"calibration a={self._a:g}, b={self._b:g} predicts {dense:.3g} ms for the dense model "
                            "(predictions must be > 0)")

        fp = t.get("fingerprint") or {}
        if not isinstance(fp, dict):
            raise self._err("fingerprint must be an object")
        self.fingerprint: Dict[str, Any] = dict(fp)
        img = t.get("img_size", fp.get("img_size"))
        self.img_size: Optional[Tuple[int, int]] = tuple(int(v) for v in img) if img is not None else None
        self.batch_size: int = int(t.get("batch_size", fp.get("batch_size", 1)))
        self.checkpoint_sha256: Optional[str] = t.get("checkpoint_sha256")
        self.model_arch = t.get("model_arch")
        self.ratios = t.get("ratios")

    # ---- accessors ------------------------------------------------------------------------
    @property
    def calibration(self) -> Tuple[float, float]:
        """(a, b): prediction = a * table_sum + b (ms)."""
        return self._a, self._b

    def lookup(self, stage: int, block: int) -> np.ndarray:
        """(nW + 1,) float64 ms of block (stage, block) for k = 0..nW (interpolated, uncalibrated)."""
        return self._lut_per_block[self._stage_starts[stage] + block].copy()

    def to_dict(self) -> Dict[str, Any]:
        """The predictor dict (JSON-ready)."""
        return self.table

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the table as JSON (atomic); see :func:`save`."""
        return save(self.table, path)

    # ---- config handling ------------------------------------------------------------------
    def _fit_error(self, msg: str) -> PredictorError:
        return PredictorError(
            f"{msg}: the predictor {self.source} models {self.n_stages} stages with depths {list(self.depths)} "
            f"({self.n_blocks} blocks); fix: pass one ratio 0 <= r < 1 per block, non-decreasing inside a stage "
            f"(nested per-stage lists, or a numpy array [n_configs, {self.n_blocks}] stage by stage)")

    def _flatten_nested(self, cfg: Any, i: int) -> List[float]:
        try:
            stages = list(cfg)
            lens = [len(s) for s in stages]
        except TypeError:
            raise self._fit_error(f"config {i} is not a list of per-stage lists") from None
        if lens != list(self.depths):
            raise self._fit_error(f"config {i} has stage lengths {lens}")
        return [r for s in stages for r in s]

    def as_array(self, configs: Any) -> np.ndarray:
        """Configs as a validated float64 array [n, n_blocks].

        Accepts a numpy array [n, n_blocks] (flat, stage by stage) or [n_blocks] (one config), a
        list of nested configs (``[[[r, r], [r, r], ...], ...]``), one nested config
        (``[[r, r], [r, r], ...]``), one flat list of ``n_blocks`` ratios, or objects with a
        ``.flat`` attribute (``search.space.Config``), single or in a list.

        Raises:
            PredictorError: wrong number of stages / blocks, a ratio outside [0, 1) or not finite,
                or ratios decreasing inside a stage.
        """
        if hasattr(configs, "flat") and not isinstance(configs, np.ndarray):
            configs = [configs]
        if isinstance(configs, np.ndarray):
            arr = configs
        elif isinstance(configs, (list, tuple)):
            if len(configs) == 0:
                return np.zeros((0, self.n_blocks), dtype=np.float64)
            first = configs[0]
            if hasattr(first, "flat"):
                rows = [list(c.flat) for c in configs]
                arr = rows
            elif isinstance(first, (int, float, np.number)) and not isinstance(first, bool):
                arr = [list(configs)]  # one flat config
            else:
                try:
                    inner = first[0] if len(first) else None
                except TypeError:
                    raise self._fit_error(f"config {configs!r} is neither nested lists nor numbers") from None
                if inner is None or isinstance(inner, (int, float, np.number)):
                    arr = [self._flatten_nested(configs, 0)]  # one nested config
                else:
                    arr = [self._flatten_nested(c, i) for i, c in enumerate(configs)]
        else:
            raise self._fit_error(f"configs of type {type(configs).__name__} are not understood")
        try:
            arr = np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError):
            raise self._fit_error("configs are ragged or hold non-numbers") from None
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_blocks:
            raise self._fit_error(f"configs have shape {tuple(arr.shape)}, expected [n, {self.n_blocks}]")
        if arr.size:
            bad = ~(np.isfinite(arr) & (arr >= 0.0) & (arr < 1.0))
            if bad.any():
                i, j = (int(v) for v in np.argwhere(bad)[0])
                raise self._fit_error(f"config {i} block {j}: ratio {arr[i, j]} is outside [0, 1)")
            if len(self._same_stage_pairs):
                p = self._same_stage_pairs
                dec = arr[:, p + 1] < arr[:, p]
                if dec.any():
                    i, c = (int(v) for v in np.argwhere(dec)[0])
                    j = int(p[c])
                    raise self._fit_error(f"config {i}: ratio of block {j + 1} ({arr[i, j + 1]}) < block {j} "
                                          f"({arr[i, j]}) inside a stage")
        return arr

    def keep_counts(self, configs: Any) -> np.ndarray:
        """Kept windows k [n, n_blocks] (int64), exactly ``keep_count(nW, r)`` = ``int(nW * (1 - r))``.

        Raises:
            PredictorError: see :meth:`as_array`.
        """
        return self._keep_counts(self.as_array(configs))

    def _keep_counts(self, arr: np.ndarray) -> np.ndarray:
        # same float64 arithmetic as int(nW * (1.0 - r)) (truncation == floor for values >= 0)
        k = np.floor(self._nw_f * (1.0 - arr)).astype(np.int64)
        k = np.where(arr <= 0.0, self._nw_i, k)
        return np.clip(k, 0, self._nw_i)

    def _raw(self, arr: np.ndarray) -> np.ndarray:
        n = arr.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        k = self._keep_counts(arr)
        k += self._offsets
        total = np.take(self._lut, k).sum(axis=1)
        pruned = np.logical_or.reduceat(arr > 0.0, self._stage_starts, axis=1)
        total += pruned @ self._scoring
        total += self._fixed_total
        return total

    def table_sum(self, configs: Any) -> np.ndarray:
        """Uncalibrated sum of the table entries (ms) of each config, float64 [n].

        Raises:
            PredictorError: see :meth:`as_array`.
        """
        return self._raw(self.as_array(configs))

    def predict(self, configs: Any) -> np.ndarray:
        """Predicted end-to-end latency in ms (per forward of ``batch_size`` images), float64 [n].

        Args:
            configs: numpy [n, n_blocks] flat ratios, a list of nested configs, or one config
                (nested / flat / ``Config``: returns an array of 1). See :meth:`as_array`.

        Raises:
            PredictorError: a config does not fit the model (see :meth:`as_array`).
        """
        raw = self._raw(self.as_array(configs))
        return raw * self._a + self._b

    def predict_one(self, config: Any) -> float:
        """Predicted latency (ms) of one config (nested, flat, or ``Config``).

        Raises:
            PredictorError: the config does not fit the model, or several configs were given.
        """
        out = self.predict(config)
        if out.shape[0] != 1:
            raise PredictorError(f"predict_one() got {out.shape[0]} configs; fix: use predict() for several")
        return float(out[0])

    def breakdown(self, config: Any) -> Dict[str, Any]:
        """Per-part ms of one config (uncalibrated parts, then the calibrated total).

        Returns:
            ``{"k": [[...]], "blocks_ms": [[...]], "patch_embed", "downsample", "scoring",
            "head", "table_sum", "predicted"}`` (ms; scoring lists 0 for unpruned stages).
        """
        arr = self.as_array(config)
        if arr.shape[0] != 1:
            raise PredictorError(f"breakdown() takes one config, got {arr.shape[0]}")
        k = self._keep_counts(arr)[0]
        per = [float(self._lut[k[b] + self._offsets[b]]) for b in range(self.n_blocks)]
        pruned = np.logical_or.reduceat(arr > 0.0, self._stage_starts, axis=1)[0]
        out_k, out_ms, st = [], [], 0
        for d in self.depths:
            out_k.append([int(v) for v in k[st:st + d]])
            out_ms.append(per[st:st + d])
            st += d
        raw = float(self._raw(arr)[0])
        return {
            "k": out_k, "blocks_ms": out_ms, "patch_embed": self._patch_embed,
            "downsample": self._downsample.tolist(),
            "scoring": [float(v) if p else 0.0 for v, p in zip(self._scoring, pruned)],
            "head": self._head, "table_sum": raw, "predicted": raw * self._a + self._b,
        }

    # ---- compatibility checks ---------------------------------------------------------------
    def check_fingerprint(self, current: Optional[Dict[str, Any]] = None, *, stacklevel: int = 2) -> List[str]:
        """Warn (:class:`FingerprintWarning`) when used where the table does not apply.

        Args:
            current: fingerprint of where predictions will be used (:func:`current_fingerprint`);
                default: this machine at the profiled device type, batch size, dtype and image
                size, with the current ``torch.get_num_threads()``.

        Returns:
            The list of differences (empty: compatible, no warning).
        """
        fp = self.fingerprint
        if current is None:
            current = current_fingerprint(fp.get("device", "cpu") if fp.get("device") in ("cpu", "cuda") else "cpu",
                                          None, self.batch_size, fp.get("dtype", "float32"), self.img_size)
        diffs = compare_fingerprints(fp, current)
        if diffs:
            warnings.warn(
                f"latency predictor {self.source} was profiled elsewhere ({'; '.join(diffs)}): its predictions do "
                "not hold here; fix: re-profile on this machine with `sparsesearch latency profile`",
                FingerprintWarning, stacklevel=stacklevel)
        return diffs

    def check_model(self, model: Any) -> None:
        """Raise unless ``model`` (SegSupernet or SparseSwin) has this table's depths and windows.

        Raises:
            PredictorError: depths or per-block window counts at the profiled image size differ.
        """
        bb = getattr(model, "backbone", model)
        depths = tuple(bb.depths)
        if depths != self.depths:
            raise PredictorError(f"predictor {self.source} was profiled for depths {list(self.depths)} but the "
                                 f"model has {list(depths)}; fix: profile this model's checkpoint")
        nws = bb.num_windows(self.img_size)
        if nws != self.num_windows:
            raise PredictorError(f"predictor {self.source}: the model has windows {nws} at img_size "
                                 f"{self.img_size}, the table {self.num_windows}; fix: profile this model's checkpoint")

    def __repr__(self) -> str:
        return (f"Predictor(source={self.source!r}, depths={list(self.depths)}, img_size={self.img_size}, "
                f"batch_size={self.batch_size}, device={self.fingerprint.get('device')!r}, "
                f"calibration=({self._a:.4g}, {self._b:.4g}))")
