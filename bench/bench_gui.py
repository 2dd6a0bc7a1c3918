"""The pathologist's window, measured in a real (shown, Xvfb) napari window.

1. First *Open Sample* on an empty cache: how long napari's main thread is blocked, against the time the
   slide takes to be written (what the window used to wait for), in the same run.
2. *Run CARE* on the sample slide, from the click to the regions on screen, split by stage: cold (empty
   result cache) and cached; the cached run as a ratio of the cold one.
3. The Qt event loop at each moment a pathologist waits on (a 10 ms timer; the longest gap between its ticks
   and their 99th percentile; goal: longest <= 100 ms): a run showing its results (cold and cached), a job
   ending (a finished fine-tune offered to the CARE widget, which analyses the slide on screen with its CARE
   and head), a zoom (ten wheel steps in, ten out, each drawn), a region selected (ten table steps).
4. A slide with 100k patches (a synthetic encoding, 400 x 250 grid, 300 regions): time and memory to put its
   layers and inspector on screen, against one Shapes polygon per region (the representation not chosen);
   and time per pan step over it, against panning over the slide alone.

Run: xvfb-run -a python bench/bench_gui.py [--width-px 24000 --height-px 18000] [--skip-100k] [--async-slicing]
(--async-slicing: napari's experimental asynchronous slicing, Preferences > Experimental > Render Images
Asynchronously, switched on for this process only, so the slide's tiles are read off the Qt thread.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _spin(until, timeout_s: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout_s
    while not until():
        if time.perf_counter() > end:
            raise TimeoutError("bench step did not finish")
        QApplication.processEvents()
        time.sleep(0.002)


class StallMeter:
    """The longest gap between ticks of a 10 ms Qt timer (ms): how long the event loop was blocked."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> StallMeter:
        self.ticks.clear()
        self.ticks.append(time.perf_counter())
        self.timer.start(10)
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    @property
    def longest_ms(self) -> float:
        return 1000 * float(np.diff(self.ticks).max())

    @property
    def p99_ms(self) -> float:
        return 1000 * float(np.percentile(np.diff(self.ticks), 99))

    def line(self) -> str:
        return f"longest stall {self.longest_ms:.0f} ms, p99 {self.p99_ms:.0f} ms over {len(self.ticks) - 1} ticks"


def bench_open_sample(viewer, size: tuple[int, int]) -> Path:
    import napari_care._sample_data as sample_data

    sample_data.SAMPLE_SIZE_PX = size
    t0 = time.perf_counter()
    viewer.open_sample("napari-care", "synthetic_he")
    blocked = time.perf_counter() - t0
    with StallMeter() as meter:
        _spin(lambda: "sample slide" in viewer.layers)
    ready = time.perf_counter() - t0
    print(f"open sample    main thread blocked {blocked:.2f} s; slide written and shown after {ready:.1f} s "
          f"(blocked / written = {blocked / ready:.3f}); longest stall while writing {meter.longest_ms:.0f} ms")
    return Path(viewer.layers["sample slide"].metadata["path"])


def bench_run(viewer, widget, label: str):
    with StallMeter() as meter:
        t0 = time.perf_counter()
        widget.run_button.click()
        _spin(lambda: widget.worker is None)
        t_result = time.perf_counter()
        _spin(lambda: not widget.busy())
        total = time.perf_counter() - t0
    stages = dict(widget.result.timings)
    stages["layers on screen"] = total - (t_result - t0)
    text = ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
    print(f"run {label:6s}     {total:.2f} s from Run to regions on screen ({text}); {meter.line()}")
    return total, meter.longest_ms


def bench_zoom(viewer) -> None:
    """Ten wheel-sized zoom steps in, then ten out, each drawn (the outlines are resized on every step)."""
    from qtpy.QtWidgets import QApplication

    from napari_care._widget import camera

    cam = camera(viewer)
    canvas = viewer.window._qt_viewer.canvas
    with StallMeter() as meter:
        for factor in [1.25] * 10 + [0.8] * 10:
            cam.zoom *= factor
            canvas.native.update()
            t = time.perf_counter()
            while time.perf_counter() - t < 0.05:
                QApplication.processEvents()
                time.sleep(0.002)
    print(f"zoom           20 steps drawn; {meter.line()}")


