"""Tests for supernet.train / supernet.evaluate: sampling rule, schedule, loss, checkpoints, resume, spec, CLI."""
import argparse
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.checkpoint import CheckpointError, load_checkpoint, read_sidecar, sidecar_path, write_sidecar
from supernet.data import FashionMosaic, MosaicSpec
from supernet.evaluate import evaluate_config, reference_table, uniform_config
from supernet.seg import SegSupernet
from supernet.sparse_swin import validate_sparsity
from supernet.train import (
    TrainConfig,
    TrainSpecError,
    cli_train,
    load_train_spec,
    lr_at,
    make_optimizer,
    sample_config,
    state_path,
    step_configs,
    train,
    train_step,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
RATIOS = [round(0.1 * i, 1) for i in range(9)]


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = 0x08
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny Fashion-MNIST look-alike: class c is a filled square of brightness 60 + 19 c."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 40)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        imgs = np.zeros((n, 28, 28), np.uint8)
        for i, c in enumerate(labels):
            imgs[i, 4:24, 4:24] = 60 + 19 * int(c) + rng.integers(0, 5)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def tiny_cfg(data_dir, out: Path, **train_kw) -> TrainConfig:
    train = dict(batch_size=4, dense_epochs=1, adapt_epochs=1, lr=2e-3, adapt_lr=5e-4, warmup_steps=1,
                 eval_batch_size=4, threads=1)
    train.update(train_kw)
    return TrainConfig(
        model=dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, img_size=64, head_dim=16),
        data=dict(min_scale=16, max_scale=32, max_items=3, train_length=8, val_length=4, data_dir=str(data_dir)),
        train=train, output=dict(checkpoint=str(out / "ck.safetensors")))


