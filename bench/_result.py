"""The one home of a benchmark's last step: write its result JSON, then print its summary line or the object."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from supernet.fileio import atomic_write_json, strict_json


def write_result(out: Dict[str, Any], path: str | Path, as_json: bool, *,
                 shown: Optional[Dict[str, Any]] = None, indent: int = 1) -> Dict[str, Any]:
    """Write a benchmark's result and report it.

    Args:
        out: the result; ``out["summary"]`` is its one-line summary.
        path: the JSON file (``bench/results/NAME.json`` by default in every bench); written atomically as strict JSON
            (NaN / inf -> null, objects JSON does not know -> ``str``), parent folders made.
        as_json: print ``shown`` as one JSON object on one line (the ``--json`` flag) instead of the summary.
        shown: what ``--json`` prints (default ``out``; e.g. ``out`` without its bulky per-run records).
        indent: the file's indent.

    Returns:
        ``out``.

    Raises:
        OSError: ``path`` cannot be written.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out, indent=indent, default=str)
    print(strict_json(out if shown is None else shown, default=str) if as_json else out["summary"])
    return out
