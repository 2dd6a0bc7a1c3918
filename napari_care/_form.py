"""What the CARE widget's form offers and says: the checkpoint choices, the heads (a readable title, the
validation metrics and how many samples they rest on, which CARE model they were trained on), and the
library's errors rewritten to name this window's controls. No Qt here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEMO, UNTRAINED, FILE = "demo checkpoint", "untrained (random weights)", "checkpoint file"
MIXED_BELOW = 0.6  # a region whose most probable class has less than this probability is shown as mixed


def demo_checkpoint() -> Path | None:
    """The shipped demo CARE checkpoint (path without suffix), None when its files are not installed."""
    from care_core.model.checkpoint import DEMO_CHECKPOINT

    ok = all(DEMO_CHECKPOINT.with_name(DEMO_CHECKPOINT.name + s).is_file() for s in (".safetensors", ".json"))
    return DEMO_CHECKPOINT if ok else None


def optional_path(value) -> Path | None:
    """A FileEdit's value, or None when the field is empty."""
    return None if value is None or str(value) in ("", ".") else Path(value)


def gui_message(exc: Exception) -> str:
    """The library's message, with a fix that names a control of this window where the library names an
    argument the window does not have."""
    from care_core import errors

    cause = str(exc).split("; ")[0]
    fixes = {
        errors.MissingMppError: "enter the scan's pixel size in 'slide µm/px' and press Run again",
        errors.FeatureMismatchError: "choose a CARE checkpoint made for this patch encoder, or 'untrained'",
        errors.CheckpointError: "choose another file in 'CARE checkpoint', or 'untrained'",
        errors.HeadError: "choose heads trained for this checkpoint and encoder in 'prediction heads', or none",
    }
    if isinstance(exc, errors.NoTissueError):
        if "no tissue found" in str(exc):  # the detector saw only glass: no patch setting changes that
            return (f"{cause}; this slide shows no stained tissue to the detector (empty glass, or a very faint "
                    "stain): open a slide that holds tissue")
        return f"{cause}; lower 'min tissue' (0 keeps every patch touching tissue) and press Run again"
    if isinstance(exc, errors.InvalidInputError) and "patch_px" in str(exc):
        return f"{cause}; change 'patch size px' or 'patch µm/px' (0 = automatic)"
    for kind, fix in fixes.items():
        if isinstance(exc, kind):
            return f"{cause}; {fix}"
    return str(exc)


@dataclass(frozen=True)
class HeadInfo:
    """A head file as the window describes it. name: the head's own name (what predictions carry); title: a
    readable name; note: its validation metrics with the number of samples they rest on; region: trained on
    annotated regions (it makes no slide-level call); model_sha256: the CARE model it was trained on."""

    path: Path
    name: str
    title: str
    note: str = ""
    region: bool = False
    model_sha256: str = ""


def head_info(path: str | Path) -> HeadInfo:
    """Read ``path``'s .json (a missing or broken file gives the file name and nothing else)."""
    path = Path(path).with_suffix(".safetensors")
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return HeadInfo(path, path.stem, path.stem)
    name = str(meta.get("name") or path.stem)
    classes = " / ".join(str(c) for c in meta.get("classes") or ())
    kind = meta.get("input")
    what = ("region classifier" if kind == "region" else "fine-tuned classifier" if meta.get("protocol") == "finetune"
            else "risk model" if classes == "risk" else f"slide classifier ({meta.get('protocol') or 'probe'})")
    title = f"{what}: {classes}" if classes and classes != "risk" else what
    return HeadInfo(path, name, title, _note(meta, path), kind == "region", str(meta.get("model_sha256") or ""))


def _note(meta: dict, path: Path) -> str:
    """One line of validation metrics: a probe's cross-validated means, a fine-tune's best validation scores;
    with how many samples (slides, or regions for a region classifier) they rest on, and 'optimistic' when
    the folds split regions of one slide."""
    metrics = meta.get("metrics") or {}
    shown = metrics.get("cv", metrics)
    values = {k: v for k, v in shown.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    text = ", ".join(f"{k} {v:.3g}" for k, v in list(values.items())[:4])
    if not text:
        return ""
    what = "regions" if meta.get("input") == "region" else "slides"
    n = metrics.get("n_samples")
    text += f" (on {n} {what})" if n else ""
    if _folds_by(path) == "region":
        text += "; optimistic: the folds split regions of the same slide"
    return text


def _folds_by(head: Path) -> str | None:
    """'patient' or 'region': how the cross-validation that produced ``head`` split its samples (results.json
    of its run folder), None when unknown."""
    try:
        return json.loads((head.parent.parent / "results.json").read_text()).get("folds_by")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_sha256(care: Path | None) -> str:
    """The tensors sha256 a CARE checkpoint records ("" for untrained or unreadable)."""
    from care_core.errors import CareError
    from care_core.model.checkpoint import read_checkpoint_meta

    if care is None:
        return ""
    try:
        return read_checkpoint_meta(care).tensors_sha256 or ""
    except (CareError, OSError):
        return ""


def heads_for_model(heads: list[Path], model_sha256: str) -> list[Path]:
    """The heads of ``heads`` that fit the CARE model ``model_sha256`` (those recording another model are left
    out; heads that record none, e.g. mean-feature baselines, stay)."""
    return [h for h in heads if (s := head_info(h).model_sha256) in ("", model_sha256)]