# --------------------------------------------------------------------------------------- sampling
def test_sample_config_follows_the_reference_rule():
    rng = np.random.default_rng(0)
    depths = (2, 2, 6, 2)
    seen = [set() for _ in depths]
    for _ in range(500):
        cfg = sample_config(depths, RATIOS, rng)
        assert [len(s) for s in cfg] == list(depths)
        validate_sparsity(cfg, depths)  # non-decreasing, in [0, 1)
        for i, stage in enumerate(cfg):
            assert stage == sorted(stage)
            assert all(stage[2 * j] == stage[2 * j + 1] for j in range(len(stage) // 2))  # W / SW pair
            assert set(stage) <= set(RATIOS)
            seen[i] |= set(stage)
    assert all(s == set(RATIOS) for s in seen)  # every value is drawn somewhere
    # same seed, same draws
    a = [sample_config(depths, RATIOS, np.random.default_rng(7)) for _ in range(3)]
    b = [sample_config(depths, RATIOS, np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    odd = sample_config((3,), [0.2, 0.4], np.random.default_rng(1))[0]
    assert len(odd) == 3 and odd[0] == odd[1] and odd == sorted(odd)


def test_step_configs_modes():
    rng = np.random.default_rng(0)
    depths = (2, 2, 6, 2)
    dense = [[0.0] * d for d in depths]
    assert step_configs("reference", depths, RATIOS, rng, dense_phase=True) == [dense]
    assert step_configs("dense", depths, RATIOS, rng) == [dense]
    sw = step_configs("sandwich", depths, RATIOS, rng, n_random=2)
    assert len(sw) == 4 and sw[0] == dense and sw[1] == [[0.8] * d for d in depths]
    with pytest.raises(ValueError, match="sampling must be"):
        step_configs("greedy", depths, RATIOS, rng)


def test_lr_schedule_warmup_cosine_and_adaptation(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path, dense_epochs=2, adapt_epochs=2, warmup_steps=2, lr=1e-3, adapt_lr=1e-4)
    spe = cfg.steps_per_epoch  # 2
    lrs = [lr_at(s, cfg) for s in range(4 * spe)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # linear warm-up to lr
    assert lrs[1] > lrs[2] > lrs[3] > 0  # cosine decay of the dense phase
    assert lrs[4] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi / 5)))  # cosine restarts at adapt_lr
    assert lrs[4] > lrs[5] > lrs[6] > lrs[7] > 0


# ------------------------------------------------------------------------------------------ loss
def test_loss_decreases_on_a_tiny_model(data_dir):
    torch.manual_seed(0)
    model = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=64, head_dim=16, embed_dim=16,
                                  depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
    ds = FashionMosaic("train", length=4, spec=MosaicSpec(img_size=64, min_scale=16, max_scale=32, max_items=3,
                                                           data_dir=str(data_dir)))
    images = torch.stack([ds[i][0] for i in range(4)])
    labels = torch.stack([ds[i][1] for i in range(4)])
    opt = make_optimizer(model, 0.05)
    for g in opt.param_groups:
        g["lr"] = 2e-3
    rng = np.random.default_rng(0)
    model.train()
    losses = [train_step(model, opt, images, labels, step_configs("sandwich", model.depths, RATIOS, rng), 1.0)
              for _ in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


# ----------------------------------------------------------------------------- train + checkpoint
def test_train_writes_checkpoint_with_reference_metrics(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path)
    metrics = train(cfg, progress=False)
    ckpt = tmp_path / "ck.safetensors"
    model, meta = load_checkpoint(ckpt)
    assert meta["training"]["complete"] and meta["training"]["step"] == 2 * cfg.steps_per_epoch
    side = meta["metrics"]
    assert set(side["uniform"]) == {"0.3", "0.5", "0.7"}
    for r, row in side["uniform"].items():
        assert row["retention"] == pytest.approx(row["miou"] / side["dense"]["miou"])
        assert row["config"] == uniform_config(model.depths, float(r))
        assert row["config"][-1] == [0.0, 0.0]  # last stage dense
    assert metrics["dense"] == side["dense"] and metrics["checkpoint"] == str(ckpt)
    assert meta["dataset"]["img_size"] == 64 and meta["dataset"]["val_seed"] == 12345
    assert meta["arch"]["timm_kwargs"] == {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2],
                                           "window_size": 4}
    # the stored table is reproducible from the checkpoint alone
    spec = MosaicSpec(**{k: meta["dataset"][k] for k in MosaicSpec.model_fields})
    again = evaluate_config(model, side["uniform"]["0.5"]["config"], length=4, batch_size=4, spec=spec, seed=12345)
    assert again["miou"] == pytest.approx(side["uniform"]["0.5"]["miou"])
    assert model.sparsity == [[0.0] * 2] * 4  # evaluate_config restored the config


def test_resume_continues_from_the_saved_epoch(data_dir, tmp_path):
    straight = tiny_cfg(data_dir, tmp_path / "a", dense_epochs=1, adapt_epochs=1, sampling="sandwich")
    split = tiny_cfg(data_dir, tmp_path / "b", dense_epochs=1, adapt_epochs=1, sampling="sandwich")
    spe = straight.steps_per_epoch
    train(straight, progress=False)
    part = train(split, progress=False, stop_after=1)
    assert part == {"complete": False, "epoch": 1, "step": spe, "checkpoint": str(tmp_path / "b" / "ck.safetensors")}
    b_ckpt = tmp_path / "b" / "ck.safetensors"
    assert read_sidecar(b_ckpt)["training"]["step"] == spe
    assert torch.load(state_path(b_ckpt), weights_only=True)["epoch"] == 1
    assert train(split, resume=True, progress=False, stop_after=1) == part  # already there: nothing trained
    assert read_sidecar(b_ckpt)["training"]["step"] == spe
    done = train(split, resume=True, progress=False)
    meta = read_sidecar(b_ckpt)
    assert meta["training"]["step"] == 2 * spe and meta["training"]["epoch"] == 2
    assert torch.load(state_path(b_ckpt), weights_only=True)["step"] == 2 * spe
    # resuming reproduces the uninterrupted run bit for bit (optimizer, schedule and RNG restored)
    a, _ = load_checkpoint(tmp_path / "a" / "ck.safetensors")
    b, _ = load_checkpoint(b_ckpt)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # a finished run resumes to its stored metrics
    assert train(split, resume=True, progress=False) == done


def test_resume_is_bit_exact_with_the_new_loss_and_bf16(data_dir, tmp_path):
    """The task-model levers (item-weighted CE + per-item loss at 1/4 resolution, bf16 autocast) across a
    dense -> reference-adaptation boundary: stopping after the dense epoch and resuming gives the same weights."""
    kw = dict(dense_epochs=1, adapt_epochs=1, sampling="reference", loss="item", aux_weight=0.5,
              loss_resolution="quarter", bf16=True)
    straight = tiny_cfg(data_dir, tmp_path / "a", **kw)
    split = tiny_cfg(data_dir, tmp_path / "b", **kw)
    train(straight, progress=False)
    train(split, progress=False, stop_after=1)
    train(split, resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "a" / "ck.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "ck.safetensors")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    hist = read_sidecar(tmp_path / "b" / "ck.safetensors")["training"]["history"]
    assert [h["phase"] for h in hist] == ["dense", "adapt-reference"] and all(h["loss"] > 0 for h in hist)


def test_resume_without_state_is_a_warm_restart_at_the_saved_epoch(data_dir, tmp_path):
    """The state file lost (or shipped float16 weights copied to the checkpoint): --resume continues from the
    sidecar's epoch and step with a fresh optimizer at the schedule's learning rate, and refuses another spec."""
    kw = dict(dense_epochs=3, adapt_epochs=0, sampling="dense")
    cfg = tiny_cfg(data_dir, tmp_path, **kw)
    spe = cfg.steps_per_epoch
    train(cfg, progress=False, stop_after=1)
    ckpt = tmp_path / "ck.safetensors"
    before, _ = load_checkpoint(ckpt)
    state_path(ckpt).unlink()
    changed = tiny_cfg(data_dir, tmp_path, **{**kw, "lr": 5e-2})
    with pytest.raises(TrainSpecError, match=r"another spec.*\[train\] lr.*fix:"):
        train(changed, resume=True, progress=False)
    # a sidecar written before a spec key existed (the shipped dense model's has no [model] window_importance)
    # reads that key as its default: the same spec, so it resumes
    side = read_sidecar(ckpt)
    assert side["training"]["config"]["model"].pop("window_importance") == "magnitude"
    write_sidecar(ckpt, side)
    logs = []
    part = train(cfg, resume=True, progress=False, stop_after=2, log=logs.append)
    assert part["epoch"] == 2 and part["step"] == 2 * spe
    assert any("fresh AdamW state" in m and "epoch 1/3" in m for m in logs)
    meta = read_sidecar(ckpt)
    hist = meta["training"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2]  # the first epoch's record kept, one epoch added
    # the schedule went on from step spe (a restart from 0 would end the epoch at lr_at(spe))
    assert hist[1]["lr_end"] == pytest.approx(lr_at(2 * spe, cfg), rel=1e-6) != lr_at(spe, cfg)
    after, _ = load_checkpoint(ckpt)
    assert any(not torch.equal(v, after.state_dict()[k]) for k, v in before.state_dict().items())
    done = train(cfg, resume=True, progress=False)  # the state exists again: an ordinary resume to the end
    assert done["train"]["epochs"] == 3 and read_sidecar(ckpt)["training"]["complete"]


def test_model_init_from_another_image_size(data_dir, tmp_path):
    """[model] init: a dense checkpoint trained at one size is adapted at another (the weights are size-free)."""
    dense = TrainConfig(
        model=dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, img_size=128, head_dim=16),
        data=dict(min_scale=16, max_scale=32, max_items=4, train_length=2, val_length=2, data_dir=str(data_dir)),
        train=dict(batch_size=2, dense_epochs=1, adapt_epochs=0, sampling="dense", threads=1, eval_batch_size=2),
        output=dict(checkpoint=str(tmp_path / "d" / "ck.safetensors")))
    train(dense, progress=False)
    cfg = TrainConfig(  # every stage map holds >= 1 window at 128 and at 256 px
        model=dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, img_size=256, head_dim=16,
                   init=str(tmp_path / "d" / "ck.safetensors")),
        data=dict(min_scale=16, max_scale=32, max_items=6, train_length=4, val_length=2, data_dir=str(data_dir)),
        train=dict(batch_size=2, dense_epochs=0, adapt_epochs=1, sampling="sandwich", threads=1, eval_batch_size=2),
        output=dict(checkpoint=str(tmp_path / "big" / "ck.safetensors")))
    from supernet.train import build_supernet

    m = build_supernet(cfg)
    d, _ = load_checkpoint(tmp_path / "d" / "ck.safetensors")
    for k, v in d.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    assert tuple(m.backbone.img_size) == (256, 256)
    train(cfg, progress=False)
    assert read_sidecar(tmp_path / "big" / "ck.safetensors")["img_size"] == 256


def test_resume_refuses_a_changed_spec_or_foreign_state(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, tmp_path, adapt_epochs=1, dense_epochs=1)
    train(cfg, progress=False, stop_after=1)
    changed = tiny_cfg(data_dir, tmp_path, adapt_epochs=1, dense_epochs=1, adapt_lr=1e-2)
    with pytest.raises(TrainSpecError, match=r"spec changed.*\[train\] adapt_lr.*fix:"):
        train(changed, resume=True, progress=False)
    other = tiny_cfg(data_dir, tmp_path / "other", adapt_epochs=1, dense_epochs=1, seed=3)
    train(other, progress=False, stop_after=1)
    state_path(tmp_path / "ck.safetensors").write_bytes(state_path(tmp_path / "other" / "ck.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"ck.state.pt belongs to a different ck.safetensors.*fix:"):
        train(cfg, resume=True, progress=False)


def test_device_is_where_a_run_trains_not_part_of_its_recipe(data_dir, tmp_path):
    """``[train] device`` / ``supernet train --device``: a device this machine lacks is refused before anything is
    written (one line, the CLI's exit 2); the device is not part of the resume check, so a run started on one
    device resumes on another; each epoch records where it ran."""
    from supernet.train import spec_diff

    cfg = tiny_cfg(data_dir, tmp_path, dense_epochs=1, adapt_epochs=1)
    gpu = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cuda"})})
    assert spec_diff(json.loads(cfg.model_dump_json()), gpu) == ""
    train(cfg, progress=False, stop_after=1)
    assert [h["device"] for h in read_sidecar(tmp_path / "ck.safetensors")["training"]["history"]] == ["cpu"]
    if not torch.cuda.is_available():
        before = (tmp_path / "ck.safetensors").read_bytes()
        with pytest.raises(TrainSpecError, match=r"device 'cuda'.*no such CUDA device.*fix:.*--device cpu"):
            train(gpu, resume=True, progress=False)
        assert (tmp_path / "ck.safetensors").read_bytes() == before
        bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "gpu0"})})
        with pytest.raises(TrainSpecError, match=r"not a torch device"):
            train(bad, resume=True, progress=False)
    done = train(gpu if torch.cuda.is_available() else cfg, resume=True, progress=False)
    assert done["train"]["epochs"] == 2


