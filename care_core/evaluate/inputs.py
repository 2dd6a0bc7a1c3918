"""One pre-flight check of a labelled cohort's inputs, run before any slide is encoded or anything is written:
the labels table, the splits, the feature files (headers only), the CARE checkpoint they must fit, annotation
files and fine-tuning overrides. ``care evaluate``, ``care predict`` and the fine-tune trainer call it; every
fault is one line naming the file and the fix.

Inputs are what the CLI takes: paths (a features folder or a list of files, a checkpoint path); a CARE in
memory and {slide: polygons} are accepted too.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from care_core.errors import InvalidInputError, TrainingConfigError
from care_core.evaluate.labels import LabelTable, read_labels
from care_core.evaluate.splits import Fold, load_splits, make_splits

__all__ = ["EVALUATE_PROTOCOLS", "REGION_PROTOCOLS", "CheckedInputs", "check_task", "check_feature_files",
           "check_evaluate_inputs", "check_inputs", "finetune_overrides", "read_annotation_folder"]

EVALUATE_PROTOCOLS = ("lr", "knn", "survival", "abmil", "finetune")
REGION_PROTOCOLS = ("lr", "knn")  # a region classifier from annotations
_SET_PER_FOLD = ("labels", "features", "splits", "fold", "init", "input", "seed")  # care evaluate sets these

Paths = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class CheckedInputs:
    """What ``check_inputs`` read: the labels table, the folds (None for a region classifier without splits),
    {slide: feature file}, {slide: annotations} (None without annotations) and the fine-tuning overrides."""

    table: LabelTable
    folds: list[Fold] | None
    features: dict[str, Path]
    annotations: dict[str, list] | None
    finetune: dict | None


def check_task(table: LabelTable, protocol: str) -> None:
    """A survival table exactly when the protocol is "survival" (InvalidInputError naming the table otherwise)."""
    if protocol == "survival" and table.kind != "survival":
        raise InvalidInputError(f"labels table {table.source!r} has no 'time'/'event' columns; protocol 'survival' needs them")
    if protocol != "survival" and table.kind == "survival":
        raise InvalidInputError(f"labels table {table.source!r} is a survival table; use --protocol survival")


def as_paths(inputs: Paths) -> list[Path]:
    """One path or several, as a list (a folder given as one string is one input, not its characters)."""
    return [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]


def _model_fit(model):
    """(checkpoint meta or None, input dim) of a CARE, or of a checkpoint path (its JSON is read and verified)."""
    from care_core.model.checkpoint import read_checkpoint_meta

    if isinstance(model, (str, os.PathLike)):
        meta = read_checkpoint_meta(model)
        return meta, meta.input_dim
    return getattr(model, "checkpoint_meta", None), model.config.input_dim


def _header(path: Path, allow_pickle: bool):
    from care_core.features import load_features
    from care_core.features.importers import FeatureHeader, read_feature_header

    if allow_pickle and path.suffix.lower() == ".npy":
        pf = load_features(path, allow_pickle=True)
        return FeatureHeader(str(path), pf.n_patches, pf.dim, pf.encoder, pf.mpp, pf.patch_px)
    return read_feature_header(path)


def check_feature_files(files: Mapping[str, Path], model=None, *, allow_empty: bool = False,
                        allow_pickle: bool = False) -> dict:
    """Read the header of every feature file ({name: path}; a few ms each) and refuse, naming the file: a file
    without patches (unless ``allow_empty``), files of two patch encoders or two widths, and with ``model`` (a
    CARE or a checkpoint path) features that do not fit it (width; for a checkpoint also encoder, µm/px, patch
    size). Returns {name: FeatureHeader}."""
    from care_core.features import check_compatible
    from care_core.model.checkpoint import check_features

    headers = {name: _header(Path(path), allow_pickle) for name, path in files.items()}
    for name, h in headers.items():
        if h.n_patches == 0 and not allow_empty:
            raise InvalidInputError(f"feature file {h.source!r} has no patches (a slide without tissue); drop slide "
                                    f"{name!r} from the labels table")
    by_encoder: dict[str, str] = {}  # encoder -> its first file; files that do not record one are not compared
    for h in headers.values():
        if h.encoder:
            by_encoder.setdefault(h.encoder, Path(h.source).name)
    if len(by_encoder) > 1:
        shown = ", ".join(f"{e!r} ({name})" for e, name in sorted(by_encoder.items()))
        raise InvalidInputError(f"the feature files mix patch encoders {shown}; use one encoder per cohort")
    widths = Counter(h.dim for h in headers.values())
    if len(widths) > 1:
        usual = widths.most_common(1)[0][0]
        odd = next(h for h in headers.values() if h.dim != usual)
        raise InvalidInputError(f"feature file {odd.source!r} holds {odd.dim}-d features but {widths[usual]} other "
                                f"file(s) hold {usual}-d; re-extract it with the cohort's encoder or leave it out")
    if model is not None:
        meta, dim = _model_fit(model)
        for h in headers.values():
            if meta is not None:
                check_features(meta, h)
            else:
                check_compatible(h, dim=dim)
    return headers


def read_annotation_folder(folder: str | os.PathLike, slides: Sequence[str]) -> dict[str, list]:
    """{slide: annotations} of the ``<slide>.geojson`` / ``.json`` / ``.xml`` files in ``folder`` for ``slides``;
    each file is read and checked in full (AnnotationFileError naming it)."""
    from care_core.regions import read_annotations

    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"annotation folder {str(folder)!r} does not exist; give the folder of "
                                "<slide>.geojson / .xml files")
    out = {}
    for slide in slides:
        for suffix in (".geojson", ".json", ".xml"):
            path = folder / f"{slide}{suffix}"
            if path.is_file():
                out[slide] = read_annotations(path)
                break
    if not out:
        raise InvalidInputError(f"annotation folder {str(folder)!r} has no <slide>.geojson/.json/.xml for any slide of "
                                "the labels table; name each annotation file after its slide")
    return out


def finetune_overrides(finetune: Mapping | str | os.PathLike | None, *, labels, input: str, seed: int) -> dict | None:
    """The fine-tuning overrides of ``care evaluate --protocol finetune`` (a config file or a mapping), checked as
    the trainer will build each fold's config; TrainingConfigError naming the file otherwise."""
    from care_core.train.config import config_from_dict, read_config_file

    if finetune is None:
        return None
    where = f"fine-tuning config {str(finetune)!r}" if isinstance(finetune, (str, os.PathLike)) else "fine-tuning overrides"
    values = read_config_file(finetune) if isinstance(finetune, (str, os.PathLike)) else dict(finetune)
    fixed = sorted(set(values) & set(_SET_PER_FOLD))
    if fixed:
        raise TrainingConfigError(f"{where}: {fixed} are set by care evaluate for each fold; remove them from it")
    try:
        config_from_dict("finetune", {**values, "labels": str(labels), "features": "features.txt", "splits": "splits",
                                      "fold": 0, "init": "init", "input": input, "seed": seed})
    except TrainingConfigError as exc:
        raise TrainingConfigError(f"{where}: {exc}") from None
    return values


