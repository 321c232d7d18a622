"""Checkpoints: round trip, refusing non-checkpoints without unpickling, mismatches."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from dataeng.errors import ModelError
from dataeng.models.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    save_checkpoint,
)
from dataeng.models.factory import build_model

META = {"arch": "unet", "encoder": "tu-mobilenetv3_small_050", "encoder_depth": 3, "classes": ["person"],
        "image_size": [64, 64], "epoch": 3}


def _model(arch="unet", classes=1):
    return build_model(arch, "tu-mobilenetv3_small_050", classes, encoder_depth=3)


def test_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model, META, optimizer=opt, rng={"torch": torch.get_rng_state()})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt.meta["epoch"] == 3 and ckpt.num_classes == 1 and ckpt.optimizer is not None
    rebuilt = model_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    assert torch.allclose(model(x), rebuilt(x))
    assert not list(tmp_path.glob("*.tmp*"))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("kind", ["text", "zip", "pickle", "torch_non_dataeng", "torch_evil"])
def test_not_a_checkpoint_is_refused(tmp_path, kind, capsys):
    path = tmp_path / "x.pt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.txt", "x")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(_Evil()))
    elif kind == "torch_non_dataeng":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        torch.save({"x": _Evil()}, path)
    with pytest.raises(ModelError, match=r"not a .*checkpoint"):
        load_checkpoint(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_other_architecture_or_classes_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", _model(), META)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ModelError, match="classes"):
        check_compatible(ckpt, "unet", META["encoder"], ["person", "dog"])
    with pytest.raises(ModelError, match="arch"):
        check_compatible(ckpt, "fpn", META["encoder"], ["person"])
    with pytest.raises(ModelError, match="do not fit the model"):
        load_weights(_model(classes=2), ckpt)
    with pytest.raises(ModelError, match="do not fit the model"):
        load_weights(_model(arch="linknet"), ckpt)
