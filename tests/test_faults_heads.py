"""Heads follow the rule of every JSON + tensors pair: an edited field (classes, input_dim), a JSON without its hash
and NaN / Inf arrays are one HeadError line naming the file; `care predict` stops before writing anything."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from care_core.cli import main
from care_core.errors import HeadError
from care_core.evaluate import Head, load_head
from care_core.features import PatchFeatures
from care_core.model import CARE, save_checkpoint
from care_core.model.pair import file_sha256, meta_sha256
from pair_edit import edit_json

SMALL = dict(input_dim=4, embed_dim=8, heads=2, spf_dim=4, k=2)


@pytest.fixture
def head(tmp_path):
    h = Head("tumour", "linear", "slide", ("normal", "tumour"),
             {"coef": np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0]]), "intercept": np.zeros(2)}, params={"C": 2.0},
             metrics={"auroc": float("nan")}, encoder="stain-texture")
    h.save(tmp_path / "h")
    return tmp_path / "h.safetensors", tmp_path / "h.json"


def test_a_saved_head_is_sealed_and_loads(head):
    tensors, json_path = head
    raw = json.loads(json_path.read_text())
    assert raw["format"] == "care-head/2" and raw["sha256"] == meta_sha256(raw)
    assert raw["tensors_sha256"] == file_sha256(tensors)
    assert load_head(tensors).classes == ("normal", "tumour")


@pytest.mark.parametrize("change", [
    lambda r: r.update(classes=["tumour", "normal"]),  # swapped: every prediction would be reversed
    lambda r: r.update(input_dim=8),
    lambda r: r["params"].update(C=9.0),
    lambda r: r.update(note="added"),
])
def test_edited_fields_are_refused(head, change):
    tensors, json_path = head
    edit_json(json_path, change)
    with pytest.raises(HeadError, match=rf"^{re.escape(str(json_path))}: its fields do not match its sha256 "
                                        r"\(edited after saving\?\); restore the original file or re-save the head$"):
        load_head(tensors)


def test_fields_that_disagree_with_the_arrays_are_refused_even_when_resigned(head):
    tensors, json_path = head
    edit_json(json_path, lambda r: r.update(input_dim=8), resign=True)
    with pytest.raises(HeadError, match=r"says input_dim=8 but its arrays take 4-d inputs"):
        load_head(tensors)
    edit_json(json_path, lambda r: r.update(input_dim=4, classes=["a", "b", "c"]), resign=True)
    with pytest.raises(HeadError, match=r"names 3 classes but its coefficients score 2"):
        load_head(tensors)


def test_a_head_without_hashes(head):
    tensors, json_path = head
    original = json_path.read_text()
    edit_json(json_path, lambda r: r.pop("sha256"))
    with pytest.raises(HeadError, match=rf"^{re.escape(str(json_path))} has no sha256 over its fields"):
        load_head(tensors)
    json_path.write_text(original)
    edit_json(json_path, lambda r: (r.update(format="care-head/1"), r.pop("sha256"), r.pop("tensors_sha256")))
    with pytest.raises(HeadError, match=r"records no sha256 of its tensors \(tensors_sha256\), so any tensors would "
                                        "load; re-save the head"):
        load_head(tensors)
    json_path.write_text(original)
    edit_json(json_path, lambda r: (r.update(format="care-head/1"), r.pop("sha256")))  # a head of the older format
    with pytest.warns(UserWarning, match="older head format 'care-head/1', whose hash does not cover its fields"):
        assert load_head(tensors).input_dim == 4


def test_nan_coefficients_are_refused_and_predict_writes_nothing(head, tmp_path, capsys):
    tensors, json_path = head
    arrays = load_file(str(tensors))
    arrays["coef"][1, 0] = np.nan
    save_file(arrays, str(tensors))
    edit_json(json_path, lambda r: r.update(tensors_sha256=file_sha256(tensors)), resign=True)
    with pytest.raises(HeadError, match=rf"^{re.escape(str(tensors))}: array 'coef' holds NaN or Inf values"):
        load_head(tensors)
    ckpt = save_checkpoint(CARE.from_seed(0, **SMALL), tmp_path / "care", encoder="stain-texture")
    coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 512
    PatchFeatures(np.ones((12, 4), np.float32), coords, 512, encoder="stain-texture").save(tmp_path / "s.h5")
    assert main(["predict", str(tmp_path / "s.h5"), "--model", str(ckpt), "--head", str(tensors),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds NaN or Inf values" in err and not (tmp_path / "out").exists()
