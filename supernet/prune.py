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
        bad = ValueError(f"--module-ratios item {item!r}: expected qkv=R, proj=R or mlp=R with 0 <= R < 1; fix: "
                         "write e.g. --module-ratios qkv=0.3,proj=0.3,mlp=0.5")
        if not sep or k not in ("qkv", "proj", "mlp"):
            raise bad
        try:
            r = float(v)
        except ValueError:
            raise bad from None
        if not 0.0 <= r < 1.0:  # NaN fails too
            raise bad
        out[k] = r
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


def finetune_masked(model: torch.nn.Module, meta: Dict[str, Any], handle: Any, epochs: int,
                    canvases_per_epoch: int = 512, batch_size: int = 8, lr: float = 2e-5, seed: int = 0) -> Dict[str, Any]:
    """Fine-tune a DIMAP-pruned supernet with its masks fixed (DIMAP Sec. 4.1 schedule, shortened).

    AdamW with cosine decay from ``lr`` to ``lr / 100`` (paper: 2e-5 -> 2e-7, weight decay 1e-8), dense
    activations, cross-entropy on Fashion-mosaic training canvases; ``handle.attach(optimizer)`` re-zeroes
    pruned weights after every step, so they stay exactly 0.

    Args:
        model: the masked :class:`SegSupernet`.
        meta: its sidecar (the dataset spec sets the canvas size).
        handle: the ``supernet.dimap.MaskHandle`` of the applied masks.
        epochs: passes over ``canvases_per_epoch`` fresh canvases.

    Returns:
        ``{"epochs", "steps", "final_loss"}``.

    Raises:
        supernet.data.DatasetNotFoundError: no Fashion-MNIST files.
    """
    import math

    import torch.nn.functional as F

    from .data import MosaicSpec, make_loader

    fields = MosaicSpec.from_dataset(meta.get("dataset")).model_dump()
    fields.setdefault("img_size", meta.get("img_size", 224))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-8)
    handle.attach(opt)
    steps_per_epoch = max(1, canvases_per_epoch // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    model.set_sparsity([[0.0] * d for d in model.depths])
    step, loss_v = 0, float("nan")
    for ep in range(epochs):
        loader = make_loader("train", length=steps_per_epoch * batch_size, batch_size=batch_size,
                             spec=MosaicSpec(**fields), seed=seed + 1000 + ep, shuffle=False)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_v = float(loss.detach())
    model.eval()
    return {"epochs": epochs, "steps": step, "final_loss": loss_v, "lr": lr, "canvases_per_epoch": canvases_per_epoch}


def prune_checkpoint(checkpoint: str, out: str, ratio: Optional[float] = None,
                     module_ratios: Optional[Dict[str, float]] = None, finetune_epochs: int = 0,
                     measure_latency: bool = True, finetune_canvases: int = 512) -> Dict[str, Any]:
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
        metrics["finetune"] = finetune_masked(model, meta, handle, epochs=finetune_epochs,
                                              canvases_per_epoch=finetune_canvases)
    handle.remove()
    if measure_latency:
        pruned_ms = _median_ms(model, x)
        record["latency_ms"] = {"dense": dense_ms, "pruned": pruned_ms, "ratio": pruned_ms / dense_ms,
                                "note": "unstructured masks: dense kernels, no speed-up expected"}
    try:
        from .evaluate import evaluate_config

        from .data import MosaicSpec

        img_size = meta.get("img_size", 224)
        spec = MosaicSpec.from_dataset(meta.get("dataset"), img_size if isinstance(img_size, int) else img_size[0])
        scores = evaluate_config(model, [[0.0] * d for d in model.depths], split="val", length=64, batch_size=16,
                                 spec=spec)
        record["miou_after_pruning"] = float(scores["miou"])
        record["pixel_acc_after_pruning"] = float(scores["pixel_acc"])
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
