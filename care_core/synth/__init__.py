"""Synthetic H&E-like whole-slide images with ground-truth tissue compartments (sample data, tests, benchmarks)."""

from care_core.synth.svs import SampleSlide, ensure_sample_slide, write_sample_slide
from care_core.synth.tissue import COMPARTMENTS

__all__ = ["COMPARTMENTS", "SampleSlide", "ensure_sample_slide", "write_sample_slide"]
