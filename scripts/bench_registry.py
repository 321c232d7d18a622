"""Benchmark the registry backends: SQLite and PostgreSQL side by side.

For each backend it measures

1. ``dataeng status --json`` and ``dataeng report --no-gallery`` (subprocesses, median of
   ``--repeat``) on a registry of ``--images`` images (default 1,000,000) with one label each
   (30 % human, 60 % accepted pseudo-labels, 10 % queued), bulk-loaded (sqlite3 executemany /
   PostgreSQL COPY) and analysed;
2. ``dataeng ingest`` of ``--ingest`` new 64x64 PNG images (default 2,000) into an empty workspace;
3. the registry cost of claiming alone: ``--claims`` images (default 20,000), every candidate of a
   teacher queued, then claimed 16 at a time and released (no model), in milliseconds per chunk;
4. pseudo-labelling throughput of ``--pseudo`` 96x96 images (default 512, ~360 in train) with a
   tiny constant teacher under ``torchrun --nproc-per-node 1`` and ``2`` on the CPU, each worker
   held to one torch thread (``OMP_NUM_THREADS=1``) and one decode worker (``--num-workers 1``),
   claiming 16 images at a time. The figure is images / (slowest worker's labelling seconds) from
   the runs' metrics, so process start-up (importing torch) is left out; the wall time of the
   whole torchrun is printed too.

PostgreSQL comes from ``--pg-url`` (a server you run) or, by default, a throwaway server started
like the tests' (tests/pg.py: initdb + pg_ctl, as the ``postgres`` user under root).

Usage::

    .venv/bin/python scripts/bench_registry.py [--images 1000000] [--ingest 2000] [--pseudo 256]
        [--backends sqlite,postgresql] [--dir /tmp/bench-registry] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from dataeng.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/pg.py: the throwaway server
ENCODER = "tu-mobilenetv3_small_050"


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite DateTime text


# ---------------------------------------------------------------- a big registry, bulk-loaded
def _rows(n: int) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    splits = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.7, 0.2, 0.1])]
    kind = rng.random(n)
    conf = rng.random(n)
    for i in range(1, n + 1):
        sha = f"{i:064x}"
        when = t0 + timedelta(seconds=i)
        split = str(splits[i - 1])
        image = (i, sha, sha, i, i & 0x3FFFFF, (i >> 3) & 0x1FFFFF, (i >> 5) & 0x1FFFFF, 256, 256,
                 f"store/images/{sha[:2]}/{sha}.png", f"/data/{i}.png", None, split, 1, when)
        k = kind[i - 1]
        if split != "train" or k < 0.3:
            label = (i, i, "human", "labelme", f"store/masks/{i // 1000:04d}/{i}.png", "active", None, None, None,
                     None, 1, when)
        else:
            status = "active" if k < 0.9 else "needs_review"
            label = (i, i, "pseudo", "teacher", f"store/masks/{i // 1000:04d}/{i}.png", status, 1, 1,
                     float(conf[i - 1]), float(conf[i - 1]), None, when)
        yield image, label


IMAGE_COLS = ("id, sha256, source_sha256, phash, ph0, ph1, ph2, width, height, store_path, original_path, group_id, "
              "split, batch_id, created_at")
LABEL_COLS = ("id, image_id, origin, source, mask_path, status, run_id, round, mean_confidence, confident_fraction, "
              "batch_id, created_at")


def fill(ws: Workspace, n: int) -> float:
    """Load ``n`` images and their labels, one batch and one teacher run; returns seconds."""
    started = time.perf_counter()
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    if ws.backend == "sqlite":
        con = sqlite3.connect(ws.root / "registry.db")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("INSERT INTO batches (id, kind, args, status, started_at) "
                    "VALUES (1, 'ingest', '{}', 'finished', ?)", (_ts(t0),))
        con.execute("INSERT INTO runs (id, kind, round, config, status, started_at) "
                    "VALUES (1, 'train', 0, '{}', 'finished', ?)", (_ts(t0),))
        chunk: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []
        for pair in _rows(n):
            chunk.append(pair)
            if len(chunk) == 100_000:
                _sqlite_chunk(con, chunk)
                chunk = []
        _sqlite_chunk(con, chunk)
        con.commit()
        con.execute("ANALYZE")
        con.close()
    else:
        import psycopg

        url = ws.registry_url
        with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as con:
            con.execute("INSERT INTO batches (id, kind, args, status, started_at) "
                        "VALUES (1, 'ingest', '{}', 'finished', %s)", (t0,))
            con.execute("INSERT INTO runs (id, kind, round, config, status, started_at) "
                        "VALUES (1, 'train', 0, '{}', 'finished', %s)", (t0,))
            with con.cursor() as cur:
                with cur.copy(f"COPY images ({IMAGE_COLS}) FROM STDIN") as copy:
                    for image, _ in _rows(n):
                        copy.write_row(image)
                with cur.copy(f"COPY labels ({LABEL_COLS}) FROM STDIN") as copy:
                    for _, label in _rows(n):
                        copy.write_row(label)
                for table in ("images", "labels", "batches", "runs"):
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT MAX(id) FROM {table}))")
            con.commit()
            con.autocommit = True
            con.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def _sqlite_chunk(con: sqlite3.Connection, chunk: list[tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
    con.executemany(f"INSERT INTO images ({IMAGE_COLS}) VALUES ({','.join('?' * 15)})",
                    [(*im[:-1], _ts(im[-1])) for im, _ in chunk])
    con.executemany(f"INSERT INTO labels ({LABEL_COLS}) VALUES ({','.join('?' * 12)})",
                    [(*lab[:-1], _ts(lab[-1])) for _, lab in chunk])


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, str]:
    """Median wall seconds of ``cmd`` over ``repeat`` runs (it must succeed), and its last stdout."""
    times, out = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        out = proc.stdout
    return statistics.median(times), out


# ---------------------------------------------------------------- ingest and pseudolabel
def make_images(folder: Path, n: int, side: int, seed: int) -> Path:
    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        arr = np.kron(blocks, np.ones((side // 8, side // 8, 1), dtype=np.uint8))
        PILImage.fromarray(arr).save(folder / f"{i:05d}.png")
    return folder


def save_teacher(path: Path) -> Path:
    """A tiny model predicting 'person' with confidence 0.9997 everywhere (the tests' constant teacher)."""
    import torch

    from dataeng.models.checkpoint import save_checkpoint
    from dataeng.models.factory import build_model

    torch.manual_seed(0)
    model = build_model("unet", ENCODER, 1, encoder_depth=3)
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(8.0)
    save_checkpoint(path, model, {"arch": "unet", "encoder": ENCODER, "encoder_depth": 3, "image_size": [96, 96],
                                  "classes": ["person"], "epoch": 1})
    return path


def pseudolabel_rate(ws: Workspace, images: Path, world: int, env: dict[str, str], claim_size: int = 16
                     ) -> dict[str, float]:
    from sqlalchemy import select

    from dataeng.db.schema import Run

    subprocess.run([sys.executable, "-m", "dataeng", "ingest", str(images), "-w", str(ws.root), "--workers", "2",
                    "--json"], check=True, capture_output=True, env=env)
    with ws.session() as s:
        run = Run(kind="train", status="finished", round=0, config={"arch": "unet", "encoder": ENCODER},
                  metrics={"val": {"miou": 0.9}}, finished_at=datetime.now(UTC))
        s.add(run)
        s.flush()
        rel = f"runs/{run.id}/checkpoint.pt"
        save_teacher(ws.root / rel)
        run.checkpoint_path = rel
        teacher = run.id
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(world), "-m", "dataeng", "pseudolabel", "-w",
           str(ws.root), "--teacher", str(teacher), "--device", "cpu", "--num-workers", "1", "--batch-size", "8",
           "--claim-size", str(claim_size), "--json"]
    started, cpu_before = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"pseudolabel x{world} failed: {proc.stderr[-3000:]}")
    with ws.session() as s:
        runs = s.scalars(select(Run).where(Run.kind == "pseudolabel", Run.teacher_run_id == teacher)).all()
    labelled = sum(r.metrics["candidates"] for r in runs)
    slowest = max(r.metrics["seconds"] for r in runs)
    return {"workers": world, "images": labelled, "seconds": slowest, "images_per_s": labelled / slowest,
            "wall_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall,
            "per_worker": [r.metrics["candidates"] for r in runs]}


