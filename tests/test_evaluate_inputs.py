"""The one pre-flight check of a labelled cohort (check_evaluate_inputs): what the CLI takes (a features folder, a
checkpoint path), refusals named before any slide is encoded, annotation files and fine-tuning overrides checked
first, and one run per output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from care_core.cli import main
from care_core.errors import AnnotationFileError, FeatureMismatchError, InvalidInputError, TrainingConfigError
from care_core.evaluate import check_evaluate_inputs
from care_core.features import PatchFeatures
from care_core.model import CARE, save_checkpoint

SMALL = dict(input_dim=8, embed_dim=16, heads=2, spf_dim=8, k=4)


def _features(path, dim=8, encoder="stain-texture", seed=0):
    cols, rows = np.meshgrid(np.arange(6), np.arange(5))
    coords = np.stack([cols.ravel(), rows.ravel()], 1) * 512
    f = np.random.default_rng(seed).standard_normal((len(coords), dim)).astype(np.float32)
    PatchFeatures(f, coords, 512, mpp=0.5, patch_px=512, encoder=encoder).save(path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """10 slides (8-d stain-texture features), one per patient, classes A/B; a small CARE checkpoint."""
    tmp = tmp_path_factory.mktemp("inputs")
    feats = tmp / "features"
    feats.mkdir()
    for i in range(10):
        _features(feats / f"s{i}.h5", seed=i)
    (tmp / "labels.csv").write_text("slide,label\n" + "".join(f"s{i},{'AB'[i % 2]}\n" for i in range(10)))
    ckpt = save_checkpoint(CARE.from_seed(0, **SMALL), tmp / "care", encoder="stain-texture", feature_mpp=0.5,
                           patch_px=512)
    return tmp, feats, ckpt


def _copy_with(feats, tmp_path, odd):
    """A features folder: links to the cohort's files, slide s4 replaced by ``odd(path)``."""
    folder = tmp_path / "features"
    folder.mkdir()
    for p in feats.iterdir():
        (folder / p.name).symlink_to(p)
    (folder / "s4.h5").unlink()
    odd(folder / "s4.h5")
    return folder


def _cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_takes_a_features_folder_and_a_checkpoint_path(cohort):
    tmp, feats, ckpt = cohort
    table, folds = check_evaluate_inputs(str(tmp / "labels.csv"), str(feats), protocol="lr", n_folds=3, model=str(ckpt))
    assert len(table) == 10 and len(folds) == 3
    table, _ = check_evaluate_inputs(tmp / "labels.csv", feats, protocol="lr", n_folds=3, model=ckpt.with_suffix(".json"))
    assert table.classes == ("A", "B")


@pytest.mark.parametrize(("odd", "match"), [
    (lambda p: _features(p, dim=12), r"feature file '.*s4.h5' holds 12-d features but 9 other file\(s\) hold 8-d"),
    (lambda p: _features(p, encoder="uni_v2"), r"mix patch encoders 'stain-texture' \(s0.h5\), 'uni_v2' \(s4.h5\)"),
])
def test_a_file_of_another_width_or_encoder_is_named_before_encoding(cohort, tmp_path, capsys, odd, match):
    tmp, feats, ckpt = cohort
    folder = _copy_with(feats, tmp_path, odd)
    with pytest.raises(InvalidInputError, match=match):
        check_evaluate_inputs(tmp / "labels.csv", folder, n_folds=3)  # without a model too
    for cmd in (["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(folder), "--model", str(ckpt),
                 "--folds", "3", "--out", str(tmp_path / "out")],
                ["predict", str(folder), "--model", str(ckpt), "--head", str(tmp_path / "nohead"),
                 "--out", str(tmp_path / "out")]):
        code, err = _cli(cmd, capsys)
        assert code == 2 and not (tmp_path / "out").exists(), err
    head = _head(cohort, tmp_path)
    capsys.readouterr()
    code, err = _cli(["predict", str(folder), "--model", str(ckpt), "--head", str(head), "--out", str(tmp_path / "out")],
                     capsys)
    assert code == 2 and not (tmp_path / "out").exists()
    assert len(err.strip().splitlines()) == 1 and "s4.h5" in err


def _head(cohort, tmp_path):
    tmp, feats, ckpt = cohort
    out = tmp_path / "ev"
    assert main(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                 "--folds", "3", "--out", str(out)]) == 0
    return out / "heads" / "labels_lr_slide_fold0"


def test_features_that_do_not_fit_the_checkpoint_are_refused_from_its_path(cohort, tmp_path):
    tmp, feats, _ = cohort
    other = save_checkpoint(CARE.from_seed(0, **{**SMALL, "input_dim": 12}), tmp_path / "wide", encoder="stain-texture")
    with pytest.raises(FeatureMismatchError, match=r"s0.h5: features are 8-d .* expects 12-d"):
        check_evaluate_inputs(tmp / "labels.csv", feats, n_folds=3, model=other)


