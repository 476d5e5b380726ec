"""sparsesearch search service: spec -> sampler -> latency gate -> Ray workers -> Parquet -> Pareto.

Public API::

    from search import load_spec, run, resume, load_trials, pareto_front, hypervolume
"""
from .errors import UserError
from .pareto import hypervolume, hypervolume_history, pareto_front
from .trial_log import final_trials, load_trials

__all__ = ["UserError", "load_spec", "run", "resume", "load_trials", "final_trials", "pareto_front",
           "hypervolume", "hypervolume_history"]


def __getattr__(name):  # lazy: importing the package must not import Ray / torch
    if name == "load_spec":
        from .spec import load_spec
        return load_spec
    if name in ("run", "resume"):
        from . import runner
        return getattr(runner, name)
    raise AttributeError(name)