def test_validation_layout_is_its_own_and_not_part_of_a_resume(data_dir, tmp_path):
    """``[data] val_min_items / val_max_items``: the task recipes train on 2-10 items and are scored on the default
    task's 1-8; the per-epoch check and the final table use that layout; a resume does not compare it."""
    from pydantic import ValidationError

    from supernet.train import DataSection, spec_diff

    d = DataSection(min_items=2, max_items=10, val_min_items=1, val_max_items=8)
    assert (d.mosaic().min_items, d.mosaic().max_items) == (2, 10)
    assert (d.val_mosaic().min_items, d.val_mosaic().max_items) == (1, 8)
    assert d.val_mosaic().model_dump(exclude={"min_items", "max_items"}) == d.mosaic().model_dump(
        exclude={"min_items", "max_items"})
    assert DataSection(min_items=2, max_items=10).val_mosaic() == DataSection(min_items=2, max_items=10).mosaic()
    assert DataSection(max_items=10, val_min_items=9).val_mosaic().max_items == 10
    with pytest.raises(ValidationError, match="val_min_items <= val_max_items"):
        DataSection(max_items=8, val_min_items=9)
    for name in ("task_dense.toml", "task_quick.toml", "task_full.toml"):
        cfg = load_train_spec(REPO / "experiments" / "fashion_mosaic" / name)
        assert (cfg.data.val_mosaic().min_items, cfg.data.val_mosaic().max_items) == (1, 8)
    base = tiny_cfg(data_dir, tmp_path, dense_epochs=1, adapt_epochs=0, val_each_epoch=True)
    other = base.model_copy(update={"data": base.data.model_copy(update={"val_min_items": 3, "val_max_items": 3})})
    assert spec_diff(json.loads(base.model_dump_json()), other) == ""
    train(other, progress=False)
    meta = read_sidecar(tmp_path / "ck.safetensors")
    spec3 = other.data.val_mosaic()
    assert spec3.min_items == spec3.max_items == 3
    model, _ = load_checkpoint(tmp_path / "ck.safetensors")
    again = evaluate_config(model, None, length=4, batch_size=4, spec=spec3, seed=12345)
    assert again["miou"] == pytest.approx(meta["metrics"]["dense"]["miou"])  # scored on the 3-item layout
    train_layout = evaluate_config(model, None, length=4, batch_size=4, spec=other.data.mosaic(), seed=12345)
    assert train_layout["miou"] != pytest.approx(meta["metrics"]["dense"]["miou"])


