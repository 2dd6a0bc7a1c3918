"""The shipped demo: the CARE checkpoint scripts/train_demo.py trains on synthetic slides and the prediction heads
fitted with it by ``care evaluate --final-head`` (a region classifier of the compartments and a slide head for the
TLS gene signature, high or low). A demo, not for diagnosis: see ``weights/care_demo.md``."""

from __future__ import annotations

from pathlib import Path

from care_core.model.checkpoint import DEMO_CHECKPOINT

__all__ = ["DEMO_HEADS", "demo_heads"]

DEMO_HEADS = (DEMO_CHECKPOINT.with_name("care_demo_compartments"), DEMO_CHECKPOINT.with_name("care_demo_tls_signature"))


def demo_heads() -> list[Path]:
    """The demo heads that are installed (.json and .safetensors both present), as paths without suffix."""
    return [h for h in DEMO_HEADS if h.with_suffix(".json").is_file() and h.with_suffix(".safetensors").is_file()]
