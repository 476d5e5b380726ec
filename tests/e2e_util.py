"""Shared fixtures for end-to-end tests: a tiny supernet checkpoint, its latency predictor, a spec."""
from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from search.testing import TINY_ARCH, TINY_IMG, TINY_RATIOS, make_tiny_checkpoint, make_tiny_predictor  # noqa: F401


def write_spec(folder: Path, checkpoint: Path, predictor: Path, *, name="tiny", n_trials=24, sampler="nsga2",
               population=8, budget_line="budget_fraction = 0.95", workers=2, extra="") -> Path:
    spec = folder / f"{name}.toml"
    spec.write_text(textwrap.dedent(f"""
        name = "{name}"
        output_dir = "{folder / ('exp_' + name)}"
        seed = 0
        n_trials = {n_trials}

        [supernet]
        checkpoint = "{checkpoint}"

        [latency]
        predictor = "{predictor}"
        {budget_line}

        [evaluator]
        subset_size = 4
        batch_size = 4

        [space]
        ratios = {list(TINY_RATIOS)}

        [sampler]
        name = "{sampler}"
        population_size = {population}

        [workers]
        num_workers = {workers}
        max_retries = 1
        """) + extra)
    return spec


def median_budget(predictor: Path, ratios=TINY_RATIOS, q: float = 0.5) -> float:
    """A budget (ms) that about a fraction q of random configs meet, from the real predictor."""
    import numpy as np

    from latency import Predictor
    from search.space import SearchSpace

    space = SearchSpace(TINY_ARCH["timm_kwargs"]["depths"], ratios)
    cfgs = space.sample_uniform(np.random.default_rng(0), 400)
    pred = Predictor.load(predictor).predict(space.to_array(cfgs))
    return float(np.quantile(pred, q))