def check_inputs(labels: str | os.PathLike, features: Paths, *, protocol: str | None = "lr", n_folds: int = 5,
                 val: bool = True, annotations: str | os.PathLike | Mapping[str, Sequence] | None = None, model=None,
                 splits: str | os.PathLike | None = None, seed: int = 0,
                 finetune: Mapping | str | os.PathLike | None = None, input: str = "slide") -> CheckedInputs:
    """``check_evaluate_inputs``, returning everything it read (``CheckedInputs``). ``protocol`` None: either
    task (the fine-tune trainer takes class and survival tables)."""
    from care_core.evaluate.cohort import match_features

    if protocol is not None and protocol not in EVALUATE_PROTOCOLS:
        raise InvalidInputError(f"protocol={protocol!r} is not one of {EVALUATE_PROTOCOLS}")
    region_task = annotations is not None
    if region_task and protocol not in REGION_PROTOCOLS:
        raise InvalidInputError(f"a region classifier from annotations uses protocol 'lr' or 'knn', not {protocol!r}")
    if protocol == "finetune" and not val:
        raise InvalidInputError("protocol 'finetune' needs validation splits for early stopping; drop --no-val")
    if finetune is not None and protocol != "finetune":
        raise InvalidInputError(f"fine-tuning overrides {str(finetune)!r} are for protocol 'finetune', not {protocol!r}; "
                                "drop them or use --protocol finetune")
    tuned = finetune_overrides(finetune, labels=labels, input=input, seed=seed) if protocol == "finetune" else None
    table = read_labels(labels, slides_only=region_task)
    if protocol is not None:
        check_task(table, protocol)
    folds = load_splits(splits, table) if splits is not None else None
    if folds is None and not region_task:
        folds = make_splits(table, n_folds=n_folds, val=val, seed=seed)
    no_val = [k for k, f in enumerate(folds or ()) if not f.val]
    if protocol == "finetune" and no_val:
        raise InvalidInputError(f"protocol 'finetune' needs validation splits for early stopping; fold(s) {no_val} of "
                                f"{str(splits)!r} have none")
    files = match_features(table, as_paths(features))
    check_feature_files(files, model)
    polys = None
    if region_task:
        polys = (read_annotation_folder(annotations, table.slides.tolist())
                 if isinstance(annotations, (str, os.PathLike)) else dict(annotations))
        unknown = sorted(set(polys) - set(table.slides.tolist()))
        if unknown:
            raise InvalidInputError(f"annotations for slide(s) {unknown[:10]} that are not in labels table {str(labels)!r}")
    return CheckedInputs(table, folds, files, polys, tuned)


