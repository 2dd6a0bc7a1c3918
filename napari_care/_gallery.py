"""The Similar tab: where to search (the open slide or a region index), how many answers, the Find similar
button, and the answers as a gallery of thumbnails with slide, region, distance and predicted class."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from magicgui.widgets import FileEdit
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._inspector import wrapping_label
from ._similar import THUMB_PX, GalleryItem

THIS_SLIDE, INDEX = "this slide", "a region index"


def _icon(thumb: np.ndarray | None) -> QIcon:
    if thumb is None:
        pixmap = QPixmap(THUMB_PX, THUMB_PX)
        pixmap.fill(QColor(90, 90, 90))
        return QIcon(pixmap)
    rgb = np.ascontiguousarray(thumb)
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format.Format_RGB888)
    return QIcon(QPixmap.fromImage(image.copy()))  # copy: the QImage must not outlive the array's buffer


def item_text(item: GalleryItem) -> str:
    """The caption under a thumbnail: slide, region, distance (1 - cosine) and predicted class."""
    hit = item.hit
    lines = [f"{hit.slide}", f"region {hit.region} · d {hit.distance:.3f}"]
    if hit.predicted:
        lines.append(hit.predicted.split(": ", 1)[-1])
    if item.note:
        lines.append(item.note)
    return "\n".join(lines)


class SimilarPanel(QWidget):
    """Where to search, how many answers, the Find similar button and the gallery. ``find_clicked`` asks the
    widget to search; ``hit_clicked(GalleryItem)`` when a thumbnail is clicked."""

    find_clicked = Signal()
    hit_clicked = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.items: list[GalleryItem] = []
        self.source = QComboBox()
        self.source.addItems([THIS_SLIDE, INDEX])
        self.index = FileEdit(mode="d", value="", tooltip="a folder made by care index (same CARE model and encoder)")
        self.k = QSpinBox()
        self.k.setRange(1, 200)
        self.k.setValue(12)
        self.find_button = QPushButton("Find similar")
        self.find_button.setEnabled(False)
        self.find_button.setToolTip("the regions most like the selected one (select a region first)")
        self.status = wrapping_label("Select a region, then Find similar.")
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListView.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.gallery.setResizeMode(QListView.ResizeMode.Adjust)
        self.gallery.setMovement(QListView.Movement.Static)
        self.gallery.setWordWrap(True)
        self.gallery.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # slide names differ at their end
        self.gallery.setGridSize(QSize(THUMB_PX + 16, THUMB_PX + 58))
        self.gallery.setMinimumHeight(THUMB_PX + 70)
        form = QFormLayout()
        form.addRow("search in", self.source)
        form.addRow("index folder", self.index.native)
        form.addRow("answers", self.k)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.find_button)
        layout.addWidget(self.status)
        layout.addWidget(self.gallery, stretch=1)
        self.source.currentTextChanged.connect(self._update_fields)
        self.find_button.clicked.connect(self.find_clicked)
        self.gallery.itemClicked.connect(lambda it: self.hit_clicked.emit(self.items[self.gallery.row(it)]))
        self._update_fields()

    def _update_fields(self, *_args) -> None:
        self.index.native.setEnabled(self.source.currentText() == INDEX)

    def index_folder(self) -> Path | None:
        """The chosen index folder, None when searching the open slide (or no folder is given)."""
        value = str(self.index.value or "")
        return Path(value) if self.source.currentText() == INDEX and value not in ("", ".") else None

    def show_items(self, items: list[GalleryItem], what: str, seconds: float) -> None:
        """Fill the gallery with ``items``; ``what`` says what was asked, ``seconds`` how long it took."""
        self.items = list(items)
        self.gallery.clear()
        for item in self.items:
            entry = QListWidgetItem(_icon(item.thumbnail), item_text(item))
            entry.setTextAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
            entry.setToolTip(html.escape(str(item.slide_path or item.hit.slide)))
            self.gallery.addItem(entry)
        found = f"{len(self.items)} regions like {what}" if self.items else f"no other region like {what}"
        self.status.setText(f"{found} ({seconds:.1f} s); click one to go there")
