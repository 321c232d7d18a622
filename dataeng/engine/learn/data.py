"""The data pipeline: samples -> augmented tensors -> DataLoaders.

- Training: albumentations moves image, mask, alpha matte and confidence together
  through the geometric transforms (random resized crop to ``image_size``, flip,
  small affine); colour transforms touch the image only. Pixels that a transform
  brings in from outside the image become IGNORE_INDEX, so they are never trained on.
- Augmentation randomness is a pure function of ``(seed, epoch, index)``: the sampler
  hands each index its own seed, so results do not depend on the number of workers or
  on where a resumed run restarted.
- A train set that mixes human and pseudo-labels is drawn so that at least
  ``human_share`` of each epoch is human-labelled (:func:`mixed_epoch`): a handful of
  human labels is not drowned by hundreds of pseudo-labels.
- Evaluation: the image is resized to ``image_size`` for the network; truth masks stay
  at their original size (metrics are computed there, see :mod:`.evaluate`).
- Images are sent as uint8 and normalised on the device (4x less to copy).

Example::

    samples = registry_samples(workspace, session, "train")
    loader = train_loader(samples, (256, 256), batch_size=8, seed=0, num_workers=2)
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataeng.annotation.masks import read_alpha, read_confidence, read_mask
from dataeng.annotation.types import IGNORE_INDEX
from dataeng.engine.learn.samples import Sample
from dataeng.errors import InputError

if TYPE_CHECKING:
    import torch


def read_image(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3).

    Raises:
        InputError: missing or undecodable file.
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise InputError("cannot read image", path=path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_truth(sample: Sample, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(mask, alpha or None, pixel weight) of a sample, checked against the image shape.

    Raises:
        InputError: a label file whose size differs from its image.
    """
    assert sample.mask_path is not None  # callers only load truths of labelled samples
    mask = read_mask(sample.mask_path)
    if sample.external:
        mask = external_mask(mask)
    alpha = read_alpha(sample.alpha_path) if sample.alpha_path else None
    if sample.weighted and sample.conf_path:
        weight = read_confidence(sample.conf_path)
    else:
        weight = np.ones(mask.shape, np.float32)
    for name, arr, path in (("mask", mask, sample.mask_path), ("alpha", alpha, sample.alpha_path),
                            ("confidence", weight, sample.conf_path)):
        if arr is not None and arr.shape[:2] != shape:
            raise InputError(f"{name} size differs from its image {shape}", path=path, field="shape",
                             value=arr.shape[:2])
    return mask, alpha, weight


def external_mask(mask: np.ndarray) -> np.ndarray:
    """A mask from outside the registry: binary 0/255 (values within {0, 255}) means
    background/class 1; anything else is taken as class indices with IGNORE_INDEX."""
    values = np.unique(mask)
    if values.size and set(values.tolist()) <= {0, IGNORE_INDEX} and IGNORE_INDEX in values:
        return (mask == IGNORE_INDEX).astype(np.uint8)
    return mask


