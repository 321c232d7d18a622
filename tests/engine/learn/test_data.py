"""Data pipeline: registry samples, aligned augmentation, ignore fill, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dataeng.annotation.types import IGNORE_INDEX
from dataeng.engine.learn.data import (
    EvalDataset,
    MixedSampler,
    SeededSampler,
    TrainDataset,
    external_mask,
    mixed_epoch,
    train_loader,
)
from dataeng.engine.learn.samples import Sample, registry_samples
from tests.factories import add_image, add_label, make_workspace


def test_registry_samples_by_split_and_origin(tmp_path):
    ws, made = make_workspace(tmp_path, n_train=3, n_val=2, n_test=1, size=32)
    with ws.session() as session:
        img = add_image(session, ws, made[0].image[::-1].copy(), "train", "pseudo")
        add_label(session, ws, img.id, made[0].mask, origin="pseudo",
                  confidence=np.full(made[0].mask.shape, 0.5, np.float32))
        vimg = add_image(session, ws, made[3].image[:, ::-1].copy(), "val", "vpseudo")
        add_label(session, ws, vimg.id, made[3].mask, origin="pseudo")
        add_label(session, ws, made[1].image_id, made[1].mask, status="superseded")
    with ws.session() as session:
        train = registry_samples(ws, session, "train")
        val = registry_samples(ws, session, "val")
    assert len(train) == 4 and [s.weighted for s in train] == [False, False, False, True]
    assert len(val) == 2  # the pseudo-labelled val image is never scored against
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in train)


def _coded_sample(tmp_path, size=64):
    """An image whose red channel encodes its mask, to check image/mask alignment."""
    ws, made = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0, size=size)
    m = made[0].mask
    image = np.stack([m * 200 + 20] * 3, axis=-1).astype(np.uint8)
    with ws.session() as session:
        row = add_image(session, ws, image, "train", "coded")
        add_label(session, ws, row.id, m, confidence=np.full(m.shape, 0.25, np.float32), origin="pseudo")
    with ws.session() as session:
        return next(s for s in registry_samples(ws, session, "train") if s.weighted)


def test_geometry_moves_image_and_mask_together(tmp_path):
    sample = _coded_sample(tmp_path)
    ds = TrainDataset([sample], (64, 64))
    agree = []
    for seed in range(12):
        item = ds[(0, seed)]
        valid = item["mask"] != IGNORE_INDEX
        fg_img = item["image"][0] > 110
        agree.append(float((fg_img == (item["mask"] == 1))[valid].float().mean()))
        assert set(np.unique(item["mask"].numpy())) <= {0, 1, IGNORE_INDEX}
        # pseudo weights (teacher confidence) travel with the mask
        w = item["weight"][valid]
        assert torch.all((w - 64).abs() <= 1), w.unique()
    assert min(agree) > 0.95


def test_out_of_image_pixels_become_ignore(tmp_path):
    sample = _coded_sample(tmp_path)
    ds = TrainDataset([sample], (64, 64))
    masks = [ds[(0, s)]["mask"] for s in range(40)]
    assert any((m == IGNORE_INDEX).any() for m in masks)  # rotations bring in outside pixels


def test_augmentation_is_a_function_of_the_seed(tmp_path):
    sample = _coded_sample(tmp_path)
    ds = TrainDataset([sample], (64, 64), strong=True)
    a, b, c = ds[(0, 7)], ds[(0, 7)], ds[(0, 8)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])


def test_loader_is_deterministic_across_worker_counts(tmp_path):
    ws, _ = make_workspace(tmp_path, n_train=6, n_val=0, n_test=0, size=32)
    with ws.session() as session:
        samples = registry_samples(ws, session, "train")

    def batches(workers: int, epoch: int):
        loader = train_loader(samples, (32, 32), batch_size=3, seed=5, num_workers=workers)
        loader.sampler.set_epoch(epoch)
        return [b["image"] for b in loader]

    zero = batches(0, 1)
    assert all(torch.equal(x, y) for x, y in zip(zero, batches(2, 1), strict=True))
    assert not torch.equal(zero[0], batches(0, 2)[0])


@pytest.mark.parametrize(("n_human", "n_pseudo", "share", "expected_human"),
                         [(3, 27, 0.5, 15), (2, 8, 0.5, 5), (1, 9, 0.25, 3), (6, 4, 0.5, 6), (3, 7, 0.0, 3)])
def test_mixed_epoch_draws_at_least_the_human_share(n_human, n_pseudo, share, expected_human):
    human, pseudo = list(range(n_human)), list(range(n_human, n_human + n_pseudo))
    order = mixed_epoch(human, pseudo, share, np.random.default_rng(0))
    drawn = [i for i in order if i < n_human]
    assert len(order) == n_human + n_pseudo  # the epoch keeps its length: sample budgets still hold
    assert len(drawn) == expected_human
    assert set(drawn) == set(human)  # every human item, each as evenly as whole passes allow
    assert max(np.bincount(drawn)) - min(np.bincount(drawn)) <= 1
    assert len(set(order) - set(human)) == len(order) - expected_human  # pseudo items at most once


def test_mixed_sampler_is_seeded_and_splits_over_ranks_and_repeats_get_their_own_seed():
    human, pseudo = [0, 1], list(range(2, 12))
    one = MixedSampler(human, pseudo, 0.5, seed=3)
    one.set_epoch(1)
    first = list(one)
    one.set_epoch(1)
    assert list(one) == first
    one.set_epoch(2)
    assert list(one) != first
    ranks = [MixedSampler(human, pseudo, 0.5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert sorted([*ranks[0], *ranks[1]]) == sorted(first) and len(ranks[0]) == 6
    seeded = SeededSampler(one, seed=3)
    seeded.set_epoch(1)
    pairs = list(seeded)
    assert len({seed for index, seed in pairs if index == 0}) == first.count(0) == 3  # one view per draw


def test_loader_mixes_human_and_pseudo_labels_by_share(tmp_path):
    ws, made = make_workspace(tmp_path, n_train=2, n_val=0, n_test=0, size=32)
    with ws.session() as session:
        for k in range(8):
            img = add_image(session, ws, np.roll(made[0].image, k + 1, axis=1), "train", f"p{k}")
            add_label(session, ws, img.id, made[0].mask, origin="pseudo",
                      confidence=np.ones(made[0].mask.shape, np.float32))
    with ws.session() as session:
        samples = registry_samples(ws, session, "train")
    assert sum(s.pseudo for s in samples) == 8
    loader = train_loader(samples, (32, 32), batch_size=5, seed=0, num_workers=0, human_share=0.5)
    loader.sampler.set_epoch(1)
    indices = [index for index, _ in loader.sampler]
    assert len(indices) == 10 and sum(not samples[i].pseudo for i in indices) == 5
    plain = train_loader(samples, (32, 32), batch_size=5, seed=0, num_workers=0)
    plain.sampler.set_epoch(1)
    assert sorted(index for index, _ in plain.sampler) == list(range(10))


def test_eval_dataset_keeps_full_resolution_truth(tmp_path):
    ws, made = make_workspace(tmp_path, n_train=0, n_val=1, n_test=0, size=48)
    with ws.session() as session:
        samples = registry_samples(ws, session, "val")
    item = EvalDataset(samples, (32, 32))[0]
    assert tuple(item["input"].shape) == (3, 32, 32) and item["mask"].shape == (48, 48)
    assert np.array_equal(item["mask"], made[0].mask)
    bad = EvalDataset([Sample(image_path=tmp_path / "missing.png")], (32, 32))[0]
    assert "cannot read image" in bad["error"]


def test_external_binary_masks():
    m = np.array([[0, IGNORE_INDEX]], np.uint8)
    assert external_mask(m).tolist() == [[0, 1]]
    idx = np.array([[0, 1, IGNORE_INDEX]], np.uint8)
    assert external_mask(idx).tolist() == idx.tolist()
