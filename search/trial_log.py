"""Parquet trial log: one file per batch of trials under ``EXP_DIR/trials/``.

Layout::

    EXP_DIR/trials/_common_metadata               schema only (Parquet convention), written once
    EXP_DIR/trials/part-000000-1a2b3c4d.parquet   one file per ``TrialLogWriter.append`` batch
    EXP_DIR/trials/part-000001-9f8e7d6c.parquet
    EXP_DIR/trials/.part-....parquet.XXXX.tmp     only while a batch is being written

Writes are atomic (:func:`supernet.fileio.atomic_write`): a batch goes to a hidden temporary
file, which is fsync'ed and then ``os.replace``'d to its ``part-<seq:06d>-<uuid8>.parquet``
name (and the directory is fsync'ed). A crash therefore leaves at most a hidden temp file, which every
reader ignores: :func:`load_trials`, ``pyarrow.dataset.dataset(EXP_DIR/trials,
format="parquet")`` and ``pandas.read_parquet(EXP_DIR/trials)`` (pyarrow's dataset discovery
skips names starting with ``"."`` or ``"_"``). The folder reads as one dataset.

Rows are append-only: a retried trial gets a new row (``attempt`` + 1); :func:`final_trials`
reduces the log to one row per trial. The schema (:func:`trial_schema`) is fixed per
experiment; see the column table in :data:`COLUMN_DOCS`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from search.errors import UserError
from supernet.fileio import atomic_write

__all__ = [
    "COLUMN_DOCS",
    "FEASIBLE_STATUSES",
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "STATUSES",
    "TrialLogError",
    "TrialLogWarning",
    "TrialLogWriter",
    "final_trials",
    "list_parts",
    "load_trials",
    "measured_mask",
    "ratio_columns",
    "trial_schema",
]

#: Allowed values of the ``status`` column.
#: ``complete``: evaluated, metrics present. ``rejected``: over the latency budget, never
#: evaluated (metrics null). ``failed``: the evaluation raised (``error`` set); may be retried
#: with ``attempt`` + 1. ``cached``: the same ``config_hash`` was already evaluated in this
#: experiment and its metrics were reused. ``partial``: multi-fidelity evaluation stopped after
#: the first rung (metrics cover ``canvases`` canvases only; never a front member, see
#: :mod:`search.fidelity`).
STATUSES: tuple[str, ...] = ("complete", "rejected", "failed", "cached", "partial")
#: Statuses that end a trial (a later retry never follows them).
FINAL_STATUSES: tuple[str, ...] = ("complete", "rejected", "cached", "partial")
#: Statuses whose metrics are valid measurements (candidates for the Pareto front).
FEASIBLE_STATUSES: tuple[str, ...] = ("complete", "cached")

#: Columns every part must hold to be read (the readers index them; later additions such as ``canvases`` are
#: optional so that older logs stay readable).
REQUIRED_COLUMNS: tuple[str, ...] = ("trial_number", "generation", "config", "config_hash", "status",
                                     "predicted_latency_ms", "macs")

#: Version of the column layout, stored in the schema metadata.
SCHEMA_VERSION = "1"

TRIALS_DIRNAME = "trials"
COMMON_METADATA = "_common_metadata"
_PART_RE = re.compile(r"^part-(\d+)-([0-9a-f]+)\.parquet$")
_SEQ_RE = re.compile(r"part-(\d+)-")
_META_PREFIX = "sparsesearch."

_UTC = pa.timestamp("us", tz="UTC")

#: (type, nullable, unit, description) of every fixed column, in schema order.
#: Ratio columns ``r_NN`` sit after ``attempt``; metric columns after ``status``; extra
#: columns at the end.
COLUMN_DOCS: dict[str, tuple[pa.DataType, bool, str, str]] = {
    "experiment_id": (pa.string(), False, "", "experiment name (default: EXP_DIR folder name)"),
    "trial_number": (pa.int64(), False, "", "Optuna trial number, 0-based"),
    "generation": (pa.int64(), False, "", "evolution generation the trial belongs to, 0-based"),
    "attempt": (pa.int32(), False, "", "0 for the first evaluation, +1 per retry of a failed one"),
    # r_00 ... r_NN go here
    "ratios": (pa.list_(pa.float32()), False, "ratio 0..1",
               "all block activation-sparsity ratios, flat (stage by stage)"),
    "config": (pa.string(), False, "ratio 0..1",
               "JSON of the nested per-stage list, e.g. [[0.7,0.7],[0,0],...]"),
    "config_hash": (pa.string(), False, "", "identity of (config, checkpoint): search.space.config_hash"),
    "checkpoint_sha256": (pa.string(), True, "", "sha256 of the supernet checkpoint evaluated"),
    "status": (pa.string(), False, "", "one of " + "/".join(STATUSES)),
    # metric columns go here
    "predicted_latency_ms": (pa.float64(), True, "ms", "latency predicted by the latency table"),
    "macs": (pa.int64(), True, "MACs", "analytic multiply-accumulates at this sparsity"),
    "w_qkv": (pa.float32(), True, "ratio 0..1", "DIMAP weight-pruning ratio of qkv (joint search)"),
    "w_proj": (pa.float32(), True, "ratio 0..1", "DIMAP weight-pruning ratio of attn proj"),
    "w_mlp": (pa.float32(), True, "ratio 0..1", "DIMAP weight-pruning ratio of the MLP"),
    "params": (pa.int64(), True, "parameters", "non-zero parameter count after weight pruning"),
    "eval_seconds": (pa.float64(), True, "s", "wall time of the evaluation on the worker"),
    "canvases": (pa.int64(), True, "canvases",
                 "evaluation canvases the metrics cover (fewer for a partial multi-fidelity trial)"),
    "worker_id": (pa.string(), True, "", "Ray actor id (or 'local')"),
    "node": (pa.string(), True, "", "host name / Ray node id of the worker"),
    "start_time": (_UTC, True, "UTC", "evaluation start"),
    "end_time": (_UTC, True, "UTC", "evaluation end (or rejection time)"),
    "error": (pa.string(), True, "", "one-line error of a failed evaluation"),
}
_BEFORE_RATIOS = ("experiment_id", "trial_number", "generation", "attempt")
_BEFORE_METRICS = ("ratios", "config", "config_hash", "checkpoint_sha256", "status")
_AFTER_METRICS = tuple(n for n in COLUMN_DOCS if n not in _BEFORE_RATIOS + _BEFORE_METRICS)
_REQUIRED = tuple(n for n, (_, nullable, _, _) in COLUMN_DOCS.items() if not nullable)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TrialLogError(UserError):
    """A trial-log file (part or ``_common_metadata``) is unreadable or inconsistent.

    The one-line message names the file and the fix.
    """


class TrialLogWarning(UserWarning):
    """Emitted by ``load_trials(..., on_corrupt="skip")`` for each skipped file."""


# --------------------------------------------------------------------------- schema


def ratio_columns(n_blocks: int) -> list[str]:
    """Names of the per-block ratio columns: ``r_00 ... r_NN`` (zero-padded, >= 2 digits).

    Args:
        n_blocks: number of transformer blocks (e.g. 12 for Swin-T).

    Raises:
        ValueError: ``n_blocks`` is negative.
    """
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    width = max(2, len(str(max(n_blocks - 1, 0))))
    return [f"r_{i:0{width}d}" for i in range(n_blocks)]


def _field(name: str, dtype: pa.DataType, nullable: bool, unit: str, doc: str) -> pa.Field:
    meta = {"doc": doc}
    if unit:
        meta["unit"] = unit
    return pa.field(name, dtype, nullable=nullable, metadata=meta)


def trial_schema(
    n_blocks: int,
    metric_names: Sequence[str] = ("miou",),
    extra_columns: Mapping[str, pa.DataType] | Iterable[pa.Field] | None = None,
) -> pa.Schema:
    """Build the fixed Parquet schema of one experiment's trial log.

    Column order: ``experiment_id, trial_number, generation, attempt, r_00..r_NN, ratios,
    config, config_hash, checkpoint_sha256, status, <metrics>, predicted_latency_ms, macs,
    w_qkv, w_proj, w_mlp, params, eval_seconds, worker_id, node, start_time, end_time, error,
    <extra columns>``. Types, nullability, units and descriptions are in :data:`COLUMN_DOCS`
    (also stored as field metadata ``doc`` / ``unit``). Ratio columns are float32 (ratio
    0..1, not null); metric columns are float64, nullable (null for rejected / failed
    trials); extra columns are nullable. The schema metadata records ``n_blocks``, the
    metric names and the extra-column names under ``sparsesearch.*`` keys.

    Args:
        n_blocks: number of blocks (ratio columns), stage by stage.
        metric_names: evaluator metric columns, e.g. ``("miou", "pixel_acc")``.
        extra_columns: additional nullable columns, ``{name: pyarrow type}`` or fields.

    Returns:
        The ``pyarrow.Schema``.

    Raises:
        ValueError: a metric / extra name is not an identifier, is duplicated or collides
            with a fixed column or a ratio column.
    """
    ratio_cols = ratio_columns(n_blocks)
    metric_names = list(metric_names)
    if isinstance(extra_columns, Mapping):
        extras = [pa.field(k, v, nullable=True) for k, v in extra_columns.items()]
    else:
        extras = [f.with_nullable(True) for f in (extra_columns or [])]
    taken = set(COLUMN_DOCS) | set(ratio_cols)
    for name in metric_names + [f.name for f in extras]:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"trial-log column name {name!r} is not an identifier")
        if name in taken or re.match(r"^r_\d+$", name):
            raise ValueError(f"trial-log column name {name!r} is reserved or duplicated")
        taken.add(name)

    fields = [_field(n, *COLUMN_DOCS[n]) for n in _BEFORE_RATIOS]
    fields += [
        _field(c, pa.float32(), False, "ratio 0..1", f"activation-sparsity ratio of block {i}")
        for i, c in enumerate(ratio_cols)
    ]
    fields += [_field(n, *COLUMN_DOCS[n]) for n in _BEFORE_METRICS]
    fields += [_field(m, pa.float64(), True, "", f"evaluator metric {m}") for m in metric_names]
    fields += [_field(n, *COLUMN_DOCS[n]) for n in _AFTER_METRICS]
    fields += extras
    meta = {
        _META_PREFIX + "schema_version": SCHEMA_VERSION,
        _META_PREFIX + "n_blocks": str(n_blocks),
        _META_PREFIX + "metric_names": json.dumps(metric_names),
        _META_PREFIX + "extra_columns": json.dumps([f.name for f in extras]),
    }
    return pa.schema(fields, metadata=meta)


def _schema_info(schema: pa.Schema) -> tuple[int, list[str], list[str]]:
    """(n_blocks, metric_names, extra_names) of a trial schema (metadata, else inferred)."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    names = schema.names
    if _META_PREFIX + "n_blocks" in meta:
        return (
            int(meta[_META_PREFIX + "n_blocks"]),
            list(json.loads(meta.get(_META_PREFIX + "metric_names", "[]"))),
            list(json.loads(meta.get(_META_PREFIX + "extra_columns", "[]"))),
        )
    n_blocks = sum(1 for n in names if re.match(r"^r_\d+$", n))
    lo, hi = names.index("status") + 1, names.index("predicted_latency_ms")
    extras_start = names.index("error") + 1
    return n_blocks, names[lo:hi], names[extras_start:]