def train_transform(image_size: tuple[int, int], strong: bool = False, augment: bool = True) -> Any:
    """The training augmentation (see module docstring); ``strong`` adds Noisy-Student noise."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network: albumentations' version check
    import albumentations as A
    import cv2

    h, w = image_size
    targets = {"alpha": "mask", "weight": "mask"}
    if not augment:
        return A.Compose([A.Resize(h, w)], additional_targets=targets)
    aspect = w / h
    ops: list[Any] = [
        A.RandomResizedCrop(size=(h, w), scale=(0.5, 1.0), ratio=(0.75 * aspect, 1.333 * aspect)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), border_mode=cv2.BORDER_CONSTANT, fill=0,
                 fill_mask=IGNORE_INDEX, p=0.3),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    ]
    if strong:
        # Image-only noise: the student must reproduce the teacher's mask from a harder view.
        ops += [
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(blur_limit=(3, 7), p=0.3),
            A.GaussNoise(std_range=(0.02, 0.1), p=0.3),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.2),
                            hole_width_range=(0.05, 0.2), p=0.5),
        ]
    return A.Compose(ops, additional_targets=targets)


def item_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of one item in one epoch (stable across processes); ``repeat``
    counts earlier draws of the same item in the epoch, so each draw gets its own view."""
    key = f"{seed}:{epoch}:{index}" if repeat == 0 else f"{seed}:{epoch}:{index}:{repeat}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def mixed_epoch(human: Sequence[int], pseudo: Sequence[int], human_share: float,
                rng: np.random.Generator) -> list[int]:
    """One epoch's order of ``len(human) + len(pseudo)`` draws, at least ``human_share`` of them human.

    With too few human items for the share they are drawn again (whole shuffled passes, then
    part of one), and that many pseudo-labelled items are left out of the epoch (a different
    subset each epoch). When the natural share is already enough it is a plain permutation.

    Example::

        order = mixed_epoch([0, 1], [2, 3, 4, 5, 6, 7], 0.5, np.random.default_rng(0))
        sum(i < 2 for i in order)  # 4 of the 8 draws are the two human items
    """
    n = len(human) + len(pseudo)
    if not human or not pseudo or len(human) >= human_share * n:
        return [int(i) for i in rng.permutation(np.array([*human, *pseudo], dtype=np.int64))]
    n_human = min(n, math.ceil(human_share * n))
    passes = [rng.permutation(np.asarray(human, dtype=np.int64)) for _ in range(math.ceil(n_human / len(human)))]
    drawn_human = np.concatenate(passes)[:n_human]
    drawn_pseudo = rng.permutation(np.asarray(pseudo, dtype=np.int64))[: n - n_human]
    return [int(i) for i in rng.permutation(np.concatenate([drawn_human, drawn_pseudo]))]


class MixedSampler:
    """Epoch orders from :func:`mixed_epoch`, a pure function of (seed, epoch), split over DDP ranks.

    Rank r of w takes every w-th draw (the epoch padded by wrapping, as DistributedSampler does).
    """

    def __init__(self, human: Sequence[int], pseudo: Sequence[int], human_share: float, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.human, self.pseudo, self.human_share = list(human), list(pseudo), human_share
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(item_seed(self.seed, self.epoch, -2))
        order = mixed_epoch(self.human, self.pseudo, self.human_share, rng)
        total = len(self) * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        return math.ceil((len(self.human) + len(self.pseudo)) / self.world_size)


class TrainDataset:
    """Map-style dataset of augmented training items, indexed by ``(index, item seed)``."""

    def __init__(self, samples: Sequence[Sample], image_size: tuple[int, int],
                 strong: bool = False, augment: bool = True) -> None:
        self.samples = list(samples)
        self.transform = train_transform(image_size, strong, augment)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        import torch

        index, seed = key
        sample = self.samples[index]
        image = read_image(sample.image_path)
        mask, alpha, weight = load_truth(sample, image.shape[:2])
        has_alpha = alpha is not None
        alpha8 = (np.rint(alpha * 255).astype(np.uint8) if alpha is not None
                  else np.zeros(mask.shape, np.uint8))
        weight8 = np.rint(weight * 255).astype(np.uint8)
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self.transform(image=image, mask=mask, alpha=alpha8, weight=weight8)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])),
            "alpha": torch.from_numpy(np.ascontiguousarray(out["alpha"])),
            "weight": torch.from_numpy(np.ascontiguousarray(out["weight"])),
            "has_alpha": torch.tensor(has_alpha),
        }


class SeededSampler:
    """Wraps an index sampler and pairs each index with its augmentation seed.

    The order comes from ``base`` (a seeded RandomSampler or a DistributedSampler);
    :meth:`set_epoch` reseeds both, so every epoch is a pure function of (seed, epoch).
    """

    def __init__(self, base: Any, seed: int, generator: torch.Generator | None = None) -> None:
        self.base = base
        self.seed = seed
        self.generator = generator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(item_seed(self.seed, epoch, -1) % (2**63))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seen: dict[int, int] = {}
        for index in self.base:
            repeat = seen.get(int(index), 0)
            seen[int(index)] = repeat + 1
            yield int(index), item_seed(self.seed, self.epoch, int(index), repeat)

    def __len__(self) -> int:
        return len(self.base)


