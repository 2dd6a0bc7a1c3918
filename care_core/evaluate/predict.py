"""``care predict``: apply trained heads to feature files, per slide and per region.

Per slide ``<stem>`` the outputs of ``care encode`` are written with the predictions inside:
``_encoding.npz`` (``SlideEncoding.predictions``), ``_regions.csv`` and ``_regions.geojson`` (a class and
probability columns per head), plus one ``slide_predictions.csv`` for the cohort (a row per slide, columns
``<head> class`` and ``<head> p(<class>)``, or ``<head> risk``).
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from care_core._atomic import atomic_path, check_output_dir, folder_lock
from care_core.evaluate.heads import Head, load_head

__all__ = ["iter_predict", "predict_paths", "slide_prediction_row"]


def slide_prediction_row(predictions) -> dict[str, object]:
    """{column: value} of one slide's HeadPredictions (the columns of ``slide_predictions.csv``)."""
    row: dict[str, object] = {}
    for pred in predictions:
        if pred.classes == ("risk",):
            row[f"{pred.head} risk"] = float(pred.slide_proba[0])
            continue
        row[f"{pred.head} class"] = pred.slide_class
        for cls, p in zip(pred.classes, pred.slide_proba):
            row[f"{pred.head} p({cls})"] = float(p)
    return row


def iter_predict(inputs: Sequence[str | os.PathLike], model, heads: Sequence[str | os.PathLike | Head],
                 out_dir: str | os.PathLike, *, allow_pickle: bool = False) -> Iterator[tuple[int, int, Path, list[Path]]]:
    """Generator form of ``predict_paths``: yields (index, total, feature file, written paths) per slide.

    Before any slide is encoded: every feature file's header (one encoder, one width, fitting the model:
    ``check_feature_files``) and every head against the model and that encoder. model: a CARE or a checkpoint path.
    """
    from care_core.encode import _write_slide, feature_files, resolve_model
    from care_core.evaluate.inputs import check_feature_files
    from care_core.features import load_features
    from care_core.model.checkpoint import check_features, model_sha256

    files = feature_files(inputs, allow_pickle=allow_pickle)
    loaded = [h if isinstance(h, Head) else load_head(h) for h in heads]
    model = resolve_model(model)
    meta = getattr(model, "checkpoint_meta", None)
    sha = model_sha256(model)
    headers = check_feature_files({str(p): p for p in files}, model, allow_empty=True, allow_pickle=allow_pickle)
    encoder = next((h.encoder for h in headers.values() if h.encoder), "")
    for head in loaded:
        head.check_compatible(meta, encoder, model_sha256=sha)
    out = check_output_dir(out_dir)  # fails before any slide is encoded
    with folder_lock(out, what="care predict"):
        rows: list[dict] = []
        for i, path in enumerate(files):
            features = load_features(path, allow_pickle=allow_pickle)
            if features.n_patches == 0:
                warnings.warn(f"{path}: no patches (a slide without tissue); nothing to predict", stacklevel=2)
                yield i, len(files), path, []
                continue
            if meta is not None:
                check_features(meta, features)
            for head in loaded:
                head.check_compatible(meta, features.encoder, model_sha256=sha)
            enc = model.encode(features)
            enc.meta["model_sha256"] = sha
            enc.predictions = [head.predict(enc, features) for head in loaded]
            rows.append({"slide": path.stem, **slide_prediction_row(enc.predictions)})
            yield i, len(files), path, _write_slide(enc, path.stem, out)
        columns = ["slide"] + [c for c in dict.fromkeys(k for r in rows for k in r) if c != "slide"]
        with atomic_path(out / "slide_predictions.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")  # quotes a name holding a comma, a quote or a line break
            writer.writerow(columns)
            for r in rows:
                writer.writerow(f"{v:.6g}" if isinstance(v, float) else v for v in (r.get(c, "") for c in columns))


def predict_paths(inputs: Sequence[str | os.PathLike], model, heads: Sequence[str | os.PathLike | Head],
                  out_dir: str | os.PathLike, *, allow_pickle: bool = False) -> list[Path]:
    """Encode every feature file with ``model`` (a CARE or a checkpoint path; None: the demo checkpoint), apply
    every head, write the outputs (see module docstring) and return the written paths (``slide_predictions.csv``
    last)."""
    written: list[Path] = []
    for *_, paths in iter_predict(inputs, model, heads, out_dir, allow_pickle=allow_pickle):
        written.extend(paths)
    return written + [Path(out_dir) / "slide_predictions.csv"]

