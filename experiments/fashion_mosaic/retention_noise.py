"""Evaluation noise of a retention claim: one config and the dense model on several disjoint canvas sets, paired.

A front member's retention (its mIoU / the dense model's, on the same canvases) is measured on one set of
validation canvases; this script repeats the paired measurement on ``--seeds`` other sets of ``--length``
canvases at the search's resolution and scene layout, and reports each set's retention, their mean and standard
deviation, and the dense mIoU's spread across sets. Used for the 99 % target of RESULTS.md R2.

Usage:
    python experiments/fashion_mosaic/retention_noise.py --exp runs/main/search \
        --checkpoint runs/main/supernet.safetensors --config '[[.8,.8],[.6,.6],[.2,.2,.4,.4,.4,.4],[.3,.3]]' \
        [--seeds 1001 2002 3003 4004] [--length 256] [--threads 2] [--out results/retention_noise.json] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", required=True, help="the search's experiment directory (resolution, scene layout)")
    p.add_argument("--checkpoint", required=True, help="the supernet X.safetensors")
    p.add_argument("--config", required=True, help="per-stage ratios as JSON, e.g. [[.8,.8],[.6,.6],[.2]*6,[.3,.3]]")
    p.add_argument("--seeds", type=int, nargs="+", default=[1001, 2002, 3003, 4004])
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from search.evaluators import mosaic_spec
    from search.runner import load_frozen_spec
    from supernet.checkpoint import load_checkpoint
    from supernet.evaluate import evaluate_config
    from supernet.fileio import atomic_write_json

    torch.set_num_threads(a.threads)
    frozen, sspec = load_frozen_spec(Path(a.exp))
    img = int(frozen["search_img_size"][0])
    model, meta = load_checkpoint(a.checkpoint, img_size=img)
    spec = mosaic_spec(meta, img, dict(sspec.evaluator.mosaic))
    config = json.loads(a.config)
    runs = []
    for seed in a.seeds:
        d = evaluate_config(model, None, length=a.length, batch_size=8, spec=spec, seed=seed)["miou"]
        s = evaluate_config(model, config, length=a.length, batch_size=8, spec=spec, seed=seed)["miou"]
        runs.append({"seed": seed, "dense_miou": d, "config_miou": s, "retention": s / d})
        if not a.json:
            print(f"seed {seed}: dense {d:.4f}  config {s:.4f}  retention {s / d:.4f}", flush=True)
    r = np.array([x["retention"] for x in runs])
    dm = np.array([x["dense_miou"] for x in runs])
    out = {"config": config, "img_size": img, "length": a.length, "runs": runs,
           "retention_mean": float(r.mean()), "retention_std": float(r.std(ddof=1)) if len(r) > 1 else 0.0,
           "dense_miou_std": float(dm.std(ddof=1)) if len(dm) > 1 else 0.0}
    if a.out:
        atomic_write_json(Path(a.out), out)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"retention {out['retention_mean']:.4f} +- {out['retention_std']:.4f} (std over {len(r)} sets of "
              f"{a.length} canvases); dense mIoU std across sets {out['dense_miou_std']:.4f}")
    return out


if __name__ == "__main__":
    main()
