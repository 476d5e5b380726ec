"""A memoising wrapper of the built-in evaluator, shared by every run of a sampler comparison.

The evaluation of a config on a fixed checkpoint and canvas subset is deterministic, so runs that
compare samplers (same supernet, same subset) can share results: the first run that meets a config
evaluates it, later runs read it from an SQLite file. Used as ``experiments.fashion_mosaic.memo:evaluate``
with ``factory = true`` and ``db = "PATH"`` in ``[evaluator.kwargs]``.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict

from supernet.evaluate import DEFAULT_VAL_SEED


def evaluate(db: str, subset_size: int = 48, batch_size: int = 16, split: str = "val", mosaic: Any = None,
             seed: int = DEFAULT_VAL_SEED):
    """Factory: returns ``evaluator(model) -> {"miou", "pixel_acc"}`` backed by the SQLite cache ``db``."""
    from search.evaluators import FashionMosaicEvaluator

    inner = FashionMosaicEvaluator(subset_size=subset_size, batch_size=batch_size, split=split, mosaic=mosaic,
                                   seed=seed)
    con = sqlite3.connect(db, timeout=60)
    con.execute("CREATE TABLE IF NOT EXISTS m (k TEXT PRIMARY KEY, v TEXT)")
    con.commit()

    def run(model) -> Dict[str, float]:
        key = json.dumps(model.sparsity)
        row = con.execute("SELECT v FROM m WHERE k = ?", (key,)).fetchone()
        if row:
            return json.loads(row[0])
        out = inner(model)
        con.execute("INSERT OR REPLACE INTO m VALUES (?, ?)", (key, json.dumps(out)))
        con.commit()
        return out

    return run
