"""The report's galleries: the worst test predictions and the head of the review queue.

Each tile is a few small thumbnails (longest side :data:`THUMB_SIDE`), JPEG-encoded as
``data:`` URIs so the report stays one file. Everything is downscaled before it is
composited, so a gallery of 12 large images costs milliseconds, not seconds.

Colours: truth and prediction in green; in the error overlay false positives (predicted
person where there is none) red and false negatives (missed person) blue; ignored
pixels grey.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataeng.annotation.masks import read_confidence, read_mask
from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX
from dataeng.engine.learn.data import read_image
from dataeng.engine.learn.evaluate import prediction_path
from dataeng.engine.report.records import GalleryItem, Picture, queue_scores, worst_scores
from dataeng.errors import DataEngError

if TYPE_CHECKING:
    from dataeng.db.schema import Run
    from dataeng.workspace import Workspace

THUMB_SIDE = 160
JPEG_QUALITY = 80
FOREGROUND_RGB = (40, 200, 90)
FALSE_POSITIVE_RGB = (235, 50, 50)
FALSE_NEGATIVE_RGB = (40, 110, 255)
IGNORE_RGB = (128, 128, 128)


def data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 RGB array as a JPEG ``data:`` URI."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def thumb_size(height: int, width: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """(height, width) scaled so the longest side is at most ``side`` (never enlarged)."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    if array.shape[:2] == size:
        return array
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _tint(image: np.ndarray, where: np.ndarray, rgb: tuple[int, int, int], strength: float = 0.55) -> np.ndarray:
    out = image.astype(np.float32)
    out[where] = (1 - strength) * out[where] + strength * np.array(rgb, np.float32)
    return out.astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with foreground tinted green and ignored pixels grey (same sizes)."""
    out = _tint(image, (mask != BACKGROUND) & (mask != IGNORE_INDEX), FOREGROUND_RGB)
    return _tint(out, mask == IGNORE_INDEX, IGNORE_RGB, 0.8)


def error_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """A dimmed grey image with false positives red, false negatives blue, ignored pixels grey.

    For several classes, a pixel predicted as the wrong class counts as a false negative.
    """
    grey = (0.35 * image.mean(axis=2, keepdims=True).repeat(3, axis=2) + 60).astype(np.uint8)
    valid = truth != IGNORE_INDEX
    fp = valid & (truth == BACKGROUND) & (pred != BACKGROUND)
    fn = valid & (truth != BACKGROUND) & (pred != truth)
    out = _tint(grey, fp, FALSE_POSITIVE_RGB, 0.9)
    out = _tint(out, fn, FALSE_NEGATIVE_RGB, 0.9)
    return _tint(out, ~valid, IGNORE_RGB, 0.8)


def confidence_picture(conf: np.ndarray) -> np.ndarray:
    """A confidence map in [0, 1] as an RGB viridis picture (dark = uncertain)."""
    import cv2

    grey = np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def worst_test_gallery(workspace: Workspace, run: Run | None, rows: list[dict[str, Any]]
                       ) -> tuple[list[GalleryItem], str | None]:
    """Tiles (image, truth, prediction, errors) for the rows of ``queries.worst_image_metrics``.

    The predictions are the masks the evaluation kept (``engine.evaluate.prediction_path``):
    the report never loads a model. Rows without a kept prediction keep image and truth only.

    Returns:
        (tiles, a note for the report when predictions were missing, else None).
    """
    if not rows or run is None:
        return [], None
    run_dir = workspace.run_dir(run.id)
    items, missing = [], 0
    for row in rows:
        pictures: list[Picture] = []
        try:
            image = read_image(workspace.image_path(row["image_path"]))
            size = thumb_size(*image.shape[:2])
            small = _resize(image, size, nearest=False)
            pictures.append(Picture("image", data_uri(small)))
            if row["mask_path"]:
                truth = _resize(read_mask(workspace.image_path(row["mask_path"])), size, nearest=True)
                pictures.append(Picture("ground truth", data_uri(mask_overlay(small, truth))))
                pred = _kept_prediction(prediction_path(run_dir, "test", row["image_id"]))
                if pred is None:
                    missing += 1
                else:
                    pred_small = _resize(pred, size, nearest=True)
                    pictures.append(Picture("prediction", data_uri(mask_overlay(small, pred_small))))
                    errors = error_overlay(small, truth, pred_small)
                    pictures.append(Picture("errors: FP red, FN blue", data_uri(errors)))
        except DataEngError as e:
            pictures.append(Picture(f"unreadable: {e}", ""))
        items.append(GalleryItem(row["image_id"], row["label_id"], worst_scores(row), tuple(pictures)))
    note = (f"{missing} of run {run.id}'s worst test predictions were not kept; `dataeng evaluate --run {run.id} "
            f"--split test` keeps them." if missing else None)
    return items, note


def _kept_prediction(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        return read_mask(path)
    except DataEngError:
        return None  # a damaged file is reported as missing; evaluating again rewrites it


def review_queue_gallery(workspace: Workspace, rows: list[dict[str, Any]]) -> list[GalleryItem]:
    """Tiles (image, pre-label, confidence map) for the rows of ``queries.review_queue``."""
    items = []
    for row in rows:
        pictures: list[Picture] = []
        try:
            image = read_image(workspace.image_path(row["image_path"]))
            size = thumb_size(*image.shape[:2])
            small = _resize(image, size, nearest=False)
            pictures.append(Picture("image", data_uri(small)))
            mask = _resize(read_mask(workspace.image_path(row["mask_path"])), size, nearest=True)
            pictures.append(Picture("pre-label (grey: below pixel threshold)", data_uri(mask_overlay(small, mask))))
            if row["conf_path"]:
                conf = _resize(read_confidence(workspace.image_path(row["conf_path"])), size, nearest=False)
                pictures.append(Picture("confidence (dark = uncertain)", data_uri(confidence_picture(conf))))
        except DataEngError as e:
            pictures.append(Picture(f"unreadable: {e}", ""))
        items.append(GalleryItem(row["image_id"], row["label_id"], queue_scores(row), tuple(pictures)))
    return items
