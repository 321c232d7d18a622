"""The workspace commands through the CLI: init, ingest, status, doctor, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from dataeng.cli import app
from dataeng.db.schema import Image, Problem
from dataeng.workspace import Workspace
from tests.conftest import random_image

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def ws_root(tmp_path: Path, registry_url: str | None) -> Path:
    """A workspace made with ``dataeng init`` (on PostgreSQL too in tests marked ``backends``)."""
    registry = ["--registry", registry_url] if registry_url else []
    code, out = _invoke("init", str(tmp_path / "ws"), "--classes", "person,hair", *registry)
    assert code == 0, out
    return tmp_path / "ws"


def test_init_writes_config_and_refuses_a_second_time(ws_root: Path) -> None:
    text = (ws_root / "dataeng.toml").read_text()
    assert 'classes = ["person", "hair"]' in text
    code, out = _invoke("init", str(ws_root))
    assert code == 1 and "already exists" in out


def test_init_refuses_bad_classes(tmp_path: Path) -> None:
    code, out = _invoke("init", str(tmp_path / "ws"), "--classes", "person,person")
    assert code == 1 and "unique" in out
    assert not (tmp_path / "ws" / "dataeng.toml").exists()


def test_unknown_config_key_is_named(ws_root: Path) -> None:
    cfg = ws_root / "dataeng.toml"
    cfg.write_text(cfg.read_text().replace("[ingest]", "[ingest]\nworkerz = 3"))
    code, out = _invoke("status", "--workspace", str(ws_root))
    assert code == 1
    assert "ingest.workerz" in out and "unknown key" in out and "\n" not in out.strip()


@pytest.mark.backends
def test_ingest_and_status_json_agree_with_sql(ws_root: Path, tmp_path: Path) -> None:
    for i in range(25):
        random_image(tmp_path / "src" / f"{i}.png", seed=i)
    (tmp_path / "src" / "bad.jpg").write_text("nope")
    code, out = _invoke("ingest", str(tmp_path / "src"), "--workspace", str(ws_root), "--json", "--workers", "1")
    assert code == 0, out
    summary = json.loads(out)
    assert summary["added"] == 25 and summary["refused"] == 1
    assert "bad.jpg" in summary["problems"][0] and "content" in summary["problems"][0]
    code, out = _invoke("status", "--workspace", str(ws_root), "--json")
    status = json.loads(out)
    ws = Workspace.open(ws_root)
    with ws.session() as s:
        per_split = dict(s.execute(select(Image.split, func.count()).group_by(Image.split)).all())
        n_problems = s.scalar(select(func.count()).select_from(Problem))
    assert {k: v for k, v in status["images"].items() if v} == per_split
    assert sum(status["problems"].values()) == n_problems == 1
    assert status["batches"][0]["summary"]["added"] == 25


def test_ingest_human_output_lists_counts_and_refusals(ws_root: Path, tmp_path: Path) -> None:
    random_image(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"")
    code, out = _invoke("ingest", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "-w", str(ws_root))
    assert code == 0
    assert "added" in out and "refused" in out and "b.jpg" in out and "empty" in out


@pytest.mark.backends
def test_doctor_finds_missing_files_and_removes_orphans(ws_root: Path, tmp_path: Path) -> None:
    for i in range(3):
        random_image(tmp_path / "src" / f"{i}.png", seed=i)
    _invoke("ingest", str(tmp_path / "src"), "-w", str(ws_root), "--workers", "1")
    orphan = ws_root / "store" / "images" / "zz" / "orphan.png"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    code, out = _invoke("doctor", "-w", str(ws_root), "--json")
    report = json.loads(out)
    assert code == 1 and report["orphans"] == ["store/images/zz/orphan.png"] and orphan.exists()
    code, out = _invoke("doctor", "-w", str(ws_root), "--fix", "--json")
    assert json.loads(out)["removed"] == ["store/images/zz/orphan.png"] and not orphan.exists()
    assert code == 0  # fixed: healthy
    stored = next((ws_root / "store" / "images").rglob("*.png"))
    stored.write_bytes(stored.read_bytes() + b"\0")
    code, out = _invoke("doctor", "-w", str(ws_root), "--json")
    assert code == 1 and len(json.loads(out)["corrupt"]) == 1
    stored.unlink()
    code, out = _invoke("doctor", "-w", str(ws_root), "--json")
    assert code == 1 and len(json.loads(out)["missing"]) == 1


@pytest.mark.backends
def test_doctor_closes_interrupted_runs_and_rounds(ws_root: Path) -> None:
    from dataeng.db.schema import Round, Run
    from dataeng.workspace import Workspace

    ws = Workspace.open(ws_root)
    with ws.session() as s:
        killed = Run(kind="pseudolabel", status="running")
        done = Run(kind="train", status="finished")
        s.add_all([killed, done, Round(number=1, status="running")])
        s.flush()
        killed_id, done_id = killed.id, done.id
    staging = ws.run_dir(killed_id) / "staging"
    staging.mkdir(parents=True)
    (staging / "7.mask.png").write_bytes(b"half")
    code, out = _invoke("doctor", "-w", str(ws_root), "--json", "--quick")
    report = json.loads(out)
    assert code == 1 and len(report["interrupted"]) == 2 and report["closed"] == [] and not report["healthy"]
    assert f"run {killed_id} (pseudolabel)" in report["interrupted"][0] and staging.exists()
    out = _invoke("doctor", "-w", str(ws_root), "--json", "--fix", "--quick")[1]
    report = json.loads(out)
    assert report["closed"] == report["interrupted"] and report["healthy"] and not staging.exists()
    with ws.session() as s:
        assert s.get(Run, killed_id).status == "failed" and s.get(Run, done_id).status == "finished"
        assert [r.status for r in s.query(Round)] == ["failed"]
    assert json.loads(_invoke("doctor", "-w", str(ws_root), "--json", "--quick")[1])["interrupted"] == []


def test_no_workspace_gives_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATAENG_WORKSPACE", raising=False)
    code, out = _invoke("status")
    assert code == 1 and "dataeng init" in out


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    import typer.main

    click_group = typer.main.get_command(group)
    stack = [(prefix, click_group)]
    while stack:
        path, cmd = stack.pop()
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append(((*path, name), sub))


@pytest.mark.parametrize("path", list(_commands(app)), ids=lambda p: " ".join(p) or "dataeng")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    code, out = _invoke(*path, "--help")
    assert code == 0 and "Usage" in out
    # a one-line summary for every command, not just the bare usage
    assert len(out.strip().splitlines()) > 3


def test_ingest_prints_annotation_problems_and_takes_a_format(ws_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "lm"
    random_image(src / "cars.png", seed=3)
    doc = {"version": "5.4.1", "flags": {}, "imagePath": "cars.png", "imageData": None, "imageHeight": 40,
           "imageWidth": 48, "shapes": [{"label": "car", "points": [[0, 0], [9, 9]], "shape_type": "rectangle",
                                         "group_id": None, "flags": {}}]}
    (src / "cars.json").write_text(json.dumps(doc), encoding="utf-8")
    code, out = _invoke("ingest", str(src), "--workspace", str(ws_root), "--workers", "1", "--format", "labelme")
    assert code == 0, out
    assert "every shape's label is unknown" in out and "label not in classes" in out
    assert "annotations refused" in out
    code, out = _invoke("ingest", str(src), "--workspace", str(ws_root), "--format", "pascal")
    assert code == 2 and "labelme" in out


def test_version() -> None:
    from dataeng import __version__

    code, out = _invoke("--version")
    assert code == 0 and out.strip() == f"dataeng {__version__}"


def test_ingest_of_nothing_at_all_exits_1(ws_root: Path, tmp_path: Path) -> None:
    code, out = _invoke("ingest", str(tmp_path / "no_such_folder"), "-w", str(ws_root))
    assert code == 1 and "nothing was read" in out and "no such file or folder" in out
    (tmp_path / "empty").mkdir()
    assert _invoke("ingest", str(tmp_path / "empty"), "-w", str(ws_root), "--json")[0] == 1



def test_json_mode_keeps_stdout_and_stderr_machine_readable(ws_root: Path) -> None:
    result = runner.invoke(app, ["pseudolabel", "-w", str(ws_root), "--json"])  # no teacher, no images
    assert result.exit_code == 1
    error = json.loads(result.stderr)
    assert error["field"] == "teacher" and "no finished train run" in error["error"] and result.stdout == ""
    result = runner.invoke(app, ["review", "export", str(ws_root.parent / "out"), "-w", str(ws_root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "nothing-to-do"


def test_one_line_messages_even_for_file_names_with_a_newline() -> None:
    from dataeng.cli.app import one_line

    assert one_line("a\nb.jpg: not an image") == "a b.jpg: not an image"


@pytest.mark.backends
def test_status_lists_the_newest_problems(ws_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    random_image(src / "ok.png", seed=5)
    (src / "broken.jpg").write_bytes(b"not an image")
    _invoke("ingest", str(src), "-w", str(ws_root), "--workers", "1")
    code, out = _invoke("status", "-w", str(ws_root), "--problems", "5")
    assert code == 0 and "refused inputs by kind: not-an-image 1" in out
    assert "not-an-image" in out and "broken.jpg" in out and "not an image PIL can read" in out
    data = json.loads(_invoke("status", "-w", str(ws_root), "--problems", "5", "--json")[1])
    assert [p["kind"] for p in data["recent_problems"]] == ["not-an-image"]
    assert "recent_problems" not in json.loads(_invoke("status", "-w", str(ws_root), "--json")[1])


def test_pseudolabel_options_are_validated_as_dataeng_toml_keys(ws_root: Path) -> None:
    code, out = _invoke("pseudolabel", "-w", str(ws_root), "--pixel-threshold", "1.5")
    assert code == 1 and "pseudolabel.pixel_threshold" in out
    code, out = _invoke("pseudolabel", "-w", str(ws_root), "--accept-stability", "2")
    assert code == 1 and "pseudolabel.accept.min_stability" in out
