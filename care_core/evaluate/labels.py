"""Labels table of a cohort: one row per slide with a class label, or a survival time and event.

Columns (CSV, or Parquet when pyarrow is installed): ``slide`` (the feature file's stem; ``slide_id``
also accepted), then either ``label`` or ``time`` + ``event`` (1 = event observed, 0 = censored), and
an optional ``patient`` (``patient_id``, ``case_id``) so that splits keep a patient's slides together.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError

__all__ = ["LabelTable", "read_labels"]

_SLIDE = ("slide", "slide_id")
_PATIENT = ("patient", "patient_id", "case_id")


@dataclass(frozen=True)
class LabelTable:
    """Labels of a cohort, aligned arrays of length n.

    slides, patients: [n] str (patients = slides when the table has no patient column).
    label: [n] str class of each slide, or None for a survival table.
    time: [n] float64 follow-up time (any unit, >= 0) and event: [n] int64 0/1, or None for a class table.
    source: the file it came from (named in errors).
    """

    slides: np.ndarray
    patients: np.ndarray
    label: np.ndarray | None = None
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    source: str = ""

    @property
    def kind(self) -> str:
        """"classification", "survival", or "slides" (a list of slides without targets)."""
        if self.label is not None:
            return "classification"
        return "survival" if self.time is not None else "slides"

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted class names (empty for survival)."""
        return () if self.label is None else tuple(sorted(set(self.label.tolist())))

    @property
    def y(self) -> np.ndarray:
        """[n] int64 index into ``classes`` (classification) or [n] int64 event (survival): what splits stratify on."""
        if self.label is None:
            return self.event
        return np.searchsorted(np.array(self.classes), self.label).astype(np.int64)

    def __len__(self) -> int:
        return len(self.slides)

    def select(self, slides) -> LabelTable:
        """The rows of ``slides`` (in that order); every id must be in the table."""
        index = {s: i for i, s in enumerate(self.slides.tolist())}
        idx = np.array([index[s] for s in slides], dtype=np.int64)
        take = lambda a: None if a is None else a[idx]  # noqa: E731
        return LabelTable(self.slides[idx], self.patients[idx], take(self.label), take(self.time), take(self.event),
                          self.source)


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise InvalidInputError(f"labels table {str(path)!r} does not exist; give a CSV with a 'slide' column")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except ImportError as exc:
        raise InvalidInputError(f"cannot read {str(path)!r}: Parquet needs pyarrow (pip install pyarrow), "
                                "or save the table as CSV") from exc
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read labels table {str(path)!r} ({exc}); save it as a plain CSV") from exc


def _column(df, names: tuple[str, ...]) -> str | None:
    lower = {str(c).strip().lower(): c for c in df.columns}
    return next((lower[n] for n in names if n in lower), None)


def _strings(df, col, where: str, what: str) -> np.ndarray:
    values = np.array([str(v).strip() for v in df[col].tolist()], dtype=object)
    blank = np.flatnonzero((values == "") | (values == "nan") | (values == "None"))
    if len(blank):
        raise InvalidInputError(f"{where}: {what} is blank on line(s) {(blank[:10] + 2).tolist()}; fill it in or drop the rows")
    return values


def read_labels(path: str | os.PathLike, *, slides_only: bool = False) -> LabelTable:
    """Read and check a labels table; raises InvalidInputError naming the file, the rows and the fix.

    Refused: no slide column, duplicate slides, neither label nor time+event, a single class,
    missing / non-numeric / negative times, events other than 0/1. With ``slides_only`` only the slide and
    patient columns are read (region tasks take their labels from annotations).
    """
    path = Path(path)
    df = _read_table(path)
    where = f"labels table {str(path)!r}"
    slide_col = _column(df, _SLIDE)
    if slide_col is None:
        raise InvalidInputError(f"{where} has columns {list(map(str, df.columns))}; it needs a 'slide' column "
                                "(the feature file names without .h5)")
    if len(df) == 0:
        raise InvalidInputError(f"{where} has no rows")
    slides = _strings(df, slide_col, where, "'slide'")
    slides = np.array([s[:-3] if s.endswith(".h5") else s for s in slides], dtype=object)
    dup = sorted(s for s, n in Counter(slides.tolist()).items() if n > 1)  # O(n): 20,000 rows in ms
    if dup:
        raise InvalidInputError(f"{where} lists slide(s) {dup[:10]} more than once; keep one row per slide")
    patient_col = _column(df, _PATIENT)
    patients = _strings(df, patient_col, where, f"{patient_col!r}") if patient_col is not None else slides.copy()
    if slides_only:
        return LabelTable(slides, patients, source=str(path))
    label_col, time_col, event_col = _column(df, ("label",)), _column(df, ("time",)), _column(df, ("event",))
    if label_col is not None and (time_col is None and event_col is None):
        label = _strings(df, label_col, where, "'label'")
        if len(set(label.tolist())) < 2:
            raise InvalidInputError(f"{where}: every slide has label {label[0]!r}; a classifier needs at least two classes")
        return LabelTable(slides, patients, label=label, source=str(path))
    if time_col is None or event_col is None or label_col is not None:
        raise InvalidInputError(f"{where} has columns {list(map(str, df.columns))}; give either 'label' "
                                "(classification) or 'time' and 'event' (survival)")
    time_text = _strings(df, time_col, where, "'time'")
    try:
        time = time_text.astype(np.float64)
    except ValueError:
        bad = [i + 2 for i, t in enumerate(time_text) if not _is_number(t)]
        raise InvalidInputError(f"{where}: 'time' is not a number on line(s) {bad[:10]}; survival times must be numbers") from None
    bad = np.flatnonzero(~np.isfinite(time) | (time < 0))
    if len(bad):
        raise InvalidInputError(f"{where}: 'time' is missing or negative on line(s) {(bad[:10] + 2).tolist()}; "
                                "survival times must be >= 0")
    event_text = _strings(df, event_col, where, "'event'")
    ok = np.isin(event_text, ["0", "1", "0.0", "1.0"])
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise InvalidInputError(f"{where}: 'event' is {event_text[bad[0]]!r} on line(s) {(bad[:10] + 2).tolist()}; "
                                "events must be 1 (observed) or 0 (censored)")
    event = event_text.astype(np.float64).astype(np.int64)
    if event.sum() == 0:
        raise InvalidInputError(f"{where}: no slide has event=1; a survival model needs observed events")
    return LabelTable(slides, patients, time=time, event=event, source=str(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
