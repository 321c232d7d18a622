"""Tests of the synthetic portrait generator: layout, determinism, labels and difficulty."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dataeng.annotation.masks import ALPHA_MAX, read_mask
from dataeng.engine.synth import SynthSummary, generate, render
from dataeng.errors import DataEngError
from dataeng.progress import NullProgress

N, UNLABELED, SEED, SIZES = 40, 8, 3, (64, 160)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate(tmp_path_factory.mktemp("synth"), N, unlabeled=UNLABELED, seed=SEED, size_range=SIZES)


def _samples(summary: SynthSummary) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, mask, uint8 alpha) of every sample, labelled then unlabelled."""
    out = summary.out
    rows = [(out / "images", out / "masks", out / "alpha", name) for name in summary.names]
    rows += [(out / "unlabeled", out / "truth/masks", out / "truth/alpha", name) for name in summary.unlabeled_names]
    samples = []
    for image_dir, mask_dir, alpha_dir, name in rows:
        with Image.open(image_dir / f"{name}.jpg") as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(alpha_dir / f"{name}.png") as im:
            assert im.mode == "L"
            alpha = np.asarray(im)
        samples.append((image, read_mask(mask_dir / f"{name}.png"), alpha))
    return samples


@pytest.fixture(scope="module")
def samples(synth: SynthSummary) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return _samples(synth)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_record(synth: SynthSummary) -> None:
    out = synth.out
    names = [f"synth_{i:05d}" for i in range(N + UNLABELED)]
    assert (synth.n, synth.unlabeled) == (N, UNLABELED)
    assert list(synth.names) == names[:N] and list(synth.unlabeled_names) == names[N:]
    expected = {f"images/{s}.jpg" for s in names[:N]}
    expected |= {f"{d}/{s}.png" for d in ("masks", "alpha") for s in names[:N]}
    expected |= {f"unlabeled/{s}.jpg" for s in names[N:]}
    expected |= {f"truth/{d}/{s}.png" for d in ("masks", "alpha") for s in names[N:]}
    expected |= {f"labelme/{s}.{ext}" for s in names[:N] for ext in ("jpg", "json")}
    expected |= {"synth.json"}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == expected  # also: no temporary files left behind
    record = json.loads((out / "synth.json").read_text())
    assert (record["seed"], record["n"], record["unlabeled"]) == (SEED, N, UNLABELED)
    assert record["names"] == names[:N] and record["unlabeled_names"] == names[N:]


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 3, unlabeled=2, seed=11, size_range=(48, 96))
    b = generate(tmp_path / "b", 3, unlabeled=2, seed=11, size_range=(48, 96))
    c = generate(tmp_path / "c", 3, unlabeled=2, seed=12, size_range=(48, 96))
    tree_a, tree_b, tree_c = _tree(a.out), _tree(b.out), _tree(c.out)
    assert tree_a == tree_b
    jpgs = [k for k in tree_a if k.endswith(".jpg")]
    assert all(tree_a[k] != tree_c[k] for k in jpgs)


def test_adding_unlabelled_images_keeps_the_labelled_ones(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 2, unlabeled=0, seed=5, size_range=(48, 96))
    b = generate(tmp_path / "b", 2, unlabeled=3, seed=5, size_range=(48, 96))
    for sub in ("images/synth_00001.jpg", "masks/synth_00001.png", "alpha/synth_00001.png"):
        assert (a.out / sub).read_bytes() == (b.out / sub).read_bytes()


def test_masks_are_binary_and_equal_alpha_at_one_half(samples: list) -> None:
    for image, mask, alpha in samples:
        assert image.shape[:2] == mask.shape == alpha.shape
        assert set(np.unique(mask).tolist()) <= {0, 1}
        expected = (alpha.astype(np.float64) / ALPHA_MAX >= 0.5).astype(np.uint8)
        assert np.array_equal(mask, expected)


def test_sizes_within_range_and_aspect_ratios_vary(samples: list) -> None:
    shapes = [image.shape[:2] for image, _, _ in samples]
    assert all(SIZES[0] <= h <= SIZES[1] and SIZES[0] <= w <= SIZES[1] for h, w in shapes)
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
    assert len(set(shapes)) > len(shapes) // 2


