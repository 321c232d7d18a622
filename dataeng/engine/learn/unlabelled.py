"""Unlabelled train images for online semi-supervised training: one weak and several strong views.

Each item is one image through the weak (geometric) augmentation: random resized crop,
flip and a small affine, as labelled images get. The strong views are that same crop
through independent photometric noise (colour jitter, greyscale, blur, as UniMatch and
FixMatch use), so the weak view's prediction lines up pixel for pixel with every strong
view. Each strong view also carries a CutMix box (with probability ``cutmix``); the step
pastes that box from another image of the batch (:mod:`.semi`). ``valid`` marks the pixels
that came from the image rather than from the affine's border.

As for labelled data, every view is a pure function of ``(seed, epoch, index)``, and
epoch ``e`` of the unlabelled stream is drawn for epoch ``e`` of the labelled one: a
resumed run sees the same unlabelled batches as an uninterrupted one.

Example::

    loader = unlabelled_loader(samples, (96, 64), batch_size=8, steps=len(labelled_loader), seed=0,
                               num_workers=2, views=2)
    batch = next(iter(loader))
    batch["weak"].shape, batch["strong"].shape   # (8, 3, 96, 64), (8, 2, 3, 96, 64)
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dataeng.engine.learn.data import SeededSampler, item_seed, read_image, worker_init
from dataeng.engine.learn.samples import Sample

if TYPE_CHECKING:
    import torch

STREAM = 0x5EED
"""Mixed into the seed, so that the unlabelled stream draws apart from the labelled one."""


def weak_transform(image_size: tuple[int, int]) -> Any:
    """The geometric augmentation of labelled training (without its colour jitter); ``valid``
    follows the image as a mask, 0 where the affine brings in border."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    import cv2

    h, w = image_size
    aspect = w / h
    return A.Compose([
        A.RandomResizedCrop(size=(h, w), scale=(0.5, 1.0), ratio=(0.75 * aspect, 1.333 * aspect)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.3),
    ])


def strong_transform() -> Any:
    """Image-only noise of a strong view (UniMatch's: colour jitter 0.5/0.5/0.5/0.25 with p 0.8,
    greyscale p 0.2, Gaussian blur sigma 0.1-2 with p 0.5)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A.Compose([
        A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=0.8),
        A.ToGray(p=0.2),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.1, 2.0), p=0.5),
    ])


def cutmix_box(rng: np.random.Generator, shape: tuple[int, int], p: float) -> np.ndarray:
    """A (H, W) uint8 mask: with probability ``p`` one box of 2-40% of the area and aspect 0.3-3.3
    (UniMatch's sizes), else all zeros."""
    h, w = shape
    box = np.zeros((h, w), np.uint8)
    if rng.random() >= p:
        return box
    for _ in range(20):  # a box that fits; almost always the first draw
        area = rng.uniform(0.02, 0.4) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < bh <= h and 0 < bw <= w:
            y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            box[y:y + bh, x:x + bw] = 1
            break
    return box


class UnlabelledDataset:
    """Map-style dataset of (weak, strong views, CutMix boxes, valid), indexed by ``(index, item seed)``."""

    def __init__(self, samples: Sequence[Sample], image_size: tuple[int, int], views: int, cutmix: float) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.views = views
        self.cutmix = cutmix
        self.weak = weak_transform(image_size)
        self.strong = strong_transform()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        import torch

        index, seed = key
        image = read_image(self.samples[index].image_path)
        rng = np.random.default_rng(seed)
        self.weak.set_random_state(rng, random.Random(seed))
        out = self.weak(image=image, mask=np.ones(image.shape[:2], np.uint8))
        weak = out["image"]
        strong, boxes = [], []
        for view in range(self.views):
            view_seed = item_seed(seed, view, index)
            self.strong.set_random_state(np.random.default_rng(view_seed), random.Random(view_seed))
            strong.append(self.strong(image=weak)["image"].transpose(2, 0, 1))
            boxes.append(cutmix_box(rng, self.image_size, self.cutmix))
        return {
            "weak": torch.from_numpy(np.ascontiguousarray(weak.transpose(2, 0, 1))),
            "strong": torch.from_numpy(np.ascontiguousarray(np.stack(strong))),
            "boxes": torch.from_numpy(np.stack(boxes)),
            "valid": torch.from_numpy(np.ascontiguousarray(out["mask"])),
        }


class StreamSampler:
    """Epoch ``e``'s ``per_epoch`` draws (per rank): whole seeded permutations of the items, then
    part of one, a pure function of (seed, epoch); rank r of w takes every w-th draw."""

    def __init__(self, n: int, per_epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.per_epoch, self.seed = n, per_epoch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, -3))
        total = self.per_epoch * self.world_size
        passes = [rng.permutation(self.n) for _ in range(math.ceil(total / self.n))]
        order = np.concatenate(passes)[:total]
        return iter(int(i) for i in order[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_epoch


def unlabelled_loader(samples: Sequence[Sample], image_size: tuple[int, int], batch_size: int, steps: int,
                      seed: int, num_workers: int, views: int, cutmix: float, distributed: bool = False,
                      pin_memory: bool = False) -> Any:
    """A DataLoader of exactly ``steps`` unlabelled batches per epoch (one per labelled step).

    Call :func:`dataeng.engine.learn.data.set_epoch` with the labelled epoch before each epoch.
    """
    from torch.utils.data import DataLoader

    rank, world = 0, 1
    if distributed:
        import torch.distributed as torch_dist

        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    base = StreamSampler(len(samples), steps * batch_size, seed ^ STREAM, rank, world)
    return DataLoader(
        UnlabelledDataset(samples, image_size, views, cutmix),  # type: ignore[arg-type]
        batch_size=batch_size, sampler=SeededSampler(base, seed ^ STREAM), drop_last=False,
        num_workers=num_workers, worker_init_fn=worker_init, persistent_workers=num_workers > 0,
        pin_memory=pin_memory, prefetch_factor=4 if num_workers > 0 else None,
    )
