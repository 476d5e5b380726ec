"""The shipped task model and supernet (experiments/fashion_mosaic/weights): they load as float32, match
their SHA256SUMS and sidecars, are within the size limit, record how they were made, and reproduce the
mIoU their sidecars record on a small fixed subset."""
from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import ROOT

WEIGHTS = ROOT / "experiments" / "fashion_mosaic" / "weights"
NAMES = ("dense", "supernet", "supernet672")


def _sums() -> dict:
    lines = (WEIGHTS / "SHA256SUMS").read_text().splitlines()
    return {name: sha for sha, name in (ln.split() for ln in lines if ln.strip())}


def test_weights_match_their_sums_and_stay_under_25_mb():
    sums = _sums()
    assert set(sums) == {f"{n}.safetensors" for n in NAMES}
    total = 0
    for name in NAMES:
        f = WEIGHTS / f"{name}.safetensors"
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sums[f.name]
        total += f.stat().st_size + (WEIGHTS / f"{name}.json").stat().st_size
    assert total <= 25 * 2 ** 20, total


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_loads_as_float32_and_reproduces_its_recorded_miou(name):
    from supernet.checkpoint import load_checkpoint
    from supernet.data import MosaicSpec
    from supernet.evaluate import evaluate_config

    torch.set_num_threads(2)
    model, meta = load_checkpoint(WEIGHTS / f"{name}.safetensors", img_size=224)  # verifies the sidecar's sha256
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta["storage_dtype"] == "float16"
    shipped = meta["training"]["shipped"]
    # the last command of the chain trains this file's recipe (the supernet's starts from the dense model)
    assert shipped["command"].split(" && ")[-1].startswith(f"sparsesearch supernet train {shipped['recipe']}")
    assert shipped["compute"]["train_seconds"] > 0 and shipped["compute"]["canvases"] > 0
    check = meta["metrics"]["check"]
    got = evaluate_config(model, None, length=check["canvases"], batch_size=8, spec=MosaicSpec(img_size=224),
                          seed=check["seed"])
    assert got["miou"] == pytest.approx(check["miou"], abs=2e-3)
    assert got["item_class_acc"] == pytest.approx(check["item_class_acc"], abs=2e-3)
    # a model that learned its classes, not the background: far above the 10-class chance level
    assert meta["metrics"]["dense"]["item_class_acc"] > 0.5


def test_shipped_supernet_continues_the_shipped_dense_model_at_the_search_resolution():
    from supernet.checkpoint import read_sidecar

    dense, sup = read_sidecar(WEIGHTS / "dense.safetensors"), read_sidecar(WEIGHTS / "supernet.safetensors")
    # same network; the window ranking (how the supernet picks kept windows) is an adaptation choice on top
    assert {k: v for k, v in sup["arch"].items() if k != "window_importance"} == dense["arch"]
    assert sup["arch"].get("window_importance", "magnitude") in ("magnitude", "centred")
    assert sup["img_size"] >= 448 and "scene" in sup["metrics"]
    dc = dense["training"]["shipped"]["compute"]  # everything the dense model took from scratch
    assert dc["total_canvases"] == dc["canvases"] + sum(r["canvases"] for r in dc.get("earlier", []))
    assert dc["total_train_seconds"] == pytest.approx(
        dc["train_seconds"] + sum(r["train_seconds"] for r in dc.get("earlier", [])))
    sc = sup["training"]["shipped"]["compute"]
    assert sc["dense_canvases"] == dc.get("total_canvases", dc["canvases"])
    assert sc["total_canvases"] == sc["dense_canvases"] + sc.get("first_adapt_canvases", 0) + sc["canvases"]
    cmd = sup["training"]["shipped"]["command"]  # after training the dense model, or copying it as shipped
    assert cmd.startswith(dense["training"]["shipped"]["command"] + " && ") or \
        cmd.startswith("mkdir -p runs/task && cp experiments/fashion_mosaic/weights/dense.safetensors ")


def test_shipped_672_supernet_continues_the_shipped_supernet_on_672_px_scenes():
    """supernet672 (the 672 px main job's) is task_supernet_672.toml's adaptation of the shipped supernet file as
    it is now (sha256), on 672 px scenes of 4-18 items; its compute adds to everything before it."""
    from supernet.checkpoint import read_sidecar
    from supernet.data import MosaicSpec

    sup, s672 = read_sidecar(WEIGHTS / "supernet.safetensors"), read_sidecar(WEIGHTS / "supernet672.safetensors")
    assert s672["arch"] == sup["arch"] and s672["img_size"] == 672
    ds = s672["dataset"]
    assert (ds["img_size"], ds["min_items"], ds["max_items"]) == (672, MosaicSpec.scene(672).min_items,
                                                                  MosaicSpec.scene(672).max_items)
    shipped = s672["training"]["shipped"]
    assert shipped["recipe"] == "experiments/fashion_mosaic/task_supernet_672.toml"
    assert shipped["init"]["file"] == "experiments/fashion_mosaic/weights/supernet.safetensors"
    assert shipped["init"]["sha256"] == _sums()["supernet.safetensors"]
    assert shipped["init"]["command"] == sup["training"]["shipped"]["command"]
    c, sc = shipped["compute"], sup["training"]["shipped"]["compute"]
    assert c["supernet_canvases"] == sc["total_canvases"] and c["total_canvases"] == sc["total_canvases"] + c["canvases"]
    assert s672["metrics"]["scene"]["img_size"] == 672 and s672["metrics"]["scene"]["length"] == 256


