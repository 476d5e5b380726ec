"""Tests of latency: predictor arithmetic, vectorisation, fingerprints, errors, a tiny real profile."""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import warnings

import numpy as np
import pytest
import torch

from latency import (
    FingerprintWarning,
    Predictor,
    PredictorError,
    cli_profile,
    cli_validate,
    current_fingerprint,
    profile,
    save,
    validate,
)
from latency.profiler import kept_window_counts, measure_configs, random_configs, _session, _make_input
from supernet import SparseSwin, keep_count
from supernet.seg import SegSupernet

torch.set_num_threads(1)

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


# --------------------------------------------------------------------------------------------
# a synthetic table: depths (2, 1), nW 4/4 and 1
# --------------------------------------------------------------------------------------------
def synthetic(a=2.0, b=0.5, fingerprint=None):
    return {
        "format_version": 1,
        "units": "ms",
        "fingerprint": fingerprint or current_fingerprint("cpu", 1, 1, "float32", 64),
        "img_size": [64, 64],
        "batch_size": 1,
        "depths": [2, 1],
        "num_windows": [[4, 4], [1]],
        "ratios": [0.0, 0.5],
        "blocks": [
            [{"k": [2, 4], "ms": [1.0, 3.0]},          # k=0 implicit 0 ms, k=1,3 interpolated
             {"k": [0, 2, 4], "ms": [0.0, 2.0, 4.0]}],
            [{"k": [0, 1], "ms": [0.0, 5.0]}],
        ],
        "fixed_ms": {"patch_embed": 0.5, "downsample": [0.0, 0.25], "scoring": [0.1, 0.2], "head": 1.0},
        "calibration": {"a": a, "b": b, "n": 0},
        "model_arch": None,
        "checkpoint_sha256": None,
    }


FIXED = 0.5 + 0.0 + 0.25 + 1.0


@pytest.mark.parametrize("config,raw", [
    ([[0, 0], [0]], 3.0 + 4.0 + 5.0 + FIXED),                     # dense: no scoring
    ([[0.25, 0.5], [0]], 2.0 + 2.0 + 5.0 + FIXED + 0.1),          # k=3 (interpolated 2.0), k=2; stage 0 scored
    ([[0, 0.8], [0.5]], 3.0 + 0.0 + 0.0 + FIXED + 0.1 + 0.2),     # k=int(0.8)=0 costs 0; both stages scored
    ([[0.7, 0.7], [0]], 0.5 + 1.0 + 5.0 + FIXED + 0.1),           # 4*0.3 = 1.2 -> k=1: 0.5 (0..1.0) and 1.0
    ([[0, 0], [0.3]], 3.0 + 4.0 + 0.0 + FIXED + 0.2),             # nW=1, r=0.3 -> k=0, stage 1 scored
])
def test_synthetic_arithmetic(config, raw):
    p = Predictor(synthetic())
    assert p.table_sum(config)[0] == pytest.approx(raw, abs=1e-12)
    assert p.predict_one(config) == pytest.approx(2.0 * raw + 0.5, abs=1e-12)
    bd = p.breakdown(config)
    assert bd["predicted"] == pytest.approx(2.0 * raw + 0.5)
    assert sum(map(sum, bd["blocks_ms"])) + bd["patch_embed"] + sum(bd["downsample"]) + sum(bd["scoring"]) \
        + bd["head"] == pytest.approx(raw)


