"""Region geometry and exporters: label rasters, level-0 polygons, ROI, region tables, QuPath GeoJSON, CSV."""

from care_core.regions.export import region_color, to_geojson, write_geojson, write_region_csv
from care_core.regions.geometry import REGION_COLUMNS, label_raster, region_polygons, region_table, roi_geometry

__all__ = [
    "REGION_COLUMNS",
    "label_raster",
    "region_polygons",
    "region_table",
    "roi_geometry",
    "region_color",
    "to_geojson",
    "write_geojson",
    "write_region_csv",
]
