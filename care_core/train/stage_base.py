"""What every stage shares, below the stages themselves: the ``StageSetup`` a stage gives the trainer, the
feature files of a config, the CARE to train (from ``init`` or a seeded init) and compact crops of a slide.

Stage I and II (``stages.py``) and fine-tuning (``finetune.py``) build on it; ``stages.build_stage`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from care_core.errors import FeatureMismatchError, TrainingConfigError

__all__ = ["StageSetup", "feature_files", "feature_meta", "feature_statistics", "initial_care", "geometry_args", "compact_crop"]


@dataclass
class StageSetup:
    """What a stage gives the trainer: its samples, its objective and schedules, what to export."""

    n_samples: int
    make_sample: object  # picklable callable (index, epoch) -> sample
    objective: object  # nn.Module: forward(batch, sched) -> (loss, logs); trainable(); export_model()
    schedule: object  # (step, total, per_epoch) -> dict of per-step values
    export_meta: dict  # encoder / feature_mpp / patch_px for the final CARE checkpoint
    source: str  # what the samples come from (for messages)
    counts: dict = field(default_factory=dict)  # reported in the start event (e.g. samples skipped)
    epoch_order: object = None  # (epoch, n) -> sample order of an epoch (None: a seeded permutation)
    validate: object = None  # objective -> {"val_loss": ..., ...} after each epoch (early stopping, best weights)
    export_head: object = None  # (objective, head path, care_sha256, best validation) -> head path


def feature_files(spec: str) -> list[Path]:
    """The .h5 files of a folder, or the files listed (one a line, relative to the list) in a .txt file."""
    p = Path(spec)
    if p.is_dir():
        files = sorted(p.glob("*.h5"))
    elif p.suffix == ".txt" and p.is_file():
        files = [(p.parent / line.strip()) for line in p.read_text().splitlines() if line.strip()]
    else:
        raise TrainingConfigError(f"features={spec!r} is neither a folder of .h5 files nor a .txt list of them")
    if not files:
        raise TrainingConfigError(f"{p} holds no .h5 feature files; extract them with `care extract` first")
    return files


def feature_meta(path: Path) -> dict:
    from care_core.features import load_features

    pf = load_features(path)
    return {"encoder": pf.encoder or "", "feature_mpp": pf.mpp, "patch_px": pf.patch_px}


def feature_statistics(files: list[Path], max_rows: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the patch features of ``files`` (a seeded sample of at most ``max_rows``)."""
    from care_core.features import load_features

    rng = np.random.default_rng(seed)
    per_file = max(1, max_rows // len(files))
    rows = []
    for f in files:
        x = load_features(f).features
        rows.append(x[rng.choice(len(x), size=min(per_file, len(x)), replace=False)].astype(np.float64))
    x = np.concatenate(rows)
    return x.mean(0), x.std(0)


def initial_care(cfg, input_dim: int, source: str, files: list[Path] | None = None):
    """The CARE to train: from ``cfg.init`` (its architecture) or a seeded init of ``cfg.model``."""
    from care_core.model import CARE, load_checkpoint

    if cfg.init:
        model = load_checkpoint(cfg.init).train()
        if cfg.model:
            raise TrainingConfigError(f"init={cfg.init!r} fixes the architecture; remove the `model` overrides {sorted(cfg.model)}")
        if model.config.input_dim != input_dim:
            raise FeatureMismatchError(
                f"init checkpoint {cfg.init} expects {model.config.input_dim}-d features but {source} holds "
                f"{input_dim}-d ones; use features of the encoder it was trained on"
            )
        return model
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = CARE({**cfg.model, "input_dim": input_dim})
    except ValueError as exc:
        raise TrainingConfigError(f"model overrides {cfg.model}: {exc}") from exc
    if model.config.input_norm and files:  # a new model learns on standardised channels from step 0
        model.set_feature_statistics(*feature_statistics(files, seed=cfg.seed))
    return model


def geometry_args(care) -> dict:
    c = care.config
    return {"k": c.k, "anchor": c.anchor, "n_candidates": c.n_candidates}


def compact_crop(grid: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of the ``n`` patches nearest (grid distance) to a random patch: a compact piece of tissue."""
    if len(grid) <= n:
        return np.arange(len(grid))
    centre = grid[rng.integers(len(grid))]
    d = ((grid - centre) ** 2).sum(1)
    return np.sort(np.argsort(d, kind="stable")[:n])
