"""Evaluation noise of a retention claim: configs and the dense model on several disjoint canvas sets, paired.

A front member's retention (its mIoU / the dense model's, on the same canvases) is measured on one set of
validation canvases; this script repeats the paired measurement on ``--seeds`` other sets of ``--length``
canvases at the search's resolution and scene layout, and reports each set's retention, their mean and standard
deviation, and the dense mIoU's spread across sets. With ``--latency`` it also measures every config's
end-to-end latency in the same run, drift-corrected against the dense supernet as the profiler does
(:func:`latency.profiler.measure_drift`, batch 1, ``--threads``), so "retention R at latency L of dense" comes
from one command. With ``--against Y.safetensors`` another dense model (e.g. the narrower baseline) is scored on the
same canvases of every set, and each config's paired margin over it (config mIoU - its mIoU) is reported with its
spread; ``--against-scale F`` does the same for the checkpoint itself on canvases downscaled by ``F`` (the reduced-
resolution baseline of ``baselines.py``, and with ``--finetune-steps N`` also its fine-tuned version). Both repeat.
Used for the 99 % target and the narrower-model and reduced-resolution comparisons of RESULTS.md R2.

Usage:
    python experiments/fashion_mosaic/retention_noise.py --exp runs/main/search \
        --checkpoint runs/main/supernet.safetensors --config '[[.8,.8],[.6,.6],[.2,.2,.4,.4,.4,.4],[.3,.3]]' \
        [--config ANOTHER ...] [--seeds 1001 2002 3003 4004] [--length 256] [--threads 2] [--latency] \
        [--repeats 11] [--against Y.safetensors ...] [--against-scale 0.625 ...] [--finetune-steps 150] \
        [--out results/retention_noise.json] [--json]

One ``--config`` writes the recorded layout (``config``, ``runs``, ``retention_mean``, ...); several write
``{"configs": [that layout per config], ...}``. Margins: ``margins`` (``{label: {"mean", "std"}}``) and each run's
``against_mious`` / ``margins`` cover every reference; ``against`` / ``margin_mean`` / ``margin_std`` and each run's
``against_miou`` / ``margin`` are the first reference's (the earlier layout).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def parse_config(text: str, parser: argparse.ArgumentParser) -> list:
    """A ``--config`` value: per-stage ratio lists as JSON or a Python literal (``[[.8,.8],...]``, as the usage
    spells it); anything else is an argparse error (one line, exit 2)."""
    import ast

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parser.error(f"--config {text!r} is not a list of per-stage ratio lists, e.g. [[.8,.8],[.6,.6],[.5]*6,[.3,.3]] "
                         "written out: [[0.8,0.8],[0.6,0.6],[0.5,0.5,0.5,0.5,0.5,0.5],[0.3,0.3]]")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", required=True, help="the search's experiment directory (resolution, scene layout)")
    p.add_argument("--checkpoint", required=True, help="the supernet X.safetensors")
    p.add_argument("--config", required=True, action="append",
                   help="per-stage ratios as JSON, e.g. [[.8,.8],[.6,.6],[.2,.2,.2,.2,.2,.2],[.3,.3]] (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1001, 2002, 3003, 4004])
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency", action="store_true", help="also measure each config's latency / dense, drift-corrected")
    p.add_argument("--repeats", type=int, default=11, help="timed runs per config with --latency")
    p.add_argument("--against", action="append", default=[], metavar="Y.safetensors",
                   help="another dense model scored on the same canvases: each config's paired margin over it")
    p.add_argument("--against-scale", action="append", type=float, default=[], metavar="F",
                   help="the checkpoint itself on canvases downscaled by F (reduced resolution), as a reference")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="with --against-scale: also the reduced-resolution model fine-tuned this many steps")
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.finetune_steps < 0 or (a.finetune_steps and not a.against_scale):
        p.error(f"--finetune-steps {a.finetune_steps}: a number of steps >= 0, with --against-scale")
    bad = [f for f in a.against_scale if not 0 < f <= 1]
    if bad:
        p.error(f"--against-scale {bad[0]:g}: a downscale factor in (0, 1], e.g. 0.625")
    from collections import Counter

    repeated = [x for x, n in Counter(a.against + [str(f) for f in a.against_scale]).items() if n > 1]
    if repeated:
        p.error(f"--against / --against-scale {repeated[0]} given twice; pass each reference once")

    import numpy as np
    import torch

    from search.evaluators import mosaic_spec
    from search.runner import load_frozen_spec
    from supernet.checkpoint import CheckpointError, load_checkpoint
    from supernet.evaluate import evaluate_config
    from supernet.fileio import atomic_write_json

    torch.set_num_threads(a.threads)
    frozen, sspec = load_frozen_spec(Path(a.exp))
    img = int(frozen["search_img_size"][0])
    configs = [parse_config(c, p) for c in a.config]
    from experiments.fashion_mosaic.baselines import finetune, reduced_resolution, reduced_size

    for f in a.against_scale:  # before anything is loaded or fine-tuned
        if reduced_size(img, f) < 8:
            p.error(f"--against-scale {f:g} leaves less than 8 px of a {img} px canvas; fix: a factor >= {8 / img:.3f}")
    try:  # a missing or mismatched file is one argparse line (exit 2), not a traceback
        model, meta = load_checkpoint(a.checkpoint, img_size=img)
        others = [(str(y), load_checkpoint(y, img_size=img)[0]) for y in a.against]
    except CheckpointError as e:
        p.error(str(e))
    spec = mosaic_spec(meta, img, dict(sspec.evaluator.mosaic))
    if a.against_scale:
        for f in a.against_scale:
            size = reduced_size(img, f)
            others.append((f"{size} px input ({f:g}x)", reduced_resolution(Path(a.checkpoint), img, size)))
            if a.finetune_steps > 0:
                ft = finetune(reduced_resolution(Path(a.checkpoint), img, size), spec, a.finetune_steps, a.threads)
                others.append((f"{size} px input ({f:g}x), fine-tuned {a.finetune_steps} steps", ft))
    dense_runs = {}
    per = [[] for _ in configs]
    for seed in a.seeds:
        d = dense_runs[seed] = evaluate_config(model, None, length=a.length, batch_size=8, spec=spec, seed=seed)["miou"]
        ref = {name: evaluate_config(o, None, length=a.length, batch_size=8, spec=spec, seed=seed)["miou"]
               for name, o in others}
        for i, config in enumerate(configs):
            s = evaluate_config(model, config, length=a.length, batch_size=8, spec=spec, seed=seed)["miou"]
            run = {"seed": seed, "dense_miou": d, "config_miou": s, "retention": s / d}
            if ref:
                o = next(iter(ref.values()))
                run.update(against_miou=o, margin=s - o, against_mious=ref,
                           margins={name: s - v for name, v in ref.items()})
            per[i].append(run)
            if not a.json:
                vs = "".join(f"  {name} {v:.4f} margin {s - v:+.4f}" for name, v in ref.items())
                print(f"seed {seed}: dense {d:.4f}  config {i} {s:.4f}  retention {s / d:.4f}{vs}", flush=True)
    dm = np.array(list(dense_runs.values()))
    results = []
    for config, runs in zip(configs, per):
        r = np.array([x["retention"] for x in runs])
        results.append({"config": config, "img_size": img, "length": a.length, "runs": runs,
                        "retention_mean": float(r.mean()), "retention_std": float(r.std(ddof=1)) if len(r) > 1 else 0.0,
                        "dense_miou_std": float(dm.std(ddof=1)) if len(dm) > 1 else 0.0})
        if others:
            margins = {}
            for name, _ in others:
                m = np.array([x["margins"][name] for x in runs])
                margins[name] = {"mean": float(m.mean()), "std": float(m.std(ddof=1)) if len(m) > 1 else 0.0}
            first = others[0][0]
            results[-1].update(against=first, margin_mean=margins[first]["mean"], margin_std=margins[first]["std"],
                               margins=margins)
    if a.latency:
        from latency.profiler import _make_input, measure_drift

        x = _make_input(1, (img, img), 0, torch.device("cpu"), torch.float32)
        dense_cfg = [[0.0] * d for d in model.depths]
        model.eval()
        with torch.inference_mode():
            meas = measure_drift([((lambda c=c: model.set_sparsity(c)), (lambda: model(x))) for c in configs],
                                 (lambda: model.set_sparsity(dense_cfg), lambda: model(x)), warmup=3,
                                 repeats=a.repeats, progress=not a.json, desc="latency")
        for res, ms, ratio in zip(results, meas.ms, meas.ratio):
            res.update(measured_ms=float(ms), latency_ratio=float(ratio), threads=a.threads, repeats=a.repeats)
    out = results[0] if len(results) == 1 else {"configs": results, "img_size": img, "length": a.length,
                                                 "seeds": list(a.seeds)}
    if a.out:
        atomic_write_json(Path(a.out), out)
    if a.json:
        print(json.dumps(out))
    else:
        for i, res in enumerate(results):
            lat = f", latency {res['latency_ratio']:.3f} of dense" if "latency_ratio" in res else ""
            print(f"config {i} {json.dumps(res['config'])}: retention {res['retention_mean']:.4f} +- "
                  f"{res['retention_std']:.4f} (std over {len(a.seeds)} sets of {a.length} canvases){lat}; "
                  f"dense mIoU std across sets {res['dense_miou_std']:.4f}")
            for name, m in res.get("margins", {}).items():
                print(f"config {i}: margin over {name} {m['mean']:+.4f} +- {m['std']:.4f}")
    return out


if __name__ == "__main__":
    main()
