"""How a training job's progress reads in the Train CARE widget: the time left or taken, the metrics line, and
a small loss plot drawn with QPainter (no plotting library in the dock), filled live or from a run's
metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


def eta_text(seconds: float | None) -> str:
    """h:mm:ss, or … when unknown."""
    if seconds is None:
        return "…"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def earlier_part_s(run_dir: Path) -> float:
    """Seconds a run trained before it was stopped: from its job.json (written at its start) to its latest
    checkpoint (0 when either is missing)."""
    checkpoints = list((run_dir / "checkpoints").glob("step_*.pt"))
    start = run_dir / "job.json"
    if not checkpoints or not start.is_file():
        return 0.0
    return max(0.0, max(p.stat().st_mtime for p in checkpoints) - start.stat().st_mtime)


def last_checkpoint_step(run_dir: Path) -> int | None:
    """The step of a run's latest checkpoints/step_<n>.pt (None when it has none): where a resume starts."""
    steps = [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt") if p.stem.split("_")[1].isdigit()]
    return max(steps) if steps else None


class LossPlot(QWidget):
    """A small line plot of (step, loss)."""

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


def plot_metrics_file(plot: LossPlot, path: Path, *, up_to: int | None = None) -> None:
    """Add the (step, loss) rows a run logged in its metrics.jsonl to ``plot`` (up to step ``up_to``)."""
    for line in path.read_text().splitlines() if path.is_file() else ():
        row = json.loads(line)
        if "loss" in row and "step" in row and (up_to is None or row["step"] <= up_to):
            plot.add(int(row["step"]), float(row["loss"]))
