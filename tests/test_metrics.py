"""Tests for supernet.metrics: confusion matrix, IoU, pixel accuracy, SegMetric."""
import math

import numpy as np
import pytest
import torch

from supernet.metrics import SegMetric, confusion_matrix, miou, per_class_iou, pixel_accuracy


def slow_confusion(pred, target, k, ignore_index=None):
    cm = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
        if ignore_index is not None and t == ignore_index:
            continue
        cm[t, p] += 1
    return cm


def test_confusion_matrix_matches_slow_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    k = 5
    pred = torch.randint(0, k, (3, 17, 13), generator=g)
    target = torch.randint(0, k, (3, 17, 13), generator=g)
    cm = confusion_matrix(pred, target, k)
    assert cm.dtype == torch.int64 and cm.shape == (k, k)
    np.testing.assert_array_equal(cm.numpy(), slow_confusion(pred, target, k))
    assert int(cm.sum()) == pred.numel()


def test_confusion_matrix_ignore_index_matches_slow_loop():
    g = torch.Generator().manual_seed(1)
    k = 4
    pred = torch.randint(0, k, (2, 9, 11), generator=g)
    target = torch.randint(0, k, (2, 9, 11), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.3] = 255
    cm = confusion_matrix(pred, target, k, ignore_index=255)
    np.testing.assert_array_equal(cm.numpy(), slow_confusion(pred, target, k, ignore_index=255))
    assert int(cm.sum()) == int((target != 255).sum())


def test_confusion_matrix_accumulates_by_summation():
    g = torch.Generator().manual_seed(2)
    k = 3
    pred = torch.randint(0, k, (4, 8, 8), generator=g)
    target = torch.randint(0, k, (4, 8, 8), generator=g)
    total = confusion_matrix(pred[:2], target[:2], k) + confusion_matrix(pred[2:], target[2:], k)
    assert torch.equal(total, confusion_matrix(pred, target, k))


def test_confusion_matrix_orientation_rows_are_target():
    pred = torch.tensor([1, 1, 1])
    target = torch.tensor([0, 0, 1])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[0, 2], [0, 1]]


@pytest.mark.parametrize(
    "pred, target, match",
    [
        (torch.tensor([0, 3]), torch.tensor([0, 1]), "values must lie in 0..2"),
        (torch.tensor([0, 1]), torch.tensor([0, -1]), "values must lie in 0..2"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer tensor"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), "shape"),
    ],
)
def test_confusion_matrix_rejects_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 3)


def test_iou_and_accuracy_on_hand_made_matrix():
    # rows = target, cols = prediction; class 2 absent from both.
    cm = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    # class 0: TP 3, FN 1, FP 1 -> 3/5; class 1: TP 2, FN 1, FP 1 -> 2/4
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(0.6)
    assert iou[1] == pytest.approx(0.5)
    assert math.isnan(iou[2])
    assert miou(cm) == pytest.approx(0.55)
    assert pixel_accuracy(cm) == pytest.approx(5 / 7)


def test_iou_counts_classes_only_predicted():
    # class 1 never in target but predicted once: IoU 0 and it enters the mean.
    cm = np.array([[2, 1], [0, 0]])
    np.testing.assert_allclose(per_class_iou(cm), [2 / 3, 0.0])
    assert miou(cm) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(2 / 3)


def test_empty_matrix_gives_nan_and_bad_matrix_raises():
    assert math.isnan(miou(np.zeros((3, 3))))
    assert math.isnan(pixel_accuracy(np.zeros((3, 3))))
    with pytest.raises(ValueError, match="square"):
        miou(np.zeros((2, 3)))


def test_segmetric_logits_and_preds_agree_with_functions():
    g = torch.Generator().manual_seed(3)
    k = 4
    target = torch.randint(0, k, (2, 6, 7), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, torch.randint(0, k, target.shape, generator=g))
    logits = torch.randn(2, k, 6, 7, generator=g) + 10.0 * torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2)

    m_logits, m_pred = SegMetric(k), SegMetric(k)
    m_logits.update(logits[:1], target[:1])
    m_logits.update(logits[1:], target[1:])
    m_pred.update(pred, target)
    a, b = m_logits.compute(), m_pred.compute()
    cm = slow_confusion(pred, target, k)
    assert a["miou"] == pytest.approx(miou(cm))
    assert b["miou"] == pytest.approx(miou(cm))
    assert a["pixel_acc"] == pytest.approx(float((pred == target).float().mean()))
    np.testing.assert_allclose(a["per_class_iou"], per_class_iou(cm))
    assert len(b["per_class_iou"]) == k


def test_segmetric_perfect_prediction_reset_and_errors():
    target = torch.tensor([[[0, 1], [2, 2]]])
    m = SegMetric(3)
    m.update(target.clone(), target)
    assert m.compute()["miou"] == pytest.approx(1.0)
    assert m.compute()["pixel_acc"] == pytest.approx(1.0)
    m.reset()
    with pytest.raises(RuntimeError, match="update"):
        m.compute()
    with pytest.raises(ValueError, match="classes"):
        m.update(torch.zeros(1, 5, 2, 2), target)
    with pytest.raises(ValueError, match="interpolate"):
        m.update(torch.zeros(1, 3, 4, 4), target)
