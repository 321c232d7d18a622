"""Model factory: any smp architecture/encoder by name, weights offline or from a file."""

from __future__ import annotations

import pytest
import torch

from dataeng.errors import ModelError
from dataeng.models.factory import build_model, load_encoder_weights, out_channels


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
