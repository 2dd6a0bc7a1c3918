"""napari sample data: the synthetic H&E slide (written once into the user's cache) and its compartments.

The first time, writing the 24000 x 18000 px slide takes about half a minute. That happens in a background
thread: *Open Sample* returns at once with a frame where the slide will appear, and the slide and its
ground-truth compartments replace the frame when the file is ready; the window stays usable meanwhile.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from ._layers import LayerData, slide_layer

SAMPLE_SIZE_PX = (24000, 18000)  # (width, height) at 0.5 µm/px: about 12 × 9 mm; written once, then cached
SAMPLE_MPP = 0.5
_WAIT_S = 0.2  # how long Open Sample waits for a cached slide before it shows the frame instead
_PENDING: set = set()  # timers of writes in flight (kept alive until their slide is shown)


def sample_cache_dir() -> Path:
    """Where the sample slide is kept: $NAPARI_CARE_CACHE, else $XDG_CACHE_HOME/napari-care, else ~/.cache/napari-care."""
    from care_core.pipeline import care_cache_dir

    return care_cache_dir()


def _ensure(width_px: int, height_px: int):
    from care_core.synth import ensure_sample_slide

    return ensure_sample_slide(sample_cache_dir(), width_px=width_px, height_px=height_px, mpp=SAMPLE_MPP)


def _sample_layers(sample) -> list[LayerData]:
    from care_core.wsi import open_slide

    slide = open_slide(sample.slide_path)
    image = slide_layer(slide, name="sample slide")
    mpp = slide.info.mpp * sample.mask_downsample
    centre = (sample.mask_downsample - 1) / 2 * slide.info.mpp  # mask pixel 0 covers level-0 px 0..15
    labels = (
        sample.read_mask(),
        {
            "name": "ground-truth compartments",
            "scale": (mpp, mpp),
            "translate": (centre, centre),
            "units": ("µm", "µm"),
            "opacity": 0.35,
            "visible": False,
            "metadata": {"compartments": sample.compartments},
        },
        "labels",
    )
    return [image, labels]


def _frame(width_px: int, height_px: int) -> LayerData:
    """A rectangle where the slide will appear, saying it is being written."""
    import numpy as np

    h, w = height_px * SAMPLE_MPP, width_px * SAMPLE_MPP
    return (
        [np.array([[0, 0], [0, w], [h, w], [h, 0]], float)],
        {"name": "sample slide (writing…)", "shape_type": "rectangle", "edge_color": "gray",
         "face_color": "transparent", "edge_width": w / 400,
         "metadata": {"care_kind": "sample_frame"}},
        "shapes",
    )


def _show_when_done(viewer, future: Future, frame_name: str) -> None:
    """Poll ``future`` from the Qt thread; when the slide is written, swap the frame for the sample's layers."""
    from napari.utils.notifications import show_error, show_info
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.setInterval(200)

    def poll() -> None:
        if not future.done():
            return
        timer.stop()
        _PENDING.discard(timer)
        if frame_name in viewer.layers:
            viewer.layers.remove(frame_name)
        try:
            layers = _sample_layers(future.result())
        except Exception as exc:  # the write failed (disk full, ...): say so, leave the window as it was
            show_error(f"the sample slide could not be written: {exc}")
            return
        for i, (data, kwargs, kind) in enumerate(layers):
            layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
            viewer.layers.move(viewer.layers.index(layer), i)
        viewer.reset_view()
        show_info("sample slide ready")

    timer.timeout.connect(poll)
    _PENDING.add(timer)
    timer.start()


def sample_slide() -> list[LayerData]:
    """The synthetic H&E slide (SAMPLE_SIZE_PX at 0.5 µm/px) plus its ground-truth compartments as a labels layer;
    the first time, a frame that the slide replaces when its file is written (in a background thread)."""
    import napari

    width_px, height_px = SAMPLE_SIZE_PX
    pool = ThreadPoolExecutor(1, thread_name_prefix="napari-care-sample")
    future = pool.submit(_ensure, width_px, height_px)
    pool.shutdown(wait=False)
    viewer = napari.current_viewer()
    try:
        return _sample_layers(future.result(timeout=_WAIT_S if viewer is not None else None))
    except FutureTimeout:
        pass
    from napari.utils.notifications import show_info

    frame = _frame(width_px, height_px)
    _show_when_done(viewer, future, frame[1]["name"])
    show_info("writing the sample slide in the background (first time only, about 30 s); it opens when ready")
    return [frame]
