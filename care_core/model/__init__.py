"""CARE slide encoder: the model, its output type, checkpoints and the authors' model adapter.

Names are imported on first access (PEP 562), so ``from care_core.model import SlideEncoding`` or the
region exporters do not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CARE": "care",
    "CAREConfig": "care",
    "CAREOutput": "care",
    "SubregionGeometry": "subregions",
    "arg_scores": "care",
    "rsl_expected_rank": "care",
    "soft_inclusion_dense": "subregions",
    "subregion_geometry": "subregions",
    "SlideEncoding": "encoding",
    "CheckpointMeta": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint_meta": "checkpoint",
    "check_features": "checkpoint",
    "untrained_care": "untrained",
    "DEMO_HEADS": "demo",
    "demo_heads": "demo",
    "AuthorsModelAdapter": "hub_adapter",
    "load_authors_model": "hub_adapter",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'care_core.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"care_core.model.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
