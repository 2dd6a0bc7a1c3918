"""Region search, looked at: a cohort indexed from the command line, then Find similar in a shown napari window.

1. The cohort (--cohort; a synthetic one of 8 slides is written there with `care synth --cohort 8 --features`
   when it holds no features/): `care predict` with the demo heads into <cohort>/predictions, then
   `care index` of those encodings into <cohort>/index (so each region carries its predicted class).
2. napari: one slide of the cohort opened, the CARE widget run on it (demo checkpoint and heads), its ROI
   selected, *Find similar* against the index; napari_similar.png (the gallery), then the first answer from
   another slide clicked: napari_similar_opened.png (that slide shown alone, the region outlined).

    python scripts/search_demo.py [--cohort build/demo-train/heldout] [--out demo-output]
                                  [--readme-images docs/images]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def care(*args: str) -> None:
    """A `care` command as a user types it; its output goes to the console."""
    print("$ care " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "care_core.cli", *args], check=True)


def prepare(cohort: Path) -> Path:
    """The cohort's region index (written when missing), with predicted classes."""
    if not (cohort / "features").is_dir():
        care("synth", str(cohort), "--cohort", "8", "--features")
    if not (cohort / "predictions" / "slide_predictions.csv").is_file():
        care("predict", str(cohort / "features"), "--out", str(cohort / "predictions"))
    care("index", str(cohort / "predictions"), "--out", str(cohort / "index"))
    return cohort / "index"


def window(cohort: Path, index: Path, out: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    def settle(seconds: float = 2.0) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.05)

    def wait(done) -> None:
        while not done():
            QApplication.processEvents()
            time.sleep(0.05)

    slide = sorted((cohort / "slides").glob("*.svs"))[3]
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(slide), plugin="napari-care")
    _, widget = viewer.window.add_plugin_dock_widget("napari-care", "CARE regions")
    widget.run_button.click()
    wait(lambda: not widget.busy())
    if widget.result is None:
        raise SystemExit(f"search demo: the run failed: {widget.status.text()}")
    widget.go_to_roi()
    viewer.reset_view()
    widget.similar.source.setCurrentText("a region index")
    widget.similar.index.value = str(index)
    t0 = time.perf_counter()
    widget.find_button.click()
    wait(lambda: widget.similar_worker is None)
    print(f"find similar   {widget.similar.status.text()} ({time.perf_counter() - t0:.2f} s from the click)")
    settle()
    viewer.window._qt_window.grab().save(str(out / "napari_similar.png"))
    other = next(i for i, item in enumerate(widget.similar.items) if item.hit.slide != slide.stem)
    widget.similar.gallery.itemClicked.emit(widget.similar.gallery.item(other))
    settle(3.0)
    hit = widget.similar.items[other].hit
    print(f"opened         {hit.slide}, region {hit.region} ({hit.predicted or 'no class'})")
    viewer.window._qt_window.grab().save(str(out / "napari_similar_opened.png"))
    viewer.close()


def readme_images(out: Path, folder: Path) -> None:
    from PIL import Image

    for src, dst in (("napari_similar.png", "napari_similar.jpg"),
                     ("napari_similar_opened.png", "napari_similar_opened.jpg")):
        img = Image.open(out / src).convert("RGB")
        img.thumbnail((1200, 1200))
        img.save(folder / dst, format="JPEG", quality=80, optimize=True)
        print(f"readme image   {folder / dst}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, default=Path("build/demo-train/heldout"))
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--readme-images", type=Path, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_CARE_CACHE", str((args.out / "cache").resolve()))
    index = prepare(args.cohort)
    window(args.cohort, index, args.out)
    if args.readme_images is not None:
        readme_images(args.out, args.readme_images)


if __name__ == "__main__":
    main()
