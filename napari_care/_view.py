"""The viewer around the slide: its camera, the µm scale bar (and the units every layer needs for it), and
outlines that stay a fixed number of screen pixels wide whatever the zoom."""

from __future__ import annotations

import numpy as np

from ._layers import ROI_SCREEN_PX

OUTLINE_PX = {"roi": ROI_SCREEN_PX, "annotations": 2.0, "similar": ROI_SCREEN_PX}  # screen px per outline kind


def camera(viewer):
    """The viewer's camera (napari 0.9: ``viewer.scene.camera``; before: ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def zoom_of(viewer) -> float:
    """Screen px per world unit (µm over a slide with a pixel size)."""
    return max(float(camera(viewer).zoom), 1e-9)


def scale_bar(viewer):
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.scale_bar if overlays is not None else viewer.scale_bar


def show_scale_bar(viewer) -> None:
    """Switch the µm scale bar on, bottom left (notifications pop up bottom right), and keep its units: every
    layer added later without units gets the slide's µm (napari drops the units of a mixed-unit scene). Called
    wherever a slide is put in a viewer (the reader, the widget), it also stops vispy rebuilding a mesh's shader
    on each update (``keep_mesh_shaders``): the scale bar's box and every outline are meshes."""
    keep_mesh_shaders()
    bar = scale_bar(viewer)
    bar.visible = True
    bar.position = "bottom_left"
    inserted = viewer.layers.events.inserted
    if _on_inserted not in inserted.callbacks:
        inserted.connect(_on_inserted)


def keep_mesh_shaders() -> None:
    """Stop vispy compiling and linking a mesh's GL program again on every data update (vispy issue 2568).

    ``MeshVisual`` builds a new pass-through colour-transform shader function each time its data changes, so
    each edit of a Shapes layer (an outline's width on zoom, the selected region's outline) and each resize of
    the scale bar's box recompiles the same program: about 35 ms with software OpenGL. Here a mesh keeps its
    first pass-through function (the same GLSL), so a data update only uploads buffers. Idempotent; colormapped
    meshes (one value per vertex) keep vispy's behaviour."""
    from vispy.visuals.mesh import MeshVisual

    build = MeshVisual._build_color_transform
    if getattr(build, "keeps_pass_through", False):
        return

    def build_once(self, colors):
        if colors.ndim == 2 and colors.shape[1] == 1:
            return build(self, colors)
        if "_pass_through_color" not in self.__dict__:
            self.__dict__["_pass_through_color"] = build(self, colors)  # vispy visuals are frozen
        return self._pass_through_color

    build_once.keeps_pass_through = True
    MeshVisual._build_color_transform = build_once


def _on_inserted(event) -> None:
    give_slide_units(event.source, event.value)


def give_slide_units(layers, layer) -> None:
    """A layer added over a slide in µm without units of its own (napari's new Shapes / Points / Labels layer)
    gets µm; an empty one also gets the slide's scale, so what is drawn lands where it is drawn."""
    slide = next((lyr for lyr in layers if lyr.metadata.get("path") and lyr.metadata.get("mpp")), None)
    if slide is None or layer is slide or layer.metadata.get("path"):
        return
    units = tuple(str(u) for u in layer.units[-2:])
    if units == tuple(str(u) for u in slide.units[-2:]) or any(u not in ("pixel", "px") for u in units):
        return
    if _is_empty(layer) and np.allclose(layer.scale[-2:], 1.0):
        layer.scale = (*layer.scale[:-2], *slide.scale[-2:])
    layer.units = (*layer.units[:-2], *slide.units[-2:])


def _is_empty(layer) -> bool:
    data = layer.data
    if layer._type_string in ("shapes", "points", "vectors", "tracks"):
        return len(data) == 0
    return False


def set_outline(layer, paths: list, edge_width: float, edge_color) -> None:
    """Replace a Shapes layer's shapes by the closed ``paths`` (``outline_paths``), keeping the layer. edge_color:
    one RGBA, or one per path."""
    layer.data = [(path, "path") for path in paths]
    if paths:
        set_edge_width(layer, edge_width)
        colors = np.asarray(edge_color, float).reshape(-1, 4)
        layer.edge_color = colors if len(colors) == len(paths) else np.tile(colors[0], (len(paths), 1))


def set_edge_width(layer, width: float) -> None:
    """Every shape's edge ``width`` (world units), redrawn now: napari's setter stores the width but leaves
    the drawn outline as it was until something else redraws the layer."""
    if layer.nshapes and not np.allclose(layer.edge_width, width):
        layer.edge_width = width
        layer.events.edge_width()


def update_outline_widths(viewer) -> None:
    """Keep each CARE outline layer (ROI, selected region, imported annotations) ``OUTLINE_PX`` screen px wide."""
    zoom = zoom_of(viewer)
    for layer in viewer.layers:
        px = OUTLINE_PX.get(layer.metadata.get("care_kind"))
        if px is not None and layer._type_string == "shapes":
            set_edge_width(layer, px / zoom)


def fit_box(viewer, box_um, fill: float = 0.6) -> None:
    """Centre the view on ``box_um`` (y0, x0, y1, x1 in world µm) and zoom so it fills ``fill`` of the canvas."""
    canvas = getattr(viewer, "canvas", None)
    size = canvas.size if canvas is not None else viewer._canvas_size  # (h, w) screen px
    y0, x0, y1, x1 = (float(v) for v in box_um)
    cam = camera(viewer)
    cam.center = (*cam.center[:-2], (y0 + y1) / 2, (x0 + x1) / 2)
    cam.zoom = fill * min(size) / max(y1 - y0, x1 - x0, 1e-9)


def show_only_slide(viewer, slide) -> None:
    """Show ``slide`` (a slide layer) and the CARE layers made over it; hide the other slides and their CARE
    layers (they lie over the same world µm). Layers hidden here come back when their slide is shown again."""
    for layer in viewer.layers:
        owner = layer.name if layer.metadata.get("path") else layer.metadata.get("care_source")
        if owner is None:
            continue
        if owner != slide.name and layer.visible:
            layer.visible = False
            layer.metadata["care_hidden_for_slide"] = True
        elif owner == slide.name and layer.metadata.pop("care_hidden_for_slide", False):
            layer.visible = True
    slide.visible = True
