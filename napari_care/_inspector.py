"""The region inspector: slide predictions, the selected region's details, what lies under the cursor, and a
sortable table of every region. Values come from care_core (region_table) and the heads' predictions; this
module only formats them."""

from __future__ import annotations

import html

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._form import MIXED_BELOW
from ._layers import class_color


def wrapping_label(text: str = "") -> QLabel:
    """A label that wraps long text instead of widening its dock (errors never push the slide away)."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setMinimumWidth(50)
    return label


def _area(um2: float | None) -> str:
    return "–" if um2 is None else f"{um2 / 1e6:.3f} mm²"


def _swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span style="color: rgb{tuple(rgb)}">■</span>'


def region_call(classes, proba) -> str:
    """A region's class, or 'mixed (<class> p%)' when its most probable class is under MIXED_BELOW."""
    top = int(proba.argmax())
    return classes[top] if proba[top] >= MIXED_BELOW else f"mixed ({classes[top]} {proba[top]:.0%})"


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number, shows its text."""

    def __init__(self, text: str, value: float) -> None:
        super().__init__(text)
        self.value = value
        self.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)

    def __lt__(self, other) -> bool:
        return self.value < getattr(other, "value", 0.0)


class InspectorPanel(QWidget):
    """Shows one slide's regions; ``region_selected(id)`` fires when a table row or a button picks a region."""

    region_selected = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[dict] = []
        self.predictions: list = []
        self.pred_columns: dict[str, list] = {}
        self.heads: dict = {}  # head name -> HeadInfo
        self.selected: int | None = None
        self.roi: int | None = None
        self.slide_summary = wrapping_label("Run CARE on a slide to inspect its regions.")
        self.legend = wrapping_label()
        self.details = wrapping_label()
        self.hover = wrapping_label()
        self.hover.setStyleSheet("color: gray")
        self.prev_button, self.next_button = QPushButton("◀ previous"), QPushButton("next ▶")
        self.roi_button = QPushButton("Go to ROI")
        for b in (self.prev_button, self.next_button, self.roi_button):
            b.setEnabled(False)
        self.prev_button.setToolTip("previous region in the table (Alt+Left in the viewer)")
        self.next_button.setToolTip("next region in the table (Alt+Right in the viewer)")
        self.table = QTableWidget(0, 0)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(160)
        buttons = QHBoxLayout()
        for b in (self.prev_button, self.next_button, self.roi_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        for w in (self.slide_summary, self.legend, self.details, self.hover):
            layout.addWidget(w)
        layout.addLayout(buttons)
        layout.addWidget(self.table, stretch=1)
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(+1))
        self.roi_button.clicked.connect(lambda: self.roi is not None and self.region_selected.emit(self.roi))
        self.table.itemSelectionChanged.connect(self._on_table_selection)

    # --- content -----------------------------------------------------------------------------------------
    def set_encoding(self, encoding, *, model_label: str = "", heads: dict | None = None) -> None:
        """Fill the panel with ``encoding``'s regions and predictions (no region selected yet). heads: {head name:
        HeadInfo} of its heads: their titles, validation notes, and which are region classifiers (those make no
        slide-level call)."""
        from care_core.regions import region_table
        from care_core.regions.export import region_tissue_um2

        self.rows = region_table(encoding)
        tissue = region_tissue_um2(encoding)
        for row in self.rows:
            row["tissue_um2"] = None if tissue is None else tissue[row["id"]]
        self.predictions = list(getattr(encoding, "predictions", None) or [])
        self.heads = heads or {}
        self.pred_columns = self._prediction_columns()
        self.roi = int(encoding.roi)
        self.selected = None
        lines = [f"<b>{len(self.rows)} regions</b>; ROI = region {self.roi}" + (f" · {html.escape(model_label)}" if model_label else "")]
        for pred in self.predictions:
            info = self.heads.get(pred.head)
            note = f" <i>(validation: {html.escape(info.note)})</i>" if info is not None and info.note else ""
            title = f"<b>{html.escape(self.title(pred.head))}</b>"
            if info is not None and info.region:
                lines.append(f"{title}: a class per region (Inspect the table){note}")
            elif pred.classes == ("risk",):
                lines.append(f"{title}: risk {pred.slide_proba[0]:.2f}{note}")
            else:
                probs = ", ".join(f"{html.escape(c)} {p:.0%}" for c, p in zip(pred.classes, pred.slide_proba))
                lines.append(f"{title}: <b>{html.escape(pred.slide_class)}</b> ({probs}){note}")
        if not self.predictions:
            lines.append("no prediction heads loaded")
        self.slide_summary.setText("<br>".join(lines))
        legends = [
            f"{html.escape(self.title(p.head))}: " + " ".join(f"{_swatch(class_color(i))} {html.escape(c)}" for i, c in enumerate(p.classes))
            + f" · <i>mixed</i>: top class under {MIXED_BELOW:.0%}"
            for p in self.predictions if p.region_proba is not None and p.classes != ("risk",)
        ]
        self.legend.setText("<br>".join(legends))
        self.legend.setVisible(bool(legends))
        self._fill_table()
        self.details.setText("Click a region on the slide, or a row below.")
        self.hover.setText("")
        for b in (self.prev_button, self.next_button, self.roi_button):
            b.setEnabled(True)

    def title(self, head: str) -> str:
        """A head's readable name."""
        info = self.heads.get(head)
        return head if info is None else info.title

    def _prediction_columns(self) -> dict[str, list]:
        """Per-region table columns of each head: its class (with a 'mixed' mark below MIXED_BELOW) and the
        probability of each class; a risk head's risk."""
        cols: dict[str, list] = {}
        for pred in self.predictions:
            if pred.region_proba is None:
                continue
            name = self.title(pred.head)
            if pred.classes == ("risk",):
                cols[f"{name} risk"] = [float(v) for v in pred.region_proba[:, 0]]
                continue
            cols[f"{name} class"] = [region_call(pred.classes, p) for p in pred.region_proba]
            for j, cls in enumerate(pred.classes):
                cols[f"{name} p({cls})"] = [float(v) for v in pred.region_proba[:, j]]
        return cols

    def _fill_table(self) -> None:
        pred_names = list(self.pred_columns)
        headers = ["region", "patches", "tissue mm²", "patch mm²", "π %", "ROI", *pred_names]
        table = self.table
        table.setSortingEnabled(False)
        table.clear()
        table.setColumnCount(len(headers))
        table.setRowCount(len(self.rows))
        table.setHorizontalHeaderLabels(headers)
        for i, row in enumerate(self.rows):
            area, tissue = row["area_um2"], row["tissue_um2"]
            cells = [
                _NumberItem(str(row["id"]), row["id"]),
                _NumberItem(str(row["n_patches"]), row["n_patches"]),
                _NumberItem("–" if tissue is None else f"{tissue / 1e6:.3f}", -1.0 if tissue is None else tissue),
                _NumberItem("–" if area is None else f"{area / 1e6:.3f}", -1.0 if area is None else area),
                _NumberItem(f"{100 * row['pi']:.1f}", row["pi"]),
                _NumberItem("ROI" if row["is_roi"] else "", float(row["is_roi"])),
            ]
            for name in pred_names:
                value = self.pred_columns[name][row["id"]]
                if isinstance(value, str):
                    cells.append(_NumberItem(value, 0.0))
                    cells[-1].value = value  # class names sort alphabetically
                else:
                    cells.append(_NumberItem(f"{value:.2f}", value))
            for j, cell in enumerate(cells):
                table.setItem(i, j, cell)
        table.setSortingEnabled(True)
        table.resizeColumnsToContents()

    # --- selection ---------------------------------------------------------------------------------------
    def table_order(self) -> list[int]:
        """Region ids in the table's current (sorted) order."""
        return [self.table.item(i, 0).value for i in range(self.table.rowCount())]

    def step(self, delta: int) -> None:
        """Select the next (+1) or previous (-1) region in table order."""
        order = self.table_order()
        if not order:
            return
        i = order.index(self.selected) + delta if self.selected in order else (0 if delta > 0 else -1)
        self.region_selected.emit(order[i % len(order)])

    def show_region(self, region_id: int | None, composition: dict | None = None) -> None:
        """Show ``region_id``'s details and select its table row (None clears the selection). composition: {class:
        share of the region} from annotations over the slide, shown with it (a prediction's purity)."""
        self.selected = region_id
        self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            order = self.table_order()
            if region_id in order:
                row = order.index(region_id)
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
        finally:
            self.table.blockSignals(False)
        known = region_id is not None and 0 <= region_id < len(self.rows)
        self.details.setText(self.describe(region_id, rich=True, composition=composition) if known
                             else "Click a region on the slide, or a row below.")

    def describe(self, region_id: int, *, rich: bool = False, composition: dict | None = None) -> str:
        """Readable values of one region: size, π/α/β, ROI, each head's prediction (HTML when ``rich``); with
        ``composition`` ({class: share} from annotations), what the annotations say and each prediction's purity
        (the share of the region its class covers; 'mixed' under MIXED_BELOW)."""
        row = self.rows[region_id]
        esc = html.escape if rich else str
        bold = (lambda t: f"<b>{t}</b>") if rich else str
        parts = [
            bold(f"region {region_id}") + (" — the ROI" if row["is_roi"] else ""),
            f"{_area(row['tissue_um2'])} of tissue in {row['n_patches']} patches ({_area(row['area_um2'])})",
            f"π {100 * row['pi']:.1f}%  α {100 * row['alpha']:.1f}%  β {100 * row['beta']:.1f}%",
        ]
        for pred in self.predictions:
            if pred.region_proba is None:
                continue
            p = pred.region_proba[region_id]
            if pred.classes == ("risk",):
                parts.append(f"{esc(self.title(pred.head))}: risk {p[0]:.2f}")
                continue
            probs = ", ".join(f"{esc(c)} {v:.0%}" for c, v in zip(pred.classes, p))
            call = region_call(pred.classes, p)
            purity = ""
            if composition:
                share = composition.get(pred.classes[int(p.argmax())], 0.0)
                purity = f"; purity {share:.0%}"
                if share < MIXED_BELOW and not call.startswith("mixed"):
                    call = f"mixed ({call} {share:.0%} by the annotations)"
            parts.append(f"{esc(self.title(pred.head))}: {bold(esc(call))} ({probs}{purity})")
        if composition:
            parts.append("annotated: " + ", ".join(f"{esc(c)} {f:.0%}" for c, f in composition.items()))
        return ("<br>" if rich else " · ").join(parts)

    def show_hover(self, region_id: int | None) -> None:
        """The region under the cursor, in one readable line."""
        self.hover.setText("" if region_id is None or not self.rows else f"under cursor: {self.describe(region_id)}")

    def _on_table_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.region_selected.emit(self.table.item(rows[0].row(), 0).value)
