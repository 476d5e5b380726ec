"""search.space: genes <-> configs, sorting within stage, size, hashing, reference points."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution

from search.space import Config, SearchSpace, config_hash

SWIN_T = [2, 2, 6, 2]
CFG3 = [[0.7, 0.7], [0.0, 0.0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0.0, 0.0]]


def test_genes_and_distributions_pair() -> None:
    space = SearchSpace(SWIN_T)
    assert space.gene_names == ["s0_p0", "s1_p0", "s2_p0", "s2_p1", "s2_p2", "s3_p0"]
    dists = space.distributions()
    assert all(isinstance(d, CategoricalDistribution) for d in dists.values())
    assert dists["s2_p1"].choices == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    assert space.n_blocks == 12
    assert space.stage_groups() == [["s0_p0"], ["s1_p0"], ["s2_p0", "s2_p1", "s2_p2"],
                                    ["s3_p0"]]


def test_decode_sorts_within_stage_and_repeats_pairs() -> None:
    space = SearchSpace(SWIN_T)
    params = {"s0_p0": 0.7, "s1_p0": 0.0, "s2_p0": 0.5, "s2_p1": 0.2, "s2_p2": 0.4, "s3_p0": 0.0}
    cfg = space.decode(params)
    assert cfg.ratios == CFG3
    assert cfg.flat == (0.7, 0.7, 0.0, 0.0, 0.2, 0.2, 0.4, 0.4, 0.5, 0.5, 0.0, 0.0)
    assert cfg.weight_ratios is None
    # another gene order of stage 2 decodes to the same config
    perm = dict(params, s2_p0=0.4, s2_p1=0.5, s2_p2=0.2)
    assert space.decode(perm) == cfg and hash(space.decode(perm)) == hash(cfg)


def test_non_monotonic_keeps_gene_order() -> None:
    space = SearchSpace(SWIN_T, monotonic=False)
    params = {"s0_p0": 0.7, "s1_p0": 0.0, "s2_p0": 0.5, "s2_p1": 0.2, "s2_p2": 0.4, "s3_p0": 0.0}
    assert space.decode(params).ratios[2] == [0.5, 0.5, 0.2, 0.2, 0.4, 0.4]
    assert space.size() == 9 ** 6


def test_size_swin_t_reference_is_about_120k() -> None:
    space = SearchSpace(SWIN_T)
    assert space.size() == 9 * 9 * 165 * 9 == 120_285


def test_size_matches_enumeration_on_small_space() -> None:
    space = SearchSpace([2, 4], ratios=[0.0, 0.3, 0.6], granularity="block")
    names = space.gene_names
    configs = {space.decode(dict(zip(names, values)))
               for values in itertools.product(space.ratios, repeat=len(names))}
    assert len(configs) == space.size() == 6 * 15  # C(3+2-1, 2) * C(3+4-1, 4)


def test_encode_decode_round_trip() -> None:
    space = SearchSpace(SWIN_T)
    cfg = Config(CFG3)
    params = space.encode(cfg)
    assert params == {"s0_p0": 0.7, "s1_p0": 0.0, "s2_p0": 0.2, "s2_p1": 0.4, "s2_p2": 0.5,
                      "s3_p0": 0.0}
    assert space.decode(params) == cfg
    for c in space.sample_uniform(np.random.default_rng(0), 50):
        assert space.decode(space.encode(c)) == c


def test_encode_rejects_configs_outside_the_space() -> None:
    space = SearchSpace(SWIN_T)
    with pytest.raises(ValueError, match="differ"):
        space.encode(Config([[0.1, 0.2], [0, 0], [0] * 6, [0, 0]]))
    with pytest.raises(ValueError, match="not one of"):
        space.encode(Config([[0.15, 0.15], [0, 0], [0] * 6, [0, 0]]))
    with pytest.raises(ValueError, match="decrease"):
        space.encode(Config([[0, 0], [0, 0], [0.5, 0.5, 0.2, 0.2, 0.2, 0.2], [0, 0]]))
    with pytest.raises(ValueError, match="depths"):
        space.encode(Config([[0, 0], [0, 0]]))


def test_hash_stable_and_depends_on_checkpoint() -> None:
    cfg = Config(CFG3)
    h = config_hash(cfg, "abc")
    assert len(h) == 16 and all(ch in "0123456789abcdef" for ch in h)
    # float noise below 1e-6 does not change the identity
    noisy = Config([[0.7 + 1e-9, 0.7], [0.0, 0.0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0.0, -0.0]])
    assert config_hash(noisy, "abc") == h
    assert config_hash(cfg, "abd") != h
    assert config_hash(Config([[0.7, 0.7], [0.0, 0.0], [0.2] * 6, [0.0, 0.0]]), "abc") != h
    assert config_hash(Config(CFG3, {"qkv": 0.15}), "abc") != h
    # pinned value: the hash must not change between releases (the result cache relies on it)
    assert h == config_hash(Config(CFG3), "abc") == SearchSpace(SWIN_T).config_hash(cfg, "abc")
    assert h == "77c64121677c2775"  # sha256 of the canonical JSON, see docstring


def test_frozen_stages_are_dense_and_have_no_genes() -> None:
    space = SearchSpace(SWIN_T, frozen_stages=[1, 3])
    assert space.gene_names == ["s0_p0", "s2_p0", "s2_p1", "s2_p2"]
    assert space.size() == 9 * 165
    for cfg in space.sample_uniform(1, 30):
        assert cfg.ratios[1] == [0.0, 0.0] and cfg.ratios[3] == [0.0, 0.0]
    assert space.uniform_config(0.5).ratios == [[0.5, 0.5], [0.0, 0.0], [0.5] * 6, [0.0, 0.0]]
    with pytest.raises(ValueError, match="frozen"):
        space.encode(Config([[0, 0], [0.1, 0.1], [0] * 6, [0, 0]]))
    with pytest.raises(ValueError, match="out of range"):
        SearchSpace(SWIN_T, frozen_stages=[4])


def test_block_granularity() -> None:
    space = SearchSpace(SWIN_T, granularity="block")
    assert len(space.gene_names) == 12 and space.gene_names[4] == "s2_b0"
    params = {n: 0.0 for n in space.gene_names} | {"s0_b0": 0.3, "s0_b1": 0.1}
    assert space.decode(params).ratios[0] == [0.1, 0.3]
    with pytest.raises(ValueError, match="even"):
        SearchSpace([2, 3], granularity="pair")


def test_weight_ratios_genes() -> None:
    space = SearchSpace(SWIN_T, weight_ratios={"qkv": [0.0, 0.15, 0.35], "mlp": [0.0, 0.55]})
    assert space.gene_names[-2:] == ["w_qkv", "w_mlp"]
    assert space.size() == 120_285 * 3 * 2
    params = space.encode(Config(CFG3, {"qkv": 0.35, "mlp": 0.0}))
    assert params["w_qkv"] == 0.35 and params["w_mlp"] == 0.0
    cfg = space.decode(params)
    assert cfg.weight_ratios == {"qkv": 0.35, "mlp": 0.0} and cfg.ratios == CFG3
    assert space.dense_config().weight_ratios == {"qkv": 0.0, "mlp": 0.0}
    with pytest.raises(ValueError, match="weight"):
        space.encode(Config(CFG3))


def test_reference_points() -> None:
    space = SearchSpace(SWIN_T)
    assert space.dense_config().flat == (0.0,) * 12
    u = space.uniform_config(0.4)
    assert u.ratios == [[0.4, 0.4], [0.4, 0.4], [0.4] * 6, [0.0, 0.0]]
    assert space.decode(space.encode(u)) == u
    assert space.uniform_config(0.3, stages=[2]).ratios[0] == [0.0, 0.0]


def test_sample_uniform_is_seeded_and_sorted() -> None:
    space = SearchSpace(SWIN_T)
    a = space.sample_uniform(7, 40)
    assert a == space.sample_uniform(np.random.default_rng(7), 40)
    assert a != space.sample_uniform(8, 40)
    for cfg in a:
        for stage in cfg.ratios:
            assert stage == sorted(stage)
    arr = space.to_array(a)
    assert arr.shape == (40, 12) and arr.dtype == np.float64
    assert len(set(a)) > 30  # 120k configs: 40 draws are nearly all distinct


def test_suggest_on_an_optuna_trial() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(SWIN_T)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -sum(space.suggest(t).flat), n_trials=5)
    assert all(set(t.params) == set(space.gene_names) for t in study.trials)


def test_config_is_immutable_and_validates() -> None:
    cfg = Config(CFG3)
    with pytest.raises(AttributeError):
        cfg.flat = ()  # type: ignore[misc]
    cfg.ratios[0][0] = 0.1  # a fresh list; the config is unchanged
    assert cfg.ratios == CFG3
    with pytest.raises(ValueError):
        Config([[1.0, 1.0]])
    assert cfg.to_dict() == {"ratios": CFG3, "weight_ratios": None}
