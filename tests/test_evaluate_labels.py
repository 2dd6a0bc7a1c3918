"""Labels tables, patient-level splits and the CARE authors' split files."""

from __future__ import annotations

import numpy as np
import pytest

from care_core.errors import InvalidInputError
from care_core.evaluate import load_splits, make_splits, read_labels, save_splits


def _write(tmp_path, text: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _classes(n: int = 40):
    rows = [f"s{i:02d},{'tumour' if i % 4 == 0 else 'normal'},p{i // 2}" for i in range(n)]
    return "slide,label,patient\n" + "\n".join(rows) + "\n"


def test_read_classification_table(tmp_path):
    t = read_labels(_write(tmp_path, "slide_id,label\na.h5,x\nb,y\nc,x\n"))
    assert t.kind == "classification" and t.classes == ("x", "y")
    assert t.slides.tolist() == ["a", "b", "c"] and t.patients.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(t.y, [0, 1, 0])


def test_read_survival_table(tmp_path):
    t = read_labels(_write(tmp_path, "slide,time,event,case_id\na,3.5,1,P1\nb,10,0,P1\nc,0,1,P2\n"))
    assert t.kind == "survival" and t.patients.tolist() == ["P1", "P1", "P2"]
    np.testing.assert_array_equal(t.time, [3.5, 10.0, 0.0])
    np.testing.assert_array_equal(t.event, [1, 0, 1])


@pytest.mark.parametrize(("text", "match"), [
    ("slide,label\na,x\nb,x\n", "at least two classes"),
    ("slide,label\na,x\na,y\n", r"lists slide\(s\) \['a'\] more than once"),
    ("name,label\na,x\n", "needs a 'slide' column"),
    ("slide,label\na,x\nb,\n", r"'label' is blank on line\(s\) \[3\]"),
    ("slide,time,event\na,-1,1\nb,2,0\n", r"'time' is missing or negative on line\(s\) \[2\]"),
    ("slide,time,event\na,,1\nb,2,0\n", r"'time' is blank on line\(s\) \[2\]"),
    ("slide,time,event\na,1,1\nb,2,2\n", r"'event' is '2' on line\(s\) \[3\]"),
    ("slide,time,event\na,1,yes\nb,2,0\n", "events must be 1 .observed. or 0"),
    ("slide,time,event\na,x,1\nb,2,0\n", r"'time' is not a number on line\(s\) \[2\]"),
    ("slide,time\na,1\n", "give either 'label'"),
])
def test_bad_tables_name_the_file_and_the_rows(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInputError, match=match) as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_splits_keep_patients_together_and_are_60_20_20(tmp_path):
    labels = read_labels(_write(tmp_path, _classes(40)))
    folds = make_splits(labels, n_folds=5, seed=0)
    assert len(folds) == 5
    patient = dict(zip(labels.slides.tolist(), labels.patients.tolist()))
    tests = []
    for f in folds:
        parts = [set(patient[s] for s in part) for part in (f.train, f.val, f.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == 40
        assert (len(f.train), len(f.val), len(f.test)) == (24, 8, 8)
        assert sum(s in {"s00", "s04", "s08", "s12", "s16", "s20", "s24", "s28", "s32", "s36"} for s in f.test) == 2
        tests += f.test
    assert sorted(tests) == sorted(labels.slides.tolist())  # every slide is tested exactly once
    nv = make_splits(labels, n_folds=5, val=False)
    assert all(not f.has_val and len(f.train) == 32 for f in nv)


def test_class_with_fewer_patients_than_folds_is_refused(tmp_path):
    text = "slide,label\n" + "\n".join(f"s{i},{'rare' if i < 3 else 'common'}" for i in range(20)) + "\n"
    path = _write(tmp_path, text)
    with pytest.raises(InvalidInputError, match=r"group 'rare' has 3 patient\(s\), fewer than 5 folds") as info:
        make_splits(read_labels(path), n_folds=5)
    assert str(path) in str(info.value)


def test_splits_round_trip_in_the_authors_layout(tmp_path):
    labels = read_labels(_write(tmp_path, _classes(40)))
    folds = make_splits(labels, n_folds=5, seed=3)
    paths = save_splits(folds, tmp_path / "splits")
    assert [p.name for p in paths] == [f"splits_{k}.csv" for k in range(5)]
    header, first = paths[0].read_text().splitlines()[:2]
    assert header == ",train,val,test" and first.startswith("0,")
    assert load_splits(tmp_path / "splits", labels) == folds


def test_reads_an_authors_split_file_with_padding(tmp_path):
    folder = tmp_path / "authors"
    folder.mkdir()
    (folder / "splits_0.csv").write_text(",train,val,test\n0,slide_0,slide_3,slide_6.h5\n1,slide_1,slide_4,\n2,slide_2,,\n")
    (folder / "splits_10.csv").write_text(",train,val,test\n0,slide_6,slide_3,slide_0\n")
    (folder / "splits_2.csv").write_text(",train,val,test\n0,slide_3,slide_6,slide_0\n")
    folds = load_splits(folder)
    assert folds[0].train == ("slide_0", "slide_1", "slide_2") and folds[0].val == ("slide_3", "slide_4")
    assert folds[0].test == ("slide_6",)
    assert [f.train for f in folds[1:]] == [("slide_3",), ("slide_6",)]  # ordered by fold number, 2 before 10


def test_bad_split_files(tmp_path):
    labels = read_labels(_write(tmp_path, "slide,label\na,x\nb,y\nc,x\n"))
    folder = tmp_path / "s"
    folder.mkdir()
    with pytest.raises(InvalidInputError, match="holds no CSV files"):
        load_splits(folder)
    (folder / "splits_0.csv").write_text(",train,val,test\n0,a,,a\n")
    with pytest.raises(InvalidInputError, match=r"in both train and test"):
        load_splits(folder)
    (folder / "splits_0.csv").write_text(",train,val,test\n0,a,b,zz\n")
    with pytest.raises(InvalidInputError, match=r"missing from labels table .*\['zz'\]"):
        load_splits(folder, labels)


def test_parquet_table_reads_like_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"slide": ["a", "b", "c"], "time": [1.5, 2.0, 0.0], "event": [1, 0, 1]}).to_parquet(path)
    t = read_labels(path)
    assert t.kind == "survival" and t.slides.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(t.time, [1.5, 2.0, 0.0])
    np.testing.assert_array_equal(t.event, [1, 0, 1])


def test_fewer_patients_than_folds_is_refused(tmp_path):
    path = _write(tmp_path, "slide,label,patient\na,x,p1\nb,y,p1\nc,x,p2\nd,y,p2\n")
    with pytest.raises(InvalidInputError, match=r"has 2 patient\(s\), fewer than 5 folds"):
        make_splits(read_labels(path), n_folds=5)
