"""Exceptions a user can cause. Each subclasses a built-in so ordinary ``except`` works; each message
says what is wrong with which input and what to do about it."""

from __future__ import annotations

__all__ = [
    "CareError",
    "SlideOpenError",
    "MissingMppError",
    "NoTissueError",
    "FeatureMismatchError",
    "MissingWeightsError",
    "FeatureFileError",
    "CheckpointError",
    "OutputError",
    "UnknownEncoderError",
    "InvalidInputError",
    "TrainingConfigError",
    "TrainingError",
    "AnnotationFileError",
    "HeadError",
]


class CareError(Exception):
    """Base class of every error napari-care raises on purpose."""


class SlideOpenError(CareError, ValueError):
    """A slide file is missing, not a slide, truncated, corrupt or of an unsupported kind."""


class MissingMppError(CareError, ValueError):
    """The slide has no (or an absurd) pixel size and the caller gave none."""


class NoTissueError(CareError, ValueError):
    """Tissue detection found nothing to patch."""


class FeatureMismatchError(CareError, ValueError):
    """Features do not fit their consumer (dimension, encoder, µm/px or patch size)."""


class MissingWeightsError(CareError, FileNotFoundError):
    """A model needs a weight file that is not on disk; the message says where to put it."""


class FeatureFileError(CareError, ValueError):
    """A feature file cannot be read (unknown layout, missing datasets, pickle not allowed)."""


class CheckpointError(CareError, ValueError):
    """A CARE checkpoint cannot be loaded or does not fit the features."""


class OutputError(CareError, OSError):
    """An output cannot be written (its folder is a file, read-only or on a full disk); nothing half-written is left."""


class UnknownEncoderError(CareError, KeyError):
    """A patch-encoder name that is not registered; the message lists the choices."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidInputError(CareError, ValueError):
    """A user-given value or list is unusable (a slide-list CSV, clashing names, a patch larger than the slide)."""


class TrainingConfigError(CareError, ValueError):
    """A training config, data set or resume folder cannot start a run (found before any step)."""


class TrainingError(CareError, RuntimeError):
    """A run stopped on purpose mid-way (NaN/Inf loss); the last good checkpoint is kept."""


class AnnotationFileError(CareError, ValueError):
    """An annotation file (QuPath GeoJSON, ASAP XML) cannot be read or holds no usable polygon."""


class HeadError(CareError, ValueError):
    """A trained prediction head cannot be loaded or does not fit the CARE model / patch encoder it is used with."""