def test_interpolated_lookup_and_calibration_identity():
    p = Predictor(synthetic(a=1.0, b=0.0))
    np.testing.assert_allclose(p.lookup(0, 0), [0.0, 0.5, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(p.lookup(0, 1), [0.0, 1.0, 2.0, 3.0, 4.0])
    assert p.predict_one([[0, 0], [0]]) == pytest.approx(12.0 + FIXED)


def test_input_forms_agree():
    p = Predictor(synthetic())
    nested = [[[0.25, 0.5], [0.0]], [[0.0, 0.8], [0.5]]]
    flat = np.array([[0.25, 0.5, 0.0], [0.0, 0.8, 0.5]])

    class Cfg:  # duck type of search.space.Config
        def __init__(self, f):
            self.flat = tuple(f)

    a = p.predict(flat)
    assert a.dtype == np.float64 and a.shape == (2,)
    np.testing.assert_array_equal(a, p.predict(nested))
    np.testing.assert_array_equal(a, p.predict([Cfg(f) for f in flat]))
    one = p.predict(nested[0])
    assert one.shape == (1,) and one[0] == a[0]
    assert p.predict(flat[1]).shape == (1,)
    assert p.predict(Cfg(flat[1]))[0] == a[1]
    assert p.predict(np.zeros((0, 3))).shape == (0,)
    assert p.predict([]).shape == (0,)


def _slow_predict(table, flat_cfg):
    """Per-config reference: keep_count + np.interp on the raw table entries."""
    total, b = 0.0, 0
    fx = table["fixed_ms"]
    total += fx["patch_embed"] + sum(fx["downsample"]) + fx["head"]
    for s, d in enumerate(table["depths"]):
        rs = flat_cfg[b:b + d]
        if any(r > 0 for r in rs):
            total += fx["scoring"][s]
        for j, r in enumerate(rs):
            nw = table["num_windows"][s][j]
            e = table["blocks"][s][j]
            k = keep_count(nw, float(r))
            xp, fp = list(e["k"]), list(e["ms"])
            if xp[0] != 0:
                xp, fp = [0] + xp, [0.0] + fp
            total += float(np.interp(k, xp, fp))
        b += d
    cal = table["calibration"]
    return cal["a"] * total + cal["b"]


def test_vectorised_equals_slow_loop_on_realistic_table():
    rng = np.random.default_rng(1)
    depths, nws = [2, 2, 6, 2], [[64, 64], [16, 16], [4] * 6, [1, 1]]
    ratios = [round(0.1 * i, 1) for i in range(9)]
    blocks = []
    for row in nws:
        out = []
        for nw in row:
            ks = [k for k in kept_window_counts(nw, ratios) if k > 0]
            out.append({"k": ks, "ms": sorted(rng.uniform(0.1, 3.0, len(ks)).tolist())})
        blocks.append(out)
    table = dict(synthetic(a=1.1, b=-0.3), depths=depths, num_windows=nws, ratios=ratios, blocks=blocks,
                 fixed_ms={"patch_embed": 0.3, "downsample": [0.0, 0.2, 0.1, 0.05],
                           "scoring": [0.05, 0.04, 0.03, 0.02], "head": 0.7})
    p = Predictor(table)
    # profiled ratios plus arbitrary ones (interpolated k), plus float-rounding edge cases
    cfgs = np.concatenate([random_configs(depths, ratios, 300, rng),
                           random_configs(depths, np.linspace(0, 0.95, 60), 300, rng),
                           random_configs(depths, [0.0, 0.3, 0.7, 0.9, 1 - 1 / 64, 1 - 3 / 16], 200, rng)])
    fast = p.predict(cfgs)
    slow = np.array([_slow_predict(table, c) for c in cfgs])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    # keep counts are exactly keep_count()
    flat_nw = [n for row in nws for n in row]
    k_ref = np.array([[keep_count(n, float(r)) for n, r in zip(flat_nw, c)] for c in cfgs])
    np.testing.assert_array_equal(p.keep_counts(cfgs), k_ref)


def test_keep_counts_match_keep_count_on_float_edges():
    rng = np.random.default_rng(0)
    for nw in (1, 3, 4, 7, 10, 16, 49, 64, 100, 144):
        rs = np.concatenate([np.round(np.arange(0, 1, 0.01), 2), 1 - np.arange(1, nw + 1) / nw,
                             rng.uniform(0, 1, 200)])
        rs = np.sort(rs[(rs >= 0) & (rs < 1)])
        table = dict(synthetic(), depths=[1], num_windows=[[nw]], blocks=[[{"k": [nw], "ms": [1.0]}]],
                     fixed_ms={"patch_embed": 0, "downsample": [0], "scoring": [0], "head": 0})
        k = Predictor(table).keep_counts(rs[:, None])[:, 0]
        np.testing.assert_array_equal(k, [keep_count(nw, float(r)) for r in rs])


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,msg", [
    ([[0, 0]], "stage lengths"),
    ([[0, 0], [0, 0]], "stage lengths"),
    ([[0, 0, 0], [0]], "stage lengths"),
    ([[0, 1.0], [0]], r"outside \[0, 1\)"),
    ([[-0.1, 0], [0]], r"outside \[0, 1\)"),
    ([[float("nan"), 0], [0]], r"outside \[0, 1\)"),
    ([[0.5, 0.2], [0]], "inside a stage"),
    (np.zeros((3, 4)), r"shape \(3, 4\)"),
    (np.zeros((2, 3, 1)), "shape"),
    ([[0, "a"], [0]], "non-numbers"),
    ("0.1", "not understood"),
])
def test_invalid_configs_raise(bad, msg):
    p = Predictor(synthetic(), source="pred.json")
    with pytest.raises(PredictorError, match=msg) as ei:
        p.predict(bad)
    assert isinstance(ei.value, ValueError)
    text = str(ei.value)
    assert "pred.json" in text and "fix:" in text and "\n" not in text


