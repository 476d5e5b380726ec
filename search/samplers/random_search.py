"""Uniform random search (the baseline every search is compared with)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.samplers._base import _process_constraints_after_trial
from optuna.trial import FrozenTrial

from ._base import SamplerOptions

NAME = "random"
DESCRIPTION = "uniform random proposals"


class Options(SamplerOptions):
    """No options."""


class ConstrainedRandomSampler(optuna.samplers.RandomSampler):
    """``RandomSampler`` that also stores ``constraints_func``'s values after each trial, so
    ``is_feasible(trial)`` / ``trial.constraints`` read the same for every sampler."""

    def __init__(self, seed: int | None, constraints_func: Callable[[FrozenTrial], Sequence[float]]) -> None:
        super().__init__(seed=seed)
        self._constraints_func = constraints_func

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        _process_constraints_after_trial(self._constraints_func, study, trial, state)
        super().after_trial(study, trial, state, values)


def build(options: Options, *, space: Any, seed: int | None, constraints_func: Any = None):
    """The Optuna sampler."""
    if constraints_func is not None:
        return ConstrainedRandomSampler(seed, constraints_func)
    return optuna.samplers.RandomSampler(seed=seed)
