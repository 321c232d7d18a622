"""A review export opened in Labelme's own window (offscreen Qt), ticked and saved by Labelme, imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.review.test_review import labels_of, manifest_items, queue_workspace, run_export, run_import


def test_labelme_opens_the_export_and_what_it_saves_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setenv("HOME", str(tmp_path))  # labelme keeps its config and cache there
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    qt = pytest.importorskip("PyQt5.QtWidgets")
    from PyQt5.QtCore import Qt

    try:
        from labelme.app import MainWindow
    except ImportError as e:  # pragma: no cover - labelme without its GUI dependencies
        pytest.skip(f"labelme GUI unavailable: {e}")
    app = qt.QApplication.instance() or qt.QApplication([])
    ws, made, ids = queue_workspace(tmp_path)
    out = tmp_path / "review"
    run_export(ws, out, limit=2)
    # What `labelme OUT --flags reviewed` builds.
    win = MainWindow(config_overrides={"flags": ["reviewed"]}, file_or_dir=str(out))
    first = manifest_items(out)[0]
    assert Path(win._image_path).name == first["image"]
    assert len(win._docks.label_list) == len(json.loads((out / first["file"]).read_text())["shapes"])
    flag = win._docks.flag_list.item(0)
    assert (flag.text(), flag.checkState()) == ("reviewed", Qt.Unchecked)
    flag.setCheckState(Qt.Checked)
    assert win.save_labels(str(out / first["file"]))
    win.close()
    app.processEvents()
    saved = json.loads((out / first["file"]).read_text())
    assert saved["flags"] == {"reviewed": True} and saved["version"] != "5.5.0"  # rewritten by labelme
    result = run_import(ws, out)
    assert (result.imported, result.unchanged, result.untouched, result.refused) == (1, 1, 1, 0)
    new = labels_of(ws, made[0].image_id)[-1]
    assert (new.source, new.parent_id, new.edit_iou) == ("review", ids[0], 1.0)
