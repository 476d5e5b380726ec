"""NSGA-II (Deb et al., 2002): ``optuna.samplers.NSGAIISampler``, constrained domination."""
from __future__ import annotations

from typing import Any

import optuna
from pydantic import Field

from ._base import SamplerOptions

NAME = "nsga2"
DESCRIPTION = "NSGA-II (Optuna), population 50, constrained domination"


class Options(SamplerOptions):
    """``population_size`` trials per generation; ``mutation_prob`` per gene (None: 1 / genes);
    ``crossover_prob`` probability a child is a crossover; ``swapping_prob`` uniform-crossover swap."""

    population_size: int = Field(50, ge=2)
    mutation_prob: float | None = Field(None, ge=0, le=1)
    crossover_prob: float = Field(0.9, ge=0, le=1)
    swapping_prob: float = Field(0.5, ge=0, le=1)


def build(options: Options, *, space: Any, seed: int | None, constraints_func: Any = None,
          cls: type = optuna.samplers.NSGAIISampler) -> optuna.samplers.BaseSampler:
    """The Optuna sampler (``cls`` lets NSGA-III reuse this builder)."""
    return cls(population_size=options.population_size, mutation_prob=options.mutation_prob,
               crossover_prob=options.crossover_prob, swapping_prob=options.swapping_prob,
               seed=seed, constraints_func=constraints_func)
