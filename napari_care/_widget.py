"""The CARE dock widget: analyse a slide in a worker thread, show the result as layers, inspect regions by click
or table, export them (QuPath, ASAP, OME-TIFF mask, CSV, npz) and import annotations. Thin over care_core."""

from __future__ import annotations

import html
import threading
from pathlib import Path

import napari
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ._inspector import InspectorPanel, wrapping_label
from ._layers import ROI_SCREEN_PX, annotation_layer, outline_layer, polygon_outlines, region_layers

_STAGES = {"tissue": "finding tissue", "features": "patch features", "care": "CARE regions",
           "heads": "predictions", "cache": "reading cached result"}
DEMO, UNTRAINED, FILE = "demo checkpoint", "untrained (random weights)", "checkpoint file"
_OUTLINE_PX = {"roi": ROI_SCREEN_PX, "highlight": ROI_SCREEN_PX, "annotations": 2.0}  # screen px per outline kind


def camera(viewer):
    """The viewer's camera (napari 0.9: ``viewer.scene.camera``; before: ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def show_scale_bar(viewer) -> None:
    """Switch the µm scale bar on (its units come from the slide layer)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    (overlays.scale_bar if overlays is not None else viewer.scale_bar).visible = True


def demo_checkpoint() -> Path | None:
    """The shipped demo CARE checkpoint (path without suffix), None when its files are not installed."""
    from care_core.model.checkpoint import DEMO_CHECKPOINT

    ok = all(DEMO_CHECKPOINT.with_name(DEMO_CHECKPOINT.name + s).is_file() for s in (".safetensors", ".json"))
    return DEMO_CHECKPOINT if ok else None


def gui_message(exc: Exception) -> str:
    """The library's message, with a fix that names a control of this window where the library names an
    argument the window does not have."""
    from care_core import errors

    cause = str(exc).split("; ")[0]
    fixes = {
        errors.MissingMppError: "enter the scan's pixel size in 'slide µm/px' and press Run again",
        errors.NoTissueError: "lower 'min tissue' and press Run again, or check that the slide holds tissue",
        errors.FeatureMismatchError: "choose a CARE checkpoint made for this patch encoder, or 'untrained'",
        errors.CheckpointError: "choose another file in 'CARE checkpoint', or 'untrained'",
        errors.HeadError: "choose heads trained for this checkpoint and encoder in 'prediction heads', or none",
    }
    if isinstance(exc, errors.InvalidInputError) and "patch_px" in str(exc):
        return f"{cause}; change 'patch size px' or 'patch µm/px' (0 = automatic)"
    for kind, fix in fixes.items():
        if isinstance(exc, kind):
            return f"{cause}; {fix}"
    return str(exc)


