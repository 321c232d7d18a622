"""Metrics against masks whose values are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dataeng.annotation.types import IGNORE_INDEX
from dataeng.models import metrics as M


def _half(shape=(4, 4), cols=2) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[:, :cols] = 1
    return m


def test_hand_computed_ious():
    target, pred = _half(cols=2), _half(cols=3)
    s, cm = M.score_image(pred, target, num_classes=1)
    assert cm.tolist() == [[4, 4], [0, 8]]
    assert s.iou == pytest.approx(8 / 12)  # inter 8, union 12
    assert s.miou == pytest.approx((8 / 12 + 4 / 8) / 2)  # background: inter 4, union 8
    assert s.fwiou == pytest.approx(0.5 * 8 / 12 + 0.5 * 4 / 8)
    assert s.pixel_accuracy == pytest.approx(12 / 16)


def test_identical_masks_score_one():
    m = np.zeros((64, 64), np.uint8)
    m[10:40, 20:50] = 1
    s, _ = M.score_image(m, m, 1)
    assert (s.iou, s.miou, s.fwiou, s.pixel_accuracy, s.boundary_f1, s.boundary_iou) == (1, 1, 1, 1, 1, 1)


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((32, 32), np.uint8)
    s, _ = M.score_image(empty, empty, 1)
    assert s.iou == 1 and s.miou == 1 and s.boundary_f1 == 1 and s.boundary_iou == 1
    full = np.zeros((32, 32), np.uint8)
    full[8:24, 8:24] = 1
    s, _ = M.score_image(empty, full, 1)
    assert s.iou == 0 and s.boundary_f1 == 0 and s.boundary_iou == 0
    assert s.miou == pytest.approx((0 + (1024 - 256) / 1024) / 2)


def test_masks_without_boundary():
    # A mask covering the whole image has no contour for boundary F1 (the frame is not one).
    full = np.ones((32, 32), np.uint8)
    assert M.contour(full.astype(bool)).sum() == 0
    s, _ = M.score_image(full, full, 1)
    assert s.boundary_f1 == 1 and s.boundary_iou == 1 and s.iou == 1
    # all foreground predicted for an empty truth: no boundary on either side for BF
    s, _ = M.score_image(full, np.zeros_like(full), 1)
    assert s.iou == 0 and s.boundary_f1 == 1  # documented: both without boundary -> 1
    assert s.boundary_iou == 0  # Boundary IoU counts the frame band (Cheng et al.)


def test_boundary_f1_tolerance():
    a = np.zeros((100, 100), np.uint8)
    a[20:60, 20:60] = 1
    b = np.roll(a, 1, axis=1)  # 1 px shift: within 0.75% of the diagonal (1 px)
    assert M.tolerance_px(a.shape, M.BOUNDARY_F1_TOLERANCE) == 1
    assert M.boundary_f1(b > 0, a > 0) == pytest.approx(1.0)
    c = np.roll(a, 5, axis=1)
    # only the top and bottom edges (35 of 40 px each) still match
    assert M.boundary_f1(c > 0, a > 0) < 0.7


def test_boundary_iou_hand_computed():
    # 10x10 square in a 50x50 image: d = round(0.02 * 70.7) = 1 -> band = the 36 contour pixels
    a = np.zeros((50, 50), bool)
    a[10:20, 10:20] = True
    assert M.tolerance_px(a.shape, M.BOUNDARY_IOU_DILATION) == 1
    assert M.boundary_region(a, 1).sum() == 36
    b = np.zeros_like(a)
    b[10:20, 11:21] = True
    # bands overlap on the top/bottom rows (2 x 9 px) : |G&P| = 18, |G|P| = 36 + 36 - 18
    assert M.boundary_iou(b, a) == pytest.approx(18 / 54)


def test_ignore_pixels_do_not_count():
    target = _half((8, 8), 4)
    pred = target.copy()
    target[0, :] = IGNORE_INDEX
    pred[0, :] = 1 - pred[0, :]  # wrong where ignored
    s, cm = M.score_image(pred, target, 1)
    assert cm.sum() == 56
    assert s.iou == 1 and s.pixel_accuracy == 1 and s.boundary_f1 == 1 and s.boundary_iou == 1


def test_multiclass_miou_skips_absent_classes():
    target = np.array([[0, 1], [2, 2]], np.uint8)
    pred = np.array([[0, 1], [2, 1]], np.uint8)
    cm = M.confusion_matrix(pred, target, num_classes=3)
    # class 3 absent from both: left out. IoU: bg 1, c1 1/2, c2 1/2
    assert M.miou(cm) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert M.foreground_iou(cm) == 1.0  # any-class vs background is perfect


def test_alpha_errors_hand_computed():
    alpha = np.zeros((10, 10), np.float32)
    alpha[:, :5] = 1
    pred = np.full_like(alpha, 0.5)
    mae, sad, mse, grad = M.alpha_errors(pred, alpha)
    assert mae == pytest.approx(0.5)
    assert sad == pytest.approx(50 / 1000)
    assert mse == pytest.approx(0.25)
    assert grad > 0
    assert M.alpha_errors(alpha, alpha) == (0.0, 0.0, 0.0, 0.0)


def test_summarize_uses_summed_confusion():
    a, b = _half(cols=2), _half(cols=3)
    s1, cm1 = M.score_image(a, a, 1)
    s2, cm2 = M.score_image(b, a, 1)
    out = M.summarize([s1, s2], cm1 + cm2)
    assert out["iou"] == pytest.approx(16 / 20)
    assert out["mean_image_iou"] == pytest.approx((1 + 8 / 12) / 2)
    assert out["mae"] is None
