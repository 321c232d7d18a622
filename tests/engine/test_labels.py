"""The label state machine (engine/labels.py): the rules ingest, review import and pseudolabel share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.masks import encode_png, write_confidence, write_mask
from dataeng.db.queries import review_queue
from dataeng.db.schema import Label
from dataeng.engine.labels import EncodedLabel, PseudoDraft, add_human_label, add_pseudo_labels, stale_human_label
from dataeng.engine.review.export import export_review
from dataeng.errors import NothingToDoError
from tests.engine.learn.pseudolabel_helpers import add_teacher_run
from tests.factories import add_label, make_workspace


def _mask(made_mask: np.ndarray) -> EncodedLabel:
    return EncodedLabel.from_png(encode_png(made_mask))


def _draft(tmp: Path, image_id: int, accepted: bool) -> PseudoDraft:
    mask, conf = tmp / f"{image_id}.mask.png", tmp / f"{image_id}.conf.png"
    write_mask(mask, np.ones((64, 64), np.uint8))
    write_confidence(conf, np.full((64, 64), 0.99, np.float32))
    return PseudoDraft(image_id, accepted, 0.99, 1.0, 1.0, mask, conf, {"pseudolabel_run_id": None})


def test_a_human_label_supersedes_a_pseudo_label_waiting_for_review(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=3, n_val=0, n_test=0, labelled=False)
    teacher = add_teacher_run(ws, 4.0)
    target = made[0]
    with ws.session() as s:
        add_label(s, ws, target.image_id, target.mask, origin="pseudo", status="needs_review", run_id=teacher)
        add_label(s, ws, made[1].image_id, made[1].mask, origin="pseudo", status="needs_review", run_id=teacher)
    with ws.session() as s:
        assert {r["image_id"] for r in review_queue(s)} == {target.image_id, made[1].image_id}
        outcome, label = add_human_label(ws, s, target.image_id, _mask(target.mask), source="mask")
        assert outcome == "added" and label.status == "active"
    with ws.session() as s:
        statuses = {lab.origin: lab.status for lab in s.scalars(select(Label).where(
            Label.image_id == target.image_id))}
        assert statuses == {"human": "active", "pseudo": "superseded"}
        assert {r["image_id"] for r in review_queue(s)} == {made[1].image_id}
    session = ws.new_session()
    try:
        done = export_review(ws, session, tmp_path / "out", fmt="labelme", queue="uncertain")
    finally:
        session.close()
    assert done.items == 1  # the human-labelled image is not sent to annotators


def test_re_importing_the_same_human_mask_still_clears_the_review_queue(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0)
    teacher = add_teacher_run(ws, 4.0)
    with ws.session() as s:
        # A registry from before the state machine: a human label and a live pseudo-label side by side.
        add_label(s, ws, made[0].image_id, made[0].mask, origin="pseudo", status="needs_review", run_id=teacher)
        human = s.get(Label, made[0].label_id)
        assert human is not None
        human.meta = {"mask_sha256": _mask(made[0].mask).mask_sha256}
    with ws.session() as s:
        outcome, _ = add_human_label(ws, s, made[0].image_id, _mask(made[0].mask), source="mask")
        assert outcome == "unchanged"
        assert review_queue(s) == []


def test_pseudo_labels_skip_human_val_and_test_images_and_supersede_older_ones(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=3, n_val=1, n_test=1, labelled=False)
    old, new = add_teacher_run(ws, 4.0), add_teacher_run(ws, 5.0)
    train = [m for m in made if m.split == "train"]
    held_out = [m for m in made if m.split != "train"]
    with ws.session() as s:
        add_label(s, ws, train[0].image_id, train[0].mask)  # human
        older = add_label(s, ws, train[1].image_id, train[1].mask, origin="pseudo", run_id=old).id
    staging = tmp_path / "staging"
    drafts = [_draft(staging, m.image_id, accepted=i % 2 == 0) for i, m in enumerate(train + held_out)]
    with ws.session() as s:
        outcome = add_pseudo_labels(ws, s, drafts, teacher_run_id=new, round=2)
    assert {d.image_id for d in outcome.skipped} == {train[0].image_id} | {m.image_id for m in held_out}
    assert (outcome.accepted + outcome.queued, outcome.superseded) == (2, 1)
    assert not any(d.staged_mask.exists() for d in outcome.skipped)
    with ws.session() as s:
        assert s.get(Label, older).status == "superseded"  # type: ignore[union-attr]
        pseudo = s.scalars(select(Label).where(Label.origin == "pseudo", Label.run_id == new)).all()
        assert sorted(p.image_id for p in pseudo) == sorted([train[1].image_id, train[2].image_id])
        assert all((ws.root / p.mask_path).is_file() and p.round == 2 for p in pseudo)
        assert next(p for p in pseudo if p.image_id == train[1].image_id).meta["supersedes"] == older
        human = s.scalars(select(Label).where(Label.image_id == train[0].image_id)).all()
        assert [(h.origin, h.status) for h in human] == [("human", "active")]


def test_a_correction_is_stale_only_when_a_newer_human_label_arrived(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0, labelled=False)
    image_id = made[0].image_id
    with ws.session() as s:
        prelabel = add_label(s, ws, image_id, made[0].mask, origin="pseudo", status="needs_review").id
        assert stale_human_label(s, image_id, watermark=prelabel, prelabel_id=prelabel) is None
        human = add_label(s, ws, image_id, made[0].mask).id
        stale = stale_human_label(s, image_id, watermark=prelabel, prelabel_id=prelabel)
        assert stale is not None and stale.id == human
        assert stale_human_label(s, image_id, watermark=human, prelabel_id=prelabel) is None
        assert stale_human_label(s, image_id, watermark=prelabel, prelabel_id=human) is None  # the issues queue


def test_a_queue_with_only_human_labelled_images_is_empty(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=1, n_val=0, n_test=0, labelled=False)
    teacher = add_teacher_run(ws, 4.0)
    with ws.session() as s:
        add_label(s, ws, made[0].image_id, made[0].mask, origin="pseudo", status="needs_review", run_id=teacher)
    with ws.session() as s:
        add_human_label(ws, s, made[0].image_id, _mask(made[0].mask), source="labelme")
    session = ws.new_session()
    try:
        with pytest.raises(NothingToDoError, match="uncertain queue is empty"):
            export_review(ws, session, tmp_path / "out", fmt="labelme", queue="uncertain")
    finally:
        session.close()