def _check_trial_schema(schema: pa.Schema) -> None:
    missing = [n for n in COLUMN_DOCS if n not in schema.names]
    if missing:
        raise ValueError(f"not a trial-log schema: missing columns {missing}")


def _type_key(dtype: pa.DataType) -> str:
    """Type identity ignoring list child names (Parquet stores ``element``, Arrow ``item``)."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return f"list<{_type_key(dtype.value_type)}>"
    return str(dtype)


def _columns_signature(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, _type_key(f.type)) for f in schema]


# --------------------------------------------------------------------------- helpers


def _parse_config(value: Any, where: str) -> list[list[float]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: config is not valid JSON ({exc})") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or not all(
        isinstance(s, (Sequence, np.ndarray)) and not isinstance(s, str) for s in value
    ):
        raise ValueError(f"{where}: config must be a nested per-stage list, got {value!r}")
    return [[float(r) for r in stage] for stage in value]


def _to_utc(value: Any, where: str) -> _dt.datetime | None:
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.datetime64):
        value = pd.Timestamp(value)
        if value is pd.NaT:
            return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:  # naive -> taken as UTC
            return value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            return None
        return _dt.datetime.fromtimestamp(float(value), tz=_dt.timezone.utc)
    if isinstance(value, str):
        return _to_utc(_dt.datetime.fromisoformat(value), where)
    raise ValueError(f"{where}: cannot convert {value!r} to a UTC timestamp")


def _trials_dir(exp_dir: str | os.PathLike) -> Path:
    return Path(exp_dir) / TRIALS_DIRNAME


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("_")


def list_parts(exp_dir: str | os.PathLike) -> list[Path]:
    """Files under ``EXP_DIR/trials/`` that a Parquet dataset reader would read.

    Every regular file whose name does not start with ``"."`` or ``"_"`` (the rule of
    ``pyarrow.dataset``), ordered by part sequence number, then by name (files not named
    ``part-<seq>-<id>.parquet`` last). Missing folder -> ``[]``.
    """
    tdir = _trials_dir(exp_dir)
    if not tdir.is_dir():
        return []
    files = [p for p in tdir.iterdir() if not _is_hidden(p.name) and p.is_file()]

    def key(p: Path) -> tuple[int, int, str]:
        m = _PART_RE.match(p.name)
        return (0, int(m.group(1)), p.name) if m else (1, 0, p.name)

    return sorted(files, key=key)


def _next_sequence(tdir: Path) -> int:
    """1 + the largest part sequence number in ``tdir`` (moved-aside ``.corrupt-part-*`` too)."""
    best = -1
    if tdir.is_dir():
        for name in os.listdir(tdir):
            m = _SEQ_RE.search(name)
            if m and name.endswith(".parquet"):
                best = max(best, int(m.group(1)))
    return best + 1


def _move_aside_hint(path: Path) -> str:
    return f"`mv {path} {path.parent / ('.corrupt-' + path.name)}`"


def _short_reason(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)
    return text[:200]


def _read_common_schema(tdir: Path) -> pa.Schema | None:
    path = tdir / COMMON_METADATA
    if not path.exists():
        return None
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise TrialLogError(
            f"trial-log schema file {path} is unreadable ({_short_reason(exc)}); delete it "
            "(the parts are intact; it is rewritten from the spec on the next run)"
        ) from None


def _write_common_schema(tdir: Path, schema: pa.Schema) -> None:
    atomic_write(tdir / COMMON_METADATA, lambda tmp: pq.write_metadata(schema, tmp))


# --------------------------------------------------------------------------- writer


class TrialLogWriter:
    """Appends batches of trial rows to ``EXP_DIR/trials/`` as atomic Parquet parts.

    Open it with a schema (``TrialLogWriter(exp_dir, trial_schema(12, ["miou"]))``), with
    the :func:`trial_schema` arguments (``TrialLogWriter(exp_dir, n_blocks=12,
    metric_names=["miou", "pixel_acc"])``), or, to resume, with neither (the schema is
    read back from ``trials/_common_metadata``). Part sequence numbers continue after the
    existing parts. One writer per experiment is expected (the runner); concurrent writers
    cannot overwrite each other (unique ids in the names) but may share sequence numbers.

    Args:
        exp_dir: experiment directory; ``trials/`` is created inside it.
        schema: a trial schema from :func:`trial_schema` (or ``None``).
        n_blocks, metric_names, extra_columns: :func:`trial_schema` arguments, used when
            ``schema`` is ``None``.
        experiment_id: default ``experiment_id`` for rows without one (default: the
            folder name of ``exp_dir``).

    Raises:
        ValueError: no schema given and none stored; ``schema`` lacks the fixed columns.
        TrialLogError: the stored schema differs from the given one (columns are fixed per
            experiment), or ``_common_metadata`` is unreadable.
    """

    def __init__(
        self,
        exp_dir: str | os.PathLike,
        schema: pa.Schema | None = None,
        *,
        n_blocks: int | None = None,
        metric_names: Sequence[str] = ("miou",),
        extra_columns: Mapping[str, pa.DataType] | Iterable[pa.Field] | None = None,
        experiment_id: str | None = None,
    ) -> None:
        self.exp_dir = Path(exp_dir)
        self.trials_dir = _trials_dir(self.exp_dir)
        self.trials_dir.mkdir(parents=True, exist_ok=True)
        if schema is None and n_blocks is not None:
            schema = trial_schema(n_blocks, metric_names, extra_columns)

        stored = _read_common_schema(self.trials_dir)
        stored_from = self.trials_dir / COMMON_METADATA
        if stored is None:
            for part in list_parts(self.exp_dir):  # _common_metadata lost: use a part
                try:
                    stored, stored_from = pq.read_schema(part), part
                    break
                except (pa.ArrowException, OSError):
                    continue
        if schema is None:
            if stored is None:
                raise ValueError(
                    f"no trial log at {self.trials_dir}: pass schema= or n_blocks= to create one"
                )
            schema = stored
        _check_trial_schema(schema)
        if stored is not None and _columns_signature(stored) != _columns_signature(schema):
            got, want = dict(_columns_signature(schema)), dict(_columns_signature(stored))
            diff = sorted(set(got.items()) ^ set(want.items()))
            diff_text = str(diff[:6]) if diff else "same columns, other order"
            raise TrialLogError(
                f"trial log {stored_from} has different columns than this run "
                f"(differences: {diff_text}); columns are fixed per experiment: use the "
                "original spec or a new experiment directory"
            )
        if not (self.trials_dir / COMMON_METADATA).exists():
            _write_common_schema(self.trials_dir, schema)

        self.schema: pa.Schema = schema
        self.n_blocks, self.metric_names, self.extra_columns = _schema_info(schema)
        self.ratio_columns = [n for n in schema.names if re.match(r"^r_\d+$", n)]
        self.experiment_id = experiment_id or self.exp_dir.resolve().name
        self.next_seq = _next_sequence(self.trials_dir)

    # ------------------------------------------------------------------ rows
    def _normalise(self, row: Mapping[str, Any], i: int) -> dict[str, Any]:
        where = f"trial-log row {i}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected a dict, got {type(row).__name__}")
        unknown = sorted(set(row) - set(self.schema.names))
        if unknown:
            raise ValueError(
                f"{where}: unknown trial-log columns {unknown}; known columns: {self.schema.names}"
            )
        out: dict[str, Any] = {name: None for name in self.schema.names}
        out.update(row)
        if out["experiment_id"] is None:
            out["experiment_id"] = self.experiment_id
        if out["attempt"] is None:
            out["attempt"] = 0

        if out["config"] is None:
            raise ValueError(f"{where}: 'config' (nested per-stage ratio list) is required")
        nested = _parse_config(out["config"], where)
        flat = [r for stage in nested for r in stage]
        if len(flat) != self.n_blocks:
            raise ValueError(f"{where}: config has {len(flat)} ratios, schema has {self.n_blocks}")
        if not all(math.isfinite(r) and 0.0 <= r < 1.0 for r in flat):
            raise ValueError(f"{where}: ratios must lie in [0, 1), got {flat}")
        f32 = np.asarray(flat, dtype=np.float32)
        if out["ratios"] is not None:
            given = np.asarray(out["ratios"], dtype=np.float32).ravel()
            if given.shape != f32.shape or not np.allclose(given, f32, atol=1e-6):
                raise ValueError(f"{where}: 'ratios' {given.tolist()} != flattened config {flat}")
        for col, r in zip(self.ratio_columns, f32.tolist()):
            if out[col] is not None and not math.isclose(float(out[col]), r, abs_tol=1e-6):
                raise ValueError(f"{where}: {col}={out[col]} != config ratio {r}")
            out[col] = r
        out["ratios"] = f32.tolist()
        out["config"] = json.dumps(nested, separators=(",", ":"))
        if out["config_hash"] is None:
            from .space import Config, config_hash

            out["config_hash"] = config_hash(Config(nested), out["checkpoint_sha256"] or "")

        if out["status"] not in STATUSES:
            raise ValueError(f"{where}: status {out['status']!r} not in {STATUSES}")
        for name in ("start_time", "end_time"):
            out[name] = _to_utc(out[name], where)
        missing = [n for n in _REQUIRED if out.get(n) is None]
        if missing:
            raise ValueError(f"{where}: required trial-log columns missing or null: {missing}")
        if out["error"] is not None:
            out["error"] = " ".join(str(out["error"]).splitlines())
        return out

    def append(self, rows: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> Path | None:
        """Write one batch of trial rows as ONE new Parquet part, atomically.

        Each row is a dict of column values. ``config`` (nested per-stage list or its
        JSON), ``trial_number``, ``generation`` and ``status`` are required; ``ratios``,
        ``r_NN`` and ``config_hash`` are derived from ``config`` (if given they must agree);
        ``attempt`` defaults to 0 and ``experiment_id`` to the writer's; every other column
        missing from a row is null. Timestamps may be aware/naive (naive = UTC) datetimes,
        ``pandas.Timestamp``, epoch seconds or ISO strings.

        The batch is written to ``trials/.tmp-<uuid>.parquet``, fsync'ed, renamed with
        ``os.replace`` to ``trials/part-<seq:06d>-<uuid8>.parquet``, and the directory is
        fsync'ed: readers see either the whole batch or nothing.

        Args:
            rows: the trial rows (a single dict is accepted too).

        Returns:
            Path of the new part, or ``None`` when ``rows`` is empty (nothing written).

        Raises:
            ValueError: unknown column, missing required value, bad status, wrong number of
                ratios, ratio outside [0, 1), inconsistent ``ratios``/``r_NN``/``config``,
                or a value pyarrow cannot convert to its column type.
            OSError: the file system failed (the temp file is removed).
        """
        if isinstance(rows, Mapping):
            rows = [rows]
        records = [self._normalise(r, i) for i, r in enumerate(rows)]
        if not records:
            return None
        try:
            table = pa.Table.from_pylist(records, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise ValueError(f"trial rows do not fit the trial-log schema: {exc}") from None

        seq = max(self.next_seq, _next_sequence(self.trials_dir))
        final = self.trials_dir / f"part-{seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        atomic_write(final, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        self.next_seq = seq + 1
        return final


# --------------------------------------------------------------------------- readers


def load_trials(
    exp_dir: str | os.PathLike,
    *,
    on_corrupt: Literal["raise", "skip"] = "raise",
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read every part of ``EXP_DIR/trials/`` into one DataFrame.

    Reads the same files as ``pyarrow.dataset`` would (:func:`list_parts`: hidden
    ``.tmp-*`` / ``_*`` files are ignored), concatenates them and sorts by
    ``trial_number``, then ``end_time``, then ``attempt`` (stable; NaT last). Column types
    follow ``pyarrow.Table.to_pandas``: timestamps are ``datetime64[us, UTC]``, ``ratios``
    holds float32 arrays, and a nullable int column (``macs``, ``params``) that contains
    nulls comes back as float64.

    An experiment without parts gives an empty DataFrame with the schema's columns
    (from ``trials/_common_metadata``; the fixed columns only when there is none).

    Args:
        exp_dir: experiment directory (the folder holding ``trials/``).
        on_corrupt: ``"raise"`` -> :class:`TrialLogError` for the first unreadable part
            (``resume`` and ``run`` use this: an experiment is never continued over a part it
            cannot read); ``"skip"`` -> a :class:`TrialLogWarning` per unreadable part, the rest
            is returned (for read-only reports).
        columns: optional subset of columns to return.

    Raises:
        TrialLogError: ``exp_dir`` does not exist; a part is unreadable, truncated or not a
            trial-log part (``on_corrupt="raise"``); ``_common_metadata`` is unreadable.
        ValueError: ``on_corrupt`` is not ``"raise"`` or ``"skip"``.
    """
    if on_corrupt not in ("raise", "skip"):
        raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise TrialLogError(
            f"experiment directory {exp_dir} does not exist; pass the folder that holds trials/"
        )

    tables: list[pa.Table] = []
    for part in list_parts(exp_dir):
        problem: str | None = None
        try:
            table = pq.read_table(part)
        except (pa.ArrowException, OSError) as exc:
            problem = _short_reason(exc)
        else:
            missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
            if missing:
                problem = f"not a trial-log part: no column(s) {missing}"
        if problem is not None:
            msg = (
                f"trial-log part {part} is unreadable ({problem}); fix: move it aside, e.g. "
                f"{_move_aside_hint(part)}: the other parts are intact and "
                "`sparsesearch resume` gives its trial numbers to new trials"
            )
            if on_corrupt == "raise":
                raise TrialLogError(msg)
            warnings.warn(f"skipping {msg}", TrialLogWarning, stacklevel=2)
            continue
        tables.append(table)

    if tables:
        try:
            table = pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TrialLogError(
                f"trial-log parts in {_trials_dir(exp_dir)} have incompatible columns "
                f"({_short_reason(exc)}); move the parts of the other experiment out of it"
            ) from None
    else:
        try:
            schema = _read_common_schema(_trials_dir(exp_dir))
        except TrialLogError as exc:
            if on_corrupt == "raise":
                raise
            warnings.warn(f"skipping {exc}", TrialLogWarning, stacklevel=2)
            schema = None
        table = (schema or trial_schema(0, ())).empty_table()

    df = table.to_pandas()
    sort_cols = [c for c in ("trial_number", "end_time", "attempt") if c in df.columns]
    if sort_cols and len(df):
        df = df.sort_values(sort_cols, kind="stable", na_position="last")
    df = df.reset_index(drop=True)
    if columns is not None:
        df = df[list(columns)]
    return df


