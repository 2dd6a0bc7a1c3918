"""The one integrity rule of every JSON + tensors pair (CARE checkpoints, prediction heads): ``<name>.safetensors``
beside ``<name>.json``.

The JSON records ``tensors_sha256`` (the tensor file's sha256) and ``sha256``: one hash over every other field of
the JSON but ``package_version`` (canonical JSON), so it covers the tensors' hash too. An edited field
(``classes``, ``input_dim``, a config value), an added or removed field, or tensors of another pair are refused
with one line; so is a JSON of the current format without ``sha256``, a pair without ``tensors_sha256``, and
arrays holding NaN or Inf. Files of an older format (``tensors_sha256`` only) still load, with a warning that
their JSON is unprotected; saving them again protects them.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

__all__ = ["pair_paths", "file_sha256", "meta_sha256", "seal", "check_meta", "check_tensors", "check_finite"]

_UNCOVERED = ("sha256", "package_version")  # the hash itself; the version that wrote it (changes on re-save only)


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """(tensors, JSON) paths of a pair given either file or the path without suffix."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def meta_sha256(meta: dict) -> str:
    """sha256 of a pair's JSON fields (all but ``sha256`` and ``package_version``) in canonical form."""
    covered = {k: v for k, v in meta.items() if k not in _UNCOVERED}
    return hashlib.sha256(json.dumps(covered, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def seal(meta: dict, tensors_path: Path) -> dict:
    """``meta`` with ``tensors_sha256`` of the written tensor file and ``sha256`` over the whole, ready to write."""
    meta = {**meta, "tensors_sha256": file_sha256(tensors_path)}
    meta["sha256"] = meta_sha256(meta)
    return meta


def check_meta(raw: dict, json_path: Path, *, current: bool, error: type[Exception], what: str) -> None:
    """Raise ``error`` naming ``json_path`` when the JSON lacks a proper ``tensors_sha256``, or (``current``
    format) lacks ``sha256`` or no longer matches it; warn for an older format, whose fields are unprotected."""
    if not isinstance(raw.get("tensors_sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", raw["tensors_sha256"]):
        raise error(f"{json_path} records no sha256 of its tensors (tensors_sha256), so any tensors would load; "
                    f"re-save the {what} from its source")
    if not current:
        warnings.warn(f"{json_path}: older {what} format {raw.get('format')!r}, whose hash does not cover its fields; "
                      f"load it and save it again to protect it", stacklevel=4)
        return
    if "sha256" not in raw:
        raise error(f"{json_path} has no sha256 over its fields, so an edit would go unnoticed; re-save the {what}")
    if raw["sha256"] != meta_sha256(raw):
        raise error(f"{json_path}: its fields do not match its sha256 (edited after saving?); restore the original "
                    f"file or re-save the {what}")


def check_tensors(recorded: str, tensors_path: Path, json_name: str, error: type[Exception]) -> str:
    """The tensor file's sha256, which must equal ``recorded`` (what the JSON says); ``error`` otherwise."""
    digest = file_sha256(tensors_path)
    if digest != recorded:
        raise error(f"{tensors_path} has sha256 {digest[:12]}… but {json_name} records {recorded[:12]}…: the files do "
                    "not belong together or one is corrupt (truncated copy?)")
    return digest


def check_finite(arrays: dict, tensors_path: Path, error: type[Exception]) -> None:
    """``error`` naming the first array (numpy or torch, in name order) that holds NaN or Inf."""
    for name in sorted(arrays):
        a = arrays[name]
        if hasattr(a, "is_floating_point"):  # a torch tensor: checked where it lies, without a copy
            import torch

            bad = a.is_floating_point() and not bool(torch.isfinite(a).all())
        else:
            a = np.asarray(a)
            bad = a.dtype.kind in "fc" and not bool(np.isfinite(a).all())
        if bad:
            raise error(f"{tensors_path}: array {name!r} holds NaN or Inf values; the pair is damaged: re-save it "
                        "from a good run")
