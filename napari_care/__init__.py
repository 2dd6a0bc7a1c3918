"""napari-care: view whole-slide images with CARE's adaptive regions and ROI in napari."""

__version__ = "0.1.0"
