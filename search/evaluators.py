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

from supernet.evaluate import DEFAULT_VAL_SEED

from .errors import UserError

__all__ = ["FashionMosaicEvaluator", "build_evaluator", "mosaic_fields", "EvaluatorError"]

Evaluator = Callable[[torch.nn.Module], Dict[str, float]]


class EvaluatorError(UserError):
    """The spec names an evaluator that cannot be imported or does not behave as one."""


class FashionMosaicEvaluator:
    """Built-in evaluator: semantic segmentation of Fashion-MNIST mosaics, mIoU + pixel accuracy.

    The canvases (``subset_size`` of them, from the ``split`` half of Fashion-MNIST's test set,
    generated deterministically from ``seed``) are built once when the evaluator is created and
    kept in memory (on ``device``), so every trial is scored on exactly the same pixels.

    Besides ``evaluator(model) -> metrics`` it offers the ranged protocol the workers use for
    multi-fidelity evaluation (:mod:`search.fidelity`) and the stage-prefix cache
    (:class:`supernet.prefix_cache.StagePrefixCache`): :meth:`confusion` over canvases
    ``[start, stop)`` (whole batches), :meth:`metrics` of a confusion matrix; confusion matrices of
    disjoint ranges add up to the whole subset's.

    Args:
        subset_size: canvases evaluated per trial.
        batch_size: canvases per forward pass.
        split: "val" or "test".
        mosaic: MosaicSpec fields (img_size, items, scales, ...), normally the checkpoint's
            dataset spec from its sidecar with the spec's ``[evaluator]`` overrides.
        seed: canvas seed (the checkpoint's validation seed by default).
        data_dir: folder of the Fashion-MNIST IDX files (default: Debian's package / env var).
        prefix_cache_bytes: memory bound of the stage-prefix cache (0 = off).
        device: where the canvases live and the model runs ("cpu", "cuda", ...).

    Returns (call):
        ``{"miou", "pixel_acc", "item_class_acc", "item_recall"}`` (ratios 0..1).

    Raises:
        supernet.data.DatasetNotFoundError: the IDX files are missing.
        ValueError: a mosaic field is invalid.
    """

    def __init__(self, subset_size: int = 256, batch_size: int = 32, split: str = "val",
                 mosaic: Optional[Dict[str, Any]] = None, seed: int = DEFAULT_VAL_SEED, data_dir: Optional[str] = None,
                 prefix_cache_bytes: int = 0, device: str = "cpu"):
        from supernet.data import FashionMosaic, MosaicSpec
        from supernet.prefix_cache import StagePrefixCache

        fields = dict(mosaic or {})
        if data_dir is not None:
            fields["data_dir"] = data_dir
        fields = {k: v for k, v in fields.items() if k in MosaicSpec.model_fields}
        self.spec = MosaicSpec(**fields)
        ds = FashionMosaic(split=split, length=subset_size, spec=self.spec, seed=seed)
        imgs, labels = zip(*(ds[i] for i in range(subset_size)))
        self.device = torch.device(device)
        self.images = torch.stack(imgs).to(self.device)
        self.labels = torch.stack(labels).to(self.device)
        self.batch_size = int(batch_size)
        self.num_classes = 11
        self.n_canvases = int(subset_size)
        self.cache = StagePrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None

    def confusion(self, model: torch.nn.Module, start: int = 0, stop: Optional[int] = None,
                  extra_key: Any = None) -> torch.Tensor:
        """Confusion matrix (K, K) int64 of ``model`` at its current sparsity on canvases ``[start, stop)``.

        ``start`` must be a multiple of ``batch_size`` (batches are the prefix cache's unit).
        ``extra_key``: what else the computation depends on (the weight ratios of a joint search).
        """
        from supernet.metrics import confusion_matrix

        stop = self.n_canvases if stop is None else min(int(stop), self.n_canvases)
        if start % self.batch_size:
            raise ValueError(f"start {start} is not a multiple of the batch size {self.batch_size}")
        cm = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)
        with torch.inference_mode():
            for i in range(start, stop, self.batch_size):
                x = self.images[i:min(i + self.batch_size, stop)]
                if self.cache is not None and x.shape[0] == min(self.batch_size, self.n_canvases - i):
                    logits = self.cache.forward(model, x, batch_key=i // self.batch_size, extra_key=extra_key)
                else:
                    logits = model(x)
                cm += confusion_matrix(logits.argmax(1), self.labels[i:i + x.shape[0]], self.num_classes).cpu()
        return cm

    @staticmethod
    def metrics(cm: torch.Tensor) -> Dict[str, float]:
        """``{"miou", "pixel_acc", "item_class_acc", "item_recall"}`` of a confusion matrix."""
        from supernet.metrics import item_class_accuracy, item_recall, miou, pixel_accuracy

        return {"miou": float(miou(cm)), "pixel_acc": float(pixel_accuracy(cm)),
                "item_class_acc": float(item_class_accuracy(cm)), "item_recall": float(item_recall(cm))}

    def __call__(self, model: torch.nn.Module) -> Dict[str, float]:
        return self.metrics(self.confusion(model))


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


def mosaic_fields(meta: Optional[Dict[str, Any]], img_size: Any = None,
                  mosaic: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The canvases the built-in evaluator scores: the checkpoint's dataset spec (sidecar), then the spec's
    ``[evaluator] img_size`` and ``[evaluator.mosaic]`` overrides."""
    meta = meta or {}
    out = dict(meta.get("dataset") or {})
    out.setdefault("img_size", meta.get("img_size", 224))
    if isinstance(out["img_size"], (list, tuple)):
        out["img_size"] = int(out["img_size"][0])
    if img_size is not None:
        out["img_size"] = int(img_size[0] if isinstance(img_size, (list, tuple)) else img_size)
    out.update(mosaic or {})
    return out


def mosaic_spec(meta: Optional[Dict[str, Any]], img_size: Any = None, mosaic: Optional[Dict[str, Any]] = None):
    """:func:`mosaic_fields` as a :class:`supernet.data.MosaicSpec` (keys it does not take dropped)."""
    from supernet.data import MosaicSpec

    return MosaicSpec(**{k: v for k, v in mosaic_fields(meta, img_size, mosaic).items() if k in MosaicSpec.model_fields})


def build_evaluator(name: str, *, subset_size: int, batch_size: int, split: str,
                    kwargs: Optional[Dict[str, Any]] = None, meta: Optional[Dict[str, Any]] = None,
                    img_size: Any = None, mosaic: Optional[Dict[str, Any]] = None, prefix_cache_bytes: int = 0,
                    device: str = "cpu") -> Evaluator:
    """Build the evaluator a spec names (on the worker).

    Args:
        name: "fashion_mosaic" or "package.module:function".
        subset_size, batch_size, split: the spec's ``[evaluator]`` settings.
        kwargs: the spec's ``[evaluator.kwargs]``, passed to the function (``factory = true``:
            the function is called once with them and must return the evaluator).
        meta: the checkpoint sidecar (its ``dataset`` spec sets the canvas size and layout).
        img_size, mosaic: the spec's canvas overrides (built-in evaluator).
        prefix_cache_bytes, device: the worker's stage-prefix cache bound and device (built-in evaluator).

    Raises:
        EvaluatorError: the function cannot be imported.
    """
    kwargs = dict(kwargs or {})
    if name == "fashion_mosaic":
        return FashionMosaicEvaluator(subset_size=subset_size, batch_size=batch_size, split=split,
                                      mosaic=mosaic_fields(meta, img_size, mosaic),
                                      seed=int(kwargs.pop("seed", DEFAULT_VAL_SEED)),
                                      prefix_cache_bytes=prefix_cache_bytes, device=device, **kwargs)
    fn = _import(name)
    if kwargs.pop("factory", False):
        return fn(**kwargs)
    if kwargs:
        return lambda model: fn(model, **kwargs)
    return fn
