"""Stage II through the trainer: RNA alignment lowers InfoNCE, skipped samples are counted, curriculum inits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from care_core.errors import FeatureMismatchError, TrainingConfigError
from care_core.features import load_features
from care_core.train.config import config_from_dict
from care_core.train.trainer import train
from train_cohort import TINY_MODEL, tiny_stage1, write_feature_cohort

GENES = [f"G{i}" for i in range(12)]


def write_pairs(tmp_path, n=8, drop_last=True):
    """Feature files, a cohort table and an RNA matrix whose genes follow each slide's mean features."""
    files = write_feature_cohort(tmp_path / "features", n, seed=3, slide_shift=2.0)
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((8, len(GENES)))
    with open(tmp_path / "cohort.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "features", "sample_id", "patient"])
        for i, f in enumerate(files):
            w.writerow([f.stem, f"features/{f.name}", f"S{i}", f"P{i}"])
    with open(tmp_path / "rna.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample", *GENES])
        for i, f in enumerate(files[: n - 1] if drop_last else files):
            x = load_features(f).features.mean(0)
            w.writerow([f"S{i}", *np.exp(x @ mixing / 3).round(4)])
    (tmp_path / "genes.txt").write_text("\n".join(GENES) + "\n")
    return files


def stage2(tmp_path, **kw) -> dict:
    return {"table": str(tmp_path / "cohort.csv"), "rna": str(tmp_path / "rna.csv"), "genes": str(tmp_path / "genes.txt"),
            "batch_size": 7, "epochs": 30, "lr": 3e-3, "warmup_epochs": 1, "checkpoint_every": 100, "log_every": 1,
            "mol_dim": 16, "mol_depth": 1, "mol_heads": 2, "proj_dim": 8, "model": dict(TINY_MODEL), **kw}


def test_rna_alignment_lowers_the_loss_and_counts_the_sample_without_rna(tmp_path):
    from care_core.model import load_checkpoint

    write_pairs(tmp_path)
    events = list(train(config_from_dict("2", stage2(tmp_path)), tmp_path / "run"))
    assert events[0].metrics == {"skipped_no_rna": 1}
    losses = [e.metrics["loss_clip"] for e in events if e.kind == "step"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])  # ln(7) = 1.95 at chance
    model = load_checkpoint(tmp_path / "run" / "care")
    assert model.checkpoint_meta.extra["stage"] == "2"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["modality"] == "rna"


def test_curriculum_starts_from_the_previous_stage_checkpoint(tmp_path):
    write_pairs(tmp_path)
    s1 = config_from_dict("1", tiny_stage1(tmp_path / "features", epochs=1))
    list(train(s1, tmp_path / "s1"))
    cfg = config_from_dict("2", stage2(tmp_path, init=str(tmp_path / "s1" / "care"), model={}, epochs=1))
    list(train(cfg, tmp_path / "s2"))
    with pytest.raises(TrainingConfigError, match="fixes the architecture"):
        list(train(config_from_dict("2", stage2(tmp_path, init=str(tmp_path / "s1" / "care"), epochs=1)), tmp_path / "s3"))


def test_features_of_another_dimension_than_the_init_checkpoint_are_refused(tmp_path):
    write_pairs(tmp_path)
    write_feature_cohort(tmp_path / "wide", 4, dim=12)
    list(train(config_from_dict("1", tiny_stage1(tmp_path / "wide", epochs=1)), tmp_path / "s1"))
    cfg = config_from_dict("2", stage2(tmp_path, init=str(tmp_path / "s1" / "care"), model={}, epochs=1))
    with pytest.raises(FeatureMismatchError, match="expects 12-d features"):
        list(train(cfg, tmp_path / "s2"))


def test_no_overlapping_samples_is_one_line_before_training(tmp_path):
    write_pairs(tmp_path)
    text = (tmp_path / "rna.csv").read_text().replace("S", "X")
    (tmp_path / "rna.csv").write_text(text)
    with pytest.raises(TrainingConfigError, match="shares no sample id with cohort table"):
        list(train(config_from_dict("2", stage2(tmp_path)), tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
