"""Export the trained task model and its SparseViT supernet as the project's shipped weights.

    python experiments/fashion_mosaic/ship_weights.py --dense runs/task/dense_c3.safetensors \
        --dense-recipe experiments/fashion_mosaic/task_dense_cycle3.toml --supernet runs/task/supernet48.safetensors

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

A dense model trained in several runs (``task_dense.toml`` stopped at an epoch and exported, then recipes whose
``[model] init`` is the previous run's export: ``task_dense_cycle2.toml``, ``task_dense_cycle3.toml``) ships as the
whole chain: ``--dense-recipe`` names the last recipe; the chain is walked back through each ``[model] init``, whose
sidecar says (by its training fingerprint) which ``task_dense*.toml`` made it, at which epoch, with what compute.
``compute`` holds this run's ``train_seconds`` / ``canvases``, the earlier runs' (``earlier``: one entry per run,
oldest first; ``first_adapt_*``, ``dense_*`` for the supernet) and ``total_train_seconds`` / ``total_canvases``:
everything from scratch. Every sidecar and recipe is checked (the run
was made by the recipe it is shipped under; the supernet was adapted from this dense model, where its starting
file is still there) before anything is written; a mismatch is one ``sparsesearch: error:`` line, exit 2.

``--supernet672 runs/task/supernet672.safetensors`` (alone) ships the 672 px supernet of the 672 px main job
(``task_supernet_672.toml``: the shipped supernet adapted further on 672 px scenes) as ``supernet672.safetensors``,
keeping the other two files; its ``metrics.scene`` is measured at 672 px.

``weights/SHA256SUMS`` lists every shipped file (``sha256sum -c`` format); an export replaces its own lines only.
"""
from __future__ import annotations

import argparse
import json
import os
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
           "supernet_long": "experiments/fashion_mosaic/task_supernet_long.toml",
           "supernet672": "experiments/fashion_mosaic/task_supernet_672.toml"}
#: the shipped files, in SHA256SUMS order
SHIPPED = ("dense", "supernet", "supernet672")
#: the recipes a dense chain's earlier runs are looked up among (by training fingerprint)
DENSE_CHAIN_GLOB = "experiments/fashion_mosaic/task_dense*.toml"
#: task_supernet_long.toml continues task_supernet.toml's output from this file
LONG_INIT = "supernet24.safetensors"
CHECK_CANVASES = 16


class ShipError(Exception):
    """A shipping input that does not fit (a recipe, a sidecar, a path): one error line, exit 2, nothing written."""


def rel(path: Path | str) -> str:
    """``path`` as the reproducing commands spell it: relative to the repository root (symlinks kept)."""
    r = os.path.relpath(os.path.abspath(path), ROOT)
    if r.startswith(".."):
        raise ShipError(f"{path} is outside the repository; fix: keep the training files under runs/")
    return Path(r).as_posix()


def history_compute(meta: dict) -> tuple[float, int]:
    """(training seconds, canvases) summed over a sidecar's per-epoch history."""
    hist = (meta.get("training") or {}).get("history") or []
    return float(sum(h.get("seconds", 0.0) for h in hist)), int(sum(h.get("canvases", 0) for h in hist))


