"""What a patch encoder is: its spec (``EncoderSpec``), its interface (``PatchEncoder``) and the table the
``register_encoder`` decorator fills. The encoder files import only this module; ``registry`` (the one front door,
``get_encoder``) imports them, so no import runs in a circle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["EncoderSpec", "PatchEncoder", "register_encoder", "IMAGENET_MEAN", "IMAGENET_STD"]

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
