"""External teacher adapters: spec parsing, the ONNX contract, MediaPipe, and their refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dataeng.errors import ModelError
from dataeng.models.teachers import (
    MEDIAPIPE_INSTALL,
    TEACHERS,
    OnnxContract,
    TeacherSpec,
    external_teacher,
    parse_spec,
)
from tests.onnx_models import CONTRACT, bright_and_dark, brightness_model


def test_parse_spec_names_kinds_and_leaves_runs_and_checkpoints_alone(tmp_path: Path) -> None:
    assert parse_spec("mediapipe") == TeacherSpec("mediapipe")
    assert parse_spec("MediaPipe") == TeacherSpec("mediapipe")
    assert parse_spec("onnx:/models/person.onnx") == TeacherSpec("onnx", Path("/models/person.onnx"))
    assert parse_spec("person.ONNX") == TeacherSpec("onnx", Path("person.ONNX"))
    assert parse_spec("12") is None
    assert parse_spec("runs/3/checkpoint.pt") is None
    assert parse_spec("best") is None
    assert set(TEACHERS) >= {"mediapipe", "onnx"}


@pytest.mark.parametrize(("layout", "output", "channels"), [("NCHW", "logits", 1), ("NCHW", "logits", 2),
                                                             ("NHWC", "probabilities", 1),
                                                             ("NHWC", "probabilities", 2)])
def test_onnx_contract_feeds_and_reads_the_model(tmp_path: Path, layout: str, output: str, channels: int) -> None:
    path = brightness_model(tmp_path / "m.onnx", layout=layout, output=output, channels_out=channels,
                            sidecar={**CONTRACT, "layout": layout, "output": output})
    teacher = external_teacher(TeacherSpec("onnx", path), ["person"])
    identity = teacher.identity()
    assert identity.kind == "onnx" and identity.version == "sidecar" and len(identity.sha256) == 64
    assert identity.image_size == (64, 64)
    probs = teacher.predictor().probabilities(bright_and_dark())
    assert probs.shape == (2, 2, 64, 64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[0, 1].min() > 0.99  # white: the person
    assert probs[1, 1].max() < 0.01  # black: background


def test_onnx_contract_scale_and_mean_are_applied(tmp_path: Path) -> None:
    # scale 1 (raw 0..255) with mean 127: a mid-grey image is far above 0.5 -> person.
    path = brightness_model(tmp_path / "m.onnx", sidecar={**CONTRACT, "scale": 1, "mean": [100, 100, 100]})
    grey = np.full((1, 3, 64, 64), 120, np.uint8)
    probs = external_teacher(TeacherSpec("onnx", path), ["person"]).predictor().probabilities(grey)
    assert probs[0, 1].min() > 0.99  # (120 - 100) * ... - 0.5 > 0; with scale 255 it would be background


def test_dataeng_export_needs_no_sidecar(tmp_path: Path) -> None:
    import torch

    from dataeng.models.factory import build_model
    from dataeng.models.onnx import OnnxMeta, export_onnx

    torch.manual_seed(0)
    model = build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_depth=3).eval()
    meta = OnnxMeta(("person",), (64, 64), "unet", "tu-mobilenetv3_small_050", 3, (0.485, 0.456, 0.406),
                    (0.229, 0.224, 0.225), "sigmoid", False)
    export_onnx(model, meta, tmp_path / "own.onnx")
    teacher = external_teacher(TeacherSpec("onnx", tmp_path / "own.onnx"), ["person"])
    assert teacher.identity().version == "dataeng-export"
    probs = teacher.predictor().probabilities(bright_and_dark())
    assert probs.shape == (2, 2, 64, 64) and np.isfinite(probs).all()
    with pytest.raises(ModelError, match="classes"):
        external_teacher(TeacherSpec("onnx", tmp_path / "own.onnx"), ["hair"])


def test_refusals_name_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as e:
        external_teacher(TeacherSpec("onnx", tmp_path / "missing.onnx"), ["person"])
    assert "missing.onnx" in str(e.value)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 40)
    with pytest.raises(ModelError, match="not a loadable ONNX model") as e:
        external_teacher(TeacherSpec("onnx", corrupt), ["person"])
    assert "corrupt.onnx" in str(e.value)
    bare = brightness_model(tmp_path / "bare.onnx")
    with pytest.raises(ModelError, match="no sidecar contract") as e:
        external_teacher(TeacherSpec("onnx", bare), ["person"])
    assert "bare.onnx.json" in str(e.value)
    flat = brightness_model(tmp_path / "flat.onnx", bad_rank=True, sidecar=CONTRACT)
    with pytest.raises(ModelError, match="not a segmentation model") as e:
        external_teacher(TeacherSpec("onnx", flat), ["person"]).predictor()
    assert "flat.onnx" in str(e.value) and "'B', 1" in str(e.value)
    bad = brightness_model(tmp_path / "bad.onnx", sidecar={**CONTRACT, "layout": "CHW"})
    with pytest.raises(ModelError, match="layout") as e:
        external_teacher(TeacherSpec("onnx", bad), ["person"])
    assert "CHW" in str(e.value) and "bad.onnx.json" in str(e.value)
    with pytest.raises(ModelError, match="one class"):
        external_teacher(TeacherSpec("onnx", bad), ["person", "hair"])


def test_contract_refuses_unknown_and_invalid_fields(tmp_path: Path) -> None:
    where = tmp_path / "x.json"
    OnnxContract.from_json(CONTRACT, where)
    for data, field in (({**CONTRACT, "colour": "RGB"}, "colour"), ({**CONTRACT, "input_size": [64]}, "input_size"),
                        ({**CONTRACT, "std": [1, 0, 1]}, "std"), ({**CONTRACT, "scale": True}, "scale"),
                        ({**CONTRACT, "person_channel": -1}, "person_channel")):
        with pytest.raises(ModelError) as e:
            OnnxContract.from_json(data, where)
        assert field in str(e.value)


def test_mediapipe_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(ModelError) as e:
        external_teacher(TeacherSpec("mediapipe"), ["person"])
    assert MEDIAPIPE_INSTALL in str(e.value)


def test_mediapipe_segments_real_portraits(shared_fixtures: Path) -> None:
    pytest.importorskip("mediapipe", reason="the dataeng[mediapipe] extra")
    import cv2

    teacher = external_teacher(TeacherSpec("mediapipe"), ["person"])
    identity = teacher.identity()
    assert identity.name == "mediapipe-selfie-segmentation" and identity.version.startswith("0.10")
    predictor = teacher.predictor()
    folder = shared_fixtures / "portrait" / "picsart_sample"
    ious = []
    for image_path in sorted((folder / "images").glob("*.jpg"))[:8]:
        rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(folder / "masks" / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE) > 127
        x = cv2.resize(rgb, predictor.image_size[::-1], interpolation=cv2.INTER_AREA).transpose(2, 0, 1)[None]
        person = cv2.resize(predictor.probabilities(np.ascontiguousarray(x))[0, 1], truth.shape[::-1]) >= 0.5
        ious.append((person & truth).sum() / max((person | truth).sum(), 1))
    assert np.mean(ious) > 0.85, ious
    with pytest.raises(ModelError, match="one class"):
        external_teacher(TeacherSpec("mediapipe"), ["person", "hair"])
