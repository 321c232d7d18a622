"""Ingest invariants: dedup, stable splits, near-duplicate groups, refused inputs, crashes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from dataeng.db.schema import Batch, Image, Problem
from dataeng.engine.doctor import doctor
from dataeng.engine.ingest.ingest import collect_images, ingest
from dataeng.engine.ingest.inspect_image import Inspected, Refused, inspect_image
from dataeng.workspace import Workspace
from tests.conftest import random_image


def _folder(root: Path, n: int, start: int = 0, size: tuple[int, int] = (48, 40)) -> Path:
    for i in range(start, start + n):
        random_image(root / f"img_{i:05d}.png", size=size, seed=i)
    return root


def _splits(ws: Workspace) -> dict[str, str]:
    with ws.session() as s:
        return dict(s.execute(select(Image.sha256, Image.split)).all())


@pytest.mark.backends
def test_reingest_adds_nothing(workspace: Workspace, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 30)
    with workspace.session() as s:
        first = ingest(workspace, s, [src], workers=1)
    with workspace.session() as s:
        second = ingest(workspace, s, [src], workers=2)
        assert s.scalar(select(func.count()).select_from(Image)) == 30
    assert first.added == 30
    assert sum(first.per_split.values()) == 30
    assert (second.added, second.duplicates) == (0, 30)


def test_split_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 40)
    files = sorted(src.iterdir())
    a = Workspace.init(tmp_path / "a")
    b = Workspace.init(tmp_path / "b")
    with a.session() as s:
        ingest(a, s, [str(f) for f in files], workers=1)
    with b.session() as s:  # reversed, and in two batches
        ingest(b, s, [str(f) for f in files[::-1][:15]], workers=1)
        ingest(b, s, [str(f) for f in files[::-1][15:]], workers=1)
    assert _splits(a) == _splits(b)
    assert set(_splits(a).values()) == {"train", "val", "test"}


@pytest.mark.backends
def test_adding_1000_images_never_moves_an_existing_one(workspace: Workspace, tmp_path: Path) -> None:
    with workspace.session() as s:
        ingest(workspace, s, [_folder(tmp_path / "old", 60)], workers=1)
    before = _splits(workspace)
    with workspace.session() as s:
        summary = ingest(workspace, s, [_folder(tmp_path / "new", 1000, start=1000, size=(16, 16))])
    after = _splits(workspace)
    assert summary.added + summary.duplicates == 1000
    assert {k: after[k] for k in before} == before
    counts = np.array([sum(v == sp for v in after.values()) for sp in ("train", "val", "test")]) / len(after)
    assert np.allclose(counts, (0.7, 0.2, 0.1), atol=0.05)


def _near_copies(path: Path, base: Path, n: int) -> list[Path]:
    """JPEG re-encodes and slight brightness changes of one photo: near duplicates."""
    im = PILImage.open(base).convert("RGB")
    out = []
    for k in range(n):
        arr = np.clip(np.asarray(im, dtype=np.int16) + (k - n // 2), 0, 255).astype(np.uint8)
        p = path / f"copy_{k}.jpg"
        PILImage.fromarray(arr).save(p, quality=80 + k)
        out.append(p)
    return out


@pytest.mark.backends
def test_near_duplicates_share_group_and_split(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "src"
    base = random_image(src / "base.png", size=(96, 96), seed=7)
    copies = _near_copies(src, base, 5)
    _folder(src, 20, start=100, size=(96, 96))
    with workspace.session() as s:
        summary = ingest(workspace, s, [src], workers=1)
        rows = s.execute(select(Image.original_path, Image.group_id, Image.split)).all()
    assert summary.added == 26
    assert summary.near_duplicates == 5
    by_name = {Path(p).name: (g, sp) for p, g, sp in rows}
    groups = {by_name[p.name] for p in [base, *copies]}
    assert len(groups) == 1
    with workspace.session() as s:  # no group spans two splits, anywhere
        spans = s.execute(
            select(Image.group_id).group_by(Image.group_id).having(func.count(func.distinct(Image.split)) > 1)
        ).all()
    assert spans == []


@pytest.mark.backends
def test_near_duplicate_arriving_later_joins_the_existing_split(workspace: Workspace, tmp_path: Path) -> None:
    base = random_image(tmp_path / "a" / "base.png", size=(96, 96), seed=11)
    with workspace.session() as s:
        ingest(workspace, s, [base], workers=1)
    copy = _near_copies(tmp_path / "b", base, 1)[0] if (tmp_path / "b").mkdir() is None else None
    with workspace.session() as s:
        summary = ingest(workspace, s, [copy], workers=1)
        splits = s.execute(select(Image.split, Image.group_id)).all()
    assert summary.near_duplicates == 1
    assert len({sp for sp, _ in splits}) == 1 and len({g for _, g in splits}) == 1


def _bad_inputs(root: Path) -> dict[str, str]:
    """Files that must be refused, and the problem kind each must be recorded as."""
    root.mkdir(parents=True)
    (root / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    PILImage.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n")
    (root / "broken.png").symlink_to(root / "nowhere.png")
    (root / "folder.jpg").mkdir()
    return {
        "zero.jpg": "empty",
        "truncated.jpg": "corrupt",
        "text.jpg": "not-an-image",
        "broken.png": "broken-symlink",
        "folder.jpg": "not-a-file",
    }


@pytest.mark.backends
def test_bad_inputs_are_refused_and_recorded_while_the_batch_goes_on(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected = _bad_inputs(src)
    random_image(src / "good.png", seed=1)
    random_image(src / "tiny.png", size=(1, 1), seed=2)
    random_image(src / "unicode_ñ_人.png", seed=3)
    weird = os.fsencode(str(src)) + b"/latin1_\xe9.png"
    random_image(Path(os.fsdecode(weird)), seed=4)
    with workspace.session() as s:
        summary = ingest(workspace, s, [src], workers=1)
        problems = {Path(p.path).name: p for p in s.scalars(select(Problem))}
        originals = set(s.scalars(select(Image.original_path)))
    assert summary.added == 4  # good, 1x1 (accepted), unicode and non-UTF-8 names
    assert summary.refused == len(expected)
    assert {k: problems[k].kind for k in expected} == expected
    for name, p in problems.items():  # one line, naming the file
        line = next(x for x in summary.problems if name in x)
        assert "\n" not in line and p.message in line
    assert any("ñ_人" in o for o in originals)
    assert any("latin1_" in o for o in originals)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = random_image(tmp_path / "big.png", size=(64, 64))
    result = inspect_image(str(path), str(tmp_path / "ws"), "copy", max_pixels=64 * 64 // 2 - 1)
    assert isinstance(result, Refused) and result.kind == "decompression-bomb"
    between = inspect_image(str(path), str(tmp_path / "ws"), "copy", max_pixels=64 * 64 - 100)
    assert isinstance(between, Refused) and between.kind == "decompression-bomb"
    ok = inspect_image(str(path), str(tmp_path / "ws"), "copy", max_pixels=64 * 64)
    assert isinstance(ok, Inspected)


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = random_image(tmp_path / "secret.png")
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: simulate the permission error the OS would give

        def deny(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", deny)
    result = inspect_image(str(path), str(tmp_path / "ws"), "copy", max_pixels=10**8)
    assert isinstance(result, Refused) and result.kind == "unreadable" and "Permission denied" in result.message


def test_exif_orientation_is_applied_once(workspace: Workspace, tmp_path: Path) -> None:
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    src = tmp_path / "rot.jpg"
    PILImage.fromarray(arr).save(src, exif=exif.tobytes(), quality=95)
    with workspace.session() as s:
        ingest(workspace, s, [src], workers=1)
        row = s.scalars(select(Image)).one()
    assert (row.width, row.height) == (40, 80)
    stored = PILImage.open(workspace.root / row.store_path)
    assert stored.size == (40, 80)
    assert stored.getexif().get(0x0112, 1) == 1
    top = np.asarray(stored.convert("L"))[:40].mean()
    assert top > 200  # the white half is on top after a 90 degree clockwise turn
    with workspace.session() as s:  # the same file again is a duplicate, not a second rotation
        assert ingest(workspace, s, [src], workers=1).duplicates == 1


def test_globs_files_and_missing_paths(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 3)
    (src / "notes.txt").write_text("x")
    paths, missing = collect_images([str(src / "*.png"), str(src / "img_00000.png"), str(tmp_path / "nope")])
    assert sorted(p.name for p in paths) == ["img_00000.png", "img_00001.png", "img_00002.png"]
    assert [m.kind for m in missing] == ["not-found"]


def test_store_is_content_addressed_and_hardlinked(workspace: Workspace, tmp_path: Path) -> None:
    src = random_image(tmp_path / "a.png", seed=5)
    shutil.copy(src, tmp_path / "b.png")
    with workspace.session() as s:
        summary = ingest(workspace, s, [src, tmp_path / "b.png"], workers=1)
        row = s.scalars(select(Image)).one()
    assert (summary.added, summary.duplicates) == (1, 1)
    stored = workspace.root / row.store_path
    assert stored.name == f"{row.sha256}.png" and stored.parent.name == row.sha256[:2]
    assert os.stat(stored).st_ino == os.stat(src).st_ino


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from dataeng.engine.ingest.ingest import ingest
    from dataeng.workspace import Workspace

    ws = Workspace.open(sys.argv[1])
    kill_at, stage = int(sys.argv[3]), sys.argv[4]

    class KillAt:
        seen = 0
        def task(self, description, total):
            self.description = description
        def advance(self, n=1, **fields):
            if self.description.startswith(stage):
                self.seen += n
                if self.seen >= kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

    with ws.session() as s:
        ingest(ws, s, [sys.argv[2]], workers=1, chunk=10, progress=KillAt())
    """
)


