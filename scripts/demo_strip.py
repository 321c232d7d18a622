"""The demo's picture of its cutouts: each photo beside its cutout over a checkerboard.

Usage:
    .venv/bin/python scripts/demo_strip.py IMAGES_DIR CUTOUTS_DIR OUT.png [--height 160]

For every image of ``IMAGES_DIR`` with an RGBA cutout of the same stem in ``CUTOUTS_DIR``
(``dataeng predict ... --as cutout``), draws two tiles side by side, the photo and its
cutout composited over a grey checkerboard (where the background shows through, the
model kept it), and the pairs one after another in a single PNG row. The README shows
the one the demo wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dataeng.annotation.masks import ALPHA_MAX
from dataeng.storage import atomic_write

GAP = 6
"""Pixels of white between a photo and its cutout; pairs are three times as far apart."""


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    """An RGB uint8 light-grey checkerboard, the usual backdrop of transparency."""
    ys, xs = np.indices((height, width))
    light = ((ys // cell + xs // cell) % 2 == 0)[..., None]
    return np.where(light, 230, 190).astype(np.uint8).repeat(3, axis=2)


def over_checkerboard(rgba: np.ndarray) -> np.ndarray:
    """An RGBA cutout (H, W, 4) composited over :func:`checkerboard`, RGB uint8."""
    alpha = rgba[..., 3:4].astype(np.float32) / ALPHA_MAX
    board = checkerboard(*rgba.shape[:2]).astype(np.float32)
    return np.rint(alpha * rgba[..., :3] + (1.0 - alpha) * board).astype(np.uint8)


def strip(pairs: list[tuple[Path, Path]], height: int) -> Image.Image:
    """One row: for each (photo, cutout), the photo then its cutout over a checkerboard, ``height`` px tall."""
    tiles: list[list[Image.Image]] = []
    for photo_path, cutout_path in pairs:
        photo = Image.open(photo_path).convert("RGB")
        cutout = np.asarray(Image.open(cutout_path).convert("RGBA"))
        scale = height / photo.height
        size = (max(1, round(photo.width * scale)), height)
        tiles.append([photo.resize(size, Image.Resampling.LANCZOS),
                      Image.fromarray(over_checkerboard(cutout)).resize(size, Image.Resampling.LANCZOS)])
    flat = [(tile, GAP if i == 0 else 3 * GAP) for pair in tiles for i, tile in enumerate(pair)]
    width = sum(tile.width + after for tile, after in flat) - (flat[-1][1] if flat else 0)
    canvas = Image.new("RGB", (max(width, 1), height), "white")
    x = 0
    for tile, after in flat:
        canvas.paste(tile, (x, 0))
        x += tile.width + after
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("cutouts", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--height", type=int, default=160)
    args = parser.parse_args()
    pairs = [(p, args.cutouts / f"{p.stem}.png") for p in sorted(args.images.iterdir())
             if p.is_file() and (args.cutouts / f"{p.stem}.png").is_file()]
    if not pairs:
        raise SystemExit(f"{args.cutouts}: no cutout matches an image of {args.images}")
    picture = strip(pairs, args.height)
    atomic_write(args.out, lambda tmp: picture.save(tmp, format="PNG"))
    print(f"wrote {args.out}: {len(pairs)} photos beside their cutouts")


if __name__ == "__main__":
    main()
