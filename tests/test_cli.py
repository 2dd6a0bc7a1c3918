"""The `care` command end to end on a small synthetic slide: synth → info → extract → encode."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from care_core.cli import main
from care_core.model.checkpoint import DEMO_CHECKPOINT, read_checkpoint_meta


def test_info_prints_levels_mpp_tissue_and_patches(small_sample, capsys):
    assert main(["info", str(small_sample.slide_path)]) == 0
    out = capsys.readouterr().out
    assert "vendor        aperio" in out
    assert "3072 x 2048 px (level 0)" in out
    assert "mpp           0.5" in out
    assert "tissue area" in out and "mm²" in out
    assert " of 512 px at 0.5 µm/px (512 px at level 0, read from level 0)" in out


def test_info_reports_missing_file_as_one_error_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.svs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("care info: error: ") and "nope.svs" in err


def test_synth_extract_encode(tmp_path, capsys):
    slide = tmp_path / "s.svs"
    assert main(["synth", str(slide), "--width-px", "2048", "--height-px", "1536", "--seed", "1"]) == 0
    assert (tmp_path / "s_mask.tif").is_file()

    feats = tmp_path / "features"
    assert main(["extract", str(slide), "--out", str(feats), "--workers", "1", "--patch-px", "256"]) == 0
    out = capsys.readouterr().out
    assert "done" in out
    with h5py.File(feats / "s.h5") as f:
        n, d = f["features"].shape
        assert d == 230 and n > 10
        assert f["coords"].attrs["patch_size_level0"] == 256

    enc = tmp_path / "enc"
    assert main(["encode", str(feats), "--untrained", "0", "--out", str(enc)]) == 0
    width = read_checkpoint_meta(DEMO_CHECKPOINT).config["embed_dim"]  # untrained: the demo checkpoint's architecture
    assert np.load(enc / "s_slide.npy").shape == (width,)
    geo = json.loads((enc / "s_regions.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) >= 1


def test_encode_without_a_model_runs_the_demo_checkpoint_and_says_so(tmp_path, capsys):
    from care_core.features import PatchFeatures

    PatchFeatures(np.zeros((4, 8), np.float32), [[0, 0], [256, 0], [0, 256], [256, 256]], 256).save(tmp_path / "a.h5")
    code = main(["encode", str(tmp_path / "a.h5"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 1  # 8-d features do not fit the demo's 230-d stain-texture input
    assert "no --model given: the shipped demo CARE checkpoint runs" in captured.err
    assert "features are 8-d" in captured.out and "expects 230-d" in captured.out


def test_extract_reports_failed_slide_and_exits_nonzero(tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide")
    assert main(["extract", str(bad), "--out", str(tmp_path / "f"), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "bad" in out
    assert not list((tmp_path / "f").glob("*.h5"))


@pytest.mark.parametrize("argv", [["extract", "--out", "x"], ["encode", "f.h5"]])
def test_bad_usage_exits_with_usage_error(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_unknown_encoder_is_one_error_line(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "s.svs"), "--encoder", "uni3", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("care extract: error: unknown encoder 'uni3'; choose one of [") and "Traceback" not in err


def test_truncated_slide_is_one_line_without_tifffile_log(tmp_path):
    from slide_factory import tissue_image, truncate, write_svs

    slide = truncate(write_svs(tmp_path / "t.svs", tissue_image(2048, 1536, [(1000, 760, 600)], seed=1), mpp=0.5,
                               n_levels=2))
    import subprocess
    import sys

    # a real process: pytest's log capture would hide the line tifffile logs about the broken page chain
    done = subprocess.run([sys.executable, "-c", "import sys; from care_core.cli import main; sys.exit(main())",
                           "info", str(slide)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"care info: error: {slide}: file is truncated"), done.stderr


@pytest.mark.parametrize(("argv", "said"), [
    (["extract", "s.svs", "--out", "o", "--target-mpp", "0"], "argument --target-mpp: 0 is out of range (must be > 0)"),
    (["extract", "s.svs", "--out", "o", "--mpp", "inf"], "argument --mpp: inf is not a finite number"),
    (["extract", "s.svs", "--out", "o", "--min-tissue", "1.5"],
     "argument --min-tissue: 1.5 is out of range (must be >= 0 and <= 1)"),
    (["extract", "s.svs", "--out", "o", "--workers", "2.5"], "argument --workers: '2.5' is not an integer"),
    (["info", "s.svs", "--patch-px", "-5"], "argument --patch-px: -5 is out of range (must be > 0)"),
    (["synth", "s.svs", "--width-px", "0"], "argument --width-px: 0 is out of range (must be > 0)"),
])
def test_bad_numbers_are_usage_errors(argv, said, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(said)


def test_synth_checks_its_output_folder_first(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["synth", str(tmp_path / "afile" / "s.svs"), "--width-px", "512", "--height-px", "512"]) == 2
    err = capsys.readouterr().err
    assert err == f"care synth: error: output folder {tmp_path / 'afile'} is a file, not a folder; choose another output folder\n"


def test_predict_with_the_demo_checkpoint_applies_the_demo_heads_without_flags(small_sample, tmp_path, capsys):
    """`care predict FEATURES --out O`: the demo checkpoint and its heads (a region classifier of the compartments and
    a TLS-signature slide head) with no other flag; a model of one's own needs its own heads."""
    import csv

    from care_core.model import demo_heads

    assert [h.name for h in demo_heads()] == ["care_demo_compartments", "care_demo_tls_signature"]
    feats = tmp_path / "features"
    assert main(["extract", str(small_sample.slide_path), "--out", str(feats), "--workers", "1"]) == 0
    assert main(["predict", str(feats), "--out", str(tmp_path / "p")]) == 0
    with open(tmp_path / "p" / "slide_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["care_demo_tls_signature class"] in ("high", "low")
    assert rows[0]["care_demo_compartments class"] in ("tumour", "stroma", "lymphocytes", "fat", "necrosis")
    with pytest.raises(SystemExit, match="give --head"):
        main(["predict", str(feats), "--untrained", "0", "--out", str(tmp_path / "q")])
