"""Tests of search.trial_log: schema, atomic parts, resume, corruption, final_trials."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from search.errors import EXIT_USER_ERROR, UserError
from search.space import Config, config_hash as space_config_hash
from search.trial_log import (
    STATUSES,
    TrialLogError,
    TrialLogWarning,
    TrialLogWriter,
    final_trials,
    list_parts,
    load_trials,
    ratio_columns,
    trial_schema,
)

SWIN_T = [[0.7, 0.7], [0.0, 0.0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0.0, 0.0]]
N_BLOCKS = 12
PART_RE = re.compile(r"^part-(\d{6})-[0-9a-f]{8}\.parquet$")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def make_row(trial: int, *, status: str = "complete", attempt: int = 0, gen: int | None = None,
             miou: float | None = 0.5, latency: float = 10.0, end_s: float = 0.0, **extra):
    cfg = [[min(0.9, r + 0.01 * trial) for r in stage] for stage in SWIN_T]
    row = dict(trial_number=trial, generation=trial // 4 if gen is None else gen,
               attempt=attempt, config=cfg, status=status, miou=miou,
               predicted_latency_ms=latency, start_time=T0,
               end_time=T0 + dt.timedelta(seconds=end_s))
    row.update(extra)
    return row


@pytest.fixture()
def writer(tmp_path):
    return TrialLogWriter(tmp_path / "exp", n_blocks=N_BLOCKS, metric_names=["miou", "pixel_acc"])


# ----------------------------------------------------------------------------- schema


def test_schema_columns_types_and_nullability():
    schema = trial_schema(N_BLOCKS, ["miou", "pixel_acc"], {"seed": pa.int64()})
    rcols = [f"r_{i:02d}" for i in range(N_BLOCKS)]
    expected = (["experiment_id", "trial_number", "generation", "attempt"] + rcols
                + ["ratios", "config", "config_hash", "checkpoint_sha256", "status",
                   "miou", "pixel_acc", "predicted_latency_ms", "macs", "w_qkv", "w_proj",
                   "w_mlp", "params", "eval_seconds", "canvases", "worker_id", "node", "start_time",
                   "end_time", "error", "seed"])
    assert schema.names == expected
    types = {f.name: f.type for f in schema}
    assert types["trial_number"] == pa.int64() and types["generation"] == pa.int64()
    assert types["attempt"] == pa.int32()
    assert all(types[c] == pa.float32() for c in rcols)
    assert types["ratios"] == pa.list_(pa.float32())
    assert types["miou"] == pa.float64() and types["predicted_latency_ms"] == pa.float64()
    assert types["macs"] == pa.int64() and types["params"] == pa.int64()
    assert all(types[c] == pa.float32() for c in ("w_qkv", "w_proj", "w_mlp"))
    assert types["start_time"] == pa.timestamp("us", tz="UTC") == types["end_time"]
    assert types["seed"] == pa.int64()
    nullable = {f.name: f.nullable for f in schema}
    for col in ["experiment_id", "trial_number", "generation", "attempt", "ratios", "config",
                "config_hash", "status", *rcols]:
        assert not nullable[col], col
    for col in ["miou", "pixel_acc", "macs", "w_qkv", "params", "error", "end_time", "seed"]:
        assert nullable[col], col
    assert schema.field("predicted_latency_ms").metadata[b"unit"] == b"ms"
    meta = schema.metadata
    assert json.loads(meta[b"sparsesearch.metric_names"]) == ["miou", "pixel_acc"]
    assert int(meta[b"sparsesearch.n_blocks"]) == N_BLOCKS


def test_ratio_column_names_and_reserved_names():
    assert ratio_columns(3) == ["r_00", "r_01", "r_02"]
    cols = ratio_columns(101)
    assert cols[0] == "r_000" and cols[-1] == "r_100" and len(set(cols)) == 101
    for bad in (["status"], ["miou", "miou"], ["r_05"], ["not-an-identifier"]):
        with pytest.raises(ValueError):
            trial_schema(4, bad)


# ----------------------------------------------------------------------------- writing


def test_append_roundtrip_derives_ratios_and_nulls(writer):
    path = writer.append([make_row(0, macs=4_500_000_000, worker_id="w0"),
                          make_row(1, status="rejected", miou=None)])
    assert PART_RE.match(path.name) and path.parent == writer.trials_dir
    df = load_trials(writer.exp_dir)
    assert list(df.columns) == writer.schema.names
    assert df["trial_number"].tolist() == [0, 1]
    first = df.iloc[0]
    flat = np.array([r for s in SWIN_T for r in s], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(first["ratios"], dtype=np.float32), flat)
    np.testing.assert_array_equal(first[ratio_columns(N_BLOCKS)].to_numpy(np.float32), flat)
    assert json.loads(first["config"]) == SWIN_T
    assert first["config_hash"] == space_config_hash(Config(SWIN_T), "")  # no checkpoint_sha256 in the row
    assert first["experiment_id"] == "exp" and first["attempt"] == 0
    assert first["macs"] == 4_500_000_000 and first["worker_id"] == "w0"
    assert pd.isna(first["pixel_acc"]) and pd.isna(first["error"]) and pd.isna(first["w_mlp"])
    assert pd.isna(df.iloc[1]["miou"]) and df.iloc[1]["status"] == "rejected"
    assert str(df["end_time"].dtype) == "datetime64[us, UTC]"
    assert df.iloc[0]["start_time"] == pd.Timestamp(T0)


def test_config_hash_ignores_float32_roundtrip_but_not_structure():
    def config_hash(nested):
        return space_config_hash(Config(nested), "sha")
    f32 = [[float(np.float32(r)) for r in s] for s in SWIN_T]
    assert config_hash(f32) == config_hash(SWIN_T)
    regrouped = [SWIN_T[0] + SWIN_T[1], SWIN_T[2], SWIN_T[3]]
    assert config_hash(regrouped) != config_hash(SWIN_T)


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"oops": 1}, "unknown trial-log columns"),
        ({"status": "running"}, "status"),
        ({"config": [[0.1, 0.2]]}, "2 ratios"),
        ({"config": [[1.0] * 2, [0.0] * 2, [0.0] * 6, [0.0] * 2]}, r"\[0, 1\)"),
        ({"ratios": [0.0] * N_BLOCKS}, "flattened config"),
        ({"r_00": 0.1}, "r_00"),
        ({"generation": None}, "generation"),
    ],
)
def test_bad_rows_raise_and_write_nothing(writer, patch, match):
    row = make_row(0)
    row.update(patch)
    with pytest.raises(ValueError, match=match):
        writer.append([make_row(1), row])
    assert list_parts(writer.exp_dir) == []
    assert [p for p in writer.trials_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_append_empty_writes_nothing(writer):
    assert writer.append([]) is None
    assert list_parts(writer.exp_dir) == []


def test_failed_rename_leaves_no_part_and_no_temp(writer, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        writer.append([make_row(0)])
    monkeypatch.undo()
    assert list_parts(writer.exp_dir) == []
    assert not any(p.name.startswith(".tmp-") for p in writer.trials_dir.iterdir())
    assert writer.append([make_row(0)]) is not None
    assert len(load_trials(writer.exp_dir)) == 1


def test_part_is_fsynced_under_a_hidden_temp_name_before_rename(writer, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = writer.append([make_row(0)])
    monkeypatch.undo()
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][2] == path.name
    tmp_name = renames[0][1]
    assert tmp_name.startswith(".") and not tmp_name.endswith(".parquet")  # hidden: no reader sees it
    assert events.index(("fsync", tmp_name)) < events.index(renames[0])


def test_leftover_temp_files_are_ignored_by_all_readers(writer):
    writer.append([make_row(0), make_row(1)])
    good = writer.append([make_row(2)])
    tdir = writer.trials_dir
    # a crash mid-write: truncated copy of a real part, plus pure garbage
    data = good.read_bytes()
    (tdir / ".tmp-0123456789abcdef.parquet").write_bytes(data[: len(data) // 2])
    (tdir / ".tmp-fedcba9876543210.parquet").write_bytes(b"\x00garbage" * 10)

    df = load_trials(writer.exp_dir)
    assert df["trial_number"].tolist() == [0, 1, 2]

    dset = pads.dataset(tdir, format="parquet")
    assert sorted(os.path.basename(f) for f in dset.files) == sorted(
        p.name for p in list_parts(writer.exp_dir))
    table = dset.to_table()
    assert table.num_rows == 3
    assert sorted(table.column("trial_number").to_pylist()) == [0, 1, 2]

    pdf = pd.read_parquet(tdir)
    assert len(pdf) == 3 and list(pdf.columns) == writer.schema.names
    assert sorted(pdf["trial_number"].tolist()) == [0, 1, 2]


# ----------------------------------------------------------------------------- resume


def test_sequence_numbers_continue_after_reopen(writer):
    p0 = writer.append([make_row(0)])
    p1 = writer.append([make_row(1)])
    assert [int(PART_RE.match(p.name).group(1)) for p in (p0, p1)] == [0, 1]

    reopened = TrialLogWriter(writer.exp_dir)  # schema read back from _common_metadata
    assert reopened.schema.names == writer.schema.names
    assert reopened.metric_names == ["miou", "pixel_acc"] and reopened.n_blocks == N_BLOCKS
    p2 = reopened.append([make_row(2)])
    assert int(PART_RE.match(p2.name).group(1)) == 2
    assert [p.name for p in list_parts(writer.exp_dir)] == [p0.name, p1.name, p2.name]
    # same spec given again is accepted
    again = TrialLogWriter(writer.exp_dir, n_blocks=N_BLOCKS, metric_names=["miou", "pixel_acc"])
    assert int(PART_RE.match(again.append([make_row(3)]).name).group(1)) == 3
    assert load_trials(writer.exp_dir)["trial_number"].tolist() == [0, 1, 2, 3]


def test_reopen_with_different_columns_is_a_user_error(writer):
    writer.append([make_row(0)])
    with pytest.raises(TrialLogError, match="columns are fixed per experiment"):
        TrialLogWriter(writer.exp_dir, n_blocks=N_BLOCKS, metric_names=["miou"])


def test_reopen_without_schema_on_new_dir_raises(tmp_path):
    with pytest.raises(ValueError, match="n_blocks"):
        TrialLogWriter(tmp_path / "fresh")


# ----------------------------------------------------------------------------- corruption


def test_corrupted_part_raises_naming_file_and_skip_returns_rest(writer):
    writer.append([make_row(0), make_row(1)])
    bad = writer.append([make_row(2)])
    writer.append([make_row(3)])
    bad.write_bytes(b"this is not parquet" * 50)

    with pytest.raises(TrialLogError) as info:
        load_trials(writer.exp_dir)
    msg = str(info.value)
    assert bad.name in msg and "resume" in msg and "\n" not in msg
    assert isinstance(info.value, UserError) and info.value.exit_code == EXIT_USER_ERROR

    with pytest.warns(TrialLogWarning, match=bad.name):
        df = load_trials(writer.exp_dir, on_corrupt="skip")
    assert df["trial_number"].tolist() == [0, 1, 3]


def test_truncated_part_is_detected(writer):
    writer.append([make_row(0)])
    part = writer.append([make_row(i) for i in range(1, 40)])
    data = part.read_bytes()
    part.write_bytes(data[: len(data) - 20])
    with pytest.raises(TrialLogError, match=part.name):
        load_trials(writer.exp_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = load_trials(writer.exp_dir, on_corrupt="skip")
    assert df["trial_number"].tolist() == [0]
    assert any(issubclass(w.category, TrialLogWarning) for w in caught)


def test_moved_aside_part_is_ignored_and_sequence_still_advances(writer):
    writer.append([make_row(0)])
    bad = writer.append([make_row(1)])
    bad.write_bytes(b"garbage")
    os.replace(bad, bad.parent / (".corrupt-" + bad.name))  # the fix the error suggests
    assert load_trials(writer.exp_dir)["trial_number"].tolist() == [0]
    nxt = TrialLogWriter(writer.exp_dir).append([make_row(1)])
    assert int(PART_RE.match(nxt.name).group(1)) == 2


def test_foreign_parquet_file_is_rejected(writer):
    writer.append([make_row(0)])
    stray = writer.trials_dir / "notes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), stray)
    with pytest.raises(TrialLogError, match="notes.parquet"):
        load_trials(writer.exp_dir)


def test_empty_and_missing_experiment(writer, tmp_path):
    df = load_trials(writer.exp_dir)
    assert df.empty and list(df.columns) == writer.schema.names
    bare = tmp_path / "bare"
    bare.mkdir()
    assert load_trials(bare).empty
    with pytest.raises(TrialLogError, match="does not exist"):
        load_trials(tmp_path / "nope")


def test_user_error_message_is_one_line():
    err = UserError("first line\n  second line\r\nthird")
    assert str(err) == "first line second line third"
    assert err.message == str(err)


# ----------------------------------------------------------------------------- final rows


def test_final_trials_prefers_final_status_over_failed_attempts(writer):
    writer.append([
        make_row(0, status="failed", attempt=0, miou=None, error="CUDA OOM\nTraceback", end_s=1),
        make_row(1, status="failed", attempt=0, miou=None, error="e0", end_s=2),
        make_row(2, status="rejected", miou=None, end_s=3),
    ])
    writer.append([
        make_row(0, status="complete", attempt=1, miou=0.61, end_s=10),
        make_row(1, status="failed", attempt=1, miou=None, error="e1", end_s=11),
        make_row(3, status="cached", miou=0.4, end_s=12),
    ])
    # a stray failed attempt recorded after a complete one must not win
    writer.append([make_row(3, status="failed", attempt=1, miou=None, error="late", end_s=13)])

    df = load_trials(writer.exp_dir)
    assert len(df) == 7
    assert df.loc[df.trial_number == 0, "error"].dropna().tolist() == ["CUDA OOM Traceback"]
    fin = final_trials(df)
    assert fin["trial_number"].tolist() == [0, 1, 2, 3]
    assert fin["status"].tolist() == ["complete", "failed", "rejected", "cached"]
    assert fin["attempt"].tolist() == [1, 1, 0, 0]
    assert fin.loc[0, "miou"] == pytest.approx(0.61)
    assert fin.loc[1, "error"] == "e1"
    assert set(fin["status"]) <= set(STATUSES)
    # input order does not matter
    shuffled = df.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(final_trials(shuffled), fin)


def test_final_trials_empty():
    empty = pd.DataFrame({"trial_number": pd.Series(dtype="int64"),
                          "status": pd.Series(dtype="object")})
    assert final_trials(empty).empty


def test_measured_mask_needs_a_measured_status_and_a_finite_metric():
    from search.trial_log import measured_mask

    rows = pd.DataFrame({"status": ["complete", "cached", "partial", "failed", "rejected", "complete", "cached"],
                         "miou": [0.5, 0.4, 0.3, np.nan, None, np.nan, float("inf")]})
    assert measured_mask(rows, "miou").tolist() == [True, True, False, False, False, False, False]
    with pytest.raises(KeyError):
        measured_mask(rows, "absent")
