"""Benchmark: training canvases/s of the quick recipe with one process against data-parallel processes.

The real trainer (``supernet.train.train``) on ``experiments/fashion_mosaic/task_quick.toml``'s model, loss and
levers (bf16, item loss at 1/4 resolution, batch 16), shortened to one epoch of ``--canvases`` canvases with no
per-epoch validation, in three settings:

- ``1x1``: one process, 1 thread;
- ``1x2``: one process, 2 threads (the recipe before ``[train] processes``);
- ``2x1``: two data-parallel processes of 1 thread each (``[train] processes = 2``, gradients all-reduced
  every step; ``supernet/parallel.py``).

canvases/s is the trainer's own training-time rate (the epoch's ``canvases_per_s``: steps only, not the
processes' start or the final evaluation). Measured side by side: ``--rounds`` rounds, each runs every setting
once in a fresh random order, so a machine that changes speed affects every setting alike; a setting's ratio to
``1x2`` is the median over rounds of the per-round ratios. Writes bench/results/train_parallel.json and prints a
one-line summary (``--json``: the JSON object).

Usage: python bench/train_parallel.py [--rounds 3] [--canvases 384] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._result import write_result  # noqa: E402

SETTINGS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 2)}  # name: (processes, threads in all)


def main(argv=None) -> dict:
    import numpy as np

    from supernet.train import load_train_spec, train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--canvases", type=int, default=384, help="canvases of the one timed epoch (batch 16)")
    p.add_argument("--spec", default=str(ROOT / "experiments/fashion_mosaic/task_quick.toml"))
    p.add_argument("--out", default=str(ROOT / "bench/results/train_parallel.json"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    base = load_train_spec(a.spec)
    rates = {k: [] for k in SETTINGS}
    rng = np.random.default_rng(0)
    names = list(SETTINGS)
    with tempfile.TemporaryDirectory(prefix="train-parallel-") as tmp:
        for r in range(a.rounds):
            for i in rng.permutation(len(names)):
                name = names[i]
                procs, threads = SETTINGS[name]
                cfg = base.model_copy(update={
                    "data": base.data.model_copy(update={"train_length": a.canvases, "val_length": 16}),
                    "train": base.train.model_copy(update={"dense_epochs": 1, "adapt_epochs": 0, "processes": procs,
                                                           "threads": threads, "val_each_epoch": False,
                                                           "eval_ratios": [0.5]}),
                    "output": base.output.model_copy(update={"checkpoint": Path(tmp) / f"{name}_{r}.safetensors"})})
                train(cfg, progress=False)
                meta = json.loads((Path(tmp) / f"{name}_{r}.json").read_text())
                rates[name].append(float(meta["training"]["history"][0]["canvases_per_s"]))
                if not a.json:
                    print(f"round {r + 1}: {name} {rates[name][-1]:.1f} canvases/s", flush=True)
    out = {"benchmark": "train_parallel", "spec": str(Path(a.spec).relative_to(ROOT)) if Path(a.spec).is_relative_to(ROOT)
           else a.spec, "canvases": a.canvases, "rounds": a.rounds, "settings": {}}
    for name, (procs, threads) in SETTINGS.items():
        ratio = statistics.median(x / b for x, b in zip(rates[name], rates["1x2"]))
        out["settings"][name] = {"processes": procs, "threads": threads,
                                 "canvases_per_s": statistics.median(rates[name]), "ratio_to_1x2": ratio,
                                 "samples": rates[name]}
    s = out["settings"]
    out["summary"] = (f"train_parallel: quick recipe, canvases/s relative to 1 process x 2 threads "
                      f"({s['1x2']['canvases_per_s']:.1f}): 2 processes x 1 thread {s['2x1']['ratio_to_1x2']:.2f}x, "
                      f"1 process x 1 thread {s['1x1']['ratio_to_1x2']:.2f}x (median of {a.rounds} side-by-side rounds)")
    write_result(out, a.out, a.json)
    return out


if __name__ == "__main__":
    main()
