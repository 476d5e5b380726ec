"""Tests for supernet.data: IDX reader, Fashion-MNIST loader, FashionMosaic canvases."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F

from supernet.data import (
    DEFAULT_DATA_DIR,
    ENV_VAR,
    FASHION_CLASSES,
    FASHION_MEAN,
    FASHION_STD,
    NUM_SEG_CLASSES,
    DatasetNotFoundError,
    FashionMosaic,
    MosaicSpec,
    load_fashion_mnist,
    make_loader,
    read_idx,
    resolve_data_dir,
)

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, _CODES[arr.dtype.type], arr.ndim)
    header += struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fake_fashion(folder: Path, n_train=40, n_test=20, gz=True, seed=0) -> Path:
    """Tiny Fashion-MNIST look-alike: random 28x28 items with a dark border."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        imgs[:, :3] = 0
        imgs[:, :, -3:] = 0
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", imgs, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return folder


@pytest.fixture
def fake_dir(tmp_path):
    return make_fake_fashion(tmp_path / "fmnist")


# ------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4)
    arr = np.abs(arr).astype(dtype) if dtype == np.uint8 else arr.astype(dtype) * 3
    out = read_idx(write_idx(tmp_path / "x.idx", arr, gz))
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_bad_magic_names_file(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ValueError, match="bad-images-idx3-ubyte.*not an IDX file"):
        read_idx(p)


def test_read_idx_bad_type_code_and_truncation(tmp_path):
    p = tmp_path / "code.idx"
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="type code 0x07"):
        read_idx(p)
    full = write_idx(tmp_path / "full.idx", np.zeros((4, 5), np.uint8), gz=False).read_bytes()
    t = tmp_path / "trunc.idx.gz"
    t.write_bytes(gzip.compress(full[:-3]))
    with pytest.raises(ValueError, match="trunc.idx.gz: truncated"):
        read_idx(t)
    h = tmp_path / "header.idx"
    h.write_bytes(full[:6])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(h)


# -------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_folder(tmp_path, gz):
    folder = make_fake_fashion(tmp_path / "d", n_train=30, n_test=12, gz=gz)
    images, labels = load_fashion_mnist("train", root=folder)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (30,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(30) % 10)
    test_images, _ = load_fashion_mnist("test", root=str(folder))
    assert test_images.shape == (12, 28, 28)
    # cached on the resolved path, and read-only so callers cannot corrupt the cache
    again, _ = load_fashion_mnist("train", root=folder)
    assert again is images
    assert not images.flags.writeable


def test_precedence_argument_over_env_over_default(tmp_path, monkeypatch):
    env_dir = make_fake_fashion(tmp_path / "env", n_train=11, seed=1)
    arg_dir = make_fake_fashion(tmp_path / "arg", n_train=13, seed=2)
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    assert load_fashion_mnist("train")[0].shape[0] == 11
    assert load_fashion_mnist("train", root=arg_dir)[0].shape[0] == 13
    monkeypatch.delenv(ENV_VAR)
    assert resolve_data_dir() == Path(DEFAULT_DATA_DIR).resolve()


def test_missing_folder_raises_with_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", root=missing)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert ENV_VAR in msg and "--data-dir" in msg
    assert "\n" not in msg
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(DatasetNotFoundError, match=ENV_VAR):
        FashionMosaic("train", length=1)


def test_missing_file_in_existing_folder_names_it(tmp_path):
    folder = make_fake_fashion(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist("test", root=folder)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=folder)


def test_label_count_mismatch_raises(tmp_path):
    folder = make_fake_fashion(tmp_path / "d", n_train=10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(9, np.uint8), gz=True)
    with pytest.raises(ValueError, match="expected 10 labels"):
        load_fashion_mnist("train", root=folder)