class CareWidget(QWidget):
    """Analyse: pick a slide layer, patch encoder, CARE checkpoint (the demo by default), heads and grid, press
    Run (a worker thread; Cancel stops at the next batch). Inspect: click a region or a table row. Export /
    import region files. Results are cached per slide file + settings, so a second Run is a file read."""

    result_shown = Signal()  # a result's layers and inspector are in place

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from care_core.features import list_encoders
        from care_core.pipeline import ResultCache

        self.viewer = napari_viewer
        self.cache = ResultCache.default()
        self.worker = None
        self.showing = False  # True while a result's layers are being added
        self.result = None  # the last SlideResult shown
        self.layers: dict[str, object] = {}  # care_kind -> layer of the shown result
        self._stop = threading.Event()
        self._slide = None  # the slide layer of the shown result

        demo = demo_checkpoint()
        self.slide = ComboBox(label="slide", choices=self._slide_layers, nullable=False)
        self.slide_mpp = FloatSpinBox(label="slide µm/px", value=0.0, min=0.0, max=100.0, step=0.001,
                                      tooltip="level-0 pixel size of the scan; 0 = as the file records it")
        self.encoder = ComboBox(label="patch encoder", choices=list_encoders(), value="stain-texture")
        self.weights = FileEdit(label="encoder weights", mode="r", value="",
                                tooltip="weight file of a foundation encoder (stain-texture needs none)")
        self.checkpoint = ComboBox(label="CARE checkpoint", choices=[DEMO, UNTRAINED, FILE],
                                   value=DEMO if demo else UNTRAINED)
        self.model = FileEdit(label="checkpoint file", mode="r", value="", filter="*.safetensors",
                              tooltip="a .safetensors CARE checkpoint (with its .json beside it)")
        self.seed = SpinBox(label="untrained seed", value=0, min=0, max=2**31 - 1)
        self.heads = FileEdit(label="prediction heads", mode="rm", value=(), filter="*.safetensors",
                              tooltip="heads saved by care evaluate, care finetune or the Train CARE widget (optional)")
        self.head_notes: dict[str, str] = {}  # head name -> its validation metrics (heads trained in this window)
        self.heads_label = wrapping_label()
        self.target_mpp = FloatSpinBox(label="patch µm/px", value=0.0, min=0.0, max=100.0, step=0.05,
                                       tooltip="0 = what the checkpoint was trained on, else what the encoder expects")
        self.patch_px = SpinBox(label="patch size px", value=0, min=0, max=8192,
                                tooltip="0 = what the checkpoint was trained on, else what the encoder expects")
        self.min_tissue = FloatSpinBox(label="min tissue", value=0.25, min=0.0, max=1.0, step=0.05,
                                       tooltip="a patch is used when at least this fraction of it is tissue")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.form = Container(widgets=[self.slide, self.slide_mpp, self.encoder, self.weights, self.checkpoint,
                                       self.model, self.seed, self.heads, self.target_mpp, self.patch_px,
                                       self.min_tissue, self.device])
        self.run_button, self.cancel_button = QPushButton("Run CARE"), QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = wrapping_label("" if demo else "demo checkpoint not installed: an untrained CARE (seed 0) runs")
        self.cache_label = wrapping_label()
        self.clear_cache_button = QPushButton("Clear cache")
        self.inspector = InspectorPanel()
        self.export_button, self.import_button = QPushButton("Export regions…"), QPushButton("Import annotations…")
        self.export_button.setEnabled(False)
        self._build_layout()
        self._update_checkpoint_fields()
        self._update_cache_label()

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.clear_cache_button.clicked.connect(self.clear_cache)
        self.export_button.clicked.connect(self._ask_export)
        self.import_button.clicked.connect(self._ask_import)
        self.checkpoint.changed.connect(self._update_checkpoint_fields)
        self.slide.changed.connect(self._on_slide_changed)
        self.inspector.region_selected.connect(lambda rid: self.select_region(rid, center=True))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.slide.reset_choices)
        napari_viewer.mouse_drag_callbacks.append(self._on_mouse_press)
        napari_viewer.mouse_move_callbacks.append(self._on_mouse_move)
        camera(napari_viewer).events.zoom.connect(self._update_outline_widths)
        napari_viewer.bind_key("Alt-Right", lambda _v: self.inspector.step(+1), overwrite=True)
        napari_viewer.bind_key("Alt-Left", lambda _v: self.inspector.step(-1), overwrite=True)
        show_scale_bar(napari_viewer)
        self._on_slide_changed()
        threading.Thread(target=_preload, name="napari-care-preload", daemon=True).start()

    def _build_layout(self) -> None:
        analyse = QWidget()
        col = QVBoxLayout(analyse)
        col.addWidget(self.form.native)
        col.addWidget(self.heads_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        col.addLayout(buttons)
        col.addWidget(self.progress)
        col.addWidget(self.status)
        cache = QHBoxLayout()
        cache.addWidget(self.cache_label, stretch=1)
        cache.addWidget(self.clear_cache_button)
        col.addLayout(cache)
        col.addStretch(1)
        inspect = QWidget()
        col = QVBoxLayout(inspect)
        col.addWidget(self.inspector, stretch=1)
        files = QHBoxLayout()
        files.addWidget(self.export_button)
        files.addWidget(self.import_button)
        col.addLayout(files)
        self.tabs = QTabWidget()
        self.tabs.addTab(analyse, "Analyse")
        self.tabs.addTab(inspect, "Inspect")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    def busy(self) -> bool:
        """A run is in flight or its result is still being put on screen."""
        return self.worker is not None or self.showing

    # --- form --------------------------------------------------------------------------------------------
    def _slide_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.metadata.get("path")]

    def _on_slide_changed(self, *_args) -> None:
        layer = self.slide.value
        mpp = None if layer is None else layer.metadata.get("mpp")
        self.slide_mpp.value = 0.0 if mpp is None else float(mpp)

    def _update_checkpoint_fields(self, *_args) -> None:
        self.model.visible = self.checkpoint.value == FILE
        self.seed.visible = self.checkpoint.value == UNTRAINED

    def add_trained(self, care: str | Path | None, head: str | Path | None = None) -> None:
        """Offer a freshly trained result (the Train widget calls this when a job ends): ``care`` becomes the
        checkpoint (the demo's own path selects 'demo checkpoint'; None: an untrained CARE, as the head was
        trained on) and ``head`` is added to 'prediction heads', its validation metrics shown under it."""
        demo = demo_checkpoint()
        if care is None:
            self.checkpoint.value = UNTRAINED
        elif demo is not None and Path(care).with_suffix("") == demo:
            self.checkpoint.value = DEMO
        else:
            self.checkpoint.value = FILE
            self.model.value = Path(care).with_suffix(".safetensors")
        if head is not None:
            heads = [Path(p) for p in (self.heads.value or ()) if str(p) not in ("", ".")]
            new = Path(head).with_suffix(".safetensors")
            self.heads.value = [*[h for h in heads if h != new], new]
            name, note = head_note(new)
            self.head_notes[name] = note
            self.heads_label.setText("<br>".join(f"<b>{html.escape(k)}</b>: {html.escape(v)}"
                                                 for k, v in self.head_notes.items()))

    def _model_choice(self) -> tuple[Path | None, str]:
        """(checkpoint path or None for untrained, a label for it)."""
        if self.checkpoint.value == DEMO:
            demo = demo_checkpoint()
            if demo is not None:
                return demo, "demo checkpoint"
            self.status.setText("demo checkpoint not installed: running an untrained CARE (seed 0)")
            return None, "untrained (seed 0)"
        if self.checkpoint.value == FILE and _optional_path(self.model.value) is not None:
            path = _optional_path(self.model.value)
            return path, path.stem
        return None, f"untrained (seed {self.seed.value})"

    def _update_cache_label(self) -> None:
        size = self.cache.size_bytes()
        self.cache_label.setText(f"cache: {self.cache.root} ({size / 1e6:.1f} MB)")

    def clear_cache(self) -> None:
        """Delete every cached result (features and encodings); the next Run computes them again."""
        freed = self.cache.clear()
        self.status.setText(f"cache cleared ({freed / 1e6:.1f} MB)")
        self._update_cache_label()

    # --- run ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Start the pipeline on the chosen slide in a worker thread."""
        from care_core.pipeline import iter_slide_pipeline

        layer = self.slide.value
        if layer is None:
            self.status.setText("open a slide first (File → Open, or File → Open Sample → napari CARE)")
            return
        if self.worker is not None:
            return
        model, model_label = self._model_choice()
        heads = [Path(p) for p in (self.heads.value or ()) if str(p) not in ("", ".")]
        mpp = self.slide_mpp.value or None
        self._stop = threading.Event()
        worker = create_worker(
            iter_slide_pipeline, layer.metadata["path"], encoder=self.encoder.value,
            weights=_optional_path(self.weights.value), model=model, untrained_seed=self.seed.value, heads=heads,
            mpp=mpp, target_mpp=self.target_mpp.value or None, patch_px=self.patch_px.value or None,
            min_tissue=self.min_tissue.value, device=self.device.value, cache=self.cache, stop=self._stop,
            _start_thread=False, _ignore_errors=True,  # errors go to _on_error only, never re-raised on the Qt thread
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(layer, result, model_label, mpp))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first stage reports
        self.status.setText(f"starting ({model_label})")
        worker.start()

    def cancel(self) -> None:
        """Stop the running pipeline at its next batch; it closes its readers in the worker thread."""
        if self.worker is not None:
            self._stop.set()
            self.status.setText("cancelling")

    def _on_progress(self, step) -> None:
        self.progress.setRange(0, max(step.total, 1))
        self.progress.setValue(step.done)
        self.status.setText(f"{_STAGES.get(step.stage, step.stage)}: {step.done} / {step.total}")

    def _on_done(self, layer: Image, result, model_label: str, mpp: float | None) -> None:
        if result is None:
            self.status.setText("cancelled")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            return
        if layer.metadata.get("mpp") is None and mpp is not None:  # the slide gets the µm/px the user gave
            layer.metadata["mpp"] = mpp
            layer.scale = (mpp, mpp)
            layer.units = ("µm", "µm")
        self.show_result(layer, result, model_label, staged=True)
        t = result.timings
        how = "from the cache" if result.cached else f"in {sum(t.values()):.1f} s"
        enc = result.encoding
        self.status.setText(f"{enc.n_regions} regions; ROI = region {enc.roi} ({model_label}, {how})")
        self._update_cache_label()

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        message = gui_message(exc)
        self.status.setText(f"error: {message}")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    # --- result as layers --------------------------------------------------------------------------------
    def show_result(self, layer: Image, result, model_label: str = "", *, staged: bool = False) -> None:
        """Show ``result`` as this slide's CARE layers (updated in place on a re-run) and fill the inspector.

        staged: add one layer per turn of the Qt event loop (napari needs about half a second to create a
        layer's visual; spread out, the window keeps answering in between). ``result_shown`` tells when done.
        """
        steps = self._show_steps(layer, result, model_label)
        self.showing = True
        if not staged:
            for _ in steps:
                pass
            return

        def next_step() -> None:
            try:
                more = next(steps, None) is not None
            except Exception as exc:  # never let a layer error escape into the Qt loop
                self.showing = False
                self._on_error(exc)
                return
            if more:
                QTimer.singleShot(0, next_step)

        next_step()

    def _show_steps(self, layer: Image, result, model_label: str):
        mpp = layer.metadata["mpp"]
        enc = result.encoding
        if self._slide is None or self._slide.name != layer.name:  # another slide: only the highlight moves over
            self.layers = {k: v for k, v in self.layers.items() if k == "highlight"}
        new_layers = region_layers(enc, mpp, name=layer.name, tissue_mask=result.tissue_mask,
                                   tissue_downsample=result.tissue_downsample, zoom=camera(self.viewer).zoom)
        self._slide = layer
        self.result = result
        self.select_region(None)
        yield "prepared"
        keys = []
        for data, kwargs, kind in new_layers:
            meta = kwargs["metadata"] = {**kwargs["metadata"], "care_source": layer.name}
            if meta["care_kind"] == "regions":
                meta.update(care_encoding=enc, model=model_label)
            keys.append(meta["care_kind"] + meta.get("head", ""))
            self.layers[keys[-1]] = self._put_layer(data, kwargs, kind)
            yield keys[-1]
        for key in [k for k in self.layers if k not in keys and k != "highlight"]:  # e.g. a head no longer loaded
            old = self.layers.pop(key)
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        self.inspector.set_encoding(enc, model_label=model_label, head_notes=self.head_notes)
        self.export_button.setEnabled(True)
        yield "inspector"
        self.viewer.layers.selection.active = self.layers["regions"]  # napari builds its layer controls here
        yield "selection"
        self.tabs.setCurrentIndex(1)
        self.showing = False
        self.result_shown.emit()
        yield "done"

    def _put_layer(self, data, kwargs: dict, kind: str):
        """Update this slide's layer of the same CARE kind in place, or add it. (Removing a napari layer runs a
        full garbage collection, a second or more with torch loaded, so layers are reused.)"""
        meta = kwargs["metadata"]
        for old in self.viewer.layers:
            same = old.metadata.get("care_source") == meta["care_source"] and old.metadata.get("care_kind") == meta["care_kind"]
            if same and old.metadata.get("head") == meta.get("head") and old._type_string == kind:
                break
        else:
            return getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        if kind == "shapes":
            set_outline(old, data, kwargs["edge_width"], kwargs["edge_color"][0])
        else:
            old.data = data
            for key in ("scale", "translate", "colormap", "contrast_limits"):
                if key in kwargs:
                    setattr(old, key, kwargs[key])
        old.metadata = meta
        return old

    def region_at(self, world_position) -> int | None:
        """Region id under a world (µm) position, None off the regions."""
        regions = self.layers.get("regions")
        if regions is None or regions not in self.viewer.layers:
            return None
        row, col = (int(round(v)) for v in regions.world_to_data(world_position)[-2:])  # works while hidden too
        if not (0 <= row < regions.data.shape[0] and 0 <= col < regions.data.shape[1]):
            return None
        value = int(regions.data[row, col])
        return value - 1 if value > 0 else None

    def select_region(self, region_id: int | None, *, center: bool = False) -> None:
        """Highlight ``region_id`` (a white outline), show it in the inspector, optionally centre the view on it."""
        from care_core.regions import region_geometry

        self.inspector.show_region(region_id)
        if self.result is None:
            return
        mpp = self._slide.metadata["mpp"]
        zoom = camera(self.viewer).zoom
        geometry = None if region_id is None else region_geometry(self.result.encoding, region_id)
        highlight = self.layers.get("highlight")
        if highlight is not None and highlight in self.viewer.layers:
            data = [] if geometry is None else polygon_outlines(geometry, mpp)
            set_outline(highlight, data, _OUTLINE_PX["highlight"] / zoom, (1.0, 1.0, 1.0, 1.0))
        elif geometry is not None:
            data, kwargs, _ = outline_layer(geometry, mpp, name=f"{self._slide.name} selected",
                                            color=(255, 255, 255), kind="highlight", zoom=zoom)
            kwargs["metadata"]["care_source"] = self._slide.name
            active = self.viewer.layers.selection.active
            self.layers["highlight"] = self.viewer.add_shapes(data, **kwargs)
            if active is not None:
                self.viewer.layers.selection.active = active
        if center and region_id is not None:
            row = self.inspector.rows[region_id]
            cam = camera(self.viewer)
            cam.center = (*cam.center[:-2], row["centroid_y_level0"] * mpp, row["centroid_x_level0"] * mpp)

    def go_to_roi(self) -> None:
        """Select the ROI and centre the view on it."""
        if self.result is not None:
            self.select_region(int(self.result.encoding.roi), center=True)

    def _on_mouse_press(self, _viewer, event):
        if event.button != 1 or self.result is None:
            return
        start = tuple(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = True
            yield
        if not moved or max(abs(a - b) for a, b in zip(start, event.position)) * camera(self.viewer).zoom < 3:
            self.select_region(self.region_at(event.position))

    def _on_mouse_move(self, _viewer, event) -> None:
        if self.result is not None:
            self.inspector.show_hover(self.region_at(event.position))

    def _update_outline_widths(self, *_args) -> None:
        zoom = max(camera(self.viewer).zoom, 1e-9)
        for layer in self.viewer.layers:
            px = _OUTLINE_PX.get(layer.metadata.get("care_kind"))
            if px is not None and layer.nshapes:
                layer.edge_width = px / zoom

    # --- files -------------------------------------------------------------------------------------------
    def _ask_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export regions to folder")
        if folder:
            self.export_to(folder)

    def export_to(self, folder: str | Path, formats=None):
        """Write every export of the shown result into ``folder`` in a worker thread; returns the worker."""
        from care_core.regions import EXPORT_FORMATS, export_regions

        if self.result is None:
            self.status.setText("nothing to export yet: press Run CARE first")
            return None
        enc, stem = self.result.encoding, Path(self._slide.metadata["path"]).stem
        worker = create_worker(export_regions, enc, Path(folder), stem, formats=tuple(formats or EXPORT_FORMATS),
                               slide_mpp=self._slide.metadata["mpp"], _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda written: self.status.setText(
            f"exported {', '.join(p.name for p in written.values())} to {folder}"))
        worker.errored.connect(self._on_error)
        self.export_button.setEnabled(False)
        worker.finished.connect(lambda: self.export_button.setEnabled(True))
        self.status.setText(f"exporting to {folder}")
        self.export_worker = worker
        worker.start()
        return worker

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import annotations", "",
                                              "QuPath GeoJSON or ASAP XML (*.geojson *.json *.xml)")
        if path:
            self.import_annotations(path)

    def import_annotations(self, path: str | Path):
        """Open a QuPath GeoJSON / ASAP XML file as a Shapes layer over the chosen slide; returns the layer."""
        from care_core.errors import CareError
        from care_core.regions import read_annotations

        layer = self.slide.value
        mpp = None if layer is None else layer.metadata.get("mpp")
        try:
            annotations = read_annotations(path)
        except CareError as exc:
            self._on_error(exc)
            return None
        data, kwargs, _ = annotation_layer(annotations, mpp, name=Path(path).name)
        kwargs["edge_width"] = _OUTLINE_PX["annotations"] / max(camera(self.viewer).zoom, 1e-9)
        if layer is not None:  # the slide they belong to (a region classifier trained from the window needs it)
            kwargs["metadata"]["care_source"] = Path(layer.metadata["path"]).stem
        shapes = self.viewer.add_shapes(data, **kwargs)
        self.status.setText(f"{len(annotations)} annotations from {Path(path).name}")
        return shapes


