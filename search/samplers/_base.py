"""What every sampler file of this package declares (one file per sampler; see ``__init__``).

A sampler file ``search/samplers/<file>.py`` defines:

- ``NAME``: the ``[sampler] name`` of the spec;
- ``Options``: a pydantic model (subclass of :class:`SamplerOptions`) of its ``[sampler]`` keys with
  their defaults; keys it does not declare are spec errors;
- ``build(options, *, space, seed, constraints_func) -> optuna.samplers.BaseSampler``;
- ``DESCRIPTION``: one line for ``--help`` and the README.

Adding a sampler is one new file; the registry in ``search.samplers`` finds it.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["SamplerOptions"]


class SamplerOptions(BaseModel):
    """Base of a sampler's ``[sampler]`` options: unknown keys are errors, no silent coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)
