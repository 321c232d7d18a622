"""Model factory: any smp architecture/encoder by name, weights offline or from a file."""

from __future__ import annotations

import re

import pytest
import torch

from dataeng.errors import ModelError
from dataeng.models.factory import architectures, build_model, load_encoder_weights, out_channels


def test_output_channels():
    assert out_channels(1) == 1 and out_channels(3) == 4
    model = build_model("fpn", "tu-mobilenetv3_small_050", 2, encoder_depth=5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_wrong_arch_lists_valid_names():
    with pytest.raises(ModelError, match=r"unknown architecture; valid: .*deeplabv3plus.*unet") as e:
        build_model("unett", "resnet18", 1)
    assert e.value.field == "arch" and e.value.value == "unett"


def test_wrong_encoder_lists_valid_names():
    with pytest.raises(ModelError, match=r"unknown encoder; valid: .*resnet18.*tu-<any timm model>"):
        build_model("unet", "resnet1888", 1)
    with pytest.raises(ModelError, match="unknown timm model"):
        build_model("unet", "tu-not_a_timm_model", 1)


def test_imagenet_offline_names_local_alternative(monkeypatch):
    import segmentation_models_pytorch as smp

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve huggingface.co")  # what hf_hub raises offline (an OSError)

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(ModelError, match=r"cannot download imagenet weights.*--encoder-weights PATH"):
        build_model("unet", "resnet18", 1, encoder_weights="imagenet")


def test_local_encoder_weights(tmp_path):
    torch.manual_seed(1)
    donor = build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_depth=3)
    path = tmp_path / "enc.pt"
    torch.save(donor.encoder.state_dict(), path)
    model = build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_weights=str(path), encoder_depth=3)
    for k, v in donor.encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k])
    with pytest.raises(ModelError, match="not found"):
        build_model("unet", "resnet18", 1, encoder_weights=str(tmp_path / "nope.pt"))
    other = build_model("unet", "resnet18", 1, encoder_depth=3)
    with pytest.raises(ModelError, match="do not fit encoder"):
        load_encoder_weights(other, path)



class _Anything:
    """An object no weights_only load may build: a pickle of it must be refused, never run."""


@pytest.mark.parametrize(("name", "content", "match"), [
    ("evil.pt", None, r"cannot read encoder weights \(UnpicklingError\)"),
    ("broken.safetensors", b"garbage" * 10, r"cannot read encoder weights \(SafetensorError\)"),
    ("truncated.pt", b"PK\x03\x04", "cannot read encoder weights"),
])
def test_unreadable_encoder_weights_are_a_model_error(tmp_path, name, content, match):
    import pickle

    path = tmp_path / name
    path.write_bytes(pickle.dumps({"encoder.x": _Anything()}) if content is None else content)
    model = build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_depth=3)
    with pytest.raises(ModelError, match=match) as e:
        load_encoder_weights(model, path)
    assert e.value.path == str(path) and e.value.field == "encoder_weights"


# Every architecture/depth with the cheapest encoder the other tests use. smp itself
# refuses dpt at depths 3 and 5 for this encoder (its feature strides do not fit);
# fpn (fixed 4x upsampling) and pspnet (fixed 8x) only keep the input size at one depth
# or two. Architectures smp adds later may go either way, but must not build wrong.
TINY_ENCODER = "tu-mobilenetv3_small_050"
REFUSED = {("dpt", 3): "arch/encoder", ("dpt", 5): "arch/encoder", ("fpn", 3): "arch/encoder_depth",
           ("fpn", 4): "arch/encoder_depth", ("pspnet", 4): "arch/encoder_depth", ("pspnet", 5): "arch/encoder_depth"}
KNOWN = {"deeplabv3", "deeplabv3plus", "dpt", "fpn", "linknet", "manet", "pan", "pspnet", "segformer", "unet",
         "unetplusplus", "upernet"}


@pytest.mark.filterwarnings("ignore:Encoder does not have prefix tokens")  # smp dpt on a CNN encoder
@pytest.mark.parametrize("depth", [3, 4, 5])
@pytest.mark.parametrize("arch", architectures())
def test_every_arch_and_depth_keeps_input_size_or_is_refused(arch, depth):
    try:
        model = build_model(arch, TINY_ENCODER, 1, encoder_depth=depth)
    except ModelError as e:
        assert arch in str(e)
        if e.field == "arch/encoder_depth":
            assert e.value == f"{arch}/{depth}" and f"encoder_depth {depth}" in str(e)
        assert arch not in KNOWN or REFUSED.get((arch, depth)) == e.field, str(e)
        return
    assert (arch, depth) not in REFUSED
    assert model.training and all(m.training for m in model.modules())  # the check's eval() is undone
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 256)).shape == (1, 1, 128, 256)


@pytest.mark.parametrize(("arch", "depth", "got"), [("fpn", 3, "(1, 1, 512, 512)"), ("pspnet", 5, "(1, 1, 32, 32)")])
def test_wrong_output_size_is_refused(arch, depth, got):
    with pytest.raises(ModelError, match=rf"{arch} at encoder_depth {depth} outputs {re.escape(got)} for a "
                                         rf"\(1, 3, 128, 128\) input, expected \(1, 1, 128, 128\)") as e:
        build_model(arch, "resnet18", 1, encoder_depth=depth)
    assert e.value.field == "arch/encoder_depth" and e.value.value == f"{arch}/{depth}"


def test_failing_forward_is_refused(monkeypatch):
    import segmentation_models_pytorch as smp

    def boom(self, x):
        raise RuntimeError("Given input size: (1x1x1). Calculated output size: (1x0x0). Output size is too small")

    monkeypatch.setattr(smp.PAN, "forward", boom)
    with pytest.raises(ModelError, match=r"pan at encoder_depth 4 fails on a 128x128 input \(RuntimeError: Given") as e:
        build_model("pan", TINY_ENCODER, 1, encoder_depth=4)
    assert e.value.field == "arch/encoder_depth" and e.value.value == "pan/4"


def test_output_check_leaves_rng_and_batchnorm_stats_alone():
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    model = build_model("unet", "resnet18", 2, encoder_depth=3)
    after_build = torch.random.get_rng_state()
    torch.manual_seed(3)
    plain = smp.create_model("unet", encoder_name="resnet18", encoder_weights=None, classes=3, encoder_depth=3,
                             decoder_channels=(64, 32, 16))
    assert torch.equal(after_build, torch.random.get_rng_state())
    mine, theirs = model.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # running_mean/var, num_batches_tracked too
