"""The growth report: numbers against direct SQL, the HTML page, empty and test-less workspaces, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from dataeng.annotation.masks import write_mask
from dataeng.cli import app
from dataeng.db.schema import Batch, ImageMetric, Label, Problem, Run, utcnow
from dataeng.engine.learn.evaluate import prediction_path
from dataeng.engine.report.build import Report, build_report, write_report
from dataeng.workspace import Workspace
from tests.factories import TINY_TRAIN, add_label, make_workspace

SECTIONS = ("dataset", "growth", "quality", "pseudo", "gallery", "review", "runs")
runner = CliRunner()


def save_tiny_checkpoint(ws: Workspace, run_id: int) -> str:
    """A randomly initialised tiny model saved as ``runs/<id>/checkpoint.pt``; returns its relative path."""
    from dataeng.models.checkpoint import save_checkpoint
    from dataeng.models.factory import build_model

    model = build_model("unet", TINY_TRAIN["encoder"], 1, encoder_depth=TINY_TRAIN["encoder_depth"])
    path = ws.run_dir(run_id) / "checkpoint.pt"
    save_checkpoint(path, model, {"arch": "unet", "encoder": TINY_TRAIN["encoder"], "encoder_depth": 3,
                                  "classes": ["person"], "image_size": [64, 64], "epoch": 1})
    return str(path.relative_to(ws.root))


def _metrics(iou: float) -> dict[str, float]:
    return {"iou": iou, "miou": iou + 0.05, "boundary_f1": iou - 0.1, "boundary_iou": iou - 0.2}


def make_registry(tmp_path: Path, with_test: bool = True) -> Workspace:
    """Two train runs (rounds 0 and 1), human/pseudo/review labels, a batch, problems, image metrics."""
    ws, made = make_workspace(tmp_path, n_train=8, n_val=2, n_test=3 if with_test else 0, labelled=False)
    train = [m for m in made if m.split == "train"]
    t0 = utcnow() - timedelta(hours=3)
    with ws.session() as s:
        batch = Batch(kind="ingest", status="finished", started_at=t0)
        s.add(batch)
        s.flush()
        s.execute(text("UPDATE images SET batch_id = :b"), {"b": batch.id})
        s.execute(text("UPDATE images SET group_id = :g WHERE id = :i"),
                  {"g": train[0].image_id, "i": train[1].image_id})
        for kind, field in (("unreadable", None), ("unreadable", None), ("unknown_label", "shapes[0].label")):
            s.add(Problem(batch_id=batch.id, path=f"/in/{kind}", kind=kind, field=field, message="refused"))
        humans = train[:4] + [m for m in made if m.split != "train"]
        for m in humans:
            add_label(s, ws, m.image_id, m.mask).created_at = t0
        s.flush()
        s.execute(text("UPDATE labels SET batch_id = :b"), {"b": batch.id})
        teacher = Run(kind="train", status="finished", config={"lr": 0.001, "epochs": 5}, device="cpu",
                      started_at=t0 + timedelta(minutes=10), finished_at=t0 + timedelta(minutes=12))
        teacher.metrics = {"val": _metrics(0.6), "test": _metrics(0.55) if with_test else None}
        s.add(teacher)
        s.flush()
        teacher.checkpoint_path = save_tiny_checkpoint(ws, teacher.id)
        r1 = t0 + timedelta(hours=1)
        student = Run(kind="train", status="finished", round=1, teacher_run_id=teacher.id, device="cpu",
                      config={"lr": 0.0005, "epochs": 5}, started_at=r1 + timedelta(minutes=5),
                      finished_at=r1 + timedelta(minutes=9))
        student.metrics = {"val": _metrics(0.7), "test": _metrics(0.65) if with_test else None}
        s.add(student)
        s.flush()
        student.checkpoint_path = save_tiny_checkpoint(ws, student.id)
        conf = np.full(train[0].mask.shape, 0.97, np.float32)
        pseudo = []
        for m, status, score in ((train[4], "active", 0.96), (train[5], "active", 0.95),
                                 (train[6], "needs_review", 0.5), (train[7], "needs_review", 0.3)):
            label = add_label(s, ws, m.image_id, m.mask, origin="pseudo", status=status, confidence=conf * score,
                              run_id=teacher.id)
            label.round, label.created_at = 1, r1
            label.mean_confidence = label.confident_fraction = label.stability = score
            pseudo.append(label)
        # An annotator corrected the most uncertain pre-label.
        pseudo[3].status = "superseded"
        s.flush()
        fix = add_label(s, ws, train[7].image_id, train[7].mask, source="review")
        fix.parent_id, fix.edit_iou, fix.created_at, fix.round = pseudo[3].id, 0.8, r1 + timedelta(minutes=30), 1
        if with_test:
            for k, m in enumerate(m for m in made if m.split == "test"):
                if k > 0:  # the evaluation kept these predictions (the best image's was not kept)
                    pred = m.mask.copy()
                    pred[: pred.shape[0] // 3] = 0
                    write_mask(prediction_path(ws.run_dir(student.id), "test", m.image_id), pred)
                s.add(ImageMetric(run_id=student.id, model_run_id=student.id, image_id=m.image_id, split="test",
                                  iou=0.9 - 0.2 * k, miou=0.9, fwiou=0.9, pixel_accuracy=0.9, boundary_f1=0.8,
                                  boundary_iou=0.7))
    return ws


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Report, Path]:
    ws = make_registry(tmp_path_factory.mktemp("report"))
    with ws.session() as session:
        report = build_report(ws, session)
    html, _ = write_report(report, ws.root / "reports")
    return ws, report, html


def _sql(ws: Workspace, query: str) -> list[tuple]:
    with ws.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(query))]


def test_json_numbers_equal_direct_sql(registry: tuple[Workspace, Report, Path]) -> None:
    ws, _, html = registry
    data = json.loads((html.parent / "report.json").read_text())
    assert data["dataset"]["images"] == dict(_sql(ws, "SELECT split, COUNT(*) FROM images GROUP BY split"))
    assert data["dataset"]["labels_by_origin"] == dict(_sql(ws, "SELECT origin, COUNT(*) FROM labels GROUP BY origin"))
    assert data["dataset"]["labels_by_status"] == dict(_sql(ws, "SELECT status, COUNT(*) FROM labels GROUP BY status"))
    labelled = dict(_sql(ws, "SELECT i.split, COUNT(*) FROM images i JOIN labels l ON l.image_id = i.id "
                             "WHERE l.status = 'active' GROUP BY i.split"))
    assert data["dataset"]["labelled"]["train"] == labelled["train"] == 7  # 4 human, 2 accepted, 1 corrected
    assert data["dataset"]["labelled_fraction"]["train"] == pytest.approx(7 / 8)
    assert data["dataset"]["near_duplicate_groups"] == 1 and data["dataset"]["near_duplicate_images"] == 2
    assert data["dataset"]["refused_by_kind"] == dict(_sql(ws, "SELECT kind, COUNT(*) FROM problems GROUP BY kind"))
    growth = {g["round"]: g for g in data["growth"]}
    humans = _sql(ws, "SELECT COUNT(*) FROM labels WHERE origin = 'human' AND source != 'review'")[0][0]
    assert growth[0]["human"] == growth[1]["human"] == humans
    assert growth[1]["corrected"] == _sql(ws, "SELECT COUNT(*) FROM labels WHERE source = 'review'")[0][0] == 1
    assert (growth[1]["accepted_pseudo"], growth[1]["queued"], growth[1]["pseudo_made"]) == (2, 2, 4)
    assert data["pseudo"]["last_round"] == 1
    assert sum(data["pseudo"]["histograms"]["mean_confidence"]) == 4
    assert data["pseudo"]["reviewed_accuracy"]["queued"]["n"] == 1
    assert data["review"]["edit_iou_histogram"][16] == 1  # 0.8 in bin [0.8, 0.85)
    quality = {q["round"]: q for q in data["quality"]}
    assert quality[1]["test"]["iou"] == pytest.approx(0.65) and quality[1]["teacher_run_id"] == quality[0][
        "student_run_id"]
    assert data["best_run_id"] == quality[1]["student_run_id"] and data["test_metrics_available"] is True
    worst = _sql(ws, f"SELECT image_id FROM image_metrics WHERE run_id = {data['best_run_id']} ORDER BY iou")
    assert [w["image_id"] for w in data["worst_test"]] == [w[0] for w in worst]
    queue = _sql(ws, "SELECT id FROM labels WHERE status = 'needs_review' ORDER BY confident_fraction * stability")
    assert [q["label_id"] for q in data["review_queue"]] == [q[0] for q in queue]
    runs = {r["id"]: r for r in data["runs"]}
    assert all(set(r["config"]) == {"lr"} for r in runs.values())  # epochs is the same in both
    assert "pictures" not in json.dumps(data)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.refs.append(value)


def test_html_is_self_contained_with_every_section(registry: tuple[Workspace, Report, Path]) -> None:
    _, report, html = registry
    page = _Page()
    text_ = html.read_text(encoding="utf-8")
    page.feed(text_)
    page.close()
    assert set(SECTIONS) <= page.ids
    images = [r for r in page.refs if r.startswith("data:image/")]
    assert len(images) >= 6 + 3 * 4  # plots, and image/truth/prediction/errors per worst test image
    assert not [r for r in page.refs if re.match(r"(?i)https?:", r)]
    assert "http://" not in text_ and "https://" not in text_ and "<script" not in text_
    assert {"growth", "quality", "confidence", "stability", "edit_iou"} <= set(report.plots)


def test_gallery_shows_the_kept_predictions_and_the_queue(registry: tuple[Workspace, Report, Path]) -> None:
    _, report, _ = registry
    assert [p.caption for p in report.worst_test[0].pictures] == [
        "image", "ground truth", "prediction", "errors: FP red, FN blue"]
    assert report.worst_test[0].scores["iou"] == pytest.approx(0.9 - 0.4)
    # The best test image's prediction was not kept: image and truth only, and a note says how to keep it.
    assert [p.caption for p in report.worst_test[-1].pictures] == ["image", "ground truth"]
    assert any("1 of run" in n and "dataeng evaluate --run" in n for n in report.notes)
    assert len(report.review_queue) == 1 and len(report.review_queue[0].pictures) == 3


def test_report_never_loads_a_model(registry: tuple[Workspace, Report, Path]) -> None:
    ws, _, _ = registry
    args = ["report", "--workspace", str(ws.root), "--out", str(ws.root / "r2")]
    code = ("import sys; from dataeng.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (ws.root / "r2" / "report.html").stat().st_size > 10_000  # gallery pictures embedded


def test_empty_workspace_says_so(workspace: Workspace, tmp_path: Path) -> None:
    with workspace.session() as session:
        report = build_report(workspace, session)
    html, json_path = write_report(report, tmp_path / "out")
    assert report.empty and "empty" in report.notes[0]
    assert "This workspace is empty" in html.read_text()
    data = json.loads(json_path.read_text())
    assert data["dataset"]["total_images"] == 0 and data["growth"] == [] and data["quality"] == []


def test_runs_without_test_labels_say_test_metrics_are_unavailable(tmp_path: Path) -> None:
    ws = make_registry(tmp_path, with_test=False)
    with ws.session() as session:
        report = build_report(ws, session, gallery=False)
    assert not report.test_metrics_available and report.worst_test == []
    assert any("Test metrics are unavailable" in n for n in report.notes)
    assert all(q.test is None and q.val is not None for q in report.quality)
    html, _ = write_report(report, tmp_path / "out")
    assert "Test metrics are unavailable" in html.read_text()


def test_cli_writes_both_files_and_prints_a_summary(tmp_path: Path) -> None:
    ws = make_registry(tmp_path)
    out = tmp_path / "cli-out"
    result = runner.invoke(app, ["report", "--workspace", str(ws.root), "--out", str(out), "--no-gallery"])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "report.json").is_file()
    assert "growth per round" in result.output and "report.html" in result.output
    result = runner.invoke(app, ["report", "--workspace", str(ws.root), "--json", "--no-gallery"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["dataset"]["total_images"] == 13
    assert (ws.root / "reports" / "report.json").is_file()


def test_cli_on_an_empty_workspace(workspace: Workspace) -> None:
    result = runner.invoke(app, ["report", "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "empty" in result.output


def test_labels_made_without_round_join_the_round_in_force(registry: tuple[Workspace, Report, Path]) -> None:
    ws, _, _ = registry
    with ws.session() as session:
        image_id = session.scalar(text("SELECT id FROM images WHERE split = 'val' LIMIT 1"))
        session.execute(text("UPDATE labels SET status = 'superseded' WHERE image_id = :i"), {"i": image_id})
        late = Label(image_id=image_id, origin="human", source="labelme", mask_path="x", status="active")
        session.add(late)
        session.flush()
        report = build_report(ws, session, gallery=False)
        session.rollback()
    growth = {g.round: g for g in report.growth}
    assert growth[1].human == growth[0].human + 1  # made now, after round 1 began