def bench_select(viewer, widget) -> None:
    """Ten regions selected from the table (next ▶): outline, details, view centred and drawn."""
    from qtpy.QtWidgets import QApplication

    with StallMeter() as meter:
        for _ in range(10):
            widget.inspector.next_button.click()
            t = time.perf_counter()
            while time.perf_counter() - t < 0.05:
                QApplication.processEvents()
                time.sleep(0.002)
    print(f"select region  10 regions; {meter.line()}")


def finished_run(folder: Path) -> Path:
    """A run folder as a finished fine-tune leaves it: a CARE checkpoint for stain-texture features and a head
    trained on it (two classes)."""
    from care_core.evaluate.heads import Head
    from care_core.features import get_encoder_spec
    from care_core.model import CARE, save_checkpoint
    from care_core.model.checkpoint import read_checkpoint_meta

    care = CARE.from_seed(5, input_dim=get_encoder_spec("stain-texture").dim)
    path = save_checkpoint(care, folder / "care", encoder="stain-texture", feature_mpp=0.5, patch_px=256)
    rng = np.random.default_rng(0)
    Head(name="head", kind="linear", input="slide", classes=("stroma", "tumour"),
         arrays={"coef": rng.normal(size=(2, care.config.embed_dim)) * 0.1, "intercept": np.zeros(2)},
         protocol="finetune", model_sha256=read_checkpoint_meta(path).tensors_sha256,
         encoder="stain-texture").save(folder / "head")
    return folder


def bench_job_end(viewer, widget) -> None:
    """A fine-tune's end: its CARE and head go to the CARE widget, which analyses the slide on screen with them
    (features from the cache; CARE and the head run; the class layer is added)."""
    from napari_care._train_widget import TrainWidget

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train CARE")
    run = finished_run(Path(tempfile.mkdtemp(prefix="bench-gui-run-")))
    _spin(lambda: not any(t.name.startswith("napari-care") for t in __import__("threading").enumerate()))
    with StallMeter() as meter:
        t0 = time.perf_counter()
        train.analyse_slide = train.slide_on_screen()
        train.offer_result(run)
        _spin(lambda: widget.worker is not None or not widget.busy())
        _spin(lambda: not widget.busy())
        total = time.perf_counter() - t0
    print(f"job end        {total:.2f} s from the job's end to its analysis on screen; {meter.line()}")


def synthetic_encoding(cols: int = 400, rows: int = 250, n_regions: int = 300, step: int = 512):
    """A SlideEncoding of cols x rows patches whose regions are Voronoi cells of random seeds."""
    from care_core.model import SlideEncoding

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), -1).reshape(-1, 2)
    seeds = rng.uniform((0, 0), (cols, rows), size=(n_regions, 2))
    region = np.empty(len(grid), np.int64)
    for i in range(0, len(grid), 20000):
        d = ((grid[i : i + 20000, None, :] - seeds[None]) ** 2).sum(-1)
        region[i : i + 20000] = d.argmin(1)
    present = np.unique(region)
    region = np.searchsorted(present, region)
    r = len(present)
    pi = rng.dirichlet(np.ones(r)).astype(np.float32)
    return SlideEncoding(
        slide_embedding=np.zeros(8, np.float32), region_embeddings=np.zeros((r, 8), np.float32),
        patch_region=region, region_subregion=np.arange(r), pi=pi, alpha=pi, beta=pi, roi=int(pi.argmax()),
        coords=grid * step, grid=grid, patch_size_level0=step, mpp=0.5, patch_px=256,
        meta={"slide_size_level0": [cols * step, rows * step], "slide_mpp": 0.25},
    )


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def _pan_ms(viewer, steps: int = 20) -> float:
    """Mean ms per pan step (camera moved by a tenth of the view, the canvas redrawn)."""
    from qtpy.QtWidgets import QApplication

    from napari_care._widget import camera

    cam = camera(viewer)
    canvas = viewer.window._qt_viewer.canvas
    QApplication.processEvents()
    t0 = time.perf_counter()
    for i in range(steps):
        y, x = cam.center[-2:]
        cam.center = (y, x + (1 if i % 10 < 5 else -1) * 0.1 * canvas.size[1] / cam.zoom)
        canvas.native.update()
        QApplication.processEvents()
        canvas.native.repaint()
    return 1000 * (time.perf_counter() - t0) / steps


