"""Downstream evaluation (CARE_METHOD.md §5): labels and patient-level splits, the paper's probes
(logistic regression, kNN, penalised Cox), baselines (mean pooling, ABMIL), metrics, heads that travel
(safetensors + JSON) and predictions per slide and per region.

Names are imported on first access (PEP 562), so importing the package stays light.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "LabelTable": "labels",
    "read_labels": "labels",
    "Fold": "splits",
    "make_splits": "splits",
    "save_splits": "splits",
    "load_splits": "splits",
    "LogisticProbe": "probes",
    "KNNProbe": "probes",
    "CoxProbe": "probes",
    "LAMBDAS": "probes",
    "ABMILClassifier": "abmil",
    "classification_metrics": "metrics",
    "concordance_index": "metrics",
    "summarise": "metrics",
    "markdown_table": "metrics",
    "UndefinedMetricWarning": "metrics",
    "Head": "heads",
    "load_head": "heads",
    "region_labels": "region_targets",
    "region_labels_from_polygons": "region_targets",
    "region_labels_from_mask": "region_targets",
    "patch_labels_from_polygons": "region_targets",
    "patch_labels_from_mask": "region_targets",
    "iter_cross_validate": "crossval",
    "iter_load_cohort": "cohort",
    "model_sha256": "cohort",
    "EvaluateEvent": "run",
    "iter_evaluate": "run",
    "check_evaluate_inputs": "run",
    "evaluate": "run",
    "iter_predict": "predict",
    "predict_paths": "predict",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'care_core.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"care_core.evaluate.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
