"""GUI: what keeps the window answering (issue 19's stall goal): a mesh's data update (an outline's width on
zoom, a selected region's outline, the scale bar's box) uploads buffers and does not rebuild its GL program;
outlines are paths (no face to triangulate); the widget's preload runs the garbage collection its imports make
due; a result's layers go on screen one per turn of the event loop."""

from __future__ import annotations

import numpy as np
import pytest
from vispy.visuals import MeshVisual

from napari_care._view import keep_mesh_shaders

TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def _updated(mesh: MeshVisual, **data) -> bool:
    """Whether a data update of ``mesh`` (already drawn once) makes its GL program build again."""
    program = mesh._program
    program._need_build = False  # as after a draw
    mesh.set_data(**data)
    mesh._update_data()  # what the next draw runs first
    return program._need_build


def test_a_mesh_data_update_keeps_its_gl_program():
    keep_mesh_shaders()
    keep_mesh_shaders()  # idempotent: still one wrapper
    faces = np.array([[0, 1, 2]])
    mesh = MeshVisual(vertices=TRIANGLE, faces=faces, face_colors=np.array([[1.0, 0, 0, 1]]))
    mesh._update_data()
    pass_through = mesh._program.vert["color_transform"]
    assert not _updated(mesh, vertices=TRIANGLE * 2, faces=faces, face_colors=np.array([[0, 1.0, 0, 1]]))
    assert not _updated(mesh, vertices=TRIANGLE * 3, faces=faces, vertex_colors=np.ones((3, 4)))
    assert mesh._program.vert["color_transform"] is pass_through
    assert "return color;" in mesh._program.vert["color_transform"].compile()
    # a colormapped mesh (one value per vertex) still gets its colormap transform
    assert _updated(mesh, vertices=TRIANGLE, faces=faces, vertex_values=np.array([0.0, 0.5, 1.0]))
    assert "cmap" in mesh._program.vert.compile()
    # and back to colours: built once more, with the pass-through again
    assert _updated(mesh, vertices=TRIANGLE, faces=faces, face_colors=np.array([[0, 0, 1.0, 1]]))
    assert "cmap" not in mesh._program.vert.compile() and "return color;" in mesh._program.vert.compile()


def test_outlines_are_closed_paths_from_an_edge_midpoint():
    """A 2 x 1 px rectangle with a 1 px hole at 2 µm/px: each ring a path from the middle of its first edge round
    to it again (napari triangulates no face for a path), vertices at the level-0 pixel corners."""
    from shapely.geometry import Polygon

    from napari_care._layers import outline_layer, outline_paths

    square = Polygon([(0, 0), (4, 0), (4, 2), (0, 2)], holes=[[(1, 1), (2, 1), (2, 2), (1, 2)]])  # level-0 (x, y)
    outer, hole = outline_paths(square, 2.0)
    # shapely's ring (x, y): (0,0) (4,0) (4,2) (0,2) -> (row, col) µm = ((y, x) - 0.5) * 2
    corners = (np.array([[0, 0], [0, 4], [2, 4], [2, 0]]) - 0.5) * 2.0
    np.testing.assert_allclose(outer, np.vstack([[-1.0, 3.0], corners[1:], corners[:1], [[-1.0, 3.0]]]))
    assert len(hole) == 6 and np.allclose(hole[0], hole[-1])
    data, kwargs, kind = outline_layer(square, 2.0, name="ROI", color=(255, 0, 0), kind="roi", zoom=2.0)
    assert kind == "shapes" and kwargs["shape_type"] == "path" and kwargs["edge_width"] == 1.5 and len(data) == 2


def test_the_widget_preload_ends_with_the_full_garbage_collection_its_imports_make_due():
    """With torch loaded a full collection takes about 0.25 s; run in the preload (when the widget opens), it
    no longer falls in the first result's layers."""
    import gc

    from napari_care._widget import _preload

    _preload()  # the imports (which may make Python collect on its own)
    full = gc.get_stats()[2]["collections"]
    _preload()  # imports done: only its own collection
    assert gc.get_stats()[2]["collections"] == full + 1


@pytest.mark.filterwarnings("ignore:grid patches are 256 px")
def test_a_staged_result_lets_the_event_loop_run_between_its_layers(make_napari_viewer, small_sample, tmp_path,
                                                                   monkeypatch, qtbot):
    """Each new layer is put on screen in its own turn of the Qt event loop: a 5 ms timer ticks between any two
    (chained without a pause, two layers were created in one turn, then drawn together)."""
    import time

    from qtpy.QtCore import QTimer
    from test_gui_inspector import slide_with_result

    viewer, widget, result = slide_with_result(make_napari_viewer, small_sample.slide_path, tmp_path, monkeypatch, 256)
    ticks, added = [], []
    viewer.layers.events.inserted.connect(lambda _e: added.append(time.perf_counter()))
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    widget.show_result(viewer.layers[0], result, "untrained (seed 0)", staged=True)
    qtbot.waitUntil(lambda: not widget.busy(), timeout=60_000)
    timer.stop()
    assert len(added) == 4  # tissue, π, regions, ROI
    assert all(any(a < t < b for t in ticks) for a, b in zip(added, added[1:]))
