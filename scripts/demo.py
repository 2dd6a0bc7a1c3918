"""The demo: the synthetic sample slide through the whole product, looked at in napari.

Opens a shown napari window, runs the CARE widget on the sample slide as a user would (tissue → stain-texture
features → CARE with the shipped demo checkpoint, or an untrained CARE when it is not installed → the demo heads,
or those given with --head), selects a region in the inspector and exports the result. Writes to --out (default
demo-output/):
  sample slide (written once) + its compartment mask; thumbnail_overlay.png (tissue outline, patch grid);
  <slide>_regions.geojson (QuPath), _regions.xml (ASAP), _regions.ome.tif (label mask), _regions.csv (table),
  _encoding.npz (embeddings); napari_screenshot.png (the slide), napari_regions.png (regions, ROI, a
  selected region in the inspector), napari_full_resolution.png (level 0 at the ROI's edge);
  cache/ (features and encodings: a second `make demo` reads them instead of computing).
With --readme-images DIR it also writes the README's JPEGs there.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def write_overlay(slide, tissue, grid, path: Path) -> None:
    """Thumbnail with the tissue outline (green) and kept patches (blue squares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    thumb = slide.thumbnail(1600)
    f = thumb.shape[1] / slide.dimensions[0]  # thumbnail px per level-0 px
    fig, ax = plt.subplots(figsize=(thumb.shape[1] / 100, thumb.shape[0] / 100), dpi=100)
    ax.imshow(thumb)
    for poly in tissue.polygons_level0:
        for ring in [poly.exterior, *poly.interiors]:
            x, y = np.asarray(ring.coords).T
            ax.plot(x * f, y * f, color="lime", lw=1.2)
    s = grid.patch_size_level0 * f
    for x, y in grid.coords:
        ax.add_patch(Rectangle((x * f, y * f), s, s, fill=False, ec="royalblue", lw=0.4))
    ax.set_axis_off()
    ax.set_title(f"{len(grid.coords)} patches of {grid.patch_px} px at {grid.target_mpp:g} µm/px; tissue {tissue.area_mm2:.1f} mm²")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _settle(seconds: float = 3.0) -> None:
    """Let napari load the tiles in view (they arrive asynchronously)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def _wait(done) -> None:
    from qtpy.QtWidgets import QApplication

    while not done():
        QApplication.processEvents()
        time.sleep(0.05)


def _grab(viewer, path: Path) -> None:
    """The whole window (canvas, layer list and the CARE dock) as a PNG."""
    viewer.window._qt_window.grab().save(str(path))


def napari_demo(slide_path: Path, out: Path, heads: list[Path]) -> None:
    """Open the slide in a shown napari window, run the CARE widget, inspect a region, export, screenshot."""
    import napari

    from napari_care._widget import DEMO, camera

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(slide_path), plugin="napari-care")
    viewer.reset_view()
    _settle()
    _grab(viewer, out / "napari_screenshot.png")
    _, widget = viewer.window.add_plugin_dock_widget("napari-care", "CARE regions")
    if widget.checkpoint.value != DEMO:
        print("checkpoint     the demo checkpoint is not installed: an untrained CARE (seed 0) runs")
    if heads:  # else the widget's own: the demo heads, with the demo checkpoint
        widget.heads.value = heads
    t0 = time.perf_counter()
    widget.run_button.click()
    _wait(lambda: not widget.busy())
    print(f"napari widget  {widget.status.text()} ({time.perf_counter() - t0:.1f} s from Run to regions on screen)")
    if widget.result is None:
        raise SystemExit(f"demo: the run failed: {widget.status.text()}")
    enc = widget.result.encoding
    print("stages         " + ", ".join(f"{k} {v:.1f} s" for k, v in widget.result.timings.items()))
    # select the heaviest region that is not the ROI, so the window shows both outlines
    others = [r for r in np.argsort(-enc.pi) if r != enc.roi]
    widget.select_region(int(others[0]) if others else int(enc.roi))
    viewer.reset_view()
    _settle()
    _grab(viewer, out / "napari_regions.png")
    widget.export_to(out)
    _wait(lambda: widget.export_button.isEnabled())  # disabled while the export worker runs
    print(f"exports        {widget.status.text()}")
    # full resolution at the ROI's top-left vertex: the pyramid serves the level-0 tiles in view only
    roi = widget.layers["roi"]
    ring = np.asarray(roi.data[0])
    top, left = ring[np.argmin(ring.sum(axis=1))]  # the ROI outline's top-left vertex (µm)
    for layer in viewer.layers[1:]:
        layer.visible = layer.name == roi.name  # the plugin's viewer is napari's proxy: compare names
    cam = camera(viewer)
    cam.center = (*cam.center[:-2], top, left)  # the ROI's top-left corner in the middle of the view
    camera(viewer).zoom = 1.0 / viewer.layers[0].scale[0]  # one screen px per level-0 px
    _settle()
    _grab(viewer, out / "napari_full_resolution.png")
    viewer.close()


def readme_images(out: Path, folder: Path) -> None:
    """Small JPEGs of the demo's pictures for the README (longest side 1200 px)."""
    from PIL import Image

    from care_core._atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in (("napari_screenshot.png", "napari_slide.jpg"), ("napari_regions.png", "napari_regions.jpg"),
                     ("napari_full_resolution.png", "napari_full_resolution.jpg"),
                     ("thumbnail_overlay.png", "thumbnail_overlay.jpg")):
        img = Image.open(out / src).convert("RGB")
        img.thumbnail((1200, 1200))
        with atomic_path(folder / dst) as tmp:
            img.save(tmp, format="JPEG", quality=80, optimize=True)
        print(f"readme image   {folder / dst} ({(folder / dst).stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--width-px", type=int, default=24000)
    parser.add_argument("--height-px", type=int, default=18000)
    parser.add_argument("--head", type=Path, action="append", default=[], help="a saved prediction head (repeatable)")
    parser.add_argument("--readme-images", type=Path, default=None, help="also write the README's JPEGs here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_CARE_CACHE"] = str((args.out / "cache").resolve())  # results cached beside the demo

    from care_core.synth import ensure_sample_slide
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    t0 = time.perf_counter()
    sample = ensure_sample_slide(args.out, width_px=args.width_px, height_px=args.height_px, seed=0)
    print(f"sample slide   {sample.slide_path} ({time.perf_counter() - t0:.1f} s)")
    with open_slide(sample.slide_path) as slide:
        tissue = detect_tissue(slide)
        grid = patch_grid(slide, tissue)
        write_overlay(slide, tissue, grid, args.out / "thumbnail_overlay.png")
        print(f"tissue         {tissue.area_mm2:.1f} mm², {len(grid.coords)} patches at 0.5 µm/px")
    napari_demo(sample.slide_path, args.out, args.head)
    if args.readme_images is not None:
        readme_images(args.out, args.readme_images)
    print(f"outputs        {args.out}/")


if __name__ == "__main__":
    main()
