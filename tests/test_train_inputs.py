"""The Train widget's plan of a job, without Qt: features the CARE widget already made are linked, not extracted;
typed labels become a labels table; a layer's class drops napari's suffix."""

from __future__ import annotations

import json
import os

import pytest
from drain import drain

from care_core.errors import InvalidInputError
from napari_care._train_inputs import STAGE1, JobInputs, labels_csv, layer_class, plan_job


def test_features_the_window_made_are_linked_and_the_rest_extracted(small_sample, tmp_path, monkeypatch):
    from care_core.model.checkpoint import DEMO_CHECKPOINT
    from care_core.pipeline import ResultCache, iter_slide_pipeline

    monkeypatch.setenv("NAPARI_CARE_CACHE", str(tmp_path / "cache"))
    drain(iter_slide_pipeline(small_sample.slide_path, model=DEMO_CHECKPOINT, cache=ResultCache.default()))  # Run CARE
    other = tmp_path / "other.svs"
    other.write_bytes(b"")  # never read: it has no features, so it is planned for extraction
    inputs = JobInputs(job=STAGE1, run_dir=tmp_path / "run", model=DEMO_CHECKPOINT,
                       slides={"small": small_sample.slide_path, "other": other}, hyper={"epochs": 1})
    plan = plan_job(inputs)
    features = tmp_path / "cache" / "features" / "stain-texture-0.5um-512px"
    (cached,) = plan.link
    assert cached.parent == ResultCache.default().slide_dir(small_sample.slide_path) and plan.link[cached] == features / "small.h5"
    assert plan.extract == [other] and plan.commands[0][:2] == ["extract", str(other)]
    assert plan.commands[0][plan.commands[0].index("--out") + 1] == str(features)
    assert plan.commands[-1][:3] == ["pretrain", "--events-json", "--out"]
    assert not (tmp_path / "run").exists()  # planning writes nothing
    plan.write()
    assert os.path.samefile(features / "small.h5", cached)  # a hard link: no copy of the features
    assert (tmp_path / "run" / "features.txt").read_text().split() == [str(features / "other.h5"), str(features / "small.h5")]
    assert json.loads((tmp_path / "run" / "pretrain.json").read_text())["init"] == str(DEMO_CHECKPOINT)


def test_typed_labels_make_a_class_or_survival_table():
    assert labels_csv([("a", "x", "", ""), ("b", "", "", ""), ("c", "y", "", "")]) == "slide,label\na,x\nc,y\n"
    assert labels_csv([("a", "", "3.5", "1"), ("b", "", "7", "0")]) == "slide,time,event\na,3.5,1\nb,7,0\n"
    with pytest.raises(InvalidInputError, match="^no labels: type a label"):
        labels_csv([("a", "", "", "")])


def test_a_layer_class_drops_napari_suffix_of_repeated_names():
    assert [layer_class(n) for n in ("tumour", "tumour [1]", "tumour [12]", "a [b]")] == ["tumour", "tumour", "tumour", "a [b]"]
