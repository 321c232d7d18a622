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

# Side of the square zero image of the output-size check (see check_output_size).
_PROBE_SIZE = 128


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
        ModelError: unknown name, a combination smp refuses, an architecture/depth whose
            output is not the input size or whose forward pass fails (see
            :func:`check_output_size`), ``imagenet`` weights that cannot be downloaded,
            or a local weights file that does not fit the encoder.
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
    check_output_size(model, arch, encoder_depth, out_channels(num_classes))
    if encoder_weights not in ("none", "imagenet"):
        load_encoder_weights(model, Path(encoder_weights))
    return model


def check_output_size(model: torch.nn.Module, arch: str, encoder_depth: int, channels: int) -> None:
    """Refuse a model whose output is not ``(N, channels, H, W)`` for an ``(N, 3, H, W)`` input.

    Some smp architectures only keep the input size at some encoder depths (``fpn``
    upsamples by a fixed 4, so depth 3 gives 4x the input; ``pspnet`` by a fixed 8, so
    depth 5 gives 1/4). One forward pass of a ``(1, 3, 128, 128)`` zero image finds out
    (128: a multiple of 2**5, and the least size ``pan`` at depth 4 or 5 accepts). It
    runs under ``torch.no_grad`` in eval mode, so it draws no random numbers and leaves
    BatchNorm running statistics alone; every module's training flag is restored.

    Raises:
        ModelError: with ``field`` "arch/encoder_depth", when the output size differs or
            the forward pass itself fails.
    """
    import torch

    size = _PROBE_SIZE
    want = (1, channels, size, size)
    value = f"{arch}/{encoder_depth}"
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise ModelError(
            f"{arch} at encoder_depth {encoder_depth} fails on a {size}x{size} input "
            f"({type(e).__name__}: {first}){_depth_hint(arch, encoder_depth)}",
            field="arch/encoder_depth",
            value=value,
        ) from e
    finally:
        for module, training in flags:
            module.training = training
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise ModelError(
            f"{arch} at encoder_depth {encoder_depth} outputs {got} for a (1, 3, {size}, {size}) input, "
            f"expected {want}{_depth_hint(arch, encoder_depth)}",
            field="arch/encoder_depth",
            value=value,
        )


def _depth_hint(arch: str, encoder_depth: int) -> str:
    """``"; smp's default encoder_depth for <arch> is N"`` when N differs, else ``""``."""
    import inspect

    import segmentation_models_pytorch as smp

    try:
        cls = smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
        default = inspect.signature(cls).parameters["encoder_depth"].default
    except (KeyError, TypeError, ValueError):
        return ""
    if not isinstance(default, int) or default == encoder_depth:
        return ""
    return f"; smp's default encoder_depth for {arch} is {default}"


def load_encoder_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a local state dict into ``model.encoder`` (safetensors, or torch with weights_only).

    Raises:
        ModelError: the file is missing, unreadable, or its keys/shapes do not fit.
    """
    import torch

    if not path.is_file():
        raise ModelError("encoder weights file not found (use none, imagenet or a file)", path=path,
                         field="encoder_weights")
    import pickle

    from safetensors import SafetensorError

    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        # weights_only refuses a pickle of arbitrary objects without running it (UnpicklingError)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot read encoder weights ({type(e).__name__}): {first[:200]}", path=path,
                         field="encoder_weights") from e
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
