"""Cross-validation of a probe over given folds: per fold fit on train (hyper-parameters on val), score the
test split, keep the fold's head. Inputs are one vector per sample; samples are named by id."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from care_core.evaluate.heads import Head
from care_core.evaluate.labels import LabelTable
from care_core.evaluate.metrics import classification_metrics, concordance_index, summarise
from care_core.evaluate.splits import Fold

__all__ = ["PROTOCOLS", "FoldResult", "fit_head", "iter_cross_validate"]

PROTOCOLS = ("lr", "knn", "survival")


@dataclass
class FoldResult:
    """One fold: test metrics, chosen hyper-parameters, split sizes, the head (None for ABMIL), and test predictions
    (``test_ids`` [n] with ``test_scores`` [n, C] probabilities or [n, 1] Cox risk)."""

    fold: int
    metrics: dict[str, float]
    params: dict
    n_train: int
    n_val: int
    n_test: int
    head: Head | None
    test_ids: list[str] = field(default_factory=list)
    test_scores: np.ndarray | None = None


def fit_head(protocol: str, X: np.ndarray, labels: LabelTable, X_val: np.ndarray | None, val: LabelTable | None,
             *, name: str, input_kind: str, classes: tuple[str, ...], probe_kw: dict | None = None) -> Head:
    """Fit one probe (``lr``, ``knn`` on class labels; ``survival`` on time/event) and return it as a Head.

    probe_kw: keywords of the probe (e.g. ``no_val_C``: the C used without validation data)."""
    from care_core.evaluate.probes import CoxProbe, KNNProbe, LogisticProbe

    has_val = X_val is not None and len(X_val) > 0
    kw = probe_kw or {}
    if protocol == "survival":
        probe = CoxProbe(**kw).fit(X, labels.time, labels.event, X_val if has_val else None,
                                   val.time if has_val else None, val.event if has_val else None)
        return Head(name, "cox", input_kind, ("risk",), {"coef": probe.coef_, "mean": probe.mean_},
                    params={"penalizer": probe.penalizer_}, protocol=protocol)
    idx = {c: i for i, c in enumerate(classes)}
    y = np.array([idx[c] for c in labels.label], dtype=np.int64)
    y_val = np.array([idx[c] for c in val.label], dtype=np.int64) if has_val else None
    if protocol == "lr":
        probe = LogisticProbe(n_classes=len(classes), **kw).fit(X, y, X_val if has_val else None, y_val)
        coef, intercept = probe.linear_parameters()
        return Head(name, "linear", input_kind, classes, {"coef": coef, "intercept": intercept},
                    params={"C": probe.C_, "lambda": probe.lambda_}, protocol=protocol)
    if protocol == "knn":
        probe = KNNProbe(n_classes=len(classes), **kw).fit(X, y, X_val if has_val else None, y_val)
        return Head(name, "knn", input_kind, classes,
                    {"mean": probe.mean_, "scale": probe.scale_, "train_x": probe.train_x_, "train_y": probe.train_y_},
                    params={"k": probe.k_, "weights": probe.weights_}, protocol=protocol)
    raise ValueError(f"protocol={protocol!r} is not one of {PROTOCOLS}")


def score(labels: LabelTable, scores: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Test metrics of ``scores`` ([n, C] probabilities, or [n, 1] Cox risk) against ``labels``."""
    if labels.kind == "survival":
        return {"c_index": concordance_index(labels.time, labels.event, scores[:, 0])}
    idx = {c: i for i, c in enumerate(classes)}
    return classification_metrics(np.array([idx[c] for c in labels.label]), scores)


def iter_cross_validate(X: dict[str, np.ndarray], labels: LabelTable, folds: list[Fold], protocol: str, *,
                        input_kind: str, name: str = "head") -> Iterator[FoldResult]:
    """Yield a FoldResult per fold. X maps each sample id of the folds to its input vector [D]."""
    classes = labels.classes
    for k, fold in enumerate(folds):
        def part(ids):
            return (np.stack([X[i] for i in ids]) if ids else None), (labels.select(ids) if ids else None)

        (Xtr, ltr), (Xva, lva), (Xte, lte) = part(fold.train), part(fold.val), part(fold.test)
        head = fit_head(protocol, Xtr, ltr, Xva, lva, name=f"{name}_fold{k}", input_kind=input_kind, classes=classes)
        scores = head.predict_inputs(Xte).astype(np.float64)
        metrics = score(lte, scores, classes)
        head.metrics = {"fold": k, **metrics}
        yield FoldResult(k, metrics, dict(head.params), len(fold.train), len(fold.val), len(fold.test), head,
                         list(fold.test), scores)


def summary_of(results: list[FoldResult]) -> dict:
    """{metric: {"mean", "sd", "n"}} over folds."""
    return summarise([r.metrics for r in results])