def measured_mask(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """Which rows hold a measurement of ``metric``: status in :data:`FEASIBLE_STATUSES` (complete / cached) and a
    finite value. The one spelling of the rule the front table, the front report and the search's front use.

    Args:
        rows: trial rows (needs ``status`` and ``metric`` columns; usually :func:`final_trials`).
        metric: the metric column.

    Returns:
        bool array of shape ``(len(rows),)``.

    Raises:
        KeyError: ``status`` or ``metric`` column missing.
    """
    val = pd.to_numeric(rows[metric], errors="coerce").astype("float64").to_numpy()
    return rows["status"].isin(FEASIBLE_STATUSES).to_numpy() & np.isfinite(val)


def final_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Reduce a trial log to one row per ``trial_number``.

    The row that wins for a trial is its last row with a final status (complete /
    rejected / cached); a trial with only ``failed`` rows keeps its last failed row, so
    ``resume`` can see it failed. "Last" = highest ``attempt``, then latest ``end_time``,
    then position in ``df``. The result is sorted by ``trial_number`` with a fresh index.

    Args:
        df: a DataFrame from :func:`load_trials` (needs ``trial_number`` and ``status``;
            ``attempt`` / ``end_time`` are used when present).

    Raises:
        KeyError: ``trial_number`` or ``status`` column missing.
    """
    for col in ("trial_number", "status"):
        if col not in df.columns:
            raise KeyError(f"final_trials needs a {col!r} column")
    if df.empty:
        return df.reset_index(drop=True)
    work = df.assign(
        _is_final=df["status"].isin(FINAL_STATUSES).astype(np.int8).to_numpy(),
        _pos=np.arange(len(df)),
    )
    keys = ["trial_number", "_is_final"]
    keys += [c for c in ("attempt", "end_time") if c in df.columns]
    keys.append("_pos")
    work = work.sort_values(keys, kind="stable", na_position="first")
    last = work.groupby("trial_number", sort=True).tail(1)
    return last.sort_values("trial_number", kind="stable").drop(
        columns=["_is_final", "_pos"]
    ).reset_index(drop=True)
