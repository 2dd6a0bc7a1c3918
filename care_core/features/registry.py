"""Patch-encoder registry: small frozen specs, a decorator that registers a builder, one `get_encoder` door."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from care_core.errors import UnknownEncoderError

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """What a patch encoder is and expects.

    dim: output feature size; input_px: side of the square image the network takes; mean/std: per-channel
    normalisation of [0, 1] RGB; mpp: µm/px the patches should be read at; patch_px: patch side in px at
    `mpp` (resized to `input_px / crop_pct`, then centre-cropped to `input_px`); interpolation: resize filter.
    arch/timm_kwargs/pool: timm architecture and its `create_model` kwargs ("mlp_layer"/"act_layer" given by
    name), and how tokens become one vector ("token", "cls+mean", "attn_pool"). hub_repo/hub_filename: the
    weight file on the model hub, found only in the local offline cache; precision: autocast dtype on CUDA.
    """

    name: str
    dim: int
    input_px: int
    mpp: float = 0.5
    patch_px: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    arch: str = ""
    timm_kwargs: dict = field(default_factory=dict, hash=False)
    pool: str = "token"
    hub_repo: str = ""
    hub_filename: str = ""
    precision: str = "bf16"
    needs_weights: bool = True
    description: str = ""


class PatchEncoder:
    """A frozen patch encoder: `embed(uint8 [B, H, W, 3]) -> float32 [B, dim]`.

    `weights_sha256` hashes the weight file ("" for encoders without weights, "random-init" for tests);
    `cpu_parallel_embed` is True when `embed` may run concurrently in several threads on the CPU.
    """

    cpu_parallel_embed = False

    def __init__(self, spec: EncoderSpec, *, device: str = "cpu", weights_sha256: str = "") -> None:
        self.spec = spec
        self.device = device
        self.weights_sha256 = weights_sha256

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        """Output feature size."""
        return self.spec.dim

    @property
    def input_px(self) -> int:
        """Side of the square network input (px)."""
        return self.spec.input_px

    @property
    def mpp(self) -> float:
        """µm/px the patches should be read at."""
        return self.spec.mpp

    @property
    def patch_px(self) -> int:
        """Patch side (px) at `mpp` the encoder expects."""
        return self.spec.patch_px

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.spec.std

    @property
    def resize_px(self) -> int:
        """Side (px) patches are resized to before the centre crop to `input_px`."""
        return int(round(self.spec.input_px / self.spec.crop_pct))

    def embed(self, batch_uint8_nhwc) -> np.ndarray:
        """Features [B, dim] float32 of uint8 RGB patches [B, H, W, 3] (best at `resize_px` square)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, input_px={self.input_px}, device={self.device!r})"


_SPECS: dict[str, EncoderSpec] = {}
_BUILDERS: dict[str, Callable[..., PatchEncoder]] = {}


def register_encoder(spec: EncoderSpec) -> Callable[[Callable[..., PatchEncoder]], Callable[..., PatchEncoder]]:
    """Decorator: register `builder(spec, weights, device, **kw) -> PatchEncoder` under `spec.name`."""

    def wrap(builder: Callable[..., PatchEncoder]) -> Callable[..., PatchEncoder]:
        if spec.name in _SPECS:
            raise ValueError(f"encoder {spec.name!r} is registered twice")
        _SPECS[spec.name] = spec
        _BUILDERS[spec.name] = builder
        return builder

    return wrap


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
