"""The review loop through Label Studio: files (export, import) and the API (push, pull) against a real server.

The server tests (``slow``) share one Label Studio for the session (``labelstudio_server`` in
tests/conftest.py); each test makes its own project and its own export folder below the server's
document root. Annotators are played through the SDK, as a script of a team would.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from dataeng.annotation.formats import labelstudio
from dataeng.annotation.formats import labelstudio_regions as regions
from dataeng.annotation.masks import read_mask
from dataeng.db.schema import Batch, Problem, ProblemKind
from dataeng.engine.review.importing import edit_iou
from dataeng.engine.review.items import pending_image_ids
from dataeng.errors import ServiceError
from dataeng.workspace import Workspace
from tests.conftest import LabelStudioServer, labelstudio_sdk_or_skip
from tests.engine.review.test_review import labels_of, queue_workspace, review_row, run_export, run_import

labelstudio_sdk_or_skip()

SIZE = 64


# ---------------------------------------------------------------- helpers
def brush_results(mask: np.ndarray) -> list[dict]:
    """One brush region per class of a class-index mask, as Label Studio's editor saves it."""
    names = {1: "person", 255: "__ignore__"}
    return [{"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": mask.shape[1],
             "original_height": mask.shape[0], "image_rotation": 0,
             "value": {"format": "rle", "rle": regions.encode_brush(mask == v), "brushlabels": [names[v]]}}
            for v in sorted(set(np.unique(mask).tolist()) - {0})]


def box_polygon(x0: int, y0: int, x1: int, y1: int) -> tuple[list[dict], np.ndarray]:
    """A person polygon through the centres of the pixels x0..x1-1, y0..y1-1, and the mask it draws."""
    ring = ((x0, y0), (x1 - 1, y0), (x1 - 1, y1 - 1), (x0, y1 - 1))
    result = {"from_name": "polygon", "to_name": "image", "type": "polygonlabels", "original_width": SIZE,
              "original_height": SIZE, "value": {"points": regions.to_percent(ring, SIZE, SIZE), "closed": True,
                                                 "polygonlabels": ["person"]}}
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return [result], mask


def edited(ws: Workspace, item: dict) -> np.ndarray:
    """An annotator's brush correction of an item's pre-fill: unsure pixels decided, a block added."""
    mask = read_mask(ws.root / item["prefill"]).copy()
    mask[mask == 255] = 1
    mask[2:12, 2:12] = 1
    return mask


def active_mask(ws: Workspace, image_id: int) -> np.ndarray:
    label = next(lab for lab in labels_of(ws, image_id) if lab.status == "active")
    assert label.origin == "human" and label.source == "review"
    return read_mask(ws.root / label.mask_path)


def human_label(ws: Workspace, image_id: int):
    return next(lab for lab in labels_of(ws, image_id) if lab.status == "active" and lab.origin == "human")


def client(server: LabelStudioServer):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=server.url, api_key=server.token)


def out_dir(server: LabelStudioServer) -> Path:
    return server.document_root / f"review-{uuid.uuid4().hex[:8]}"


def run_push(ws: Workspace, url: str, **kwargs):
    from dataeng.engine.review.labelstudio_api import push_review

    session = ws.new_session()
    try:
        return push_review(ws, session, url, **kwargs)
    finally:
        session.close()


def run_pull(ws: Workspace, review_id: int, **kwargs):
    from dataeng.engine.review.labelstudio_api import pull_review

    session = ws.new_session()
    try:
        return pull_review(ws, session, review_id, **kwargs)
    finally:
        session.close()


