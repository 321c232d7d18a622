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

from dataeng.annotation.masks import read_confidence, read_mask, write_mask
from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX
from dataeng.engine.report import GalleryItem, Picture, queue_scores, worst_scores
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


def predict_masks(workspace: Workspace, run: Run, image_paths: list[Path], device: str = "cpu"
                  ) -> list[np.ndarray | None]:
    """Class-index predictions of a train run's checkpoint, each at its image's own size.

    Reuses the evaluation data path (``engine.data.eval_loader``) and network call
    (``engine.evaluate.predict_probabilities``); a probability map becomes a mask exactly
    as in ``evaluate_samples`` (foreground >= 0.5 for one class, else argmax).

    Returns:
        One mask per path, None where the image could not be read.

    Raises:
        ModelError: the run has no usable checkpoint.
    """
    import torch
    import torch.nn.functional as F

    from dataeng.engine.data import Sample, eval_loader
    from dataeng.engine.evaluate import predict_probabilities
    from dataeng.engine.loop import resolve_device
    from dataeng.errors import ModelError
    from dataeng.models.checkpoint import load_checkpoint, model_from_checkpoint

    if run.checkpoint_path is None:
        raise ModelError("run has no checkpoint", field="run", value=run.id)
    ckpt = load_checkpoint(workspace.root / run.checkpoint_path)
    torch_device = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(torch_device)
    samples = [Sample(image_path=p) for p in image_paths]
    out: list[np.ndarray | None] = [None] * len(samples)
    for batch in eval_loader(samples, tuple(ckpt.meta["image_size"]), batch_size=4, num_workers=0):
        probs = predict_probabilities(model, batch["input"], torch_device)
        for i, item in enumerate(batch["items"]):
            if item["error"] is not None:
                continue
            full = F.interpolate(probs[i: i + 1], size=tuple(item["shape"]), mode="bilinear", align_corners=False)[0]
            pred = (full[1] >= 0.5) if full.shape[0] == 2 else full.argmax(0)
            out[item["index"]] = pred.to(torch.uint8).cpu().numpy()
    return out


def prediction_cache(workspace: Workspace, run: Run) -> Path | None:
    """Where a run's gallery predictions are kept: ``reports/cache/predictions/<run>-<checkpoint mtime>/``.

    A checkpoint's predictions never change, and running it means importing torch and
    the model zoo (seconds); the cache lets the next report skip both. A rewritten
    checkpoint gets a new folder. None when the run has no checkpoint file.
    """
    if run.checkpoint_path is None:
        return None
    ckpt = workspace.root / run.checkpoint_path
    if not ckpt.is_file():
        return None
    return workspace.root / "reports" / "cache" / "predictions" / f"{run.id}-{ckpt.stat().st_mtime_ns}"


def _cached(cache: Path | None, image_id: int) -> np.ndarray | None:
    path = cache / f"{image_id}.png" if cache is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return read_mask(path)
    except DataEngError:
        return None  # a damaged cache entry is predicted again


def worst_test_gallery(workspace: Workspace, run: Run | None, rows: list[dict[str, Any]], device: str = "cpu"
                       ) -> tuple[list[GalleryItem], str | None]:
    """Tiles (image, truth, prediction, errors) for the rows of ``queries.worst_image_metrics``.

    The per-image metrics hold no prediction masks, so ``run``'s checkpoint is run on these
    few images; without a usable checkpoint the tiles keep image and truth only.

    Returns:
        (tiles, a note for the report when predictions were unavailable, else None).
    """
    from dataeng.engine.data import read_image

    if not rows or run is None:
        return [], None
    note = None
    paths = [workspace.image_path(r["image_path"]) for r in rows]
    cache = prediction_cache(workspace, run)
    preds: list[np.ndarray | None] = [_cached(cache, r["image_id"]) for r in rows]
    todo = [i for i, pred in enumerate(preds) if pred is None]
    if todo:
        try:
            fresh = predict_masks(workspace, run, [paths[i] for i in todo], device)
        except DataEngError as e:
            fresh = [None] * len(todo)
            note = f"Predictions of run {run.id} are not shown: {e}"
        for i, pred in zip(todo, fresh, strict=True):
            preds[i] = pred
            if pred is not None and cache is not None:
                write_mask(cache / f"{rows[i]['image_id']}.png", pred)
    items = []
    for row, path, pred in zip(rows, paths, preds, strict=True):
        pictures: list[Picture] = []
        try:
            image = read_image(path)
            size = thumb_size(*image.shape[:2])
            small = _resize(image, size, nearest=False)
            pictures.append(Picture("image", data_uri(small)))
            if row["mask_path"]:
                truth = _resize(read_mask(workspace.image_path(row["mask_path"])), size, nearest=True)
                pictures.append(Picture("ground truth", data_uri(mask_overlay(small, truth))))
                if pred is not None:
                    pred_small = _resize(pred, size, nearest=True)
                    pictures.append(Picture("prediction", data_uri(mask_overlay(small, pred_small))))
                    errors = error_overlay(small, truth, pred_small)
                    pictures.append(Picture("errors: FP red, FN blue", data_uri(errors)))
        except DataEngError as e:
            pictures.append(Picture(f"unreadable: {e}", ""))
        items.append(GalleryItem(row["image_id"], row["label_id"], worst_scores(row), tuple(pictures)))
    return items, note


def review_queue_gallery(workspace: Workspace, rows: list[dict[str, Any]]) -> list[GalleryItem]:
    """Tiles (image, pre-label, confidence map) for the rows of ``queries.review_queue``."""
    from dataeng.engine.data import read_image

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