def _chain_reads_what_it_wrote(command: str) -> list:
    """Walk a shipped command (steps joined by ' && '): every file a step reads under runs/ was written by an
    earlier step (a recipe's [model] init by a training run, an export or a copy). Returns the recipes trained."""
    import os

    from supernet.train import load_train_spec

    def rel(p) -> str:
        return os.path.relpath(p, ROOT)

    written, trained = set(), []
    for step in command.split(" && "):
        tok = step.split()
        if tok[0] == "{":
            # `{ [ -f X ] || sparsesearch supernet export A X; }`: a step that makes X only where it is missing
            assert tok[1:3] == ["[", "-f"] and tok[4:6] == ["]", "||"] and tok[-1] == "}", step
            tok = tok[6:-1]
            assert tok[-1].endswith(";") and tok[-1][:-1] == step.split()[3], step
            tok[-1] = tok[-1][:-1]
            assert tok[:3] == ["sparsesearch", "supernet", "export"], step
        if tok[:3] == ["sparsesearch", "supernet", "train"]:
            cfg = load_train_spec(ROOT / tok[3])
            if cfg.model.init:  # a file under runs/ from an earlier step, or one committed (a shipped file)
                init = rel(cfg.model.init)
                assert init in written or (not init.startswith("runs/") and (ROOT / init).is_file()), \
                    f"{tok[3]} starts from {init}, not written before"
            out = rel(cfg.output.checkpoint)
            written |= {out, out[:-len(".safetensors")] + ".json"}  # a checkpoint is both files
            trained.append(tok[3])
        elif tok[:3] == ["sparsesearch", "supernet", "export"]:
            assert tok[3] in written, step
            written |= {tok[4], tok[4][:-len(".safetensors")] + ".json"}
        elif tok[0] == "cp":
            *srcs, dst = tok[1:]
            for src in srcs:  # a file under runs/ must come from an earlier step; others are in the repository
                assert src in written or (not src.startswith("runs/") and (ROOT / src).is_file()), step
                written.add(dst + os.path.basename(src) if dst.endswith("/") else dst)
        else:
            assert tok[:2] == ["mkdir", "-p"], f"unexpected step {step!r}"
    return trained


def test_shipped_commands_are_chains_whose_every_step_reads_what_an_earlier_step_wrote():
    """The reproducing commands run as written: no step starts from a file nothing before it made (a recipe's
    [model] init renamed, or a copy missing, breaks this), and each ends by training its own recipe."""
    from supernet.checkpoint import read_sidecar

    for name in NAMES:
        shipped = read_sidecar(WEIGHTS / f"{name}.safetensors")["training"]["shipped"]
        trained = _chain_reads_what_it_wrote(shipped["command"])
        assert trained and trained[-1] == shipped["recipe"]


def _ship(argv, capsys):
    import importlib

    ship = importlib.import_module("experiments.fashion_mosaic.ship_weights")
    code = ship.cli([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("case", ["wrong_recipe", "missing_sidecar", "missing_recipe", "not_672", "half_pair"])
def test_ship_weights_refuses_what_does_not_fit_in_one_line_before_writing_anything(case, tmp_path, capsys):
    """ship_weights.py checks every sidecar and recipe before its first write: a dense model shipped under a recipe
    that did not train it (the shipped one is task_dense_cycle3.toml's run, not task_dense.toml's), a checkpoint
    without its sidecar, a recipe that is not there: one `sparsesearch: error:` line, exit 2, --out not created."""
    out = tmp_path / "weights"
    argv = ["--dense", WEIGHTS / "dense.safetensors", "--supernet", WEIGHTS / "supernet.safetensors", "--out", out]
    if case == "missing_sidecar":
        lone = tmp_path / "lone.safetensors"
        lone.write_bytes((WEIGHTS / "dense.safetensors").read_bytes())
        argv[1] = lone
    elif case == "missing_recipe":
        argv += ["--dense-recipe", "experiments/fashion_mosaic/no_such_recipe.toml"]
    elif case == "not_672":  # the 448 px supernet is not task_supernet_672.toml's output
        argv = ["--supernet672", WEIGHTS / "supernet.safetensors", "--out", out]
    elif case == "half_pair":
        argv = argv[:2] + ["--out", out]
    code, cap = _ship(argv, capsys)
    lines = cap.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sparsesearch: error: "), cap.err
    assert "Traceback" not in cap.err and not out.exists()
    if case == "wrong_recipe":
        assert "was not trained by experiments/fashion_mosaic/task_dense.toml" in lines[0] and "[train] lr" in lines[0]
    elif case == "missing_sidecar":
        assert "lone" in lines[0]
    elif case == "not_672":
        assert "was not trained by experiments/fashion_mosaic/task_supernet_672.toml" in lines[0]
    elif case == "half_pair":
        assert "--dense and --supernet" in lines[0]
    else:
        assert "no_such_recipe.toml" in lines[0]
