"""The CARE dock widget: analyse a slide in a worker thread, show the result as layers, inspect regions by click
or table, export them (QuPath, ASAP, OME-TIFF mask, CSV, npz) and import annotations. Thin over care_core."""

from __future__ import annotations

import gc
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

from ._form import (
    DEMO,
    FILE,
    UNTRAINED,
    HeadInfo,
    checkpoint_sha256,
    demo_checkpoint,
    gui_message,
    head_info,
    heads_for_model,
    optional_path,
)
from ._inspector import InspectorPanel, wrapping_label
from ._layers import annotation_layer
from ._result_view import ResultView
from ._run import Placed, record_tissue_fraction, run_and_prepare
from ._find_similar import FindSimilar
from ._gallery import SimilarPanel
from ._view import OUTLINE_PX, camera, show_scale_bar, update_outline_widths, zoom_of

__all__ = ["CareWidget", "DEMO", "FILE", "UNTRAINED", "camera", "gui_message", "show_scale_bar"]

_STAGES = {"tissue": "finding tissue", "features": "patch features", "care": "CARE regions",
           "heads": "predictions", "cache": "reading cached result"}
MPP_DECIMALS = 6  # 'slide µm/px' shows and takes the scan's pixel size to 6 decimals
STEP_PAUSE_MS = 20  # between two layers put on screen (a zero pause chains them into one stall with one draw)


