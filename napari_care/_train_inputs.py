"""What a training job in the window is made of, gathered from the viewer and checked before anything starts:
the slides (open layers, files, a folder), their labels (a table file or typed rows), annotation layers for a
region classifier, the features folder (reused; slides without features are extracted first), and the
``care`` commands that run the job. No Qt here: the Train widget calls ``plan_job`` on its form's values."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from care_core.errors import InvalidInputError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".svslide", ".mrxs", ".vms", ".vmu")
PROBE, REGION, FINETUNE, STAGE1, STAGE2 = "linear probe", "region classifier", "fine-tune", "pretrain Stage I", "pretrain Stage II"
JOBS = (PROBE, REGION, FINETUNE, STAGE1, STAGE2)
STAGE_OF = {FINETUNE: "finetune", STAGE1: "1", STAGE2: "2"}  # the trainer's stage of each training job


@dataclass
class JobInputs:
    """The form's values. labels_rows: typed (slide, label, time, event) rows, used when labels_file is None.
    model: a CARE checkpoint path (None: untrained with ``seed``). hyper: the job's hyper-parameters."""

    job: str
    run_dir: Path
    slides: dict[str, Path] = field(default_factory=dict)  # slide name (file stem) -> slide file
    labels_file: Path | None = None
    labels_rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    annotations: dict[str, list] = field(default_factory=dict)  # slide -> [Annotation] (region classifier)
    features_dir: Path | None = None
    encoder: str = "stain-texture"
    model: Path | None = None
    seed: int = 0
    config_file: Path | None = None  # pretraining (and an optional fine-tune config written elsewhere)
    hyper: dict = field(default_factory=dict)


@dataclass
class JobPlan:
    """Checked inputs: the files to write into the run folder, the features to link from the window's cache,
    the slides to extract, and the ``care`` commands (argv after ``care``) in order."""

    job: str
    run_dir: Path
    files: dict[str, str] = field(default_factory=dict)  # name in run_dir -> text
    link: dict[Path, Path] = field(default_factory=dict)  # cached feature file -> features_dir/<slide>.h5
    extract: list[Path] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    def write(self) -> None:
        """Write the run folder's input files and link the cached features (fast: hard links where possible)."""
        from care_core._atomic import atomic_path

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            with atomic_path(self.run_dir / name) as tmp:
                tmp.write_text(text)
        for src, dest in self.link.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)


def default_features_dir(encoder: str, mpp: float, patch_px: int) -> Path:
    """The window's shared features folder for one encoder and grid: every job reuses what it holds."""
    from care_core.pipeline import care_cache_dir

    safe = encoder.replace(":", "_").replace("/", "_")
    return care_cache_dir() / "features" / f"{safe}-{mpp:g}um-{patch_px}px"


COMPANIONS = ("_mask", "_structures", "_labels", "-mask")  # <slide>_mask.tif etc.: rasters beside a slide, not slides


def slide_files(folder: Path | None, files=()) -> dict[str, Path]:
    """{name: path} of the slide files listed and of those in ``folder`` (by suffix; a ``<slide>_mask.tif``
    beside ``<slide>.svs``, as ``care synth`` writes it, is the slide's mask, not a slide)."""
    out: dict[str, Path] = {}
    if folder is not None and folder.is_dir():
        found = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file()}
        for stem, p in found.items():
            if not any(stem.endswith(c) and stem[: -len(c)] in found for c in COMPANIONS):
                out[stem] = p
    for p in files:
        out[Path(p).stem] = Path(p)
    return out


def cached_features(slide: Path, encoder: str, mpp: float, patch_px: int) -> Path | None:
    """A feature file the CARE widget already made for ``slide`` with this encoder and grid, or None."""
    from care_core.errors import CareError
    from care_core.features.importers import read_feature_header
    from care_core.pipeline import ResultCache

    folder = ResultCache.default().slide_dir(slide)
    for path in sorted(folder.glob("features-*.h5")) if folder.is_dir() else ():
        try:
            h = read_feature_header(path)
        except CareError:
            continue
        if h.encoder == encoder and h.mpp is not None and abs(h.mpp - mpp) <= 1e-6 and h.patch_px == patch_px:
            return path
    return None


