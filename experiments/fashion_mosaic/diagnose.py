"""Why does the segmentation model learn the ten classes so slowly? Controlled probes at equal wall time.

Each probe trains a task model from scratch for ``--seconds`` of wall-clock (model, data and loss
changed one lever at a time from the ``base`` probe), with a learning-rate schedule driven by the
elapsed fraction of the budget (linear warm-up, then cosine), so every probe gets the same time
whatever its speed. Then it scores the dense model on ``--val`` validation canvases of the default
224 px FashionMosaic: mIoU, item-pixel class accuracy (item pixels predicted as their own class),
item-pixel recall (item pixels predicted as *some* item), pixel accuracy, and the training speed.

    python experiments/fashion_mosaic/diagnose.py base lr2 ... --seconds 300 --threads 1
    python experiments/fashion_mosaic/diagnose.py --list

Rows are appended to ``results/diagnosis.jsonl`` (one JSON object per probe); ``--table`` prints the
markdown table of that file.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from supernet.data import FashionMosaic, MosaicSpec, make_loader  # noqa: E402
from supernet.evaluate import DEFAULT_VAL_SEED  # noqa: E402
from supernet.metrics import SegMetric, item_class_accuracy, item_recall  # noqa: E402
from supernet.seg import SegSupernet  # noqa: E402
from supernet.train import make_optimizer  # noqa: E402
from supernet.losses import seg_loss  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "diagnosis.jsonl"

BASE: Dict[str, Any] = dict(
    embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), head_dim=64, head="fpn",
    img_size=224, min_items=1, max_items=8, min_scale=28, max_scale=112,
    batch=8, lr=1e-3, wd=0.05, warmup=0.03, clip=1.0,
    loss="ce", bg_weight=1.0, aux_weight=0.0, loss_res="full",
    bf16=False, compile=False, channels_last=False,
)

#: One lever per probe (overrides of BASE).
PROBES: Dict[str, Dict[str, Any]] = {
    "base": {},
    "lr2": dict(lr=2e-3),
    "lr4": dict(lr=4e-3),
    "lr05": dict(lr=5e-4),
    "batch16": dict(batch=16),
    "batch4": dict(batch=4),
    "bf16": dict(bf16=True),
    "lossq": dict(loss_res="quarter"),
    "bg025": dict(bg_weight=0.25),
    "itemw": dict(loss="item"),
    "aux": dict(aux_weight=1.0),
    "stagenorm": dict(head="fpn_norm"),
    "head_s1": dict(head="fpn_s1"),
    "w24": dict(embed_dim=24, num_heads=(1, 2, 4, 8)),
    "w16": dict(embed_dim=16, num_heads=(1, 2, 4, 8)),
    "c112": dict(img_size=112, min_items=1, max_items=3),
    "dense_items": dict(min_items=6, max_items=12),
    "small_items": dict(min_scale=28, max_scale=56),
    "itemaux": dict(loss="item", aux_weight=1.0),
    "fast": dict(bf16=True, loss_res="quarter"),
    "fast_itemw": dict(bf16=True, loss_res="quarter", loss="item"),
}


def build(p: Dict[str, Any]) -> SegSupernet:
    from supernet.seg import FPNLiteHead  # noqa: F401

    model = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=224, num_classes=11,
                                  head_dim=p["head_dim"], embed_dim=p["embed_dim"], depths=tuple(p["depths"]),
                                  num_heads=tuple(p["num_heads"]), window_size=7, drop_path_rate=0.0,
                                  strict_img_size=False, head_norm=p["head"] == "fpn_norm",
                                  head_first_stage=1 if p["head"] == "fpn_s1" else 0)
    return model


def lr_factor(frac: float, warm: float) -> float:
    if frac < warm:
        return max(frac / warm, 1e-3)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (frac - warm) / (1.0 - warm))))


def evaluate(model: SegSupernet, n: int, batch: int = 16) -> Dict[str, float]:
    loader = make_loader("val", length=n, batch_size=batch, spec=MosaicSpec(img_size=224), seed=DEFAULT_VAL_SEED)
    metric = SegMetric(11)
    model.eval()
    with torch.inference_mode():
        for x, y in loader:
            metric.update(model(x), y)
    model.train()
    out = metric.compute()
    return {"miou": out["miou"], "pixel_acc": out["pixel_acc"], "item_class_acc": item_class_accuracy(metric.cm),
            "item_recall": item_recall(metric.cm), "per_class_iou": out["per_class_iou"]}


def analyze(model: SegSupernet, n: int = 64, img_size: int = 224) -> Dict[str, Any]:
    """Where the class errors are: item-pixel class accuracy by item size, and per-item majority vote.

    For each visible item of ``n`` val canvases (pixels of its mask not covered by later items):
    ``pixel_acc_by_size`` = item pixels predicted as the item's class, in three size buckets (px);
    ``majority_acc`` = items whose most frequent predicted class (over their pixels) is right. A majority
    accuracy far above the pixel accuracy means the per-pixel evidence is noisy but item-level evidence
    exists (a context / aggregation problem); equal values mean the model does not know the classes.
    """
    ds = FashionMosaic("val", length=n, spec=MosaicSpec(img_size=img_size), seed=DEFAULT_VAL_SEED)
    buckets = {"28-55": [0, 0], "56-83": [0, 0], "84-112": [0, 0]}
    maj = [0, 0]
    model.eval()
    with torch.inference_mode():
        for i in range(n):
            x, y, items = ds.generate(i, return_items=True)
            pred = model(x[None]).argmax(1)[0]
            for it in items:
                box = y[it.y:it.y + it.size, it.x:it.x + it.size]
                vis = torch.from_numpy(it.mask) & (box == it.cls + 1)
                if int(vis.sum()) == 0:
                    continue
                p = pred[it.y:it.y + it.size, it.x:it.x + it.size][vis]
                b = "28-55" if it.size < 56 else ("56-83" if it.size < 84 else "84-112")
                buckets[b][0] += int((p == it.cls + 1).sum())
                buckets[b][1] += int(p.numel())
                maj[0] += int(torch.bincount(p, minlength=11).argmax() == it.cls + 1)
                maj[1] += 1
    model.train()
    return {"pixel_acc_by_size": {k: (a / b if b else float("nan")) for k, (a, b) in buckets.items()},
            "majority_acc": maj[0] / max(1, maj[1]), "items": maj[1]}


def _item_features(model: SegSupernet, split: str, n: int, seed: int):
    """Per visible item: each stage's features averaged over the item's pixels -> ([items, sum C], [items])."""
    ds = FashionMosaic(split, length=n, spec=MosaicSpec(img_size=224), seed=seed)
    feats, labels = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(n):
            x, y, items = ds.generate(i, return_items=True)
            stages = model.backbone.forward_stages(x[None])
            for it in items:
                box = y[it.y:it.y + it.size, it.x:it.x + it.size]
                vis = torch.zeros(224, 224)
                vis[it.y:it.y + it.size, it.x:it.x + it.size] = (torch.from_numpy(it.mask) & (box == it.cls + 1)).float()
                if vis.sum() < 16:
                    continue
                row = []
                for f in stages:
                    w = F.adaptive_avg_pool2d(vis[None, None], f.shape[-2:])[0, 0]
                    row.append((f[0] * w).sum((1, 2)) / w.sum().clamp_min(1e-6))
                feats.append(torch.cat(row))
                labels.append(it.cls)
    model.train()
    return torch.stack(feats), torch.tensor(labels)


def linear_probe(model: SegSupernet, n_train: int = 400, n_val: int = 128) -> Dict[str, float]:
    """Does the backbone know the classes? A linear classifier on item-pooled stage features (frozen model).

    Trained on the items of ``n_train`` train canvases (full-batch Adam, 300 steps, standardised features),
    scored on the items of ``n_val`` val canvases: per stage subset. Far above the model's own item-pixel
    class accuracy -> the class evidence exists in the backbone but the segmentation head does not read it.
    """
    xtr, ytr = _item_features(model, "train", n_train, 777)
    xva, yva = _item_features(model, "val", n_val, DEFAULT_VAL_SEED)
    dims = [m.dim for m in [stage.blocks[0] for stage in model.backbone.layers]]
    edges = np.cumsum([0] + dims)
    out = {}
    for name, sel in (("all", slice(0, edges[-1])), ("stage2+3", slice(edges[2], edges[-1])),
                      ("stage3", slice(edges[3], edges[4])), ("stage0+1", slice(0, edges[2]))):
        a, b = xtr[:, sel], xva[:, sel]
        mu, sd = a.mean(0), a.std(0) + 1e-6
        a, b = (a - mu) / sd, (b - mu) / sd
        torch.manual_seed(0)
        lin = torch.nn.Linear(a.shape[1], 10)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(lin(a), ytr).backward()
            opt.step()
        with torch.no_grad():
            out[name] = float((lin(b).argmax(1) == yva).float().mean())
    out["items_train"], out["items_val"] = int(len(ytr)), int(len(yva))
    return out


def run_probe(name: str, seconds: float, threads: int, val: int, seed: int,
              budget_canvases: int = 0, save_dir: Path | None = None) -> Dict[str, Any]:
    p = {**BASE, **PROBES[name]}
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build(p)
    opt = make_optimizer(model, p["wd"])
    spec = MosaicSpec(img_size=p["img_size"], min_items=p["min_items"], max_items=p["max_items"],
                      min_scale=p["min_scale"], max_scale=min(p["max_scale"], p["img_size"]))
    ds = FashionMosaic("train", length=10_000_000, spec=spec, seed=seed)
    step_fn = model
    if p["compile"]:
        step_fn = torch.compile(model)
    t0 = time.perf_counter()
    steps = canvases = items = 0
    losses = []
    i = 0
    while True:
        el = time.perf_counter() - t0
        frac = canvases / budget_canvases if budget_canvases else el / seconds
        if frac >= 1.0:
            break
        lr = p["lr"] * lr_factor(frac, p["warmup"])
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [ds[j] for j in range(i, i + p["batch"])]
        i += p["batch"]
        x = torch.stack([b[0] for b in batch])
        y = torch.stack([b[1] for b in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p["bf16"]):
            loss = seg_loss(step_fn, x, y, kind=p["loss"], bg_weight=p["bg_weight"], aux_weight=p["aux_weight"],
                            at=p["loss_res"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if p["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), p["clip"])
        opt.step()
        steps += 1
        canvases += x.shape[0]
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    res = evaluate(model, val)
    res["analysis"] = analyze(model, 64)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), save_dir / f"{name}_s{seed}.pt")
    row = {"probe": name, "overrides": PROBES[name], "seconds": train_s, "budget": (
               f"{budget_canvases} canvases" if budget_canvases else f"{seconds:.0f} s"), "threads": threads, "seed": seed,
           "steps": steps, "canvases": canvases, "canvases_per_s": canvases / train_s,
           "final_loss": float(np.mean(losses[-20:])), "val": val, **res}
    return row


def read_rows(path: Path = OUT) -> list:
    """The recorded probe rows of ``path`` (JSON lines, one per probe run)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(path: Path = OUT) -> str:
    rows = read_rows(path)
    lines = ["| probe | lever | budget | threads | seed | canvases/s | dense mIoU | item-pixel class acc | item recall | pixel acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lev = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(f"| {r['probe']} | {lev} | {r.get('budget', r['seconds'])} | {r['threads']} | {r['seed']} | "
                     f"{r['canvases_per_s']:.1f} | {r['miou']:.3f} | {r['item_class_acc']:.3f} | "
                     f"{r['item_recall']:.3f} | {r['pixel_acc']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probes", nargs="*")
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--canvases", type=int, default=0,
                    help="budget in training canvases instead of seconds (the schedule follows the canvas count)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--save", type=Path, default=None, help="folder for the trained probes' state_dicts (.pt)")
    ap.add_argument("--linear-probe", type=Path, nargs="*", default=None,
                    help="saved probe state_dicts (.pt) to analyse with a linear probe of item-pooled features")
    ap.add_argument("--json", action="store_true",
                    help="one JSON object on stdout: {\"rows\": [...]} of the probes or models run, "
                         "{\"file\", \"rows\"} with --table, {\"probes\"} with --list")
    args = ap.parse_args(argv)
    if args.list:
        print(json.dumps({"probes": PROBES}) if args.json else "\n".join(f"{k} {v}" for k, v in PROBES.items()))
        return 0
    if args.table:
        print(json.dumps({"file": str(args.out), "rows": read_rows(args.out)}) if args.json else table(args.out))
        return 0
    rows = []
    if args.linear_probe:
        torch.set_num_threads(args.threads)
        for path in args.linear_probe:
            name = path.stem.rsplit("_s", 1)[0]
            model = build({**BASE, **PROBES.get(name, {})})
            model.load_state_dict(torch.load(path, weights_only=True))
            rows.append({"model": str(path), **linear_probe(model), **analyze(model, 64)})
            if not args.json:  # one line per model as it finishes
                print(json.dumps(rows[-1]), flush=True)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.probes:
            row = run_probe(name, args.seconds, args.threads, args.val, args.seed, args.canvases, args.save)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append({k: v for k, v in row.items() if k != "per_class_iou"})
            if not args.json:  # one line per probe as it finishes (hours in all)
                print(f"{name}: dense mIoU {row['miou']:.3f}, item-pixel class acc {row['item_class_acc']:.3f}, "
                      f"pixel acc {row['pixel_acc']:.3f}, {row['canvases_per_s']:.1f} canvases/s", flush=True)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
