"""Fault 4: every checkpoint fault (edited config, mismatched or truncated tensors, ill-typed JSON) is one
CheckpointError naming the file; the hash covers the config."""

from __future__ import annotations

import json
import re

import pytest

from care_core.errors import CheckpointError
from care_core.model import CARE, load_checkpoint, save_checkpoint
from care_core.model.pair import meta_sha256
from pair_edit import edit_json

SMALL = dict(input_dim=16, embed_dim=32, heads=4, spf_dim=16, k=4)


@pytest.fixture
def ckpt(tmp_path):
    path = save_checkpoint(CARE.from_seed(0, **SMALL), tmp_path / "m", encoder="stain-texture", feature_mpp=0.5,
                           patch_px=512)
    return path, tmp_path / "m.json"


@pytest.mark.parametrize("change", [
    lambda r: r["config"].update(input_dim=32),
    lambda r: r["config"].update(k=8),
    lambda r: r.update(input_dim=32),
    lambda r: r.update(encoder="uni_v2"),
    lambda r: r.update(feature_mpp=0.25),
])
def test_edited_config_fails_the_hash(ckpt, change):
    path, json_path = ckpt
    edit_json(json_path, change)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(json_path))}: its fields do not match its sha256 "
                                              "\\(edited after saving\\?\\)"):
        load_checkpoint(path)


@pytest.mark.parametrize(("change", "said"), [
    (lambda r: r.update(patch_px="abc"), "patch_px='abc' is not a positive integer or null"),
    (lambda r: r.update(feature_mpp=-1), "feature_mpp=-1 is not a positive number"),
    (lambda r: r.update(config=[16, 32]), "'config' is a list, not an object of CARE settings"),
    (lambda r: r["config"].update(k="8"), "config k='8' should be of type int"),
    (lambda r: r["config"].update(fixed_regions=1), "config fixed_regions=1 should be of type bool"),
    (lambda r: r.update(extra="x"), "extra='x' is not an object"),
])
def test_ill_typed_fields_name_the_file_and_the_field(ckpt, change, said):
    path, json_path = ckpt
    edit_json(json_path, change, resign=True)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(json_path))}: {re.escape(said)}"):
        load_checkpoint(path)


def test_json_that_is_not_an_object(ckpt):
    path, json_path = ckpt
    json_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(json_path))} holds a JSON list, not a CARE"):
        load_checkpoint(path)


def test_truncated_tensor_file(ckpt):
    path, json_path = ckpt
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))} has sha256 .* one is corrupt \(truncated copy\?\)"):
        load_checkpoint(path)
    edit_json(json_path, lambda r: r.update(tensors_sha256=__import__("hashlib").sha256(path.read_bytes()).hexdigest()),
          resign=True)  # even a file whose hashes agree cannot be read
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))} is not a readable safetensors file"):
        load_checkpoint(path)


def test_tensors_of_another_shape(ckpt, tmp_path):
    path, json_path = ckpt
    other = save_checkpoint(CARE.from_seed(0, **{**SMALL, "embed_dim": 64}), tmp_path / "other")
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="has sha256 .* do not belong together"):
        load_checkpoint(path)
    edit_json(json_path, lambda r: r.update(tensors_sha256=json.loads((tmp_path / "other.json").read_text())["tensors_sha256"]),
          resign=True)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: tensor shapes do not fit its config \(.*size mismatch"):
        load_checkpoint(path)


def test_older_format_still_loads_with_a_warning(ckpt):
    path, json_path = ckpt
    edit_json(json_path, lambda r: (r.update(format="care-checkpoint/1"), r.pop("sha256")))
    with pytest.warns(UserWarning, match=r"older checkpoint format 'care-checkpoint/1', whose hash does not cover its fields"):
        model = load_checkpoint(path)
    assert model.config.k == 4 and model.checkpoint_meta.sha256 == ""


def test_a_json_without_its_hash_or_without_the_tensors_hash_is_refused(ckpt):
    path, json_path = ckpt
    original = json_path.read_text()
    edit_json(json_path, lambda r: r.pop("sha256"))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(json_path))} has no sha256 over its fields, so an edit "
                                              "would go unnoticed"):
        load_checkpoint(path)
    json_path.write_text(original)
    edit_json(json_path, lambda r: (r.update(format="care-checkpoint/1"), r.pop("sha256"), r.pop("tensors_sha256")))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(json_path))} records no sha256 of its tensors "
                                              r"\(tensors_sha256\), so any tensors would load"):
        load_checkpoint(path)
    json_path.write_text(original)
    edit_json(json_path, lambda r: r.update(note="added by hand"))  # a field the hash did not see
    with pytest.raises(CheckpointError, match="its fields do not match its sha256"):
        load_checkpoint(path)


def test_non_finite_tensors_are_refused_even_when_the_hashes_agree(ckpt):
    import torch
    from safetensors.torch import load_file, save_file

    from care_core.model.pair import file_sha256

    path, json_path = ckpt
    state = load_file(str(path))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, str(path))
    edit_json(json_path, lambda r: r.update(tensors_sha256=file_sha256(path)), resign=True)  # a NaN run saved as such
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: array {name!r} holds NaN or Inf values"):
        load_checkpoint(path)
    assert torch.isnan(load_file(str(path))[name]).all()  # the file is left as it was


def test_the_shipped_demo_checkpoint_loads_under_the_rule():
    from care_core.model.checkpoint import DEMO_CHECKPOINT

    raw = json.loads(DEMO_CHECKPOINT.with_suffix(".json").read_text())
    assert raw["sha256"] == meta_sha256(raw)
    assert load_checkpoint(DEMO_CHECKPOINT).checkpoint_meta.sha256 == raw["sha256"]
