"""Search efficiency (issue 15): canonical space, feasible proposals, stage-prefix cache, multi-fidelity rule."""
from __future__ import annotations

import itertools
import math
import json

import numpy as np
import pytest
import torch

from search.fidelity import could_enter_front, first_canvases, front_gap, front_points, paired_margin
from search.space import SearchSpace
from supernet.prefix_cache import StagePrefixCache
from supernet.seg import SegSupernet
from supernet.sparse_swin import keep_count

RATIOS = (0.0, 0.2, 0.4, 0.6, 0.8)


def _all_configs(space: SearchSpace):
    dists = space.distributions()
    names = list(dists)
    for values in itertools.product(*(dists[n].choices for n in names)):
        yield space.decode(dict(zip(names, values)))


def _keys(space: SearchSpace, nws):
    flat_nw = [n for r in nws for n in r]
    return {tuple(keep_count(n, r) for n, r in zip(flat_nw, c.flat)) for c in _all_configs(space)}


@pytest.mark.parametrize("nws", [[[16, 16], [4, 4], [1, 1], [1, 1]],    # tiny model at 112 px
                                 [[64, 64], [16, 16], [4, 4], [1, 1]],   # 224 px
                                 [[9, 9], [9, 9], [4, 4], [4, 4]]])
def test_canonical_space_covers_exactly_the_distinct_computations(nws):
    full = SearchSpace([2, 2, 2, 2], RATIOS)
    canon = SearchSpace([2, 2, 2, 2], RATIOS, num_windows=nws)
    canon_cfgs = list(_all_configs(canon))
    flat_nw = [n for r in nws for n in r]
    canon_keys = [tuple(keep_count(n, r) for n, r in zip(flat_nw, c.flat)) for c in canon_cfgs]
    assert len(set(canon_cfgs)) == len(set(canon_keys)) == canon.size()  # one config per computation
    assert set(canon_keys) == _keys(full, nws)  # ... and every computation of the full space
    assert canon.size() <= full.size()


def test_canonical_choices_are_the_smallest_ratio_of_each_kept_count():
    s = SearchSpace([2, 2, 6, 2], num_windows=[[64, 64], [16, 16], [4] * 6, [1, 1]])
    d = s.distributions()
    assert d["s2_p0"].choices == (0.0, 0.1, 0.3, 0.6, 0.8)
    assert d["s3_p0"].choices == (0.0, 0.1)
    assert len(d["s0_p0"].choices) == 9
    assert SearchSpace([2, 2, 6, 2]).size() == 120_285 and s.size() == 5_670


def test_uniform_params_are_the_same_computation_as_uniform_sparsity_in_any_space():
    nws = [[64, 64], [16, 16], [4] * 6, [1, 1]]
    flat_nw = [n for r in nws for n in r]
    for space in (SearchSpace([2, 2, 6, 2]), SearchSpace([2, 2, 6, 2], num_windows=nws)):
        for r in (0.0, 0.3, 0.5, 0.7, 0.8):
            cfg = space.decode(space.uniform_params(r))
            want = space.uniform_config(r)  # r on stages 0-2, the last stage dense
            assert [keep_count(n, x) for n, x in zip(flat_nw, cfg.flat)] == \
                [keep_count(n, x) for n, x in zip(flat_nw, want.flat)]
            assert space.encode(cfg) == space.uniform_params(r)  # valid gene values of this space
    canon = SearchSpace([2, 2, 6, 2], num_windows=nws)
    assert canon.uniform_params(0.7)["s2_p0"] == 0.6  # the representative of k = 1 of 4 windows
    with pytest.raises(ValueError, match="uniform ratio"):
        canon.uniform_params(1.0)


# ---- stage-prefix cache -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_seg():
    torch.manual_seed(0)
    m = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=112, num_classes=11, head_dim=16,
                              embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)).eval()
    return m


