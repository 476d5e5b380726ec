"""Optuna samplers for the sparsity search: one file per sampler, found by this registry.

==========  =================================================================================
nsga2       ``optuna.samplers.NSGAIISampler`` (Deb et al. 2002), population 50
nsga3       ``optuna.samplers.NSGAIIISampler`` (Deb & Jain 2014), population 50
tpe         ``optuna.samplers.TPESampler(multivariate=True)``, 10 startup trials
random      ``optuna.samplers.RandomSampler``
sparsevit   :class:`SparseViTEvolutionSampler`, the SparseViT reference evolution
            (arXiv 2303.17605, ``tools/search.py``): population 100, 25 parents, mutation 0.1
==========  =================================================================================

A sampler is one file ``search/samplers/<file>.py`` declaring ``NAME``, ``DESCRIPTION``, an
``Options`` model (its ``[sampler]`` keys and defaults) and ``build(options, *, space, seed,
constraints_func)`` (see :mod:`search.samplers._base`); :data:`SAMPLERS` maps every name found here
to its module, and the spec accepts exactly those names and options.

:func:`make_sampler` wraps the built sampler in :class:`FeasibleSampler` when the search passes a
feasibility test: every proposal is then within the latency budget (redrawn, or repaired) and,
where the sampler can find one, a computation not yet evaluated.

Infeasible trials (predicted latency over budget, or a user constraint) are marked by a constraint
value > 0. Two ways to record it, both read by every sampler here:

- Optuna 5: ``trial.set_constraint("latency_ms", predicted_ms - budget_ms)`` before ``tell``
  (no ``constraints_func`` needed);
- ``trial.set_user_attr("constraint", predicted_ms - budget_ms)`` with
  ``constraints_func=latency_constraints`` (deprecated by Optuna 5 in its own samplers, still
  supported until Optuna 7).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from search.samplers._feasible import DRAWS_KEY, REPAIRED_KEY, FeasibleSampler
from search.samplers.sparsevit import SparseViTEvolutionSampler, is_feasible
from search.space import SearchSpace

__all__ = [
    "CONSTRAINT_ATTR",
    "SAMPLERS",
    "FeasibleSampler",
    "SparseViTEvolutionSampler",
    "is_feasible",
    "latency_constraints",
    "make_sampler",
    "sampler_module",
    "trial_generation",
]

#: ``trial.user_attrs`` key the latency gate writes (predicted ms - budget ms; <= 0 feasible).
CONSTRAINT_ATTR = "constraint"


def _discover() -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(mod, "NAME", None)
        if isinstance(name, str) and hasattr(mod, "Options") and hasattr(mod, "build"):
            out[name] = mod
    first = ("nsga2", "nsga3", "tpe", "random", "sparsevit")  # the documented order; others alphabetically
    return dict(sorted(out.items(), key=lambda kv: (first.index(kv[0]) if kv[0] in first else len(first), kv[0])))


#: ``[sampler] name`` -> the module that declares it (``Options``, ``build``, ``DESCRIPTION``).
SAMPLERS: dict[str, ModuleType] = _discover()


def sampler_module(name: str) -> ModuleType:
    """The module of sampler ``name``.

    Raises:
        ValueError: no sampler file declares that name.
    """
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {'|'.join(SAMPLERS)}") from None


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
    """Generation of a trial for GA samplers (``<Sampler>:generation`` system attr).

    For samplers without generations (tpe, random) returns ``number // population_size``
    when ``population_size`` is given, else -1.
    """
    for key, value in frozen_trial.system_attrs.items():
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
    feasible: Callable[[dict[str, Any]], bool] | None = None,
    is_new: Callable[[dict[str, Any]], bool] | None = None,
    repair: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    max_draws: int = 64,
) -> BaseSampler:
    """Build the Optuna sampler named in the spec.

    Args:
        spec_sampler: a :class:`search.spec.SamplerSection` (``name`` and ``options()``).
        space: the search space.
        seed: sampler seed (same seed + same trial order -> same proposals).
        constraints_func: optional ``FrozenTrial -> [float]`` (<= 0 feasible), e.g.
            :func:`latency_constraints`. Optuna's FutureWarning about it and the
            ExperimentalWarning of NSGAIIISampler are silenced here.
        feasible, is_new, repair, max_draws: wrap in :class:`FeasibleSampler` (when ``feasible`` is given).

    Raises:
        ValueError: an unknown sampler name or options it does not take.
    """
    mod = sampler_module(spec_sampler.name)
    opts = mod.Options(**dict(spec_sampler.options()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        sampler = mod.build(opts, space=space, seed=seed, constraints_func=constraints_func)
    _make_picklable(sampler)
    if feasible is not None:
        sampler = FeasibleSampler(sampler, space.distributions(), feasible, is_new, repair, max_draws)
    return sampler


class _PicklableLock:
    """A ``threading.Lock`` that pickles as a new, unlocked lock (what Optuna's JournalStorage does by hand)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __reduce__(self):
        return (_PicklableLock, ())


def _make_picklable(sampler: BaseSampler) -> None:
    """Optuna 5.1's GA samplers (NSGA-II / III: ``optuna/samplers/_ga/_base.py``) hold a ``threading.Lock``, which
    cannot be pickled, and Ray Tune's ``Tuner`` pickles its searcher with the sampler in it (``search.tune``). The
    lock is swapped for one that pickles as a fresh lock; the sampler's behaviour is unchanged."""
    lock = getattr(sampler, "_thread_lock", None)
    if lock is not None and not isinstance(lock, _PicklableLock):
        sampler._thread_lock = _PicklableLock()
