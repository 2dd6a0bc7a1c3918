"""The paper's metrics. A metric that is undefined on a split (one class in it, no comparable pairs)
warns (``UndefinedMetricWarning``) and is NaN, never a made-up number."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["UndefinedMetricWarning", "classification_metrics", "concordance_index", "summarise", "markdown_table"]


class UndefinedMetricWarning(RuntimeWarning):
    """A metric cannot be computed on this split; its value is NaN."""


def _undefined(name: str, why: str) -> float:
    warnings.warn(f"{name} is undefined: {why}; reported as NaN", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Metrics of class probabilities ``proba`` [n, C] against ``y_true`` [n] int in 0..C-1.

    Binary (C = 2): ``auroc`` (of column 1) and ``balanced_accuracy``. Multiclass: ``weighted_f1``,
    ``balanced_accuracy`` and ``macro_auroc`` (one-vs-rest). AUROC needs both sides of every class in
    y_true and balanced accuracy at least two classes, else NaN with a warning.
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    present = np.unique(y_true)
    out: dict[str, float] = {}
    if n_classes == 2:
        out["auroc"] = (float(roc_auc_score(y_true, proba[:, 1])) if len(present) == 2
                        else _undefined("auroc", f"the split holds only class {present.tolist()}"))
    else:
        out["weighted_f1"] = float(f1_score(y_true, pred, average="weighted", labels=np.arange(n_classes), zero_division=0))
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        out["macro_auroc"] = (float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in range(n_classes)]))
                              if not missing else _undefined("macro_auroc", f"class(es) {missing} are absent from the split"))
    if len(present) < 2:
        out["balanced_accuracy"] = _undefined("balanced_accuracy", f"the split holds only class {present.tolist()}")
    else:
        with warnings.catch_warnings():  # predictions of a class absent from y_true are fine here
            warnings.simplefilter("ignore", UserWarning)
            out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, pred))
    return out


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event) against ``time`` and ``event`` (1 = observed)."""
    from lifelines.utils import concordance_index as lifelines_cindex

    time, event, risk = (np.asarray(a, dtype=np.float64) for a in (time, event, risk))
    if not np.isfinite(risk).all():
        return _undefined("c_index", "the risk scores contain NaN or Inf")
    try:
        return float(lifelines_cindex(time, -risk, event))  # lifelines scores "higher = longer survival"
    except ZeroDivisionError:
        return _undefined("c_index", "the split has no comparable pairs (no event before another slide's time)")


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample sd over folds of each metric: {name: {"mean", "sd", "n"}}; NaN folds are left out of
    both and counted out of ``n``; a metric NaN on every fold has mean NaN."""
    names = [k for k in per_fold[0]] if per_fold else []
    out = {}
    for name in names:
        values = np.array([f.get(name, np.nan) for f in per_fold], dtype=np.float64)
        ok = values[np.isfinite(values)]
        out[name] = {
            "mean": float(ok.mean()) if len(ok) else float("nan"),
            "sd": float(ok.std(ddof=1)) if len(ok) > 1 else float("nan"),
            "n": int(len(ok)),
        }
    return out


def markdown_table(rows: dict[str, dict[str, dict[str, float]]], *, scale: float = 100.0,
                   n_folds: int | None = None) -> str:
    """A markdown table: one row per entry of ``rows`` ({row name: summarise(...)}), one column per metric,
    cells "mean ± sd" (times ``scale``; NaN shown as "n/a"). With ``n_folds``, a metric that some folds left
    undefined says how many it used: "70.0 ± 14.1 (2 of 5 folds)", "n/a (0 of 5 folds)"."""
    metrics: list[str] = []
    for summary in rows.values():
        metrics += [m for m in summary if m not in metrics]
    lines = ["| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, summary in rows.items():
        cells = []
        for m in metrics:
            s = summary.get(m)
            if s is None or not np.isfinite(s["mean"]):
                cell = "n/a"
            elif np.isfinite(s["sd"]):
                cell = f"{s['mean'] * scale:.1f} ± {s['sd'] * scale:.1f}"
            else:
                cell = f"{s['mean'] * scale:.1f}"
            used = 0 if s is None else s.get("n", 0)
            if n_folds is not None and used < n_folds:
                cell += f" ({used} of {n_folds} folds)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
