"""Tiny registries for tests: a workspace with images and labels written like ingest would.

Usable by any team's tests::

    from tests.factories import make_workspace
    ws, images = make_workspace(tmp_path, n_train=8, n_val=2, n_test=2)

Images are person-like blobs (head + shoulders/torso on a noisy background) drawn with
numpy/cv2, or ``style="synth"`` for engine/synth.py's portraits. Every image draws from
``default_rng([seed, index])``, so the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dataeng.annotation.masks import alpha_to_mask, write_alpha, write_confidence, write_mask
from dataeng.config import Config
from dataeng.db.schema import Image, Label
from dataeng.engine.ingest.dedup import signed_chunks
from dataeng.storage import atomic_write_bytes
from dataeng.workspace import Workspace


@dataclass(frozen=True)
class MadeImage:
    """An image row made by the factory, with its truth arrays."""

    image_id: int
    split: str
    label_id: int | None
    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray


def blob_portrait(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A person-like blob on a noisy background: (RGB uint8 image, float32 alpha in [0, 1])."""
    alpha = np.zeros((height, width), np.float32)
    cx = width * rng.uniform(0.35, 0.65)
    head_r = min(height, width) * rng.uniform(0.12, 0.2)
    head_y = height * rng.uniform(0.25, 0.4)
    cv2.ellipse(alpha, (int(cx), int(head_y)), (int(head_r), int(head_r * 1.2)), 0, 0, 360, 1.0, -1)
    top = int(head_y + head_r * 1.1)
    half = int(width * rng.uniform(0.2, 0.35))
    body = np.array([[cx - half, height], [cx - half * 0.8, top + head_r * 0.6], [cx - head_r * 0.4, top],
                     [cx + head_r * 0.4, top], [cx + half * 0.8, top + head_r * 0.6], [cx + half, height]],
                    np.int32)
    cv2.fillPoly(alpha, [body], 1.0)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    bg = rng.integers(0, 256, size=3).astype(np.float32)
    fg = rng.integers(0, 256, size=3).astype(np.float32)
    while np.abs(fg - bg).sum() < 150:  # keep the person distinguishable from the background
        fg = rng.integers(0, 256, size=3).astype(np.float32)
    noise = rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg + noise
    alpha = np.round(alpha * 255) / 255
    return np.clip(image, 0, 255).astype(np.uint8), alpha.astype(np.float32)


def _render(style: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    if style == "synth":
        from dataeng.engine.synth import render

        return render(rng, size, size)
    return blob_portrait(rng, size, size)


def add_image(session, ws: Workspace, image: np.ndarray, split: str, name: str = "img") -> Image:
    """Store ``image`` (PNG) content-addressed and add its ``images`` row (not committed)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    data = buf.tobytes()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"store/images/{sha[:2]}/{sha}.png"
    atomic_write_bytes(ws.root / rel, data)
    ph = int(sha[:15], 16)
    # The same columns ingest writes (signed hash and its three indexed chunks), so near-duplicate
    # lookups see factory rows exactly as they see ingested ones.
    row = Image(sha256=sha, source_sha256=sha, **signed_chunks(ph), width=image.shape[1], height=image.shape[0],
                store_path=rel, original_path=f"/factory/{name}.png", split=split)
    session.add(row)
    session.flush()
    return row


def add_label(session, ws: Workspace, image_id: int, mask: np.ndarray, *, origin: str = "human",
              status: str = "active", alpha: np.ndarray | None = None, confidence: np.ndarray | None = None,
              source: str | None = None, run_id: int | None = None) -> Label:
    """Add a label row and write its mask (and alpha / confidence) files (not committed)."""
    label = Label(image_id=image_id, origin=origin, source=source or ("mask" if origin == "human" else "teacher"),
                  mask_path="", status=status, run_id=run_id)
    session.add(label)
    session.flush()
    label.mask_path = ws.mask_rel(label.id)
    write_mask(ws.root / label.mask_path, mask)
    if alpha is not None:
        label.alpha_path = ws.mask_rel(label.id, "alpha")
        write_alpha(ws.root / label.alpha_path, alpha)
    if confidence is not None:
        label.conf_path = ws.mask_rel(label.id, "conf")
        write_confidence(ws.root / label.conf_path, confidence)
    session.flush()
    return label


def make_workspace(tmp_path: Path, n_train: int = 8, n_val: int = 2, n_test: int = 2, size: int = 64,
                   seed: int = 0, labelled: bool = True, with_alpha: bool = False, style: str = "blob",
                   config: Config | None = None, registry: str | None = None) -> tuple[Workspace, list[MadeImage]]:
    """A workspace in ``tmp_path/ws`` holding ``n_train + n_val + n_test`` square images.

    Args:
        labelled: give every image an active human label (else images only).
        with_alpha: store the alpha matte with each label too.
        style: ``blob`` (fast, simple) or ``synth`` (engine/synth.py portraits).
        registry: a registry URL (the ``registry_url`` fixture: PostgreSQL in tests marked ``backends``).

    Returns:
        (workspace, the images made, in order train, val, test).
    """
    ws = Workspace.init(tmp_path / "ws", config, registry=registry)
    made: list[MadeImage] = []
    plan = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    with ws.session() as session:
        for i, split in enumerate(plan):
            image, alpha = _render(style, np.random.default_rng([seed, i]), size)
            mask = alpha_to_mask(alpha)
            row = add_image(session, ws, image, split, name=f"{split}_{i:03d}")
            label_id = None
            if labelled:
                label_id = add_label(session, ws, row.id, mask, alpha=alpha if with_alpha else None).id
            made.append(MadeImage(row.id, split, label_id, image, mask, alpha))
    return ws, made


TINY_TRAIN = {
    "encoder": "tu-mobilenetv3_small_050", "encoder_depth": 3, "image_size": (64, 64), "batch_size": 4,
    "num_workers": 0, "device": "cpu", "warmup_epochs": 0.0, "lr": 3e-3,
}
"""Train overrides for a model that trains in well under a second per epoch on a CPU."""
