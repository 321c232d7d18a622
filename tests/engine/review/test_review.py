"""The annotator loop: review export (Labelme, CVAT; uncertain, issues, eval queues) and import."""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.formats import cvat, labelme
from dataeng.annotation.masks import read_mask
from dataeng.annotation.rasterize import rasterize
from dataeng.annotation.types import IGNORE_INDEX, LabelMap
from dataeng.db.queries import open_reviews
from dataeng.db.schema import Label, Problem, Review
from dataeng.engine.labels import EncodedLabel, add_human_label
from dataeng.engine.review.export import export_review
from dataeng.engine.review.importing import edit_iou, import_review
from dataeng.engine.review.items import close_review, pending_image_ids
from dataeng.engine.review.manifest import MANIFEST_NAME
from dataeng.errors import DataEngError, NothingToDoError
from dataeng.workspace import Workspace
from tests.factories import MadeImage, add_label, make_workspace

LABEL_MAP = LabelMap(["person"])


# ---------------------------------------------------------------- helpers (the CLI tests use them too)
def pseudo_of(mask: np.ndarray) -> np.ndarray:
    """A teacher-like pre-label: the person with an IGNORE band along its outline."""
    kernel = np.ones((5, 5), np.uint8)
    band = (cv2.dilate(mask, kernel) > 0) & ~(cv2.erode(mask, kernel) > 0)
    out = mask.copy()
    out[band] = IGNORE_INDEX
    return out


def queue_workspace(tmp_path: Path, n_queued: int = 4, registry: str | None = None
                    ) -> tuple[Workspace, list[MadeImage], list[int]]:
    """Train images 0..n_queued-1 with ``needs_review`` pseudo-labels (image 0 most uncertain), image
    n_queued with an accepted pseudo-label, n_queued+1 with a human label; 2 val and 2 test unlabelled.

    Returns:
        (workspace, images, pseudo-label ids in queue order).
    """
    ws, made = make_workspace(tmp_path, n_train=n_queued + 2, n_val=2, n_test=2, labelled=False, registry=registry)
    ids = []
    with ws.session() as s:
        for i, m in enumerate(made[:n_queued]):
            lab = add_label(s, ws, m.image_id, pseudo_of(m.mask), origin="pseudo", status="needs_review")
            lab.confident_fraction, lab.stability, lab.mean_confidence = 0.5 + 0.1 * i, 0.9, 0.8
            ids.append(lab.id)
        add_label(s, ws, made[n_queued].image_id, made[n_queued].mask, origin="pseudo", status="active")
        add_label(s, ws, made[n_queued + 1].image_id, made[n_queued + 1].mask)
    return ws, made, ids


def run_export(ws: Workspace, out: Path, **kwargs):
    session = ws.new_session()
    try:
        return export_review(ws, session, out, **{"fmt": "labelme", **kwargs})
    finally:
        session.close()


def run_import(ws: Workspace, path: Path, **kwargs):
    session = ws.new_session()
    try:
        return import_review(ws, session, path, **kwargs)
    finally:
        session.close()


def manifest_items(out: Path) -> list[dict]:
    return json.loads((out / MANIFEST_NAME).read_text())["items"]


def edit_labelme(path: Path, shapes: list[dict] | None = None, reviewed: bool | None = None) -> None:
    """Change a Labelme file as an annotator would: new shapes and/or the reviewed flag."""
    data = json.loads(path.read_text())
    if shapes is not None:
        data["shapes"] = shapes
    if reviewed is not None:
        data["flags"]["reviewed"] = reviewed
    path.write_text(json.dumps(data))


def box(x0: float, y0: float, x1: float, y1: float, label: str = "person") -> dict:
    return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "group_id": None,
            "description": "", "shape_type": "polygon", "flags": {}, "mask": None}


def drawn(shapes: list[dict], size: int = 64) -> np.ndarray:
    """What our rasteriser makes of Labelme shapes on a size x size image."""
    tmp = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": "x.png", "imageData": None,
           "imageHeight": size, "imageWidth": size}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.json"
        path.write_text(json.dumps(tmp))
        annotation, _ = labelme.read_file(path)
    return rasterize(annotation, LABEL_MAP, size, size).mask


def labels_of(ws: Workspace, image_id: int) -> list[Label]:
    with ws.session() as s:
        return list(s.scalars(select(Label).where(Label.image_id == image_id).order_by(Label.id)))


