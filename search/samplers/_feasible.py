"""Feasible, new proposals: a sampler wrapper that redraws inside the sampler.

The latency predictor prices a config in microseconds, so an over-budget config never needs to
become a trial (the SparseViT reference search likewise redraws a candidate until it lies inside the
latency band). :class:`FeasibleSampler` wraps any Optuna sampler: it asks the wrapped sampler for a
whole proposal (its relative sample, completed by its independent sampling for the genes it leaves
out), decodes it, and redraws while the proposal is over the budget or repeats a computation already
evaluated, up to ``max_draws`` times. All randomness comes from the wrapped sampler's own seeded RNG,
so a seeded study proposes the same configs in the same order.

When the space is nearly exhausted (most computations already evaluated), redrawing for a new one costs a
wrapped-sampler proposal per draw for nothing: after every trial whose draws found no new computation, the
next trial draws half as many (``max_draws``, then /2, /4, /8, /16 at least 1); the first new computation found
restores ``max_draws``. The back-off is process state: a resumed search starts again at ``max_draws``.

When no draw is feasible, the last proposal is *repaired*: the gene whose increase saves the most
predicted milliseconds is raised one step at a time (monotonic stages stay sorted) until the budget
holds. The repair always succeeds when the sparsest config is feasible, which
:func:`check_budget` verifies before a search starts (one clear error otherwise).

Constraints set through Optuna's API (``constraints_func`` of the wrapped sampler,
``trial.set_constraint``) are untouched: the wrapper only filters what is proposed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = ["FeasibleSampler", "REPAIRED_KEY", "DRAWS_KEY"]

#: Trial system attrs the wrapper writes: how many draws the proposal took, and whether it was repaired.
DRAWS_KEY = "feasible:draws"
REPAIRED_KEY = "feasible:repaired"


class _Accept:
    """``params -> feasible and new`` (a picklable callable: Tune saves its searcher)."""

    def __init__(self, feasible: Callable[[dict[str, Any]], bool], is_new: Callable[[dict[str, Any]], bool] | None):
        self.feasible, self.is_new = feasible, is_new

    def __call__(self, params: dict[str, Any]) -> bool:
        return bool(self.feasible(params)) and (self.is_new is None or bool(self.is_new(params)))


class FeasibleSampler(BaseSampler):
    """Wrap ``base`` so that every proposal satisfies ``feasible`` and, when possible, ``is_new``.

    Args:
        base: the Optuna sampler that proposes.
        space: ``{gene: distribution}`` of every gene (the whole proposal is drawn up front).
        feasible: ``params -> bool`` (predicted latency within budget).
        is_new: ``params -> bool`` (the computation was not evaluated yet); ``None``: every proposal is new.
        repair: ``params -> params`` returning a feasible proposal (see the module docstring).
        max_draws: proposals drawn per trial before the repair (>= 1).

    Attributes:
        draws / repairs / repeats: proposals drawn, repaired, and accepted although already evaluated
        (the wrapped sampler could not find a new feasible one within ``max_draws``).
    """

    def __init__(self, base: BaseSampler, space: Mapping[str, BaseDistribution],
                 feasible: Callable[[dict[str, Any]], bool],
                 is_new: Callable[[dict[str, Any]], bool] | None = None,
                 repair: Callable[[dict[str, Any]], dict[str, Any]] | None = None, max_draws: int = 64) -> None:
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        self.base = base
        self.space = dict(space)
        self.feasible = feasible
        self.is_new = is_new
        self.repair = repair
        self.max_draws = int(max_draws)
        self.draws = self.repairs = self.repeats = 0
        self.misses = 0  # consecutive trials whose draws found no new computation (the draw back-off)
        # a sampler that redraws inside its own proposal loop (``prefilter``, e.g. the SparseViT
        # evolution, whose draws are a function of the trial number) gets the test installed there
        self.native = hasattr(type(base), "prefilter")
        if self.native:
            base.prefilter = _Accept(feasible, is_new)

    def __getattr__(self, name: str) -> Any:  # population_size, generation keys ... of the wrapped sampler
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def _draw(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        base_space = self.base.infer_relative_search_space(study, trial)
        params = dict(self.base.sample_relative(study, trial, base_space))  # GA samplers set the generation here
        for name, dist in self.space.items():
            if name not in params:
                params[name] = self.base.sample_independent(study, trial, name, dist)
        return params

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        fallback = None
        params: dict[str, Any] = {}
        limit = 1 if self.native else max(1, self.max_draws >> min(self.misses, 4))
        for i in range(limit):
            params = self._draw(study, trial)
            self.draws += 1
            if not self.feasible(params):
                continue
            if self.is_new is None or self.is_new(params):
                self.misses = 0
                study._storage.set_trial_system_attr(trial._trial_id, DRAWS_KEY, i + 1)
                return params
            fallback = fallback or params
        study._storage.set_trial_system_attr(trial._trial_id, DRAWS_KEY, i + 1)
        if fallback is not None:  # feasible but already evaluated: served from the result cache
            self.repeats += 1
            self.misses += 1
            return fallback
        if self.repair is None:
            return params
        self.repairs += 1
        study._storage.set_trial_system_attr(trial._trial_id, REPAIRED_KEY, True)
        return self.repair(params)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)