# ---------------------------------------------------------------- files, no server
def test_export_writes_tasks_with_predictions_config_images_and_manifest(tmp_path: Path) -> None:
    ws, made, ids = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, fmt="labelstudio", limit=3)
    assert {p.name for p in out.iterdir()} == {"tasks.json", "labeling_config.xml", "images", "manifest.json"}
    tasks = json.loads((out / "tasks.json").read_text())
    review = review_row(ws, done.review_id)
    assert len(tasks) == 3 and review.format == "labelstudio"
    with ws.session() as s:
        from dataeng.db.schema import Label

        runs = {lab.id: lab.run_id for lab in s.scalars(select(Label).where(Label.id.in_(ids)))}
    for task, item in zip(tasks, review.items, strict=True):
        data = task["data"]
        assert (data["dataeng_review"], data["dataeng_item"], data["image_sha256"]) == (
            done.review_id, item["n"], item["image_sha256"])
        assert data["image"].startswith("/data/local-files/?d=") and data["image"].endswith(f"images/{item['image']}")
        assert (out / data["dataeng_image"]).is_file()
        (prediction,) = task["predictions"]
        run = runs[item["label_id"]]
        assert prediction["model_version"] == (f"run-{run}" if run is not None else "dataeng")
        assert prediction["score"] == pytest.approx(item["score"])
        assert {r["type"] for r in prediction["result"]} == {"brushlabels"}
        assert "annotations" not in task
        # Brush is exact: the pre-fill is the mask that was sent.
        np.testing.assert_array_equal(read_mask(ws.root / item["prefill"]), read_mask(ws.root / item["sent"]))
    assert regions.declared_labels(out / "labeling_config.xml")["polygon"] == {"person", "__ignore__",
                                                                              "_background_"}
    assert f"review push {done.review_id} --labelstudio" in done.open_command
    assert f"review pull {done.review_id}" in done.open_command
    # Importing what was sent (predictions only) changes nothing: every item stays queued.
    back = run_import(ws, out / "tasks.json")
    assert (back.imported, back.untouched, back.refused) == (0, 3, 0)
    with ws.session() as s:
        assert pending_image_ids(s) == {m.image_id for m in made[:3]}


def _export_with_annotations(ws: Workspace, out: Path, annotate: dict[int, list[dict]], **kwargs) -> Path:
    """The server's JSON export of a review, made by hand: ``annotate[n]`` becomes task n's annotation."""
    tasks = json.loads((out / "tasks.json").read_text())
    for k, task in enumerate(tasks):
        task["id"] = 100 + k
        if k in annotate:
            task["annotations"] = [{"id": 200 + k, "result": annotate[k], "was_cancelled": False}]
    path = out / "project-1-export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_file_import_refuses_bad_tasks_and_imports_the_rest(tmp_path: Path) -> None:
    ws, made, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, fmt="labelstudio", limit=4)
    items = review_row(ws, done.review_id).items
    good = edited(ws, items[0])
    wrong_length = brush_results(good)
    wrong_length[0]["original_height"] = SIZE - 1  # the RLE no longer matches the declared image
    undeclared = brush_results(good)
    undeclared[0]["value"]["brushlabels"] = ["car"]
    path = _export_with_annotations(ws, out, {0: brush_results(good), 1: wrong_length, 2: undeclared,
                                              3: brush_results(good)})
    tasks = json.loads(path.read_text())
    tasks[3]["data"]["image_sha256"] = "f" * 64  # an image this registry never saw
    path.write_text(json.dumps(tasks))
    summary = run_import(ws, path)
    assert (summary.imported, summary.refused) == (1, 3), summary.to_dict()
    np.testing.assert_array_equal(active_mask(ws, made[0].image_id), good)
    with ws.session() as s:
        kinds = sorted(p.kind for p in s.scalars(select(Problem).where(Problem.batch_id == summary.batch_id)))
        fields = {p.kind: p.field for p in s.scalars(select(Problem).where(Problem.batch_id == summary.batch_id))}
    assert kinds == [ProblemKind.ANNOTATION, ProblemKind.ANNOTATION, ProblemKind.UNKNOWN_IMAGE]
    assert fields[ProblemKind.UNKNOWN_IMAGE] == "data.image_sha256"
    text = " ".join(summary.problems)
    assert "needs" in text and "not declared" in text and "'car'" in text
    with ws.session() as s:
        assert pending_image_ids(s) == {m.image_id for m in made[1:4]}


