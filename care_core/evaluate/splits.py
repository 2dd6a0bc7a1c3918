"""Cross-validation splits by patient, saved and read in the CARE authors' split-file layout.

A split folder holds one CSV per fold, ``splits_<k>.csv``: an unnamed index column, then columns
``train``, ``val`` and ``test`` of slide ids of unequal length, blank cells padding the shorter ones.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import InvalidInputError
from care_core.evaluate.labels import LabelTable

__all__ = ["Fold", "make_splits", "save_splits", "load_splits"]


@dataclass(frozen=True)
class Fold:
    """Slide ids of one fold; ``val`` is empty when the protocol runs without a validation split."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def has_val(self) -> bool:
        return len(self.val) > 0


def make_splits(labels: LabelTable, *, n_folds: int = 5, val: bool = True, seed: int = 0) -> list[Fold]:
    """Patient-level stratified k-fold: fold k tests on group k, validates on group k+1 and trains on the rest
    (60/20/20 with 5 folds); with ``val=False`` it trains on everything but the test group (80/20).

    Classification stratifies on the label, survival on the event. A patient's slides share one group.
    Raises InvalidInputError when a class has fewer patients than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if n_folds < (3 if val else 2):
        raise InvalidInputError(f"n_folds={n_folds}: need at least {3 if val else 2} folds ({'train/val/test' if val else 'train/test'})")
    n_patients = len(set(labels.patients.tolist()))
    if n_patients < n_folds:
        raise InvalidInputError(f"labels table {labels.source!r} has {n_patients} patient(s), fewer than {n_folds} folds; "
                                "add slides or use fewer folds")
    y = labels.y
    names = labels.classes if labels.kind == "classification" else ("censored", "event")
    for c in np.unique(y):
        n_pat = len(set(labels.patients[y == c].tolist()))
        if n_pat < n_folds:
            raise InvalidInputError(
                f"labels table {labels.source!r}: {labels.kind} group {names[c]!r} has {n_pat} patient(s), fewer than "
                f"{n_folds} folds; add slides, merge the class, or use fewer folds"
            )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    group_of = np.empty(len(labels), dtype=np.int64)
    for g, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), y, labels.patients)):
        group_of[test_idx] = g
    slides = labels.slides
    folds = []
    for k in range(n_folds):
        test = group_of == k
        valid = (group_of == (k + 1) % n_folds) if val else np.zeros(len(labels), bool)
        train = ~(test | valid)
        folds.append(Fold(tuple(slides[train].tolist()), tuple(slides[valid].tolist()), tuple(slides[test].tolist())))
    return folds


def save_splits(folds: list[Fold], folder: str | os.PathLike) -> list[Path]:
    """Write ``splits_<k>.csv`` per fold (the authors' layout) atomically; returns the paths."""
    import pandas as pd

    folder = Path(folder)
    paths = []
    for k, fold in enumerate(folds):
        df = pd.concat({name: pd.Series(ids, dtype=object) for name, ids in
                        (("train", fold.train), ("val", fold.val), ("test", fold.test))}, axis=1)
        path = folder / f"splits_{k}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=True)
        paths.append(path)
    return paths


def _fold_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    return int(m.group(1)) if m else -1


def load_splits(folder: str | os.PathLike, labels: LabelTable | None = None) -> list[Fold]:
    """Read a split folder (ours or the authors'): one CSV per fold, ordered by the number its name ends in.

    Slide ids lose a trailing ``.h5``. With ``labels``, every id must be in the labels table. Raises
    InvalidInputError naming the file: no CSVs, missing train/test columns, a slide in two parts of a fold.
    """
    import pandas as pd

    folder = Path(folder)
    files = sorted(folder.glob("*.csv"), key=lambda p: (_fold_number(p), p.name)) if folder.is_dir() else []
    if not files:
        raise InvalidInputError(f"split folder {str(folder)!r} holds no CSV files; give the folder of splits_<k>.csv files")
    folds = []
    for path in files:
        try:
            df = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read split file {str(path)!r} ({exc})") from exc
        cols = {str(c).strip().lower(): c for c in df.columns}
        if "train" not in cols or "test" not in cols:
            raise InvalidInputError(f"split file {str(path)!r} has columns {list(df.columns)}; it needs 'train', 'val' and 'test'")

        def ids(name: str) -> tuple[str, ...]:
            if name not in cols:
                return ()
            out = [str(v).strip() for v in df[cols[name]].tolist()]
            return tuple(v[:-3] if v.endswith(".h5") else v for v in out if v and v.lower() != "nan")

        fold = Fold(ids("train"), ids("val"), ids("test"))
        for name, part in (("train", fold.train), ("val", fold.val), ("test", fold.test)):
            twice = sorted(s for s, n in Counter(part).items() if n > 1)
            if twice:
                raise InvalidInputError(f"split file {str(path)!r} lists slide(s) {twice[:10]} more than once in {name}; "
                                        "keep one row per slide")
        parts = {"train": set(fold.train), "val": set(fold.val), "test": set(fold.test)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = sorted(parts[a] & parts[b])
            if both:
                raise InvalidInputError(f"split file {str(path)!r}: slide(s) {both[:10]} are in both {a} and {b}; fix the split")
        if not fold.train or not fold.test:
            raise InvalidInputError(f"split file {str(path)!r} has an empty train or test column")
        if labels is not None:
            _check_against_labels(path, parts, labels)
        folds.append(fold)
    return folds


def _check_against_labels(path: Path, parts: dict[str, set[str]], labels: LabelTable) -> None:
    """A fold of split file ``path`` must hold exactly the labels table's slides and keep each patient's slides in one
    part (the results say ``folds_by: patient``). A labelled slide in no part is refused, not dropped: the table
    says which samples count, so a slide left out would shrink the evaluation without a word."""
    used = parts["train"] | parts["val"] | parts["test"]
    unknown = sorted(used - set(labels.slides.tolist()))
    if unknown:
        raise InvalidInputError(f"split file {str(path)!r} names {len(unknown)} slide(s) missing from labels table "
                                f"{labels.source!r}: {unknown[:10]}; use the splits made for these labels")
    left_out = [s for s in labels.slides.tolist() if s not in used]
    if left_out:
        raise InvalidInputError(f"split file {str(path)!r} puts {len(left_out)} labelled slide(s) {left_out[:10]} in none "
                                f"of train, val and test; add them to the split or drop them from labels table "
                                f"{labels.source!r}")
    part_of: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for slide in sorted(parts[name]):
            part_of[slide] = name
    where: dict[str, dict[str, str]] = {}  # patient -> {part: one of its slides}
    for slide, patient in zip(labels.slides.tolist(), labels.patients.tolist()):
        where.setdefault(patient, {}).setdefault(part_of[slide], slide)
    for patient in labels.patients.tolist():
        if len(where[patient]) > 1:
            shown = ", ".join(f"{s!r} in {p}" for p, s in where[patient].items())
            raise InvalidInputError(f"split file {str(path)!r}: patient {patient!r} has slides in more than one part "
                                    f"({shown}), so the folds are not by patient; move the patient's slides into one part")
