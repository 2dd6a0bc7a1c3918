"""What a finished training run gives the window: its CARE checkpoint and head (a fine-tune's, or a probe's final
head with the CARE it was trained on), and whether its cross-validation split regions of one slide."""

from __future__ import annotations

import json
from pathlib import Path


def run_result(run_dir: str | Path) -> tuple[Path | None, Path | None]:
    """(CARE checkpoint, head) a finished run folder gives: a fine-tune's ``care`` and ``head``; a probe's final
    head and the CARE it was trained on (from its job.json); (None, None) when it has not finished."""
    from care_core.train.jobs import read_job

    run_dir = Path(run_dir)
    care, head = run_dir / "care.safetensors", run_dir / "head.safetensors"
    if care.is_file():
        return care, head if head.is_file() else None
    finals = sorted((run_dir / "heads").glob("*_all.safetensors"))
    if not finals:
        return None, None
    model = ((read_job(run_dir) or {}).get("job_inputs") or {}).get("model") or None
    return (Path(model) if model else None), finals[-1]


def folds_note(run_dir: Path) -> str:
    """A warning when a region classifier's folds split regions, not patients (too few annotated slides)."""
    try:
        by = json.loads((Path(run_dir) / "results.json").read_text()).get("folds_by")
    except (OSError, ValueError):
        return ""
    return (" (folds split regions, not slides: too few annotated slides per class, so this estimate is "
            "optimistic; annotate more slides)") if by == "region" else ""
