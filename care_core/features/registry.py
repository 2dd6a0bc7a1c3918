"""Patch-encoder registry: one `get_encoder` door over the builders the encoder files register (their spec and
interface live a level down, in `spec`)."""

from __future__ import annotations

from care_core.errors import UnknownEncoderError
from care_core.features.spec import (
    _BUILDERS,
    _SPECS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    PatchEncoder,
    register_encoder,
)

__all__ = [
    "EncoderSpec",
    "PatchEncoder",
    "register_encoder",
    "get_encoder",
    "get_encoder_spec",
    "list_encoders",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]


def _ensure_registered() -> None:
    from care_core.features import stain_texture, timm_encoders  # noqa: F401  (register on import)


def list_encoders() -> list[str]:
    """Registered encoder names (plus the `timm:<arch>` form, not listed)."""
    _ensure_registered()
    return sorted(_SPECS)


def _unknown(name: str) -> UnknownEncoderError:
    return UnknownEncoderError(f"unknown encoder {name!r}; choose one of {list_encoders()} or 'timm:<arch>' for any timm architecture")


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec of a registered encoder (for `timm:<arch>`, see `timm_encoders.timm_arch_spec`)."""
    _ensure_registered()
    if name.startswith("timm:"):
        from care_core.features.timm_encoders import timm_arch_spec

        return timm_arch_spec(name[len("timm:"):])
    if name not in _SPECS:
        raise _unknown(name)
    return _SPECS[name]


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a CUDA device is present, else 'cpu'; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_encoder(name: str, weights=None, device: str = "auto", *, random_init: bool = False, **overrides) -> PatchEncoder:
    """Build the patch encoder `name` ("stain-texture", "uni_v2", ..., or "timm:<arch>").

    weights: a local `.safetensors`/`.bin`/`.pth` file; None looks in the offline model-hub cache and raises
    `MissingWeightsError` saying where to put the file. random_init: random weights (tests, benchmarks).
    overrides: extra timm `create_model` kwargs (e.g. `depth=1` for a cheap test of a big architecture).
    """
    _ensure_registered()
    device = resolve_device(device)
    if name.startswith("timm:"):
        from care_core.features.timm_encoders import build_timm_arch

        return build_timm_arch(name[len("timm:"):], weights, device, random_init=random_init, **overrides)
    if name not in _BUILDERS:
        raise _unknown(name)
    return _BUILDERS[name](_SPECS[name], weights, device, random_init=random_init, **overrides)
