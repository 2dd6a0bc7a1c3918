"""The Train CARE dock widget: a linear probe, a region classifier from annotation layers, a fine-tune or
pretraining, run as ``care`` commands in a child process (care_core.train.jobs) watched by a QTimer that drains
its events, so the viewer never waits on training. Inputs checked before anything starts; progress with ETA, a
live loss curve, validation metrics, Cancel / Resume; the result offered to the CARE widget when it ends."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, SpinBox
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from care_core.errors import InvalidInputError

from ._form import head_info
from ._inspector import wrapping_label
from ._train_results import folds_note, run_result
from ._train_progress import LossPlot, earlier_part_s, eta_text, last_checkpoint_step, metrics_text, plot_metrics_file
from ._train_inputs import (
    FINETUNE,
    JOBS,
    PROBE,
    REGION,
    STAGE1,
    STAGE2,
    STAGE_OF,
    JobInputs,
    annotations_from_layers,
    plan_job,
    slide_files,
)

TYPED, TABLE = "typed below", "table file"
_STAGE_JOB = {stage: job for job, stage in STAGE_OF.items()}

POLL_MS = 200  # how often the Qt thread drains the child's events


class TrainWidget(QWidget):
    """Pick a job, its slides and labels (a table, typed rows, or annotation layers), the CARE to start from, the
    hyper-parameters (the paper's defaults) and a run folder; press Start. The inputs are checked first; the job
    runs as ``care`` commands in a child process (features extracted first where missing); Cancel keeps the last
    checkpoint, Resume continues it; the result goes to the CARE widget and the open slide is analysed with it."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from care_core.features import list_encoders

        from ._widget import DEMO, FILE, UNTRAINED, demo_checkpoint

        self.viewer = napari_viewer
        self.job = None
        self.job_choice = ComboBox(label="job", choices=list(JOBS), value=FINETUNE)
        self.use_open = CheckBox(label="open slides", value=True, tooltip="train on the slides open in napari")
        self.slide_files = FileEdit(label="slide files", mode="rm", value=(), tooltip="more slides (optional)")
        self.slide_folder = FileEdit(label="slide folder", mode="d", value="", tooltip="a folder of slides (optional)")
        self.encoder = ComboBox(label="patch encoder", choices=list_encoders(), value="stain-texture")
        self.features = FileEdit(label="features folder", mode="d", value="",
                                 tooltip="<slide>.h5 feature files, reused; missing ones are extracted into it "
                                         "(empty: the window's shared folder for this encoder)")
        self.labels_source = ComboBox(label="labels", choices=[TYPED, TABLE], value=TYPED)
        self.labels_file = FileEdit(label="labels table", mode="r", value="", filter="*.csv *.tsv *.parquet",
                                    tooltip="slide, label[, patient] or slide, time, event[, patient]")
        self.start_from = ComboBox(label="start from", choices=[DEMO, UNTRAINED, FILE],
                                   value=DEMO if demo_checkpoint() else UNTRAINED)
        self.model = FileEdit(label="CARE checkpoint", mode="r", value="", filter="*.safetensors")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.protocol = ComboBox(label="probe", choices=["lr", "knn", "survival"], value="lr",
                                 tooltip="lr: logistic regression, knn: k nearest neighbours, survival: Cox")
        self.input = ComboBox(label="input", choices=["slide", "roi"], value="slide",
                              tooltip="slide embedding or ROI feature")
        self.folds = SpinBox(label="folds", value=5, min=3, max=20, tooltip="cross-validation folds (by patient)")
        self.epochs = SpinBox(label="epochs", min=1, max=100000)  # values: the job's defaults (_set_defaults)
        self.lr = LineEdit(label="learning rate")
        self.patience = SpinBox(label="patience", min=1, max=10000, tooltip="epochs without a better validation loss")
        self.min_epochs = SpinBox(label="min epochs", min=0, max=100000)
        self.batch_size = SpinBox(label="batch size", min=1, max=1024)
        self.fold = SpinBox(label="fold", value=0, min=0, max=19, tooltip="which fold of the splits to train on")
        self.modality = ComboBox(label="modality", choices=["rna", "protein"], value="rna",
                                 tooltip="Stage II aligns slides to RNA (first) or protein (from the RNA run)")
        self.molecular = FileEdit(label="molecular table", mode="r", value="", filter="*.csv *.parquet *.h5ad",
                                  tooltip="samples x genes (RNA) or x proteins; sample ids are the slide names")
        self.config = FileEdit(label="config file", mode="r", value="", filter="*.toml *.yaml *.yml *.json",
                               tooltip="a training config (docs/training.md): needed for pretraining; for a "
                                       "fine-tune it replaces the fields above")
        self.out = FileEdit(label="run folder", mode="d", value="", tooltip="a new folder for a run, or one to resume")
        self.analyse_after = CheckBox(label="analyse the slide on screen with the result", value=True)
        self.form = Container(widgets=[  # the data, then the typed labels, then the model and its training
            self.job_choice, self.use_open, self.slide_files, self.slide_folder, self.encoder, self.features,
            self.labels_source, self.labels_file])
        self.training_form = Container(widgets=[
            self.start_from, self.model, self.seed, self.protocol, self.input, self.folds, self.epochs, self.lr,
            self.patience, self.min_epochs, self.batch_size, self.fold, self.modality, self.molecular, self.config,
            self.out, self.analyse_after])
        self.labels_table = QTableWidget(0, 4)
        self.labels_table.setHorizontalHeaderLabels(["slide", "label", "time", "event"])
        self.labels_table.verticalHeader().setVisible(False)
        self.labels_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.labels_table.setMinimumHeight(140)
        self.start_button, self.cancel_button = QPushButton("Start"), QPushButton("Cancel")
        self.resume_button, self.open_button = QPushButton("Resume"), QPushButton("Open run folder…")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label = QLabel("")
        self.metrics_label = wrapping_label("")
        self.status = wrapping_label("")
        self.plot = LossPlot()
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

        inner = QWidget()  # in a scroll area: docking the widget never makes the window taller than the screen
        layout = QVBoxLayout(inner)
        layout.addWidget(self.form.native)
        layout.addWidget(self.labels_table)
        layout.addWidget(self.training_form.native)
        row = QHBoxLayout()
        for b in (self.start_button, self.cancel_button, self.resume_button):
            row.addWidget(b)
        layout.addLayout(row)
        layout.addWidget(self.open_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.plot)
        layout.addWidget(self.metrics_label)
        layout.addWidget(self.status)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(self._ask_open)
        self._set_defaults()
        self.job_choice.changed.connect(self._set_defaults)
        for w in (self.job_choice, self.labels_source, self.start_from):
            w.changed.connect(self._update_fields)
        for w in (self.use_open, self.slide_files, self.slide_folder, self.features):
            w.changed.connect(self.refresh_slides)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.refresh_slides)
        self._watched_window = None
        self._cancelled = False
        self._started_at = 0.0
        self._earlier_s = 0.0  # training time of a resumed run before this part
        self.analyse_slide: str | None = None  # the slide layer on screen when the job started: analysed after it
        self._update_fields()
        self.refresh_slides()
        threading.Thread(target=_preload, name="napari-care-train-preload", daemon=True).start()

    # --- form ------------------------------------------------------------------------------------------------
    def _set_defaults(self, *_args) -> None:
        """The paper's epochs, learning rate, batch size (and fine-tuning's early stopping) of the chosen job:
        the defaults of its config (care_core.train.config)."""
        from care_core.train.config import STAGES

        stage = STAGE_OF.get(self.job_choice.value)
        if stage is None:
            return
        cfg = STAGES[stage]()
        self.epochs.value, self.lr.value, self.batch_size.value = cfg.epochs, f"{cfg.lr:g}", cfg.batch_size
        if stage == "finetune":
            self.patience.value, self.min_epochs.value = cfg.patience, cfg.min_epochs

    def _update_fields(self, *_args) -> None:
        from ._widget import FILE, UNTRAINED

        job = self.job_choice.value
        labelled, pretrain, tune = job in (PROBE, FINETUNE), job in (STAGE1, STAGE2), job == FINETUNE
        self.labels_source.visible = labelled
        self.labels_file.visible = labelled and self.labels_source.value == TABLE
        self.labels_table.setVisible(labelled and self.labels_source.value == TYPED)
        self.model.visible = self.start_from.value == FILE
        self.seed.visible = self.start_from.value == UNTRAINED
        for w in (self.protocol, self.folds):
            w.visible = job == PROBE or (w is self.folds and job == REGION)
        self.input.visible = job in (PROBE, FINETUNE)
        for w in (self.epochs, self.lr, self.batch_size):
            w.visible = tune or pretrain
        for w in (self.patience, self.min_epochs, self.fold):
            w.visible = tune
        self.modality.visible = self.molecular.visible = job == STAGE2
        self.config.visible = pretrain or tune
        self.analyse_after.visible = not pretrain
        self.plot.setVisible(job not in (PROBE, REGION))  # a probe has no loss curve: its folds' metrics show below

    def open_slides(self) -> dict[str, object]:
        """{name: layer} of the slide layers open in the viewer (an image with a file path)."""
        return {Path(layer.metadata["path"]).stem: layer for layer in self.viewer.layers
                if layer._type_string == "image" and layer.metadata.get("path")}

    def slides(self) -> dict[str, Path]:
        """{name: slide file} of every slide the form names: the open ones, the files and the folder's."""
        out = {s: Path(layer.metadata["path"]) for s, layer in self.open_slides().items()} if self.use_open.value else {}
        files = [Path(p) for p in (self.slide_files.value or ()) if str(p) not in ("", ".")]
        out.update(slide_files(_path(self.slide_folder.value), files))
        return out

    def refresh_slides(self, *_args) -> None:
        """One typed-labels row per slide (open, listed, or with features in the features folder), keeping what
        was typed for slides still there."""
        typed = {r[0]: r[1:] for r in self.typed_rows()}
        features = _path(self.features.value)
        stems = {p.stem for p in features.glob("*.h5")} if features is not None and features.is_dir() else set()
        names = sorted(set(self.slides()) | stems)
        self.labels_table.setRowCount(len(names))
        for i, name in enumerate(names):
            item = QTableWidgetItem(name)
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.labels_table.setItem(i, 0, item)
            for j, value in enumerate(typed.get(name, ("", "", "")), start=1):
                self.labels_table.setItem(i, j, QTableWidgetItem(value))

    def typed_rows(self) -> list[tuple[str, str, str, str]]:
        t = self.labels_table
        cell = lambda i, j: t.item(i, j).text() if t.item(i, j) is not None else ""  # noqa: E731
        return [tuple(cell(i, j) for j in range(4)) for i in range(t.rowCount())]

    def set_label(self, slide: str, label: str = "", time: str = "", event: str = "") -> None:
        """Type a slide's label (or time and event) into the table (what a user does by hand)."""
        for i in range(self.labels_table.rowCount()):
            if self.labels_table.item(i, 0).text() == slide:
                for j, v in enumerate((label, time, event), start=1):
                    self.labels_table.setItem(i, j, QTableWidgetItem(str(v)))
                return
        raise KeyError(f"no slide {slide!r} in the labels table")

    def inputs(self) -> JobInputs:
        """The form as JobInputs (annotations read from the viewer's Shapes layers for a region classifier)."""
        from care_core.model.checkpoint import DEMO_CHECKPOINT

        from ._widget import DEMO, FILE

        job = self.job_choice.value
        model = {DEMO: DEMO_CHECKPOINT, FILE: _path(self.model.value)}.get(self.start_from.value)
        if self.start_from.value == FILE and model is None:
            raise InvalidInputError("choose a CARE checkpoint file, or start from the demo checkpoint or untrained")
        try:
            lr = float(self.lr.value)
        except ValueError:
            raise InvalidInputError(f"learning rate {self.lr.value!r} is not a number (e.g. 2e-5)") from None
        hyper = ({"protocol": self.protocol.value, "input": self.input.value, "folds": self.folds.value} if job == PROBE
                 else {"folds": self.folds.value} if job == REGION
                 else {"epochs": self.epochs.value, "lr": lr, "min_lr": lr, "patience": self.patience.value,
                       "min_epochs": min(self.min_epochs.value, self.epochs.value), "batch_size": self.batch_size.value,
                       "fold": self.fold.value, "input": self.input.value} if job == FINETUNE
                 else {"epochs": self.epochs.value, "lr": lr, "batch_size": self.batch_size.value,
                       "modality": self.modality.value, "molecular": str(_path(self.molecular.value) or "")})
        return JobInputs(
            job=job, run_dir=_path(self.out.value), slides=self.slides(),
            labels_file=_path(self.labels_file.value) if self.labels_source.value == TABLE else None,
            labels_rows=self.typed_rows(),
            annotations=annotations_from_layers(self.viewer.layers, self.open_slides()) if job == REGION else {},
            features_dir=_path(self.features.value), encoder=self.encoder.value, model=model, seed=self.seed.value,
            config_file=_path(self.config.value), hyper=hyper)

    # --- jobs ------------------------------------------------------------------------------------------------
    def start(self, *, resume: bool = False) -> bool:
        """Check the inputs, then start (or resume) the job; False (with the library's message shown) when it
        could not start: nothing is written and no process starts then."""
        import time

        from care_core.errors import CareError
        from care_core.train.jobs import TrainingJob, start_commands

        if self.job is not None and self.job.running:
            return self._fail("a job is running; cancel it first")
        self.plot.clear()  # nothing of an earlier job stays on show, even when this one cannot start
        self.metrics_label.setText("")
        self.progress_label.setText("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        if _path(self.out.value) is None:
            return self._fail("choose a run folder")
        try:
            plan = plan_job(self.inputs(), resume=resume)
        except CareError as exc:
            return self._fail(str(exc))
        if not resume:
            plan.write()
        self._earlier_s = earlier_part_s(plan.run_dir) if resume else 0.0
        if resume:  # the curve of the part before the cancel, then this part's
            plot_metrics_file(self.plot, plan.run_dir / "metrics.jsonl", up_to=last_checkpoint_step(plan.run_dir))
        self.analyse_slide = self.slide_on_screen()
        what = (f"extracting features of {len(plan.extract)} slide(s), then " if plan.extract else "")
        self.status.setText(("resuming " if resume else f"starting {what}{plan.job} in ") + str(plan.run_dir))
        # a resume keeps the job.json of the run's start: it says how the run was made
        self.job = (TrainingJob(plan.commands, plan.run_dir) if resume
                    else start_commands(plan.commands, plan.run_dir, job=plan.job, record=plan.record))
        self._cancelled = False
        self._started_at = time.monotonic()
        self._set_running(True)
        self.timer.start()
        self._watch_window_close()
        return True

    def cancel(self) -> None:
        """Stop the job; its run folder keeps the last checkpoint (Resume continues from it)."""
        if self.job is not None and self.job.running:
            self.status.setText("cancelling…")
            self._cancelled = True
            self.job.cancel(wait=False)  # the child unwinds in 1-2 s; poll() reports when it has

    def poll(self) -> None:
        """Drain the child's events (never waits on it); when the job has ended, report how."""
        if self.job is None:
            return
        running = self.job.running
        for ev in self.job.poll():
            self._on_event(ev)
        if not running:
            self.timer.stop()
            self._set_running(False)
            self._on_exit()

    def _on_event(self, ev) -> None:
        command = self.job.commands[self.job.command_index][0]
        if ev.kind == "start":
            doing = {"extract": "extracting features", "evaluate": "cross-validating"}.get(command, "training")
            self.status.setText(f"{doing}: {self.job_choice.value} in {self.job.run_dir}")
        if ev.kind in ("start", "step", "validate", "end", "extract", "encode"):
            self.progress.setRange(0, max(ev.total_steps, 1))
            self.progress.setValue(ev.step)
            what = {"extract": "features", "evaluate": "slides encoded" if ev.kind == "encode" else "folds"}.get(command, "step")
            self.progress_label.setText(f"{what} {ev.step} / {ev.total_steps}   ETA {eta_text(ev.eta_s)}")
        if ev.kind == "step":
            loss = ev.metrics.get("loss", ev.metrics.get("loss_task"))
            if loss is not None:
                self.plot.add(ev.step, float(loss))
        elif ev.kind == "validate":
            where = f"fold {ev.epoch}" if command == "evaluate" else f"epoch {ev.epoch}"
            self.metrics_label.setText(f"{where}: " + metrics_text(ev.metrics))
        elif ev.kind == "end" and command != "extract":
            import time

            took = time.monotonic() - self._started_at + self._earlier_s
            earlier = f" ({eta_text(self._earlier_s)} of it before the resume)" if self._earlier_s else ""
            self.progress_label.setText(f"done in {eta_text(took)}{earlier}")
            if command == "evaluate":
                self.metrics_label.setText("cross-validated: " + metrics_text(ev.metrics) + folds_note(self.job.run_dir))
            self.status.setText(f"done: {ev.path}")
            self.offer_result(self.job.run_dir)

    def _on_exit(self) -> None:
        rc, error = self.job.returncode, self.job.error
        if rc == 0:
            return
        if self._cancelled:
            self.status.setText(f"cancelled: {self.job.run_dir} keeps its last checkpoint; Resume continues it")
            return
        message = error or f"the training process exited with status {rc}"
        self.status.setText(message)
        napari.utils.notifications.show_error(message)

    def _set_running(self, running: bool) -> None:
        for w in (self.start_button, self.resume_button, self.open_button):
            w.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _fail(self, message: str) -> bool:
        self.status.setText(message)
        napari.utils.notifications.show_error(message)
        return False

    # --- results ---------------------------------------------------------------------------------------------
    def slide_on_screen(self) -> str | None:
        """The name of the slide layer on screen: the topmost visible one (None when no slide is shown)."""
        shown = [layer for layer in self.viewer.layers
                 if layer._type_string == "image" and layer.metadata.get("path") and layer.visible]
        return shown[-1].name if shown else None

    def offer_result(self, run_dir: str | Path) -> bool:
        """Give a run's result to every docked CARE widget: a fine-tune's CARE and head, a probe's final head with
        the CARE it was trained on; then (when asked) analyse with it the slide that was on screen when the job
        started, whatever slide the CARE widget had chosen."""
        from ._widget import CareWidget

        care, head = run_result(run_dir)
        if care is None and head is None:
            return False
        widgets = _docked(self.viewer, CareWidget)
        slide = self.analyse_slide
        layer = self.viewer.layers[slide] if slide is not None and slide in self.viewer.layers else None
        for widget in widgets:
            widget.add_trained(care, head)
            if not self.analyse_after.value or widget.busy():
                continue
            if layer is not None:
                widget.run(slide=layer)
            else:
                widget.status.setText("the slide the job was started on is closed: choose a slide and press Run CARE")
        if widgets:
            what = [head_info(head).title] if head else []
            what += ["its CARE checkpoint" if head else "CARE checkpoint"] if care else []
            napari.utils.notifications.show_info(f"{Path(run_dir).name}: {' and '.join(what)} added to the CARE widget"
                                                 + (f"; analysing {slide}" if layer is not None and self.analyse_after.value else ""))
        return bool(widgets)

    def open_run(self, run_dir: str | Path) -> None:
        """Show a run folder made here or elsewhere: its job, its curve and latest metrics, its result."""
        from care_core.train.jobs import read_job

        run_dir = Path(run_dir)
        job = read_job(run_dir) or {}
        try:
            record = json.loads((run_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            record = None
        results = run_dir / "results.json"
        if record is None and not results.is_file():
            self._fail(f"{run_dir} is not a run folder (no config.json or results.json)")
            return
        self.out.value = run_dir
        self.job_choice.value = job.get("job") or (_STAGE_JOB.get(str(record.get("stage"))) if record else PROBE)
        self.plot.clear()
        plot_metrics_file(self.plot, run_dir / "metrics.jsonl")
        if results.is_file():
            summary = json.loads(results.read_text()).get("summary", {})
            self.metrics_label.setText("cross-validated: " + metrics_text({k: v["mean"] for k, v in summary.items()
                                                                            if isinstance(v, dict) and "mean" in v}))
        self.analyse_slide = self.slide_on_screen()
        done = self.offer_result(run_dir)
        self.status.setText(f"{run_dir}: " + ("finished; its result is offered to the CARE widget" if done
                                              else "not finished; Resume continues it"))

    def _ask_open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a run folder")
        if folder:
            self.open_run(folder)

    # --- closing napari ----------------------------------------------------------------------------------------
    def _watch_window_close(self) -> None:
        window = self.window()
        if window is not self and window is not self._watched_window:
            window.installEventFilter(self)
            self._watched_window = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Close and self.job is not None and self.job.running:
            choice = self.ask_on_close()
            if choice == "back":
                event.ignore()
                return True  # napari stays open
            if choice == "stop":
                self._cancelled = True
                self.job.cancel(wait=False)  # SIGTERM: it unwinds on its own, keeping its last checkpoint
            else:
                self.leave_running()
        return False

    def ask_on_close(self) -> str:
        """napari is closing while a job runs: 'stop' it (keeping its last checkpoint), 'leave' it running, or
        go 'back' to napari."""
        box = QMessageBox(self)
        box.setWindowTitle("Training is running")
        box.setText(f"A {self.job_choice.value} job is running in {self.job.run_dir}.")
        box.setInformativeText("Stop it (its last checkpoint is kept; Resume continues it), or leave it running in "
                               "the background?")
        stop = box.addButton("Stop it", QMessageBox.ButtonRole.DestructiveRole)
        leave = box.addButton("Leave it running", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Back to napari", QMessageBox.ButtonRole.RejectRole)
        box.exec_()
        return "stop" if box.clickedButton() is stop else "leave" if box.clickedButton() is leave else "back"

    def leave_running(self) -> None:
        """napari closes while a job runs: the child carries on (its own session; it writes its run folder)."""
        napari.utils.notifications.show_warning(
            f"training continues in the background (pid {self.job.proc.pid}) in {self.job.run_dir}; "
            "open or resume that run folder from the Train CARE widget later")


def _preload() -> None:
    """Import what checking a job's inputs needs (pandas for the labels table, scikit-learn for the folds) in
    the background when the widget opens, so pressing Start does not stall the window on first imports."""
    import pandas  # noqa: F401
    import sklearn.model_selection  # noqa: F401


def _path(value) -> Path | None:
    return None if value is None or str(value) in ("", ".") else Path(value)


def _docked(viewer, cls) -> list:
    """The docked widgets of ``cls`` in the viewer's window (``dock_widgets`` maps names to inner widgets)."""
    return [w for w in viewer.window.dock_widgets.values() if isinstance(w, cls)]