def test_predict_one_rejects_several():
    p = Predictor(synthetic())
    with pytest.raises(PredictorError, match="predict"):
        p.predict_one(np.zeros((2, 3)))


def _mutate(fn):
    t = copy.deepcopy(synthetic())
    fn(t)
    return t


@pytest.mark.parametrize("table,msg", [
    (_mutate(lambda t: t.pop("blocks")), "missing key 'blocks'"),
    (_mutate(lambda t: t.update(format_version=99)), "format_version 99"),
    (_mutate(lambda t: t["blocks"][0][0].update(k=[2, 3], ms=[1.0, 2.0])), "k=nW=4"),
    (_mutate(lambda t: t["blocks"][0][0].update(k=[4, 2], ms=[1.0, 2.0])), "ascending"),
    (_mutate(lambda t: t["blocks"][0][0].update(ms=[1.0])), "same non-zero length"),
    (_mutate(lambda t: t["blocks"][0][1].update(ms=[0.5, 2.0, 4.0])), "k=0"),
    (_mutate(lambda t: t["blocks"][1][0].update(ms=[0.0, float("nan")])), "finite"),
    (_mutate(lambda t: t["num_windows"].pop()), "num_windows"),
    (_mutate(lambda t: t["fixed_ms"].update(scoring=[0.1])), "scoring"),
    (_mutate(lambda t: t["calibration"].pop("a")), "calibration"),
])
def test_malformed_tables_raise(table, msg):
    with pytest.raises(PredictorError, match=msg) as ei:
        Predictor(table, source="bad.json")
    assert "bad.json" in str(ei.value) and "sparsesearch latency profile" in str(ei.value)


def test_load_errors(tmp_path):
    with pytest.raises(PredictorError, match="not found"):
        Predictor.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PredictorError, match="not valid JSON") as ei:
        Predictor.load(bad)
    assert str(bad) in str(ei.value)


def test_save_load_roundtrip(tmp_path):
    t = synthetic()
    path = save(t, tmp_path / "sub" / "p.json")
    p = Predictor.load(path)
    assert p.source == str(path)
    cfgs = np.array([[0.25, 0.5, 0.0], [0.0, 0.8, 0.5]])
    np.testing.assert_array_equal(p.predict(cfgs), Predictor(t).predict(cfgs))
    assert json.loads(path.read_text())["format_version"] == 1
    with pytest.raises(PredictorError):  # save validates
        save(_mutate(lambda t: t.pop("depths")), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------
def test_fingerprint_mismatch_warns(tmp_path):
    fp = current_fingerprint("cpu", 1, 1, "float32", 64)
    assert fp["device"] == "cpu" and fp["threads"] == 1 and fp["img_size"] == [64, 64] and fp["device_name"]
    p = Predictor(synthetic(fingerprint=fp))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert p.check_fingerprint(current_fingerprint("cpu", 1, 1, torch.float32, (64, 64))) == []

    with pytest.warns(FingerprintWarning, match="threads 1 -> 4"):
        diffs = p.check_fingerprint(current_fingerprint("cpu", 4, 1, "float32", 64))
    assert diffs == ["threads 1 -> 4"]

    other = dict(fp, device_name="Some Other CPU", torch="1.13.1", batch_size=8, img_size=[224, 224])
    path = save(synthetic(fingerprint=other), tmp_path / "p.json")
    with pytest.warns(FingerprintWarning) as rec:
        Predictor.load(path, expect_fingerprint=fp)
    text = str(rec[0].message)
    for part in ("device_name", "torch '1.13' -> ", "batch_size 8 -> 1", "img_size", "re-profile"):
        assert part in text
    with warnings.catch_warnings():  # a patch-level torch difference is fine
        warnings.simplefilter("error")
        Predictor(synthetic(fingerprint=dict(fp, torch=fp["torch"].split("+")[0] + "9"))).check_fingerprint(fp)


# --------------------------------------------------------------------------------------------
# a real (tiny) profile
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_seg():
    torch.manual_seed(0)
    return SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=64, **TINY)