def _children_cpu_s() -> float:
    """CPU seconds of every finished child process and its waited-for descendants (the torchrun, its ranks,
    their decode workers): divided by the wall time, how many cores a run kept busy."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def claim_overhead(ws: Workspace, chunk: int = 16) -> dict[str, float]:
    """Registry cost of claiming alone: queue every candidate of a new teacher, then claim ``chunk`` images
    and release them (the two transactions a worker spends per chunk, without the model) until empty."""
    from dataeng.db.schema import Run
    from dataeng.engine.learn import claims

    with ws.session() as s:
        teacher = Run(kind="train", status="finished")  # a new teacher: the pseudo-labelled images are candidates
        run = Run(kind="pseudolabel", status="running")
        s.add_all([teacher, run])
        s.flush()
        teacher_id, run_id = teacher.id, run.id
    session = ws.new_session()
    try:
        started = time.perf_counter()
        queued = claims.enqueue(session, teacher_id)
        enqueue_s = time.perf_counter() - started
        started, chunks = time.perf_counter(), 0
        while ids := claims.claim(session, teacher_id, run_id, chunk, lease_s=60):
            claims.release(session, teacher_id, ids)
            session.commit()
            chunks += 1
        loop_s = time.perf_counter() - started
    finally:
        session.close()
    return {"queued": queued, "enqueue_s": enqueue_s, "chunks": chunks, "ms_per_chunk": 1000 * loop_s / chunks,
            "ms_per_image": 1000 * loop_s / queued}


# ---------------------------------------------------------------- driver
def workspace(base: Path, name: str, backend: str, server: Any) -> Workspace:
    root = base / f"{backend}-{name}"
    shutil.rmtree(root, ignore_errors=True)
    if backend == "sqlite":
        return Workspace.init(root)
    db = server.new_database(template=None)
    return Workspace.init(root, registry=server.url(db, password=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=2_000)
    parser.add_argument("--pseudo", type=int, default=512)
    parser.add_argument("--claim-size", type=int, default=16, help="images a pseudolabel worker claims at a time")
    parser.add_argument("--claims", type=int, default=20_000, help="registry size for the claim-overhead measure")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/bench-registry"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    backends = args.backends.split(",")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, dict[str, Any]] = {}
    stack = contextlib.ExitStack()
    server = None
    if "postgresql" in backends:
        from tests.pg import PG_PASSWORD, throwaway_server

        server = stack.enter_context(throwaway_server("-c shared_buffers=256MB -c work_mem=32MB"))
        os.environ["PGPASSWORD"] = env["PGPASSWORD"] = PG_PASSWORD
    ingest_src = make_images(args.dir / "ingest-src", args.ingest, 64, seed=1)
    pseudo_src = make_images(args.dir / "pseudo-src", args.pseudo, 96, seed=2)
    with stack:
        for backend in backends:
            row: dict[str, Any] = {}
            if args.images:
                ws = workspace(args.dir, "big", backend, server)
                row["fill_s"] = fill(ws, args.images)
                base = [sys.executable, "-m", "dataeng"]
                row["status_s"], _ = timed([*base, "status", "-w", str(ws.root), "--json"], env, args.repeat)
                row["report_s"], _ = timed([*base, "report", "-w", str(ws.root), "--no-gallery", "--json"], env,
                                           args.repeat)
                print(f"{backend}: {args.images:,} images: status {row['status_s']:.2f} s, "
                      f"report {row['report_s']:.2f} s (load {row['fill_s']:.0f} s)", flush=True)
            if args.ingest:
                ws = workspace(args.dir, "ingest", backend, server)
                row["ingest_s"], out = timed([sys.executable, "-m", "dataeng", "ingest", str(ingest_src), "-w",
                                              str(ws.root), "--workers", "2", "--json"], env, 1)
                row["ingest_added"] = json.loads(out)["added"]
                print(f"{backend}: ingest of {args.ingest:,} images: {row['ingest_s']:.1f} s "
                      f"({args.ingest / row['ingest_s']:.0f} img/s)", flush=True)
            if args.claims:
                ws = workspace(args.dir, "claims", backend, server)
                fill(ws, args.claims)
                row["claims"] = claim_overhead(ws)
                c = row["claims"]
                print(f"{backend}: claiming {c['queued']:,} queued images 16 at a time: {c['ms_per_chunk']:.2f} ms "
                      f"per chunk ({c['ms_per_image']:.3f} ms per image; queueing {c['enqueue_s']:.2f} s)", flush=True)
            if args.pseudo:
                row["pseudolabel"] = []
                for world in (1, 2):
                    ws = workspace(args.dir, f"pseudo{world}", backend, server)
                    rate = pseudolabel_rate(ws, pseudo_src, world, env, args.claim_size)
                    row["pseudolabel"].append(rate)
                    print(f"{backend}: pseudolabel x{world}: {rate['images_per_s']:.1f} img/s "
                          f"({rate['images']} images, per worker {rate['per_worker']}, wall {rate['wall_s']:.1f} s, "
                          f"{rate['cores_busy']:.2f} cores busy over the whole torchrun)",
                          flush=True)
                one, two = (r["images_per_s"] for r in row["pseudolabel"])
                row["pseudolabel_ratio"] = two / one
                print(f"{backend}: 2 workers / 1 worker = {two / one:.2f}x", flush=True)
            results[backend] = row
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(),
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
