"""One slide's CARE result on screen: its layers (reused and updated in place on a re-run), the region under a
world position, the selected region's white outline (in the ROI's layer) and centring the view on a region."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import outline_paths, region_layers
from ._view import OUTLINE_PX, camera, set_outline, update_outline_widths, zoom_of


class ResultView:
    """The layers of the shown result. ``layers``: care kind (+ head name) -> layer; ``result``: the SlideResult
    shown; ``slide``: its slide layer."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layers: dict[str, object] = {}
        self.result = None
        self.slide = None
        self.roi_paths: list = []  # the ROI outline; the selected region's outline is drawn after it, in white
        self.roi_color = (1.0, 1.0, 1.0, 1.0)
        self._annotations: tuple = ((), {})  # (which layers, {class: shapely geometry in level-0 px})

    def prepare(self, slide, result, head_titles: dict | None = None) -> list:
        """The layer-data tuples of ``result`` over ``slide`` (no Qt: a worker thread may build them)."""
        return region_layers(result.encoding, slide.metadata["mpp"], name=slide.name, tissue_mask=result.tissue_mask,
                             tissue_downsample=result.tissue_downsample, zoom=zoom_of(self.viewer),
                             head_titles=head_titles)

    def put(self, slide, result, new_layers: list, model_label: str):
        """Put ``new_layers`` on screen one layer per step (a generator: the caller spreads the steps over turns of
        the Qt event loop); layers of a kind the result no longer has are removed."""
        enc = result.encoding
        if self.slide is None or self.slide.name != slide.name:  # another slide: its own layers
            self.layers = {}
        self.slide, self.result = slide, result
        keys, placed = [], []
        for data, kwargs, kind in new_layers:
            meta = kwargs["metadata"] = {**kwargs["metadata"], "care_source": slide.name}
            if meta["care_kind"] == "regions":
                meta.update(care_encoding=enc, model=model_label)
            if meta["care_kind"] == "roi":
                self.roi_paths, self.roi_color = list(data), kwargs["edge_color"][0]
            keys.append(meta["care_kind"] + meta.get("head", ""))
            placed.append(self._put_layer(data, kwargs, kind, new_layers))
            self.layers[keys[-1]] = placed[-1]
            yield keys[-1]
        for layer in [lyr for lyr in self.viewer.layers if lyr.metadata.get("care_source") == slide.name
                      and lyr.metadata.get("care_kind") in ("class", "pi", "tissue", "regions", "roi")
                      and lyr not in placed]:  # e.g. the layer of a head no longer loaded
            self.viewer.layers.remove(layer)
        self.layers = {k: v for k, v in self.layers.items() if k in keys}
        update_outline_widths(self.viewer)  # the view may have zoomed since the worker sized the outlines

    def _put_layer(self, data, kwargs: dict, kind: str, new_layers: list):
        """Update this slide's layer of the same CARE kind in place, or add it. A head's class layer is reused
        for another head when its own head has no layer in ``new_layers``. (Creating a napari layer stalls the
        window for about half a second, removing one runs a full garbage collection: layers are reused.)"""
        meta = kwargs["metadata"]
        heads = {kw["metadata"].get("head") for _, kw, _ in new_layers}
        mine = [old for old in self.viewer.layers if old.metadata.get("care_source") == meta["care_source"]
                and old.metadata.get("care_kind") == meta["care_kind"] and old._type_string == kind]
        old = next((o for o in mine if o.metadata.get("head") == meta.get("head")), None)
        if old is None and meta["care_kind"] == "class":
            old = next((o for o in mine if o.metadata.get("head") not in heads), None)
        if old is None:
            return getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        if kind == "shapes":
            set_outline(old, data, kwargs["edge_width"], kwargs["edge_color"])
        else:
            old.data = data
            for key in ("scale", "translate", "colormap", "contrast_limits", "name"):
                if key in kwargs:
                    setattr(old, key, kwargs[key])
        old.metadata = meta
        return old

    def region_at(self, world_position) -> int | None:
        """Region id under a world (µm) position, None off the regions."""
        regions = self.layers.get("regions")
        if regions is None or regions not in self.viewer.layers:
            return None
        row, col = (int(round(v)) for v in regions.world_to_data(world_position)[-2:])  # works while hidden too
        if not (0 <= row < regions.data.shape[0] and 0 <= col < regions.data.shape[1]):
            return None
        value = int(regions.data[row, col])
        return value - 1 if value > 0 else None

    def highlight(self, region_id: int | None) -> None:
        """Outline ``region_id`` in white (None: no outline), drawn in the ROI's layer after the ROI (one layer
        fewer to create and to draw: creating a napari layer stalls the window for about half a second)."""
        from care_core.regions import region_geometry

        roi = self.layers.get("roi")
        if roi is None or roi not in self.viewer.layers:
            return
        geometry = None if region_id is None else region_geometry(self.result.encoding, region_id)
        selected = [] if geometry is None else outline_paths(geometry, self.slide.metadata["mpp"])
        colors = [self.roi_color] * len(self.roi_paths) + [(1.0, 1.0, 1.0, 1.0)] * len(selected)
        set_outline(roi, self.roi_paths + selected, OUTLINE_PX["roi"] / zoom_of(self.viewer), colors)

    def annotated_classes(self) -> dict:
        """{class: level-0 geometry} of the annotation layers over the shown slide (Shapes layers drawn or imported
        over it: each shape's 'class', else its layer's name); read again only when those layers change."""
        from shapely import unary_union

        from ._train_inputs import annotations_from_layers

        stem = Path(self.slide.metadata["path"]).stem
        alone = sum(1 for lyr in self.viewer.layers if lyr._type_string == "image" and lyr.metadata.get("path")) == 1
        layers = [lyr for lyr in self.viewer.layers if lyr._type_string == "shapes" and len(lyr.data)
                  and lyr.metadata.get("care_kind") in (None, "annotations")
                  and (lyr.metadata.get("care_source") in (stem, self.slide.name)
                       or (alone and lyr.metadata.get("care_source") is None))]
        key = tuple((id(lyr), len(lyr.data), lyr.name) for lyr in layers)
        if key != self._annotations[0]:
            by_class: dict[str, list] = {}
            for ann in annotations_from_layers(layers, {stem: self.slide}).get(stem, []):
                by_class.setdefault(ann.classification, []).append(ann.geometry)
            self._annotations = (key, {c: unary_union(g) for c, g in by_class.items()})
        return self._annotations[1]

    def composition(self, region_id: int) -> dict[str, float]:
        """{class: fraction of the region's patches whose centre the annotations of that class cover}, largest
        first; {} when no annotation layer lies over the slide."""
        import shapely

        classes = self.annotated_classes()
        if not classes:
            return {}
        enc = self.result.encoding
        points = shapely.points(enc.coords[enc.patch_region == region_id] + enc.patch_size_level0 / 2.0)
        shares = {c: float(shapely.contains(g, points).mean()) for c, g in classes.items()}
        return dict(sorted(((c, f) for c, f in shares.items() if f > 0), key=lambda cf: -cf[1]))

    def centre_on(self, region_id: int) -> None:
        """Centre the view on the region's patch nearest its centroid: on tissue of the region even when the
        region is in separate pieces (its centroid may then lie on glass)."""
        enc = self.result.encoding
        centres = enc.coords[enc.patch_region == region_id] + (enc.patch_size_level0 - 1) / 2.0  # level-0 (x, y)
        x, y = centres[np.argmin(((centres - centres.mean(axis=0)) ** 2).sum(axis=1))]
        mpp = self.slide.metadata["mpp"]
        cam = camera(self.viewer)
        cam.center = (*cam.center[:-2], float(y) * mpp, float(x) * mpp)