@pytest.fixture(scope="module")
def tiny_table(tiny_seg):
    return profile(tiny_seg, warmup=2, repeats=5, calib_configs=12, progress=False, checkpoint_sha256="ab" * 32)


def test_profile_structure(tiny_seg, tiny_table):
    t = tiny_table
    bb = tiny_seg.backbone
    assert t["depths"] == [2, 2, 2, 2] and t["img_size"] == [64, 64]
    assert t["num_windows"] == bb.num_windows(64)
    for s, row in enumerate(t["blocks"]):
        for j, e in enumerate(row):
            assert e["k"] == kept_window_counts(t["num_windows"][s][j], t["ratios"])
            assert all(v > 0 for k, v in zip(e["k"], e["ms"]) if k > 0)
            assert all(v == 0 for k, v in zip(e["k"], e["ms"]) if k == 0)
    fx = t["fixed_ms"]
    assert len(fx["downsample"]) == 4 and len(fx["scoring"]) == 4 and fx["head"] > 0 and fx["patch_embed"] > 0
    cal = t["calibration"]
    assert cal["n"] == 12 and cal["a"] > 0 and cal["method"] in ("lstsq", "offset") and len(cal["residuals_ms"]) == 12 and np.isfinite(cal["mape"])
    assert cal["configs"][0] == [0.0] * 8
    fp = t["fingerprint"]
    assert fp["threads"] == 1 and fp["batch_size"] == 1 and fp["dtype"] == "float32" and fp["device"] == "cpu"
    assert t["checkpoint_sha256"] == "ab" * 32
    # the model is left as it was
    assert bb.sparsity == [[0.0, 0.0]] * 4 and torch.get_num_threads() == 1
    json.dumps(t)  # JSON-ready


def test_tiny_profile_predicts_own_latency(tiny_seg, tiny_table):
    p = Predictor(tiny_table)
    p.check_model(tiny_seg)
    cfgs = np.array([[0.0] * 8, [0.5, 0.5, 0.3, 0.6, 0.0, 0.0, 0.0, 0.0], [0.8] * 6 + [0.0, 0.0]])
    with _session(tiny_seg, 1):
        x = _make_input(1, (64, 64), 5, torch.device("cpu"), torch.float32)
        measured = measure_configs(tiny_seg, x, cfgs, warmup=2, repeats=7)
    pred = p.predict(cfgs)
    # relative to the dense config (scale-free: the machine may run at another speed than when profiled)
    ratio = (pred / pred[0]) / (measured / measured[0])
    assert np.all((ratio > 0.67) & (ratio < 1.5)), (pred, measured)


def test_interleaved_ratios_cancel_machine_drift():
    """A machine that runs 3x slower every other repeat (shared-CPU regimes) scrambles raw medians;
    the ratios to the bracketing reference runs stay at the true 0.2 / 0.4."""
    import time as _t

    from latency.profiler import _interleaved_ratios

    speed = {"f": 1.0, "calls": 0}

    def work(ms):
        def run():
            _t.sleep(ms * speed["f"] / 1e3)
        return run

    ref_inner = work(10.0)

    def reference():  # the machine changes regime between repeats (after each closing reference)
        ref_inner()
        speed["calls"] += 1
        if speed["calls"] % 2 == 0:
            speed["f"] = 3.0 if speed["f"] == 1.0 else 1.0

    rel, refs = _interleaved_ratios([work(2.0), work(4.0)], 0, 8, lambda: None, np.random.default_rng(0), reference)
    assert len(refs) == 16
    assert rel[0] == pytest.approx(0.2, rel=0.15) and rel[1] == pytest.approx(0.4, rel=0.15)
    assert max(refs) > 2.2 * min(refs)  # the drift was really there


def test_measure_configs_drift_ratios(tiny_seg):
    from latency.profiler import measure_configs_drift

    cfgs = np.array([[0.0] * 8, [0.8] * 6 + [0.0, 0.0]])
    with _session(tiny_seg, 1):
        x = _make_input(1, (64, 64), 5, torch.device("cpu"), torch.float32)
        m = measure_configs_drift(tiny_seg, x, cfgs, warmup=2, repeats=9)
    assert m.ratio[0] == pytest.approx(1.0, rel=0.25)  # the dense config against its dense neighbours
    assert m.ratio[1] < m.ratio[0]  # pruning 80 % of the windows of stages 0-2 is faster
    assert len(m.reference_samples) == 9 * 3 and m.reference_ms == pytest.approx(np.median(m.reference_samples))
    assert np.allclose(m.ms, m.ratio * m.reference_ms)


