"""What a Run does in its worker thread, off the Qt thread: the pipeline on the slide, then the result's layer
data (so the window only puts finished arrays on screen), and each patch's tissue fraction for the tissue
areas of the inspector and the exports."""

from __future__ import annotations


class Placed:
    """What the worker needs of the slide layer to build the result's layers (no napari layer off the Qt
    thread): its name and pixel size."""

    def __init__(self, name: str, mpp: float | None, path) -> None:
        self.name, self.metadata = name, {"mpp": mpp, "path": path}


def run_and_prepare(view, slide: Placed, titles: dict, kwargs: dict):
    """The pipeline on ``slide`` (yields its progress), then the result's layer data, both in the worker:
    (SlideResult, layer-data tuples), or None when cancelled."""
    from care_core.pipeline import iter_slide_pipeline

    result = yield from iter_slide_pipeline(slide.metadata["path"], **kwargs)
    if result is None:
        return None
    record_tissue_fraction(result)
    if slide.metadata["mpp"] is None:
        slide.metadata["mpp"] = result.encoding.meta.get("slide_mpp")
    return result, view.prepare(slide, result, titles)


def record_tissue_fraction(result) -> None:
    """Record in the encoding's meta the tissue fraction of each patch (from the run's tissue mask), so the
    inspector and the exports give each region's area of tissue, not of whole patches over glass."""
    from types import SimpleNamespace

    from care_core.wsi.patches import tissue_fractions

    enc = result.encoding
    if "patch_tissue_fraction" in enc.meta or result.tissue_mask is None or not result.tissue_mask.size:
        return
    tissue = SimpleNamespace(mask=result.tissue_mask, downsample=float(result.tissue_downsample))
    enc.meta["patch_tissue_fraction"] = [round(float(f), 4) for f in
                                         tissue_fractions(tissue, enc.coords, enc.patch_size_level0)]
