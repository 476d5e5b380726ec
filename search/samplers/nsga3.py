"""NSGA-III (Deb and Jain, 2014): ``optuna.samplers.NSGAIIISampler`` (reference-point niching)."""
from __future__ import annotations

from typing import Any

import optuna

from . import nsga2

NAME = "nsga3"
DESCRIPTION = "NSGA-III (Optuna), population 50, reference-point niching"


class Options(nsga2.Options):
    """The NSGA-II options (same defaults)."""


def build(options: Options, *, space: Any, seed: int | None, constraints_func: Any = None):
    """The Optuna sampler."""
    return nsga2.build(options, space=space, seed=seed, constraints_func=constraints_func,
                       cls=optuna.samplers.NSGAIIISampler)
