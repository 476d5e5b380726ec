"""Tests for supernet.checkpoint: safetensors + JSON sidecar round trip, verification, timm weights."""
import json
import math

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from supernet.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_checkpoint_bytes,
    load_from_state_dict,
    load_timm_state_dict,
    read_checkpoint_bytes,
    read_sidecar,
    save_checkpoint,
    sha256_file,
    sidecar_path,
)
from supernet.seg import SegSupernet

torch.set_num_threads(1)

NAME = "swin_tiny_patch4_window7_224"
KW = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
ARCH = {"timm_name": NAME, "timm_kwargs": {**KW, "depths": list(KW["depths"]), "num_heads": list(KW["num_heads"])},
        "head_dim": 16, "num_classes": 11}
IMG = 64
SPARSE = [[0.5, 0.5], [0.25, 0.5], [0.0, 0.0], [0.0, 0.0]]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return SegSupernet.from_timm(NAME, img_size=IMG, num_classes=11, head_dim=16, **KW)


def save(model, path, **extra):
    kw = dict(arch=ARCH, img_size=IMG, num_classes=11, search_space={"ratios": [0.0, 0.5]},
              dataset={"img_size": IMG}, training={"epoch": 1}, metrics={"dense": {"miou": 0.5}})
    kw.update(extra)
    return save_checkpoint(model, path, **kw)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    path = save(model, tmp_path / "ck.safetensors")
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(2, 3, IMG, IMG)
    model.eval()
    for cfg in ([[0.0] * 2] * 4, SPARSE):
        model.set_sparsity(cfg)
        loaded.set_sparsity(cfg)
        with torch.inference_mode():
            assert torch.equal(model(x), loaded(x))
    # the sidecar describes the file
    assert meta["weights_sha256"] == sha256_file(path)
    assert meta["tensors"] == {k: list(v.shape) for k, v in a.items()}
    assert meta["arch"]["timm_kwargs"]["depths"] == [2, 2, 2, 2]
    assert meta["metrics"] == {"dense": {"miou": 0.5}} and meta["img_size"] == IMG
    assert sidecar_path(path).name == "ck.json"
    # either file of the pair loads, and nothing temporary is left behind
    loaded2, _ = load_checkpoint(sidecar_path(path))
    assert torch.equal(loaded2.state_dict()["decode.classifier.weight"], a["decode.classifier.weight"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.json", "ck.safetensors"]


def test_nan_metrics_are_stored_as_null(tmp_path):
    path = save(tiny_model(), tmp_path / "n.safetensors", metrics={"miou": math.nan})
    assert read_sidecar(path)["metrics"] == {"miou": None}
    json.loads(sidecar_path(path).read_text())  # strict JSON


def test_corrupted_weights_raise(saved):
    model, path = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor payload, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ck.safetensors does not match its sidecar ck.json \(sha256.*fix: re-save"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not match"):
        read_checkpoint_bytes(path)
    # without verification the flipped bit goes unnoticed: this is what verify protects against
    loaded, _ = load_checkpoint(path, verify=False)
    diff = [k for k, v in model.state_dict().items() if not torch.equal(v, loaded.state_dict()[k])]
    assert len(diff) == 1


def test_sidecar_with_other_shapes_raises(saved):
    _, path = saved
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    meta["arch"]["timm_kwargs"]["embed_dim"] = 24  # the rebuilt model no longer fits the weights
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not fit the model.*shape mismatches.*patch_embed.proj.weight"):
        load_checkpoint(path)


def test_sidecar_tensor_list_mismatch_raises(saved):
    _, path = saved
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    meta["tensors"]["decode.classifier.weight"] = [12, 16, 1, 1]
    meta["tensors"]["extra.weight"] = [1]
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tensor list of its sidecar.*missing 1: extra.weight.*shape mismatches"):
        load_checkpoint(path)


def test_missing_files_and_bad_json_raise_with_fix(saved):
    _, path = saved
    side = sidecar_path(path)
    text = side.read_text()
    side.write_text(text[:-20])
    with pytest.raises(CheckpointError, match=r"ck.json is not valid JSON.*fix:"):
        load_checkpoint(path)
    side.write_text(json.dumps({"format_version": 1}))
    with pytest.raises(CheckpointError, match=r"ck.json lacks arch.*fix:"):
        load_checkpoint(path)
    side.unlink()
    with pytest.raises(CheckpointError, match=r"ck.json \(sidecar of ck.safetensors\) not found; fix: keep X.json"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"nope.safetensors not found; fix:"):
        load_checkpoint(path.parent / "nope.safetensors")


def test_checkpoint_bytes_verify_sha(saved):
    model, path = saved
    data, meta = read_checkpoint_bytes(path)
    arr = np.frombuffer(data, dtype=np.uint8)  # what the Ray object store hands a worker
    loaded = load_checkpoint_bytes(memoryview(arr), meta)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    bad = bytearray(data)
    bad[-5] ^= 0xFF
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        load_checkpoint_bytes(bytes(bad), meta)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint_bytes(data, {**meta, "weights_sha256": "0" * 64})


def test_load_from_state_dict_accepts_numpy_and_names_missing_keys(saved):
    model, path = saved
    meta = read_sidecar(path)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    loaded = load_from_state_dict(meta, sd)
    assert torch.equal(loaded.state_dict()["backbone.norm.weight"], model.state_dict()["backbone.norm.weight"])
    del sd["backbone.norm.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1: backbone.norm.bias"):
        load_from_state_dict(meta, sd)
    assert isinstance(build_model(meta), SegSupernet)


def _timm(embed_dim=16, heads=(1, 1, 2, 2), seed=1):
    torch.manual_seed(seed)
    kw = {**KW, "embed_dim": embed_dim, "num_heads": heads}
    return timm.create_model(NAME, pretrained=False, img_size=IMG, num_classes=10, **kw)


def test_timm_state_dict_loads_into_backbone(tmp_path):
    ref = _timm()
    sd = ref.state_dict()
    st = tmp_path / "swin.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    model = tiny_model(seed=5)
    report = load_timm_state_dict(model, st)
    assert set(report["ignored"]) == {"head.fc.weight", "head.fc.bias"}
    got = model.backbone.state_dict()
    assert report["loaded"] == len(got)
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    # the backbone now computes timm's features
    x = torch.randn(1, 3, IMG, IMG)
    ref.eval()
    model.eval()
    with torch.inference_mode():
        assert torch.allclose(model.backbone.forward_features(x), ref.forward_features(x), atol=1e-6)
    # .pth through torch.load(weights_only=True), wrapped in {"model": ...}
    pth = tmp_path / "swin.pth"
    torch.save({"model": sd, "epoch": 3}, pth)
    other = tiny_model(seed=7)
    load_timm_state_dict(other, pth)
    assert torch.equal(other.backbone.state_dict()["norm.weight"], sd["norm.weight"])


class _NotATensor:
    pass


def test_timm_state_dict_refuses_pickles_and_mismatches(tmp_path):
    pth = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": _NotATensor()}, pth)
    with pytest.raises(CheckpointError, match=r"evil.pth cannot be read with torch.load\(weights_only=True\).*fix:"):
        load_timm_state_dict(tiny_model(), pth)
    st = tmp_path / "wide.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in _timm(embed_dim=24, heads=(1, 2, 2, 4)).state_dict().items()},
                                str(st))
    with pytest.raises(CheckpointError, match=r"wide.safetensors does not fit the Swin backbone \(shape mismatches"):
        load_timm_state_dict(tiny_model(), st)
    with pytest.raises(CheckpointError, match="not found"):
        load_timm_state_dict(tiny_model(), tmp_path / "absent.safetensors")


def test_export_command_stores_float16_loads_float32_and_refuses_overwriting_its_source(saved, capsys):
    """`sparsesearch supernet export`: the shipping format (float16 storage, sidecar kept, loading gives float32
    values rounded to float16); exporting twice gives the same bytes; the source itself as destination, or a
    missing source, is one error line (exit 2) and the source is untouched."""
    from search.cli import main

    model, path = saved
    before = path.read_bytes()
    dst = path.with_name("half.safetensors")
    assert main(["supernet", "export", str(path), str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == sha256_file(dst) and info["storage_dtype"] == "float16"
    assert dst.stat().st_size < 0.6 * path.stat().st_size
    meta = read_sidecar(dst)
    assert meta["storage_dtype"] == "float16" and meta["training"] == {"epoch": 1} and meta["arch"] == ARCH
    half, _ = load_checkpoint(dst)
    for k, v in half.state_dict().items():
        want = model.state_dict()[k]
        assert v.dtype == want.dtype
        if want.is_floating_point():
            assert torch.equal(v, want.half().float()), k
    again = path.with_name("again.safetensors")
    for i in range(3):  # float16 -> float32 -> float16 is exact, and the file's bytes (its sha256) reproducible
        assert main(["supernet", "export", str(dst), str(again)] + (["--overwrite"] if i else [])) == 0
        assert again.read_bytes() == dst.read_bytes()
    for args in (["supernet", "export", str(path), str(path)],
                 ["supernet", "export", str(path.with_suffix(".json")), str(path)],  # the sidecar names the source
                 ["supernet", "export", str(path), str(path.with_suffix(""))],  # would write the source's X.json
                 ["supernet", "export", str(path), str(path.parent)],
                 ["supernet", "export", str(path.with_name("none.safetensors")), str(dst)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sparsesearch: error:") and "fix:" in err[0]
    assert path.read_bytes() == before


def test_canonical_metadata_sorts_the_header_keys_in_place_whatever_order_they_were_written_in():
    """safetensors writes ``__metadata__`` from a hash map; the canonical form has its keys sorted, the same
    header length (so every tensor offset stays), and the same tensors. Input that is already canonical, or
    metadata that does not match the header, comes back unchanged."""
    from supernet.checkpoint import _canonical_metadata

    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    meta = {f"key{i}": str(i * 7) for i in (5, 1, 9, 3, 0, 7, 2)}  # 7 keys: 5,040 possible orders
    raw = safetensors.torch.save(tensors, metadata=meta)
    out = _canonical_metadata(raw, meta)
    n = int.from_bytes(out[:8], "little")
    assert len(out) == len(raw) and n == int.from_bytes(raw[:8], "little")
    header = json.loads(out[8:8 + n])
    assert list(header["__metadata__"]) == sorted(meta) and header["__metadata__"] == meta
    assert out[8 + n:] == raw[8 + n:]
    back = safetensors.torch.load(out)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert _canonical_metadata(out, meta) == out
    assert _canonical_metadata(raw, {**meta, "key5": "other"}) == raw


def test_canonical_metadata_leaves_non_ascii_metadata_as_written():
    """A header whose metadata holds raw UTF-8 (safetensors writes it unescaped) would change its byte length
    if rewritten in json.dumps's escaped form, moving every tensor offset: such data comes back unchanged."""
    from supernet.checkpoint import _canonical_metadata

    meta = {"z": "größe", "a": "ü"}
    raw = safetensors.torch.save({"w": torch.ones(2)}, metadata=meta)
    assert _canonical_metadata(raw, meta) == raw
    assert torch.equal(safetensors.torch.load(_canonical_metadata(raw, meta))["w"], torch.ones(2))


def test_refuse_overwrite_is_the_one_rule_for_writing_commands(tmp_path):
    """supernet.fileio.refuse_overwrite: a destination the command reads is refused even with overwrite (a
    different spelling of the same path included); an existing one is refused without overwrite, naming it and
    --overwrite; new files pass; the caller's error class is raised."""
    from supernet.fileio import refuse_overwrite

    class Mine(ValueError):
        pass

    src, new, old = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.json"
    src.write_bytes(b"x")
    old.write_text("{}")
    refuse_overwrite("cmd", (new,), reads=(src,))
    refuse_overwrite("cmd", (old,), overwrite=True, reads=(src,))
    with pytest.raises(Mine, match=r"^cmd: .*a\.safetensors would overwrite .*a\.safetensors, which the command reads"):
        refuse_overwrite("cmd", (tmp_path / "sub" / ".." / "a.safetensors",), overwrite=True, reads=(src,), error=Mine)
    with pytest.raises(Mine, match=r"c\.json already exists and would be replaced; fix: do this, or pass --overwrite"):
        refuse_overwrite("cmd", (new, old), fix="do this", error=Mine)
