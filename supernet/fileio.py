"""One home for file facts every package uses: sha256 of files and buffers, atomic writes, strict JSON.

Atomic write = the bytes go to a hidden temporary file in the destination folder (``.NAME.XXXX.tmp``),
are flushed and fsync'ed, get the permissions of a new file under the current umask, and are
``os.replace``'d onto the destination; the folder is fsync'ed so the rename survives a power cut. A
reader therefore sees the old file or the new one, never half of one; a killed writer leaves at most
a hidden temp file, which every reader of the project ignores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np

__all__ = ["sha256_file", "sha256_bytes", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "to_json_safe", "read_json", "refuse_overwrite"]

PathLike = Union[str, "os.PathLike[str]"]


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk_size``-byte chunks (constant memory).

    Raises:
        FileNotFoundError: the file does not exist (callers turn it into their one-line error).
    """
    h = hashlib.sha256()
    with open(Path(path), "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: Union[bytes, bytearray, memoryview, np.ndarray, str]) -> str:
    """Hex sha256 of an in-memory buffer (bytes, memoryview, a contiguous numpy array, or UTF-8 text)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, np.ndarray):
        data = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, str, memoryview or a numpy array, got {type(data).__name__}")
    return hashlib.sha256(data).hexdigest()


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """Atomically create or replace ``path`` with whatever ``write(tmp_path)`` writes to ``tmp_path``.

    For writers that want a path (``torch.save``, ``pyarrow.parquet.write_table``,
    ``safetensors.torch.save_file``). Parent folders are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` or the file system raises; the temporary file is removed first.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return p


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see the module docstring)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_json_safe(obj: Any) -> Any:
    """Tuples, numpy scalars and arrays, Paths -> JSON values; NaN and +-inf -> ``None`` (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def strict_json(obj: Any, **dumps_kwargs: Any) -> str:
    """``obj`` as strict JSON text: :func:`to_json_safe` first (NaN / inf -> ``null``), then ``json.dumps`` with
    ``allow_nan=False`` (its other keyword arguments, e.g. ``indent``, ``default``, pass through)."""
    return json.dumps(to_json_safe(obj), allow_nan=False, **dumps_kwargs)


_NUM_LIST = re.compile(r"\[\s*([-+0-9.eE,\s]+?)\s*\]")  # a list of numbers, possibly spread over lines


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 1, number_lists_on_one_line: bool = False,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Atomically write ``obj`` as strict JSON (NaN / inf become ``null``, see :func:`to_json_safe`).

    Args:
        indent: ``json.dumps``'s indent (``None``: one line).
        default: ``json.dumps``'s fallback for objects JSON does not know (default: they raise TypeError).
        number_lists_on_one_line: put each list of numbers (shapes, configs, curves) on one line of an indented
            file, as the checkpoint sidecars are written (a match spanning a line break cannot be inside a string).
    """
    text = strict_json(obj, indent=indent, default=default) + "\n"
    if number_lists_on_one_line and indent is not None:
        text = _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"
                             if "\n" in m.group(0) else m.group(0), text)
    return atomic_write_text(path, text)


def read_json(path: PathLike, what: str, fix: str, error: type = ValueError) -> Any:
    """Read a JSON file the project wrote, turning every failure into one ``error`` line.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. "experiment file").
        fix: the fix clause (e.g. "fix: restore it from a backup or start a new experiment").
        error: the exception class to raise (a one-line user error of the caller's package).

    Raises:
        ``error``: the file is missing, unreadable, or not valid JSON; the message names the file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {p} not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {p} is unreadable ({type(e).__name__}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {p} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None


def refuse_overwrite(command: str, paths: Iterable[PathLike], *, overwrite: bool = False, reads: Iterable[PathLike] = (),
                     fix: str = "name another destination file", error: type = ValueError) -> None:
    """Refuse, before any work, a write over what is recorded: the one home of the rule every writing command
    follows (``supernet train``, ``supernet export``, ``prune dimap``, ``latency profile``).

    Args:
        command: who refuses, for the message (e.g. "supernet export", "latency profile --out").
        paths: the files the command would write (a checkpoint's weights and sidecar).
        overwrite: the user's ``--overwrite``: existing files may be replaced (never one the command reads).
        reads: the files the command reads (its source checkpoint), which it may never write.
        fix: the fix clause for an existing destination; ", or pass --overwrite to replace it" is appended.
        error: the exception class to raise (a one-line user error of the caller's package).

    Raises:
        ``error``: a path is one the command reads, or exists and ``overwrite`` is false; the message names it.
    """
    paths = [Path(p) for p in paths]
    sources = {Path(r).resolve(): Path(r) for r in reads}
    for p in paths:
        src = sources.get(p.resolve())
        if src is not None:
            raise error(f"{command}: {p} would overwrite {src}, which the command reads; fix: name another "
                        "destination file")
    if not overwrite:
        for p in paths:
            if p.exists():
                raise error(f"{command}: {p} already exists and would be replaced; fix: {fix}, or pass --overwrite "
                            "to replace it")
