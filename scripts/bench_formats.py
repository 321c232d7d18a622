"""Benchmark: Labelme JSON -> registered PNG masks, vs. labelme's own rasteriser + PIL.

Usage:
    .venv/bin/python scripts/bench_formats.py [--n 1000] [--size 512] [--out bench_out/formats]

Both sides start from the same N synthetic 512x512 Labelme files (polygons traced from
the synthetic masks, holes included):
- baseline: one process, `json.load` + `labelme.utils.shapes_to_label` + PIL PNG save
  into a folder (no registry);
- dataeng: the label phase of `dataeng ingest` on a workspace whose images are already
  registered: read (format module), rasterise + PNG-encode (process pool), write the
  mask into the store and the label row into the registry, one transaction per chunk.
Prints files/s of both and the ratio (target >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def baseline(files: list[Path], out: Path) -> float:
    from labelme.utils import shapes_to_label

    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for f in files:
        data = json.loads(f.read_text())
        names = {"_background_": 0, "person": 1}
        cls, _ = shapes_to_label((data["imageHeight"], data["imageWidth"]), data["shapes"], names)
        Image.fromarray(cls.astype(np.uint8)).save(out / f"{f.stem}.png")
    return time.perf_counter() - t


def ours(folder: Path, ws_root: Path) -> tuple[float, int]:
    from dataeng.engine.ingest.annotations import LabelSummary, discover, read_all, register_labels
    from dataeng.engine.ingest.ingest import ingest
    from dataeng.workspace import Workspace

    shutil.rmtree(ws_root, ignore_errors=True)
    ws = Workspace.init(ws_root)
    with ws.session() as s:
        # the images the JSONs point at, registered up front (files, so no annotation is found): not timed
        images = ingest(ws, s, sorted((folder / "labelme").glob("*.jpg")))
    t = time.perf_counter()
    with ws.session() as s:
        summary = LabelSummary()
        sets = discover([folder / "labelme"])
        items, problems = read_all(sets, summary)
        register_labels(ws, s, images.batch_id, items, images.image_ids, summary)
    elapsed = time.perf_counter() - t
    assert not problems, problems[:3]
    return elapsed, summary.labels_added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "formats")
    args = parser.parse_args()
    from dataeng.engine.synth import generate

    data = args.out / "data"
    if not (data / "synth.json").exists() or json.loads((data / "synth.json").read_text())["n"] != args.n:
        shutil.rmtree(data, ignore_errors=True)
        generate(data, n=args.n, seed=0, size_range=(args.size, args.size))
    files = sorted((data / "labelme").glob("*.json"))
    t_base = baseline(files, args.out / "baseline_png")
    t_ours, added = ours(data, args.out / "ws")
    print(f"labelme shapes_to_label + PIL PNG, 1 process: {len(files) / t_base:8.1f} files/s ({t_base:.2f} s)")
    print(f"dataeng label phase (pool, store, registry):   {added / t_ours:8.1f} files/s ({t_ours:.2f} s)")
    print(f"ratio dataeng / baseline: {t_base / t_ours * added / len(files):.2f}x")


if __name__ == "__main__":
    main()
