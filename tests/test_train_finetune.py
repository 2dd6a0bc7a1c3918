"""Fine-tuning through the trainer: CE + RSL with class-weighted sampling, early stopping, best weights, a Head
that predicts; the Cox partial likelihood on a hand case."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from care_core.errors import TrainingConfigError
from care_core.train.config import config_from_dict
from care_core.train.finetune import cox_partial_likelihood
from care_core.train.trainer import train
from train_cohort import TINY_MODEL, write_feature_cohort


def test_cox_partial_likelihood_hand_case():
    risk = torch.tensor([0.5, -0.2, 1.0])
    time = torch.tensor([3.0, 1.0, 2.0])
    event = torch.tensor([1, 0, 1])
    # events at t=3 (risk set {t>=3} = {0}) and t=2 (risk set {0, 2})
    expected = -((0.5 - 0.5) + (1.0 - math.log(math.exp(0.5) + math.exp(1.0)))) / 2
    assert float(cox_partial_likelihood(risk, time, event)) == pytest.approx(expected)
    assert float(cox_partial_likelihood(risk, time, torch.zeros(3))) == 0.0


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    rows = []
    for cls, seed in (("tumour", 1), ("normal", 2)):  # each class has its own compartment means
        for f in write_feature_cohort(root / cls, 6, seed=seed, n_side=12):
            dest = root / "features" / f"{cls}_{f.stem}.h5"
            dest.parent.mkdir(exist_ok=True)
            f.rename(dest)
            rows.append((dest.stem, cls, f"{cls}_{f.stem}"))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide", "label", "patient"])
        w.writerows(rows)
    return root


def config(root, **kw):
    return {"labels": str(root / "labels.csv"), "features": str(root / "features"), "model": dict(TINY_MODEL),
            "epochs": 8, "min_epochs": 2, "patience": 2, "lr": 3e-3, "min_lr": 3e-3, "batch_size": 2, "log_every": 1, **kw}


def test_finetune_learns_keeps_the_best_weights_and_exports_a_head(labelled, tmp_path):
    from care_core.evaluate import load_head
    from care_core.features import load_features
    from care_core.model import load_checkpoint

    events = list(train(config_from_dict("finetune", config(labelled)), tmp_path / "run"))
    from care_core.evaluate.splits import load_splits

    fold = load_splits(tmp_path / "run" / "splits")[0]  # the splits the run made and saved
    assert events[0].metrics == {"train_slides": len(fold.train), "val_slides": len(fold.val), "classes": 2}
    vals = [e for e in events if e.kind == "validate"]
    assert vals and all("val_loss" in e.metrics and "val_auroc" in e.metrics for e in vals)
    best = min(vals, key=lambda e: e.metrics["val_loss"])
    assert vals[-1].metrics["best_epoch"] == best.epoch
    assert (tmp_path / "run" / "splits").is_dir()
    head = load_head(tmp_path / "run" / "head")
    assert head.classes == ("normal", "tumour") and head.protocol == "finetune" and head.input == "slide"
    assert head.metrics["val_loss"] == pytest.approx(best.metrics["val_loss"])
    model = load_checkpoint(tmp_path / "run" / "care")
    head.check_compatible(model.checkpoint_meta, "stain-texture")  # the head names the fine-tuned CARE
    enc = model.encode(load_features(next((labelled / "features").glob("tumour_*.h5"))))
    pred = head.predict(enc)
    assert pred.slide_proba.shape == (2,) and pred.region_proba.shape == (enc.n_regions, 2)
    assert np.isclose(pred.slide_proba.sum(), 1.0)
    train_losses = [e.metrics["loss_task"] for e in events if e.kind == "step"]
    assert np.mean(train_losses[-4:]) < np.mean(train_losses[:4])


def test_early_stopping_stops_after_patience(labelled, tmp_path):
    cfg = config_from_dict("finetune", config(labelled, epochs=30, min_epochs=3, patience=2, lr=0.3, min_lr=0.3))
    events = list(train(cfg, tmp_path / "run"))
    losses = [e.metrics["val_loss"] for e in events if e.kind == "validate"]
    best, bad, expected = math.inf, 0, len(losses)
    for epoch, loss in enumerate(losses):  # the rule: stop once 2 epochs in a row did not improve, from epoch 3 on
        best, bad = (loss, 0) if loss < best else (best, bad + 1)
        if epoch + 1 >= 3 and bad >= 2:
            expected = epoch + 1
            break
    assert len(losses) == expected < 30 and events[-1].kind == "end"


def test_bad_fold_and_missing_features_are_config_errors(labelled, tmp_path):
    with pytest.raises(TrainingConfigError, match="fold=9 but the splits have 5 folds"):
        list(train(config_from_dict("finetune", config(labelled, fold=9)), tmp_path / "a"))
    (tmp_path / "few").mkdir()
    with pytest.raises(TrainingConfigError, match="holds no .h5 feature files"):
        list(train(config_from_dict("finetune", config(labelled, features=str(tmp_path / "few"))), tmp_path / "b"))


def test_care_evaluate_finetune_protocol_trains_each_fold_and_scores_its_test_slides(labelled, tmp_path):
    from care_core.evaluate import load_head
    from care_core.evaluate.run import evaluate
    from care_core.model import CARE, load_checkpoint

    model = CARE.from_seed(0, input_dim=8, **TINY_MODEL)
    res = evaluate(labelled / "labels.csv", [labelled / "features"], model=model, protocol="finetune", input="slide",
                   out_dir=tmp_path / "out", n_folds=3, finetune={"epochs": 3, "min_epochs": 1, "patience": 1, "lr": 1e-3,
                                                                    "min_lr": 1e-3})
    assert res["protocol"] == "finetune" and res["n_folds"] == 3 and len(res["folds"]) == 3
    assert all("auroc" in f["metrics"] and "balanced_accuracy" in f["metrics"] for f in res["folds"])
    for k in range(3):  # each fold's head names the CARE fine-tuned in that fold, not the starting model
        head = load_head(tmp_path / "out" / "heads" / f"labels_finetune_slide_fold{k}")
        care = load_checkpoint(tmp_path / "out" / "finetune" / f"fold{k}" / "care")
        head.check_compatible(care.checkpoint_meta, "stain-texture")
        assert head.protocol == "finetune" and head.metrics["validation"]["val_loss"] > 0
    rows = (tmp_path / "out" / "test_predictions.csv").read_text().splitlines()
    assert rows[0] == "sample,fold,truth,p(normal),p(tumour)" and len(rows) == 1 + 12


def test_finetune_checks_every_feature_file_before_anything_is_trained(labelled, tmp_path):
    """The pre-flight care evaluate runs: a file of another encoder or another width is named before step 1, and no
    checkpoint is left to resume."""
    import shutil

    from care_core.features import load_features

    for name, change in (("encoder", dict(encoder="uni_v2")), ("width", None)):
        root = tmp_path / name
        shutil.copytree(labelled, root)
        odd = sorted((root / "features").glob("*.h5"))[3]
        pf = load_features(odd)
        if change is None:
            pf.features = np.concatenate([pf.features, pf.features], axis=1)
        else:
            pf.encoder = change["encoder"]
        odd.unlink()
        pf.save(odd)
        message = "mix patch encoders" if name == "encoder" else f"feature file {str(odd)!r} holds 16-d features"
        with pytest.raises(TrainingConfigError, match=message):
            list(train(config_from_dict("finetune", config(root)), tmp_path / f"run-{name}"))
        assert not list((tmp_path / f"run-{name}").glob("**/*.safetensors"))
