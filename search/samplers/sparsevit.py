"""The SparseViT reference evolutionary search as an Optuna sampler.

Algorithm (SparseViT, Chen et al., CVPR 2023, arXiv 2303.17605; reference ``tools/search.py``,
itself the OFA evolution finder):

- generation 0: ``population_size`` configs drawn uniformly (every gene uniform);
- parents of generation g: the top ``parents`` (25) feasible trials of generation g - 1 together
  with the parents of generation g - 1 (elitist), ranked by objective 0 (the metric, in the
  study's direction); infeasible trials (any constraint > 0) never become parents;
- each child of generation g is, with probability ``crossover_prob`` (0.5), a uniform crossover
  of two distinct random parents (each gene from either parent with probability 0.5), otherwise
  a mutation of one random parent (each gene resampled uniformly with probability
  ``mutation_prob``, 0.1);
- children are re-sorted within each stage (``canonicalize``), re-drawn when they duplicate a
  config already in the study or fail the optional ``prefilter`` (the reference re-draws until
  the latency constraint holds), up to ``max_resample`` times; if the parents cannot produce
  such a child (converged population), up to ``max_resample`` uniform random proposals follow
  (recorded as op ``"random"``), then the last proposal is used anyway;
- a generation is complete once ``population_size`` *feasible* trials of it have completed (the
  reference population holds only configs inside the latency bounds).

Latency is a constraint, not an objective, as in the reference; with several objectives only
objective 0 ranks parents (use NSGA-II/III for Pareto search).

State lives in the Optuna storage only, as in :class:`optuna.samplers.NSGAIISampler`: each trial's
generation in ``trial.system_attrs["SparseViTEvolutionSampler:generation"]``, the parent set of each
generation in the study system attrs, the operator and parents of each child in
``SparseViTEvolutionSampler:op`` / ``SparseViTEvolutionSampler:parents`` (trial numbers), so a
resumed study continues the same evolution. Randomness is drawn from a generator seeded with
``(seed, trial.number)``: a trial's proposal depends only on the seed, its number and the stored
parents, not on the process history.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseGASampler, RandomSampler
from optuna.samplers._base import _process_constraints_after_trial
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "SparseViTEvolutionSampler",
    "SparseViTChildGeneration",
    "SparseViTParentSelection",
    "is_feasible",
]

_OLD_CONSTRAINTS_KEY = "constraints"  # Optuna < 5 (and constraints_func) store a list here
_NEW_CONSTRAINTS_PREFIX = "constraints:"  # Optuna 5 trial.set_constraint(key, value)


def is_feasible(trial: FrozenTrial) -> bool:
    """True when every constraint value of ``trial`` is <= 0 (or it has none).

    Reads both storage formats: the ``constraints`` list written for ``constraints_func`` and
    the ``constraints:<key>`` entries of Optuna 5's ``trial.set_constraint``.
    """
    attrs = trial.system_attrs
    values = list(attrs.get(_OLD_CONSTRAINTS_KEY) or [])
    values += [v for k, v in attrs.items() if k.startswith(_NEW_CONSTRAINTS_PREFIX)]
    return all(v <= 0 for v in values)


def _score_key(direction: StudyDirection) -> Callable[[FrozenTrial], tuple[float, int]]:
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    return lambda t: (sign * float(t.values[0]), t.number)


class SparseViTParentSelection:
    """Elite selection: top ``n_parents`` distinct feasible trials by objective 0.

    Ties break by trial number (earlier first), so selection is deterministic. Trials that
    decode to a config already selected (``key``) are skipped, so duplicates cannot crowd the
    parent set.
    """

    def __init__(self, n_parents: int,
                 key: Callable[[FrozenTrial], Any] | None = None) -> None:
        if n_parents < 1:
            raise ValueError(f"n_parents must be >= 1, got {n_parents}")
        self.n_parents = n_parents
        self._key = key

    def __call__(self, study: Study, population: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """Select parents among ``population`` (complete trials of one generation + parents)."""
        seen_ids: set[int] = set()
        candidates = []
        for t in population:
            if t.state != TrialState.COMPLETE or t.values is None or t._trial_id in seen_ids:
                continue
            if not is_feasible(t):
                continue
            seen_ids.add(t._trial_id)
            candidates.append(t)
        candidates.sort(key=_score_key(study.directions[0]))
        out: list[FrozenTrial] = []
        seen_keys: set[Any] = set()
        for t in candidates:
            k = self._key(t) if self._key is not None else t._trial_id
            if k in seen_keys:
                continue
            seen_keys.add(k)
            out.append(t)
            if len(out) == self.n_parents:
                break
        return out


class SparseViTChildGeneration:
    """One child from the parents: uniform crossover (prob ``crossover_prob``) or mutation.

    Args:
        mutation_prob: per-gene probability (0..1) of resampling a gene uniformly (mutation).
        crossover_prob: probability (0..1) a child is a crossover of two distinct parents;
            otherwise it is a mutation of one parent. With a single parent, always mutation.
        swapping_prob: probability a crossover gene is taken from the second parent (0.5).

    Returns (``__call__``): ``(params, op, parent_numbers)`` with op in
    ``{"random", "mutation", "crossover"}``.
    """

    def __init__(self, mutation_prob: float = 0.1, crossover_prob: float = 0.5,
                 swapping_prob: float = 0.5) -> None:
        for name, p in (("mutation_prob", mutation_prob), ("crossover_prob", crossover_prob),
                        ("swapping_prob", swapping_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {p}")
        self.mutation_prob = mutation_prob
        self.crossover_prob = crossover_prob
        self.swapping_prob = swapping_prob

    @staticmethod
    def random_value(rng: np.random.Generator, dist: CategoricalDistribution) -> Any:
        """A uniform draw from a categorical distribution's choices."""
        return dist.choices[int(rng.integers(len(dist.choices)))]

    def __call__(
        self,
        rng: np.random.Generator,
        search_space: Mapping[str, CategoricalDistribution],
        parents: Sequence[FrozenTrial],
    ) -> tuple[dict[str, Any], str, list[int]]:
        if not parents:
            return ({n: self.random_value(rng, d) for n, d in search_space.items()}, "random", [])
        if len(parents) >= 2 and rng.random() < self.crossover_prob:
            i, j = (int(x) for x in rng.choice(len(parents), size=2, replace=False))
            a, b = parents[i], parents[j]
            child = {}
            for name, dist in search_space.items():
                take_b = rng.random() < self.swapping_prob
                src = b if take_b else a
                child[name] = src.params[name] if name in src.params else (
                    self.random_value(rng, dist))
            return child, "crossover", [a.number, b.number]
        p = parents[int(rng.integers(len(parents)))]
        child = {}
        for name, dist in search_space.items():
            if rng.random() < self.mutation_prob or name not in p.params:
                child[name] = self.random_value(rng, dist)
            else:
                child[name] = p.params[name]
        return child, "mutation", [p.number]


