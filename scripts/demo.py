"""The demo: the synthetic sample slide through the whole pipeline, looked at in napari.

Writes to --out (default demo-output/): the sample slide (written once; + mask), thumbnail_overlay.png (tissue outline and
patch grid over the thumbnail), features/<slide>.h5 (stain-texture patch features), care/ (slide and ROI
embeddings, region table CSV, QuPath GeoJSON), napari_screenshot.png (the slide opened with the plugin, µm scale
bar), napari_regions.png (the CARE widget run on it: regions and ROI over the slide) and
napari_full_resolution.png (level 0 at a corner of the ROI). The CARE model is untrained (random
weights, seed 0): its regions are close to the k×k squares until a trained checkpoint is used.
"""

from __future__ import annotations

import argparse
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


def _settle() -> None:
    """Let napari load the tiles in view (they arrive asynchronously)."""
    from qtpy.QtWidgets import QApplication

    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.1)


def napari_screenshots(slide_path: Path, out: Path) -> None:
    """Open the slide in a shown napari window with the plugin; screenshot it, then run the CARE widget as a
    user would (it computes its own features in a worker thread) and screenshot the regions and level 0."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 950)
    viewer.open(str(slide_path), plugin="napari-care")
    viewer.canvas.overlays.scale_bar.visible = True  # units come from the layer (µm)
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(out / "napari_screenshot.png"), canvas_only=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-care", "CARE regions")
    widget.run_button.clicked.emit()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"napari widget  {widget.status.value}")
    viewer.reset_view()  # the dock took part of the canvas
    _settle()
    viewer.screenshot(str(out / "napari_regions.png"), canvas_only=False)
    # full resolution, at a corner of the ROI: the pyramid serves the level-0 tiles in view only
    top, left = viewer.layers[-1].data[0].min(axis=0)  # ROI outline, µm
    for layer in viewer.layers[1:]:
        layer.visible = False
    viewer.scene.camera.center = (top, left)
    viewer.scene.camera.zoom = 1.0 / viewer.layers[0].scale[0]  # screen px per µm: one screen px per level-0 px
    _settle()
    viewer.screenshot(str(out / "napari_full_resolution.png"), canvas_only=False)
    viewer.close()


def run_care(slide, tissue, grid, out: Path) -> None:
    """stain-texture features of the grid, then an untrained CARE over them; writes features and CARE outputs."""
    from care_core.encode import encode_paths
    from care_core.features import extract_features, get_encoder
    from care_core.model import CARE, SlideEncoding

    t0 = time.perf_counter()
    features = extract_features(slide, grid, get_encoder("stain-texture"))
    feature_path = features.save(out / "features" / f"{Path(slide.path).stem}.h5")
    print(f"features       {feature_path} {features.features.shape} ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    model = CARE.from_seed(0, input_dim=features.dim)
    written = encode_paths([feature_path], model, out / "care")
    encoding = SlideEncoding.load_npz(next(p for p in written if p.suffix == ".npz"))
    print(f"CARE           {encoding.n_regions} regions, ROI = region {encoding.roi} ({time.perf_counter() - t0:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--width-px", type=int, default=24000)
    parser.add_argument("--height-px", type=int, default=18000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

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
        run_care(slide, tissue, grid, args.out)
    napari_screenshots(sample.slide_path, args.out)
    print(f"outputs        {args.out}/")


if __name__ == "__main__":
    main()
