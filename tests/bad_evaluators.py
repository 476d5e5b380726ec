"""Evaluators that misbehave on purpose (tests/test_bad_inputs.py), importable by the Ray workers."""
from __future__ import annotations

from typing import Dict

import torch


def nan_every_third(model: torch.nn.Module) -> Dict[str, float]:
    """A metric derived from the config, NaN for about half of the configs (a diverging evaluator)."""
    flat = [r for s in model.sparsity for r in s]
    key = int(round(sum(flat) * 10)) % 2
    return {"miou": float("nan") if key == 0 else 1.0 - sum(flat) / len(flat)}


def wrong_key(model: torch.nn.Module) -> Dict[str, float]:
    """Returns 'accuracy' where the spec expects 'miou' (a configuration error)."""
    return {"accuracy": 0.5}


def with_extras(model: torch.nn.Module) -> Dict[str, float]:
    """The metric plus non-scalar extras a user evaluator might return (a per-class array, a note)."""
    import numpy as np

    flat = [r for s in model.sparsity for r in s]
    return {"miou": 1.0 - sum(flat) / len(flat), "pixel_acc": 0.5, "per_class": np.arange(3.0), "note": "ok"}