@pytest.mark.backends
@pytest.mark.parametrize("stage", ["reading", "registering"])
def test_kill_9_then_ingest_again_completes_consistently(workspace: Workspace, tmp_path: Path, stage: str) -> None:
    src = _folder(tmp_path / "src", 45)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, str(workspace.root), str(src), "25", stage],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    with workspace.session() as s:
        partial = s.scalar(select(func.count()).select_from(Image))
    assert partial == (30 if stage == "registering" else 0)  # killed after the third chunk of 10
    with workspace.session() as s:
        ingest(workspace, s, [src], workers=1)
    with workspace.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 45
        assert s.scalar(select(func.count(func.distinct(Image.sha256)))) == 45
        report = doctor(workspace, s)
    assert report.missing == [] and report.corrupt == [] and report.orphans == []


@pytest.mark.backends
def test_two_ingests_at_once_both_finish(workspace: Workspace, tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", 120)
    b = _folder(tmp_path / "b", 120, start=60)  # 60 shared with a
    env = {**os.environ, "DATAENG_WORKSPACE": str(workspace.root)}
    cmd = [sys.executable, "-m", "dataeng", "ingest", "--workers", "1", "--json"]
    procs = [subprocess.Popen([*cmd, str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for p in (a, b)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
        assert b"locked" not in err
    with workspace.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 180
        assert [b.status for b in s.scalars(select(Batch))] == ["finished", "finished"]


def test_special_files_are_refused_before_they_are_opened(workspace: Workspace, tmp_path: Path) -> None:
    src = tmp_path / "src"
    random_image(src / "ok.png", seed=1)
    os.mkfifo(src / "pipe.jpg")  # reading it would block forever
    (src / "zero.jpg").symlink_to("/dev/zero")  # reading it would never end
    with workspace.session() as s:
        summary = ingest(workspace, s, [src], workers=1)
        problems = {Path(p.path).name: p for p in s.scalars(select(Problem))}
    assert summary.added == 1 and summary.refused == 2
    assert {n: p.kind for n, p in problems.items()} == {"pipe.jpg": "not-a-file", "zero.jpg": "not-a-file"}
    assert all("not a regular file" in p.message for p in problems.values())


@pytest.mark.backends
def test_a_strict_ingest_that_stops_leaves_its_batch_failed_and_doctor_reports_running_ones(
        workspace: Workspace, tmp_path: Path) -> None:
    from dataeng.errors import InputError

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.jpg").write_bytes(b"not an image")
    with workspace.session() as s, pytest.raises(InputError):
        ingest(workspace, s, [tmp_path / "src"], workers=1, strict=True)
    with workspace.session() as s:
        assert [b.status for b in s.scalars(select(Batch))] == ["failed"]
        s.add(Batch(kind="ingest", args={}))  # what a kill -9 leaves
    with workspace.session() as s:
        report = doctor(workspace, s, verify_hashes=False)
        assert len(report.interrupted) == 1 and "batch 2 (ingest)" in report.interrupted[0] and not report.healthy
        fixed = doctor(workspace, s, verify_hashes=False, fix=True)
        assert fixed.closed == fixed.interrupted and fixed.healthy
        assert [b.status for b in s.scalars(select(Batch).order_by(Batch.id))] == ["failed", "failed"]


_POOL_THEN_SLEEP = textwrap.dedent("""
    import os, sys, time
    from dataeng.engine.ingest.pool import process_pool

    pool = process_pool(2)
    pids = set(pool.submit(os.getpid).result() for _ in range(8))
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_pool_workers_die_when_the_ingest_is_killed() -> None:
    import signal
    import time

    main = subprocess.Popen([sys.executable, "-c", _POOL_THEN_SLEEP], stdout=subprocess.PIPE, text=True)
    assert main.stdout is not None
    workers = [int(p) for p in main.stdout.readline().split()]
    assert workers and all(_alive(p) for p in workers)
    main.send_signal(signal.SIGKILL)
    main.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