def set_outline(layer, rings: list, edge_width: float, edge_color) -> None:
    """Replace a Shapes layer's polygons by ``rings`` (outlines only), keeping the layer."""
    import numpy as np

    layer.data = [(ring, "polygon") for ring in rings]
    if rings:
        layer.edge_width = edge_width
        layer.edge_color = np.tile(np.asarray(edge_color, float), (len(rings), 1))
        layer.face_color = "transparent"


def head_note(path: str | Path) -> tuple[str, str]:
    """(head name, one line of its validation metrics: a probe's cross-validated means, a fine-tune's best
    validation scores) from the head's .json."""
    import json

    try:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return Path(path).stem, ""
    metrics = meta.get("metrics") or {}
    metrics = metrics.get("cv", metrics)
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return str(meta.get("name") or Path(path).stem), ", ".join(f"{k} {v:.3g}" for k, v in list(shown.items())[:5])


def _preload() -> None:
    """Import what a run and its layers need (torch, the model, pandas for layer features) in the background
    when the widget opens, so pressing Run does not stall the window on first imports."""
    import pandas  # noqa: F401  napari's Labels layer imports it on first use

    import care_core.features  # noqa: F401
    import care_core.model.care  # noqa: F401  torch


def _optional_path(value) -> Path | None:
    """FileEdit's value, or None when the field is empty."""
    return Path(value) if str(value) not in ("", ".") else None

