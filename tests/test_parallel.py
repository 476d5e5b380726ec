"""Data-parallel training (``[train] processes``, supernet/parallel.py): batches split across ranks, gradients
averaged, ranks agree, resume bit-exact, user errors raised by a rank reach the caller with their type."""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F

from supernet.checkpoint import load_checkpoint, read_sidecar
from supernet.parallel import rank_batches
from supernet.train import TrainConfig, TrainSpecError, build_supernet, train

from test_train import data_dir, tiny_cfg  # noqa: F401 - the fixture is used by name

torch.set_num_threads(1)


def test_rank_batches_split_every_batch_in_order():
    order = list(range(100, 123))  # 23 canvases: batches of 4 -> 5 full batches, 3 dropped
    parts = [rank_batches(order, 4, r, 2) for r in range(2)]
    assert parts[0] == [100, 101, 104, 105, 108, 109, 112, 113, 116, 117]
    assert parts[1] == [102, 103, 106, 107, 110, 111, 114, 115, 118, 119]
    # the ranks' batch b together is the single process's batch b
    for b in range(5):
        assert parts[0][2 * b:2 * b + 2] + parts[1][2 * b:2 * b + 2] == order[4 * b:4 * b + 4]
    assert rank_batches(order, 4, 0, 1) == order[:20]
    with pytest.raises(ValueError, match="multiple of 3"):
        rank_batches(order, 4, 0, 3)


def _grad_rank(rank: int, world: int, init_file: str, cfg: TrainConfig, out: str) -> None:
    """One rank of :func:`test_average_gradients_is_the_full_batch_gradient`: its half of a batch, then the average."""
    import torch.distributed as dist

    from supernet.parallel import average_gradients

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model, x, y = _grad_problem(cfg)
    half = x.shape[0] // world
    sl = slice(rank * half, (rank + 1) * half)
    loss = F.cross_entropy(model(x[sl]), y[sl])
    loss.backward()
    mean = average_gradients(model, float(loss), world)
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, "loss": mean},
                   out)
    dist.destroy_process_group()


def _grad_problem(cfg: TrainConfig):
    torch.manual_seed(0)
    model = build_supernet(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 64, 64, generator=g)
    y = torch.randint(0, 11, (4, 64, 64), generator=g)
    return model, x, y


@pytest.mark.slow
def test_average_gradients_is_the_full_batch_gradient(data_dir, tmp_path):  # noqa: F811
    """Two ranks on two halves of a batch, gradients averaged: the gradient (and loss) of the whole batch in one
    process, for a loss that is a mean over the batch's pixels (summed instead of averaged it would be 2x)."""
    import torch.multiprocessing as mp

    cfg = tiny_cfg(data_dir, tmp_path)
    out = tmp_path / "grads.pt"
    mp.start_processes(_grad_rank, args=(2, str(tmp_path / "init"), cfg, str(out)), nprocs=2, start_method="spawn")
    got = torch.load(out, weights_only=True)
    model, x, y = _grad_problem(cfg)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got["grads"]) == set(want) and len(want) > 10
    for n, g in want.items():
        torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=1e-7, msg=n)


def test_processes_must_divide_the_batch(data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"batch_size 4 is not a multiple of \[train\] processes 3"):
        tiny_cfg(data_dir, tmp_path, processes=3)
    cfg = tiny_cfg(data_dir, tmp_path, processes=2)
    with pytest.raises(ValueError, match=r"\[lowres\] batch_size 3"):
        TrainConfig(**{**cfg.model_dump(), "lowres": {"epochs": 1, "img_size": 32, "train_length": 6, "batch_size": 3}})


def test_processes_train_on_the_cpu_only(data_dir, tmp_path, monkeypatch):  # noqa: F811
    import supernet.train as tr

    monkeypatch.setattr(tr, "resolve_device", lambda d: torch.device("cuda"))
    with pytest.raises(TrainSpecError, match=r"processes = 2 trains data-parallel on the CPU"):
        train(tiny_cfg(data_dir, tmp_path, processes=2, device="cuda"), progress=False)
    assert not (tmp_path / "ck.safetensors").exists()