def test_reference_table_restores_sparsity(data_dir):
    torch.manual_seed(0)
    model = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=64, head_dim=16, embed_dim=16,
                                  depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
    model.set_sparsity([[0.1, 0.1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    spec = MosaicSpec(img_size=64, min_scale=16, max_scale=32, max_items=3, data_dir=str(data_dir))
    table = reference_table(model, (0.5,), length=4, batch_size=2, spec=spec)
    assert model.sparsity[0] == [0.1, 0.1] and model.training
    assert 0.0 <= table["dense"]["miou"] <= 1.0 and table["uniform"]["0.5"]["config"][2] == [0.5, 0.5]


def test_init_starts_from_a_checkpoint_and_refuses_another_architecture(data_dir, tmp_path):
    dense = tiny_cfg(data_dir, tmp_path / "dense", dense_epochs=1, adapt_epochs=0)
    train(dense, progress=False)
    dense_ck = tmp_path / "dense" / "ck.safetensors"
    d = dense.model_dump()
    d["model"]["init"] = str(dense_ck)
    d["train"].update(dense_epochs=0, adapt_epochs=1)
    d["output"]["checkpoint"] = str(tmp_path / "adapt" / "ck.safetensors")
    adapt = TrainConfig(**d)
    from supernet.train import build_supernet
    start = build_supernet(adapt)
    ref, _ = load_checkpoint(dense_ck)
    for k, v in ref.state_dict().items():  # the adaptation starts exactly at the dense weights
        assert torch.equal(v, start.state_dict()[k]), k
    train(adapt, progress=False)
    after, meta = load_checkpoint(tmp_path / "adapt" / "ck.safetensors")
    assert any(not torch.equal(v, after.state_dict()[k]) for k, v in ref.state_dict().items())
    assert ref.backbone.window_importance == after.backbone.window_importance == "magnitude"
    assert "window_importance" not in meta["arch"]  # the paper's default stays implicit: old sidecars read alike
    # the window ranking is not a property of the weights: a magnitude-trained dense model adapts under "centred",
    # and the supernet's sidecar records it, so the search ranks windows as the adaptation did
    d["model"]["window_importance"] = "centred"
    d["output"]["checkpoint"] = str(tmp_path / "centred" / "ck.safetensors")
    train(TrainConfig(**d), progress=False)
    centred, meta = load_checkpoint(tmp_path / "centred" / "ck.safetensors")
    assert meta["arch"]["window_importance"] == "centred" and centred.backbone.window_importance == "centred"
    with pytest.raises(Exception, match="window_importance"):
        TrainConfig(model={"window_importance": "norm"})
    d["model"]["embed_dim"] = 8
    d["model"]["num_heads"] = (1, 1, 1, 1)
    with pytest.raises(CheckpointError, match=r"init .*another architecture.*embed_dim.*fix:"):
        build_supernet(TrainConfig(**d))
    with pytest.raises(Exception, match="timm_weights or init"):
        TrainConfig(model={"init": str(dense_ck), "timm_weights": str(dense_ck)})


def test_reduced_input_resolution_model(data_dir, tmp_path):
    """input_size: 64 px canvases go through a 32 px backbone; logits come back at 64 px; the
    checkpoint rebuilds the same model and the evaluator draws 64 px canvases."""
    cfg = tiny_cfg(data_dir, tmp_path, dense_epochs=1, adapt_epochs=0, sampling="dense")
    d = cfg.model_dump()
    d["model"]["input_size"] = 32
    cfg = TrainConfig(**d)
    train(cfg, progress=False)
    model, meta = load_checkpoint(tmp_path / "ck.safetensors")
    assert meta["arch"]["input_size"] == 32 and meta["img_size"] == 64
    assert model.img_size == (64, 64) and model.input_size == (32, 32)
    assert model.backbone.img_size == (32, 32)
    seen = []
    model.backbone.patch_embed.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 11, 64, 64) and seen == [(32, 32)]
    assert meta["metrics"]["img_size"] == 64


# ------------------------------------------------------------------------------------ spec + CLI
def _write_spec(folder: Path, data_dir: Path, extra: str = "") -> Path:
    spec = folder / "spec.toml"
    spec.write_text(f"""
[model]
embed_dim = 16
depths = [2, 2, 2, 2]
num_heads = [1, 1, 2, 2]
window_size = 4
img_size = 64
head_dim = 16

[data]
min_scale = 16
max_scale = 32
max_items = 3
train_length = 8
val_length = 4
data_dir = "{data_dir}"

[train]
batch_size = 4
dense_epochs = 1
adapt_epochs = 1
eval_batch_size = 4
threads = 1
{extra}
[output]
checkpoint = "out/ck.safetensors"
""")
    return spec


def test_load_train_spec_resolves_paths_and_names_bad_keys(data_dir, tmp_path):
    cfg = load_train_spec(_write_spec(tmp_path, data_dir))
    assert cfg.output.checkpoint == tmp_path / "out" / "ck.safetensors"  # relative to the spec's folder
    assert cfg.data.img_size == 64  # taken from [model]
    assert cfg.train.ratios == RATIOS and cfg.train.sampling == "reference"
    with pytest.raises(TrainSpecError, match=r"spec.toml: \[train\] lrr: Extra inputs are not permitted; fix:"):
        load_train_spec(_write_spec(tmp_path, data_dir, "lrr = 1.0\n"))
    with pytest.raises(TrainSpecError, match=r"\[train\] sampling"):
        load_train_spec(_write_spec(tmp_path, data_dir, 'sampling = "random"\n'))
    with pytest.raises(TrainSpecError, match=r"\[train\] ratios.*strictly increasing"):
        load_train_spec(_write_spec(tmp_path, data_dir, "ratios = [0.5, 0.1]\n"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(TrainSpecError, match=r"bad.toml: invalid TOML"):
        load_train_spec(bad)
    with pytest.raises(TrainSpecError, match="not found"):
        load_train_spec(tmp_path / "absent.toml")


RECIPES = sorted(p.name for p in (REPO / "experiments" / "fashion_mosaic").glob("*.toml")
                 if p.name.startswith(("supernet", "baseline_")))


def test_recipe_set_is_complete():
    assert {"supernet_quick.toml", "supernet_dense.toml", "supernet.toml", "supernet_sandwich.toml",
            "supernet_denseonly.toml", "baseline_w050.toml", "baseline_w075.toml", "baseline_r160.toml",
            "baseline_r192.toml"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_validate(name):
    cfg = load_train_spec(REPO / "experiments" / "fashion_mosaic" / name)
    assert cfg.model.img_size == 224
    assert cfg.output.checkpoint.suffix == ".safetensors"
    assert cfg.output.checkpoint.resolve().is_relative_to(REPO / "runs")  # git-ignored run folder
    if cfg.model.init is not None:  # adaptation variants start from the dense recipe's checkpoint
        dense = load_train_spec(REPO / "experiments" / "fashion_mosaic" / "supernet_dense.toml")
        assert cfg.model.init == dense.output.checkpoint and cfg.train.dense_epochs == 0
        assert cfg.model.model_dump(exclude={"init"}) == dense.model.model_dump(exclude={"init"})
        assert cfg.data == dense.data and cfg.train.adapt_epochs >= 1
    if name.startswith("baseline_"):  # trained the same way: same canvases and steps as dense + adaptation
        full = load_train_spec(REPO / "experiments" / "fashion_mosaic" / "supernet.toml")
        dense = load_train_spec(REPO / "experiments" / "fashion_mosaic" / "supernet_dense.toml")
        assert cfg.lowres == dense.lowres and cfg.data == dense.data
        assert cfg.train.dense_epochs == dense.train.dense_epochs + full.train.adapt_epochs
        assert cfg.train.sampling == "dense"


def test_cli_train_json_and_user_errors(data_dir, tmp_path, capsys):
    spec = _write_spec(tmp_path, data_dir)
    assert cli_train(argparse.Namespace(spec=str(spec), resume=False, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"dense", "uniform", "train", "checkpoint"}
    assert Path(out["checkpoint"]).with_suffix(".json").is_file()
    assert cli_train(argparse.Namespace(spec=str(spec), resume=True, json=False)) == 0
    assert "retention" in capsys.readouterr().out
    from search.cli import main

    # without --resume an existing checkpoint is refused (one line, exit 2, nothing rewritten); --overwrite retrains
    ck = Path(out["checkpoint"])
    before = {p: p.read_bytes() for p in (ck, ck.with_suffix(".json"))}
    assert main(["supernet", "train", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in before} == before
    with pytest.raises(SystemExit) as e:  # one or the other: an argparse error line, exit 2
        main(["supernet", "train", str(spec), "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    inode = ck.stat().st_ino
    assert main(["supernet", "train", str(spec), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(ck)
    assert ck.stat().st_ino != inode  # written anew (atomic replace), from scratch to the end
    assert read_sidecar(ck)["training"]["complete"]
    # the weights gone, the state and sidecar of that run left: refused too, naming what would be replaced
    ck.unlink()
    assert main(["supernet", "train", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ck.with_suffix(".state.pt").name in err[0] and "are gone" in err[0]
    # ... and with --resume: refused as well, never "nothing to resume, training from scratch" over those files
    left = {p: p.read_bytes() for p in (ck.with_suffix(".json"), ck.with_suffix(".state.pt"))}
    assert main(["supernet", "train", str(spec), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are gone" in err[0] and "restore the weights to resume" in err[0]
    assert {p: p.read_bytes() for p in left} == left and not ck.exists()

    assert main(["supernet", "train", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsesearch: error: ") and "nope.toml" in err[0]
    if not torch.cuda.is_available():  # --device: a device this machine lacks is one line, nothing written
        assert main(["supernet", "train", str(spec), "--overwrite", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no such CUDA device" in err[0] and "--device cpu" in err[0]
        assert not ck.exists()


def test_lowres_phase_runs_first_on_smaller_canvases(data_dir, tmp_path):
    """[lowres]: the first epochs draw smaller canvases (items scaled), with their own step count and
    learning-rate schedule; the full-size epochs see the same canvases as a run without it."""
    base = tiny_cfg(data_dir, tmp_path / "plain", dense_epochs=1, adapt_epochs=1)
    d = base.model_dump()
    d["lowres"] = dict(epochs=2, img_size=32, max_items=4, train_length=12, batch_size=6, lr=3e-3)
    d["output"]["checkpoint"] = str(tmp_path / "low" / "ck.safetensors")
    cfg = TrainConfig(**d)
    spec = cfg.lowres_spec()
    assert (spec.img_size, spec.min_scale, spec.max_scale, spec.max_items) == (32, 8, 16, 4)
    phases = cfg.phases()
    assert [p.name for p in phases] == ["lowres", "dense", "adapt-reference"]
    assert [p.steps_per_epoch for p in phases] == [2, 2, 2] and cfg.total_epochs == 4
    lrs = [lr_at(s, cfg) for s in range(8)]
    assert lrs[0] == pytest.approx(3e-3)  # warm-up of 1 step to the lowres peak
    assert lrs[4] == pytest.approx(2e-3)  # the dense phase warms up to its own peak
    assert max(lrs[6:]) <= 5e-4 + 1e-12  # adaptation: its own cosine from adapt_lr
    from supernet import train as T
    sizes = []
    orig = T.train_step

    def spy(model, opt, images, labels, configs, *a, **k):
        sizes.append(tuple(images.shape[-2:]))
        return orig(model, opt, images, labels, configs, *a, **k)

    T.train_step = spy
    try:
        train(cfg, progress=False)
    finally:
        T.train_step = orig
    assert sizes == [(32, 32)] * 4 + [(64, 64)] * 4
    meta = read_sidecar(tmp_path / "low" / "ck.safetensors")
    assert [h["phase"] for h in meta["training"]["history"]] == ["lowres", "lowres", "dense", "adapt-reference"]
    assert meta["training"]["step"] == 8
    # the checkpoint rebuilds a strict 64 px model
    model, _ = load_checkpoint(tmp_path / "low" / "ck.safetensors")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 11, 64, 64)


def test_supernet_tables_reads_sidecars(tmp_path):
    """experiments/fashion_mosaic/supernet_tables.py: tables from sidecars, missing / unfinished runs listed."""
    import sys

    sys.path.insert(0, str(REPO))
    from experiments.fashion_mosaic import supernet_tables
    from search.testing import TINY_ARCH, TINY_IMG
    from supernet.checkpoint import save_checkpoint
    from supernet.seg import SegSupernet

    def run(stem, dense, uni, sampling, complete=True):
        model = SegSupernet.from_timm(TINY_ARCH["timm_name"], img_size=TINY_IMG, num_classes=11, head_dim=16,
                                      **TINY_ARCH["timm_kwargs"])
        metrics = {"length": 8, "dense": {"miou": dense, "pixel_acc": 0.9}, "train": {"seconds": 60.0},
                   "uniform": {r: {"miou": v} for r, v in zip(("0.3", "0.5", "0.7"), uni)}}
        save_checkpoint(model, tmp_path / f"{stem}.safetensors", arch=TINY_ARCH, img_size=TINY_IMG, num_classes=11,
                        training={"complete": complete, "config": {"train": {"sampling": sampling}, "model": {}}},
                        metrics=metrics)

    run("denseonly", 0.40, (0.20, 0.15, 0.10), "dense")
    run("supernet", 0.36, (0.34, 0.32, 0.30), "reference")
    run("baseline_w050", 0.30, (0.1, 0.1, 0.1), "dense", complete=False)  # killed mid-run: not a result
    out = supernet_tables.main(["--runs", str(tmp_path), "--out", str(tmp_path / "o")])
    ad = {r["run"]: r for r in out["adaptation"]}
    assert set(ad) == {"denseonly", "supernet"} and "baseline_w050" in out["missing"] and "dense" in out["missing"]
    assert ad["supernet"]["retention"]["0.5"] == pytest.approx(0.32 / 0.36)
    assert ad["supernet"]["gain_vs_denseonly"]["0.7"] == pytest.approx(0.20)
    assert ad["supernet"]["params"] > 0 and ad["supernet"]["macs"] > 0
    md = (tmp_path / "o" / "supernet_full.md").read_text()
    assert "| + reference adaptation (supernet.toml) | 1.0 | 0.3600 | 0.3400 | 0.3200 | 0.3000 |" in md
    assert "+0.2000" in md and "Not trained yet" in md


def test_a_state_file_that_loads_but_holds_something_else_is_one_error(data_dir, tmp_path):
    """A ``X.state.pt`` torch can read whose fields are missing or of the wrong type (or do not fit the model's
    optimizer) is a CheckpointError naming it and the fix, before anything is rewritten."""
    cfg = tiny_cfg(data_dir, tmp_path, adapt_epochs=1, dense_epochs=1)
    train(cfg, progress=False, stop_after=1)
    sp = state_path(tmp_path / "ck.safetensors")
    good = torch.load(sp, weights_only=True)
    weights = (tmp_path / "ck.safetensors").read_bytes()
    for bad in ({"format_version": good["format_version"]}, {**good, "config": "not json"},
                {**good, "history": json.dumps({"a": 1})},
                {**good, "optimizer": {"state": {}, "param_groups": []}}):
        torch.save(bad, sp)
        with pytest.raises(CheckpointError, match=r"ck.state.pt .*fix: rerun with --overwrite"):
            train(cfg, resume=True, progress=False)
        assert (tmp_path / "ck.safetensors").read_bytes() == weights


@pytest.mark.parametrize("section, field, value, words", [
    ("train", "lr", float("inf"), "finite"), ("train", "weight_decay", float("nan"), "finite"),
    ("train", "seed", 2 ** 40, "less than or equal"), ("lowres", "img_size", 66, "patch size 4"),
    ("model", "input_size", 62, "patch size 4"), ("model", "head_first_stage", 4, "below the number of stages")])
def test_recipe_values_that_would_fail_mid_training_are_refused_when_read(data_dir, tmp_path, section, field, value,
                                                                           words):
    from pydantic import ValidationError

    d = json.loads(tiny_cfg(data_dir, tmp_path).model_dump_json())
    d[section][field] = value
    if section == "lowres":
        d["lowres"]["epochs"] = 1
    with pytest.raises(ValidationError, match=words):
        TrainConfig(**d)