class CareWidget(FindSimilar, QWidget):
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
        self.view = ResultView(napari_viewer)
        self._stop = threading.Event()

        demo = demo_checkpoint()
        self.slide = ComboBox(label="slide", choices=self._slide_layers, nullable=False)
        self.slide_mpp = FloatSpinBox(label="slide µm/px", value=0.0, min=0.0, max=100.0, step=0.001,
                                      tooltip="level-0 pixel size of the scan; 0 = as the file records it")
        self.slide_mpp.native.setDecimals(MPP_DECIMALS)
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
        self.find_button = QPushButton("Find similar")
        self.find_button.setEnabled(False)
        self.find_button.setToolTip("the regions most like the selected one, in this slide or a region index")
        self.similar = SimilarPanel()
        self.similar_worker = None
        self._build_layout()
        self._update_checkpoint_fields()
        self._update_cache_label()

        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.clear_cache_button.clicked.connect(self.clear_cache)
        self.export_button.clicked.connect(self._ask_export)
        self.import_button.clicked.connect(self._ask_import)
        self.find_button.clicked.connect(lambda: self.find_similar())
        self.similar.find_clicked.connect(lambda: self.find_similar())
        self.similar.hit_clicked.connect(self.go_to_hit)
        self.checkpoint.changed.connect(self._update_checkpoint_fields)
        self.heads.changed.connect(self._update_heads_label)
        self.slide.changed.connect(self._on_slide_changed)
        self.inspector.region_selected.connect(lambda rid: self.select_region(rid, center=True))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.slide.reset_choices)
        napari_viewer.mouse_drag_callbacks.append(self._on_mouse_press)
        napari_viewer.mouse_move_callbacks.append(self._on_mouse_move)
        camera(napari_viewer).events.zoom.connect(lambda _e: update_outline_widths(napari_viewer))
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
        files.addWidget(self.find_button)
        files.addWidget(self.export_button)
        files.addWidget(self.import_button)
        col.addLayout(files)
        self.tabs = QTabWidget()
        self.tabs.addTab(analyse, "Analyse")
        self.tabs.addTab(inspect, "Inspect")
        self.tabs.addTab(self.similar, "Similar")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    @property
    def result(self):
        """The SlideResult shown (None before the first Run)."""
        return self.view.result

    @property
    def layers(self) -> dict:
        """care kind (+ head name) -> layer of the shown result."""
        return self.view.layers

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

    def slide_mpp_value(self) -> float | None:
        """The level-0 µm/px to run with: the file's exact value while the field shows it (the field holds 6
        decimals), else what the user typed; None when both are unknown."""
        typed = self.slide_mpp.value or None
        layer = self.slide.value
        recorded = None if layer is None else layer.metadata.get("mpp")
        if recorded is not None and (typed is None or abs(typed - recorded) < 0.5 * 10 ** -MPP_DECIMALS):
            return float(recorded)
        return typed

    def _update_checkpoint_fields(self, *_args) -> None:
        from care_core.model import DEMO_HEADS, demo_heads

        self.model.visible = self.checkpoint.value == FILE
        self.seed.visible = self.checkpoint.value == UNTRAINED
        demo_own = {h.with_suffix(".safetensors") for h in DEMO_HEADS}
        if self.checkpoint.value == DEMO and demo_checkpoint() is not None and not self.head_paths():
            self.set_heads(demo_heads())  # the demo's heads go with it: a click on a region shows predictions
        elif self.checkpoint.value != DEMO and demo_own & set(self.head_paths()):
            self.set_heads([h for h in self.head_paths() if h not in demo_own])  # they take only the demo's regions

    def head_paths(self) -> list[Path]:
        """The heads listed under 'prediction heads'."""
        return [Path(p) for p in (self.heads.value or ()) if optional_path(p) is not None]

    def set_heads(self, heads) -> None:
        """List ``heads`` (paths to .safetensors or without suffix) under 'prediction heads'."""
        self.heads.value = [Path(h).with_suffix(".safetensors") for h in heads]
        self._update_heads_label()

    def head_infos(self) -> dict[str, HeadInfo]:
        """{head name: HeadInfo} of the listed heads."""
        return {info.name: info for info in map(head_info, self.head_paths())}

    def _update_heads_label(self, *_args) -> None:
        notes = [f"<b>{html.escape(i.title)}</b>: {html.escape(i.note)}" for i in self.head_infos().values() if i.note]
        self.heads_label.setText("<br>".join(notes))
        self.heads_label.setVisible(bool(notes))

    def add_trained(self, care: str | Path | None, head: str | Path | None = None) -> None:
        """Offer a freshly trained result (the Train widget calls this when a job ends): ``care`` becomes the
        checkpoint (the demo's own path selects 'demo checkpoint'; None: an untrained CARE, as the head was
        trained on) and ``head`` joins 'prediction heads'. Heads trained on another CARE model leave the list:
        a new CARE takes only heads trained on it; the demo heads leave it too (a trained result supersedes them)."""
        demo = demo_checkpoint()
        if care is None:
            self.checkpoint.value = UNTRAINED
        elif demo is not None and Path(care).with_suffix("") == demo:
            self.checkpoint.value = DEMO
        else:
            self.checkpoint.value = FILE
            self.model.value = Path(care).with_suffix(".safetensors")
        new = None if head is None else Path(head).with_suffix(".safetensors")
        sha = head_info(new).model_sha256 if new is not None else checkpoint_sha256(optional_path(care))
        from care_core.model import DEMO_HEADS

        demo_own = {h.with_suffix(".safetensors") for h in DEMO_HEADS}  # placeholders until one's own heads exist
        kept = heads_for_model([h for h in self.head_paths() if h != new and h not in demo_own], sha)
        self.set_heads([*kept, *([new] if new is not None else [])])

    def _model_choice(self) -> tuple[Path | None, str]:
        """(checkpoint path or None for untrained, a label for it)."""
        if self.checkpoint.value == DEMO:
            demo = demo_checkpoint()
            if demo is not None:
                return demo, "demo checkpoint"
            self.status.setText("demo checkpoint not installed: running an untrained CARE (seed 0)")
            return None, "untrained (seed 0)"
        if self.checkpoint.value == FILE and optional_path(self.model.value) is not None:
            path = optional_path(self.model.value)
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
    def run(self, slide: Image | None = None) -> None:
        """Start the pipeline on ``slide`` (default: the one chosen in 'slide'; another is chosen there first)
        in a worker thread, which also builds the result's layer data."""
        if slide is not None:
            self.slide.value = slide
        layer = self.slide.value
        if layer is None:
            self.status.setText("open a slide first (File → Open, or File → Open Sample → napari CARE)")
            return
        if self.worker is not None:
            return
        model, model_label = self._model_choice()
        mpp = self.slide_mpp_value()
        self._stop = threading.Event()
        infos = self.head_infos()
        kwargs = dict(encoder=self.encoder.value, weights=optional_path(self.weights.value), model=model,
                      untrained_seed=self.seed.value, heads=[i.path for i in infos.values()], mpp=mpp,
                      target_mpp=self.target_mpp.value or None, patch_px=self.patch_px.value or None,
                      min_tissue=self.min_tissue.value, device=self.device.value, cache=self.cache, stop=self._stop)
        view, titles = self.view, {name: i.title for name, i in infos.items()}
        placed = Placed(layer.name, mpp, layer.metadata.get("path"))
        worker = create_worker(run_and_prepare, view, placed, titles, kwargs,
                               _start_thread=False, _ignore_errors=True)  # errors go to _on_error only
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda done: self._on_done(layer, done, model_label, mpp, infos))
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

    def _on_done(self, layer: Image, done, model_label: str, mpp: float | None, infos: dict) -> None:
        if done is None:
            self.status.setText("cancelled")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            return
        result, new_layers = done
        if layer.metadata.get("mpp") != mpp and mpp is not None:  # the slide gets the µm/px the user gave
            layer.metadata["mpp"] = mpp
            layer.scale = (mpp, mpp)
            layer.units = ("µm", "µm")
        self.show_result(layer, result, model_label, staged=True, new_layers=new_layers, heads=infos)
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
    def show_result(self, layer: Image, result, model_label: str = "", *, staged: bool = False,
                    new_layers: list | None = None, heads: dict[str, HeadInfo] | None = None) -> None:
        """Show ``result`` as this slide's CARE layers (updated in place on a re-run) and fill the inspector.

        new_layers: the layer data, when a worker built it already. heads: {head name: HeadInfo} of its heads.
        staged: add one layer per turn of the Qt event loop (napari needs a while to create a layer's visual;
        spread out, the window keeps answering in between). ``result_shown`` tells when done.
        """
        heads = self.head_infos() if heads is None else heads
        record_tissue_fraction(result)
        if new_layers is None:
            new_layers = self.view.prepare(layer, result, {n: i.title for n, i in heads.items()})
        steps = self._show_steps(layer, result, model_label, new_layers, heads)
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
            if more:  # the pause lets the window draw the layer and answer input before the next one
                QTimer.singleShot(STEP_PAUSE_MS, next_step)

        next_step()

    def _show_steps(self, layer: Image, result, model_label: str, new_layers: list, heads: dict):
        self.inspector.show_region(None)
        yield from self.view.put(layer, result, new_layers, model_label)
        self.view.highlight(None)
        self.inspector.set_encoding(result.encoding, model_label=model_label, heads=heads)
        self._update_find_buttons()
        self.export_button.setEnabled(True)
        yield "inspector"
        self.viewer.layers.selection.active = self.layers["regions"]  # napari builds its layer controls here
        yield "selection"
        self.tabs.setCurrentIndex(1)
        self.showing = False
        self.result_shown.emit()
        yield "done"

    def region_at(self, world_position) -> int | None:
        """Region id under a world (µm) position, None off the regions."""
        return self.view.region_at(world_position)

    def select_region(self, region_id: int | None, *, center: bool = False) -> None:
        """Highlight ``region_id`` (a white outline), show it in the inspector, optionally centre the view on a
        patch of it."""
        if self.result is None:
            self.inspector.show_region(region_id)
            return
        self.inspector.show_region(region_id, None if region_id is None else self.view.composition(region_id))
        self._update_find_buttons()
        self.view.highlight(region_id)
        if center and region_id is not None:
            self.view.centre_on(region_id)

    def go_to_roi(self) -> None:
        """Select the ROI and centre the view on it."""
        if self.result is not None:
            self.select_region(int(self.result.encoding.roi), center=True)

    def _showing_result(self) -> bool:
        """A result exists and its slide is on screen (not hidden behind another slide gone to from Similar)."""
        return self.result is not None and self.view.slide.visible

    def _on_mouse_press(self, _viewer, event):
        if event.button != 1 or not self._showing_result():
            return
        start = tuple(event.position)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = True
            yield
        if not moved or max(abs(a - b) for a, b in zip(start, event.position)) * zoom_of(self.viewer) < 3:
            self.select_region(self.region_at(event.position))

    def _on_mouse_move(self, _viewer, event) -> None:
        if self._showing_result():
            self.inspector.show_hover(self.region_at(event.position))

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
        slide = self.view.slide
        enc, stem = self.result.encoding, Path(slide.metadata["path"]).stem
        worker = create_worker(export_regions, enc, Path(folder), stem, formats=tuple(formats or EXPORT_FORMATS),
                               slide_mpp=slide.metadata["mpp"], _start_thread=False, _ignore_errors=True)
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
        kwargs["edge_width"] = OUTLINE_PX["annotations"] / zoom_of(self.viewer)
        if layer is not None:  # the slide they belong to (a region classifier trained from the window needs it)
            kwargs["metadata"]["care_source"] = Path(layer.metadata["path"]).stem
        shapes = self.viewer.add_shapes(data, **kwargs)
        self.status.setText(f"{len(annotations)} annotations from {Path(path).name}")
        return shapes


def _preload() -> None:
    """Import what a run and its layers need (torch, the model, pandas for layer features, skimage.color for
    napari's label colours) in the background when the widget opens, so the first result's layers do not
    stall the window on first imports (0.5 s for pandas, 0.16 s for skimage.color); then run the full garbage
    collection these imports make due (0.25 s with torch loaded), so it does not fall in a later moment."""
    import pandas  # noqa: F401  napari's layers import it on first use
    import skimage.color  # noqa: F401  napari's Labels layer imports it on first use

    import care_core.features  # noqa: F401
    import care_core.model.care  # noqa: F401  torch

    gc.collect()  # now, not during the first result's layers (Python's first full collection after these imports)
