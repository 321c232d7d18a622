"""Synthetic portraits for the demo and the tests: image, class mask and alpha matte.

Each sample is a person-like silhouette (head, neck, rounded shoulders, torso, optional
arms and hands) with a soft, noise-perturbed hair edge, drawn with anti-aliased cv2
polygons and composited as ``alpha * person + (1 - alpha) * background`` over a
cluttered background (shapes, lines, textures, a few skin-coloured blobs), so the matte is
exact and the mask is ``alpha >= 0.5``. Every sample draws from its own generator
``default_rng([seed, index])``: the same seed gives the same bytes, and adding
unlabelled images never changes the labelled ones.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dataeng.annotation.formats import labelme
from dataeng.annotation.masks import ALPHA_MAX, alpha_to_mask, to_uint8_alpha, write_alpha, write_mask
from dataeng.annotation.types import ExportRecord, LabelMap
from dataeng.errors import DataEngError
from dataeng.progress import NullProgress, Progress
from dataeng.storage import atomic_write, atomic_write_text

NAME_FORMAT = "synth_{:05d}"
"""File stem of sample ``index``; labelled samples come first, then unlabelled ones."""

EMPTY_PROBABILITY = 0.05
"""Share of images with no person at all (the model must learn to predict nothing)."""

JPEG_QUALITY = (70, 95)
"""Inclusive range of the JPEG quality drawn per image."""

HEAD_SIZE = (0.16, 0.4)
"""Range of the head's height as a share of the image height (portraits, not crowds)."""

PROPS = (2, 10)
"""Half-open range of the number of background props (rectangles, ellipses, lines, polygons, patches)."""

SKIN_PROP_PROBABILITY = 0.12
"""Share of background props painted in a skin tone."""

BLUR_PROBABILITY = 0.5
"""Share of backgrounds blurred, as a portrait lens's depth of field does."""

CLOTHING_DISTANCE = 90.0
"""Least RGB distance of the clothing's colour from the background's mean colour."""

GARMENT_PATTERN_PROBABILITY = 0.25
"""Share of garments with stripes or checks; the rest are plain, shaded or softly mottled cloth."""

