"""The CARE dock widget: run the pipeline on an open slide in a worker thread and show its regions and ROI."""

from __future__ import annotations

import threading
from pathlib import Path

import napari
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import thread_worker

from ._layers import region_layers

_STAGES = {"tissue": "finding tissue", "features": "patch features", "care": "CARE regions"}


class CareWidget(Container):
    """Pick a slide layer, a patch encoder and a CARE checkpoint (or an untrained model), press Run: patch
    features and CARE run in a worker thread (the viewer stays usable); the regions and ROI appear as layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        from care_core.features import list_encoders

        self.viewer = napari_viewer
        self.slide = ComboBox(label="slide", choices=self._slide_layers, nullable=False)
        self.encoder = ComboBox(label="patch encoder", choices=list_encoders(), value="stain-texture")
        self.weights = FileEdit(label="encoder weights", mode="r", value="", tooltip="weight file of a foundation encoder")
        self.model = FileEdit(label="CARE checkpoint", mode="r", value="",
                              tooltip="a .safetensors checkpoint; empty: an untrained CARE (random weights)")
        self.seed = SpinBox(label="untrained seed", value=0, min=0, max=2**31 - 1)
        self.run_button = PushButton(text="Run CARE")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, max=1)
        self.status = Label(value="")
        super().__init__(widgets=[self.slide, self.encoder, self.weights, self.model, self.seed, self.run_button,
                                  self.cancel_button, self.progress, self.status])
        self.worker = None
        self._stop = threading.Event()
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.slide.reset_choices)

    def _slide_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.metadata.get("path")]

    def run(self) -> None:
        """Start the pipeline on the chosen slide in a worker thread."""
        from care_core.pipeline import iter_slide_pipeline

        layer = self.slide.value
        if layer is None:
            self.status.value = "open a slide first (File → Open, or the CARE sample data)"
            return
        model = _optional_path(self.model.value)
        weights = _optional_path(self.weights.value)
        self._stop = threading.Event()
        worker = thread_worker(iter_slide_pipeline)(
            layer.metadata["path"], encoder=self.encoder.value, weights=weights, model=model,
            untrained_seed=self.seed.value, mpp=layer.metadata.get("mpp"), stop=self._stop,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda encoding: self._on_done(layer, encoding, untrained=model is None))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "starting"
        worker.start()

    def cancel(self) -> None:
        """Stop the running pipeline at its next batch; it closes its readers in the worker thread."""
        if self.worker is not None:
            self._stop.set()
            self.status.value = "cancelling"

    def _on_progress(self, step) -> None:
        self.progress.max, self.progress.value = max(step.total, 1), step.done
        self.status.value = f"{_STAGES[step.stage]}: {step.done} / {step.total}"

    def _on_done(self, layer: Image, encoding, *, untrained: bool) -> None:
        if encoding is None:
            self.status.value = "cancelled"
            return
        name = f"{layer.name} CARE{' (untrained)' if untrained else ''}"
        for old in [f"{name} regions", f"{name} ROI"]:
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        for data, kwargs, kind in region_layers(encoding, layer.metadata["mpp"], name=name):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.status.value = f"{encoding.n_regions} regions; ROI = region {encoding.roi}"

    def _on_error(self, exc: Exception) -> None:
        self.status.value = f"error: {exc}"  # napari's worker also shows it as a notification

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False


def _optional_path(value) -> Path | None:
    """FileEdit's value, or None when the field is empty."""
    return Path(value) if str(value) not in ("", ".") else None
