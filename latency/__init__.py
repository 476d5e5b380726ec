"""sparsesearch latency: per-block latency tables (profiler), the vectorised predictor, validation.

Typical use::

    from latency import profile, Predictor, validate
    table = profile(model, batch_size=1, device="cpu", threads=1)   # SegSupernet or SparseSwin
    latency.profiler.save(table, "predictor_cpu.json")
    pred = Predictor.load("predictor_cpu.json", expect_fingerprint=current_fingerprint("cpu", 1, 1, "float32", 224))
    pred.predict(configs)            # numpy [n, n_blocks] or nested lists -> float64 ms [n]
    validate(pred, model, n=200, plot="latency.png")
"""
from .predictor import (
    FORMAT_VERSION,
    FingerprintWarning,
    Predictor,
    PredictorError,
    current_fingerprint,
    save,
)
from .profiler import profile
from .validate import cli_profile, cli_validate, validate

__all__ = [
    "FORMAT_VERSION",
    "FingerprintWarning",
    "Predictor",
    "PredictorError",
    "cli_profile",
    "cli_validate",
    "current_fingerprint",
    "profile",
    "save",
    "validate",
]
