"""Trained heads that travel: ``<name>.safetensors`` (arrays) + ``<name>.json`` (everything else). No pickle.

A head turns one input vector into class probabilities (linear, kNN) or a Cox risk score. Its JSON records
the class names, protocol, hyper-parameters, cross-validation metrics, its input kind (``slide``: the slide
embedding; ``roi``: the ROI feature; ``mean``: the mean of the patch features, the baseline), the CARE model
it was trained on (sha256 of the checkpoint tensors, or of an untrained model's weights) and the patch
encoder it expects. ``Head.predict`` applies it to a ``SlideEncoding``: once to the slide's input and once
to every region (region embeddings live in the slide embedding's space; for ``mean`` heads each region's
mean patch feature).

A head pair follows the rule of every JSON + tensors pair (``care_core.model.pair``, as CARE checkpoints): its
JSON's ``sha256`` covers every field and the tensors' hash, so an edited ``classes`` or ``input_dim`` is refused;
arrays with NaN or Inf are refused. Heads of the older ``care-head/1`` format (tensors hashed only) still load
with a warning; one without any hash is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import HeadError
from care_core.model.encoding import HeadPrediction, SlideEncoding
from care_core.model.pair import check_finite, check_meta, check_tensors, pair_paths, seal

__all__ = ["Head", "load_head", "INPUT_KINDS", "HEAD_KINDS"]

FORMAT = "care-head/2"
_OLD_FORMATS = ("care-head/1",)  # tensors hashed, fields not: loaded with a warning
INPUT_KINDS = ("slide", "roi", "region", "mean")
HEAD_KINDS = {"linear": ("coef", "intercept"), "knn": ("mean", "scale", "train_x", "train_y"), "cox": ("coef", "mean")}


@dataclass
class Head:
    """A trained head. kind: "linear" | "knn" | "cox"; input: "slide" | "roi" | "region" | "mean"
    ("region": trained on region embeddings from annotations; applied like "slide").

    arrays: linear ``coef`` [C, D], ``intercept`` [C]; knn ``mean``, ``scale`` [D], ``train_x`` [n, D]
    (standardised), ``train_y`` [n]; cox ``coef`` [D], ``mean`` [D].  params: hyper-parameters (``k``,
    ``weights``, ``C``, ``penalizer``).  classes: class names; ("risk",) for a Cox head.
    model_sha256: the CARE model the inputs came from ("" for ``mean`` heads, which need no CARE).
    encoder / input_dim: the patch encoder and feature width of the features under it.
    """

    name: str
    kind: str
    input: str
    classes: tuple[str, ...]
    arrays: dict[str, np.ndarray]
    params: dict = field(default_factory=dict)
    protocol: str = ""
    metrics: dict = field(default_factory=dict)
    model_sha256: str = ""
    encoder: str = ""
    input_dim: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise HeadError(f"head {self.name!r}: kind={self.kind!r} is not one of {tuple(HEAD_KINDS)}")
        if self.input not in INPUT_KINDS:
            raise HeadError(f"head {self.name!r}: input={self.input!r} is not one of {INPUT_KINDS}")
        missing = [k for k in HEAD_KINDS[self.kind] if k not in self.arrays]
        if missing:
            raise HeadError(f"head {self.name!r} ({self.kind}) lacks array(s) {missing}; re-save it with `care evaluate`")
        self.classes = tuple(self.classes)
        dim = int(np.shape(self.arrays["mean" if self.kind != "linear" else "coef"])[-1])
        if self.input_dim and int(self.input_dim) != dim:
            raise HeadError(f"head {self.name!r} says input_dim={self.input_dim} but its arrays take {dim}-d inputs; "
                            "re-save it with `care evaluate`")
        if self.kind == "linear":  # one row per class; a binary model may have one row (scikit-learn's layout)
            rows, n = int(np.shape(self.arrays["coef"])[0]), len(self.classes)
            if rows != n and not (n == 2 and rows == 1):
                raise HeadError(f"head {self.name!r} names {n} classes but its coefficients score {rows}; re-save it "
                                "with `care evaluate`")
        self.input_dim = dim

    # ------------------------------------------------------------------ applying
    def predict_inputs(self, X: np.ndarray) -> np.ndarray:
        """[n, C] float32 probabilities (a Cox head: [n, 1] risk) of input vectors ``X`` [n, D]."""
        from care_core.evaluate.probes import knn_proba, linear_proba

        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.input_dim:
            raise HeadError(f"head {self.name!r} takes {self.input_dim}-d {self.input} inputs but got {X.shape[1]}-d; "
                            f"use the CARE model and patch encoder it was trained with ({self.encoder or 'unknown'})")
        a = self.arrays
        if self.kind == "linear":
            out = linear_proba(X, a["coef"], a["intercept"])
        elif self.kind == "knn":
            out = knn_proba((X - a["mean"]) / a["scale"], a["train_x"], a["train_y"].astype(np.int64), len(self.classes),
                            int(self.params["k"]), str(self.params["weights"]))
        else:
            out = ((X - a["mean"]) @ a["coef"])[:, None]
        return out.astype(np.float32)

    def inputs(self, encoding: SlideEncoding, features=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(slide input [D], region inputs [R, D] or None) of ``encoding`` for this head's input kind;
        ``mean`` heads need the slide's ``PatchFeatures``."""
        if self.input == "mean":
            if features is None:
                raise HeadError(f"head {self.name!r} works on mean-pooled patch features; pass the slide's features")
            f = np.asarray(features.features, dtype=np.float64)
            regions = None
            if encoding.patch_region is not None and encoding.n_regions and len(encoding.patch_region) == len(f):
                counts = np.bincount(encoding.patch_region, minlength=encoding.n_regions)[:, None]
                sums = np.zeros((encoding.n_regions, f.shape[1]))
                np.add.at(sums, encoding.patch_region, f)
                regions = sums / np.maximum(counts, 1)
            return f.mean(axis=0), regions
        slide = encoding.slide_embedding if self.input == "slide" else encoding.roi_embedding
        if slide is None:
            raise HeadError(f"head {self.name!r} needs the ROI feature, which this encoding lacks; encode with CARE")
        return np.asarray(slide), encoding.region_embeddings

    def predict(self, encoding: SlideEncoding, features=None) -> HeadPrediction:
        """This head on one slide: probabilities of the slide and of each region (``HeadPrediction``)."""
        slide, regions = self.inputs(encoding, features)
        region_proba = None if regions is None or len(regions) == 0 else self.predict_inputs(regions)
        return HeadPrediction(self.name, self.classes, self.predict_inputs(slide[None])[0], region_proba)

    def check_compatible(self, checkpoint_meta, encoder: str, *, model_sha256: str | None = None) -> None:
        """Raise HeadError, naming both sides, when this head was trained on another CARE model or encoder.

        checkpoint_meta: the ``CheckpointMeta`` of the model in use (None for an untrained model, then give
        ``model_sha256``). encoder: the patch encoder of the features in use ("" = unknown, not checked).
        ``mean`` heads skip the model check (they do not use CARE).
        """
        used = model_sha256 if checkpoint_meta is None else checkpoint_meta.tensors_sha256
        if self.input != "mean" and self.model_sha256 and used and used != self.model_sha256:
            raise HeadError(f"head {self.name!r} was trained on CARE model {self.model_sha256[:12]}… but the model in use is "
                            f"{used[:12]}…; use the checkpoint the head was trained with, or retrain the head")
        if self.encoder and encoder and encoder != self.encoder:
            raise HeadError(f"head {self.name!r} expects features of patch encoder {self.encoder!r} but these come from "
                            f"{encoder!r}; re-extract features with {self.encoder!r} or retrain the head")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` + ``<path>.json`` atomically; returns the .safetensors path."""
        from safetensors.numpy import save_file

        from care_core import __version__

        tensors_path, json_path = pair_paths(path)
        with atomic_path(tensors_path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(tmp), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT, "name": self.name, "kind": self.kind, "input": self.input, "classes": list(self.classes),
            "params": self.params, "protocol": self.protocol, "metrics": self.metrics,
            "model_sha256": self.model_sha256, "encoder": self.encoder, "input_dim": self.input_dim,
            "extra": self.extra, "package_version": __version__,
        }
        meta = seal(json.loads(json.dumps(meta, default=_json_default, allow_nan=True)), tensors_path)  # hashed as read
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=True))
        return tensors_path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_head(path: str | os.PathLike) -> Head:
    """Read a head saved by ``Head.save`` (either file of the pair, or the path without suffix).

    Raises HeadError naming the file when it is missing, not a head, edited after saving (any field, e.g.
    ``classes`` or ``input_dim``), without a hash, holds NaN / Inf arrays, or its tensors do not match the JSON.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    tensors_path, json_path = pair_paths(path)
    if not json_path.is_file() or not tensors_path.is_file():
        raise HeadError(f"head {json_path.with_suffix('')} not found: a head is a .safetensors + .json pair "
                        "written by `care evaluate`; copy both files")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise HeadError(f"head metadata {json_path} is not valid JSON ({type(exc).__name__}); re-save the head") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in (FORMAT, *_OLD_FORMATS):
        raise HeadError(f"{json_path} is not a head file (format {fmt!r}, expected {FORMAT!r}); pass a head written "
                        "by `care evaluate`")
    check_meta(meta, json_path, current=fmt == FORMAT, error=HeadError, what="head")
    check_tensors(meta["tensors_sha256"], tensors_path, json_path.name, HeadError)
    try:
        arrays = load_file(str(tensors_path))
    except (SafetensorError, OSError) as exc:
        raise HeadError(f"cannot read head tensors {tensors_path} ({exc}); re-save the head") from exc
    check_finite(arrays, tensors_path, HeadError)
    try:
        return Head(name=meta["name"], kind=meta["kind"], input=meta["input"], classes=tuple(meta["classes"]),
                    arrays=arrays, params=meta.get("params", {}), protocol=meta.get("protocol", ""),
                    metrics=meta.get("metrics", {}), model_sha256=meta.get("model_sha256", ""),
                    encoder=meta.get("encoder", ""), input_dim=meta.get("input_dim", 0), extra=meta.get("extra", {}))
    except KeyError as exc:
        raise HeadError(f"{json_path} lacks the field {exc}; re-save the head") from exc
    except (TypeError, ValueError) as exc:  # a hand-made JSON of the right format with ill-typed fields
        raise HeadError(f"{json_path}: a field has the wrong type ({exc}); re-save the head") from None
