"""Cohort extraction on a real 2-worker dask LocalCluster: good, unreadable and tissue-free slides; resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from slide_factory import tissue_image, write_not_a_tiff, write_svs

from care_core.features import (
    CohortRow,
    CohortSummary,
    SlideEntry,
    format_summary,
    load_features,
    read_slide_list_csv,
    run_cohort,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    good = write_svs(root / "good.svs", tissue_image(2048, 1536, [(1000, 760, 600)], seed=1), mpp=0.5, n_levels=2)
    blank = write_svs(root / "blank.svs", np.full((1024, 1024, 3), 242, np.uint8), mpp=0.5, n_levels=2)
    broken = write_not_a_tiff(root / "broken.svs")
    return root, [good, broken, blank]


def test_cohort_runs_reports_failures_and_resumes(cohort):
    root, slides = cohort
    out = root / "features"
    seen: list[CohortRow] = []
    with pytest.warns(UserWarning, match="blank.svs: no tissue found, wrote an empty feature file"):
        summary = run_cohort(slides, out, encoder="stain-texture", n_workers=2, batch_size=8, device="cpu",
                             progress=seen.append)
    good, broken, blank = summary.rows
    assert [r.status for r in summary.rows] == ["done", "failed", "empty"] and not summary.ok
    assert summary.counts == {"done": 1, "skipped": 0, "failed": 1, "empty": 1}
    assert sorted(r.slide for r in seen) == sorted(str(s) for s in slides)
    assert broken.error.startswith("SlideOpenError: ") and "broken.svs" in broken.error and broken.output == ""

    pf = load_features(out / "good.h5")
    assert good.n_patches == pf.n_patches > 0 and pf.dim == 230 and pf.encoder == "stain-texture"
    assert (pf.mpp, pf.patch_px, pf.patch_size_level0) == (0.5, 512, 512)
    empty = load_features(out / "blank.h5")
    assert empty.features.shape == (0, 230) and blank.n_patches == 0 and "no" in blank.error.lower()
    assert sorted(p.name for p in out.iterdir()) == ["blank.h5", "extract_summary.csv", "good.h5"]  # no temp files
    import csv

    with open(out / "extract_summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["slide"], r["status"], r["n_patches"], r["error"]) for r in table] == [
        (r.slide, r.status, str(r.n_patches), r.error) for r in summary.rows]

    table = format_summary(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["slide", "status", "patches", "seconds", "error"]
    assert lines[2].split()[:3] == ["good.svs", "done", str(pf.n_patches)]
    assert lines[3].split()[:4] == ["broken.svs", "failed", "0", f"{broken.seconds:.1f}"] and "SlideOpenError" in lines[3]
    assert lines[-1].startswith("3 slides (1 done, 0 skipped, 1 failed, 1 empty) with encoder 'stain-texture'")

    mtime = (out / "good.h5").stat().st_mtime_ns
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None) as cluster:
        again = run_cohort(slides, out, encoder="stain-texture", device="cpu", scheduler=cluster.scheduler_address)
    assert cluster.scheduler_address.startswith("tcp://")
    assert [(r.status, r.n_patches) for r in again.rows] == [("skipped", pf.n_patches), ("failed", 0), ("skipped", 0)]
    assert again.rows[1].error == broken.error and not again.ok
    assert (out / "good.h5").stat().st_mtime_ns == mtime


def test_slide_list_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    csv_path = tmp_path / "sub" / "slides.csv"
    csv_path.write_text("path,mpp\na.svs,0.25\n/abs/b.tif,\n")
    assert read_slide_list_csv(csv_path) == [SlideEntry(tmp_path / "sub" / "a.svs", 0.25), SlideEntry(Path("/abs/b.tif"))]
    csv_path.write_text("slide\nx.svs\n")
    assert read_slide_list_csv(csv_path) == [SlideEntry(tmp_path / "sub" / "x.svs")]
    csv_path.write_text("file,mpp\nx.svs,0.5\n")
    with pytest.raises(ValueError, match=r"has columns \['file', 'mpp'\]; it needs a 'slide' or 'path' column"):
        read_slide_list_csv(csv_path)
    csv_path.write_text("slide,mpp\nx.svs,fast\n")
    with pytest.raises(ValueError, match="line 2: mpp='fast' is not a number"):
        read_slide_list_csv(csv_path)
    csv_path.write_text("slide,mpp\nx.svs,-1\n")
    with pytest.raises(ValueError, match="line 2: mpp='-1' must be positive"):
        read_slide_list_csv(csv_path)


def test_duplicate_stems_and_unknown_encoder_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="share the name 's1'"):
        run_cohort([tmp_path / "a" / "s1.svs", tmp_path / "b" / "s1.tif"], tmp_path / "out", encoder="stain-texture")
    with pytest.raises(KeyError, match="unknown encoder 'nope'"):
        run_cohort([tmp_path / "s.svs"], tmp_path / "out", encoder="nope")


def test_summary_ok_and_counts():
    rows = [CohortRow("a", "done", 3), CohortRow("b", "empty"), CohortRow("c", "skipped", 2)]
    s = CohortSummary(rows, out_dir=Path("o"), encoder="stain-texture")
    assert s.ok and s.counts == {"done": 1, "skipped": 1, "failed": 0, "empty": 1}
    assert not CohortSummary([*rows, CohortRow("d", "failed", error="x")], out_dir=s.out_dir, encoder="e").ok


def test_existing_file_from_another_encoder_is_not_taken_as_finished(tmp_path):
    import numpy as np

    from care_core.features import PatchFeatures, run_cohort

    out = tmp_path / "out"
    PatchFeatures(np.zeros((2, 4), np.float32), [[0, 0], [512, 0]], 512, mpp=0.5, patch_px=512, encoder="uni_v2").save(
        out / "s.h5")
    summary = run_cohort([tmp_path / "s.svs"], out, encoder="stain-texture", n_workers=1)
    (row,) = summary.rows
    assert row.status == "failed" and not summary.ok
    assert "exists from encoder 'uni_v2'" in row.error and "another --out" in row.error
