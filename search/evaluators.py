"""Evaluators: what a worker runs on the supernet at one sparsity config.

An evaluator is any callable ``evaluator(model) -> dict[str, float]`` (metric name -> value) that
runs the model *as configured* (the worker has already called ``model.set_sparsity``). The built-in
``fashion_mosaic`` evaluator scores mIoU and pixel accuracy on a fixed subset of Fashion-MNIST
mosaic canvases; a spec may name any importable ``package.module:function`` instead. A factory
``function(**kwargs)`` that returns the evaluator is also accepted when the spec passes
``factory = true`` in ``[evaluator.kwargs]``.

Adding an evaluator is one new module with one function; nothing else changes.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Optional

import torch

from .errors import UserError

__all__ = ["FashionMosaicEvaluator", "build_evaluator", "EvaluatorError"]

Evaluator = Callable[[torch.nn.Module], Dict[str, float]]


class EvaluatorError(UserError):
    """The spec names an evaluator that cannot be imported or does not behave as one."""


class FashionMosaicEvaluator:
    """Built-in evaluator: semantic segmentation of Fashion-MNIST mosaics, mIoU + pixel accuracy.

    The canvases (``subset_size`` of them, from the ``split`` half of Fashion-MNIST's test set,
    generated deterministically from ``seed``) are built once when the evaluator is created and
    kept in memory, so every trial is scored on exactly the same pixels.

    Args:
        subset_size: canvases evaluated per trial.
        batch_size: canvases per forward pass.
        split: "val" or "test".
        mosaic: MosaicSpec fields (img_size, items, scales, ...), normally the checkpoint's
            dataset spec from its sidecar.
        seed: canvas seed (the checkpoint's validation seed by default).
        data_dir: folder of the Fashion-MNIST IDX files (default: Debian's package / env var).

    Returns (call):
        ``{"miou": float, "pixel_acc": float}`` (ratios 0..1).

    Raises:
        supernet.data.DatasetNotFoundError: the IDX files are missing.
    """

    def __init__(self, subset_size: int = 256, batch_size: int = 32, split: str = "val",
                 mosaic: Optional[Dict[str, Any]] = None, seed: int = 12345, data_dir: Optional[str] = None):
        from supernet.data import FashionMosaic, MosaicSpec

        fields = dict(mosaic or {})
        if data_dir is not None:
            fields["data_dir"] = data_dir
        fields = {k: v for k, v in fields.items() if k in MosaicSpec.model_fields}
        ds = FashionMosaic(split=split, length=subset_size, spec=MosaicSpec(**fields), seed=seed)
        imgs, labels = zip(*(ds[i] for i in range(subset_size)))
        self.images = torch.stack(imgs)
        self.labels = torch.stack(labels)
        self.batch_size = batch_size
        self.num_classes = 11

    def __call__(self, model: torch.nn.Module) -> Dict[str, float]:
        from supernet.metrics import SegMetric

        metric = SegMetric(self.num_classes)
        with torch.inference_mode():
            for i in range(0, len(self.images), self.batch_size):
                logits = model(self.images[i:i + self.batch_size])
                metric.update(logits, self.labels[i:i + self.batch_size])
        out = metric.compute()
        return {"miou": float(out["miou"]), "pixel_acc": float(out["pixel_acc"])}


def _import(name: str) -> Callable[..., Any]:
    mod_name, _, fn_name = name.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise EvaluatorError(f"evaluator {name!r}: cannot import module {mod_name!r} ({e}); "
                             "fix: make it importable on every worker (PYTHONPATH / working_dir)") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise EvaluatorError(f"evaluator {name!r}: {mod_name} has no callable {fn_name!r}; "
                             "fix: name a function that takes the model and returns a metrics dict")
    return fn


def build_evaluator(name: str, *, subset_size: int, batch_size: int, split: str,
                    kwargs: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None) -> Evaluator:
    """Build the evaluator a spec names (on the worker).

    Args:
        name: "fashion_mosaic" or "package.module:function".
        subset_size, batch_size, split: the spec's ``[evaluator]`` settings.
        kwargs: the spec's ``[evaluator.kwargs]``, passed to the function (``factory = true``:
            the function is called once with them and must return the evaluator).
        meta: the checkpoint sidecar (its ``dataset`` spec sets the canvas size and layout).

    Raises:
        EvaluatorError: the function cannot be imported.
    """
    kwargs = dict(kwargs or {})
    if name == "fashion_mosaic":
        meta = meta or {}
        mosaic = dict((meta.get("dataset") or {}))
        mosaic.setdefault("img_size", meta.get("img_size", 224))
        return FashionMosaicEvaluator(subset_size=subset_size, batch_size=batch_size, split=split,
                                      mosaic=mosaic, seed=int(kwargs.pop("seed", 12345)), **kwargs)
    fn = _import(name)
    if kwargs.pop("factory", False):
        return fn(**kwargs)
    if kwargs:
        return lambda model: fn(model, **kwargs)
    return fn