def review_row(ws: Workspace, review_id: int) -> Review:
    with ws.session() as s:
        review = s.get(Review, review_id)
        assert review is not None
        return review


# ---------------------------------------------------------------- edit IoU
def test_edit_iou_counts_every_drawn_pixel_and_ignore_changes() -> None:
    before = np.array([[1, 1, IGNORE_INDEX, 0]], np.uint8)
    assert edit_iou(before, before) == 1.0
    assert edit_iou(before, np.array([[1, 1, 1, 0]], np.uint8)) == pytest.approx(2 / 3)  # ignore decided
    assert edit_iou(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8)) == 1.0
    assert edit_iou(np.zeros((1, 2), np.uint8), np.ones((1, 2), np.uint8)) == 0.0


# ---------------------------------------------------------------- export
def test_labelme_export_is_ordered_loads_in_labelme_and_records_the_review(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from labelme import LabelFile

    ws, made, ids = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=3)
    assert done.items == 3 and done.open_command == f"labelme {out.resolve()} --flags reviewed"
    items = manifest_items(out)
    assert [i["label_id"] for i in items] == ids[:3]  # most uncertain first
    for k, item in enumerate(items):
        assert item["image_id"] == made[k].image_id and item["original_name"] == f"train_{k:03d}.png"
        lf = LabelFile(str(out / item["file"]))  # labelme's own loader
        assert lf.flags == {"reviewed": False} and lf.image_data
        raw = json.loads((out / item["file"]).read_text())
        assert raw["imageData"] is None and raw["imagePath"] == item["image"]
        assert {s["label"] for s in raw["shapes"]} >= {"person", "__ignore__"}
        assert (out / item["image"]).stat().st_size > 0
    review = review_row(ws, done.review_id)
    assert (review.queue, review.format, review.exported, review.status) == ("uncertain", "labelme", 3, "open")
    # The stored pre-fill is the exported polygons drawn back: close to the pre-label, holes and ignore kept.
    for item in review.items:
        prefill = read_mask(ws.root / item["prefill"])
        pre = read_mask(ws.root / labels_of(ws, item["image_id"])[0].mask_path)
        assert edit_iou(pre, prefill) > 0.97 and (prefill == IGNORE_INDEX).any()
    with ws.session() as s:
        assert pending_image_ids(s) == {m.image_id for m in made[:3]}


def test_unsure_pixels_are_pre_filled_with_the_teachers_guess(tmp_path: Path) -> None:
    from dataeng.db.schema import Run
    from tests.engine.learn.pseudolabel_helpers import add_teacher_run

    ws, made = make_workspace(tmp_path, n_train=2, n_val=1, n_test=1, labelled=False)
    teacher = add_teacher_run(ws, logit=8.0)  # predicts person everywhere
    with ws.session() as s:
        gone = Run(kind="train", status="finished", checkpoint_path="runs/99/checkpoint.pt")
        s.add(gone)
        s.flush()
        for m, run_id, cf in ((made[0], teacher, 0.1), (made[1], gone.id, 0.2)):
            lab = add_label(s, ws, m.image_id, pseudo_of(m.mask), origin="pseudo", status="needs_review",
                            run_id=run_id)
            lab.confident_fraction, lab.stability = cf, 1.0
        gone_id = gone.id
    done = run_export(ws, tmp_path / "review", device="cpu")
    sent = [read_mask(ws.root / i["sent"]) for i in review_row(ws, done.review_id).items]
    filled = pseudo_of(made[0].mask)
    filled[filled == IGNORE_INDEX] = 1  # the teacher's guess where the pre-label was unsure
    np.testing.assert_array_equal(sent[0], filled)
    np.testing.assert_array_equal(sent[1], pseudo_of(made[1].mask))  # no checkpoint: unsure pixels stay ignore
    assert len(done.notices) == 1 and f"teacher run {gone_id}" in done.notices[0]


def test_images_out_for_review_are_not_exported_again_until_closed(tmp_path: Path) -> None:
    ws, _, ids = queue_workspace(tmp_path)
    first = run_export(ws, tmp_path / "a", limit=3)
    second = run_export(ws, tmp_path / "b", limit=3)
    assert [i["label_id"] for i in manifest_items(tmp_path / "b")] == [ids[3]]
    with pytest.raises(NothingToDoError, match="4 images are out in open reviews"):
        run_export(ws, tmp_path / "c")
    with ws.session() as s:
        close_review(s, first.review_id)
    assert [i["label_id"] for i in manifest_items(tmp_path / "a")] == ids[:3]
    again = run_export(ws, tmp_path / "c")
    assert [i["label_id"] for i in manifest_items(tmp_path / "c")] == ids[:3]
    assert review_row(ws, first.review_id).status == "closed" and again.review_id > second.review_id