_SHIFT = 4  # cv2 sub-pixel bits: polygons keep 1/16 px precision, so edges antialias smoothly
_AA = cv2.LINE_AA
_SKIN_LIGHT = np.array([238.0, 200.0, 172.0], dtype=np.float32)
_SKIN_DARK = np.array([82.0, 52.0, 36.0], dtype=np.float32)
_HAIR = np.array(
    [[22, 16, 12], [58, 38, 24], [105, 72, 40], [186, 148, 92], [150, 64, 30], [165, 160, 155]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote.

    Attributes:
        out: the output folder.
        seed: the seed the samples were drawn from.
        names: stems of the labelled samples (``images/``, ``masks/``, ``alpha/``).
        unlabeled_names: stems of the unlabelled samples (``unlabeled/``, ``truth/``).
        empty: how many images (of both sets) contain no person.
        seconds: wall time spent generating and writing.
    """

    out: Path
    seed: int
    names: tuple[str, ...]
    unlabeled_names: tuple[str, ...]
    empty: int
    seconds: float

    @property
    def n(self) -> int:
        """Number of labelled samples."""
        return len(self.names)

    @property
    def unlabeled(self) -> int:
        """Number of unlabelled samples."""
        return len(self.unlabeled_names)


def generate(
    out: Path,
    n: int,
    unlabeled: int = 0,
    seed: int = 0,
    size_range: tuple[int, int] = (64, 512),
    progress: Progress | None = None,
    labelme: bool = True,
) -> SynthSummary:
    """Write ``n`` labelled and ``unlabeled`` unlabelled synthetic portraits under ``out``.

    Layout: ``images/<name>.jpg``, ``masks/<name>.png`` (0 background, 1 person) and
    ``alpha/<name>.png`` (uint8 matte) for the labelled set; ``unlabeled/<name>.jpg`` with
    its ground truth in ``truth/masks/`` and ``truth/alpha/``; and ``synth.json`` (seed,
    counts, size range, names); with ``labelme``, also ``labelme/<name>.json`` + image, the
    same masks as Labelme polygons (traced, holes kept). Names are ``synth_00000`` ... in one sequence, labelled
    first. Every file is written atomically; existing files of the same name are replaced.

    Args:
        out: output folder, created if missing.
        n: number of labelled samples (>= 0).
        unlabeled: number of unlabelled samples (>= 0), drawn from the same distribution.
        seed: non-negative seed; the same seed gives byte-identical files.
        size_range: inclusive (min, max) of each image side in pixels, min >= 16.
        progress: one task, advanced once per image written.
        labelme: also write the labelled set as Labelme JSON (through the Labelme writer).

    Returns:
        A :class:`SynthSummary`.

    Raises:
        DataEngError: a count, the seed or the size range is invalid.

    Example:
        >>> s = generate(Path("synth"), n=20, unlabeled=80, seed=1)  # doctest: +SKIP
        >>> s.names[0], s.unlabeled_names[0]  # doctest: +SKIP
        ('synth_00000', 'synth_00020')
    """
    progress = progress or NullProgress()
    for field, value in (("n", n), ("unlabeled", unlabeled), ("seed", seed)):
        if not isinstance(value, int) or value < 0:
            raise DataEngError("must be a non-negative integer", field=field, value=value)
    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise DataEngError("expected 16 <= min <= max", field="size_range", value=size_range)
    start = time.perf_counter()
    out = Path(out)
    names = [NAME_FORMAT.format(i) for i in range(n + unlabeled)]
    progress.task("synthesising", len(names))
    empty = 0
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        height, width = _draw_size(rng, lo, hi)
        image, alpha = render(rng, height, width)
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        alpha_u8 = to_uint8_alpha(alpha)
        empty += int(not alpha_u8.any())
        if index < n:
            image_dir, mask_dir, alpha_dir = out / "images", out / "masks", out / "alpha"
        else:
            image_dir, mask_dir, alpha_dir = out / "unlabeled", out / "truth/masks", out / "truth/alpha"
        _write_jpeg(image_dir / f"{name}.jpg", image, quality)
        write_mask(mask_dir / f"{name}.png", alpha_to_mask(alpha_u8))
        write_alpha(alpha_dir / f"{name}.png", alpha_u8)
        if index < n and labelme:
            _write_labelme(out / "labelme", image_dir / f"{name}.jpg", alpha_to_mask(alpha_u8))
        progress.advance()
    record = {
        "generator": "dataeng.engine.synth",
        "seed": seed,
        "n": n,
        "unlabeled": unlabeled,
        "size_range": [lo, hi],
        "names": names[:n],
        "unlabeled_names": names[n:],
    }
    atomic_write_text(out / "synth.json", json.dumps(record, indent=1) + "\n")
    return SynthSummary(
        out=out,
        seed=seed,
        names=tuple(names[:n]),
        unlabeled_names=tuple(names[n:]),
        empty=empty,
        seconds=time.perf_counter() - start,
    )


def _write_labelme(folder: Path, image_path: Path, mask: np.ndarray) -> None:

    record = ExportRecord(image_path.name, mask.shape[1], mask.shape[0], mask, image_path=image_path)
    labelme.write(folder, [record], LabelMap(["person"]))


def render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic portrait in memory.

    Args:
        rng: the generator to draw from (consumed; the same state gives the same sample).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(image, alpha)``: RGB uint8 of shape (height, width, 3) and float32 alpha in
        [0, 1] of shape (height, width), quantised to the 8-bit grid (multiples of 1/ALPHA_MAX) so the
        stored 8-bit matte is exactly the one the image was composited with. About 5% of
        samples have no person (alpha all zero).

    Example:
        >>> image, alpha = render(np.random.default_rng(0), 128, 96)
        >>> image.shape, alpha.shape
        ((128, 96, 3), (128, 96))
    """
    background = _background(rng, height, width)
    if rng.random() < EMPTY_PROBABILITY:
        alpha = np.zeros((height, width), dtype=np.float32)
        composite = background
    else:
        backdrop = background.reshape(-1, 3).mean(axis=0).astype(np.float32)
        person, alpha = _person(rng, height, width, backdrop)
        # Quantise before compositing: the PNG matte then describes the image exactly.
        alpha = (np.rint(alpha * ALPHA_MAX) / np.float32(ALPHA_MAX)).astype(np.float32)
        # blendLinear: alpha * person + (1 - alpha) * background in one rounded uint8 pass.
        composite = cv2.blendLinear(person, background, alpha, 1.0 - alpha)
    # Shared sensor noise keeps the composite exact: a*(p+e) + (1-a)*(b+e) = a*p + (1-a)*b + e.
    # Signed noise as two saturating uint8 passes, cheaper than a float round trip.
    noise = np.rint(rng.uniform(0.0, 7.0) * rng.standard_normal((height, width), dtype=np.float32))
    up = np.clip(noise, 0, ALPHA_MAX).astype(np.uint8)
    down = np.clip(-noise, 0, ALPHA_MAX).astype(np.uint8)
    image = cv2.subtract(cv2.add(composite, cv2.merge([up, up, up])), cv2.merge([down, down, down]))
    return image, alpha.astype(np.float32, copy=False)


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=quality))


