"""`sparsesearch prune dimap`: a pruned checkpoint + sidecar, masks kept through fine-tuning."""
import json
import os
import subprocess
import sys

import torch

from search.testing import make_tiny_checkpoint
from supernet import dimap
from supernet.checkpoint import load_checkpoint
from supernet.prune import parse_module_ratios, prune_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _zero_fraction(model, module):
    names = dimap.group_modules(model)[module]
    params = dict(model.named_parameters())
    n = sum(params[k].numel() for k in names)
    z = sum(int((params[k] == 0).sum()) for k in names)
    return z / n


def test_prune_checkpoint_with_finetune_keeps_masks(tmp_path):
    torch.set_num_threads(1)
    ck = make_tiny_checkpoint(tmp_path)
    out = tmp_path / "pruned.safetensors"
    rec = prune_checkpoint(str(ck), str(out), ratio=0.35, finetune_epochs=1, finetune_canvases=16,
                           measure_latency=False)
    assert abs(rec["params_reduction"] - rec["pruned_params"] / rec["total_params"]) < 1e-9
    assert 0 < rec["macs_reduction"] < 0.35
    model, meta = load_checkpoint(out)
    for m in ("qkv", "proj", "mlp"):
        assert _zero_fraction(model, m) >= 0.35 - 1e-3  # masks survived fine-tuning exactly
    assert meta["metrics"]["pruning"]["method"] == "dimap"
    assert meta["metrics"]["finetune"]["steps"] == 2


def test_prune_cli_json_and_bad_ratio(tmp_path):
    ck = make_tiny_checkpoint(tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "search.cli", "prune", "dimap", "--checkpoint", str(ck),
                        "--module-ratios", "qkv=0.2,proj=0.2,mlp=0.5", "--out", str(tmp_path / "p.safetensors"),
                        "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["module_ratios"] == {"qkv": 0.2, "proj": 0.2, "mlp": 0.5}
    assert "latency_ms" in rec and rec["latency_ms"]["pruned"] > 0
    assert parse_module_ratios(None) is None
    try:
        parse_module_ratios("foo=0.1")
        raise AssertionError("bad module name accepted")
    except ValueError as e:
        assert "foo=0.1" in str(e)
