"""One slide's CARE result on screen: its layers (reused and updated in place on a re-run), the region under a
world position, the selected region's white outline and centring the view on a region."""

from __future__ import annotations

import numpy as np

from ._layers import outline_layer, polygon_outlines, region_layers
from ._view import OUTLINE_PX, camera, set_outline, update_outline_widths, zoom_of


class ResultView:
    """The layers of the shown result. ``layers``: care kind (+ head name) -> layer; ``result``: the SlideResult
    shown; ``slide``: its slide layer."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layers: dict[str, object] = {}
        self.result = None
        self.slide = None

    def prepare(self, slide, result, head_titles: dict | None = None) -> list:
        """The layer-data tuples of ``result`` over ``slide`` (no Qt: a worker thread may build them)."""
        return region_layers(result.encoding, slide.metadata["mpp"], name=slide.name, tissue_mask=result.tissue_mask,
                             tissue_downsample=result.tissue_downsample, zoom=zoom_of(self.viewer),
                             head_titles=head_titles)

    def put(self, slide, result, new_layers: list, model_label: str):
        """Put ``new_layers`` on screen one layer per step (a generator: the caller spreads the steps over turns of
        the Qt event loop); layers of a kind the result no longer has are removed."""
        enc = result.encoding
        if self.slide is None or self.slide.name != slide.name:  # another slide: only the highlight moves over
            self.layers = {k: v for k, v in self.layers.items() if k == "highlight"}
        self.slide, self.result = slide, result
        keys = []
        for data, kwargs, kind in new_layers:
            meta = kwargs["metadata"] = {**kwargs["metadata"], "care_source": slide.name}
            if meta["care_kind"] == "regions":
                meta.update(care_encoding=enc, model=model_label)
            keys.append(meta["care_kind"] + meta.get("head", ""))
            self.layers[keys[-1]] = self._put_layer(data, kwargs, kind)
            yield keys[-1]
        for key in [k for k in self.layers if k not in keys and k != "highlight"]:  # e.g. a head no longer loaded
            old = self.layers.pop(key)
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        update_outline_widths(self.viewer)  # the view may have zoomed since the worker sized the outlines

    def _put_layer(self, data, kwargs: dict, kind: str):
        """Update this slide's layer of the same CARE kind in place, or add it. (Removing a napari layer runs a
        full garbage collection, a second or more with torch loaded, so layers are reused.)"""
        meta = kwargs["metadata"]
        for old in self.viewer.layers:
            same = old.metadata.get("care_source") == meta["care_source"] and old.metadata.get("care_kind") == meta["care_kind"]
            if same and old.metadata.get("head") == meta.get("head") and old._type_string == kind:
                break
        else:
            return getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        if kind == "shapes":
            set_outline(old, data, kwargs["edge_width"], kwargs["edge_color"][0])
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
        """Outline ``region_id`` in white (None: no outline)."""
        from care_core.regions import region_geometry

        mpp = self.slide.metadata["mpp"]
        geometry = None if region_id is None else region_geometry(self.result.encoding, region_id)
        highlight = self.layers.get("highlight")
        if highlight is not None and highlight in self.viewer.layers:
            data = [] if geometry is None else polygon_outlines(geometry, mpp)
            set_outline(highlight, data, OUTLINE_PX["highlight"] / zoom_of(self.viewer), (1.0, 1.0, 1.0, 1.0))
        elif geometry is not None:
            data, kwargs, _ = outline_layer(geometry, mpp, name=f"{self.slide.name} selected", color=(255, 255, 255),
                                            kind="highlight", zoom=zoom_of(self.viewer))
            kwargs["metadata"]["care_source"] = self.slide.name
            active = self.viewer.layers.selection.active
            self.layers["highlight"] = self.viewer.add_shapes(data, **kwargs)
            if active is not None:
                self.viewer.layers.selection.active = active

    def centre_on(self, region_id: int) -> None:
        """Centre the view on the region's patch nearest its centroid: on tissue of the region even when the
        region is in separate pieces (its centroid may then lie on glass)."""
        enc = self.result.encoding
        centres = enc.coords[enc.patch_region == region_id] + (enc.patch_size_level0 - 1) / 2.0  # level-0 (x, y)
        x, y = centres[np.argmin(((centres - centres.mean(axis=0)) ** 2).sum(axis=1))]
        mpp = self.slide.metadata["mpp"]
        cam = camera(self.viewer)
        cam.center = (*cam.center[:-2], float(y) * mpp, float(x) * mpp)