def check_evaluate_inputs(labels: str | os.PathLike, features: Paths, *, protocol: str = "lr", n_folds: int = 5,
                          val: bool = True, annotations: str | os.PathLike | Mapping[str, Sequence] | None = None,
                          model=None, splits: str | os.PathLike | None = None, seed: int = 0,
                          finetune: Mapping | str | os.PathLike | None = None) -> tuple[LabelTable, list[Fold] | None]:
    """Check ``iter_evaluate``'s inputs without encoding: the labels table, then only the attributes and shapes
    of the feature files (a few ms per file, whatever its size; the first call also imports pandas and
    scikit-learn, about a second). Raises InvalidInputError, FeatureFileError, FeatureMismatchError,
    CheckpointError, AnnotationFileError or TrainingConfigError with one line naming the input and the fix.

    labels: the labels table file. features: a folder of .h5 files, one file, or a list of files / folders.
    model: a CARE checkpoint path (or a CARE; None without one). annotations: a folder of ``<slide>.geojson`` /
    ``.xml`` files (or {slide: [(polygon, class), ...]}). splits: a folder of split CSVs. finetune: with
    protocol "finetune", a config file (or mapping) of fine-tuning overrides.

    Checked: the protocol; the labels table (readable, two classes, ...) and that it is a survival table exactly
    when ``protocol`` is "survival"; enough patients for ``n_folds`` folds made with ``seed`` (or the ``splits``
    folder fits the table: every labelled slide in one part, each patient's slides in one part); a feature file
    with patches for every slide, all of one patch encoder (files that do not record theirs are not compared)
    and one width; with ``model``, features that fit it (its input dim; for a checkpoint also its encoder, µm/px
    and patch size); every annotation file of a labelled slide, read in full; the fine-tuning overrides.
    Returns the labels table and the folds (None for a region classifier without ``splits``: its folds are
    made over the annotated regions once they are known).
    """
    checked = check_inputs(labels, features, protocol=protocol, n_folds=n_folds, val=val, annotations=annotations,
                           model=model, splits=splits, seed=seed, finetune=finetune)
    return checked.table, checked.folds