def test_prefix_cache_is_bit_exact_and_reuses_prefixes(tiny_seg):
    x = torch.randn(3, 3, 112, 112)
    cache = StagePrefixCache(max_bytes=1 << 30)
    rng = np.random.default_rng(0)
    space = SearchSpace([2, 2, 2, 2], RATIOS)
    configs = space.sample_uniform(rng, 12)
    configs += [type(configs[0])([configs[0].ratios[0], configs[0].ratios[1]] + c.ratios[2:]) for c in configs[1:5]]
    with torch.inference_mode():
        for c in configs:
            tiny_seg.set_sparsity(c.ratios)
            full = tiny_seg(x)
            for _ in range(2):
                assert torch.equal(cache.forward(tiny_seg, x, batch_key=0), full)
    st = cache.stats()
    assert st["hits"] >= 2 * 4 + 4 * 2  # every repeat hits all 4 stages; the shared-prefix configs hit stages 0-1
    assert st["misses"] > 0 and st["stage_seconds_saved"] > 0
    with torch.inference_mode():  # another batch key never reads this batch's outputs
        assert torch.equal(cache.forward(tiny_seg, x[:2], batch_key=1), tiny_seg(x[:2]))


def test_prefix_cache_respects_its_memory_bound(tiny_seg):
    x = torch.randn(2, 3, 112, 112)
    one_stage0 = 2 * 28 * 28 * 16 * 4  # bytes of one stage-0 output
    cache = StagePrefixCache(max_bytes=int(2.5 * one_stage0))
    space = SearchSpace([2, 2, 2, 2], RATIOS)
    with torch.inference_mode():
        for c in space.sample_uniform(np.random.default_rng(1), 10):
            tiny_seg.set_sparsity(c.ratios)
            assert torch.equal(cache.forward(tiny_seg, x, batch_key=0), tiny_seg(x))
            assert cache.bytes <= cache.max_bytes
    assert cache.evictions > 0


# ---- multi-fidelity rule ----------------------------------------------------------------------------
def test_could_enter_front_stops_only_clearly_dominated_candidates():
    front = [(10.0, 0.60), (20.0, 0.70)]
    assert not could_enter_front(0.55, 12.0, front, margin=0.02)  # 10 ms member better by 0.05
    assert could_enter_front(0.59, 12.0, front, margin=0.02)  # within the margin
    assert could_enter_front(0.55, 9.0, front, margin=0.02)  # faster than every member
    assert not could_enter_front(float("nan"), 9.0, front, margin=0.02)
    assert could_enter_front(0.3, 12.0, front, margin=0.02, maximize=False)  # a loss: lower is better
    assert front_gap(0.55, 12.0, front) == pytest.approx(0.05) and front_gap(0.55, 9.0, front) == -math.inf


def test_front_gaps_equal_the_pairwise_definition_with_ties_and_both_directions():
    from search.fidelity import front_gaps, front_rivals

    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        lat, val = rng.integers(0, 8, n).astype(float), rng.random(n)  # repeated latencies: ties
        for maximize, strict in itertools.product((True, False), (False, True)):
            s = 1.0 if maximize else -1.0
            ref = [max((s * (vj - vi) for lj, vj in zip(lat, val) if (lj < li if strict else lj <= li)), default=-math.inf)
                   for li, vi in zip(lat, val)]
            assert np.allclose(front_gaps(lat, val, lat, val, maximize, strict), ref)
            # the rival is a point of that best value, no slower (strictly faster), -1 where there is none
            gaps, rivals = front_rivals(lat, val, lat, val, maximize, strict)
            for i, (g, r) in enumerate(zip(gaps, rivals)):
                assert (r == -1) == (g == -math.inf)
                if r >= 0:
                    assert (lat[r] < lat[i] if strict else lat[r] <= lat[i]) and s * (val[r] - val[i]) == pytest.approx(g)
    assert np.all(front_gaps([1.0], [0.5], [], []) == -math.inf)
    # a point without a value (NaN) is skipped, as the member loop it replaced skipped it
    assert front_gaps([5.0], [0.5], [1.0, 2.0], [float("nan"), 0.6])[0] == pytest.approx(0.1)
    assert not could_enter_front(0.5, 5.0, [(1.0, float("nan")), (2.0, 0.6)], margin=0.05)


def test_paired_margin_needs_enough_pairs_and_scales_with_the_noise():
    rng = np.random.default_rng(0)
    full = rng.uniform(0.3, 0.7, 50)
    assert paired_margin(full[:3] + 0.01, full[:3], min_pairs=8) is None
    small = paired_margin(full + rng.normal(0, 0.005, 50), full)
    big = paired_margin(full + rng.normal(0, 0.05, 50), full)
    assert 0 < small < big
    assert big == pytest.approx(2.0 * np.sqrt(2.0) * 0.05, rel=0.35)


