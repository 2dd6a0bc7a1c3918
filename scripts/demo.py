"""The demo: write the synthetic sample slide, look at it through care_core and in napari.

Writes to --out (default demo-output/): sample_slide.svs (+ mask), thumbnail_overlay.png (tissue outline and
patch grid over the thumbnail), napari_screenshot.png (the slide opened with the plugin, µm scale bar).
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


def napari_screenshot(slide_path: Path, path: Path) -> None:
    """Open the slide in a shown napari window with the plugin, zoom to tissue, screenshot."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 950)
    viewer.open(str(slide_path), plugin="napari-care")
    viewer.canvas.overlays.scale_bar.visible = True  # units come from the layer (µm)
    viewer.reset_view()
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.1)
    viewer.screenshot(str(path), canvas_only=False)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--width-px", type=int, default=24000)
    parser.add_argument("--height-px", type=int, default=18000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from care_core.synth import write_sample_slide
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    slide_path = args.out / "sample_slide.svs"
    t0 = time.perf_counter()
    sample = write_sample_slide(slide_path, width_px=args.width_px, height_px=args.height_px, seed=0)
    print(f"sample slide   {sample.slide_path} ({time.perf_counter() - t0:.1f} s)")

    with open_slide(sample.slide_path) as slide:
        tissue = detect_tissue(slide)
        grid = patch_grid(slide, tissue)
        write_overlay(slide, tissue, grid, args.out / "thumbnail_overlay.png")
        print(f"tissue         {tissue.area_mm2:.1f} mm², {len(grid.coords)} patches at 0.5 µm/px")
    napari_screenshot(sample.slide_path, args.out / "napari_screenshot.png")
    print(f"outputs        {args.out}/")


if __name__ == "__main__":
    main()
