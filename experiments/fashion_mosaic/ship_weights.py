"""Export the trained task model and its SparseViT supernet as the project's shipped weights.

    python experiments/fashion_mosaic/ship_weights.py \
        --dense runs/task/dense.safetensors --supernet runs/task/supernet.safetensors

writes ``experiments/fashion_mosaic/weights/{dense,supernet}.safetensors`` (float16 storage; loading gives
float32) with their sidecars, re-measured on the stored weights:

- ``metrics.dense`` / ``metrics.uniform``: mIoU, pixel accuracy, item-pixel class accuracy on 256 val canvases
  of the default 224 px task (uniform 0.3 / 0.5 / 0.7 on stages 0-2, with retention);
- ``metrics.scene``: the same at the search resolution on the sparse-scene canvases the main job searches
  (supernet only);
- ``metrics.check``: mIoU on the first 16 val canvases, which ``tests/test_shipped_weights.py`` reproduces;
- ``training.shipped``: the command that reproduces the weights, their sha256, the compute they took
  (training seconds, canvases, threads, machine) from the training sidecars.

``--dense experiments/fashion_mosaic/weights/dense.safetensors`` keeps the shipped dense model as it is and
exports the supernet alone (adapted from a copy of that file in ``runs/task/``, as its command says).

``weights/SHA256SUMS`` lists both files (``sha256sum -c`` format).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OUT = Path(__file__).resolve().parent / "weights"
OUT_REL = OUT.relative_to(ROOT).as_posix()  # as the reproducing commands spell it
RECIPES = {"dense": "experiments/fashion_mosaic/task_dense.toml",
           "supernet": "experiments/fashion_mosaic/task_supernet.toml",
           "supernet_long": "experiments/fashion_mosaic/task_supernet_long.toml"}
#: task_supernet_long.toml continues task_supernet.toml's output from this file
LONG_INIT = "supernet24.safetensors"
CHECK_CANVASES = 16


def measure(path: Path, scene_size: int | None, length: int, threads: int) -> dict:
    """Metrics of a shipped checkpoint on its stored (float16-rounded) weights."""
    import torch

    from supernet.checkpoint import load_checkpoint
    from supernet.data import MosaicSpec
    from supernet.evaluate import DEFAULT_VAL_SEED, evaluate_config, reference_table

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(path, img_size=224)  # the supernet's sidecar says 448: the weights fit both
    out = reference_table(model, length=length, batch_size=16, spec=MosaicSpec(img_size=224), seed=DEFAULT_VAL_SEED)
    out["check"] = {"canvases": CHECK_CANVASES, "seed": DEFAULT_VAL_SEED, "img_size": 224,
                    **evaluate_config(model, None, length=CHECK_CANVASES, batch_size=8, spec=MosaicSpec(img_size=224))}
    if scene_size:
        big, _ = load_checkpoint(path, img_size=scene_size)
        out["scene"] = reference_table(big, length=length, batch_size=8,
                                       spec=MosaicSpec.from_dataset(meta.get("dataset"), scene_size),
                                       seed=DEFAULT_VAL_SEED)
    return out


def main() -> int:
    from supernet.checkpoint import export_checkpoint, read_sidecar
    from supernet.fileio import atomic_write_text, sha256_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=Path, required=True)
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--length", type=int, default=256, help="val canvases of the recorded metrics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    report = {}
    sums = []
    commands = {}
    keep_dense = a.dense.resolve() == (a.out / "dense.safetensors").resolve()
    for name, src in (("dense", a.dense), ("supernet", a.supernet)):
        meta = read_sidecar(src)
        if name == "dense" and keep_dense:  # the shipped dense model stays as it is (the supernet recipe starts from it)
            commands[name] = meta["training"]["shipped"]["command"]
            sha = sha256_file(src)
            sums.append(f"{sha}  {src.name}")
            report[name] = {"file": str(src), "sha256": sha, "bytes": src.stat().st_size, "kept": True,
                            "dense": meta["metrics"]["dense"], "check": meta["metrics"]["check"], "scene": None}
            continue
        tr = meta.get("training") or {}
        hist = tr.get("history") or []
        compute = {"train_seconds": float(sum(h.get("seconds", 0.0) for h in hist)),
                   "canvases": int(sum(h.get("canvases", 0) for h in hist)),
                   "threads": (tr.get("config") or {}).get("train", {}).get("threads"),
                   "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                   "source_sha256": meta["weights_sha256"], "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        init = ((tr.get("config") or {}).get("model") or {}).get("init") or ""
        long = name == "supernet" and Path(init).name == LONG_INIT
        if long:  # task_supernet_long.toml: its compute includes the first adaptation run's (the init's sidecar)
            first_meta = read_sidecar(Path(init))
            fh = (first_meta.get("training") or {}).get("history") or []
            compute["first_adapt_train_seconds"] = float(sum(h.get("seconds", 0.0) for h in fh))
            compute["first_adapt_canvases"] = int(sum(h.get("canvases", 0) for h in fh))
        if name == "supernet":  # the supernet continues the dense model: its compute includes the dense run's
            dense_meta = read_sidecar(a.dense)
            dh = (dense_meta.get("training") or {}).get("history") or []
            compute["dense_train_seconds"] = float(sum(h.get("seconds", 0.0) for h in dh))
            compute["dense_canvases"] = int(sum(h.get("canvases", 0) for h in dh))
        dst = a.out / f"{name}.safetensors"
        recipe = RECIPES["supernet_long" if long else name]
        command = f"sparsesearch supernet train {recipe} --resume"
        if not tr.get("complete", True):  # a checkpoint part-way through the recipe: the epoch it stopped at
            command += f" --stop-after {tr['epoch']}"
        compute["epochs"] = f"{tr.get('epoch')}/{tr.get('epochs')}"
        if name == "supernet":  # from the dense checkpoint shipped beside it: train that first, or copy it
            first = (f"mkdir -p runs/task && cp {OUT_REL}/dense.safetensors {OUT_REL}/dense.json runs/task/"
                     if keep_dense else commands["dense"])
            if long:  # adapt 24 epochs, keep that as the continuation's init, adapt 24 more
                command = (f"sparsesearch supernet train {RECIPES['supernet']} --resume && "
                           f"cp runs/task/supernet.safetensors runs/task/{LONG_INIT} && "
                           f"cp runs/task/supernet.json runs/task/{LONG_INIT.replace('.safetensors', '.json')} && {command}")
            command = f"{first} && {command}"
        commands[name] = command
        shipped = {"recipe": recipe, "command": command,
                   "export": f"python experiments/fashion_mosaic/ship_weights.py --dense {a.dense} --supernet {a.supernet}",
                   "compute": compute}
        if name == "supernet" and keep_dense:
            shipped["init"] = {"file": "weights/dense.safetensors", "command": commands["dense"]}
        export_checkpoint(src, dst, storage_dtype="float16", extra={"shipped": shipped})
        scene = None
        if name == "supernet":
            ds = meta.get("dataset") or {}
            scene = int(ds.get("img_size") or meta.get("img_size"))
        metrics = measure(dst, scene, a.length, a.threads)
        metrics["train_source"] = meta.get("metrics")
        export_checkpoint(src, dst, storage_dtype="float16", metrics=metrics, extra={"shipped": shipped})
        sha = sha256_file(dst)
        sums.append(f"{sha}  {dst.name}")
        report[name] = {"file": str(dst), "sha256": sha, "bytes": dst.stat().st_size,
                        "dense": metrics["dense"], "check": metrics["check"], "scene": metrics.get("scene")}
    atomic_write_text(a.out / "SHA256SUMS", "\n".join(sums) + "\n")
    print(json.dumps(report, indent=None if a.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