def test_first_rung_is_whole_batches_and_front_points_are_non_dominated():
    assert first_canvases(256, 32, 0.25) == 64 and first_canvases(256, 32, 0.05) == 32
    assert first_canvases(32, 32, 0.25) == 32  # nothing left for a second rung: evaluate fully
    pts = front_points([(10, 0.5, 0.51), (12, 0.45, 0.44), (15, 0.6, 0.58), (8, 0.2, 0.21)])
    assert pts == [(8, 0.21), (10, 0.51), (15, 0.58)]


def test_policy_reads_the_depths_from_the_model_when_the_sidecar_relies_on_timm_defaults(tmp_path):
    """A valid sidecar may leave depths / num_heads to timm's defaults (swin_tiny: 2-2-6-2): the search takes them
    from the built model, and keys the result cache by kept windows at the evaluator's resolution."""
    import textwrap

    from latency.profiler import profile, save
    from search.policy import SearchPolicy
    from search.spec import load_spec
    from supernet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=224, num_classes=11, head_dim=8, embed_dim=24)
    ck = save_checkpoint(m, tmp_path / "m.safetensors", arch={"timm_name": "swin_tiny_patch4_window7_224",
                                                              "timm_kwargs": {"embed_dim": 24}, "head_dim": 8},
                         img_size=224, num_classes=11)
    table = profile(m, 224, threads=1, warmup=0, repeats=1, calib_configs=3, progress=False, ratios=(0.0, 0.5))
    save(table, tmp_path / "p.json")
    spec = tmp_path / "s.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "defaults"
        [supernet]
        checkpoint = "{ck}"
        [latency]
        predictor = "{tmp_path / 'p.json'}"
        [space]
        ratios = [0.0, 0.5]
        """))
    pol = SearchPolicy.from_spec(load_spec(spec))
    assert pol.depths == (2, 2, 6, 2) and pol.img_size == (224, 224)
    assert pol.num_windows == [[64, 64], [16, 16], [4] * 6, [1, 1]]
    cfg = pol.space.uniform_config(0.5)
    assert json.loads(pol.key(cfg))[0] == [[32, 32], [8, 8], [2] * 6, [1, 1]]


def test_worker_device_logic_and_prefix_cache_in_process(tiny_model):
    """EvalWorker outside Ray: a GPU worker on a machine without CUDA falls back to the CPU (the device logic of
    ``[workers] gpus_per_worker``), loads the supernet through load(), and scores with the multi-fidelity rule and
    the prefix cache: a stopped config reports the first-rung canvases only, a full one the whole subset."""
    import numpy as np

    from search.workers import EvalWorker
    from supernet.checkpoint import read_sidecar

    _, ck, _ = tiny_model
    meta = read_sidecar(ck)
    ev = {"name": "fashion_mosaic", "subset_size": 8, "batch_size": 4, "split": "val", "kwargs": {}, "img_size": [112, 112],
          "mosaic": {}}
    w = EvalWorker(None, None, ev, threads=1, worker_id="g0", img_size=[112, 112], device="cuda",
                   prefix_cache_bytes=1 << 26)
    assert w.device == ("cuda" if torch.cuda.is_available() else "cpu") and w.model is None
    import ray

    assert not ray.is_initialized()  # a worker outside Ray starts no Ray (a later test would join that instance)
    assert w.evaluate(0, [[0.0] * 2] * 4).error.startswith("RuntimeError: the worker has not loaded")
    w.load(np.fromfile(ck, dtype=np.uint8), meta)
    dense = [[0.0] * 2] * 4
    full = w.evaluate(1, dense)
    assert full.error is None and full.canvases == 8 and not full.partial and 0 <= full.metrics["miou"] <= 1
    again = w.evaluate(2, dense)  # every stage from the prefix cache
    assert again.metrics == full.metrics and again.cache["hits"] >= 4 * 2
    fid = {"first": 4, "front": [[0.0, 1.0]], "margin": 0.0, "predicted_ms": 1.0, "metric": "miou", "maximize": True}
    stopped = w.evaluate(3, [[0.6] * 2] * 4, fidelity=fid)  # a front member no slower and better: stop
    assert stopped.partial and stopped.canvases == 4 and "miou@4" in stopped.metrics
    fid_open = dict(fid, front=[])
    kept = w.evaluate(4, [[0.4] * 2] * 4, fidelity=fid_open)  # nothing to beat: finish the subset
    assert not kept.partial and kept.canvases == 8 and "miou@4" in kept.metrics
