"""A labelled cohort's inputs: patch-feature files matched to a labels table, encoded once with CARE.

Per slide we keep the SlideEncoding (slide embedding, ROI feature, region embeddings) and the mean of its
patch features (the mean-pooling baseline); the patch features themselves are re-read on demand (ABMIL).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError
from care_core.evaluate.labels import LabelTable
from care_core.model.checkpoint import model_sha256
from care_core.model.encoding import SlideEncoding

__all__ = ["Cohort", "model_sha256", "match_features", "iter_load_cohort"]


@dataclass
class Cohort:
    """Encoded slides of a labels table, in the table's order.

    paths: feature file per slide. encodings: SlideEncoding per slide (None when no model was given).
    means: [D] mean patch feature per slide. encoder: the patch encoder of the features.
    model_sha256: identity of the CARE model ("" without one).
    """

    labels: LabelTable
    paths: dict[str, Path]
    means: dict[str, np.ndarray]
    encodings: dict[str, SlideEncoding] = field(default_factory=dict)
    encoder: str = ""
    model_sha256: str = ""

    def inputs(self, kind: str) -> dict[str, np.ndarray]:
        """{slide: input vector} for ``slide`` (slide embedding), ``roi`` (ROI feature) or ``mean`` (mean pooling)."""
        if kind == "mean":
            return self.means
        if not self.encodings:
            raise InvalidInputError(f"input {kind!r} needs CARE encodings; give a CARE model (--model or --untrained)")
        attr = {"slide": "slide_embedding", "roi": "roi_embedding"}[kind]
        return {s: getattr(e, attr) for s, e in self.encodings.items()}


def match_features(labels: LabelTable, inputs: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """{slide: feature file} for every slide of ``labels``; feature files are named ``<slide>.h5``.

    Raises InvalidInputError listing (up to 10) slides of the labels table without a feature file.
    """
    from care_core.encode import feature_files

    by_stem = {p.stem: p for p in feature_files(inputs)}
    missing = [s for s in labels.slides.tolist() if s not in by_stem]
    if missing:
        shown = ", ".join(missing[:10]) + (f" … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise InvalidInputError(f"labels table {labels.source!r}: no feature file for slide(s) {shown}; "
                                "extract them (care extract) or drop those rows")
    return {s: by_stem[s] for s in labels.slides.tolist()}


def iter_load_cohort(labels: LabelTable, inputs: Sequence[str | os.PathLike], model=None) -> Iterator[tuple[int, int, str]]:
    """Read (and with ``model``, a CARE, encode) every slide of ``labels``; yields (done, total, slide) and
    returns the Cohort. Check the inputs first with ``run.check_evaluate_inputs`` (one encoder, no empty file,
    features that fit the model); this raises InvalidInputError naming the file on non-finite features."""
    from care_core.features import load_features

    paths = match_features(labels, inputs)
    cohort = Cohort(labels, paths, {}, model_sha256=model_sha256(model) if model is not None else "")
    for i, (slide, path) in enumerate(paths.items()):
        features = load_features(path)
        f = np.asarray(features.features, dtype=np.float32)
        if not np.isfinite(f).all():
            raise InvalidInputError(f"feature file {str(path)!r} holds NaN/Inf features; re-extract slide {slide!r}")
        cohort.encoder = cohort.encoder or features.encoder  # one encoder (or none recorded): checked first
        cohort.means[slide] = f.mean(axis=0)
        if model is not None:
            enc = model.encode(features)
            if not np.isfinite(enc.slide_embedding).all() or not np.isfinite(enc.region_embeddings).all():
                raise InvalidInputError(f"CARE gives NaN embeddings for {str(path)!r}; check the model and the features")
            enc.meta["model_sha256"] = cohort.model_sha256
            cohort.encodings[slide] = enc
        yield i + 1, len(paths), slide
    return cohort
