"""Pure image kernels of prediction outputs: the soft alpha and its guided-filter
refinement, backgrounds and compositing.

No model and no files: numpy and OpenCV in, numpy out, so each
kernel is tested on small arrays written inline.

Resizing probabilities back and the class mask are inference, in
:mod:`dataeng.models.inference`.

Example::

    alpha = np.clip(resize_probabilities(foreground(probs), image.shape[:2]), 0, 1)
    rgb = composite(image, to_uint8_alpha(alpha), fit_background(np.array([0, 255, 0], np.uint8), image.shape[:2]))
"""

from __future__ import annotations

import numpy as np

from dataeng.annotation.masks import ALPHA_MAX


def foreground(probs: np.ndarray) -> np.ndarray:
    """Probability that a pixel is any foreground class: 1 - P(background); (K, h, w) -> (h, w)."""
    return 1.0 - probs[0]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: ``src`` smoothed but following the edges of ``guide``.

    Args:
        guide: float32 (H, W) in [0, 1] (grayscale image).
        src: float32 (H, W) to filter.
        radius: box radius in pixels; eps: regularisation (larger = smoother).
    """
    import cv2

    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    var_i = box(guide * guide) - mean_i * mean_i
    a = (box(guide * src) - mean_i * mean_p) / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def refine_alpha(image: np.ndarray, alpha: np.ndarray, scale: float, eps: float = 1e-3) -> np.ndarray:
    """Snap a soft alpha to the image's edges, only in a band around the person's boundary.

    Args:
        image: RGB uint8 (H, W, 3); alpha: float32 (H, W) in [0, 1].
        scale: how much the probabilities were enlarged (the soft band is about this wide).

    Returns:
        float32 (H, W) in [0, 1]; pixels outside the band are unchanged.
    """
    import cv2

    radius = max(2, round(2 * scale))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / np.float32(ALPHA_MAX)
    refined = np.clip(guided_filter(gray, alpha.astype(np.float32), radius, eps), 0.0, 1.0)
    edge = ((alpha > 0.02) & (alpha < 0.98)).astype(np.uint8)
    band = cv2.dilate(edge, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    return np.where(band, refined, alpha).astype(np.float32)


def fit_background(background: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The background at ``shape`` (H, W): a colour filled, an image scaled to cover and
    centre-cropped (its aspect ratio kept)."""
    import cv2

    h, w = shape
    if background.ndim == 1:
        return np.broadcast_to(background, (h, w, 3))
    bh, bw = background.shape[:2]
    s = max(h / bh, w / bw)
    sw, sh = max(w, round(bw * s)), max(h, round(bh * s))
    scaled = cv2.resize(background, (sw, sh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    top, left = (sh - h) // 2, (sw - w) // 2
    return scaled[top : top + h, left : left + w]


def composite(image: np.ndarray, alpha8: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``alpha * image + (1 - alpha) * background`` in uint8; where alpha is 0 the result
    is exactly the background, where it is 255 exactly the image."""
    a = alpha8.astype(np.float32)[..., None] / np.float32(ALPHA_MAX)
    mixed = a * image.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(np.rint(mixed), 0, ALPHA_MAX).astype(np.uint8)
