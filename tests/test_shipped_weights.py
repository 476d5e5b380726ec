"""The shipped task model and supernet (experiments/fashion_mosaic/weights): they load as float32, match
their SHA256SUMS and sidecars, are within the size limit, record how they were made, and reproduce the
mIoU their sidecars record on a small fixed subset."""
from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import ROOT

WEIGHTS = ROOT / "experiments" / "fashion_mosaic" / "weights"
NAMES = ("dense", "supernet")


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
    assert sup["training"]["shipped"]["compute"]["dense_canvases"] == dense["training"]["shipped"]["compute"]["canvases"]
    cmd = sup["training"]["shipped"]["command"]  # after training the dense model, or copying it as shipped
    assert cmd.startswith(dense["training"]["shipped"]["command"] + " && ") or \
        cmd.startswith("mkdir -p runs/task && cp experiments/fashion_mosaic/weights/dense.safetensors ")
