"""Noisy synthetic pre-labels for the pre-fill tracing tests (a teacher's mask, not a human one)."""

from __future__ import annotations

import cv2
import numpy as np


def person(size: int) -> np.ndarray:
    """A clean person-like bool mask (head and shoulders) on a ``size`` x ``size`` image."""
    out = np.zeros((size, size), np.uint8)
    c = size // 2
    cv2.ellipse(out, (c, int(0.3 * size)), (int(0.14 * size), int(0.17 * size)), 0, 0, 360, 1, -1)
    body = np.array([[c - 0.32 * size, size], [c - 0.26 * size, 0.55 * size], [c - 0.06 * size, 0.46 * size],
                     [c + 0.06 * size, 0.46 * size], [c + 0.26 * size, 0.55 * size], [c + 0.32 * size, size]])
    cv2.fillPoly(out, [body.astype(np.int32)], 1)
    return out.astype(bool)


def speckle(mask: np.ndarray, rng: np.random.Generator, holes: int, islands: int, max_radius: float) -> np.ndarray:
    """``mask`` with ``holes`` small discs cut out of it and ``islands`` added outside it (radius 1 px up to
    ``max_radius``), as a teacher's confident errors are."""
    out = mask.copy()
    inner = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outer = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outer[:6], outer[-6:], outer[:, :6], outer[:, -6:] = False, False, False, False
    for where, count, value in ((inner, holes, False), (outer, islands, True)):
        ys, xs = np.nonzero(where)
        for k in rng.choice(len(ys), size=count, replace=False):
            radius = int(rng.integers(1, max(2, int(max_radius) + 1)))
            cv2.circle(out.view(np.uint8), (int(xs[k]), int(ys[k])), radius, int(value), -1)
    return out


def wander(mask: np.ndarray, rng: np.random.Generator, pixels: float) -> np.ndarray:
    """``mask`` with its outline pushed in and out by smooth noise of about ``pixels`` px."""
    h, w = mask.shape
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
    noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.02 * max(h, w))
    noise *= pixels / (noise.std() + 1e-6)
    return (np.where(mask, inside, -outside) + noise) > 0


def noisy_prelabel(size: int, seed: int, holes: int = 60, islands: int = 30) -> np.ndarray:
    """A teacher-like uint8 pre-label (0/1): a person whose outline wanders by ~2 px (at 256) with
    ``holes`` pin holes inside and ``islands`` specks outside."""
    rng = np.random.default_rng(seed)
    mask = wander(person(size), rng, 2.0 * size / 256)
    return speckle(mask, rng, holes, islands, 3 * size / 256).astype(np.uint8)


def nearly_full_frame(size: int, seed: int, holes: int = 60) -> np.ndarray:
    """What the demo's teacher sent to Labelme: 'person' over nearly the whole frame, riddled with pin holes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    mask[2:-2, 3:-1] = True
    return speckle(mask, rng, holes, 0, 2).astype(np.uint8)
