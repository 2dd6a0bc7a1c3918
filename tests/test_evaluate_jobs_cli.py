"""What the napari Train widget runs: `care extract/evaluate --events-json`, `care evaluate --final-head`, and the
pre-flight `check_evaluate_inputs`."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from shapely.geometry import box
from slide_factory import tissue_image, write_not_a_tiff, write_svs
from test_evaluate_run import SMALL, cohort  # noqa: F401  (the labelled feature cohort fixture)

from care_core.cli import main
from care_core.errors import FeatureMismatchError, InvalidInputError
from care_core.evaluate import check_evaluate_inputs, evaluate, load_head
from care_core.features import PatchFeatures, load_features
from care_core.model import CARE, load_checkpoint, save_checkpoint
from care_core.train.trainer import TrainEvent


def _events(text: str) -> list[TrainEvent]:
    """Every stdout line as a TrainEvent, as the widget's job reads them (fails on any other line)."""
    return [TrainEvent(**json.loads(line)) for line in text.splitlines()]


def test_extract_events_json_one_line_per_slide(tmp_path, capsys):
    slides = [write_svs(tmp_path / f"{name}.svs", tissue_image(1024, 768, [(500, 380, 300)], seed=i), mpp=0.5,
                        n_levels=2) for i, name in enumerate(("a", "b"))]
    args = ["--out", str(tmp_path / "features"), "--patch-px", "256", "--device", "cpu"]
    assert main(["extract", str(slides[0]), *args]) == 0  # a done first: the run below skips it, extracts b here
    capsys.readouterr()
    assert main(["extract", *map(str, slides), *args, "--events-json"]) == 0
    captured = capsys.readouterr()
    events = _events(captured.out)
    assert [e.kind for e in events] == ["start", "extract", "extract", "end"]
    assert [(e.step, e.total_steps) for e in events] == [(0, 2), (1, 2), (2, 2), (2, 2)]
    assert [e.metrics for e in events[1:3]] == [{"slide": "a", "status": "skipped"}, {"slide": "b", "status": "done"}]
    assert events[0].eta_s is None and events[2].eta_s == 0.0
    assert [load_features(e.path).n_patches > 0 for e in events[1:3]] == [True, True]
    assert events[-1].metrics == {"done": 2, "failed": 0}
    assert "done" in captured.err  # the summary table

    broken = write_not_a_tiff(tmp_path / "c.svs")
    assert main(["extract", str(slides[0]), str(broken), *args, "--events-json"]) == 1  # the exit status as without
    events = _events(capsys.readouterr().out)
    assert [e.metrics for e in events[1:3]] == [{"slide": "a", "status": "skipped"}, {"slide": "c", "status": "failed"}]
    assert events[2].path is None  # a failed slide has no output
    assert events[-1].kind == "end" and events[-1].metrics == {"done": 1, "failed": 1}


def test_evaluate_events_json_and_final_head(cohort, tmp_path, capsys):  # noqa: F811
    tmp, feats, model = cohort
    ckpt = save_checkpoint(model, tmp_path / "care", encoder="stain-texture")
    out = tmp_path / "ev"
    assert main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                 "--folds", "3", "--final-head", "--events-json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    events = _events(captured.out)
    assert [e.kind for e in events] == ["start"] + ["encode"] * 20 + ["validate"] * 3 + ["end"]
    assert [e.step for e in events[:21]] == list(range(21)) and {e.total_steps for e in events[:21]} == {20}
    saved = json.loads((out / "results.json").read_text())
    validate = events[21:24]
    assert [(e.epoch, e.step, e.total_steps) for e in validate] == [(0, 1, 3), (1, 2, 3), (2, 3, 3)]
    assert [e.metrics for e in validate] == [f["metrics"] for f in saved["folds"]]
    means = {k: v["mean"] for k, v in saved["summary"].items()}
    end = events[-1]
    assert end.metrics == means and end.path == str(out / "heads" / "labels_lr_slide_all.safetensors")
    assert saved["final_head"] == end.path and "| lr / slide |" in captured.err

    head = load_head(end.path)
    assert head.name == "labels_lr_slide_all" and head.metrics["cv"] == means and head.metrics["n_samples"] == 20
    fold_c = sorted(f["params"]["C"] for f in saved["folds"])
    assert head.metrics["hyperparameters"]["C"] == head.params["C"] == fold_c[1]  # the median of 3 folds
    assert head.model_sha256 == saved["model_sha256"] and head.encoder == "stain-texture"
    pred = head.predict(load_checkpoint(ckpt).encode(load_features(feats / "s01.h5")))
    assert pred.slide_proba.shape == (2,) and np.isclose(pred.slide_proba.sum(), 1.0)


