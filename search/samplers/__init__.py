"""Optuna samplers for the sparsity search, built from the spec's ``[sampler]`` table.

``make_sampler`` maps a sampler name to an Optuna sampler:

==========  =================================================================================
nsga2       ``optuna.samplers.NSGAIISampler`` (Deb et al. 2002), population 50
nsga3       ``optuna.samplers.NSGAIIISampler`` (Deb & Jain 2014), population 50
tpe         ``optuna.samplers.TPESampler(multivariate=True)``, 10 startup trials
random      ``optuna.samplers.RandomSampler``
sparsevit   :class:`SparseViTEvolutionSampler`, the SparseViT reference evolution
            (arXiv 2303.17605, ``tools/search.py``): population 100, 25 parents, mutation 0.1
==========  =================================================================================

Infeasible trials (predicted latency over budget) are marked by a constraint value > 0. Two
ways to record it, both read by every sampler here:

- Optuna 5: ``trial.set_constraint("latency_ms", predicted_ms - budget_ms)`` before ``tell``
  (no ``constraints_func`` needed);
- the latency gate sets ``trial.set_user_attr("constraint", predicted_ms - budget_ms)`` and the
  sampler gets ``constraints_func=latency_constraints`` (deprecated by Optuna 5 in its own
  samplers, still supported until Optuna 7).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.samplers._base import _process_constraints_after_trial
from optuna.trial import FrozenTrial

from search.samplers.sparsevit import SparseViTEvolutionSampler, is_feasible
from search.space import SearchSpace

__all__ = [
    "CONSTRAINT_ATTR",
    "SparseViTEvolutionSampler",
    "is_feasible",
    "latency_constraints",
    "make_sampler",
    "trial_generation",
]

#: ``trial.user_attrs`` key the latency gate writes (predicted ms - budget ms; <= 0 feasible).
CONSTRAINT_ATTR = "constraint"

_GA_GENERATION_KEYS = (
    "NSGAIISampler:generation",
    "NSGAIIISampler:generation",
    SparseViTEvolutionSampler.generation_key(),
)


class _ConstrainedRandomSampler(optuna.samplers.RandomSampler):
    """``RandomSampler`` that also stores ``constraints_func``'s values after each trial, so
    ``is_feasible(trial)`` / ``trial.constraints`` read the same for every sampler."""

    def __init__(self, seed: int | None,
                 constraints_func: Callable[[FrozenTrial], Sequence[float]]) -> None:
        super().__init__(seed=seed)
        self._constraints_func = constraints_func

    def after_trial(self, study: optuna.Study, trial: FrozenTrial,
                    state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
        _process_constraints_after_trial(self._constraints_func, study, trial, state)
        super().after_trial(study, trial, state, values)


def latency_constraints(frozen_trial: FrozenTrial) -> list[float]:
    """``constraints_func`` for Optuna samplers: ``[user_attrs["constraint"]]``.

    The value is the latency excess in ms (predicted - budget; <= 0 feasible). A trial without
    the attribute (no budget set) counts as feasible: ``[0.0]``.

    Raises:
        ValueError: the attribute is not a finite number.
    """
    value = frozen_trial.user_attrs.get(CONSTRAINT_ATTR, 0.0)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"trial {frozen_trial.number}: user attr {CONSTRAINT_ATTR!r} = "
                         f"{value!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"trial {frozen_trial.number}: user attr {CONSTRAINT_ATTR!r} = {v} "
                         "is not finite")
    return [v]


def trial_generation(frozen_trial: FrozenTrial, population_size: int | None = None) -> int:
    """Generation of a trial for nsga2 / nsga3 / sparsevit, from its system attrs.

    For samplers without generations (tpe, random) returns ``number // population_size``
    when ``population_size`` is given, else -1.
    """
    attrs = frozen_trial.system_attrs
    for key in _GA_GENERATION_KEYS:
        if key in attrs:
            return int(attrs[key])
    for key, value in attrs.items():  # any other BaseGASampler subclass
        if key.endswith(":generation") and isinstance(value, int):
            return value
    if population_size:
        return frozen_trial.number // population_size
    return -1


def make_sampler(
    spec_sampler: Any,
    space: SearchSpace,
    seed: int | None,
    constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
    prefilter: Callable[[dict[str, Any]], bool] | None = None,
) -> BaseSampler:
    """Build the Optuna sampler named in the spec.

    Args:
        spec_sampler: a :class:`search.spec.SamplerSection` (``name`` and ``options()``).
        space: the search space (sparsevit evolves exactly its genes and re-sorts stages).
        seed: sampler seed (same seed + same trial order -> same proposals).
        constraints_func: optional ``FrozenTrial -> [float]`` (<= 0 feasible), e.g.
            :func:`latency_constraints`. Optuna's FutureWarning about it and the
            ExperimentalWarning of NSGAIIISampler are silenced here.
        prefilter: sparsevit only: ``params -> bool``; rejected proposals are re-drawn
            (e.g. ``lambda p: predictor(space.decode(p)) <= budget_ms``).

    Raises:
        ValueError: an unknown sampler name.
    """
    name = spec_sampler.name
    opts = dict(spec_sampler.options())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        # NSGAIIISampler is flagged experimental since Optuna 3.2; nothing a user can act on.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if name in ("nsga2", "nsga3"):
            cls = (optuna.samplers.NSGAIISampler if name == "nsga2"
                   else optuna.samplers.NSGAIIISampler)
            return cls(population_size=opts["population_size"],
                       mutation_prob=opts["mutation_prob"],
                       crossover_prob=opts["crossover_prob"],
                       swapping_prob=opts["swapping_prob"],
                       seed=seed, constraints_func=constraints_func)
        if name == "tpe":
            return optuna.samplers.TPESampler(n_startup_trials=opts["n_startup_trials"],
                                              multivariate=True, seed=seed,
                                              constraints_func=constraints_func)
        if name == "random":
            if constraints_func is not None:
                return _ConstrainedRandomSampler(seed, constraints_func)
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "sparsevit":
            return SparseViTEvolutionSampler(
                search_space=space.distributions(),
                population_size=opts["population_size"],
                parents=opts["parents"],
                mutation_prob=opts["mutation_prob"],
                crossover_prob=opts["crossover_prob"],
                seed=seed,
                constraints_func=constraints_func,
                canonicalize=space.canonical,
                prefilter=prefilter,
            )
    raise ValueError(f"unknown sampler {name!r}; expected one of nsga2|nsga3|tpe|random|sparsevit")
