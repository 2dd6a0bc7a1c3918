"""Patch features: the encoder registry, streaming extraction, the feature store (.h5) and importers."""

from care_core.features.cohort import CohortRow, CohortSummary, SlideEntry, format_summary, read_slide_list_csv, run_cohort
from care_core.features.extract import ExtractProgress, extract_features, iter_extract
from care_core.features.importers import load_features
from care_core.features.registry import EncoderSpec, PatchEncoder, get_encoder, get_encoder_spec, list_encoders
from care_core.features.store import PatchFeatures, check_compatible

__all__ = [
    "PatchFeatures",
    "load_features",
    "check_compatible",
    "EncoderSpec",
    "PatchEncoder",
    "get_encoder",
    "get_encoder_spec",
    "list_encoders",
    "ExtractProgress",
    "extract_features",
    "iter_extract",
    "run_cohort",
    "read_slide_list_csv",
    "format_summary",
    "SlideEntry",
    "CohortRow",
    "CohortSummary",
]
