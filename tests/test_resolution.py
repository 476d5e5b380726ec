"""The search resolution (issue 14): canvases of any size, and a model trained at one size run at another."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from supernet.data import FashionMosaic, MosaicSpec


@pytest.mark.parametrize("size", [448, 672])
def test_scene_canvases_keep_item_sizes_and_scale_the_count_with_the_area(size):
    spec = MosaicSpec.scene(size)
    area = (size / 224) ** 2
    assert spec.min_items == round(0.5 * area) and spec.max_items == round(2.0 * area)
    assert (spec.min_scale, spec.max_scale) == (28, 112)
    ds = FashionMosaic("val", length=12, spec=spec, seed=3)
    counts, fg = [], []
    for i in range(len(ds)):
        x, y, items = ds.generate(i, return_items=True)
        assert x.shape == (3, size, size) and y.shape == (size, size)
        assert spec.min_items <= len(items) <= spec.max_items
        assert all(28 <= it.size <= 112 and it.x + it.size <= size and it.y + it.size <= size for it in items)
        counts.append(len(items))
        fg.append(float((y > 0).float().mean()))
    # most of the canvas is background (the default 224 px task has ~4x the item density)
    assert np.mean(fg) < 0.15


def test_model_trained_at_224_runs_at_448_exactly_as_timm(tmp_path):
    """Weights saved at 224 px, model built for 448 px: at zero sparsity its backbone equals a timm Swin created at
    448 px with the same state_dict, bit for bit."""
    import timm

    from supernet.checkpoint import load_checkpoint, save_checkpoint
    from supernet.seg import SegSupernet

    torch.manual_seed(0)
    kw = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    m224 = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=224, num_classes=11, head_dim=16, **kw)
    arch = {"timm_name": "swin_tiny_patch4_window7_224", "timm_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                                            for k, v in kw.items()},
            "head_dim": 16, "num_classes": 11}
    path = save_checkpoint(m224, tmp_path / "m.safetensors", arch=arch, img_size=224, num_classes=11)
    m448, _ = load_checkpoint(path, img_size=448)
    assert tuple(m448.backbone.img_size) == (448, 448)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=448, num_classes=0, **kw).eval()
    ref.load_state_dict({k[len("backbone."):]: v for k, v in m224.state_dict().items() if k.startswith("backbone.")},
                        strict=True)
    x = torch.randn(2, 3, 448, 448)
    with torch.inference_mode():
        ours = m448.backbone.forward_features(x)
        theirs = ref.forward_features(x)
        assert torch.equal(ours, theirs)
        assert m448(x).shape == (2, 11, 448, 448)
        # windows at 448: 4x as many per stage-0 block as at 224
        assert m448.backbone.num_windows()[0][0] == 4 * m224.backbone.num_windows()[0][0]