def test_validate_and_plot(tiny_seg, tiny_table, tmp_path):
    p = Predictor(tiny_table)
    png = tmp_path / "v.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        r = validate(p, tiny_seg, n=8, seed=3, plot=png, progress=False, warmup=1, repeats=3)
    assert r["n"] == 8 and len(r["measured_ms"]) == 8 and 0.0 <= r["within_10pct"] <= 1.0
    assert r["mape"] >= 0 and -1.0 <= r["spearman"] <= 1.0 and r["max_abs_pct_err"] >= r["mape"] - 1e-9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.0 <= r["relative_within_10pct"] <= 1.0 and r["relative_mape"] >= 0
    assert r["dense_ms_at_profiling"] == tiny_table["reference_ms"] > 0 and r["dense_ms_measured"] > 0
    assert r["speed_drift"] == pytest.approx(r["dense_ms_measured"] / r["dense_ms_predicted"] - 1.0)
    assert len(r["measured_ratio"]) == 8
    calib = {tuple(c) for c in tiny_table["calibration"]["configs"]}
    assert not calib & {tuple(c) for c in r["configs"]}  # held out


def test_spread_configs_cover_dense_to_sparsest_and_stay_valid():
    """Independent draws per block sit mid-range; spread draws reach both ends (where a budget drives a search)."""
    depths, ratios = (2, 2, 6, 2), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    indep = random_configs(depths, ratios, 500, np.random.default_rng(0), include_dense=False)
    spread = random_configs(depths, ratios, 500, np.random.default_rng(0), include_dense=False, spread=True)
    assert np.array_equal(spread, random_configs(depths, ratios, 500, np.random.default_rng(0), include_dense=False,
                                                 spread=True))  # seeded
    assert set(np.unique(spread)) <= set(ratios)
    start = 0
    for d in depths:  # non-decreasing inside a stage
        assert np.all(np.diff(spread[:, start:start + d], axis=1) >= 0)
        start += d
    lo, hi = np.percentile(spread.mean(1), [5, 95])
    assert lo < 0.15 and hi > 0.65
    lo_i, hi_i = np.percentile(indep.mean(1), [5, 95])
    assert lo_i > 0.2 and hi_i < 0.6


def test_calibration_configs_reach_the_sparse_end_a_budget_drives_a_search_to():
    """Half the calibration is spread from dense to the sparsest, so the fitted line is not extrapolated there."""
    from latency.profiler import calibration_configs

    depths, ratios = (2, 2, 6, 2), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    cfgs = calibration_configs(depths, ratios, 40, np.random.default_rng(0))
    assert cfgs.shape == (40, 12) and not cfgs[0].any() and set(np.unique(cfgs)) <= set(ratios)
    mean = cfgs.mean(1)
    assert mean[20:].max() > 0.65 and mean[1:20].max() < 0.65  # the sparse end comes from the spread half
    assert calibration_configs(depths, ratios, 3, np.random.default_rng(0)).shape == (3, 12)


def test_validate_spread_sampling(tiny_seg, tiny_table):
    r = validate(Predictor(tiny_table), tiny_seg, n=6, seed=3, progress=False, warmup=1, repeats=2, spread=True)
    assert r["sampling"] == "spread" and r["n"] == 6 and len(r["configs"]) == 6


def test_model_mismatch_raises(tiny_table):
    torch.manual_seed(0)
    other = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=(2, 2, 4, 2),
                                  num_heads=(1, 2, 2, 4))
    with pytest.raises(PredictorError, match="depths"):
        Predictor(tiny_table).check_model(other)