@pytest.mark.parametrize("protocol, labels, val, param, expected", [
    ("knn", "labels.csv", False, "k", 5),  # the no-validation default: odd(sqrt(20)) in [3, 13]
    ("survival", "surv.csv", True, "penalizer", "median"),
])
def test_final_head_hyperparameters(cohort, tmp_path, protocol, labels, val, param, expected):  # noqa: F811
    tmp, feats, _ = cohort
    r = evaluate(tmp / labels, [feats], protocol=protocol, input="mean", out_dir=tmp_path, n_folds=3, val=val,
                 final_head=True)
    head = load_head(r["final_head"])
    if expected == "median":
        expected = sorted(f["params"][param] for f in r["folds"])[1]
    assert head.params[param] == expected and r["final_head"] in r["written"]
    assert head.metrics["hyperparameters"]["chosen_by"] == ("the median choice of 3 folds" if val else
                                                            "the no-validation default")


def test_final_head_of_a_region_classifier(cohort, tmp_path):  # noqa: F811
    tmp, feats, model = cohort
    polys = {f"s{i:02d}": [(box(0, 0, 5 * 512, 8 * 512), "tumour"), (box(5 * 512, 0, 10 * 512, 8 * 512), "stroma")]
             for i in range(20)}
    r = evaluate(tmp / "labels.csv", [feats], model=model, protocol="knn", out_dir=tmp_path, annotations=polys,
                 n_folds=3, final_head=True)
    head = load_head(r["final_head"])
    assert head.name == "labels_region_region_all" and head.input == "region" and head.classes == ("stroma", "tumour")
    assert head.kind == "knn" and head.metrics["n_samples"] == r["n_samples"] == len(head.arrays["train_y"])
    pred = head.predict(model.encode(load_features(feats / "s01.h5")))
    assert pred.region_proba.shape[1] == 2 and np.allclose(pred.region_proba.sum(1), 1.0)


def test_final_head_with_abmil_is_refused_before_any_work(cohort, tmp_path, capsys):  # noqa: F811
    tmp, feats, _ = cohort
    assert main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--protocol", "abmil",
                 "--input", "mean", "--final-head", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("care evaluate: error: --final-head is for lr, knn, survival and region classifiers; "
                          "protocol 'abmil'") and err.count("\n") == 1
    assert not (tmp_path / "ev").exists()


def _refusal(exc_type, call) -> str:
    with pytest.raises(exc_type) as info:
        call()
    return str(info.value)


def test_check_evaluate_inputs_reads_no_feature_values(cohort, monkeypatch):  # noqa: F811
    tmp, feats, model = cohort
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("a feature array was read"))
    table, folds = check_evaluate_inputs(tmp / "labels.csv", [feats], protocol="lr", n_folds=5, val=True, model=model)
    assert len(table) == 20 and len(folds) == 5


def test_check_evaluate_inputs_refusals(cohort, tmp_path):  # noqa: F811
    tmp, feats, model = cohort
    check = dict(protocol="lr", n_folds=5, val=True)
    extra = tmp_path / "extra.csv"
    extra.write_text((tmp / "labels.csv").read_text() + "zz,A,p99\n")
    assert _refusal(InvalidInputError, lambda: check_evaluate_inputs(extra, [feats], **check)).startswith(
        f"labels table {str(extra)!r}: no feature file for slide(s) zz; extract them")

    few = tmp_path / "few.csv"
    few.write_text("slide,label\n" + "".join(f"s{i:02d},{'AB'[i % 2]}\n" for i in range(4)))
    assert _refusal(InvalidInputError, lambda: check_evaluate_inputs(few, [feats], **check)).startswith(
        f"labels table {str(few)!r} has 4 patient(s), fewer than 5 folds")

    mixed = tmp_path / "mixed"
    shutil.copytree(feats, mixed)
    pf = load_features(mixed / "s03.h5")
    PatchFeatures(pf.features, pf.coords, 512, mpp=0.5, patch_px=512, encoder="uni_v2").save(mixed / "s03.h5")
    assert _refusal(InvalidInputError, lambda: check_evaluate_inputs(tmp / "labels.csv", [mixed], **check)) == (
        "the feature files mix patch encoders 'stain-texture' (s00.h5), 'uni_v2' (s03.h5); use one encoder per cohort")

    other = load_checkpoint(save_checkpoint(model, tmp_path / "care", encoder="uni_v2"))
    assert _refusal(FeatureMismatchError, lambda: check_evaluate_inputs(tmp / "labels.csv", [feats], model=other,
                                                                       **check)).startswith(
        f"{feats / 's00.h5'}: features come from encoder 'stain-texture' but 'uni_v2' is required")
    wide = CARE.from_seed(0, **{**SMALL, "input_dim": 16})  # an untrained CARE: its input dim is checked
    assert "features are 8-d (encoder 'stain-texture') but the model expects 16-d" in _refusal(
        FeatureMismatchError, lambda: check_evaluate_inputs(tmp / "labels.csv", [feats], model=wide, **check))