def test_export_refuses_a_non_empty_folder_and_bad_arguments(tmp_path: Path) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DataEngError, match="new or empty"):
        run_export(ws, tmp_path / "full")
    with pytest.raises(DataEngError, match="queue"):
        run_export(ws, tmp_path / "q", queue="nope")
    with pytest.raises(DataEngError, match="limit"):
        run_export(ws, tmp_path / "q", limit=0)
    assert not (tmp_path / "q").exists()


# ---------------------------------------------------------------- labelme import
@pytest.mark.backends
def test_edited_polygon_becomes_a_human_label_and_untouched_files_stay_queued(tmp_path: Path,
        registry_url: str | None) -> None:
    ws, made, ids = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=3)
    items = manifest_items(out)
    shapes = [box(10, 12, 50, 60)]
    edit_labelme(out / items[0]["file"], shapes=shapes)
    result = run_import(ws, out)
    assert (result.files, result.imported, result.untouched, result.refused) == (3, 1, 2, 0)
    pre, new = labels_of(ws, made[0].image_id)
    assert (new.origin, new.source, new.status, new.parent_id) == ("human", "review", "active", ids[0])
    assert pre.status == "superseded"  # the human label wins over the pre-label
    np.testing.assert_array_equal(read_mask(ws.root / new.mask_path), drawn(shapes))
    prefill = read_mask(ws.root / review_row(ws, done.review_id).items[0]["prefill"])
    assert new.edit_iou is not None and new.edit_iou < 1
    assert new.edit_iou == pytest.approx(edit_iou(prefill, drawn(shapes)))
    for m, lid in zip(made[1:3], ids[1:3], strict=True):  # untouched: still queued, still pending
        assert [(lab.id, lab.status) for lab in labels_of(ws, m.image_id)] == [(lid, "needs_review")]
    review = review_row(ws, done.review_id)
    assert [i["state"] for i in review.items] == ["imported", "pending", "pending"]
    assert (review.imported, review.status) == (1, "open")


@pytest.mark.backends
def test_flag_ticked_without_changes_imports_the_pre_label_with_edit_iou_one(tmp_path: Path,
        registry_url: str | None) -> None:
    ws, made, ids = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    run_export(ws, out, limit=2)
    edit_labelme(out / manifest_items(out)[1]["file"], reviewed=True)
    result = run_import(ws, out)
    assert (result.imported, result.unchanged, result.untouched) == (1, 1, 1)
    pre, new = labels_of(ws, made[1].image_id)
    assert new.edit_iou == 1.0 and new.parent_id == ids[1] and new.meta["reviewed_flag"] is True
    np.testing.assert_array_equal(read_mask(ws.root / new.mask_path), read_mask(ws.root / pre.mask_path))


@pytest.mark.backends
def test_importing_twice_adds_nothing(tmp_path: Path, registry_url: str | None) -> None:
    ws, _, _ = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    run_export(ws, out, limit=2)
    edit_labelme(out / manifest_items(out)[0]["file"], shapes=[box(5, 5, 40, 40)])
    assert run_import(ws, out).imported == 1
    with ws.session() as s:
        n_labels = len(s.scalars(select(Label)).all())
    again = run_import(ws, out)
    assert (again.imported, again.already, again.untouched, again.refused) == (0, 1, 1, 0)
    with ws.session() as s:
        assert len(s.scalars(select(Label)).all()) == n_labels


@pytest.mark.backends
def test_a_correction_for_an_image_labelled_since_the_export_is_refused(tmp_path: Path,
        registry_url: str | None) -> None:
    ws, made, _ = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=2)
    items = manifest_items(out)
    with ws.session() as s:  # someone ingests a human label for image 0 meanwhile
        from dataeng.annotation.masks import encode_png

        add_human_label(ws, s, made[0].image_id, EncodedLabel.from_png(encode_png(made[0].mask)), source="mask")
    for item in items:
        edit_labelme(out / item["file"], shapes=[box(8, 8, 30, 30)])
    result = run_import(ws, out)
    assert (result.imported, result.refused) == (1, 1)
    assert str(out / items[0]["file"]) in result.problems[0] and "after this export" in result.problems[0]
    with ws.session() as s:
        problem = s.scalars(select(Problem).where(Problem.kind == "stale-review")).one()
        assert problem.path == str(out / items[0]["file"])
    assert [lab.source for lab in labels_of(ws, made[0].image_id)] == ["teacher", "mask"]  # not overwritten
    review = review_row(ws, done.review_id)
    assert [i["state"] for i in review.items] == ["refused", "imported"] and review.status == "closed"


