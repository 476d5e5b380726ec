"""``sparsesearch prune dimap``: DIMAP-prune a supernet checkpoint into a new checkpoint + sidecar.

DIMAP (He and Zhou, ICLR 2024, arXiv 2404.13648): Eq. 10 scores, one threshold per module
(QKV / PRJ / MLP), unstructured masks. The new sidecar records the masks' params and MACs
reductions counted as the paper counts them (masked weights removed) and the latency measured
before and after, because unstructured masks bring no speed-up with dense kernels.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = ["prune_checkpoint", "cli_prune_dimap", "parse_module_ratios"]


def parse_module_ratios(text: Optional[str]) -> Optional[Dict[str, float]]:
    """``"qkv=0.3,proj=0.3,mlp=0.5"`` -> dict. Raises ValueError naming the bad item."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or k not in ("qkv", "proj", "mlp"):
            raise ValueError(f"--module-ratios item {item!r}: expected qkv=R, proj=R or mlp=R with 0 <= R < 1")
        out[k] = float(v)
    return out


def _median_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    ts = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


def prune_checkpoint(checkpoint: str, out: str, ratio: Optional[float] = None,
                     module_ratios: Optional[Dict[str, float]] = None, finetune_epochs: int = 0,
                     measure_latency: bool = True) -> Dict[str, Any]:
    """DIMAP-prune ``checkpoint`` and write ``out`` (+ sidecar).

    Args:
        checkpoint: source ``.safetensors`` (with its sidecar).
        out: destination ``.safetensors``.
        ratio: pruning ratio r (0..1) of every module, or None with ``module_ratios``.
        module_ratios: per-module ratios ``{"qkv": r, "proj": r, "mlp": r}``.
        finetune_epochs: epochs of dense-phase training on the Fashion mosaic task with the masks
            fixed (0 = none).
        measure_latency: time the dense and pruned model (batch 1, this machine).

    Returns:
        The ``pruning`` record written to the new sidecar (params / MACs reductions, latency, mIoU).

    Raises:
        supernet.checkpoint.CheckpointError: the checkpoint is missing or does not match.
        ValueError: bad ratios.
    """
    from . import dimap
    from .checkpoint import load_checkpoint, save_checkpoint

    if ratio is None and not module_ratios:
        raise ValueError("give --ratio R or --module-ratios qkv=..,proj=..,mlp=..")
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    img = meta.get("img_size", 224)
    img = img if isinstance(img, int) else img[0]
    x = torch.randn(1, 3, img, img)
    dense_ms = _median_ms(model, x) if measure_latency else None
    masks = dimap.dimap_masks(model, ratio=ratio, module_ratios=module_ratios)
    handle = dimap.apply_masks(model, masks)
    record: Dict[str, Any] = {"method": "dimap", "ratio": ratio, "module_ratios": module_ratios}
    record.update(dimap.param_report(model, masks))
    record.update(dimap.macs_reduction(model.backbone, {k[len("backbone."):]: v for k, v in masks.items()
                                                        if k.startswith("backbone.")}, img_size=img))
    metrics = dict(meta.get("metrics") or {})
    if finetune_epochs > 0:
        from .train import finetune_masked

        metrics["finetune"] = finetune_masked(model, meta, handle, epochs=finetune_epochs)
    handle.remove()
    if measure_latency:
        pruned_ms = _median_ms(model, x)
        record["latency_ms"] = {"dense": dense_ms, "pruned": pruned_ms, "ratio": pruned_ms / dense_ms,
                                "note": "unstructured masks: dense kernels, no speed-up expected"}
    try:
        from .evaluate import evaluate_config

        ds = dict(meta.get("dataset") or {})
        record["miou_after_pruning"] = evaluate_config(model, [[0.0] * d for d in model.depths], split="val",
                                                       length=64, batch_size=16, spec=ds or None)
    except Exception as e:  # noqa: BLE001 - data may be absent; pruning itself succeeded
        record["miou_after_pruning"] = f"not evaluated: {type(e).__name__}: {e}"
    new_meta = {k: meta.get(k) for k in ("arch", "img_size", "num_classes", "search_space", "dataset", "training")}
    metrics["pruning"] = record
    save_checkpoint(model, out, metrics=metrics, **new_meta)
    return record


def cli_prune_dimap(a) -> int:
    rec = prune_checkpoint(a.checkpoint, a.out, ratio=a.ratio, module_ratios=parse_module_ratios(a.module_ratios),
                           finetune_epochs=a.finetune)
    if a.json:
        print(json.dumps(rec, default=str))
    else:
        lat = rec.get("latency_ms") or {}
        print(f"DIMAP -> {a.out}: params -{rec['params_reduction'] * 100:.1f} %, MACs -{rec['macs_reduction'] * 100:.1f} % "
              f"(masked weights counted as removed, as the paper counts them); measured latency "
              f"{lat.get('dense', float('nan')):.1f} -> {lat.get('pruned', float('nan')):.1f} ms "
              "(unstructured masks give no speed-up with dense kernels)")
    return 0