def test_a_stale_correction_is_refused(tmp_path: Path) -> None:
    from dataeng.annotation.masks import encode_png
    from dataeng.engine.labels import EncodedLabel, add_human_label

    ws, made, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    done = run_export(ws, out, fmt="labelstudio", limit=1)
    item = review_row(ws, done.review_id).items[0]
    with ws.session() as s:  # someone labels the image by another route after the export
        _, other = add_human_label(ws, s, made[0].image_id, EncodedLabel.from_png(encode_png(made[0].mask)),
                                   source="labelme")
        other_id = other.id
    summary = run_import(ws, _export_with_annotations(ws, out, {0: brush_results(edited(ws, item))}))
    assert (summary.imported, summary.refused) == (0, 1)
    assert human_label(ws, made[0].image_id).id == other_id
    assert review_row(ws, done.review_id).items[0]["state"] == "refused"


def test_cli_exports_polygons_and_refuses_push_and_pull_without_what_they_need(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from dataeng.cli import app
    from tests.conftest import _free_port

    runner = CliRunner()
    ws, _, _ = queue_workspace(tmp_path)
    out = tmp_path / "review"
    result = runner.invoke(app, ["review", "export", str(out), "--format", "labelstudio", "--shapes", "polygon",
                                 "--limit", "2", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    review_id = json.loads(result.stdout)["review_id"]
    tasks = json.loads((out / "tasks.json").read_text())
    assert {r["type"] for t in tasks for r in t["predictions"][0]["result"]} == {"polygonlabels"}
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    down = f"http://127.0.0.1:{_free_port()}"
    cases = [
        (["review", "push"], "--labelstudio URL"),
        (["review", "push", "--labelstudio", down], "LABEL_STUDIO_API_KEY"),
        (["review", "pull", str(review_id)], "never pushed"),
        (["review", "push", "99", "--labelstudio", down], "no review with this id"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, [*args, "-w", str(ws.root)])
        assert result.exit_code == 1 and expected in result.output, (args, result.output)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token-for-the-test")
    result = runner.invoke(app, ["review", "push", "--labelstudio", down, "-w", str(ws.root)])
    assert result.exit_code == 1 and down in result.output and "cannot connect" in result.output
    assert "secret-token-for-the-test" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_pull_keeps_only_its_own_reviews_tasks() -> None:
    from dataeng.engine.review.labelstudio_api import _this_review

    tasks = [{"id": 1, "data": {"dataeng_review": 3}}, {"id": 2, "data": {"dataeng_review": 4}},
             {"id": 7, "data": {"image": "/data/upload/x.png"}},  # made on the server: ours if the push recorded it
             {"id": 8, "data": {}}, {"id": 9, "dataeng_review": 3, "annotation_id": 5}]  # the last: a JSON_MIN row
    text, kept = _this_review(json.dumps(tasks).encode(), 3, {7})
    assert kept == 3 and [t["id"] for t in json.loads(text)] == [1, 7, 9]
    assert _this_review(b"<html>", 3, set()) == ("<html>", None)
    assert _this_review(b"[]", 3, set()) == ("[]", 0)


# ---------------------------------------------------------------- a real server
@pytest.mark.slow
def test_push_annotate_pull_through_the_api(tmp_path: Path, labelstudio_server: LabelStudioServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server = labelstudio_server
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.document_root))
    ws, made, _ = queue_workspace(tmp_path)
    done = run_export(ws, out_dir(server), fmt="labelstudio", limit=3)
    pushed = run_push(ws, server.url, project=f"dataeng test {uuid.uuid4().hex[:6]}")
    assert (pushed.review_id, pushed.tasks, pushed.project_reused) == (done.review_id, 3, False)
    review = review_row(ws, done.review_id)
    assert review.meta is not None and review.meta["labelstudio"]["project_id"] == pushed.project_id
    assert server.token not in json.dumps(review.meta) + json.dumps(review.items)
    task_ids = [item["labelstudio_task_id"] for item in review.items]
    assert all(isinstance(t, int) for t in task_ids)

    ls = client(server)
    tasks = {t.id: t for t in ls.tasks.list(project=pushed.project_id, fields="all")}
    assert set(tasks) == set(task_ids)
    first = tasks[task_ids[0]]
    assert first.predictions and first.predictions[0].model_version.startswith(("run-", "dataeng"))
    # The image is served to the annotator through the local-files storage.
    import httpx

    image = httpx.get(server.url + first.data["image"], headers={"Authorization": f"Token {server.token}"})
    assert image.status_code == 200 and image.content == (Path(done.out) / "images" / review.items[0]["image"]
                                                          ).read_bytes()

    # The annotators: a brush correction, a polygon drawn anew, the third task left alone.
    brush_fix = edited(ws, review.items[0])
    polygon, polygon_mask = box_polygon(10, 12, 40, 50)
    ls.annotations.create(id=task_ids[0], result=brush_results(brush_fix), was_cancelled=False)
    ls.annotations.create(id=task_ids[1], result=polygon, was_cancelled=False)

    pulled = run_pull(ws, done.review_id)
    assert (pulled.imported, pulled.untouched, pulled.refused) == (2, 1, 0), pulled.to_dict()
    np.testing.assert_array_equal(active_mask(ws, made[0].image_id), brush_fix)
    np.testing.assert_array_equal(active_mask(ws, made[1].image_id), polygon_mask)
    for k in (0, 1):
        label = human_label(ws, made[k].image_id)
        assert label.parent_id == review.items[k]["label_id"]
        assert label.edit_iou is not None and label.edit_iou < 1
        assert label.edit_iou == pytest.approx(edit_iou(read_mask(ws.root / review.items[k]["prefill"]),
                                                        read_mask(ws.root / label.mask_path)))
    states = [item["state"] for item in review_row(ws, done.review_id).items]
    assert states == ["imported", "imported", "pending"]
    with ws.session() as s:
        assert pending_image_ids(s) == {made[2].image_id}
    # Pulling again adds nothing.
    again = run_pull(ws, done.review_id)
    assert (again.imported, again.already) == (0, 2)

    # A second review into the same project: reused, and each pull takes only its own review's tasks.
    second = run_export(ws, out_dir(server), fmt="labelstudio", limit=1)
    into_same = run_push(ws, server.url, review_id=second.review_id, project=pushed.project)
    assert (into_same.project_id, into_same.project_reused, into_same.tasks) == (pushed.project_id, True, 1)
    with ws.session() as s:  # as if the first push had died after importing: a re-push imports nothing twice
        from dataeng.db.schema import Review

        row = s.get(Review, second.review_id)
        assert row is not None
        row.meta = None
        s.commit()
    repushed = run_push(ws, server.url, review_id=second.review_id, project=pushed.project)
    assert repushed.tasks == 1 and len(list(ls.tasks.list(project=pushed.project_id))) == 4
    (second_task,) = [item["labelstudio_task_id"] for item in review_row(ws, second.review_id).items]
    ls.annotations.create(id=second_task, result=box_polygon(0, 0, 20, 20)[0], was_cancelled=False)
    first_again = run_pull(ws, done.review_id)
    assert (first_again.imported, first_again.already, first_again.untouched, first_again.files) == (0, 2, 1, 3)
    from typer.testing import CliRunner

    from dataeng.cli import app

    result = CliRunner().invoke(app, ["review", "pull", str(second.review_id), "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    second_pull = json.loads(result.stdout)
    assert (second_pull["imported"], second_pull["files"]) == (1, 1)
    np.testing.assert_array_equal(active_mask(ws, made[3].image_id), box_polygon(0, 0, 20, 20)[1])


@pytest.mark.slow
def test_file_export_loaded_by_the_sdk_then_exported_by_the_server_imports(
        tmp_path: Path, labelstudio_server: LabelStudioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = labelstudio_server
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(server.document_root))
    ws, made, _ = queue_workspace(tmp_path)
    out = out_dir(server)
    done = run_export(ws, out, fmt="labelstudio", limit=4, labelstudio_shapes="polygon")
    ls = client(server)
    project = ls.projects.create(title=f"dataeng files {uuid.uuid4().hex[:6]}",
                                 label_config=(out / "labeling_config.xml").read_text())
    ls.import_storage.local.create(project=project.id, path=str(out / "images"), use_blob_urls=False)
    ls.projects.import_tasks(project.id, request=json.loads((out / "tasks.json").read_text()))
    tasks = sorted(ls.tasks.list(project=project.id, fields="all"), key=lambda t: t.data["dataeng_item"])
    assert [t.data["dataeng_item"] for t in tasks] == [0, 1, 2, 3]
    accepted = tasks[0].predictions[0].result  # the annotator submits the pre-fill as it is
    polygon, polygon_mask = box_polygon(5, 5, 30, 60)
    ls.annotations.create(id=tasks[0].id, result=accepted, was_cancelled=False)
    ls.annotations.create(id=tasks[1].id, result=polygon, was_cancelled=False)
    ls.annotations.create(id=tasks[2].id, result=[], was_cancelled=True)  # skipped
    exports = {kind: b"".join(ls.projects.exports.download_sync(project.id, export_type=kind,
                                                                 download_all_tasks=True))
               for kind in ("JSON", "JSON_MIN")}
    full, minimal = out / "export.json", tmp_path / "export_min.json"
    full.write_bytes(exports["JSON"])
    minimal.write_bytes(exports["JSON_MIN"])

    summary = run_import(ws, full)
    assert (summary.imported, summary.unchanged, summary.untouched, summary.refused) == (2, 1, 2, 0), \
        summary.to_dict()
    items = review_row(ws, done.review_id).items
    np.testing.assert_array_equal(active_mask(ws, made[0].image_id), read_mask(ws.root / items[0]["sent"]))
    np.testing.assert_array_equal(active_mask(ws, made[1].image_id), polygon_mask)
    assert human_label(ws, made[0].image_id).edit_iou == 1.0
    assert human_label(ws, made[1].image_id).edit_iou < 1
    assert any("skipped in Label Studio" in n for n in summary.notices)
    assert [i["state"] for i in items] == ["imported", "imported", "pending", "pending"]

    # JSON_MIN says the same about the annotated tasks.
    by_item = {t.data["dataeng_item"]: t for t in labelstudio.read_tasks(minimal)[0]}
    assert {k: t.state for k, t in by_item.items()} == {0: "annotated", 1: "annotated", 3: "empty"}  # no skips
    from dataeng.engine.review.export import draw
    from tests.engine.review.test_review import LABEL_MAP

    np.testing.assert_array_equal(draw(by_item[1].annotation, LABEL_MAP, SIZE, SIZE), polygon_mask)
    again = run_import(ws, minimal)
    assert (again.imported, again.already) == (0, 2)


@pytest.mark.slow
def test_a_wrong_token_and_a_server_that_is_down_are_one_line_each(
        tmp_path: Path, labelstudio_server: LabelStudioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import _free_port

    ws, _, _ = queue_workspace(tmp_path)
    done = run_export(ws, out_dir(labelstudio_server), fmt="labelstudio", limit=1)
    secret = "not-the-token-" + uuid.uuid4().hex
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", secret)
    with pytest.raises(ServiceError) as refused:
        run_push(ws, labelstudio_server.url)
    message = str(refused.value)
    assert labelstudio_server.url in message and "HTTP 401" in message and "LABEL_STUDIO_API_KEY" in message
    assert secret not in message and "\n" not in message
    from typer.testing import CliRunner

    from dataeng.cli import app

    result = CliRunner().invoke(app, ["review", "push", "--labelstudio", labelstudio_server.url, "-w", str(ws.root)])
    assert result.exit_code == 1 and "HTTP 401" in result.output and labelstudio_server.url in result.output
    assert secret not in result.output and len(result.output.strip().splitlines()) == 1
    down = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServiceError, match="cannot connect") as unreachable:
        run_push(ws, down)
    assert down in str(unreachable.value) and secret not in str(unreachable.value)
    with ws.session() as s:
        problems = list(s.scalars(select(Problem).where(Problem.kind == ProblemKind.SERVICE).order_by(Problem.id)))
        batches = list(s.scalars(select(Batch).where(Batch.kind == "review-push")))
    assert [p.path for p in problems] == [labelstudio_server.url, labelstudio_server.url, down]
    assert all(secret not in p.message for p in problems) and {b.status for b in batches} == {"failed"}
    assert review_row(ws, done.review_id).meta is None  # nothing recorded as pushed