def test_person_fraction_is_sensible(samples: list) -> None:
    fractions = np.array([mask.mean() for _, mask, _ in samples])
    assert 0.1 < fractions.mean() < 0.6
    assert (fractions == 0).mean() <= 0.2  # a few empty images, not many
    assert fractions.max() < 0.95


def test_alpha_has_a_soft_band_beyond_antialiasing(samples: list) -> None:
    """Fractional alpha farther than 2 px from the mask edge can only come from soft hair."""
    kernel = np.ones((5, 5), np.uint8)
    soft = 0
    people = 0
    for _, mask, alpha in samples:
        if not mask.any():
            continue
        people += 1
        near_edge = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
        fractional = (alpha > 0) & (alpha < ALPHA_MAX)
        soft += int((fractional & ~near_edge).sum() >= 10)
    assert people >= 0.8 * len(samples)
    assert soft >= 0.7 * people


def test_colour_alone_does_not_separate_person_from_background(samples: list) -> None:
    """Even an oracle that labels each colour bin by its majority class in this very set falls short."""
    bins = np.zeros((2, 16**3), dtype=np.int64)
    codes, truth = [], []
    for image, mask, _ in samples:
        q = image.astype(np.int64) // 16
        code = (q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]).ravel()
        codes.append(code)
        truth.append(mask.ravel().astype(bool))
        np.add.at(bins, (mask.ravel().astype(np.int64), code), 1)
    person_bins = bins[1] > bins[0]
    predicted = person_bins[np.concatenate(codes)]
    actual = np.concatenate(truth)
    iou = (predicted & actual).sum() / (predicted | actual).sum()
    assert iou < 0.9


def test_progress_is_called_once_per_image(tmp_path: Path) -> None:
    seen: list[int] = []

    class Counting(NullProgress):
        def advance(self, n: int = 1, **fields: object) -> None:
            seen.append((seen[-1] if seen else 0) + n)

    generate(tmp_path, 2, unlabeled=1, seed=0, size_range=(32, 48), progress=Counting())
    assert seen == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": -1}, "'n'"),
        ({"n": 1, "unlabeled": -2}, "'unlabeled'"),
        ({"n": 1, "seed": -3}, "'seed'"),
        ({"n": 1, "size_range": (8, 64)}, "'size_range'"),
        ({"n": 1, "size_range": (128, 64)}, "'size_range'"),
    ],
)
def test_invalid_arguments_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataEngError, match=match):
        generate(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), height=st.integers(16, 96), width=st.integers(16, 96))
def test_render_shapes_ranges_and_determinism(seed: int, height: int, width: int) -> None:
    image, alpha = render(np.random.default_rng(seed), height, width)
    again, alpha_again = render(np.random.default_rng(seed), height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert alpha.shape == (height, width) and alpha.dtype == np.float32
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    # Quantised to the 8-bit grid, so the stored matte is the one the image was made with.
    assert np.array_equal(np.rint(alpha * ALPHA_MAX) / np.float32(ALPHA_MAX), alpha)
    assert np.array_equal(image, again) and np.array_equal(alpha, alpha_again)


def test_labelme_files_load_in_labelme_and_match_the_masks(synth: SynthSummary) -> None:
    from labelme import LabelFile

    from dataeng.annotation.formats import labelme as labelme_format
    from dataeng.annotation.rasterize import rasterize
    from dataeng.annotation.types import LabelMap

    for name in synth.names:
        path = synth.out / "labelme" / f"{name}.json"
        LabelFile(str(path))  # labelme's own loader accepts it
        item = labelme_format.read(path).items[0]
        mask = np.asarray(Image.open(synth.out / "masks" / f"{name}.png"))
        drawn = rasterize(item, LabelMap(["person"]), mask.shape[1], mask.shape[0]).mask
        union = np.logical_or(drawn == 1, mask == 1).sum()
        assert union == 0 or np.logical_and(drawn == 1, mask == 1).sum() / union >= 0.97
