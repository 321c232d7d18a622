"""Segmentation and matting metrics, as pure functions of numpy arrays.

Masks are (H, W) integer class-index arrays: 0 background, 1..C classes, and
``ignore_index`` pixels, which are left out of every count. ``num_classes`` counts the
foreground classes, so confusion matrices are (C + 1) x (C + 1).

Formulas (TP/FP/FN counted over valid pixels):
- IoU_k = TP_k / (TP_k + FP_k + FN_k). A class absent from both prediction and truth
  has no IoU and is left out of the means; if nothing is left (e.g. both masks empty
  in foreground IoU) the IoU is 1: an empty prediction of an empty truth is perfect.
- foreground IoU: IoU of "any class" against background (for one class: that class).
- mIoU = mean of IoU_k over the classes present (background included).
- frequency-weighted IoU = sum_k f_k IoU_k with f_k = truth pixels of k / valid pixels.
- pixel accuracy = correct valid pixels / valid pixels (1 when none is valid).
- boundary F1 (Csurka et al. 2013): boundary pixels of the foreground in truth and
  prediction (the image frame is not a boundary); precision = share of predicted
  boundary pixels within ``0.75%`` of the image diagonal of a true one, recall the
  converse, F1 their harmonic mean. Both without boundary -> 1; one only -> 0.
- Boundary IoU (Cheng et al. 2021): G_d, P_d = mask pixels within d = 2% of the
  diagonal of the mask's contour (as in the reference code, the image frame counts as
  contour); Boundary IoU = |G_d & P_d| / |G_d | P_d|; both empty -> 1.
- alpha mattes in [0, 1]: MAE = mean |a - a*|, SAD = sum |a - a*| / 1000, MSE = mean
  (a - a*)^2, gradient error = sum (|grad a| - |grad a*|)^2 / 1000 with Gaussian
  derivative filters (sigma 1.4), as in Rhemann et al. 2009.
Distances are in pixels at the mask's own resolution, at least 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX

BOUNDARY_F1_TOLERANCE = 0.0075
BOUNDARY_IOU_DILATION = 0.02


@dataclass(frozen=True)
class ImageScores:
    """The metrics of one prediction against its truth (alpha ones None without a matte)."""

    iou: float
    miou: float
    fwiou: float
    pixel_accuracy: float
    boundary_f1: float
    boundary_iou: float
    mae: float | None = None
    sad: float | None = None
    mse: float | None = None
    grad: float | None = None


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(C + 1) x (C + 1) counts, rows = truth, columns = prediction, ignored pixels skipped."""
    k = num_classes + 1
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = np.clip(pred[valid].astype(np.int64), 0, k - 1)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _iou_per_class(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def miou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction (1 if none)."""
    ious = _iou_per_class(cm)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else 1.0


def foreground_iou(cm: np.ndarray) -> float:
    """IoU of any foreground class against background (1 when both have no foreground)."""
    fg_t = cm[1:, :].sum()
    fg_p = cm[:, 1:].sum()
    inter = cm[1:, 1:].sum()
    union = fg_t + fg_p - inter
    return float(inter / union) if union > 0 else 1.0


def fwiou(cm: np.ndarray) -> float:
    """Frequency-weighted IoU: truth-frequency-weighted mean of per-class IoU."""
    total = cm.sum()
    if total == 0:
        return 1.0
    freq = cm.sum(1) / total
    ious = np.nan_to_num(_iou_per_class(cm), nan=0.0)
    return float((freq * ious).sum())


def pixel_accuracy(cm: np.ndarray) -> float:
    """Correct valid pixels over valid pixels (1 when there are none)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 1.0


def tolerance_px(shape: tuple[int, ...], fraction: float) -> int:
    """``fraction`` of the image diagonal in whole pixels, at least 1."""
    h, w = shape[:2]
    return max(1, round(fraction * float(np.hypot(h, w))))


def _disk(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def contour(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner contour of a boolean mask (the image frame is not a contour)."""
    import cv2

    m = mask.astype(np.uint8)
    # erode's default border is the maximum value: pixels on the frame are not eroded away
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8))
    return (m > 0) & (eroded == 0)


def boundary_f1(pred_fg: np.ndarray, true_fg: np.ndarray, valid: np.ndarray | None = None,
                tolerance: float = BOUNDARY_F1_TOLERANCE) -> float:
    """Boundary F1 of two boolean foreground masks (see the module docstring)."""
    import cv2

    d = tolerance_px(true_fg.shape, tolerance)
    valid = np.ones(true_fg.shape, bool) if valid is None else valid
    bp = contour(pred_fg) & valid
    bt = contour(true_fg) & valid
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    near_t = cv2.dilate(bt.astype(np.uint8), _disk(d)) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), _disk(d)) > 0
    precision = float((bp & near_t).sum()) / n_p
    recall = float((bt & near_p).sum()) / n_t
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def boundary_region(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Pixels of ``mask`` within ``dilation`` px of its contour, frame included (Cheng et al.)."""
    import cv2

    m = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=dilation)[1:-1, 1:-1]
    return (mask > 0) & (eroded == 0)


def boundary_iou(pred_fg: np.ndarray, true_fg: np.ndarray, valid: np.ndarray | None = None,
                 dilation: float = BOUNDARY_IOU_DILATION) -> float:
    """Boundary IoU of two boolean foreground masks (see the module docstring)."""
    d = tolerance_px(true_fg.shape, dilation)
    valid = np.ones(true_fg.shape, bool) if valid is None else valid
    gd = boundary_region(true_fg, d) & valid
    pd = boundary_region(pred_fg, d) & valid
    union = int((gd | pd).sum())
    return float((gd & pd).sum()) / union if union else 1.0


def _gauss_deriv_kernels(sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    dg = -x / sigma**2 * g
    dg /= np.abs(dg).sum() / 2  # unit response to a unit step
    return g, dg


def _gradient_magnitude(a: np.ndarray) -> np.ndarray:
    import cv2

    g, dg = _gauss_deriv_kernels()
    img = a.astype(np.float64)
    gx = cv2.sepFilter2D(img, cv2.CV_64F, dg, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(img, cv2.CV_64F, g, dg, borderType=cv2.BORDER_REPLICATE)
    return np.hypot(gx, gy)


def alpha_errors(pred: np.ndarray, alpha: np.ndarray, valid: np.ndarray | None = None
                 ) -> tuple[float, float, float, float]:
    """(MAE, SAD / 1000, MSE, gradient error / 1000) of float alpha mattes in [0, 1]."""
    valid = np.ones(alpha.shape, bool) if valid is None else valid
    diff = (pred.astype(np.float64) - alpha.astype(np.float64))[valid]
    n = max(int(valid.sum()), 1)
    sad = float(np.abs(diff).sum())
    grad_diff = (_gradient_magnitude(pred) - _gradient_magnitude(alpha))[valid]
    return sad / n, sad / 1000.0, float((diff**2).sum()) / n, float((grad_diff**2).sum()) / 1000.0


def score_image(pred: np.ndarray, target: np.ndarray, num_classes: int,
                pred_alpha: np.ndarray | None = None, alpha: np.ndarray | None = None,
                ignore_index: int = IGNORE_INDEX) -> tuple[ImageScores, np.ndarray]:
    """All metrics of one image.

    Args:
        pred: (H, W) predicted class indices.
        target: (H, W) true class indices with ``ignore_index``.
        num_classes: foreground classes.
        pred_alpha, alpha: optional (H, W) predicted and true mattes in [0, 1].

    Returns:
        (scores, confusion matrix) -- the matrix is summed over a split for the
        dataset-level IoUs.
    """
    cm = confusion_matrix(pred, target, num_classes, ignore_index)
    valid = target != ignore_index
    pred_fg = pred != BACKGROUND
    true_fg = (target != BACKGROUND) & valid
    mae = sad = mse = grad = None
    if pred_alpha is not None and alpha is not None:
        mae, sad, mse, grad = alpha_errors(pred_alpha, alpha, valid)
    scores = ImageScores(
        iou=foreground_iou(cm), miou=miou(cm), fwiou=fwiou(cm), pixel_accuracy=pixel_accuracy(cm),
        boundary_f1=boundary_f1(pred_fg, true_fg, valid), boundary_iou=boundary_iou(pred_fg, true_fg, valid),
        mae=mae, sad=sad, mse=mse, grad=grad,
    )
    return scores, cm


def summarize(per_image: Iterable[ImageScores], cm: np.ndarray) -> dict[str, float | int | None]:
    """Split-level metrics: IoUs and accuracy from the summed confusion matrix, boundary
    and alpha metrics as means over images (alpha ones over images with a matte)."""
    items = list(per_image)
    out: dict[str, float | int | None] = {
        "images": len(items), "iou": foreground_iou(cm), "miou": miou(cm), "fwiou": fwiou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
    }
    for name in ("boundary_f1", "boundary_iou", "mae", "sad", "mse", "grad"):
        vals = [getattr(s, name) for s in items if getattr(s, name) is not None]
        out[name] = float(np.mean(vals)) if vals else None
    out["mean_image_iou"] = float(np.mean([s.iou for s in items])) if items else None
    return out