def labels_csv(rows) -> str:
    """Typed rows (slide, label, time, event) as a labels table: slide,label or slide,time,event; blank rows
    (no label and no time) are left out."""
    rows = [tuple(str(v).strip() for v in r) for r in rows]
    rows = [r for r in rows if r[0] and (r[1] or r[2])]
    if not rows:
        raise InvalidInputError("no labels: type a label (or a time and event) for at least two slides, or choose a labels table")
    survival = any(r[2] for r in rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("slide", "time", "event") if survival else ("slide", "label"))
    for s, label, time, event in rows:
        w.writerow((s, time, event) if survival else (s, label))
    return out.getvalue()


def annotations_geojson(annotations) -> str:
    import json

    from care_core.regions.export import annotations_to_geojson

    return json.dumps(annotations_to_geojson(annotations))


def _read_table(text: str, *, slides_only: bool):
    """read_labels on a table held in memory (checked before anything is written)."""
    import dataclasses

    from care_core.evaluate.labels import read_labels

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_text(text)
        try:
            table = read_labels(path, slides_only=slides_only)
        except InvalidInputError as exc:
            raise InvalidInputError(str(exc).replace(f"labels table {str(path)!r}", "the typed labels")) from None
    return dataclasses.replace(table, source="typed labels")


PRETRAIN_CHECKPOINT_EVERY = 100  # our choice for window runs: a cancel loses at most 100 steps


def plan_job(inputs: JobInputs, *, resume: bool = False) -> JobPlan:
    """Check ``inputs`` and say how to run them; raises the library's errors (InvalidInputError, ...) naming
    what to fix. Nothing is written here."""
    from care_core.train.jobs import train_command

    job, run = inputs.job, Path(inputs.run_dir)
    plan = JobPlan(job, run, record={"job_inputs": {"encoder": inputs.encoder, "model": str(inputs.model or ""),
                                                    "seed": inputs.seed, "hyper": inputs.hyper}})
    if resume:
        if job == PROBE or job == REGION:
            raise InvalidInputError(f"a {job} has no checkpoint to resume; press Start to run it again")
        if not (run / "config.json").is_file():
            raise InvalidInputError(f"{run} holds no run to resume (no config.json); choose its run folder")
        plan.commands = [train_command(_command(job), config=None, run_dir=run, stage=STAGE_OF[job], resume=True)]
        return plan
    if (run / "config.json").exists() or (run / "results.json").exists():
        raise InvalidInputError(f"{run} already holds a run; choose a new run folder (or Resume this one)")
    if inputs.config_file is not None and job in STAGE_OF:  # a config written elsewhere replaces the form
        if not inputs.config_file.is_file():
            raise InvalidInputError(f"config file {inputs.config_file} does not exist")
        plan.commands = [train_command(_command(job), config=inputs.config_file, run_dir=run, stage=STAGE_OF[job])]
        return plan
    if job in (STAGE1, STAGE2):
        return _plan_pretrain(plan, inputs, STAGE_OF[job])
    return _plan_labelled(plan, inputs)


def _command(job: str) -> str:
    return "finetune" if job == FINETUNE else "pretrain"


