"""Stage-prefix activation cache: reuse stage outputs across sparsity configs on a fixed evaluation set.

On a fixed batch of images, the output of stage s of a SparseSwin depends only on the kept-window
counts of the blocks of stages 0..s (SparseViT scores windows from the stage's own input, so nothing
later reaches back). Configs of one search generation share most of their early stages, so an
evaluation can start at the first stage whose counts differ from a config already run on that batch:
the outputs of the earlier stages are taken from this cache, bit for bit what a full forward computes.

The cache is an LRU dictionary ``(batch key, extra key, kept counts of stages 0..s) -> stage-s output``
(B, H_s, W_s, C_s) bounded in bytes; ``extra key`` carries anything else that changes the computation
(the DIMAP weight ratios of a joint search). Tensors stay on the model's device.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Hashable, List, Optional, Tuple

import torch

__all__ = ["StagePrefixCache"]


class StagePrefixCache:
    """LRU cache of stage outputs (see the module docstring).

    Args:
        max_bytes: memory bound of the stored tensors (an output larger than the bound is not stored).

    Attributes:
        hits / misses: stage lookups answered / not answered by the cache.
        stage_seconds_saved: estimated seconds of stage compute the hits saved (each hit counts the running
            mean time of that stage measured on misses).
        bytes: bytes held now (always <= ``max_bytes``).
    """

    def __init__(self, max_bytes: int = 1 << 30):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._store: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.stage_seconds_saved = 0.0
        self._stage_time: dict = {}  # stage -> (total seconds, runs)

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        """Drop every stored tensor."""
        self._store.clear()
        self.bytes = 0

    def stats(self) -> dict:
        """``{hits, misses, hit_rate, stage_seconds_saved, bytes, max_bytes, entries, evictions}``."""
        n = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / n if n else 0.0,
                "stage_seconds_saved": self.stage_seconds_saved, "bytes": self.bytes, "max_bytes": self.max_bytes,
                "entries": len(self._store), "evictions": self.evictions}

    def _get(self, key: Hashable) -> Optional[torch.Tensor]:
        t = self._store.get(key)
        if t is not None:
            self._store.move_to_end(key)
        return t

    def _put(self, key: Hashable, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.max_bytes:
            return
        old = self._store.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        while self._store and self.bytes + size > self.max_bytes:
            _, ev = self._store.popitem(last=False)
            self.bytes -= ev.numel() * ev.element_size()
            self.evictions += 1
        self._store[key] = t
        self.bytes += size

    def prefix_keys(self, model: Any, img_size: Tuple[int, int], batch_key: Hashable,
                    extra_key: Hashable = None) -> List[Hashable]:
        """The cache key of every stage's output for the model's current sparsity at ``img_size``."""
        counts = model.backbone.keep_counts(tuple(img_size))
        return [(batch_key, extra_key, tuple(tuple(c) for c in counts[:s + 1])) for s in range(len(counts))]

    def forward(self, model: Any, x: torch.Tensor, batch_key: Hashable, extra_key: Hashable = None) -> torch.Tensor:
        """Logits of a :class:`supernet.seg.SegSupernet` at its current sparsity, reusing cached stage outputs.

        Args:
            model: the segmentation supernet (eval mode, under ``torch.inference_mode``).
            x: (B, 3, H, W) images; the same ``batch_key`` must always mean the same images.
            batch_key: identity of the batch (e.g. its index in the evaluation subset).
            extra_key: anything else the computation depends on (weight ratios), or None.

        Returns:
            (B, K, H, W) logits, equal bit for bit to ``model(x)``.
        """
        bb = model.backbone
        xin = model._resize_input(x)
        keys = self.prefix_keys(model, tuple(xin.shape[-2:]), batch_key, extra_key)
        outs: List[torch.Tensor] = []
        for key in keys:
            t = self._get(key)
            if t is None:
                break
            outs.append(t)
        start = len(outs)
        self.hits += start
        self.misses += len(keys) - start
        for s in range(start):
            tot, n = self._stage_time.get(s, (0.0, 0))
            if n:
                self.stage_seconds_saved += tot / n
        if start < len(keys):
            h = outs[-1] if outs else bb.patch_embed(xin)
            for s in range(start, len(keys)):
                t0 = time.perf_counter()
                h = bb.forward_stage(s, h)
                tot, n = self._stage_time.get(s, (0.0, 0))
                self._stage_time[s] = (tot + time.perf_counter() - t0, n + 1)
                self._put(keys[s], h)
                outs.append(h)
        return model.forward_head([o.permute(0, 3, 1, 2) for o in outs], out_size=tuple(x.shape[-2:]))
