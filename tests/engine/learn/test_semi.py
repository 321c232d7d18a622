"""Online semi-supervised training (``[train] semi``): what it reads, what each step computes, what a run keeps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataeng.config import TrainConfig
from dataeng.db.schema import Run
from dataeng.engine.learn import unlabelled as unlabelled_module
from dataeng.engine.learn.loop import build_model
from dataeng.engine.learn.options import resolve_options
from dataeng.engine.learn.samples import unlabelled_samples
from dataeng.engine.learn.semi import SemiSettings, UnlabelledBatch, cutmix, semi_step_loss, weak_targets
from dataeng.engine.learn.train import train
from dataeng.engine.learn.unlabelled import StreamSampler, UnlabelledDataset, cutmix_box
from dataeng.models.perturb import SemiNet
from dataeng.workspace import Workspace
from tests.factories import TINY_TRAIN, add_label, make_workspace


def _workspace(tmp_path: Path) -> tuple[Workspace, dict[str, list[int]]]:
    """8 train images (3 labelled, 1 with a pseudo-label awaiting review, 1 with a superseded label),
    2 val and 2 test images of which one each is unlabelled."""
    ws, made = make_workspace(tmp_path, n_train=8, n_val=2, n_test=2, labelled=False)
    train_ids = [m.image_id for m in made if m.split == "train"]
    with ws.session() as s:
        for m in [*made[:3], made[8], made[10]]:
            add_label(s, ws, m.image_id, m.mask)
        add_label(s, ws, made[3].image_id, made[3].mask, origin="pseudo", status="needs_review")
        add_label(s, ws, made[4].image_id, made[4].mask, status="superseded")
    return ws, {"labelled": train_ids[:3], "unlabelled": train_ids[3:],
                "held_out": [m.image_id for m in made if m.split != "train"]}


def test_unlabelled_samples_are_train_images_without_an_active_label(tmp_path: Path) -> None:
    ws, ids = _workspace(tmp_path)
    with ws.session() as s:
        got = [sample.image_id for sample in unlabelled_samples(ws, s)]
    assert got == ids["unlabelled"]  # includes the needs_review and superseded ones, in id order
    assert not set(got) & set(ids["held_out"]) and not set(got) & set(ids["labelled"])


def test_a_semi_run_reads_only_unlabelled_train_images_and_keeps_its_curves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, ids = _workspace(tmp_path)
    with ws.session() as s:
        by_path = {str(sample.image_path): sample.image_id for sample in unlabelled_samples(ws, s)}
    read: list[str] = []
    real_read = unlabelled_module.read_image

    def spy(path: Path) -> np.ndarray:
        read.append(str(path))
        return real_read(path)

    monkeypatch.setattr(unlabelled_module, "read_image", spy)
    session = ws.new_session()
    try:
        result = train(ws, session, {**TINY_TRAIN, "epochs": 2, "semi": "unimatch", "semi_threshold": 0.6,
                                     "semi_ratio": 0.5})
        run = session.get(Run, result.run_id)
        assert run is not None
        config = dict(run.config)
    finally:
        session.close()
    # 3 labelled images, batch 4 -> 1 step per epoch, 2 unlabelled images per step (ratio 0.5), 2 epochs.
    assert len(read) == 4 and {by_path[p] for p in read} <= set(ids["unlabelled"])
    assert config["semi"] == "unimatch" and config["semi_threshold"] == 0.6 and config["semi_ratio"] == 0.5
    assert config["semi_fp_weight"] == 0.5 and config["semi_weight"] == 1.0 and config["semi_cutmix"] == 0.5
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["unlabelled_images"] == len(ids["unlabelled"])
    for epoch in metrics["history"]:
        assert epoch["unlabelled_loss"] >= 0 and 0 <= epoch["confident_share"] <= 1
    assert "unlabelled loss" in (result.run_dir / "log").read_text()


def test_semi_without_unlabelled_images_trains_supervised_and_says_so(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, n_train=3, n_val=1, n_test=1)
    session = ws.new_session()
    try:
        result = train(ws, session, {**TINY_TRAIN, "epochs": 1, "semi": "fixmatch"})
    finally:
        session.close()
    assert "no unlabelled train images: training supervised" in (result.run_dir / "log").read_text()
    assert "unlabelled_loss" not in result.history[0]
    assert json.loads((result.run_dir / "metrics.json").read_text())["unlabelled_images"] == 0


def _tiny_model() -> torch.nn.Module:
    return build_model(resolve_options(TrainConfig(), TINY_TRAIN), ["person"])


def test_feature_perturbation_adds_a_dropped_out_stream_of_the_last_images() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    net = SemiNet(model, dropout=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    net.eval()  # dropout off: the perturbed stream is the clean one
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(net(x), plain)
        logits, perturbed, strong = net(x, perturb_last=2, strong=x[:1])
        assert logits.shape == plain.shape and perturbed.shape == (2, 1, 64, 64)
        assert torch.allclose(logits, plain, atol=1e-5) and torch.allclose(perturbed, plain[2:], atol=1e-5)
        assert torch.allclose(strong, plain[:1], atol=1e-5)
        assert net(x, strong=x[:1])[1] is None
        net.train()
        _, dropped, _ = net(x, perturb_last=2)
    assert not torch.allclose(dropped, plain[2:], atol=1e-3)
    assert set(net.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # no weights of its own


def test_weak_targets_and_cutmix() -> None:
    logits = torch.tensor([[[[3.0, -3.0], [0.1, -0.1]]]])  # (1, 1, 2, 2)
    target, conf = weak_targets(logits)
    assert target.tolist() == [[[1, 0], [1, 0]]]
    assert conf[0, 0, 0] > 0.95 and conf[0, 1, 0] < 0.55 and torch.allclose(conf[0, 0, 0], conf[0, 0, 1])
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    planes = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    boxes = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
    mixed, mixed_plane = cutmix(boxes, images), cutmix(boxes, planes)
    assert mixed[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and mixed[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]
    assert mixed_plane[0].tolist() == [[1, 0], [0, 0]] and torch.equal(mixed[1], images[1])


@pytest.mark.parametrize("method", ["fixmatch", "unimatch"])
def test_the_threshold_decides_which_pixels_supervise(method: str) -> None:
    torch.manual_seed(0)
    net = SemiNet(_tiny_model())
    views = 2 if method == "unimatch" else 1
    u = UnlabelledBatch(weak=torch.randn(2, 3, 64, 64), strong=torch.randn(views, 2, 3, 64, 64),
                        boxes=torch.zeros(views, 2, 64, 64, dtype=torch.bool),
                        valid=torch.ones(2, 64, 64, dtype=torch.bool))
    x = torch.randn(2, 3, 64, 64)
    base = {"method": method, "weight": 1.0, "fp_weight": 0.5, "fp_dropout": 0.5, "cutmix": 0.5, "ratio": 1.0}
    strict = semi_step_loss(net, x, lambda logits: logits.mean() * 0, u, SemiSettings(threshold=1.0, **base))
    assert float(strict.unlabelled) == 0 and float(strict.confident_share) == 0 and float(strict.loss.detach()) == 0
    loose = semi_step_loss(net, x, lambda logits: logits.mean() * 0, u, SemiSettings(threshold=0.5, **base))
    assert float(loose.confident_share) == 1.0 and float(loose.unlabelled) > 0
    loose.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    u.valid[:, :32] = False  # pixels outside the image never count
    half = semi_step_loss(net, x, lambda logits: logits.mean() * 0, u, SemiSettings(threshold=0.5, **base))
    assert float(half.confident_share) == 1.0


def test_unlabelled_views_are_deterministic_and_aligned(tmp_path: Path) -> None:
    ws, _ = _workspace(tmp_path)
    with ws.session() as s:
        samples = unlabelled_samples(ws, s)
    dataset = UnlabelledDataset(samples, (64, 64), views=2, cutmix=1.0)
    a, b = dataset[(0, 123)], dataset[(0, 123)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["strong"].shape == (2, 3, 64, 64) and a["boxes"].shape == (2, 64, 64)
    assert a["boxes"].sum() > 0  # cutmix = 1: every view has a box
    assert not torch.equal(a["strong"][0], a["strong"][1])  # independent photometric noise
    # The strong views are the weak crop plus photometric noise only: without the noise they are the weak view.
    import albumentations as A

    dataset.strong = A.Compose([])
    item = dataset[(1, 7)]
    assert all(torch.equal(view, item["weak"]) for view in item["strong"])
    c = dataset[(0, 124)]
    assert not torch.equal(a["weak"], c["weak"]) or not torch.equal(a["strong"], c["strong"])


def test_stream_sampler_is_a_pure_function_of_seed_and_epoch() -> None:
    sampler = StreamSampler(5, 12, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(1)
    list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) == first and len(first) == 12
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]  # whole permutations first
    ranks = [StreamSampler(5, 6, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    assert sorted([*ranks[0], *ranks[1]]) == sorted(first)


def test_cutmix_box_area_and_probability() -> None:
    rng = np.random.default_rng(0)
    boxes = [cutmix_box(rng, (64, 48), 0.5) for _ in range(200)]
    empty = sum(int(b.sum() == 0) for b in boxes)
    assert 60 < empty < 140
    areas = [b.mean() for b in boxes if b.sum()]
    assert min(areas) > 0.01 and max(areas) < 0.45
