"""engine/predict.py and engine/compositing.py: outputs, bad inputs, kernels, run choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dataeng.annotation.masks import ALPHA_MAX
from dataeng.db.schema import Run
from dataeng.engine.learn.runs import RunRef, resolve_run
from dataeng.engine.serve.compositing import (
    composite,
    fit_background,
    foreground,
    guided_filter,
    refine_alpha,
)
from dataeng.engine.serve.predict import (
    MASK_FOREGROUND,
    PredictOptions,
    iter_inputs,
    load_image,
    load_predictor,
    parse_background,
    predict,
)
from dataeng.errors import DataEngError, InputError, ModelError
from dataeng.models.inference import resize_probabilities, tta_probabilities


class CentrePredictor:
    """Person = the centre half of the frame (probability 1), background elsewhere (0)."""

    classes = ("person",)
    image_size = (32, 32)
    description = "centre"

    def __init__(self) -> None:
        self.calls = 0

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        b, _, h, w = batch.shape
        person = np.zeros((b, h, w), np.float32)
        person[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1.0
        return np.stack([1.0 - person, person], axis=1)


def _image(path, size=(48, 40), seed=0):
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    _image(d / "wide.png", (96, 40), 1)
    _image(d / "tall.png", (30, 70), 2)
    _image(d / "sub" / "square.png", (64, 64), 3)
    return d


def test_every_output_kind_is_consistent(photos, tmp_path):
    outs = {}
    for kind in ("mask", "alpha", "cutout", "overlay"):
        opts = PredictOptions(output=kind, background="#00ff00" if kind == "overlay" else None, batch_size=2)
        result = predict(CentrePredictor(), [photos], tmp_path / kind, opts)
        assert result.written == 3 and not result.problems and not result.skipped
        outs[kind] = {p.relative_to(tmp_path / kind): _read(p) for p in sorted((tmp_path / kind).rglob("*.png"))}
    names = {"wide.png", "tall.png", "sub/square.png"}
    assert {str(p) for p in outs["mask"]} == names
    for rel, mask in outs["mask"].items():
        image = _read(photos / rel)
        alpha, cutout, overlay = outs["alpha"][rel], outs["cutout"][rel], outs["overlay"][rel]
        assert mask.shape == alpha.shape == image.shape[:2]
        assert set(np.unique(mask)) <= {0, MASK_FOREGROUND} and (mask == MASK_FOREGROUND).any() and (mask == 0).any()
        assert alpha.dtype == np.uint8 and alpha.min() == 0 and alpha.max() == ALPHA_MAX
        assert ((alpha >= 128) == (mask == MASK_FOREGROUND)).mean() > 0.99
        assert cutout.shape == (*image.shape[:2], 4)
        np.testing.assert_array_equal(cutout[..., 3], alpha)
        np.testing.assert_array_equal(cutout[..., :3], image)
        assert (overlay[alpha == 0] == [0, 255, 0]).all()
        np.testing.assert_array_equal(overlay[alpha == ALPHA_MAX], image[alpha == ALPHA_MAX])


def test_overlay_over_a_background_image(photos, tmp_path):
    _image(tmp_path / "beach.png", (50, 20), 9)  # wider and smaller than the photo: scaled to cover
    predict(CentrePredictor(), [photos / "wide.png"], tmp_path / "out",
            PredictOptions(output="overlay", background=str(tmp_path / "beach.png")))
    out, image = _read(tmp_path / "out" / "wide.png"), _read(photos / "wide.png")
    expected_bg = fit_background(load_image(tmp_path / "beach.png"), image.shape[:2])
    assert out.shape == image.shape == expected_bg.shape
    corner = np.s_[:4, :4]  # the centre predictor leaves the corners as pure background
    np.testing.assert_array_equal(out[corner], expected_bg[corner])


def test_non_images_are_skipped_and_listed(photos, tmp_path):
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (photos / ".hidden.png").write_bytes(b"")
    result = predict(CentrePredictor(), [photos], tmp_path / "out")
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in result.problems}
    assert result.written == 3
    assert set(reasons) == {"notes.txt", "broken.jpg"}
    assert "not an image file" in reasons["notes.txt"] and "'.txt'" in reasons["notes.txt"]
    assert "broken.jpg" not in {p.name for p in (tmp_path / "out").iterdir()}


def test_image_over_the_decompression_bomb_limit_is_refused(photos, tmp_path):
    result = predict(CentrePredictor(), [photos], tmp_path / "out", PredictOptions(max_pixels=64 * 64 - 1))
    refused = {p.path.rsplit("/", 1)[-1]: p.reason for p in result.problems}
    assert result.written == 2 and set(refused) == {"square.png"}
    assert "decompression-bomb limit" in refused["square.png"]
    with pytest.raises(InputError, match="too large"):
        load_image(photos / "sub" / "square.png", max_pixels=100)


def test_existing_outputs_are_not_overwritten(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "wide.png").write_bytes(b"keep me")
    result = predict(CentrePredictor(), [photos], out)
    assert result.written == 2 and [s.path.endswith("wide.png") for s in result.skipped] == [True]
    assert (out / "wide.png").read_bytes() == b"keep me"
    again = predict(CentrePredictor(), [photos], out, PredictOptions(overwrite=True))
    assert again.written == 3 and _read(out / "wide.png").shape == (40, 96)


def test_two_inputs_with_one_output_name_do_not_overwrite_each_other(tmp_path):
    _image(tmp_path / "in" / "a.png", seed=1)
    _image(tmp_path / "in" / "a.jpg", seed=2)
    result = predict(CentrePredictor(), [tmp_path / "in"], tmp_path / "out", PredictOptions(batch_size=1))
    assert result.written == 1 and len(result.problems) == 1
    assert "already wrote" in result.problems[0].reason


def test_exif_rotated_input_gives_an_upright_output(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)
    for kind in ("mask", "cutout"):
        predict(CentrePredictor(), [tmp_path / "rotated.jpg"], tmp_path / kind, PredictOptions(output=kind))
        assert _read(tmp_path / kind / "rotated.png").shape[:2] == (40, 20)


def test_output_folder_not_writable_is_a_clear_error(photos, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataEngError, match="output folder is not writable"):
        predict(CentrePredictor(), [photos], tmp_path / "file" / "out")


@pytest.mark.parametrize("options, match", [
    (PredictOptions(output="cutout", background="red"), "overlay only"),
    (PredictOptions(output="overlay", background="no-such-colour"), "colour name"),
    (PredictOptions(output="sketch"), "expected one of"),  # type: ignore[arg-type]
    (PredictOptions(batch_size=0), "at least 1"),
])
def test_bad_options_are_refused(photos, tmp_path, options, match):
    with pytest.raises(DataEngError, match=match):
        predict(CentrePredictor(), [photos], tmp_path / "out", options)


def test_missing_input_is_refused(tmp_path):
    with pytest.raises(DataEngError, match="input not found"):
        predict(CentrePredictor(), [tmp_path / "nope"], tmp_path / "out")


def test_inputs_are_walked_lazily_and_skip_the_output_folder(photos):
    walk = iter_inputs([photos], photos / "out")
    assert next(walk)[0].name == "tall.png"  # a generator: nothing else is listed yet
    _image(photos / "out" / "old.png")
    assert "old.png" not in {p.name for p, _, _ in iter_inputs([photos], photos / "out")}


def test_tta_averages_the_mirrored_prediction():
    class LeftPredictor(CentrePredictor):
        def probabilities(self, batch):
            p = np.zeros((batch.shape[0], 2, *batch.shape[2:]), np.float32)
            p[:, 1, :, : batch.shape[3] // 2] = 1.0
            p[:, 0] = 1.0 - p[:, 1]
            return p

    batch = np.zeros((1, 3, 4, 8), np.uint8)
    np.testing.assert_allclose(tta_probabilities(LeftPredictor(), batch, "flip")[0, 1], 0.5)


def test_resize_probabilities_matches_torch_bilinear():
    probs = np.random.default_rng(0).random((2, 8, 12), dtype=np.float32)
    for shape in ((20, 30), (5, 7)):
        want = F.interpolate(torch.from_numpy(probs)[None], size=shape, mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(resize_probabilities(probs, shape), want.numpy(), atol=1e-5)
        np.testing.assert_allclose(resize_probabilities(probs[1], shape), want[1].numpy(), atol=1e-5)


def test_guided_filter_and_refinement():
    guide = np.zeros((20, 20), np.float32)
    guide[:, 10:] = 1.0
    flat = np.full((20, 20), 0.3, np.float32)
    np.testing.assert_allclose(guided_filter(guide, flat, 3, 1e-3), 0.3, atol=1e-4)
    # A blurry alpha whose edge is at the image's edge becomes sharper there.
    soft = np.clip((np.arange(20, dtype=np.float32) - 5) / 10, 0, 1)[None].repeat(20, 0)
    image = (guide[..., None] * np.array([255, 255, 255])).astype(np.uint8)
    refined = refine_alpha(image, soft, scale=2.0)
    assert refined.min() >= 0 and refined.max() <= 1
    assert np.abs(refined[:, 10] - refined[:, 9]).mean() > np.abs(soft[:, 10] - soft[:, 9]).mean()
    far = np.zeros((40, 40), np.float32)  # all background: nothing near a boundary changes
    np.testing.assert_array_equal(refine_alpha(np.zeros((40, 40, 3), np.uint8), far, 2.0), far)


def test_composite_is_exact_at_both_ends():
    image = np.full((2, 2, 3), 200, np.uint8)
    bg = np.array([10, 20, 30], np.uint8)
    alpha = np.array([[0, ALPHA_MAX], [128, 0]], np.uint8)
    out = composite(image, alpha, fit_background(bg, (2, 2)))
    assert (out[0, 0] == bg).all() and (out[0, 1] == 200).all()
    assert out[1, 0, 0] == round(128 / ALPHA_MAX * 200 + (1 - 128 / ALPHA_MAX) * 10)
    assert foreground(np.stack([np.full((2, 2), 0.25)] * 2)).tolist() == [[0.75, 0.75], [0.75, 0.75]]


def test_background_parsing(tmp_path):
    assert parse_background("red").tolist() == [255, 0, 0]
    assert parse_background("#0a0b0c").tolist() == [10, 11, 12]
    _image(tmp_path / "bg.png", (10, 6))
    assert parse_background(str(tmp_path / "bg.png")).shape == (6, 10, 3)
    # A wide background covers a tall frame: scaled up, centre-cropped, never stretched.
    assert fit_background(np.zeros((10, 40, 3), np.uint8), (30, 20)).shape == (30, 20, 3)


def test_best_is_the_finished_run_with_the_highest_val_miou(workspace):
    with workspace.session() as session:
        for miou, status in ((0.5, "finished"), (0.9, "finished"), (0.95, "failed"), (0.7, "finished")):
            session.add(Run(kind="train", status=status, checkpoint_path="runs/x/checkpoint.pt",
                            metrics={"val": {"miou": miou}}))
        session.flush()
        assert resolve_run(workspace, session, RunRef.parse("best")).metrics["val"]["miou"] == 0.9
        assert resolve_run(workspace, session, RunRef.parse("1")).id == 1
        with pytest.raises(ModelError, match="run id or 'best'"):
            resolve_run(workspace, session, RunRef.parse("latest"))


def test_best_without_runs_and_source_rules(workspace, tmp_path):
    with workspace.session() as session, pytest.raises(ModelError, match="no finished train run"):
        resolve_run(workspace, session, RunRef.parse("best"))
    with pytest.raises(DataEngError, match="not both"):
        load_predictor(run=RunRef("best"), onnx=tmp_path / "m.onnx")
    with pytest.raises(DataEngError, match="needs a workspace"):
        load_predictor(run=RunRef("best"))