@pytest.mark.backends
def test_bad_files_are_refused_and_recorded_while_the_rest_import(tmp_path: Path, registry_url: str | None) -> None:
    ws, made, _ = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    run_export(ws, out, limit=4)
    items = manifest_items(out)
    for item in items:
        edit_labelme(out / item["file"], shapes=[box(8, 8, 40, 50)])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["items"][0]["image_sha256"] = "f" * 64  # names an unknown image
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    escaping = json.loads((out / items[1]["file"]).read_text())
    escaping["imagePath"] = "../../outside.png"
    (out / items[1]["file"]).write_text(json.dumps(escaping))
    text = (out / items[2]["file"]).read_text()
    (out / items[2]["file"]).write_text(text[: len(text) // 2])  # truncated
    result = run_import(ws, out)
    assert (result.imported, result.refused) == (1, 3)
    assert [lab.source for lab in labels_of(ws, made[3].image_id)] == ["teacher", "review"]
    with ws.session() as s:
        rows = {(p.kind, p.field, p.value) for p in s.scalars(select(Problem).where(
            Problem.batch_id == result.batch_id))}
    assert ("unknown-image", "items[0].image_sha256", "f" * 64) in rows
    assert ("annotation", "imagePath", "../../outside.png") in rows
    assert any(kind == "annotation" and field and field.startswith("line ") for kind, field, _ in rows)
    assert any("escapes" in line for line in result.problems)
    assert any("invalid JSON" in line and items[2]["file"] in line for line in result.problems)


def test_without_a_manifest_files_are_matched_by_the_image_sha256(tmp_path: Path) -> None:
    ws, made, ids = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=3)
    items = manifest_items(out)
    (out / MANIFEST_NAME).unlink()
    edit_labelme(out / items[2]["file"], shapes=[box(3, 3, 33, 33)])
    result = run_import(ws, out)
    assert (result.imported, result.untouched, result.refused) == (1, 2, 0)
    new = labels_of(ws, made[2].image_id)[-1]
    assert new.parent_id == ids[2] and new.meta["review_id"] == done.review_id


@pytest.mark.backends
def test_a_crash_mid_import_leaves_a_consistent_registry_and_import_resumes(tmp_path: Path, registry_url: str | None,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import dataeng.engine.labels as labels_module

    ws, made, _ = queue_workspace(tmp_path, registry=registry_url)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=3)
    for item in manifest_items(out):
        edit_labelme(out / item["file"], shapes=[box(6, 6, 44, 44)])
    real, calls = labels_module.add_human_label, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of the second item
        return real(*args, **kwargs)

    monkeypatch.setattr(labels_module, "add_human_label", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_import(ws, out)
    review = review_row(ws, done.review_id)
    assert [i["state"] for i in review.items] == ["imported", "pending", "pending"] and review.imported == 1
    assert [lab.status for lab in labels_of(ws, made[1].image_id)] == ["needs_review"]
    monkeypatch.setattr(labels_module, "add_human_label", real)
    result = run_import(ws, out)
    assert (result.imported, result.already) == (2, 1)
    assert review_row(ws, done.review_id).status == "closed"


# ---------------------------------------------------------------- CVAT
@pytest.mark.parametrize("shapes", ["mask", "polygon"])
def test_cvat_export_reads_back_to_the_same_masks(tmp_path: Path, shapes: str) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "cvat"
    done = run_export(ws, out, fmt="cvat", limit=3, cvat_shapes=shapes)
    result = cvat.read(out / "annotations.xml")
    assert not result.problems and len(result.items) == 3
    labels = json.loads((out / "cvat_labels.json").read_text())
    assert {"name": "reviewed", "type": "tag", "attributes": []} in [
        {k: v for k, v in label.items() if k != "color"} for label in labels]
    review = review_row(ws, done.review_id)
    by_name = {annotation.image_name: annotation for annotation in result.items}  # the XML is in name order
    assert sorted(by_name) == sorted(item["image"] for item in review.items)
    for item in review.items:
        annotation = by_name[item["image"]]
        assert annotation.image_path == (out / "images" / item["image"])
        mask = rasterize(annotation, LABEL_MAP, 64, 64).mask
        np.testing.assert_array_equal(mask, read_mask(ws.root / item["prefill"]))
        pre = read_mask(ws.root / labels_of(ws, item["image_id"])[0].mask_path)
        if shapes == "mask":
            np.testing.assert_array_equal(mask, pre)  # RLE is exact
        else:
            assert edit_iou(pre, mask) > 0.97


def _cvat_polygon(xml: str, image: str, points: str) -> str:
    """Replace the shapes of one <image> with one person polygon (an annotator's correction)."""
    start = xml.index(f'name="{image}"')
    head, rest = xml[:start], xml[start:]
    end = rest.index("</image>")
    opening = rest[: rest.index(">") + 1]
    return head + opening + f'\n    <polygon label="person" source="manual" occluded="0" points="{points}" ' \
        f'z_order="0"/>\n  ' + rest[end:]


def test_cvat_task_zip_imports_changed_images_only(tmp_path: Path) -> None:
    ws, made, ids = queue_workspace(tmp_path)
    out = tmp_path / "cvat"
    done = run_export(ws, out, fmt="cvat", limit=3)
    items = manifest_items(out)
    xml = _cvat_polygon((out / "annotations.xml").read_text(), items[1]["image"], "5,5;50,5;50,55;5,55")
    task_zip = tmp_path / "elsewhere" / "task_7_dataset.zip"  # no manifest: matched by the images inside
    task_zip.parent.mkdir()
    with zipfile.ZipFile(task_zip, "w") as zf:
        zf.writestr("annotations.xml", xml)
        for item in items:
            zf.write(out / "images" / item["image"], f"images/{item['image']}")
    result = run_import(ws, task_zip)
    assert (result.files, result.imported, result.untouched, result.refused) == (3, 1, 2, 0)
    new = labels_of(ws, made[1].image_id)[-1]
    assert (new.source, new.parent_id) == ("review", ids[1])
    np.testing.assert_array_equal(read_mask(ws.root / new.mask_path)[5:56, 5:51], 1)
    assert read_mask(ws.root / new.mask_path).sum() == 46 * 51
    assert review_row(ws, done.review_id).items[1]["state"] == "imported"


def test_cvat_zip_without_images_uses_the_manifest_beside_it(tmp_path: Path) -> None:
    ws, made, _ = queue_workspace(tmp_path)
    out = tmp_path / "cvat"
    run_export(ws, out, fmt="cvat", limit=2)
    items = manifest_items(out)
    xml = (out / "annotations.xml").read_text()
    for item in items:
        start = xml.index(f'name="{item["image"]}"')
        close = xml.index(">", start) + 1
        xml = xml[:close] + '\n    <tag label="reviewed" source="manual"/>' + xml[close:]
    with zipfile.ZipFile(out / "export.zip", "w") as zf:
        zf.writestr("annotations.xml", xml)
    result = run_import(ws, out / "export.zip")
    assert (result.imported, result.unchanged) == (2, 2)
    assert all(labels_of(ws, m.image_id)[-1].edit_iou == 1.0 for m in made[:2])


# ---------------------------------------------------------------- eval and issues queues
def test_eval_queue_sends_unlabelled_val_and_test_images_empty_without_a_teacher(tmp_path: Path) -> None:
    ws, made = make_workspace(tmp_path, n_train=2, n_val=3, n_test=2, labelled=False)
    with ws.session() as s:
        add_label(s, ws, made[2].image_id, made[2].mask)  # a labelled val image: not sent
    out = tmp_path / "eval"
    done = run_export(ws, out, queue="eval", limit=10)
    items = manifest_items(out)
    assert [i["image_id"] for i in items] == [m.image_id for m in made[3:]]
    assert done.prefill == {"empty": 4} and done.teacher_run_id is None
    assert all(i["label_id"] is None for i in items)
    assert all(json.loads((out / i["file"]).read_text())["shapes"] == [] for i in items)
    edit_labelme(out / items[0]["file"], shapes=[box(4, 4, 20, 20)])
    result = run_import(ws, out)
    new = labels_of(ws, made[3].image_id)[-1]
    assert result.imported == 1 and (new.origin, new.source, new.status, new.edit_iou) == ("human", "review",
                                                                                           "active", None)


def test_eval_queue_is_pre_filled_by_the_teacher(tmp_path: Path) -> None:
    from tests.engine.learn.pseudolabel_helpers import add_teacher_run

    ws, _ = make_workspace(tmp_path, n_train=1, n_val=1, n_test=1, labelled=False)
    run_id = add_teacher_run(ws, logit=8.0)  # everything is person
    out = tmp_path / "eval"
    done = run_export(ws, out, queue="eval", fmt="cvat", device="cpu")
    assert done.teacher_run_id == run_id and done.prefill == {"teacher": 2}
    for item in review_row(ws, done.review_id).items:
        assert item["prefill_source"] == "teacher" and (read_mask(ws.root / item["prefill"]) == 1).all()
    with ws.session() as s:  # val/test images are never pseudo-labelled
        assert s.scalars(select(Label)).all() == []


@dataclass(frozen=True)
class FakeIssue:
    image_id: int
    label_id: int
    score: float
    predicted_png: bytes
    source_run_id: int | None


def test_issues_queue_follows_the_ranking_and_a_fix_replaces_the_human_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, made = make_workspace(tmp_path, n_train=4, n_val=1, n_test=1)
    with ws.session() as s:
        stale = s.get(Label, made[1].label_id)
        assert stale is not None
        stale.status = "superseded"  # ranked, but no longer the active label: skipped
    calls = {}

    def rank_label_issues(workspace, session, *, folds=0, limit=None, device=None, progress=None):
        calls.update(folds=folds, device=device, limit=limit)
        return [FakeIssue(m.image_id, m.label_id, s, b"", None) for m, s in
                ((made[2], 0.1), (made[1], 0.2), (made[0], 0.3), (made[3], 0.4))]

    import dataeng.engine.review.export as export_module

    monkeypatch.setattr(export_module, "rank_label_issues", rank_label_issues)
    out = tmp_path / "issues"
    done = run_export(ws, out, queue="issues", limit=2, folds=3, device="cpu")
    assert calls == {"folds": 3, "device": "cpu", "limit": 2} and len(done.notices) == 1
    items = manifest_items(out)
    assert [(i["image_id"], i["label_id"], i["score"]) for i in items] == [
        (made[2].image_id, made[2].label_id, 0.1), (made[0].image_id, made[0].label_id, 0.3)]
    review = review_row(ws, done.review_id)
    assert edit_iou(made[2].mask, read_mask(ws.root / review.items[0]["prefill"])) > 0.97
    edit_labelme(out / items[0]["file"], shapes=[box(0, 0, 32, 64)])
    assert run_import(ws, out).imported == 1
    old, new = labels_of(ws, made[2].image_id)
    assert (old.status, new.status, new.parent_id, new.source) == ("superseded", "active", old.id, "review")


def test_open_reviews_lists_the_review_until_every_item_came_back(tmp_path: Path) -> None:
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=2)
    with ws.session() as s:
        assert [(r["id"], r["exported"], r["imported"]) for r in open_reviews(s)] == [(done.review_id, 2, 0)]
    items = manifest_items(out)
    edit_labelme(out / items[0]["file"], reviewed=True)
    run_import(ws, out)
    with ws.session() as s:
        assert [(r["id"], r["imported"]) for r in open_reviews(s)] == [(done.review_id, 1)]
    edit_labelme(out / items[1]["file"], reviewed=True)
    run_import(ws, out)
    with ws.session() as s:
        assert open_reviews(s) == []
    review = review_row(ws, done.review_id)
    assert (review.status, review.imported, review.imported_at is not None) == ("closed", 2, True)


def test_unknown_labels_and_broken_zips_are_refused(tmp_path: Path) -> None:
    from dataeng.errors import InputError

    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, limit=1)
    edit_labelme(out / manifest_items(out)[0]["file"], shapes=[box(4, 4, 30, 30, label="persn")])
    result = run_import(ws, out)
    assert (result.imported, result.refused) == (0, 1) and "'persn'" in result.problems[0]
    assert review_row(ws, done.review_id).items[0]["state"] == "pending"  # fixable: stays out for review
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(InputError, match="not a readable zip"):
        run_import(ws, tmp_path / "broken.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(InputError, match=r"no annotations\.xml"):
        run_import(ws, tmp_path / "empty.zip")