def test_real_fashion_mnist_files():
    """The Debian dataset-fashion-mnist files: 60k/10k items, balanced classes."""
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [6000] * 10)
    t_images, t_labels = load_fashion_mnist("test")
    assert t_images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(t_labels, minlength=10), [1000] * 10)
    assert len(FASHION_CLASSES) == 10 and NUM_SEG_CLASSES == 11
    image, label = FashionMosaic("val", length=3)[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert label.shape == (224, 224) and label.dtype == torch.int64
    assert 0 <= int(label.min()) and int(label.max()) <= 10


# --------------------------------------------------------------------------------------- mosaic
def test_spec_validation():
    with pytest.raises(pydantic.ValidationError):
        MosaicSpec(img_sise=224)  # extra="forbid" catches typos
    with pytest.raises(pydantic.ValidationError, match="max_scale"):
        MosaicSpec(img_size=64, max_scale=112)
    with pytest.raises(pydantic.ValidationError, match="min_items"):
        MosaicSpec(min_items=5, max_items=2)
    assert MosaicSpec(img_size=672, max_scale=336).img_size == 672


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_labels_match_pasted_item_masks(fake_dir, split):
    spec = MosaicSpec(img_size=96, min_items=2, max_items=6, min_scale=20, max_scale=60, threshold=40,
                      data_dir=str(fake_dir))
    ds = FashionMosaic(split, length=6, spec=spec, seed=7)
    src_images, src_labels = load_fashion_mnist("train" if split == "train" else "test", fake_dir)
    thr = spec.threshold
    for i in range(len(ds)):
        image, label, items = ds.generate(i, return_items=True)
        assert spec.min_items <= len(items) <= spec.max_items
        exp_img = np.zeros((96, 96), np.float32)
        exp_lab = np.zeros((96, 96), np.int64)
        for it in items:
            assert spec.min_scale <= it.size <= spec.max_scale
            assert 0 <= it.x and it.x + it.size <= 96 and 0 <= it.y and it.y + it.size <= 96
            assert it.cls == src_labels[it.source_index]
            # independent resize with torch: the mask is the thresholded bilinear item
            ref = F.interpolate(torch.from_numpy(src_images[it.source_index].astype(np.float32))[None, None],
                                size=(it.size, it.size), mode="bilinear", align_corners=False)[0, 0].numpy()
            clear = np.abs(ref - thr) > 1e-3
            np.testing.assert_array_equal(it.mask[clear], (ref > thr)[clear])
            win = (slice(it.y, it.y + it.size), slice(it.x, it.x + it.size))
            exp_img[win][it.mask] = ref[it.mask]
            exp_lab[win][it.mask] = it.cls + 1
        np.testing.assert_array_equal(label.numpy(), exp_lab)
        np.testing.assert_allclose(image[0].numpy(), (exp_img / 255 - FASHION_MEAN) / FASHION_STD, atol=1e-4)
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        # the top item owns its pixels: the last item's mask is fully visible with its class
        last = items[-1]
        assert (label[last.y:last.y + last.size, last.x:last.x + last.size].numpy()[last.mask] == last.cls + 1).all()


def test_determinism_and_seed_dependence(fake_dir):
    spec = MosaicSpec(img_size=64, max_scale=48, noise=5.0, data_dir=str(fake_dir))
    a = FashionMosaic("train", length=8, spec=spec, seed=3)
    b = FashionMosaic("train", length=8, spec=spec, seed=3)
    c = FashionMosaic("train", length=8, spec=spec, seed=4)
    first = [a[i] for i in range(8)]
    for i in reversed(range(8)):  # order does not matter
        xb, yb = b[i]
        assert torch.equal(first[i][0], xb) and torch.equal(first[i][1], yb)
    assert torch.equal(a[-1][0], first[7][0])
    assert any(not torch.equal(first[i][0], c[i][0]) for i in range(8))
    assert not torch.equal(first[0][0], first[1][0])
    # a pickled copy (as sent to DataLoader / Ray workers) regenerates the same canvas
    d = pickle.loads(pickle.dumps(a))
    assert d._images is None or d._images is a._images
    assert torch.equal(d[5][0], first[5][0]) and torch.equal(d[5][1], first[5][1])
    with pytest.raises(IndexError):
        a[8]


def test_val_and_test_draw_disjoint_items(fake_dir):
    spec = MosaicSpec(img_size=64, min_items=3, max_items=8, max_scale=40, data_dir=str(fake_dir))
    n_test = 20
    val = FashionMosaic("val", length=40, spec=spec, seed=0)
    test = FashionMosaic("test", length=40, spec=spec, seed=0)
    val_src = {it.source_index for i in range(40) for it in val.generate(i, return_items=True)[2]}
    test_src = {it.source_index for i in range(40) for it in test.generate(i, return_items=True)[2]}
    assert val_src.isdisjoint(test_src)
    assert max(val_src) < n_test // 2 <= min(test_src) and max(test_src) < n_test
    assert len(val_src) > 5 and len(test_src) > 5  # many items used, not a degenerate draw
    assert set(val.pool).isdisjoint(test.pool) and len(val.pool) + len(test.pool) == n_test


def test_bad_arguments(fake_dir):
    spec = MosaicSpec(img_size=64, max_scale=32, data_dir=str(fake_dir))
    with pytest.raises(ValueError, match="split"):
        FashionMosaic("valid", length=1, spec=spec)
    with pytest.raises(ValueError, match="length"):
        FashionMosaic("train", length=-1, spec=spec)
    with pytest.raises(ValueError, match="seed"):
        FashionMosaic("train", length=1, spec=spec, seed=-2)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader("train", length=4, batch_size=0, spec=spec)


def test_make_loader_batches_and_shuffle_is_seeded(fake_dir):
    spec = MosaicSpec(img_size=64, max_scale=32, data_dir=str(fake_dir))
    loader = make_loader("train", length=10, batch_size=4, spec=spec, seed=1)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (4, 64, 64) and y.dtype == torch.int64
    ds = loader.dataset
    assert torch.equal(x[1], ds[1][0])
    s1 = torch.cat([b[1] for b in make_loader("train", 10, 4, spec, seed=1, shuffle=True)])
    s2 = torch.cat([b[1] for b in make_loader("train", 10, 4, spec, seed=1, shuffle=True)])
    assert torch.equal(s1, s2)
