"""Multivariate TPE (Bergstra et al., 2011; Optuna's default for multi-objective studies)."""
from __future__ import annotations

from typing import Any

import optuna
from pydantic import Field

from ._base import SamplerOptions

NAME = "tpe"
DESCRIPTION = "multivariate TPE (Optuna), 10 random start-up trials"


class Options(SamplerOptions):
    """``n_startup_trials`` random trials before the density model is used."""

    n_startup_trials: int = Field(10, ge=0)


def build(options: Options, *, space: Any, seed: int | None, constraints_func: Any = None):
    """The Optuna sampler."""
    return optuna.samplers.TPESampler(n_startup_trials=options.n_startup_trials, multivariate=True, seed=seed,
                                      constraints_func=constraints_func)
