"""The benchmark scripts run end to end on a small setting and record what they measured under which settings."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_window_pruning_bench_records_the_denormal_setting(tmp_path, capsys):
    bench = _load("window_pruning")
    out = tmp_path / "wp.json"
    try:
        got = bench.main(["--img-size", "224", "--repeats", "2", "--warmup", "0", "--configs", "uniform0.4,cfg3",
                          "--threads", "1", "--device", "cpu", "--flush-denormal", "--out", str(out), "--json"])
    finally:
        torch.set_flush_denormal(False)  # a process-wide setting: leave the other tests as PyTorch ships
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) == got
    assert got["flush_denormal"] is True and "flush-denormal" in got["summary"]
    rows = {r["config"]: r for r in got["results"]}
    assert set(rows) == {"uniform0.4", "cfg3"}
    for r in rows.values():  # fewer MACs than dense, and a latency measured for both members of every pair
        assert 0 < r["macs_ratio"] < 1 and r["dense_ms"] > 0 and r["sparse_ms"] > 0
        assert abs(r["latency_over_macs"] - r["latency_ratio"] / r["macs_ratio"]) < 2e-3


def test_write_result_writes_strict_json_and_prints_the_summary_or_the_object(tmp_path, capsys):
    from bench._result import write_result

    out = {"summary": "bench: 1.02x", "ratio": float("nan"), "where": tmp_path, "runs": [1, 2]}
    path = tmp_path / "sub" / "r.json"
    assert write_result(out, path, False) is out
    assert capsys.readouterr().out == "bench: 1.02x\n"
    on_disk = json.loads(path.read_text())
    assert on_disk["ratio"] is None and on_disk["where"] == str(tmp_path) and on_disk["runs"] == [1, 2]
    write_result(out, path, True, shown={k: v for k, v in out.items() if k != "runs"})
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "runs" not in json.loads(printed)
    assert json.loads(path.read_text())["runs"] == [1, 2]  # the file keeps everything
