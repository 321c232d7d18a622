"""Benchmark: ingest throughput vs. the validation floor, and ingest/status at registry scale.

Usage:
    .venv/bin/python scripts/bench_ingest.py [--n 2000] [--size 512] [--scale 10000,1000000] [--out bench_out]

1. Throughput: `ingest()` on N synthetic JPEGs (default workers: one per core) vs. the
   floor measured in the same run: one process that reads, sha256-hashes and fully
   decodes each of the same files. Prints images/s of both and the ratio.
2. Scale: for each registry size (bulk-inserted rows), the wall time of `dataeng
   status` (a fresh process, as a user runs it) and of ingesting 1,000 new images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _make_one(args: tuple[str, int, int]) -> None:
    path, seed, size = args
    from dataeng.engine.synth import render

    rng = np.random.default_rng([seed, 7])
    image, _ = render(rng, size, size)
    Image.fromarray(image).save(path, quality=90)


def make_images(folder: Path, n: int, size: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench_{i:06d}.jpg" for i in range(start, start + n)]
    todo = [(str(p), i, size) for p, i in zip(paths, range(start, start + n), strict=True) if not p.exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_one, todo, chunksize=16))
    return paths


def floor(paths: list[Path]) -> float:
    """Seconds for the least work that validates the images: read, sha256, full decode."""
    t = time.perf_counter()
    for p in paths:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(p) as im:
            im.load()
    return time.perf_counter() - t


def run_ingest(ws_root: Path, inputs: list[Path]) -> tuple[float, dict]:
    from dataeng.engine.ingest.ingest import ingest
    from dataeng.workspace import Workspace

    ws = Workspace.open(ws_root)
    t = time.perf_counter()
    with ws.session() as s:
        summary = ingest(ws, s, inputs)
    return time.perf_counter() - t, summary.to_dict()


def bulk_rows(ws_root: Path, n: int) -> float:
    """Insert n synthetic image rows (random hashes) with plain SQL, as an old registry would hold."""
    import sqlite3

    from dataeng.engine.ingest.dedup import signed_chunks
    from dataeng.engine.ingest.split import split_for

    rng = random.Random(n)
    con = sqlite3.connect(ws_root / "registry.db")
    con.execute("PRAGMA journal_mode=WAL")
    cur = con.execute("SELECT COALESCE(MAX(id), 0) FROM images")
    base = cur.fetchone()[0]
    t = time.perf_counter()
    batch = []
    for i in range(n):
        sha = hashlib.sha256(f"bulk-{n}-{i}".encode()).hexdigest()
        h = signed_chunks(rng.getrandbits(64))
        batch.append((base + i + 1, sha, sha, h["phash"], h["ph0"], h["ph1"], h["ph2"], 512, 512,
                      f"store/images/{sha[:2]}/{sha}.jpg", f"/bulk/{i}.jpg", base + i + 1,
                      split_for(sha, (0.7, 0.2, 0.1)), "2026-01-01 00:00:00"))
        if len(batch) == 50_000:
            con.executemany("INSERT INTO images (id, sha256, source_sha256, phash, ph0, ph1, ph2, width, height, "
                            "store_path, original_path, group_id, split, created_at) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
            batch.clear()
    if batch:
        con.executemany("INSERT INTO images (id, sha256, source_sha256, phash, ph0, ph1, ph2, width, height, "
                        "store_path, original_path, group_id, split, created_at) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", batch)
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return time.perf_counter() - t


def status_wall(ws_root: Path) -> float:
    exe = Path(sys.executable).with_name("dataeng")
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([str(exe), "status", "--json", "--workspace", str(ws_root)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scale", default="10000,1000000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "ingest")
    args = parser.parse_args()
    from dataeng.workspace import Workspace

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}  images: {args.n} x {args.size}px JPEG")
    paths = make_images(out / "images", args.n, args.size)
    floor(paths)  # warm the page cache for both measurements
    t_floor = floor(paths)
    ws_root = out / "ws_throughput"
    shutil.rmtree(ws_root, ignore_errors=True)
    Workspace.init(ws_root)
    t_ingest, summary = run_ingest(ws_root, [out / "images"])
    assert summary["added"] + summary["near_duplicates"] >= 0
    print(f"floor (read + sha256 + decode, 1 process): {args.n / t_floor:8.1f} img/s  ({t_floor:.2f} s)")
    print(f"dataeng ingest (pool, registry, store)   : {args.n / t_ingest:8.1f} img/s  ({t_ingest:.2f} s)"
          f"  added {summary['added']}, near-dup {summary['near_duplicates']}")
    print(f"ratio ingest / floor: {t_floor / t_ingest:.2f}x")

    make_images(out / "new", 1000, args.size, start=10_000_000)
    for size in [int(s) for s in args.scale.split(",") if s]:
        root = out / f"ws_scale_{size}"
        shutil.rmtree(root, ignore_errors=True)
        Workspace.init(root)
        t_bulk = bulk_rows(root, size)
        t_status = status_wall(root)
        t_new, s = run_ingest(root, [out / "new"])
        print(f"registry {size:>9,} rows (bulk insert {t_bulk:.1f} s): status {t_status:.3f} s wall;"
              f" ingest 1,000 more {t_new:.2f} s ({s['added']} added)")


if __name__ == "__main__":
    main()
