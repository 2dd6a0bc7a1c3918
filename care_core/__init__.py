"""care_core: the CARE slide encoder and its pipeline (slides, features, model, regions), headless."""

__version__ = "0.1.0"
