"""Region geometry, exporters (QuPath GeoJSON, ASAP XML, OME-TIFF label mask, CSV) and annotation importers."""

from care_core.regions.annotations import Annotation, read_annotations
from care_core.regions.asap import read_asap_xml, write_asap_xml
from care_core.regions.bundle import (
    EXPORT_FORMATS,
    export_encoding_file,
    export_file,
    export_name,
    export_regions,
    format_for_path,
)
from care_core.regions.export import (
    annotations_to_geojson,
    prediction_columns,
    region_annotations,
    region_color,
    to_geojson,
    write_asap,
    write_geojson,
    write_region_csv,
)
from care_core.regions.geometry import (
    REGION_COLUMNS,
    label_raster,
    region_geometry,
    region_polygons,
    region_extents,
    region_table,
    roi_geometry,
)
from care_core.regions.mask import LabelMask, read_label_mask, write_label_mask

__all__ = [
    "Annotation",
    "read_annotations",
    "read_asap_xml",
    "write_asap_xml",
    "REGION_COLUMNS",
    "label_raster",
    "region_polygons",
    "region_geometry",
    "region_extents",
    "region_table",
    "roi_geometry",
    "region_color",
    "prediction_columns",
    "region_annotations",
    "annotations_to_geojson",
    "to_geojson",
    "write_asap",
    "write_geojson",
    "write_region_csv",
    "LabelMask",
    "read_label_mask",
    "write_label_mask",
    "EXPORT_FORMATS",
    "export_name",
    "export_regions",
    "export_encoding_file",
    "export_file",
    "format_for_path",
]
