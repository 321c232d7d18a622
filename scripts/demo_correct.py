"""A scripted annotator for the demo and the review benchmark.

Usage:
    .venv/bin/python scripts/demo_correct.py EXPORT_DIR TRUTH_MASKS_DIR [--classes person]

For each file of a Labelme review export (``dataeng review export ... --format labelme``),
replaces the pre-filled shapes with the synthetic ground truth (``dataeng synth`` writes
it to ``truth/masks/<original stem>.png``), written through dataeng's Labelme writer with
the ``reviewed`` flag ticked, as an annotator who fixed every mask would leave it. Files
whose truth mask is missing are left untouched (they stay in the review queue).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataeng.annotation.formats import labelme
from dataeng.annotation.masks import read_mask
from dataeng.annotation.types import ExportRecord, LabelMap
from dataeng.engine.review.export import REVIEWED_FLAG
from dataeng.engine.review.manifest import MANIFEST_NAME, read_manifest


def correct(export_dir: Path, truth_masks: Path, classes: list[str] | None = None) -> int:
    """Overwrite each exported Labelme file with its truth mask, reviewed flag ticked.

    Returns:
        The number of files corrected.
    """
    manifest, problems = read_manifest(export_dir / MANIFEST_NAME)
    if problems:
        raise problems[0]
    label_map = LabelMap(classes or ["person"])
    done = 0
    for item in manifest.items:
        truth_file = truth_masks / f"{Path(item.original_name).stem}.png"
        if not truth_file.is_file():
            continue
        truth = read_mask(truth_file)
        record = ExportRecord(image_name=item.image, width=truth.shape[1], height=truth.shape[0], mask=truth,
                              meta={"image_sha256": item.image_sha256, "corrected_by": "scripts/demo_correct.py"})
        labelme.write(export_dir, [record], label_map, flags={REVIEWED_FLAG: True}, copy_images=False)
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("truth_masks", type=Path)
    parser.add_argument("--classes", default="person")
    args = parser.parse_args()
    n = correct(args.export_dir, args.truth_masks, args.classes.split(","))
    print(f"corrected {n} files in {args.export_dir} with the ground truth of {args.truth_masks}")


if __name__ == "__main__":
    main()