def test_profile_bare_sparse_swin_and_bad_args():
    torch.manual_seed(0)
    m = SparseSwin.from_timm("swin_tiny_patch4_window7_224", img_size=64, num_classes=5, **TINY)
    t = profile(m, warmup=1, repeats=2, calib_configs=3, ratios=(0.0, 0.5), progress=False)
    assert t["head"] == "classifier" and t["fixed_ms"]["head"] > 0
    nw = t["num_windows"][0][0]
    assert nw == 9 and t["blocks"][0][0]["k"] == [4, 9]  # 16x16 tokens padded to 3x3 windows of 7; int(9 * .5)
    assert Predictor(t).predict_one([[0.5, 0.5], [0, 0], [0, 0], [0, 0]]) > 0
    with pytest.raises(ValueError, match=r"ratios must be numbers in \[0, 1\)"):
        profile(m, ratios=(0.0, 1.0), progress=False)
    with pytest.raises(ValueError, match="calib_configs"):
        profile(m, calib_configs=1, progress=False)
    with pytest.raises(ValueError, match="img_size"):
        profile(m, img_size=96, warmup=0, repeats=1, calib_configs=2, progress=False)  # strict timm size


# --------------------------------------------------------------------------------------------
# CLI entry points (checkpoint loading stubbed)
# --------------------------------------------------------------------------------------------
def test_cli_profile_and_validate_json(tiny_seg, tmp_path, monkeypatch, capsys):
    lv = importlib.import_module("latency.validate")  # the module (latency.validate is the function)

    meta = {"weights_sha256": "cd" * 32, "arch": {"timm_name": "swin", "timm_kwargs": {"embed_dim": 16}},
            "search_space": {"ratios": [0.0, 0.25, 0.5]}}
    monkeypatch.setattr(lv, "_load_model", lambda path, img_size=None: (tiny_seg, meta))
    out = tmp_path / "pred.json"
    args = argparse.Namespace(checkpoint="ck.safetensors", device="cpu", batch_size=1, threads=1, img_size=None,
                              out=str(out), json=True, repeats=2, calib_configs=4, progress=False)
    assert cli_profile(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["predictor"] == str(out) and payload["dense_ms"] > 0
    saved = json.loads(out.read_text())
    assert saved["checkpoint_sha256"] == "cd" * 32 and saved["model_arch"] == meta["arch"]
    assert saved["ratios"] == [0.0, 0.25, 0.5]

    png = tmp_path / "v.png"
    args = argparse.Namespace(predictor=str(out), checkpoint="ck.safetensors", n=4, seed=1, plot=str(png), json=True,
                              repeats=2, progress=False)
    assert cli_validate(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["n"] == 4 and res["plot"] == str(png) and png.exists()

    args.json = False
    assert cli_validate(args) == 0
    assert "within +-10%" in capsys.readouterr().out


def test_calibration_fit():
    from latency.profiler import _fit_calibration

    raw = np.array([10.0, 12.0, 15.0, 20.0])
    a, b, how = _fit_calibration(raw, 1.1 * raw + 0.7)
    assert how == "lstsq" and a == pytest.approx(1.1) and b == pytest.approx(0.7)
    # measurements that ignore the table (noise on a loaded machine): slope ~0 -> offset-only fit
    a, b, how = _fit_calibration(raw, np.array([30.0, 29.0, 31.0, 30.0]))
    assert how == "offset" and a == 1.0 and b == pytest.approx(np.median([20.0, 17.0, 16.0, 10.0]))
    a, b, how = _fit_calibration(np.array([5.0, 5.0]), np.array([6.0, 7.0]))  # no spread
    assert how == "offset" and b == pytest.approx(1.5)


def test_speed_drift_warning_names_the_direction_and_stays_quiet_within_tolerance():
    from latency.validate import speed_drift_warning

    # the 448 px validation of RESULTS.md R2: profiled at 62.55 ms, measured 68.56 ms ten minutes later
    msg = speed_drift_warning(68.56, 62.55)
    assert msg and "10 % slower" in msg and "relative" in msg
    assert "faster" in speed_drift_warning(50.0, 62.55)
    assert speed_drift_warning(63.5, 62.55) is None  # +1.5 %: noise, not drift
    assert speed_drift_warning(63.5, 62.55, tolerance=0.01) is not None


def test_busy_machine_warning_flags_a_calibration_far_from_identity():
    from latency.validate import busy_machine_warning

    # the two 448 px profiles of RESULTS.md R2: quiet, and with another job competing for the cores
    assert busy_machine_warning({"a": 1.011, "b": -0.23}, 106.97) is None
    msg = busy_machine_warning({"a": 0.821, "b": 26.54}, 145.89)
    assert msg and "profile again" in msg and "a=0.821" in msg
    assert busy_machine_warning({"a": 1.0, "b": 30.0}, 100.0)  # a large fixed offset alone