def bench_100k(viewer, widget) -> None:
    from care_core.pipeline import SlideResult
    from care_core.regions import region_polygons
    from napari_care._layers import polygon_outlines

    enc = synthetic_encoding()
    slide = viewer.layers[0]
    for layer in [lyr for lyr in viewer.layers if "care_source" in lyr.metadata]:
        viewer.layers.remove(layer)  # the 100k layers are created, not updated in place
    widget.view.layers = {}
    slide_pan = _pan_ms(viewer)
    result = SlideResult(enc, np.zeros((10, 10), bool), 2048.0)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    widget.show_result(slide, result, "synthetic 100k")
    _spin(lambda: not widget.busy())
    ours = time.perf_counter() - t0
    rss1 = _rss_mb()
    regions_pan = _pan_ms(viewer)
    t0 = time.perf_counter()
    polys = region_polygons(enc.patch_region, enc.coords, enc.patch_size_level0)
    rings = [ring for p in polys for ring in polygon_outlines(p, slide.metadata["mpp"])]
    shapes = viewer.add_shapes(rings, shape_type="polygon", face_color="transparent", edge_color="white",
                               name="baseline: one polygon per region")
    baseline = time.perf_counter() - t0
    shapes_pan = _pan_ms(viewer)
    print(f"100k patches   {len(enc.patch_region)} patches, {enc.n_regions} regions: layers + inspector on screen "
          f"in {ours:.2f} s (+{rss1 - rss0:.0f} MB RSS); Shapes with {len(rings)} region polygons {baseline:.2f} s "
          f"(ours / Shapes = {ours / baseline:.2f})")
    print(f"pan            {regions_pan:.0f} ms per step over the regions, {slide_pan:.0f} ms over the slide alone "
          f"(ratio {regions_pan / slide_pan:.2f}); {shapes_pan:.0f} ms with the region polygons too")
    viewer.layers.remove(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width-px", type=int, default=24000)
    parser.add_argument("--height-px", type=int, default=18000)
    parser.add_argument("--only-100k", action="store_true", help="only part 4 (over a 6000 x 4500 sample slide)")
    parser.add_argument("--skip-100k", action="store_true", help="leave part 4 out")
    parser.add_argument("--async-slicing", action="store_true", help="napari's asynchronous slicing on")
    args = parser.parse_args()
    if args.async_slicing:
        os.environ["NAPARI_EXPERIMENTAL_ASYNC_"] = "1"  # napari reads its settings from the environment first
    os.environ["NAPARI_CARE_CACHE"] = tempfile.mkdtemp(prefix="bench-gui-")  # an empty cache: a first open
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    import napari

    from napari_care._widget import UNTRAINED, CareWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    bench_open_sample(viewer, (6000, 4500) if args.only_100k else (args.width_px, args.height_px))
    widget = CareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CARE")
    widget.slide.value = viewer.layers["sample slide"]
    widget.checkpoint.value = UNTRAINED  # the same model whether or not the demo checkpoint is installed
    _spin(lambda: not any(t.name == "napari-care-preload" for t in __import__("threading").enumerate()))
    if not args.only_100k:
        cold, _ = bench_run(viewer, widget, "cold")
        cached, _ = bench_run(viewer, widget, "cached")
        print(f"cache          cached / cold = {cached / cold:.3f}")
        bench_zoom(viewer)
        bench_select(viewer, widget)
        bench_job_end(viewer, widget)
        bench_zoom(viewer)
        bench_select(viewer, widget)
    if not args.skip_100k:
        bench_100k(viewer, widget)
    viewer.close()


if __name__ == "__main__":
    main()
