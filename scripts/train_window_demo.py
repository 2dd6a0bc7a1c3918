"""Train from the window, as a pathologist would, on slides no test made: looked at in napari.

Writes four synthetic H&E slides (6144 x 4608 px at 0.5 µm/px), opens them in a shown napari window, outlines
tumour and stroma on each (from the slides' ground-truth masks, as a pathologist's annotation layers: one
Shapes layer per class), then in the Train CARE widget starts a region classifier: the job extracts the
slides' features, cross-validates the classifier, saves its final head, and the CARE widget analyses the
open slide with it. Writes napari_train.png (the window at the end) and the run folder under --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import _grab, _settle, _wait  # noqa: E402

CLASSES = {1: "tumour", 2: "stroma"}  # synthetic mask labels


def class_outlines(mask: np.ndarray, downsample: int, label: int, mpp: float, keep: int = 3) -> list[np.ndarray]:
    """The ``keep`` largest areas of ``label`` in the mask as (row, col) µm polygons (a pathologist's outlines)."""
    from skimage import measure

    regions = measure.label(mask == label)
    props = sorted(measure.regionprops(regions), key=lambda p: -p.area)[:keep]
    out = []
    for p in props:
        contour = max(measure.find_contours(regions == p.label, 0.5), key=len)[::4]
        out.append((contour + 0.5) * downsample * mpp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo-output/train-window"))
    ap.add_argument("--readme-image", type=Path, default=None, help="also save the screenshot as this JPEG")
    ap.add_argument("--export-image", type=Path, default=None,
                    help="also save, as this JPEG, the regions' GeoJSON export opened back over the slide")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_CARE_CACHE", str(args.out / "cache"))

    import napari

    from care_core.synth import write_sample_slide
    from care_core.synth.truth import read_mask
    from napari_care._train_inputs import REGION
    from napari_care._train_widget import TrainWidget
    from napari_care._widget import CareWidget

    slides = []
    for i in range(4):
        path = args.out / "slides" / f"case{i}.svs"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_sample_slide(path, width_px=6144, height_px=4608, seed=40 + i)
        slides.append(path)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    for path in slides:
        viewer.open(str(path), plugin="napari-care")
    for path in slides:
        mask, ds = read_mask(path.with_name(f"{path.stem}_mask.tif"))
        for label, name in CLASSES.items():
            viewer.add_shapes(class_outlines(mask, ds, label, 0.5), shape_type="polygon", name=f"{name} ({path.stem})",
                              edge_color="yellow" if label == 1 else "cyan", face_color="transparent", edge_width=8,
                              features={"class": [name] * len(class_outlines(mask, ds, label, 0.5))},
                              metadata={"care_source": path.stem}, visible=path == slides[0], units=("µm", "µm"))
    for layer in viewer.layers:
        if layer._type_string == "image":
            layer.visible = layer.name == slides[0].stem
    care, train = CareWidget(viewer), TrainWidget(viewer)
    care_dock = viewer.window.add_dock_widget(care, name="CARE regions")
    viewer.window.add_dock_widget(train, name="Train CARE", tabify=True)
    care.slide.value = viewer.layers[slides[0].stem]
    train.job_choice.value = REGION
    train.folds.value = 3
    run = args.out / f"region-{time.strftime('%H%M%S')}"
    train.out.value = run
    t0 = time.perf_counter()
    if not train.start():
        raise SystemExit(train.status.text())
    _wait(lambda: not train.timer.isActive())
    print(f"job: {train.status.text()} ({time.perf_counter() - t0:.0f} s); {train.metrics_label.text()}")
    if train.job.returncode != 0:
        raise SystemExit(1)
    _grab(viewer, args.out / "napari_train_job.png")
    _wait(lambda: care.result is not None and not care.busy())
    for layer in viewer.layers:  # show each region's predicted class over the slide
        if layer.metadata.get("care_kind") == "class":
            layer.visible = True
    enc = care.result.encoding  # the region most sure of its class, in the inspector
    care.select_region(int(enc.predictions[0].region_proba.max(axis=1).argmax()))
    care_dock.raise_()
    viewer.reset_view()
    _settle(3.0)
    _grab(viewer, args.out / "napari_train.png")
    print(care.inspector.slide_summary.text())
    # the export, opened back over the slide: each region classified (and coloured) as its predicted class
    care.export_to(args.out / "export", formats=("geojson",))
    _wait(lambda: care.export_button.isEnabled())
    for layer in viewer.layers:
        layer.visible = layer._type_string == "image" and layer.name == slides[0].stem
    shapes = care.import_annotations(args.out / "export" / f"{slides[0].stem}_regions.geojson")
    shapes.face_color = [(*c[:3], 0.35) for c in shapes.edge_color]
    care.tabs.setCurrentIndex(1)
    viewer.reset_view()
    _settle(3.0)
    _grab(viewer, args.out / "napari_export.png")
    from PIL import Image

    for png, jpg in (("napari_train.png", args.readme_image), ("napari_export.png", args.export_image)):
        if jpg is not None:
            Image.open(args.out / png).convert("RGB").save(jpg, quality=85)
    viewer.close()


if __name__ == "__main__":
    main()
