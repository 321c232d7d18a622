"""ONNX export: parity with PyTorch on several sizes, metadata, int8, refusing wrong models."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch

from dataeng.engine.serve.model_export import compare_masks
from dataeng.errors import ModelError
from dataeng.models.factory import build_model
from dataeng.models.inference import IMAGENET_MEAN, IMAGENET_STD, TorchPredictor
from dataeng.models.onnx import (
    PARITY_ATOL,
    OnnxMeta,
    OnnxPredictor,
    export_onnx,
    logits_to_probabilities,
    meta_from_checkpoint,
    quantize_int8,
)

CKPT_META = {"arch": "unet", "encoder": "tu-mobilenetv3_small_050", "encoder_depth": 3, "classes": ["person"],
             "image_size": [64, 64], "epoch": 1}


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_depth=3).eval()


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    meta = meta_from_checkpoint(CKPT_META, True, IMAGENET_MEAN, IMAGENET_STD, source="test")
    return export_onnx(tiny_model, meta, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_export_is_valid_and_within_tolerance_on_several_sizes(exported):
    onnx.checker.check_model(onnx.load(str(exported.path)), full_check=True)
    assert exported.parity_max_diff <= PARITY_ATOL
    sizes = {(h, w) for _, h, w in exported.parity_sizes}
    assert len(sizes) >= 3 and any(h != w for h, w in sizes)
    assert not list(exported.path.parent.glob(".*tmp*"))


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (64, 160)])
def test_onnx_probabilities_match_pytorch(exported, tiny_model, size):
    onnx_pred = OnnxPredictor.load(exported.path, ["person"])
    torch_pred = TorchPredictor(tiny_model, ["person"], (64, 64), torch.device("cpu"))
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, *size), dtype=np.uint8)
    got, want = onnx_pred.probabilities(batch), torch_pred.probabilities(batch)
    assert got.shape == want.shape == (2, 2, *size)
    np.testing.assert_allclose(got, want, atol=PARITY_ATOL)


def test_metadata_round_trip(exported):
    proto = onnx.load(str(exported.path))
    props = {p.key: p.value for p in proto.metadata_props}
    for key in ("classes", "image_size", "arch", "encoder", "normalization", "activation"):
        assert key in props
    meta = OnnxMeta.from_props(props, exported.path)
    assert meta == exported.meta
    assert meta.classes == ("person",) and meta.image_size == (64, 64) and meta.dynamic


def test_wrong_classes_are_refused(exported):
    with pytest.raises(ModelError, match=r"classes \['person'\], expected \['cat', 'dog'\]"):
        OnnxPredictor.load(exported.path, ["cat", "dog"])


def test_onnx_without_dataeng_metadata_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported.path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelError, match="not a dataeng segmentation model"):
        OnnxPredictor.load(tmp_path / "bare.onnx")


def test_output_channels_must_fit_the_classes(exported, tmp_path):
    # Metadata claiming three classes on a one-channel graph: not the model it says it is.
    proto = onnx.load(str(exported.path))
    from dataeng.models.onnx import set_metadata

    set_metadata(proto, dataclasses.replace(exported.meta, classes=("a", "b", "c"), activation="softmax"))
    onnx.save(proto, str(tmp_path / "liar.onnx"))
    with pytest.raises(ModelError, match="expected one output of shape"):
        OnnxPredictor.load(tmp_path / "liar.onnx")


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07garbage"])
def test_not_onnx_is_refused(tmp_path, content):
    (tmp_path / "x.onnx").write_bytes(content)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxPredictor.load(tmp_path / "x.onnx")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelError, match="ONNX file not found"):
        OnnxPredictor.load(tmp_path / "nope.onnx")


def test_int8_runs_and_its_iou_loss_is_reported(exported, tmp_path):
    meta = quantize_int8(exported.path, tmp_path / "int8.onnx", exported.meta)
    int8 = OnnxPredictor.load(tmp_path / "int8.onnx", ["person"])
    assert meta.precision == "int8" and int8.meta.precision == "int8"
    assert (tmp_path / "int8.onnx").stat().st_size < exported.path.stat().st_size
    report = compare_masks(OnnxPredictor.load(exported.path), int8, n=4)
    assert report.images == 4
    assert 0.0 <= report.min_iou <= report.mean_iou <= 1.0
    assert report.iou_loss == pytest.approx(1.0 - report.mean_iou)


def test_logits_to_probabilities_sum_to_one():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        probs = logits_to_probabilities(rng.normal(size=(2, channels, 4, 5)).astype(np.float32))
        assert probs.shape == (2, max(2, channels), 4, 5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_onnxruntime_telemetry_is_switched_off_before_a_session(exported, monkeypatch):
    import onnxruntime

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append("off"))
    OnnxPredictor.load(exported.path, ["person"])
    assert calls == ["off"]
