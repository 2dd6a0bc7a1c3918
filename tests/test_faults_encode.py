"""Faults 1, 2, 5, 6 and 8 in `care encode`: it goes on past bad files, writes each slide's outputs as one set
(a real full disk leaves none of them), checks --out before any work, and prints one line per problem."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import care_core.encode as encode
from care_core.cli import main
from care_core.encode import OUTPUT_SUFFIXES, encode_paths
from care_core.errors import OutputError
from care_core.features import PatchFeatures
from care_core.model import CARE

SMALL = dict(input_dim=16, embed_dim=32, heads=4, spf_dim=16)


def write_features(path, n_cols: int = 8, n_rows: int = 6, dim: int = 16, seed: int = 0, bad=None) -> Path:
    cols, rows = np.meshgrid(np.arange(n_cols), np.arange(n_rows))
    coords = np.stack([cols.ravel(), rows.ravel()], 1) * 512
    feats = np.random.default_rng(seed).standard_normal((len(coords), dim)).astype(np.float32)
    PatchFeatures(feats, coords, 512, mpp=0.5, patch_px=512, encoder="stain-texture").save(path)
    if bad is not None:  # damage a written file the way a broken copy or encoder would
        with h5py.File(path, "r+") as f:
            f["features"][1, 0] = bad
    return path


def _outputs(folder: Path) -> dict[str, list[str]]:
    names = sorted(p.name for p in folder.iterdir())
    return {stem: [n for n in names if n.startswith(stem + "_")] for stem in {n.split("_")[0] for n in names}}


def test_encode_goes_on_past_bad_files_and_exits_1(tmp_path, capsys):
    feats = tmp_path / "f"
    feats.mkdir()
    write_features(feats / "a.h5")
    write_features(feats / "b.h5", bad=np.nan)
    (feats / "c.h5").write_bytes(b"garbage" * 20)
    write_features(feats / "d.h5", dim=24)
    write_features(feats / "e.h5", seed=1)
    out = tmp_path / "out"
    assert main(["encode", str(feats), "--untrained", "0", "--out", str(out)]) == 1
    io = capsys.readouterr()
    lines = io.out.splitlines()
    assert lines[0].startswith("a.h5: a_slide.npy, a_roi.npy")
    assert lines[1] == (f"b.h5: failed: {feats / 'b.h5'}: 1 of 48 patch feature rows hold NaN, Inf or values beyond "
                        "±1e+06 (first bad row 1); these are not usable features: re-extract it")
    assert lines[2].startswith(f"c.h5: failed: '{feats / 'c.h5'}' is not a readable HDF5 file")
    assert lines[3].startswith(f"d.h5: failed: {feats / 'd.h5'}: features are 24-d (encoder 'stain-texture') but the "
                               "model expects 16-d")
    assert lines[4].startswith("e.h5: e_slide.npy")
    assert lines[5] == f"5 feature files (2 encoded, 0 skipped, 3 failed) → {out}"
    assert "note: untrained CARE (random weights, seed 0) of the architecture of the demo checkpoint at input_dim=16" \
        in io.err
    assert "Traceback" not in io.err
    assert _outputs(out) == {s: sorted(f"{s}{suffix}" for suffix in OUTPUT_SUFFIXES) for s in ("a", "e")}


def test_untrained_builds_the_demo_checkpoints_architecture(tmp_path, capsys):
    """Untrained versus demo compares training only: the same architecture (and, for the demo's own encoder and
    width, the same input standardisation); without the demo installed, the released config."""
    from care_core.model import CARE, load_checkpoint, untrained_care
    from care_core.model.checkpoint import DEMO_CHECKPOINT

    demo = load_checkpoint(DEMO_CHECKPOINT)
    write_features(tmp_path / "a.h5", n_cols=3, n_rows=2, dim=768)
    assert main(["encode", str(tmp_path / "a.h5"), "--untrained", "3", "--out", str(tmp_path / "o")]) == 0
    assert "note: untrained CARE (random weights, seed 3) of the architecture of the demo checkpoint at input_dim=768" \
        in capsys.readouterr().err
    assert np.load(tmp_path / "o" / "a_slide.npy").shape == (demo.config.embed_dim,)
    model, how = untrained_care(3, demo.config.input_dim, encoder=demo.checkpoint_meta.encoder)
    assert how == "the architecture of the demo checkpoint"
    assert model.config == demo.config and torch.equal(model.feature_std, demo.feature_std)
    assert not torch.equal(model.proj_in.weight, demo.proj_in.weight)
    released, how = untrained_care(3, 768, like=tmp_path / "missing")
    assert how == "the released config" and released.config == CARE(input_dim=768).config


@pytest.mark.parametrize("precheck", [True, False])
def test_full_disk_leaves_no_partial_output_set(tmp_path, small_disk, monkeypatch, precheck):
    if not precheck:  # the disk fills between the check and the writes: the npz write hits a real ENOSPC
        monkeypatch.setattr("care_core._atomic.check_free_space", lambda *a: None)
    src = write_features(tmp_path / "big.h5", n_cols=80, n_rows=50)
    (small_disk / "filler").write_bytes(b"x" * 900_000)
    with pytest.raises(OutputError, match=rf"^disk full: {small_disk} has .* free but writing "
                                          rf"{re.escape(str(small_disk / 'big_slide.npy'))} needs about"):
        encode_paths([src], CARE.from_seed(0, **SMALL), small_disk)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_full_disk_on_the_command_line_is_one_line(tmp_path, small_disk, capsys):
    src = write_features(tmp_path / "big.h5")
    (small_disk / "filler").write_bytes(b"x" * 1_000_000)  # leaves < 64 kB
    assert main(["encode", str(src), "--untrained", "0", "--out", str(small_disk)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"care encode: error: disk full: {small_disk} has ") and "Traceback" not in "".join(err)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_bad_out_fails_before_the_model_is_built(tmp_path, capsys, monkeypatch, where):
    src = write_features(tmp_path / "a.h5")
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr(encode, "resolve_model", lambda m: pytest.fail("model built before --out was checked"))
    out = afile if where == "file" else afile / "sub"
    assert main(["encode", str(src), "--model", str(tmp_path / "m.safetensors"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"care encode: error: output folder {out} ") and err.count("\n") == 1


def test_warnings_are_one_line_without_source(tmp_path, capsys):
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as f:  # a TRIDENT-style file: no µm/px stored, magnification on coords
        f["features"] = np.ones((4, 16), np.float32)
        f["coords"] = np.array([[0, 0], [512, 0], [0, 512], [512, 512]])
        f["coords"].attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
                                  "target_magnification": 20})
    assert main(["encode", str(path), "--untrained", "0", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"care encode: warning: {path}: no µm/px stored; taking 10 / target_magnification = 0.5 µm/px" in err
    assert "warnings.warn(" not in err and "UserWarning" not in err


@pytest.mark.parametrize(("sig", "code", "said"), [
    (signal.SIGINT, 130, "interrupted"),
    pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM)", marks=pytest.mark.slow),  # same path, another signal
])
def test_signal_stops_cleanly_and_every_slide_has_all_outputs_or_none(tmp_path, sig, code, said):
    feats = tmp_path / "f"
    feats.mkdir()
    for i in range(20):
        write_features(feats / f"s{i:02d}.h5", n_cols=10, n_rows=8, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from care_core.cli import main; sys.exit(main())",
           "encode", str(feats), "--untrained", "0", "--out", str(out)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert child.stdout.readline().startswith("s00.h5: s00_slide.npy")  # running, outputs being written
    child.send_signal(sig)
    rest, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert err.strip().splitlines()[-1] == f"care encode: {said}; partial outputs removed (finished ones are kept)"
    assert "Traceback" not in err
    sets = _outputs(out)
    assert 1 <= len(sets) < 20 and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert all(len(names) == len(OUTPUT_SUFFIXES) for names in sets.values()), sets


def test_rerun_skips_up_to_date_slides_and_redoes_changed_ones(tmp_path, capsys):
    from care_core.encode import iter_encode_paths

    feats, out = tmp_path / "f", tmp_path / "out"
    feats.mkdir()
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        write_features(feats / f"{name}.h5", seed=seed)
    model = CARE.from_seed(0, **SMALL)

    def run(m):
        return [(r.path.name, bool(r.written), r.note) for r in iter_encode_paths([feats], m, out, resume=True)]

    assert run(model) == [("a.h5", True, ""), ("b.h5", True, ""), ("c.h5", True, "")]
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    write_features(feats / "b.h5", seed=5)  # new features for b
    (out / "c_roi.npy").unlink()  # an incomplete set for c
    assert run(model) == [("a.h5", False, "skipped (outputs up to date)"), ("b.h5", True, ""), ("c.h5", True, "")]
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamp.items() if n.startswith("a_"))
    assert [w for _, w, _ in run(CARE.from_seed(1, **SMALL))] == [True, True, True]  # another model
    argv = ["encode", str(feats / "a.h5"), "--untrained", "0", "--out", str(tmp_path / "o2")]
    assert main(argv) == 0 and main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["a.h5: skipped (outputs up to date)",
                                                         f"1 feature files (0 encoded, 1 skipped, 0 failed) → {tmp_path / 'o2'}"]
    assert main([*argv, "--redo"]) == 0 and "(1 encoded, 0 skipped" in capsys.readouterr().out