def worker_init(worker_id: int) -> None:
    """Keep each loader worker to one thread: the workers together, not each, use the cores."""
    import cv2
    import torch

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def train_loader(samples: Sequence[Sample], image_size: tuple[int, int], batch_size: int, seed: int,
                 num_workers: int, strong: bool = False, augment: bool = True, distributed: bool = False,
                 pin_memory: bool = False, human_share: float = 0.0) -> Any:
    """A DataLoader of augmented batches with deterministic order and augmentation.

    Args:
        human_share: when ``samples`` mix human and pseudo-labels, at least this share of
            each epoch's draws are human (:func:`mixed_epoch`); the epoch length is unchanged.

    Returns:
        A ``torch.utils.data.DataLoader``; call ``loader.batch_sampler.sampler.set_epoch(e)``
        (or :func:`set_epoch`) before each epoch.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    dataset = TrainDataset(samples, image_size, strong, augment)
    generator = None
    pseudo = [i for i, sample in enumerate(samples) if sample.pseudo]
    if pseudo and human_share > 0 and len(pseudo) < len(samples):
        human = [i for i, sample in enumerate(samples) if not sample.pseudo]
        rank, world = 0, 1
        if distributed:
            import torch.distributed as torch_dist

            rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        base: Any = MixedSampler(human, pseudo, human_share, seed, rank, world)
    elif distributed:
        base = DistributedSampler(range(len(dataset)), shuffle=True, seed=seed, drop_last=False)  # type: ignore[arg-type]
    else:
        generator = torch.Generator()
        base = RandomSampler(range(len(dataset)), generator=generator)
    sampler = SeededSampler(base, seed, generator)
    # drop_last keeps BatchNorm away from batches of one; tiny sets keep every item.
    drop_last = len(sampler) > batch_size and len(sampler) % batch_size == 1
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
        worker_init_fn=worker_init, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    """Reseed a :func:`train_loader` for ``epoch``."""
    loader.sampler.set_epoch(epoch)


class EvalDataset:
    """Evaluation items: the network input at ``image_size`` plus the truth at full size."""

    def __init__(self, samples: Sequence[Sample], image_size: tuple[int, int]) -> None:
        self.samples = list(samples)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        sample = self.samples[index]
        h, w = self.image_size
        item: dict[str, Any] = {"index": index, "mask": None, "alpha": None, "error": None}
        try:
            image = read_image(sample.image_path)
            if sample.mask_path is not None:
                item["mask"], item["alpha"], _ = load_truth(sample, image.shape[:2])
        except InputError as e:
            # Reported by the caller; the other images go on.
            item["error"] = str(e)
            item["input"] = torch.zeros((3, h, w), dtype=torch.uint8)
            item["shape"] = (h, w)
            return item
        small = model_input(image, self.image_size)
        item["input"] = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)))
        item["shape"] = image.shape[:2]
        return item


def model_input(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) image resized to the network's ``image_size`` (h, w) as evaluation and
    prediction feed it: area interpolation when shrinking, bilinear when enlarging."""
    import cv2

    h, w = image_size
    shrink = image.shape[0] > h
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the network inputs; keep truths (different sizes) as lists."""
    import torch

    return {"input": torch.stack([i["input"] for i in items]),
            "items": [{k: v for k, v in i.items() if k != "input"} for i in items]}


def eval_loader(samples: Sequence[Sample], image_size: tuple[int, int], batch_size: int,
                num_workers: int) -> Any:
    """A DataLoader of evaluation batches, in sample order."""
    from torch.utils.data import DataLoader

    return DataLoader(
        EvalDataset(samples, image_size),  # type: ignore[arg-type]
        batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_eval,
        worker_init_fn=worker_init, persistent_workers=False,
    )
