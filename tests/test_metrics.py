"""Tests of pipeline.metrics.miou against hand-computed values and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.metrics.miou import ConfusionMatrix, confusion_matrix, iou_per_class, summarize

# 3x3 image, 3 classes; the centre-right pixel is void (255).
PRED = np.array([[0, 1, 1], [2, 2, 0], [1, 0, 2]])
TARGET = np.array([[0, 1, 2], [2, 2, 255], [1, 0, 0]])
# (gt, pred) pairs of the 8 valid pixels: (0,0) (1,1) (2,1) (2,2) (2,2) (1,1) (0,0) (0,2)
EXPECTED_CONF = np.array([[2, 0, 1], [0, 2, 0], [0, 1, 2]])
# IoU = TP / (row sum + col sum - TP): 2/(3+2-2), 2/(2+3-2), 2/(3+3-2)
EXPECTED_IOU = np.array([2 / 3, 2 / 3, 1 / 2])


def test_confusion_matrix_hand_example():
    conf = confusion_matrix(PRED, TARGET, 3)
    assert conf.dtype == np.int64 and conf.shape == (3, 3)
    np.testing.assert_array_equal(conf, EXPECTED_CONF)
    np.testing.assert_allclose(iou_per_class(conf), EXPECTED_IOU)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_confusion_matrix_accepts_torch_tensors(dtype):
    conf = confusion_matrix(torch.from_numpy(PRED).to(dtype), torch.from_numpy(TARGET).to(dtype), 3)
    assert isinstance(conf, np.ndarray) and conf.dtype == np.int64
    np.testing.assert_array_equal(conf, EXPECTED_CONF)


def test_uint8_inputs_do_not_overflow():
    # target * C + pred = 20 * 21 + 19 = 439 does not fit in uint8.
    pred = np.array([19, 20], dtype=np.uint8)
    target = np.array([20, 20], dtype=np.uint8)
    conf = confusion_matrix(pred, target, 21)
    assert conf[20, 19] == 1 and conf[20, 20] == 1 and conf.sum() == 2


def test_ignore_index_skips_pixels_whatever_their_prediction():
    pred = PRED.copy()
    pred[1, 2] = 255  # prediction at the void pixel is not checked
    np.testing.assert_array_equal(confusion_matrix(pred, TARGET, 3), EXPECTED_CONF)
    # Another ignore value: the void pixel becomes an error, class 0 pixels are dropped.
    target = TARGET.copy()
    target[1, 2] = 1
    conf = confusion_matrix(PRED, target, 3, ignore_index=0)
    np.testing.assert_array_equal(conf, [[0, 0, 0], [1, 2, 0], [0, 1, 2]])
    # ignore_index=None counts every pixel.
    conf = confusion_matrix(PRED, target, 3, ignore_index=None)
    assert conf.sum() == 9 and conf[1, 0] == 1


def test_all_pixels_ignored_gives_zero_matrix():
    conf = confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 255), 4)
    np.testing.assert_array_equal(conf, np.zeros((4, 4)))


def test_errors():
    with pytest.raises(ValueError, match="target contains value 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="target contains value -1"):
        confusion_matrix(np.array([0, 1]), np.array([0, -1]), 3)
    # target C with prediction 0 gives code C*C, the bin where ignored pixels are counted.
    with pytest.raises(ValueError, match="target contains value 3"):
        confusion_matrix(np.array([0, 0]), np.array([3, 255]), 3)
    with pytest.raises(ValueError, match="pred contains value 7"):
        confusion_matrix(np.array([7, 1]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="target contains value 255"):
        confusion_matrix(PRED, TARGET, 3, ignore_index=None)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros(4, np.float32), np.zeros(4, int), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3)


def test_confusion_matrix_accumulator():
    cm = ConfusionMatrix(3)
    np.testing.assert_array_equal(cm.matrix, np.zeros((3, 3)))
    cm.update(PRED[:2], TARGET[:2])
    cm.update(torch.from_numpy(PRED[2:]), torch.from_numpy(TARGET[2:]))
    np.testing.assert_array_equal(cm.matrix, EXPECTED_CONF)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.matrix, 2 * EXPECTED_CONF)
    cm.reset()
    assert cm.matrix.sum() == 0


def test_iou_nan_for_absent_class_and_errors():
    conf = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])
    iou = iou_per_class(conf)
    # class 0: 3 / (4 + 3 - 3); class 1: 0 / (0 + 1 - 0); class 2 absent everywhere.
    np.testing.assert_allclose(iou[:2], [0.75, 0.0])
    assert math.isnan(iou[2])
    with pytest.raises(ValueError, match="square"):
        iou_per_class(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        iou_per_class(np.array([[1, -1], [0, 1]]))


# 5 classes: 0 background, 1-2 old, 3-4 new, class 4 never occurs.
SUMMARY_CONF = np.array([[5, 1, 0, 0, 0], [1, 3, 0, 0, 0], [0, 0, 4, 2, 0], [0, 0, 0, 2, 0], [0, 0, 0, 0, 0]])
# IoU: 0: 5/(6+6-5)=5/7, 1: 3/(4+4-3)=3/5, 2: 4/(6+4-4)=2/3, 3: 2/(2+4-2)=1/2, 4: NaN
NAMES = ["background", "a", "b", "c", "d"]


def test_summarize_old_new_all():
    s = summarize(SUMMARY_CONF, seen_classes=[0, 1, 2, 3, 4], old_classes=[1, 2], new_classes=[3, 4], class_names=NAMES)
    assert s["per_class_iou"] == pytest.approx({"background": 5 / 7, "a": 3 / 5, "b": 2 / 3, "c": 1 / 2, "d": None})
    assert s["per_class_iou"]["d"] is None
    assert s["miou_old"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert s["miou_new"] == pytest.approx(1 / 2)  # class 4 (NaN) left out
    assert s["miou_all"] == pytest.approx((5 / 7 + 3 / 5 + 2 / 3 + 1 / 2) / 4)
    assert s["pixel_accuracy"] == pytest.approx(14 / 18)


def test_summarize_step0_and_background_rules():
    # Step 0: base classes reported as old, no new class; background given in old is dropped
    # from the old mean; "all" always includes background and only the seen classes.
    s = summarize(SUMMARY_CONF, seen_classes=[1, 2], old_classes=[0, 1, 2], new_classes=[], class_names=NAMES)
    assert s["miou_old"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert s["miou_new"] is None
    assert s["miou_all"] == pytest.approx((5 / 7 + 3 / 5 + 2 / 3) / 3)
    # A set whose every class is NaN has no mean either.
    assert summarize(SUMMARY_CONF, [0, 4], [], [4], NAMES)["miou_new"] is None


def test_summarize_defaults_and_errors():
    conf = np.eye(21, dtype=np.int64)
    s = summarize(conf, range(21), range(1, 16), range(16, 21))
    assert list(s["per_class_iou"])[:2] == ["background", "aeroplane"]
    assert list(s["per_class_iou"])[-1] == "tvmonitor"
    assert s["miou_all"] == 1.0 and s["pixel_accuracy"] == 1.0
    with pytest.raises(ValueError, match="class index 5"):
        summarize(SUMMARY_CONF, [0, 5], [1], [], NAMES)
    with pytest.raises(ValueError, match="class_names"):
        summarize(SUMMARY_CONF, [0], [1], [], ["x"])
    assert summarize(np.zeros((2, 2), int), [0, 1], [1], [])["pixel_accuracy"] is None


def _torchmetrics_iou(preds, targets, num_classes):
    from torchmetrics.classification import MulticlassJaccardIndex

    metric = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average=None)
    for p, t in zip(preds, targets):
        metric.update(p, t)
    return metric.compute().double().numpy()


def test_agrees_with_torchmetrics_on_random_data():
    pytest.importorskip("torchmetrics")
    gen = torch.Generator().manual_seed(0)
    c = 21
    preds = [torch.randint(0, c, (2, 32, 40), generator=gen) for _ in range(3)]
    targets = []
    for p in preds:
        # Correlated with the prediction (not pure chance), plus 5 % void.
        t = torch.where(torch.rand(p.shape, generator=gen) < 0.6, p, torch.randint(0, c, p.shape, generator=gen))
        t[torch.rand(p.shape, generator=gen) < 0.05] = 255
        targets.append(t)
    cm = ConfusionMatrix(c)
    for p, t in zip(preds, targets):
        cm.update(p, t)
    ours = iou_per_class(cm.matrix)
    assert not np.isnan(ours).any()
    np.testing.assert_allclose(ours, _torchmetrics_iou(preds, targets, c), atol=1e-6)


def test_absent_class_nan_where_torchmetrics_reports_zero():
    pytest.importorskip("torchmetrics")
    gen = torch.Generator().manual_seed(1)
    p = torch.randint(0, 4, (64, 64), generator=gen)  # class 4 never predicted nor labelled
    t = torch.randint(0, 4, (64, 64), generator=gen)
    ours = iou_per_class(confusion_matrix(p, t, 5))
    theirs = _torchmetrics_iou([p], [t], 5)
    assert math.isnan(ours[4]) and theirs[4] == 0.0
    np.testing.assert_allclose(ours[:4], theirs[:4], atol=1e-6)