def _draw_size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """(height, width): a random long side, a random aspect ratio, portrait 60% of the time."""
    long_side = int(rng.integers(lo, hi + 1))
    short_side = max(lo, round(long_side * rng.uniform(0.55, 1.0)))
    return (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, float(ALPHA_MAX), size=3).astype(np.float32)


def _skin(rng: np.random.Generator) -> np.ndarray:
    t = rng.random()
    tone = (1.0 - t) * _SKIN_LIGHT + t * _SKIN_DARK + rng.normal(0.0, 8.0, size=3)
    return np.clip(tone, 0.0, float(ALPHA_MAX)).astype(np.float32)


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray, distance: float = CLOTHING_DISTANCE) -> np.ndarray:
    """A random colour at least ``distance`` (RGB Euclidean) from ``avoid``: the first of eight draws that
    is, else the farthest of them."""
    best, best_d = avoid, -1.0
    for _ in range(8):
        candidate = _colour(rng)
        d = float(np.linalg.norm(candidate - avoid))
        if d > best_d:
            best, best_d = candidate, d
        if d >= distance:
            break
    return best


def _texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray,
             garment: bool = False) -> np.ndarray:
    """A uint8 RGB patch: solid, gradient, stripes, checks or blotchy noise between two colours.

    A ``garment`` is mostly plain cloth: solid, a shading gradient or soft blotches between two close
    colours; a stripe or check pattern (with any second colour) one time in four.
    """
    if garment:
        patterned = rng.random() < GARMENT_PATTERN_PROBABILITY
        kind = int(rng.choice([2, 3])) if patterned else int(rng.choice([0, 1, 4]))
        second = _colour(rng) if patterned else np.clip(colour + rng.normal(0, 25, 3), 0, ALPHA_MAX)
    else:
        second = _colour(rng) if rng.random() < 0.5 else np.clip(colour + rng.normal(0, 50, 3), 0, ALPHA_MAX)
        kind = int(rng.integers(5))
    theta = rng.uniform(0.0, math.pi)
    period = rng.uniform(3.0, 24.0)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    if kind == 0:
        t = np.full((height, width), rng.uniform(0.0, 0.3), dtype=np.float32)
    elif kind == 1:
        u = xs * math.cos(theta) + ys * math.sin(theta)
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 2:
        u = xs * math.cos(theta) + ys * math.sin(theta)
        t = (np.sin(u * (2 * math.pi / period)) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    elif kind == 3:
        u = xs * math.cos(theta) + ys * math.sin(theta)
        v = ys * math.cos(theta) - xs * math.sin(theta)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        grid = rng.random((int(rng.integers(2, 9)), int(rng.integers(2, 9)))).astype(np.float32)
        t = np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
    # A 256-entry colour ramp applied with cv2.LUT: far cheaper than blending float RGB.
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    lut = np.clip(np.rint(colour + ramp * (second - colour)), 0, ALPHA_MAX).astype(np.uint8)
    index = np.rint(t * ALPHA_MAX).astype(np.uint8)
    return cv2.LUT(cv2.merge([index, index, index]), lut.reshape(256, 1, 3))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uint8 RGB clutter: a textured base, then rectangles, ellipses, lines, polygons, patches."""
    canvas = _texture(rng, height, width, _colour(rng))
    scale = min(height, width)
    for _ in range(int(rng.integers(*PROPS))):
        # Some skin tones in the background: colour alone must not identify the person.
        colour = _skin(rng) if rng.random() < SKIN_PROP_PROBABILITY else _colour(rng)
        kind = int(rng.integers(5))
        x0, x1 = sorted(rng.integers(-width // 4, width + width // 4, size=2).tolist())
        y0, y1 = sorted(rng.integers(-height // 4, height + height // 4, size=2).tolist())
        if kind == 0:
            cv2.rectangle(canvas, (x0, y0), (x1, y1), colour.tolist(), -1)
        elif kind == 1:
            axes = (int(rng.integers(2, scale // 3 + 3)), int(rng.integers(2, scale // 3 + 3)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(canvas, ((x0 + x1) // 2, (y0 + y1) // 2), axes, angle, 0, 360, colour.tolist(), -1, _AA)
        elif kind == 2:
            thickness = int(rng.integers(1, max(2, scale // 20)))
            cv2.line(canvas, (x0, y0), (x1, y1), colour.tolist(), thickness, _AA)
        elif kind == 3:
            pts = np.stack([rng.uniform(x0, x1 + 1, 5), rng.uniform(y0, y1 + 1, 5)], axis=1)
            _fill(canvas, pts, colour.tolist())
        else:
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(max(x1, cx0 + 1), width), min(max(y1, cy0 + 1), height)
            if cx1 > cx0 and cy1 > cy0:
                patch = _texture(rng, cy1 - cy0, cx1 - cx0, colour)
                canvas[cy0:cy1, cx0:cx1] = patch
    if rng.random() < BLUR_PROBABILITY:  # depth of field: a blurred background, as in real portraits
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.8, 2.5))
    return canvas


def _fill(canvas: np.ndarray, pts: np.ndarray, colour: float | list[float]) -> None:
    """Anti-aliased filled polygon with sub-pixel vertices."""
    fixed = np.rint(pts * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [fixed], colour, _AA, _SHIFT)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _wobble(rng: np.random.Generator, pts: np.ndarray, amplitude: float) -> np.ndarray:
    """Perturb a closed outline radially: a few smooth lobes plus fine strands (hair)."""
    centre = pts.mean(axis=0)
    t = np.linspace(0.0, 2 * math.pi, len(pts), endpoint=False)
    lobes = sum(rng.normal(0, amplitude / k) * np.sin(k * t + rng.uniform(0, 2 * math.pi)) for k in range(2, 6))
    strands = rng.normal(0.0, amplitude * 0.6, len(pts))
    return centre + (pts - centre) * (1.0 + lobes + strands)[:, None]


def _person(rng: np.random.Generator, height: int, width: int,
            backdrop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The person's uint8 RGB (defined everywhere) and its float32 alpha in [0, 1].

    Shapes are built in a head-height = 1 frame with the head centre at the origin,
    then rotated, scaled and placed; the torso runs far below so it leaves the frame.
    The clothing's colour keeps its distance from ``backdrop`` (the background's mean
    colour), as a photographer's subject stands out from the scene.
    """
    unit = min(rng.uniform(*HEAD_SIZE) * height, 0.45 * width)
    if rng.random() < 0.12:  # cropped: the head touches or leaves the image border
        cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(-0.2, 0.5) * unit
    else:
        cx = rng.uniform(0.15, 0.85) * width
        cy = rng.uniform(0.5 * unit, max(0.6 * unit, height - 2.5 * unit))
    angle = math.radians(rng.uniform(-12.0, 12.0)) if rng.random() < 0.7 else 0.0
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def place(pts: np.ndarray) -> np.ndarray:
        return (pts @ rot.T) * unit + (cx, cy)

    head_rx = rng.uniform(0.36, 0.44)
    neck = rng.uniform(0.14, 0.2)
    sy, sw, drop = rng.uniform(0.75, 0.95), rng.uniform(0.9, 1.3), rng.uniform(0.3, 0.5)
    arms = rng.random() < 0.6
    # With arms the torso narrows below the shoulders, so background shows between them.
    base = rng.uniform(0.6, 0.8) * sw if arms else rng.uniform(0.85, 1.05) * sw
    # Rounded shoulders: a quarter ellipse from the collar to the top of each arm.
    qt = np.linspace(-math.pi / 2, 0.0, 10)
    rx = sw - 1.6 * neck
    right = np.stack([sw - rx + rx * np.cos(qt), sy + drop + drop * np.sin(qt)], axis=1)
    torso = np.concatenate([right, [[base, 12.0], [-base, 12.0]], right[::-1] * (-1, 1)])
    neck_poly = np.array([[-neck, 0.3], [neck, 0.3], [neck, sy + 0.1], [-neck, sy + 0.1]])
    body_parts = [_ellipse(0, 0, head_rx, 0.5), neck_poly, torso]
    skin_parts = [body_parts[0], body_parts[1]]
    if arms:
        bare = rng.random() < 0.35
        length, arm_w = rng.uniform(2.5, 4.5), rng.uniform(0.25, 0.35)
        for side in (-1.0, 1.0):
            a = rng.uniform(0.03, 0.3)
            top = np.array([side * (sw - arm_w), sy + 0.6 * drop])
            d = np.array([side * math.sin(a), math.cos(a)])
            nrm = np.array([d[1], -d[0]]) * arm_w
            end = top + d * length
            arm = np.array([top - nrm, top + nrm, end + nrm, end - nrm])
            hx, hy = end + d * 0.1
            hand = _ellipse(float(hx), float(hy), 0.17, 0.2)
            body_parts += [arm, hand]
            skin_parts += [arm, hand] if bare else [hand]

    body = np.zeros((height, width), dtype=np.uint8)
    skin = np.zeros((height, width), dtype=np.uint8)
    for part in body_parts:
        _fill(body, place(part), ALPHA_MAX)
    for part in skin_parts:
        _fill(skin, place(part), ALPHA_MAX)

    hair_soft = np.zeros((height, width), dtype=np.float32)
    face = np.zeros((height, width), dtype=np.uint8)
    if rng.random() < 0.92:
        hard = np.zeros((height, width), dtype=np.uint8)
        amp = rng.uniform(0.02, 0.07)
        top = _ellipse(0, -rng.uniform(0.05, 0.15), head_rx * rng.uniform(1.05, 1.3), 0.5 * rng.uniform(1.0, 1.2), 96)
        _fill(hard, place(_wobble(rng, top, amp)), ALPHA_MAX)
        if rng.random() < 0.4:  # long hair falling over the shoulders
            fall = _ellipse(0, rng.uniform(0.5, 0.9), head_rx * rng.uniform(1.1, 1.5), rng.uniform(0.8, 1.2), 96)
            _fill(hard, place(_wobble(rng, fall, amp)), ALPHA_MAX)
        # Hair never covers the face or the front of the neck: long hair falls behind them.
        _fill(face, place(_ellipse(0, rng.uniform(0.06, 0.12), head_rx * 0.85, 0.42)), ALPHA_MAX)
        _fill(face, place(neck_poly), ALPHA_MAX)
        # The soft band: blur the hair outline by a few pixels (wider on bigger heads), then
        # let low-frequency noise thin and thicken it, only where it is already fractional.
        sigma = float(np.clip(unit * rng.uniform(0.03, 0.08), 1.2, 6.0))
        blur = cv2.GaussianBlur(hard.astype(np.float32) / ALPHA_MAX, (0, 0), sigma)
        grid = rng.random((max(2, height // 6), max(2, width // 6))).astype(np.float32)
        noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR) - 0.5
        hair_soft = np.clip(blur + 3.0 * noise * blur * (1.0 - blur), 0.0, 1.0)

    # Layers are blended with cv2.blendLinear on uint8: one pass each instead of float RGB math.
    person = _texture(rng, height, width, _distinct_colour(rng, backdrop), garment=True)
    shade = np.linspace(0.85, 1.15, height, dtype=np.float32)[:, None, None]
    shade = shade if rng.random() < 0.5 else shade[::-1]  # light from above or below
    skin_rgb = np.clip(_skin(rng) * shade, 0, ALPHA_MAX).astype(np.uint8)
    skin_rgb = np.ascontiguousarray(np.broadcast_to(skin_rgb, (height, width, 3)))
    skin_w = skin.astype(np.float32) / ALPHA_MAX
    person = cv2.blendLinear(person, skin_rgb, 1.0 - skin_w, skin_w)
    if hair_soft.any():
        hair_rgb = _texture(rng, height, width, _HAIR[rng.integers(len(_HAIR))])
        hair_w = hair_soft * (1.0 - face.astype(np.float32) / ALPHA_MAX)
        person = cv2.blendLinear(person, hair_rgb, 1.0 - hair_w, hair_w)
    if unit >= 16:  # eyes and mouth, so the face reads as a face
        features = np.zeros((height, width), dtype=np.uint8)
        fy = rng.uniform(-0.02, 0.08)
        for ex, ey, erx, ery in ((-0.15, fy, 0.06, 0.035), (0.15, fy, 0.06, 0.035), (0, fy + 0.24, 0.1, 0.025)):
            _fill(features, place(_ellipse(ex, ey, erx, ery)), ALPHA_MAX)
        dark = features > 0
        person[dark] = (person[dark] * (1.0 - 0.7 / ALPHA_MAX * features[dark, None])).astype(np.uint8)
    alpha = np.maximum(body.astype(np.float32) / ALPHA_MAX, hair_soft)
    return person, alpha
