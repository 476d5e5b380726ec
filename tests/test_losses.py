"""The task model's losses (supernet/losses.py) and its metrics (item-pixel class accuracy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supernet.losses import seg_loss, seg_loss_from_logits, soft_targets
from supernet.metrics import item_class_accuracy, item_recall


def test_soft_targets_are_cell_proportions():
    y = torch.zeros(1, 8, 8, dtype=torch.int64)
    y[0, :4, :4] = 3
    y[0, 0, 0] = 5
    t = soft_targets(y, 11, 4)
    assert t.shape == (1, 11, 2, 2) and torch.allclose(t.sum(1), torch.ones(1, 2, 2))
    assert t[0, 3, 0, 0] == pytest.approx(15 / 16) and t[0, 5, 0, 0] == pytest.approx(1 / 16)
    assert torch.equal(soft_targets(y, 11, 1).argmax(1), y)
    with pytest.raises(ValueError):
        soft_targets(torch.zeros(1, 6, 6, dtype=torch.int64), 11, 4)


def test_pixel_ce_at_full_resolution_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 11, 16, 16)
    y = torch.randint(0, 11, (2, 16, 16))
    assert seg_loss_from_logits(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def test_item_weighted_ce_weighs_every_region_alike():
    """One big and one small region: the item-weighted loss is the mean of their mean CEs (plus background)."""
    y = torch.zeros(1, 16, 16, dtype=torch.int64)
    y[0, :12, :12] = 1  # 144 px
    y[0, 14:, 14:] = 2  # 4 px
    logits = torch.zeros(1, 11, 16, 16)
    logits[0, 1] = 5.0  # every pixel predicts class 1: right on the big region, wrong on the small one
    ce = F.cross_entropy(logits, y, reduction="none")[0]
    regions = [ce[y[0] == c].mean() for c in (0, 1, 2)]
    assert seg_loss_from_logits(logits, y, kind="item") == pytest.approx(float(sum(regions) / 3), rel=1e-5)
    # pixel CE hides the small region's error: its 4 pixels weigh 4 / 256
    assert seg_loss_from_logits(logits, y, kind="ce") < seg_loss_from_logits(logits, y, kind="item")
    # background down-weighted
    assert seg_loss_from_logits(logits, y, kind="item", bg_weight=0.25) == pytest.approx(
        float((0.25 * regions[0] + regions[1] + regions[2]) / 2.25), rel=1e-5)


def test_aux_loss_classifies_each_region_from_its_pooled_logits():
    y = torch.zeros(1, 8, 8, dtype=torch.int64)
    y[0, :4] = 4
    logits = torch.zeros(1, 11, 8, 8, requires_grad=True)
    base = seg_loss_from_logits(logits, y)
    with_aux = seg_loss_from_logits(logits, y, aux_weight=1.0)
    assert (with_aux - base).item() == pytest.approx(np.log(11), rel=1e-5)  # uniform logits: CE of one region = log K
    with_aux.backward()
    g = logits.grad[0]
    assert (g[4, :4] < 0).all() and (g[4, 4:] == g[4, 4:][0, 0]).all()  # pushes class 4 up on its own pixels


def test_seg_loss_quarter_uses_the_heads_resolution():
    from supernet.seg import SegSupernet

    torch.manual_seed(0)
    m = SegSupernet.from_timm("swin_tiny_patch4_window7_224", img_size=64, num_classes=11, head_dim=8, embed_dim=8,
                              depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 11, (2, 64, 64))
    assert m.forward_logits(x).shape == (2, 11, 16, 16)
    q = seg_loss(m, x, y, kind="item", aux_weight=0.5, at="quarter")
    q.backward()
    assert torch.isfinite(q) and all(p.grad is not None for p in m.decode.parameters())
    with pytest.raises(ValueError):
        seg_loss(m, x, y, at="half")


def test_item_metrics_separate_finding_items_from_knowing_their_class():
    cm = np.zeros((3, 3), dtype=np.int64)
    cm[0, 0] = 100  # background right
    cm[1, 1], cm[1, 2], cm[1, 0] = 6, 3, 1  # class 1: 6 right, 3 as the other item class, 1 missed
    cm[2, 2], cm[2, 0] = 8, 2
    assert item_class_accuracy(cm) == pytest.approx(14 / 20)
    assert item_recall(cm) == pytest.approx(17 / 20)
    assert np.isnan(item_class_accuracy(np.zeros((3, 3), dtype=np.int64)))
