"""Build segmentation models over segmentation-models-pytorch, by name.

Architectures and encoders are looked up in smp's own mappings, so every model smp
ships is available and a wrong name is refused with the list of valid ones. Encoders
named ``tu-<timm model>`` go through timm's universal encoder.

Output channels: one class (the default, ``person``) is a single binary logit
channel; N > 1 classes are N + 1 softmax channels (background first).

Example::

    model = build_model("unet", "resnet18", num_classes=1)
    model = build_model("fpn", "tu-mobilenetv3_small_100", 1, encoder_weights="w.pth")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataeng.errors import ModelError

if TYPE_CHECKING:
    import torch

# Decoders whose channel list must have one entry per encoder stage.
_STAGEWISE_DECODERS = {"unet": (256, 128, 64, 32, 16), "unetplusplus": (256, 128, 64, 32, 16),
                       "manet": (256, 128, 64, 32, 16)}


def out_channels(num_classes: int) -> int:
    """Model output channels for ``num_classes`` foreground classes (1 -> 1 binary logit)."""
    return 1 if num_classes == 1 else num_classes + 1


def architectures() -> list[str]:
    """Names of every smp architecture (lower case)."""
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def encoders() -> list[str]:
    """Names of every smp encoder (plus any ``tu-<timm model>``)."""
    from segmentation_models_pytorch.encoders import get_encoder_names

    return sorted(get_encoder_names())


def check_names(arch: str, encoder: str) -> None:
    """Refuse an unknown architecture or encoder, listing the valid names.

    Raises:
        ModelError: with ``field`` "arch" or "encoder" and the valid names in the message.
    """
    archs = architectures()
    if arch.lower() not in archs:
        raise ModelError(f"unknown architecture; valid: {', '.join(archs)}", field="arch", value=arch)
    if encoder.startswith("tu-"):
        import timm

        if not timm.list_models(encoder[3:].split(".")[0]):
            raise ModelError(
                "unknown timm model for a tu- encoder; see timm.list_models()", field="encoder", value=encoder
            )
        return
    valid = encoders()
    if encoder not in valid:
        raise ModelError(
            f"unknown encoder; valid: {', '.join(valid)}, or tu-<any timm model>", field="encoder", value=encoder
        )


def build_model(
    arch: str,
    encoder: str,
    num_classes: int,
    encoder_weights: str = "none",
    encoder_depth: int = 5,
) -> torch.nn.Module:
    """Create an smp model.

    Args:
        arch: smp architecture name, e.g. ``unet``, ``fpn``, ``deeplabv3plus``.
        encoder: smp encoder name, e.g. ``resnet18``, or ``tu-<timm model>``.
        num_classes: foreground classes (1 for person segmentation).
        encoder_weights: ``none`` (random init, offline), ``imagenet`` (smp's own
            download, needs the network) or a path to a local encoder state dict.
        encoder_depth: encoder stages (3..5); fewer make a smaller, faster model.

    Returns:
        The model (on CPU, train mode) with ``out_channels(num_classes)`` outputs.

    Raises:
        ModelError: unknown name, a combination smp refuses, ``imagenet`` weights that
            cannot be downloaded, or a local weights file that does not fit the encoder.
    """
    import segmentation_models_pytorch as smp

    check_names(arch, encoder)
    kwargs: dict[str, object] = {"encoder_depth": encoder_depth}
    if arch.lower() in _STAGEWISE_DECODERS:
        kwargs["decoder_channels"] = _STAGEWISE_DECODERS[arch.lower()][-encoder_depth:]
    download = encoder_weights == "imagenet"
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=("imagenet" if not encoder.startswith("tu-") else True) if download else None,
            classes=out_channels(num_classes),
            **kwargs,
        )
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ModelError(f"smp refuses this model: {e}", field="arch/encoder", value=f"{arch}/{encoder}") from e
    except OSError as e:  # huggingface_hub / urllib errors are OSError subclasses when offline
        raise ModelError(
            f"cannot download imagenet weights ({type(e).__name__}: {e}); offline, pass "
            f"--encoder-weights PATH to a local encoder state dict, or --encoder-weights none",
            field="encoder_weights",
            value=encoder_weights,
        ) from e
    if encoder_weights not in ("none", "imagenet"):
        load_encoder_weights(model, Path(encoder_weights))
    return model


def load_encoder_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local state dict into ``model.encoder`` (safetensors, or torch with weights_only).

    Raises:
        ModelError: the file is missing, unreadable, or its keys/shapes do not fit.
    """
    import torch

    if not path.is_file():
        raise ModelError("encoder weights file not found (use none, imagenet or a file)", path=path,
                         field="encoder_weights")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as e:
        raise ModelError(f"cannot read encoder weights: {e}", path=path, field="encoder_weights") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError("not a state dict", path=path, field="encoder_weights", value=type(state).__name__)
    encoder: Any = model.encoder
    # Drop classifier heads (fc.*) that smp encoders delete; anything else must fit.
    own = encoder.state_dict()
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "classifier.", "head."))}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"weights do not fit encoder: {first}", path=path, field="encoder_weights") from e
