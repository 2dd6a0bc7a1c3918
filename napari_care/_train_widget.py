"""The Train CARE dock widget: fine-tune or pretrain in a child process (care_core.train.jobs), watched by a
QTimer that drains its events, so the viewer never waits on training. Progress with ETA, a live loss curve,
validation metrics, Cancel / Resume, and the fine-tuned CARE + head offered to the CARE widget when it ends."""

from __future__ import annotations

import json
from pathlib import Path

import napari
from magicgui.widgets import ComboBox, Container, FileEdit
from qtpy.QtCore import QEvent, QObject, QPointF, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ._inspector import wrapping_label

JOBS = {"fine-tune": ("finetune", None), "pretrain Stage I": ("pretrain", "1"), "pretrain Stage II": ("pretrain", "2")}
_STAGE_JOB = {"finetune": "fine-tune", "1": "pretrain Stage I", "2": "pretrain Stage II"}
POLL_MS = 200  # how often the Qt thread drains the child's events


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA …"
    m, s = divmod(int(round(seconds)), 60)
    return f"ETA {m // 60:d}:{m % 60:02d}:{s:02d}"


class LossPlot(QWidget):
    """A small line plot of (step, loss) drawn with QPainter: no plotting library in the dock."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.points: list[tuple[int, float]] = []
        self.setMinimumHeight(120)

    def add(self, step: int, loss: float) -> None:
        if loss == loss:  # NaN never reaches the plot (the trainer stops on it anyway)
            self.points.append((step, loss))
            self.update()

    def clear(self) -> None:
        self.points = []
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QColor(200, 200, 200))
        p.drawText(6, 14, "loss" if not self.points else f"loss {self.points[-1][1]:.4f} (step {self.points[-1][0]})")
        if len(self.points) >= 2:
            xs, ys = zip(*self.points)
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            w, h, m = self.width() - 12, self.height() - 28, 6
            sx, sy = w / max(x1 - x0, 1), h / (y1 - y0 if y1 > y0 else 1.0)
            line = QPolygonF([QPointF(m + (x - x0) * sx, 20 + h - (y - y0) * sy) for x, y in self.points])
            p.setPen(QPen(QColor(80, 180, 255), 1.5))
            p.drawPolyline(line)
        p.end()


class TrainWidget(QWidget):
    """Pick a job (fine-tune, pretrain Stage I / II), a config file and a run folder, press Start. The job runs
    as ``care finetune|pretrain`` in a child process; Cancel keeps its last checkpoint and Resume continues it.
    Closing napari leaves a running job running (a notification says where)."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job = None
        self.job_choice = ComboBox(label="job", choices=list(JOBS), value="fine-tune")
        self.config = FileEdit(label="config file", mode="r", value="", filter="*.toml *.yaml *.yml *.json",
                               tooltip="a training config (see docs/training.md)")
        self.out = FileEdit(label="run folder", mode="d", value="", tooltip="a new folder for a run, or one to resume")
        self.form = Container(widgets=[self.job_choice, self.config, self.out])
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

        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
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

        self.start_button.clicked.connect(lambda: self.start())
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(self._ask_open)
        self._watched_window = None
        self._cancelled = False

    # --- jobs ------------------------------------------------------------------------------------------------
    def start(self, *, resume: bool = False) -> bool:
        """Start (or resume) the chosen job; False (with the message shown) when it could not start."""
        from care_core.train.jobs import start_job

        if self.job is not None and self.job.running:
            return self._fail("a job is running; cancel it first")
        command, stage = JOBS[self.job_choice.value]
        config, out = _path(self.config.value), _path(self.out.value)
        if out is None:
            return self._fail("choose a run folder")
        if not resume and config is None:
            return self._fail("choose a config file (see docs/training.md), or Resume a run folder")
        if config is not None and not config.is_file():
            return self._fail(f"config file {config} does not exist")
        self.plot.clear()
        self.metrics_label.setText("")
        self.status.setText(("resuming " if resume else "starting ") + str(out))
        self.job = start_job(command, config=None if resume else config, run_dir=out, stage=stage, resume=resume)
        self._cancelled = False
        self._set_running(True)
        self.timer.start()
        self._watch_window_close()
        return True

    def cancel(self) -> None:
        """Stop the job; its run folder keeps the last checkpoint (Resume continues from it)."""
        if self.job is not None and self.job.running:
            self.status.setText("cancelling…")
            self._cancelled = True
            self.job.cancel()

    def poll(self) -> None:
        """Drain the child's events (never waits on it); when it has exited, report how it ended."""
        if self.job is None:
            return
        running = self.job.running
        if not running:
            self.job.wait(timeout=5)  # its pipes are closed: the readers finish at once
        for ev in self.job.poll():
            self._on_event(ev)
        if not running:
            self.timer.stop()
            self._set_running(False)
            self._on_exit()

    def _on_event(self, ev) -> None:
        if ev.kind in ("start", "step", "validate", "end"):
            self.progress.setRange(0, max(ev.total_steps, 1))
            self.progress.setValue(ev.step)
            self.progress_label.setText(f"step {ev.step} / {ev.total_steps}   {_eta(ev.eta_s)}")
        if ev.kind == "step":
            loss = ev.metrics.get("loss", ev.metrics.get("loss_task"))
            if loss is not None:
                self.plot.add(ev.step, float(loss))
        elif ev.kind == "validate":
            self.metrics_label.setText(f"epoch {ev.epoch}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in ev.metrics.items()))
        elif ev.kind == "end":
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
    def offer_result(self, run_dir: str | Path) -> bool:
        """Give a run's CARE checkpoint (and head, for fine-tuning) to every docked CARE widget."""
        from ._widget import CareWidget

        run_dir = Path(run_dir)
        care = run_dir / "care.safetensors"
        if not care.is_file():
            return False
        head = run_dir / "head.safetensors"
        offered = False
        for widget in _docked(self.viewer, CareWidget):
            widget.add_trained(care, head if head.is_file() else None)
            offered = True
        if offered:
            napari.utils.notifications.show_info(f"{run_dir.name}: CARE checkpoint"
                                                 + (" and head" if head.is_file() else "") + " added to the CARE widget")
        return offered

    def open_run(self, run_dir: str | Path) -> None:
        """Show a run folder made here or elsewhere: its job, its latest validation metrics, its result."""
        run_dir = Path(run_dir)
        try:
            record = json.loads((run_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            self._fail(f"{run_dir} is not a run folder ({exc.__class__.__name__}: no readable config.json)")
            return
        self.out.value = run_dir
        self.job_choice.value = _STAGE_JOB.get(str(record.get("stage")), self.job_choice.value)
        self.plot.clear()
        for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else ():
            row = json.loads(line)
            if "loss" in row and "step" in row:
                self.plot.add(int(row["step"]), float(row["loss"]))
        done = self.offer_result(run_dir)
        self.status.setText(f"{run_dir}: " + ("finished; its CARE is offered to the CARE widget" if done
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
            self.leave_running()
        return False

    def leave_running(self) -> None:
        """napari closes while a job runs: the child carries on (its own session; it writes its run folder)."""
        napari.utils.notifications.show_warning(
            f"training continues in the background (pid {self.job.proc.pid}) in {self.job.run_dir}; "
            "open or resume that run folder from the Train CARE widget later")


def _path(value) -> Path | None:
    return None if value is None or str(value) in ("", ".") else Path(value)


def _docked(viewer, cls) -> list:
    """The docked widgets of ``cls`` in the viewer's window (``dock_widgets`` maps names to inner widgets)."""
    return [w for w in viewer.window.dock_widgets.values() if isinstance(w, cls)]
