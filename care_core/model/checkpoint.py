"""CARE checkpoints: ``<name>.safetensors`` (tensors) + ``<name>.json`` (config and provenance).

No pickles: tensors go through safetensors; the JSON records the config, the features the model
expects (encoder, dimension, µm/px, patch size), the sha256 of the tensor file and the package version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from care_core._atomic import atomic_path
from care_core.errors import CheckpointError

__all__ = ["CheckpointMeta", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta", "check_features", "DEMO_CHECKPOINT"]

FORMAT = "care-checkpoint/1"
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "care_demo"  # shipped demo (project's own Stage I)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint's JSON says. feature_mpp in µm/px, patch_px in px at that mpp (None = unknown)."""

    config: dict
    input_dim: int
    encoder: str = ""
    feature_mpp: float | None = None
    patch_px: int | None = None
    tensors_sha256: str = ""
    package_version: str = ""
    extra: dict = field(default_factory=dict)


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    model,
    path: str | Path,
    *,
    encoder: str = "",
    feature_mpp: float | None = None,
    patch_px: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the .safetensors path."""
    from safetensors.torch import save_file

    from care_core import __version__

    tensors_path, json_path = _paths(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(tensors_path) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "input_dim": model.config.input_dim,
        "encoder": encoder,
        "feature_mpp": feature_mpp,
        "patch_px": patch_px,
        "tensors_sha256": _sha256(tensors_path),
        "package_version": __version__,
        "extra": extra or {},
    }
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return tensors_path


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Parse and validate ``<path>.json`` (raises CheckpointError naming the file)."""
    _, json_path = _paths(path)
    if not json_path.is_file():
        raise CheckpointError(f"checkpoint metadata {json_path} not found: a CARE checkpoint is a .safetensors + .json pair")
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON ({exc}); re-save the checkpoint") from exc
    if raw.get("format") != FORMAT or "config" not in raw:
        raise CheckpointError(f"{json_path} has format={raw.get('format')!r}, expected {FORMAT!r}; it is not a CARE checkpoint")
    from care_core.model.care import CAREConfig

    try:  # the config is the one source of the architecture (the top-level input_dim is for people reading the file)
        input_dim = CAREConfig.from_dict(raw["config"]).input_dim
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path}: its config cannot build a CARE ({exc}); re-save the checkpoint") from exc
    return CheckpointMeta(
        config=raw["config"],
        input_dim=input_dim,
        encoder=raw.get("encoder", ""),
        feature_mpp=raw.get("feature_mpp"),
        patch_px=raw.get("patch_px"),
        tensors_sha256=raw.get("tensors_sha256", ""),
        package_version=raw.get("package_version", ""),
        extra=raw.get("extra", {}),
    )


def load_checkpoint(path: str | Path, *, map_location: str = "cpu"):
    """Rebuild a CARE from a checkpoint (architecture from the JSON, tensors verified by sha256).

    The model's ``checkpoint_meta`` attribute holds the ``CheckpointMeta``.
    """
    from safetensors.torch import load_file

    from care_core.model.care import CARE

    tensors_path, _ = _paths(path)
    meta = read_checkpoint_meta(path)
    if not tensors_path.is_file():
        raise CheckpointError(f"checkpoint tensors {tensors_path} not found next to its .json; copy both files together")
    digest = _sha256(tensors_path)
    if meta.tensors_sha256 and digest != meta.tensors_sha256:
        raise CheckpointError(
            f"{tensors_path} has sha256 {digest[:12]}… but its .json records {meta.tensors_sha256[:12]}…: "
            "the files do not belong together or one is corrupt"
        )
    try:
        model = CARE(meta.config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{tensors_path}: config cannot build a CARE ({exc})") from exc
    state = load_file(str(tensors_path), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{tensors_path}: tensors do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.checkpoint_meta = CheckpointMeta(**{**meta.__dict__, "tensors_sha256": digest})
    return model.eval()


def check_features(meta: CheckpointMeta, features) -> None:
    """Raise FeatureMismatchError when ``features`` (PatchFeatures) do not fit the checkpoint.

    Checks dimension, encoder (when the checkpoint names one), µm/px (10 % tolerance) and patch size;
    the message names both sides (``care_core.features.check_compatible``).
    """
    from care_core.features import check_compatible

    check_compatible(
        features, dim=meta.input_dim, encoder=meta.encoder or None, mpp=meta.feature_mpp, patch_px=meta.patch_px
    )