def run_compute(meta: dict, training: dict) -> dict:
    """The compute record of one training run: its seconds and canvases (per-epoch history), epochs, threads, the
    trained file's sha256, and where and when it is exported."""
    seconds, canvases = history_compute(meta)
    return {"train_seconds": seconds, "canvases": canvases,
            "epochs": f"{training.get('epoch')}/{training.get('epochs')}",
            "threads": training["config"].get("train", {}).get("threads"), "source_sha256": meta["weights_sha256"],
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def init_of(training: dict) -> str:
    """The ``[model] init`` a sidecar's ``training`` config started from ('' for none)."""
    return ((training.get("config") or {}).get("model") or {}).get("init") or ""


def recipe_paths(recipe: str) -> tuple[str | None, str]:
    """A recipe's ``[model] init`` and ``[output] checkpoint``, relative to the repository root."""
    from supernet.train import load_train_spec

    cfg = load_train_spec(ROOT / recipe)
    return (rel(cfg.model.init) if cfg.model.init else None), rel(cfg.output.checkpoint)


def check_trained_by(meta: dict, recipe: str, what: str) -> dict:
    """The sidecar's ``training`` dict, after checking its run was made by ``recipe`` (same fingerprint as a
    ``--resume`` compares: paths, threads and the validation layout may differ).

    Raises:
        ShipError: another recipe made it (the keys that differ are named)."""
    from supernet.train import spec_diff, load_train_spec

    tr = meta.get("training") or {}
    if not tr.get("config"):
        raise ShipError(f"{what} records no training config; fix: ship a checkpoint written by sparsesearch supernet train")
    diff = spec_diff(tr["config"], load_train_spec(ROOT / recipe))
    if diff:
        raise ShipError(f"{what} was not trained by {recipe} ({diff} differ); fix: pass the recipe that made it")
    return tr


def recipe_of(meta: dict, what: str) -> str:
    """The one ``task_dense*.toml`` (:data:`DENSE_CHAIN_GLOB`) whose training fingerprint ``meta`` records.

    Raises:
        ShipError: none or several of them match."""
    from supernet.train import spec_diff, load_train_spec

    saved = (meta.get("training") or {}).get("config")
    if not saved:
        raise ShipError(f"{what} records no training config; fix: start the chain from a checkpoint written by "
                        "sparsesearch supernet train (or its export)")
    found = [r for r in (rel(p) for p in sorted(ROOT.glob(DENSE_CHAIN_GLOB)))
             if not spec_diff(saved, load_train_spec(ROOT / r))]
    if len(found) != 1:
        raise ShipError(f"{what} was trained by {'none' if not found else 'several'} of {DENSE_CHAIN_GLOB} "
                        f"({', '.join(found) or 'no fingerprint matches'}); fix: keep the recipe that made it")
    return found[0]


def dense_chain(recipe: str, training: dict) -> tuple[str, list, dict | None]:
    """The command that trains ``recipe``'s dense model from scratch, and the runs before it.

    Walks back through each recipe's ``[model] init`` (an export of the previous run's output, made only where
    missing: ``{ [ -f INIT ] || sparsesearch supernet export OUT INIT; }``) to a recipe without one.

    Returns:
        (command, earlier runs oldest first as ``{recipe, epochs, train_seconds, canvases}``, the last recipe's
        init as ``{file, sha256}`` or None).

    Raises:
        ShipError, CheckpointError, TrainSpecError: an init without a sidecar, one no recipe of the chain made, or
        a recipe that does not load."""
    from supernet.checkpoint import read_sidecar
    from supernet.fileio import sha256_file

    command = train_command(recipe, training)
    earlier: list = []
    init, _ = recipe_paths(recipe)
    last_init, owner = None, recipe
    while init is not None:
        meta = read_sidecar(ROOT / init)  # first: a missing file is its one-line CheckpointError
        if not (ROOT / init).is_file():
            raise ShipError(f"{init} ({owner}'s [model] init) not found; fix: run the chain's export step again")
        if last_init is None:
            last_init = {"file": init, "sha256": sha256_file(ROOT / init)}
        prev = recipe_of(meta, init)
        tr = check_trained_by(meta, prev, init)
        seconds, canvases = history_compute(meta)
        earlier.insert(0, {"recipe": prev, "epochs": f"{tr.get('epoch')}/{tr.get('epochs')}",
                           "train_seconds": seconds, "canvases": canvases})
        prev_init, prev_out = recipe_paths(prev)
        # the export only where its file is not there yet: a rerun of the chain (a later run interrupted) keeps the
        # epoch it exported, and export refuses to replace a file anyway
        command = (f"{train_command(prev, tr)} && {{ [ -f {init} ] || sparsesearch supernet export {prev_out} "
                   f"{init}; }} && {command}")
        if len(earlier) > 16:
            raise ShipError(f"{recipe}: its chain of [model] init files loops; fix: start the first run from scratch")
        init, owner = prev_init, prev
    return command, earlier, last_init


def train_command(recipe: str, training: dict) -> str:
    """The command that trains ``recipe`` to the epoch a sidecar's ``training`` stopped at."""
    command = f"sparsesearch supernet train {recipe} --resume"
    if not training.get("complete", True):  # a checkpoint part-way through the recipe: the epoch it stopped at
        command += f" --stop-after {training['epoch']}"
    return command


def json_of(path: str) -> str:
    """``X.safetensors`` -> ``X.json`` (a path as the commands spell it)."""
    return path[:-len(".safetensors")] + ".json"


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


def plan(a: argparse.Namespace, dense_meta: dict, sup_meta: dict) -> dict:
    """What each shipped file will record (command, compute, recipe), checked before anything is written.

    Args:
        dense_meta, sup_meta: the sidecars of ``a.dense`` and ``a.supernet`` (read once, by the caller).

    Raises:
        ShipError, CheckpointError, TrainSpecError: a sidecar, recipe or path that does not fit."""
    from supernet.checkpoint import read_sidecar
    from supernet.fileio import sha256_file

    keep_dense = a.dense.resolve() == (a.out / "dense.safetensors").resolve()
    export = f"python experiments/fashion_mosaic/ship_weights.py --dense {a.dense} --supernet {a.supernet}"
    if a.dense_recipe != RECIPES["dense"]:
        export += f" --dense-recipe {a.dense_recipe}"
    out = {}
    if keep_dense:  # the shipped dense model stays as it is (the supernet recipe starts from a copy of it)
        shipped = dense_meta["training"]["shipped"]
        c = shipped["compute"]
        dense_total = (float(c.get("total_train_seconds", c["train_seconds"])), int(c.get("total_canvases", c["canvases"])))
        dense_command = shipped["command"]
    else:
        tr = check_trained_by(dense_meta, a.dense_recipe, str(a.dense))
        compute = run_compute(dense_meta, tr)
        dense_command, earlier, init = dense_chain(a.dense_recipe, tr)
        shipped = {"recipe": a.dense_recipe}
        if init is not None:  # a later run of a chain, from the previous run's export
            shipped["init"] = init
            compute["earlier"] = earlier
        compute["total_train_seconds"] = compute["train_seconds"] + sum(r["train_seconds"] for r in earlier)
        compute["total_canvases"] = compute["canvases"] + sum(r["canvases"] for r in earlier)
        dense_total = (compute["total_train_seconds"], compute["total_canvases"])
        out["dense"] = {**shipped, "command": dense_command, "export": export, "compute": compute}

    init = init_of(sup_meta.get("training") or {})
    long = Path(init).name == LONG_INIT
    recipe = RECIPES["supernet_long" if long else "supernet"]
    tr = check_trained_by(sup_meta, recipe, str(a.supernet))
    compute = run_compute(sup_meta, tr)
    seconds, canvases = compute["train_seconds"], compute["canvases"]
    adapt_meta = sup_meta
    if long:  # task_supernet_long.toml: its compute includes the first adaptation run's (the init's sidecar)
        adapt_meta = read_sidecar(Path(init))
        check_trained_by(adapt_meta, RECIPES["supernet"], init)
        compute["first_adapt_train_seconds"], compute["first_adapt_canvases"] = history_compute(adapt_meta)
    # lineage: the first adaptation run started from the dense model being shipped (when its file is still there)
    dense_file = init_of(adapt_meta["training"])
    want = sha256_file(a.dense)
    if dense_file and Path(dense_file).is_file() and sha256_file(dense_file) != want:
        raise ShipError(f"{a.supernet} was adapted from {dense_file}, which is not {a.dense} (sha256 differs); "
                        "fix: pass the dense model the supernet was adapted from")
    compute["dense_train_seconds"], compute["dense_canvases"] = dense_total
    compute["total_train_seconds"] = dense_total[0] + compute.get("first_adapt_train_seconds", 0.0) + seconds
    compute["total_canvases"] = dense_total[1] + compute.get("first_adapt_canvases", 0) + canvases
    sup_init, _ = recipe_paths(RECIPES["supernet"])
    if keep_dense:  # from a copy of the dense checkpoint shipped beside it
        first = f"mkdir -p runs/task && cp {OUT_REL}/dense.safetensors {sup_init} && cp {OUT_REL}/dense.json {json_of(sup_init)}"
    else:  # after training the dense model
        first = dense_command
        _, dense_out = recipe_paths(a.dense_recipe)
        if dense_out != sup_init:  # the supernet recipe reads the dense recipe's output under another name
            first += f" && cp {dense_out} {sup_init} && cp {json_of(dense_out)} {json_of(sup_init)}"
    command = train_command(recipe, tr)
    if long:  # adapt 24 epochs, keep that as the continuation's init, adapt 24 more
        command = (f"sparsesearch supernet train {RECIPES['supernet']} --resume && "
                   f"cp runs/task/supernet.safetensors runs/task/{LONG_INIT} && "
                   f"cp runs/task/supernet.json runs/task/{json_of(LONG_INIT)} && {command}")
    out["supernet"] = {"recipe": recipe, "command": f"{first} && {command}", "export": export, "compute": compute,
                       "init": {"file": f"{OUT_REL}/dense.safetensors" if keep_dense else rel(a.dense), "sha256": want,
                                "command": dense_command}}
    return out


def plan_672(a: argparse.Namespace, meta: dict) -> dict:
    """What ``supernet672.safetensors`` will record: trained by ``task_supernet_672.toml`` from the shipped supernet
    (``--out``'s ``supernet.safetensors``, sha256 as it is now), compute including everything before it.

    Raises:
        ShipError, CheckpointError, TrainSpecError: another recipe, another starting file, or no shipped supernet."""
    from supernet.checkpoint import read_sidecar
    from supernet.fileio import sha256_file

    recipe = RECIPES["supernet672"]
    tr = check_trained_by(meta, recipe, str(a.supernet672))
    init = Path(init_of(tr))
    shipped_sup = a.out / "supernet.safetensors"
    if not shipped_sup.is_file() or init.resolve() != shipped_sup.resolve():
        raise ShipError(f"{a.supernet672} was adapted from {init or 'no [model] init'}, not the shipped supernet "
                        f"{shipped_sup}; fix: train {recipe} (its [model] init is the shipped supernet)")
    sup = read_sidecar(shipped_sup)["training"]["shipped"]
    compute = {**run_compute(meta, tr), "supernet_train_seconds": float(sup["compute"]["total_train_seconds"]),
               "supernet_canvases": int(sup["compute"]["total_canvases"])}
    compute["total_train_seconds"] = compute["supernet_train_seconds"] + compute["train_seconds"]
    compute["total_canvases"] = compute["supernet_canvases"] + compute["canvases"]
    return {"recipe": recipe, "command": train_command(recipe, tr),
            "export": f"python experiments/fashion_mosaic/ship_weights.py --supernet672 {a.supernet672}",
            "compute": compute,
            "init": {"file": f"{OUT_REL}/supernet.safetensors", "sha256": sha256_file(shipped_sup),
                     "command": sup["command"]}}


def main(argv=None) -> int:
    from supernet.checkpoint import export_checkpoint, read_sidecar
    from supernet.fileio import atomic_write_text, sha256_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense", type=Path)
    ap.add_argument("--supernet", type=Path)
    ap.add_argument("--supernet672", type=Path,
                    help="ship task_supernet_672.toml's output as supernet672.safetensors (alone: the other two stay)")
    ap.add_argument("--dense-recipe", default=RECIPES["dense"],
                    help="the recipe that trained --dense (default: task_dense.toml); one whose [model] init is an "
                         "earlier run's export (task_dense_cycle3.toml) ships the whole chain")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--length", type=int, default=256, help="val canvases of the recorded metrics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if (a.dense is None) != (a.supernet is None) or (a.dense is None) == (a.supernet672 is None):
        raise ShipError("pass --dense and --supernet (the task model and its supernet), or --supernet672 alone")
    if a.supernet672 is not None:
        srcs = {"supernet672": a.supernet672}
        metas = {"supernet672": read_sidecar(a.supernet672)}
        shipped = {"supernet672": plan_672(a, metas["supernet672"])}
    else:
        srcs = {"dense": a.dense, "supernet": a.supernet}
        metas = {"dense": read_sidecar(a.dense), "supernet": read_sidecar(a.supernet)}
        shipped = plan(a, metas["dense"], metas["supernet"])  # every check before the first write
    a.out.mkdir(parents=True, exist_ok=True)
    report, sums = {}, _read_sums(a.out / "SHA256SUMS")
    for name, src in srcs.items():
        meta = metas[name]
        if name not in shipped:  # the kept dense model
            sha = sha256_file(src)
            sums[f"{name}.safetensors"] = sha
            report[name] = {"file": str(src), "sha256": sha, "bytes": src.stat().st_size, "kept": True,
                            "dense": meta["metrics"]["dense"], "check": meta["metrics"]["check"], "scene": None}
            continue
        dst = a.out / f"{name}.safetensors"
        export_checkpoint(src, dst, storage_dtype="float16", extra={"shipped": shipped[name]})
        scene = None
        if name != "dense":
            ds = meta.get("dataset") or {}
            scene = int(ds.get("img_size") or meta.get("img_size"))
        metrics = measure(dst, scene, a.length, a.threads)
        metrics["train_source"] = meta.get("metrics")
        export_checkpoint(src, dst, storage_dtype="float16", metrics=metrics, extra={"shipped": shipped[name]})
        sha = sha256_file(dst)
        sums[dst.name] = sha
        report[name] = {"file": str(dst), "sha256": sha, "bytes": dst.stat().st_size,
                        "dense": metrics["dense"], "check": metrics["check"], "scene": metrics.get("scene")}
    order = [f"{n}.safetensors" for n in SHIPPED]
    atomic_write_text(a.out / "SHA256SUMS", "".join(f"{sums[f]}  {f}\n" for f in order if f in sums))
    print(json.dumps(report, indent=None if a.json else 1))
    return 0


def _read_sums(path: Path) -> dict:
    """``{file name: sha256}`` of a ``sha256sum`` listing (empty when there is none)."""
    if not path.is_file():
        return {}
    return {name: sha for sha, name in (ln.split() for ln in path.read_text().splitlines() if ln.strip())}


def cli(argv=None) -> int:
    """:func:`main` with one ``sparsesearch: error:`` line and exit 2 for inputs that do not fit."""
    from supernet.checkpoint import CheckpointError
    from supernet.train import TrainSpecError

    try:
        return main(argv)
    except (ShipError, CheckpointError, TrainSpecError) as e:
        print(f"sparsesearch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
