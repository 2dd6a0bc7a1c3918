"""Whole-slide images: open a slide lazily, find its tissue, lay a patch grid at a physical resolution."""

from care_core.wsi.patches import PatchGrid, patch_grid
from care_core.wsi.slide import Slide, SlideInfo, open_slide
from care_core.wsi.tissue import TissueMask, detect_tissue

__all__ = ["Slide", "SlideInfo", "open_slide", "TissueMask", "detect_tissue", "PatchGrid", "patch_grid"]