def _plan_labelled(plan: JobPlan, inputs: JobInputs) -> JobPlan:
    """A linear probe, region classifier or fine-tune: labels (or annotations), features, the commands."""
    import json

    from care_core.evaluate.labels import read_labels
    from care_core.evaluate.run import check_task
    from care_core.evaluate.splits import make_splits
    from care_core.train.config import config_from_dict
    from care_core.train.jobs import train_command

    job, run = plan.job, plan.run_dir
    region = job == REGION
    if region:
        annotated = {s: a for s, a in inputs.annotations.items() if a}
        if not annotated:
            raise InvalidInputError("no annotations: draw or import polygons over a slide (one Shapes layer per class, "
                                    "or shapes with a 'class'), then Start")
        text = "slide\n" + "".join(f"{s}\n" for s in sorted(annotated))
        table = _read_table(text, slides_only=True)
        for s, anns in annotated.items():
            plan.files[f"annotations/{s}.geojson"] = annotations_geojson(anns)
    elif inputs.labels_file is not None:
        table = read_labels(inputs.labels_file)
        text = Path(inputs.labels_file).read_text()
    else:
        text = labels_csv(inputs.labels_rows)
        table = _read_table(text, slides_only=False)
    plan.files["labels.csv"] = text
    n_folds = int(inputs.hyper.get("folds", 5))
    if job == PROBE:
        check_task(table, inputs.hyper.get("protocol", "lr"))
    # too few patients (or one class) for the folds: the library says so; a fine-tune trains on one of these
    try:
        folds = None if region else make_splits(table, n_folds=n_folds, seed=inputs.seed)
    except InvalidInputError as exc:
        if job != FINETUNE:
            raise
        # a fine-tune always splits its slides into the trainer's folds (no folds control): say what helps
        raise InvalidInputError(str(exc).split("; ")[0] + "; a fine-tune holds out one fold of "
                                f"{n_folds} by patient: add slides to that class, or merge it with another") from None
    features = _plan_features(plan, inputs, table.slides.tolist())
    model_args = ["--model", str(inputs.model)] if inputs.model is not None else ["--untrained", str(inputs.seed)]
    labels = str(run / "labels.csv")
    if job in (PROBE, REGION):
        cmd = ["evaluate", "--labels", labels, "--features", str(features), *model_args,
               "--protocol", inputs.hyper.get("protocol", "lr"), "--folds", str(n_folds), "--out", str(run),
               "--final-head", "--events-json"]
        cmd += ["--annotations", str(run / "annotations")] if region else ["--input", inputs.hyper.get("input", "slide")]
        plan.commands.append(cmd)
        return plan
    hyper = {k: v for k, v in inputs.hyper.items() if k not in ("folds", "protocol")}
    if int(hyper.get("fold", 0)) >= len(folds):
        raise InvalidInputError(f"fold {hyper['fold']} does not exist: the splits have folds 0..{len(folds) - 1}")
    per_epoch = max(1, len(folds[int(hyper.get("fold", 0))].train) // int(hyper.get("batch_size", 1)))
    cfg = {"labels": labels, "features": str(features), "init": str(inputs.model or ""), "seed": inputs.seed,
           "log_every": 1, "checkpoint_every": per_epoch, **hyper}  # a live curve; a checkpoint every epoch
    config_from_dict("finetune", cfg)  # the config's own checks (e.g. lr > 0), before anything starts
    plan.files["finetune.json"] = json.dumps(cfg, indent=2)
    plan.commands.append(train_command("finetune", config=run / "finetune.json", run_dir=run))
    return plan


def _plan_pretrain(plan: JobPlan, inputs: JobInputs, stage: str) -> JobPlan:
    """Stage I on the slides' features (a features.txt list), or Stage II aligning them to an RNA or protein
    matrix whose sample ids are the slide names (a molecular.csv table); from the chosen CARE."""
    import json

    from care_core.train.config import STAGES, config_from_dict
    from care_core.train.jobs import train_command

    run = plan.run_dir
    names = set(inputs.slides)
    if inputs.features_dir is not None and inputs.features_dir.is_dir():
        names |= {p.stem for p in inputs.features_dir.glob("*.h5")}
    if len(names) < 2:
        raise InvalidInputError("pretraining needs slides: open them, list them under 'slide files' or 'slide folder', "
                                "or choose a features folder holding their .h5 files")
    names = sorted(names)
    features = _plan_features(plan, inputs, names)
    files = [features / f"{s}.h5" for s in names]
    hyper = {k: inputs.hyper[k] for k in ("epochs", "batch_size", "lr") if k in inputs.hyper}
    cfg = {"init": str(inputs.model or ""), "seed": inputs.seed, "log_every": 1,
           "checkpoint_every": PRETRAIN_CHECKPOINT_EVERY, **hyper}
    default = STAGES[stage]()
    if cfg.get("epochs", default.epochs) < default.warmup_epochs:  # a short run warms up for the paper's share of it
        cfg["warmup_epochs"] = default.warmup_epochs * cfg["epochs"] / default.epochs
    if stage == "1":
        plan.files["features.txt"] = "".join(f"{f}\n" for f in files)
        cfg["features"] = str(run / "features.txt")
    else:
        modality, matrix = inputs.hyper.get("modality", "rna"), inputs.hyper.get("molecular")
        if not matrix or not Path(matrix).is_file():
            raise InvalidInputError(f"Stage II needs the {modality} matrix file (samples x {'genes' if modality == 'rna' else 'proteins'}, "
                                    "sample ids = slide names)")
        plan.files["molecular.csv"] = "slide,features,sample_id\n" + "".join(f"{s},{f},{s}\n" for s, f in zip(names, files))
        cfg.update(table=str(run / "molecular.csv"), modality=modality, **{modality: str(matrix)})
    config_from_dict(stage, cfg)  # the config's own checks (e.g. warm-up within the epochs), before anything starts
    plan.files["pretrain.json"] = json.dumps(cfg, indent=2)
    plan.commands.append(train_command("pretrain", config=run / "pretrain.json", run_dir=run, stage=stage))
    return plan


def _plan_features(plan: JobPlan, inputs: JobInputs, names: list[str]) -> Path:
    """Where the features of ``names`` are: in the features folder, linked from the CARE widget's cache, or
    extracted first (a ``care extract`` command) on the checkpoint's grid; all checked against the checkpoint
    (existing files by their headers). Returns the folder."""
    from care_core.features import get_encoder_spec
    from care_core.features.importers import FeatureHeader, read_feature_header
    from care_core.model.checkpoint import check_features, read_checkpoint_meta

    spec = get_encoder_spec(inputs.encoder)
    meta = None if inputs.model is None else read_checkpoint_meta(inputs.model)
    mpp = (meta and meta.feature_mpp) or spec.mpp  # the checkpoint's grid, else what the encoder expects
    patch_px = (meta and meta.patch_px) or spec.patch_px
    features = inputs.features_dir or default_features_dir(inputs.encoder, mpp, patch_px)
    missing, present = [], []
    for s in names:
        if (features / f"{s}.h5").is_file():
            present.append(features / f"{s}.h5")
            continue
        slide = inputs.slides.get(s)
        if slide is None:
            missing.append(s)
            continue
        cached = cached_features(slide, inputs.encoder, mpp, patch_px)
        if cached is not None:
            plan.link[cached] = features / f"{s}.h5"
        else:
            plan.extract.append(slide)
    if missing:
        shown = ", ".join(missing[:10]) + (f" … ({len(missing)} in all)" if len(missing) > 10 else "")
        raise InvalidInputError(f"slide(s) {shown} have no features in {features} and no slide file: open them, add "
                                "them under 'slide files' or 'slide folder', or drop their labels")
    if meta is not None:
        headers = [read_feature_header(f) for f in present + list(plan.link)]
        if plan.extract:
            headers.append(FeatureHeader("features to extract", 0, spec.dim, spec.name, mpp, patch_px))
        for header in headers:
            check_features(meta, header)
    if plan.extract:
        plan.commands.append(["extract", *map(str, plan.extract), "--out", str(features), "--encoder", inputs.encoder,
                              "--target-mpp", f"{mpp:g}", "--patch-px", str(patch_px), "--events-json"])
    plan.record["features"] = str(features)
    return features


def layer_class(name: str) -> str:
    """The class a Shapes layer's name gives: napari's ' [n]' suffix of a repeated name dropped."""
    return re.sub(r" \[\d+\]$", "", name)


def annotations_from_layers(layers, slides: dict[str, object]) -> dict[str, list]:
    """{slide name: [Annotation]} from the viewer's Shapes layers: each shape's 'class' feature, else the layer's
    name, is its class; a layer belongs to the slide it was imported over (``care_source``), else to the only
    open slide. ``slides``: {name (file stem): slide Image layer}, which maps the shapes back to level-0 px."""
    from shapely.geometry import Polygon

    from care_core.regions.annotations import Annotation, polygonal

    out: dict[str, list] = {}
    for layer in layers:
        if layer._type_string != "shapes" or not len(layer.data) or layer.metadata.get("care_kind") not in (None, "annotations"):
            continue  # the CARE widget's own outlines (ROI, highlight) are not annotations
        source = layer.metadata.get("care_source")
        if source not in slides:
            if len(slides) != 1:
                raise InvalidInputError(f"annotation layer {layer.name!r}: which slide is it on? Keep one slide open, "
                                        "or import the annotations with the CARE widget over their slide")
            source = next(iter(slides))
        image = slides[source]
        classes = layer.features["class"].tolist() if "class" in layer.features else [""] * len(layer.data)
        for ring, shape_type, cls in zip(layer.data, layer.shape_type, classes):
            if shape_type not in ("polygon", "rectangle", "ellipse") or len(ring) < 3:
                continue  # lines, paths, points and degenerate polygons have no area
            level0 = np.asarray([image.world_to_data(layer.data_to_world(p))[-2:] for p in ring])  # (row, col) px
            geom = polygonal(Polygon(level0[:, ::-1] + 0.5))  # pixel centres -> corners (x, y), as the files hold
            if geom is not None:
                out.setdefault(source, []).append(Annotation(geom, classification=str(cls) or layer_class(layer.name)))
    return out