@pytest.mark.slow
def test_two_processes_resume_bit_exact_and_match_one_process(data_dir, tmp_path):  # noqa: F811
    """Two ranks across a dense -> reference-adaptation boundary with the task-model levers: stopping after the
    dense epoch and resuming gives the uninterrupted run's weights bit for bit (the ranks' weights are checked
    equal every epoch), and the result is one process's up to float summation order."""
    kw = dict(dense_epochs=1, adapt_epochs=1, sampling="reference", loss="item", aux_weight=0.5,
              loss_resolution="quarter", bf16=True, threads=2, val_each_epoch=True)

    def cfg(sub, processes):  # DropPath on: each rank draws its own masks, reseeded per epoch, so resume stays exact
        c = tiny_cfg(data_dir, tmp_path / sub, processes=processes, **kw)
        return c.model_copy(update={"model": c.model.model_copy(update={"drop_path_rate": 0.1})})

    straight, split, single = cfg("a", 2), cfg("b", 2), cfg("c", 1)
    done = train(straight, progress=False)
    assert done["dense"]["miou"] >= 0 and done["train"]["canvases"] == 2 * straight.data.train_length
    part = train(split, progress=False, stop_after=1)
    assert part == {"complete": False, "epoch": 1, "step": split.steps_per_epoch,
                    "checkpoint": str(tmp_path / "b" / "ck.safetensors")}
    train(split, resume=True, progress=False)
    train(single, progress=False)
    a, _ = load_checkpoint(tmp_path / "a" / "ck.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "ck.safetensors")
    c, _ = load_checkpoint(tmp_path / "c" / "ck.safetensors")
    worst = 0.0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        if v.is_floating_point():
            worst = max(worst, float((v - c.state_dict()[k]).abs().max()))
    assert worst > 0  # the two ranks' DropPath masks differ from one process's
    hist = read_sidecar(tmp_path / "b" / "ck.safetensors")["training"]["history"]
    assert [h["canvases"] for h in hist] == [straight.data.train_length] * 2
    assert all(0 <= h["val_dense"]["miou"] <= 1 for h in hist)  # rank 0 validated every epoch


@pytest.mark.slow
def test_a_rank_s_user_error_reaches_the_caller(data_dir, tmp_path):  # noqa: F811
    cfg = tiny_cfg(data_dir, tmp_path, processes=2, dense_epochs=2, adapt_epochs=0)
    train(cfg, progress=False, stop_after=1)
    changed = tiny_cfg(data_dir, tmp_path, processes=2, dense_epochs=2, adapt_epochs=0, lr=5e-3)
    with pytest.raises(TrainSpecError, match=r"the spec changed since this checkpoint was written \(\[train\] lr\)"):
        train(changed, resume=True, progress=False)
    # a resume may change the number of processes (like threads and device): one process continues the run
    one = tiny_cfg(data_dir, tmp_path, processes=1, dense_epochs=2, adapt_epochs=0)
    out = train(one, resume=True, progress=False)
    assert read_sidecar(tmp_path / "ck.safetensors")["training"]["epoch"] == 2 and "dense" in out


@pytest.mark.slow
def test_a_failure_on_rank_0_alone_ends_the_run_with_its_error(data_dir, tmp_path):  # noqa: F811
    """Rank 0 cannot write its checkpoint (the path is a folder) while rank 1 waits for it in a collective: the
    call raises rank 0's error, with its type, promptly, and no rank is left running."""
    import multiprocessing

    cfg = tiny_cfg(data_dir, tmp_path, processes=2, dense_epochs=1, adapt_epochs=0)
    (tmp_path / "ck.safetensors").mkdir()
    t0 = time.monotonic()
    with pytest.raises(OSError):
        train(cfg, progress=False)
    assert time.monotonic() - t0 < 120
    assert multiprocessing.active_children() == []
