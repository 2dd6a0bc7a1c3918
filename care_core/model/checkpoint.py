"""CARE checkpoints: ``<name>.safetensors`` (tensors) + ``<name>.json`` (config and provenance).

No pickles: tensors go through safetensors; the JSON records the config, the features the model
expects (encoder, dimension, µm/px, patch size), the sha256 of the tensor file, the package version and
``sha256``: one hash over the tensors' hash and every other field, so an edited config is refused like an
edited tensor file (the rule of every JSON + tensors pair, ``care_core.model.pair``; heads follow it too).
Tensors holding NaN or Inf are refused. Every fault of a checkpoint is a CheckpointError naming the file.
Files of the older ``care-checkpoint/1`` format (no ``sha256``) still load, with a warning that their config
is unprotected; re-save them with ``save_checkpoint`` to protect it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from care_core._atomic import atomic_path
from care_core.errors import CheckpointError
from care_core.model.pair import check_finite, check_meta, check_tensors, pair_paths, seal

__all__ = ["CheckpointMeta", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta", "check_features", "DEMO_CHECKPOINT",
           "model_sha256"]

FORMAT = "care-checkpoint/2"
_OLD_FORMATS = ("care-checkpoint/1",)  # tensors hashed, config not: loaded with a warning
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
    sha256: str = ""  # covers the config, the feature fields and tensors_sha256 ("" in older files)


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

    tensors_path, json_path = pair_paths(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(tensors_path) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT})
    meta = seal({
        "format": FORMAT,
        "config": model.config.to_dict(),
        "input_dim": model.config.input_dim,
        "encoder": encoder,
        "feature_mpp": feature_mpp,
        "patch_px": patch_px,
        "package_version": __version__,
        "extra": extra or {},
    }, tensors_path)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return tensors_path


def _config_types_error(config) -> str:
    """Why `config` is not a CAREConfig dict of well-typed values ("" when it is)."""
    from dataclasses import MISSING, fields

    from care_core.model.care import CAREConfig

    if not isinstance(config, dict):
        return f"'config' is a {type(config).__name__}, not an object of CARE settings"
    for f in fields(CAREConfig):
        if f.name not in config or f.default is MISSING:
            continue
        value, kind = config[f.name], type(f.default)
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind) and not isinstance(value, bool))
        if not ok:
            return f"config {f.name}={value!r} should be of type {kind.__name__}"
    return ""


def _fields_error(raw: dict) -> str:
    """Why the top-level fields of a checkpoint JSON are ill-typed ("" when they are fine)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    checks = (
        ("encoder", lambda v: isinstance(v, str), "a string"),
        ("feature_mpp", lambda v: v is None or (number(v) and v > 0), "a positive number of µm/px or null"),
        ("patch_px", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
         "a positive integer or null"),
        ("tensors_sha256", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}|", v), "a sha256 hex string"),
        ("extra", lambda v: isinstance(v, dict), "an object"),
        ("input_dim", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    )
    for key, ok, what in checks:
        if key in raw and not ok(raw[key]):
            return f"{key}={raw[key]!r} is not {what}"
    return _config_types_error(raw.get("config"))


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Parse and validate ``<path>.json``: types, the hash over config and tensors hash, a buildable config.
    Raises CheckpointError naming the file."""
    _, json_path = pair_paths(path)
    if not json_path.is_file():
        raise CheckpointError(f"checkpoint metadata {json_path} not found: a CARE checkpoint is a .safetensors + .json pair")
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON ({exc}); re-save the checkpoint") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{json_path} holds a JSON {type(raw).__name__}, not a CARE checkpoint's metadata object")
    fmt = raw.get("format")
    if fmt not in (FORMAT, *_OLD_FORMATS) or "config" not in raw:
        raise CheckpointError(f"{json_path} has format={fmt!r}, expected {FORMAT!r}; it is not a CARE checkpoint")
    bad = _fields_error(raw)
    if bad:
        raise CheckpointError(f"{json_path}: {bad}; the file was edited or damaged: re-save the checkpoint")
    check_meta(raw, json_path, current=fmt == FORMAT, error=CheckpointError, what="checkpoint")
    from care_core.model.care import CAREConfig

    try:  # the config is the one source of the architecture (the top-level input_dim is for people reading the file)
        input_dim = CAREConfig.from_dict(raw["config"]).input_dim
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path}: its config cannot build a CARE ({exc}); re-save the checkpoint") from exc
    if "input_dim" in raw and raw["input_dim"] != input_dim:
        raise CheckpointError(f"{json_path}: input_dim={raw['input_dim']} disagrees with its config's {input_dim}; "
                              "re-save the checkpoint")
    return CheckpointMeta(
        config=raw["config"],
        input_dim=input_dim,
        encoder=raw.get("encoder", ""),
        feature_mpp=raw.get("feature_mpp"),
        patch_px=raw.get("patch_px"),
        tensors_sha256=raw.get("tensors_sha256", ""),
        package_version=str(raw.get("package_version", "")),
        extra=raw.get("extra", {}),
        sha256=raw.get("sha256", "") if fmt == FORMAT else "",
    )


def load_checkpoint(path: str | Path, *, map_location: str = "cpu"):
    """Rebuild a CARE from a checkpoint (architecture from the JSON, config and tensors verified by sha256).

    The model's ``checkpoint_meta`` attribute holds the ``CheckpointMeta``. Any fault (missing or edited
    file, truncated tensors, tensors that do not fit the config) is a CheckpointError naming the file.
    """
    from safetensors.torch import load_file

    from care_core.model.care import CARE

    tensors_path, json_path = pair_paths(path)
    meta = read_checkpoint_meta(path)
    if not tensors_path.is_file():
        raise CheckpointError(f"checkpoint tensors {tensors_path} not found next to its .json; copy both files together")
    digest = check_tensors(meta.tensors_sha256, tensors_path, json_path.name, CheckpointError)
    try:
        model = CARE(meta.config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{tensors_path}: config cannot build a CARE ({exc})") from exc
    try:
        state = load_file(str(tensors_path), device=map_location)
    except Exception as exc:  # safetensors raises its own error type for truncated or foreign files
        raise CheckpointError(f"{tensors_path} is not a readable safetensors file ({exc}); copy it again") from exc
    check_finite(state, tensors_path, CheckpointError)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{tensors_path}: tensor shapes do not fit its config ({first}); the pair does not belong "
                              "together") from None
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


def model_sha256(care) -> str:
    """Identity of a CARE model, the one heads, encodings and region indexes record: its checkpoint's tensor
    sha256, or for an in-memory (e.g. untrained) model the sha256 of its weights (names, shapes and bytes in
    name order)."""
    import hashlib

    import torch

    meta = getattr(care, "checkpoint_meta", None)
    if meta is not None and meta.tensors_sha256:
        return meta.tensors_sha256
    h = hashlib.sha256()
    for name, tensor in sorted(care.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