class SparseViTEvolutionSampler(BaseGASampler):
    """SparseViT reference evolution (see the module docstring) on Optuna's GA machinery.

    Args:
        search_space: the genes (``SearchSpace.distributions()``); ``None`` infers the
            intersection search space of completed trials, like NSGA-II (then generation 0
            starts only after the first trial). Only categorical genes are evolved; other
            parameters are sampled at random.
        population_size: feasible trials per generation (reference 100, >= 2).
        parents: parents kept per generation (reference 25, 1..population_size).
        mutation_prob: per-gene mutation probability (reference 0.1).
        crossover_prob: fraction of children made by crossover (reference 0.5).
        seed: seed; with the same seed, study and call order, proposals are identical.
        constraints_func: optional ``FrozenTrial -> [float]`` (<= 0 feasible), evaluated after
            each trial and stored like Optuna's; alternatively set constraints on the trial
            (Optuna 5 ``trial.set_constraint``) - both are read.
        canonicalize: ``params -> params`` applied to every proposal (``SearchSpace.canonical``
            sorts the genes of each monotonic stage, as the reference re-sorts within stage).
        prefilter: ``params -> bool``; proposals it rejects are re-drawn (e.g. predicted
            latency over budget; the reference re-draws until the constraint holds).
        max_resample: re-draws per trial to find a new, prefilter-passing child, then as many
            uniform random proposals; after that the last proposal is used anyway.

    Raises:
        ValueError: population_size < 2, parents outside 1..population_size, probabilities
            outside [0, 1], max_resample < 0.
    """

    def __init__(
        self,
        *,
        search_space: Mapping[str, BaseDistribution] | None = None,
        population_size: int = 100,
        parents: int = 25,
        mutation_prob: float = 0.1,
        crossover_prob: float = 0.5,
        seed: int | None = None,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        canonicalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        prefilter: Callable[[dict[str, Any]], bool] | None = None,
        max_resample: int = 100,
    ) -> None:
        if population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {population_size}")
        if not 1 <= parents <= population_size:
            raise ValueError(f"parents must be within 1..population_size ({population_size}), "
                             f"got {parents}")
        if max_resample < 0:
            raise ValueError(f"max_resample must be >= 0, got {max_resample}")
        super().__init__(population_size=population_size)
        self._fixed_space = dict(search_space) if search_space is not None else None
        self._intersection = IntersectionSearchSpace()
        self._base_seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self._random_sampler = RandomSampler(seed=seed)
        self._constraints_func = constraints_func
        self._canonicalize = canonicalize
        self._prefilter = prefilter
        self._max_resample = max_resample
        self._n_parents = parents
        self._selection = SparseViTParentSelection(parents, key=self._trial_key)
        self._children = SparseViTChildGeneration(mutation_prob, crossover_prob)
        self._key_cache: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._names: list[str] | None = None  # genes of the current relative search space

    @property
    def prefilter(self) -> Callable[[dict[str, Any]], bool] | None:
        """``params -> bool``: proposals it rejects are re-drawn inside the evolution (settable)."""
        return self._prefilter

    @prefilter.setter
    def prefilter(self, fn: Callable[[dict[str, Any]], bool] | None) -> None:
        self._prefilter = fn

    # ---- attribute keys (public so tools can read them) ------------------------------------

    @classmethod
    def generation_key(cls) -> str:
        """Trial system attr holding the generation (``"SparseViTEvolutionSampler:generation"``)."""
        return cls._get_generation_key()

    @classmethod
    def op_key(cls) -> str:
        """Trial system attr holding how a trial was made: random | mutation | crossover."""
        return f"{cls.__name__}:op"

    @classmethod
    def parents_key(cls) -> str:
        """Trial system attr holding the parent trial numbers of a child."""
        return f"{cls.__name__}:parents"

    @property
    def n_parents(self) -> int:
        """Parents kept per generation."""
        return self._n_parents

    # ---- BaseSampler -----------------------------------------------------------------------

    def reseed_rng(self) -> None:
        """New random base seed (Optuna calls this for ``n_jobs > 1``)."""
        self._base_seed = random.SystemRandom().getrandbits(63)
        self._random_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The categorical genes with >= 2 choices (fixed space, or the intersection space)."""
        space = (self._fixed_space if self._fixed_space is not None
                 else self._intersection.calculate(study))
        return {n: d for n, d in space.items()
                if isinstance(d, CategoricalDistribution) and not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Propose all genes of ``trial``: random (generation 0 or no feasible parent),
        mutation or crossover of this generation's parents."""
        if not search_space:
            return {}
        space = {n: d for n, d in search_space.items() if isinstance(d, CategoricalDistribution)}
        self._names = sorted(space)
        generation = self.get_trial_generation(study, trial)
        parents = self.get_parent_population(study, generation)
        rng = np.random.default_rng([self._base_seed, trial.number])
        seen = self._seen_keys(study, space, exclude_id=trial._trial_id)

        # Re-draw duplicates and prefilter rejects; when the parents cannot produce a new
        # config (a converged population), fall back to uniform random proposals.
        attempts = 0
        limit = 2 * self._max_resample + 1
        while True:
            attempts += 1
            source = parents if attempts <= self._max_resample + 1 else []
            child, op, parent_numbers = self._children(rng, space, source)
            child = self._canonical(child, space)
            key = self._params_key(child, space)
            fresh = key not in seen
            ok = fresh and (self._prefilter is None or bool(self._prefilter(child)))
            if ok or attempts >= limit:
                break

        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, self.op_key(), op)
        storage.set_trial_system_attr(trial._trial_id, self.parents_key(), parent_numbers)
        if attempts > 1:
            storage.set_trial_system_attr(trial._trial_id, f"{type(self).__name__}:attempts",
                                          attempts)
        return child

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Parameters outside the relative space (single-choice genes, non-categorical
        parameters, the first trial without a fixed space) are drawn at random."""
        return self._random_sampler.sample_independent(study, trial, param_name,
                                                       param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random_sampler.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Store ``constraints_func(trial)`` (if given) the way Optuna's samplers do."""
        if self._constraints_func is not None:
            _process_constraints_after_trial(self._constraints_func, study, trial, state)
        self._random_sampler.after_trial(study, trial, state, values)

    # ---- BaseGASampler ---------------------------------------------------------------------

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """Top-``parents`` feasible trials of generation ``generation - 1`` and its parents."""
        population = (self.get_population(study, generation - 1)
                      + self.get_parent_population(study, generation - 1))
        return self._selection(study, population)

    def get_trial_generation(self, study: Study, trial: FrozenTrial) -> int:
        """Generation of ``trial``: stored in its system attrs on first call.

        Like :meth:`BaseGASampler.get_trial_generation`, but a generation counts only its
        *feasible* complete trials, so it ends after ``population_size`` feasible configs.
        """
        key = self._get_generation_key()
        generation = trial.system_attrs.get(key)
        if generation is not None:
            return int(generation)
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=False)
        max_generation, count = 0, 0
        for t in trials:
            g = t.system_attrs.get(key)
            if g is None or g < max_generation:
                continue
            if g > max_generation:
                max_generation, count = g, 0
            if is_feasible(t):
                count += 1
        assert self._population_size is not None
        generation = max_generation if count < self._population_size else max_generation + 1
        study._storage.set_trial_system_attr(trial._trial_id, key, generation)
        return generation

    # ---- helpers ---------------------------------------------------------------------------

    def _canonical(self, params: dict[str, Any],
                   space: Mapping[str, CategoricalDistribution]) -> dict[str, Any]:
        if self._canonicalize is None:
            return params
        full = dict(params)
        if self._fixed_space is not None:  # single-choice genes are not in the relative space
            for n, d in self._fixed_space.items():
                if n not in full and isinstance(d, CategoricalDistribution) and d.single():
                    full[n] = d.choices[0]
        out = self._canonicalize(full)
        return {n: out[n] for n in space}

    @staticmethod
    def _params_key(params: Mapping[str, Any], names: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple((n, params[n]) for n in sorted(names))

    def _key_of(self, t: FrozenTrial, names: Sequence[str]) -> Any:
        """Canonical config key of ``t`` over ``names`` (cached for finished trials)."""
        cache_key = (t._trial_id, tuple(names))
        key = self._key_cache.get(cache_key)
        if key is None:
            space = {n: None for n in names}
            params = {n: t.params[n] for n in names}
            try:
                params = self._canonical(params, space)
            except (KeyError, ValueError):
                pass  # a trial outside the space (e.g. enqueued by hand): raw genes
            key = self._params_key(params, space)
            if t.state.is_finished():
                self._key_cache[cache_key] = key
        return key

    def _trial_key(self, t: FrozenTrial) -> Any:
        """Parent de-duplication key: canonical genes of the current search space."""
        names = [n for n in (self._names or sorted(t.params)) if n in t.params]
        return self._key_of(t, names)

    def _seen_keys(self, study: Study, space: Mapping[str, Any], exclude_id: int) -> set[Any]:
        """Canonical keys of every non-failed trial in the study that has all genes."""
        names = sorted(space)
        out = set()
        for t in study._get_trials(deepcopy=False, use_cache=False):
            if t._trial_id == exclude_id or t.state == TrialState.FAIL:
                continue
            if all(n in t.params for n in names):
                out.add(self._key_of(t, names))
        return out


# ---- registry entry (see search.samplers._base) --------------------------------------------
from pydantic import Field as _Field, model_validator as _model_validator  # noqa: E402

from ._base import SamplerOptions as _SamplerOptions  # noqa: E402

NAME = "sparsevit"
DESCRIPTION = "the SparseViT reference evolution: population 100, 25 parents, mutation 0.1, half crossover"


class Options(_SamplerOptions):
    """Reference values: ``population_size`` 100, ``parents`` 25, ``mutation_prob`` 0.1,
    ``crossover_prob`` 0.5 (fraction of children made by crossover, the rest by mutation)."""

    population_size: int = _Field(100, ge=2)
    parents: int = _Field(25, ge=2)
    mutation_prob: float = _Field(0.1, ge=0, le=1)
    crossover_prob: float = _Field(0.5, ge=0, le=1)

    @_model_validator(mode="after")
    def _parents(self) -> "Options":
        if self.parents > self.population_size:
            raise ValueError(f"parents: {self.parents} exceeds population_size {self.population_size}; "
                             "fix: set parents <= population_size")
        return self


def build(options: Options, *, space: Any, seed: int | None, constraints_func: Any = None):
    """The sampler, evolving exactly ``space``'s genes and re-sorting monotonic stages."""
    return SparseViTEvolutionSampler(search_space=space.distributions(), population_size=options.population_size,
                                     parents=options.parents, mutation_prob=options.mutation_prob,
                                     crossover_prob=options.crossover_prob, seed=seed,
                                     constraints_func=constraints_func, canonicalize=space.canonical)