@pytest.mark.parametrize(("name", "text", "match"), [
    ("s3.geojson", '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [5, 5], [0, 0]]]}}',
     "feature 0 has a NaN or infinite coordinate"),
    ("s3.geojson", '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}, '
     '"properties": {"classification": 5}}]', "feature 0 has classification 5; a classification is a class name"),
    ("s3.xml", '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="t"><Coordinates>'
     '<Coordinate Order="abc" X="1" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     r"annotation 0 has a bad coordinate \(Order='abc' is not a number\)"),
])
def test_care_evaluate_checks_annotation_files_before_encoding(cohort, tmp_path, capsys, name, text, match):
    tmp, feats, ckpt = cohort
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / name).write_text(text)
    code, err = _cli(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                      "--annotations", str(folder), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and not (tmp_path / "out").exists(), err  # refused before the output folder was made
    assert len(err.strip().splitlines()) == 1 and f"{folder / name}: " in err
    with pytest.raises(AnnotationFileError, match=match):
        check_evaluate_inputs(tmp / "labels.csv", feats, model=ckpt, annotations=folder)


@pytest.mark.parametrize(("text", "match"), [
    ("epochs: abc\n", r"fine-tuning config '.*ft.yaml': epochs='abc' must be a number"),
    ("lr: 0.001\nlabels: other.csv\n", r"\['labels'\] are set by care evaluate for each fold; remove them"),
    ("epochs: [1\n", r"ft\.yaml.* valid (yaml|YAML)"),
])
def test_a_bad_finetune_config_is_named_before_encoding(cohort, tmp_path, capsys, text, match):
    tmp, feats, ckpt = cohort
    (tmp_path / "ft.yaml").write_text(text)
    code, err = _cli(["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                      "--protocol", "finetune", "--folds", "3", "--finetune-config", str(tmp_path / "ft.yaml"),
                      "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and not (tmp_path / "out").exists(), err
    with pytest.raises(TrainingConfigError, match=match):
        check_evaluate_inputs(tmp / "labels.csv", feats, protocol="finetune", n_folds=3, model=ckpt,
                              finetune=tmp_path / "ft.yaml")
    with pytest.raises(InvalidInputError, match="are for protocol 'finetune', not 'lr'"):
        check_evaluate_inputs(tmp / "labels.csv", feats, n_folds=3, finetune={"epochs": 2})


def _hold_lock(folder):
    """A second process that holds ``folder``'s lock until killed."""
    code = ("import sys, time; from care_core._atomic import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_one_run_per_output_folder_and_a_killed_holder_is_taken_over(cohort, tmp_path, capsys):
    tmp, feats, ckpt = cohort
    out = tmp_path / "out"
    child = _hold_lock(out)
    try:
        for cmd in (["evaluate", "--labels", str(tmp / "labels.csv"), "--features", str(feats), "--model", str(ckpt),
                     "--folds", "3", "--out", str(out)],
                    ["encode", str(feats / "s0.h5"), "--model", str(ckpt), "--out", str(out)]):
            code, err = _cli(cmd, capsys)
            assert code == 2 and f"output folder {out} is in use by another care {cmd[0]} (process {child.pid}" in err
            assert sorted(p.name for p in out.iterdir()) == [".care.lock"]  # nothing of ours written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert main(["encode", str(feats / "s0.h5"), "--model", str(ckpt), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"s0{s}" for s in
                                                           ("_slide.npy", "_roi.npy", "_regions.csv",
                                                            "_regions.geojson", "_encoding.npz"))


def test_the_fine_tune_trainer_form_takes_either_task(cohort, tmp_path):
    """protocol=None (what `care finetune` passes): a survival table is accepted, the same file checks apply."""
    from care_core.evaluate.inputs import check_inputs

    tmp, feats, ckpt = cohort
    surv = tmp_path / "surv.csv"
    surv.write_text("slide,time,event\n" + "".join(f"s{i},{i + 1},{i % 2}\n" for i in range(10)))
    checked = check_inputs(surv, sorted(feats.glob("*.h5")), protocol=None, n_folds=3, model=ckpt)
    assert checked.table.kind == "survival" and len(checked.folds) == 3 and len(checked.features) == 10
    folder = _copy_with(feats, tmp_path, lambda p: _features(p, dim=12))
    with pytest.raises(InvalidInputError, match=r"s4.h5' holds 12-d features"):
        check_inputs(surv, folder, protocol=None, n_folds=3)
