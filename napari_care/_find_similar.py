"""Find similar, the CARE widget's part of it: start a search in a worker (`_similar.find_similar`) for the
selected region, fill the gallery (`_gallery.SimilarPanel`) with its answers, and go to an answer when one is
clicked. A mixin of `CareWidget`, which holds the result, the inspector and the Similar tab it works on."""

from __future__ import annotations

import time
from pathlib import Path

from napari.layers import Image
from napari.qt.threading import create_worker

from ._form import gui_message
from ._gallery import INDEX
from ._layers import outline_paths
from ._similar import SimilarQuery, find_similar
from ._view import OUTLINE_PX, fit_box, set_outline, show_only_slide, zoom_of


class FindSimilar:
    """Find similar for `CareWidget` (uses its viewer, view, result, inspector, tabs, similar panel and buttons)."""

    def find_similar(self):
        """Search the regions most like the selected one (in the open slide, or the index chosen in the Similar
        tab) in a worker, which also reads the thumbnails; the gallery fills when it is done. Returns the worker
        (None when there is nothing to search)."""
        region, panel = self.inspector.selected, self.similar
        if self.result is None or region is None or self.similar_worker is not None:
            return None
        if panel.source.currentText() == INDEX and panel.index_folder() is None:
            panel.status.setText("choose the index folder (made by care index), or search this slide")
            self.tabs.setCurrentWidget(panel)
            return None
        path = self.view.slide.metadata["path"]
        query = SimilarQuery(self.result.encoding, Path(path).stem, path, int(region), panel.k.value(),
                             panel.index_folder())
        what = f"region {region} of {query.slide}" + (f" in index {query.index.name}" if query.index else "")
        started = time.perf_counter()
        worker = create_worker(find_similar, query, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda items: panel.show_items(items, what, time.perf_counter() - started))
        worker.errored.connect(lambda exc: panel.status.setText(f"error: {gui_message(exc)}"))
        worker.finished.connect(self._on_similar_finished)
        self.similar_worker = worker
        self._update_find_buttons()
        panel.status.setText(f"searching for regions like {what}…")
        self.tabs.setCurrentWidget(panel)
        worker.start()
        return worker

    def _on_similar_finished(self) -> None:
        self.similar_worker = None
        self._update_find_buttons()

    def _update_find_buttons(self) -> None:
        """Find similar can be pressed while a region of a result is selected and no search runs."""
        ready = self.result is not None and self.inspector.selected is not None and self.similar_worker is None
        self.find_button.setEnabled(ready)
        self.similar.find_button.setEnabled(ready)

    def go_to_hit(self, item) -> None:
        """Go to a gallery answer: its region selected when it lies in the analysed slide, else its slide opened
        (when not open yet), shown alone, and the region outlined in yellow and fitted in the view."""
        hit, shown = item.hit, self.view.slide if self.result is not None else None
        if shown is not None and item.slide_path is not None and _same_file(shown.metadata["path"], item.slide_path):
            show_only_slide(self.viewer, shown)
            self._similar_outline(shown, [])
            self.select_region(hit.region, center=True)
            return
        if item.slide_path is None:
            self.similar.status.setText(f"{hit.slide}: the slide file is not found here (the index records "
                                        "where it was encoded); open it with File → Open")
            return
        layer = next((lyr for lyr in self._slide_layers() if _same_file(lyr.metadata["path"], item.slide_path)), None)
        if layer is None:
            layer = self.viewer.open(str(item.slide_path), plugin="napari-care")[0]
        show_only_slide(self.viewer, layer)
        s = float(layer.scale[-1])  # µm per level-0 px (1 without a pixel size)
        self._similar_outline(layer, [] if item.geometry is None else outline_paths(item.geometry, s))
        x0, y0, x1, y1 = hit.bbox
        fit_box(self.viewer, (y0 * s, x0 * s, y1 * s, x1 * s))
        self.viewer.layers.selection.active = layer

    def _similar_outline(self, slide: Image, paths: list) -> None:
        """The yellow outline of the answer gone to, in one Shapes layer kept for it (created at first use)."""
        layer = next((lyr for lyr in self.viewer.layers if lyr.metadata.get("care_kind") == "similar"), None)
        if layer is None:
            if not paths:
                return
            layer = self.viewer.add_shapes(name="similar region", units=slide.units,  # paths are in world µm
                                           metadata={"care_kind": "similar"})
        layer.metadata["care_source"] = slide.name
        set_outline(layer, paths, OUTLINE_PX["similar"] / zoom_of(self.viewer), (1.0, 0.84, 0.0, 1.0))
        layer.visible = True


def _same_file(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()
