"""``care evaluate``: a labels table + feature files (+ a CARE model) -> cross-validated results and heads.

Everything is checked and computed before anything is written; then, in ``out_dir``: ``results.json``,
``results.md`` (mean ± sd over folds), ``test_predictions.csv`` (each test slide's scores and fold),
``heads/<name>_fold<k>.safetensors/.json``, with ``final_head`` ``heads/<name>_all.safetensors/.json`` (one head
fitted on every labelled sample) and, when the folds were made here, ``splits/splits_<k>.csv`` (the CARE
authors' layout; pass the folder back with ``splits=`` to reuse them).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from care_core._atomic import atomic_path
from care_core.errors import InvalidInputError
from care_core.evaluate.crossval import FoldResult, fit_head, iter_cross_validate, score, summary_of
from care_core.evaluate.heads import Head
from care_core.evaluate.inputs import EVALUATE_PROTOCOLS, as_paths, check_evaluate_inputs, check_inputs, check_task
from care_core.evaluate.labels import LabelTable
from care_core.evaluate.metrics import markdown_table
from care_core.evaluate.splits import Fold, make_splits, save_splits

__all__ = ["EvaluateEvent", "EVALUATE_PROTOCOLS", "check_evaluate_inputs", "check_task", "iter_evaluate", "evaluate",
           "region_table", "write_results"]


@dataclass(frozen=True)
class EvaluateEvent:
    """Progress: stage "encode" (done 0 once the inputs are checked, then per slide) or "fold" (per fold, in
    fold order, with its metrics); done of total."""

    stage: str
    done: int
    total: int
    message: str = ""
    metrics: dict | None = None


def region_table(cohort, annotations: Mapping[str, Sequence], *, min_fraction: float = 0.5) -> tuple[LabelTable, dict]:
    """Regions of annotated slides as a labels table (ids ``<slide>#<region>``, patient = the slide's patient)
    and {id: region embedding}. Regions without a class are left out."""
    from care_core.evaluate.region_targets import region_labels_from_polygons

    ids, patients, names, X = [], [], [], {}
    patient_of = dict(zip(cohort.labels.slides.tolist(), cohort.labels.patients.tolist()))
    for slide, polys in annotations.items():
        enc = cohort.encodings[slide]
        for r, name in enumerate(region_labels_from_polygons(enc, polys, min_fraction=min_fraction)):
            if name is not None:
                rid = f"{slide}#{r}"
                ids.append(rid)
                patients.append(patient_of[slide])
                names.append(name)
                X[rid] = enc.region_embeddings[r]
    if len(set(names)) < 2:
        raise InvalidInputError(f"the annotations give {len(ids)} labelled region(s) of {len(set(names))} class(es); a "
                                "region classifier needs at least two classes: annotate more areas")
    obj = lambda a: np.array(a, dtype=object)  # noqa: E731
    return LabelTable(obj(ids), obj(patients), label=obj(names), source=cohort.labels.source), X


def _region_splits(table: LabelTable, *, n_folds: int, val: bool, seed: int) -> tuple[list[Fold], str]:
    """Folds of a region classifier: by patient when every class is annotated on at least ``n_folds`` patients;
    otherwise (a few annotated slides, the usual case in the window) region by region, with a warning that
    neighbouring regions of one slide then sit in train and test, so the estimate is optimistic.
    Returns (folds, "patient" | "region")."""
    import dataclasses
    import warnings

    try:
        return make_splits(table, n_folds=n_folds, val=val, seed=seed), "patient"
    except InvalidInputError as exc:
        by_region = dataclasses.replace(table, patients=table.slides)
        folds = make_splits(by_region, n_folds=n_folds, val=val, seed=seed)  # too few regions: its own message
        warnings.warn(f"{str(exc).split(';')[0]}: the region classifier's folds split regions, not patients, so "
                      "regions of one slide are in training and test (an optimistic estimate); annotate more slides "
                      "for a by-patient one", stacklevel=2)
        return folds, "region"


def _region_folds(folds: list[Fold], table: LabelTable) -> list[Fold]:
    slide_of = {rid: rid.rsplit("#", 1)[0] for rid in table.slides.tolist()}

    def pick(slides):
        keep = set(slides)
        return tuple(r for r, s in slide_of.items() if s in keep)

    return [Fold(pick(f.train), pick(f.val), pick(f.test)) for f in folds]


def _abmil_folds(cohort, folds: list[Fold], *, name: str) -> Iterator[FoldResult]:
    from care_core.evaluate.abmil import ABMILClassifier
    from care_core.features import load_features

    labels, classes = cohort.labels, cohort.labels.classes
    if labels.kind != "classification":
        raise InvalidInputError("protocol 'abmil' is a classifier; give a labels table with a 'label' column")
    bags = {s: np.asarray(load_features(p).features, dtype=np.float32) for s, p in cohort.paths.items()}
    idx = {c: i for i, c in enumerate(classes)}
    for k, fold in enumerate(folds):
        y = lambda ids: np.array([idx[c] for c in labels.select(ids).label]) if ids else None  # noqa: E731
        clf = ABMILClassifier(n_classes=len(classes), seed=k).fit(
            [bags[s] for s in fold.train], y(fold.train), [bags[s] for s in fold.val] or None, y(fold.val))
        scores = clf.predict_proba([bags[s] for s in fold.test])
        metrics = score(labels.select(fold.test), scores, classes)
        # a baseline: its metrics are reported, no head is saved (heads are probes on embeddings)
        yield FoldResult(k, metrics, {"best_epoch": clf.best_epoch_, "epochs": clf.n_epochs_}, len(fold.train),
                         len(fold.val), len(fold.test), None, list(fold.test), scores)


def _finetune_folds(cohort, folds: list[Fold], model, *, labels, input: str, out_dir, seed: int,
                    overrides: Mapping | None, name: str) -> Iterator[FoldResult]:
    """The paper's fine-tuning per fold through the trainer (``care_core.train``, stage ``finetune``): CARE
    from ``model`` + a linear (or Cox) head, early stopping on the fold's validation split, then the fold's
    test slides scored with the best-on-validation CARE and head. Runs go to ``<out_dir>/finetune/fold<k>``."""
    from care_core.evaluate.heads import load_head
    from care_core.features import load_features
    from care_core.model import load_checkpoint, save_checkpoint
    from care_core.train.config import config_from_dict
    from care_core.train.trainer import train

    work = Path(out_dir) / "finetune"
    meta = getattr(model, "checkpoint_meta", None)
    init = work / "init"
    save_checkpoint(model, init, encoder=cohort.encoder, feature_mpp=meta.feature_mpp if meta else None,
                    patch_px=meta.patch_px if meta else None)
    save_splits(folds, work / "splits")
    listing = work / "features.txt"
    with atomic_path(listing) as tmp:
        tmp.write_text("".join(f"{Path(p).resolve()}\n" for p in cohort.paths.values()))
    table = cohort.labels
    for k, fold in enumerate(folds):  # every fold has validation slides (checked first)
        cfg = config_from_dict("finetune", {**dict(overrides or {}), "labels": str(labels), "features": str(listing),
                                            "splits": str(work / "splits"), "fold": k, "init": str(init), "input": input,
                                            "seed": seed})
        run = work / f"fold{k}"
        for _ in train(cfg, run, resume=(run / "config.json").exists()):
            pass
        care, head = load_checkpoint(run / "care"), load_head(run / "head")
        scores = np.stack([head.predict(care.encode(load_features(cohort.paths[s]))).slide_proba for s in fold.test])
        scores = scores.astype(np.float64)
        metrics = score(table.select(fold.test), scores, table.classes)
        head.name, head.metrics = f"{name}_fold{k}", {"fold": k, **metrics, "validation": dict(head.metrics)}
        yield FoldResult(k, metrics, {"best_epoch": head.metrics["validation"].get("best_epoch")}, len(fold.train),
                         len(fold.val), len(fold.test), head, list(fold.test), scores)


def _final_probe_kw(protocol: str, results: list[FoldResult]) -> tuple[dict, str]:
    """(probe keywords, how they were chosen) for a head fitted on every sample, from the folds' choices.

    With validation splits: lr and survival take the median of the folds' C / penalizer (with an even number of
    folds, the stronger penalty of the middle two); knn the (k, weights) chosen most often (ties: the earliest
    fold's). Without: the protocol's no-validation default, as on the folds."""
    chosen = [r.params for r in results if r.n_val]
    if not chosen:
        return {}, "the no-validation default"
    if protocol == "knn":
        (k, weights), _ = Counter((p["k"], p["weights"]) for p in chosen).most_common(1)[0]
        return {"no_val_k": k, "no_val_weights": weights}, f"the most frequent choice of {len(chosen)} folds"
    key, kw, strongest_first = (("penalizer", "no_val_penalizer", True) if protocol == "survival"
                                else ("C", "no_val_C", False))  # a small C is a strong penalty
    value = sorted((p[key] for p in chosen), reverse=strongest_first)[(len(chosen) - 1) // 2]
    return {kw: value}, f"the median choice of {len(chosen)} folds"


def _final_head(protocol: str, X: Mapping[str, np.ndarray], table: LabelTable, results: list[FoldResult], *, name: str,
                input_kind: str, cv: dict[str, float]) -> Head:
    """The ``protocol`` head fitted on every sample of ``table`` (ids -> ``X``) with the folds' hyper-parameters;
    its metrics are the cross-validated means ``cv`` of the same protocol, which estimate how good it is."""
    kw, chosen_by = _final_probe_kw(protocol, results)
    head = fit_head(protocol, np.stack([X[s] for s in table.slides.tolist()]), table, None, None, name=name,
                    input_kind=input_kind, classes=table.classes, probe_kw=kw)
    head.metrics = {"cv": cv, "n_samples": len(table), "hyperparameters": {**head.params, "chosen_by": chosen_by}}
    return head


def iter_evaluate(labels: str | os.PathLike, features: str | os.PathLike | Sequence[str | os.PathLike], *, model=None,
                  protocol: str = "lr", input: str = "slide", out_dir: str | os.PathLike,
                  splits: str | os.PathLike | None = None, n_folds: int = 5, val: bool = True, seed: int = 0,
                  annotations: str | os.PathLike | Mapping[str, Sequence] | None = None,
                  finetune: Mapping | str | os.PathLike | None = None, final_head: bool = False) -> Iterator[EvaluateEvent]:
    """Generator form of ``evaluate``; yields EvaluateEvent and returns the results dict.

    labels: the labels table file. features: a folder of .h5 files, one file, or a list of files / folders.
    model: a CARE checkpoint path or a CARE (None for ``input="mean"`` / ``protocol="abmil"``). input: "slide", "roi" or "mean"
    (with ``annotations``: ignored, the inputs are region embeddings). annotations: a folder of
    ``<slide>.geojson`` (QuPath) / ``.xml`` (ASAP) files or {slide: [(polygon, class), ...]}: trains a region
    classifier. splits: a folder of split CSVs to reuse (otherwise made by patient, ``n_folds``, ``seed``).
    protocol "finetune": fine-tunes ``model`` per fold through the trainer; ``finetune`` (a config file or a
    mapping) overrides its config (``care_core.train.config.FinetuneConfig``: epochs, lr, patience, ...; the
    paper's values by default).
    final_head: after the folds, also fit the protocol's head on every labelled sample (lr, knn, survival and
    region classifiers; hyper-parameters from the folds' choices) and save it as ``heads/<name>_all``.
    Every input is checked first (``check_evaluate_inputs``: annotation files and fine-tuning overrides too), before
    any slide is encoded or anything is written.
    """
    from care_core._atomic import check_output_dir, folder_lock
    from care_core.evaluate.cohort import iter_load_cohort
    from care_core.model.checkpoint import load_checkpoint

    if input not in ("slide", "roi", "mean"):
        raise InvalidInputError(f"input={input!r} is not one of ('slide', 'roi', 'mean')")
    if final_head and protocol in ("abmil", "finetune"):
        raise InvalidInputError(f"--final-head is for lr, knn, survival and region classifiers; protocol {protocol!r} "
                                "has no head to fit on all samples: drop --final-head or use one of those protocols")
    region_task = annotations is not None
    if (input != "mean" or region_task) and protocol != "abmil" and model is None:
        raise InvalidInputError(f"input {'region' if region_task else input!r} needs a CARE model; pass --model CKPT or --untrained SEED")
    if protocol == "finetune" and (region_task or input == "mean"):
        raise InvalidInputError("protocol 'finetune' fine-tunes a CARE on slide labels: give --model (or --untrained) "
                                "and --input slide or roi, without --annotations")
    uses_model = region_task or (input != "mean" and protocol != "abmil")
    checked = check_inputs(labels, features, protocol=protocol, n_folds=n_folds, val=val, annotations=annotations,
                           model=model if uses_model else None, splits=splits, seed=seed, finetune=finetune, input=input)
    table, folds = checked.table, checked.folds
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model)
    check_output_dir(out_dir)  # a folder that cannot be written fails before the encoding
    with folder_lock(out_dir, what="care evaluate"):  # one evaluation writes into a folder at a time
        need_model = model if uses_model and protocol != "finetune" else None
        yield EvaluateEvent("encode", 0, len(table), "inputs checked")
        gen = iter_load_cohort(table, as_paths(features), need_model)
        while True:
            try:
                done, total, slide = next(gen)
            except StopIteration as stop:
                cohort = stop.value
                break
            yield EvaluateEvent("encode", done, total, slide)

        kind = "region" if region_task else input
        name = f"{Path(labels).stem}_{'region' if region_task else protocol}_{kind}"
        if region_task:
            eval_table, X = region_table(cohort, checked.annotations)
            if folds is not None:
                folds, grouping = _region_folds(folds, eval_table), "patient"
            else:
                folds, grouping = _region_splits(eval_table, n_folds=n_folds, val=val, seed=seed)
            made_splits = splits is None
            fold_iter = iter_cross_validate(X, eval_table, folds, "knn" if protocol == "knn" else "lr",
                                            input_kind="region", name=name)
        else:
            grouping = "patient"
            eval_table, made_splits = table, splits is None
            if protocol == "abmil":
                fold_iter = _abmil_folds(cohort, folds, name=name)
            elif protocol == "finetune":
                fold_iter = _finetune_folds(cohort, folds, model, labels=labels, input=input, out_dir=out_dir, seed=seed,
                                            overrides=checked.finetune, name=name)
            else:
                fold_iter = iter_cross_validate(cohort.inputs(input), table, folds, protocol, input_kind=input, name=name)
        def stamp(head: Head) -> None:  # what the head's inputs came from
            head.model_sha256 = "" if kind == "mean" else cohort.model_sha256
            head.encoder = cohort.encoder
            head.extra = {"labels": str(labels), "task": eval_table.kind}

        results: list[FoldResult] = []
        for res in fold_iter:
            if res.head is not None and protocol != "finetune":  # a fine-tuned head names its own fine-tuned CARE
                stamp(res.head)
            results.append(res)
            yield EvaluateEvent("fold", res.fold + 1, len(folds), f"fold {res.fold}", res.metrics)
        summary = {
            "protocol": protocol, "input": kind, "task": eval_table.kind, "labels": str(labels),
            "classes": list(eval_table.classes), "n_samples": len(eval_table), "n_folds": len(folds), "folds_by": grouping,
            "model_sha256": "" if kind == "mean" else cohort.model_sha256, "encoder": cohort.encoder,
            "summary": summary_of(results),
            "folds": [{"fold": r.fold, "metrics": r.metrics, "params": r.params, "n_train": r.n_train, "n_val": r.n_val,
                       "n_test": r.n_test} for r in results],
        }
        final = None
        if final_head:
            cv = {k: v["mean"] for k, v in summary["summary"].items()}
            final = _final_head(protocol, X if region_task else cohort.inputs(input), eval_table, results,
                                name=f"{name}_all", input_kind=kind, cv=cv)
            stamp(final)
            summary["final_head"] = str(Path(out_dir) / "heads" / f"{final.name}.safetensors")
        summary["written"] = [str(p) for p in write_results(out_dir, summary, results, eval_table,
                                                            folds if made_splits else None, final_head=final)]
        return summary


def write_results(out_dir: str | os.PathLike, summary: dict, results: list[FoldResult], table: LabelTable,
                  folds: list[Fold] | None, *, final_head: Head | None = None) -> list[Path]:
    """Write results.json, results.md, test_predictions.csv, the heads (the folds' and ``final_head``) and (when
    given) the splits."""
    out = Path(out_dir)
    written: list[Path] = []
    if folds is not None:
        written += save_splits(folds, out / "splits")
    for head in [r.head for r in results] + [final_head]:
        if head is not None:
            written.append(head.save(out / "heads" / head.name))
    cols = ["risk"] if table.kind == "survival" else [f"p({c})" for c in table.classes]
    truth = {s: (f"{t:g}/{e}" if table.kind == "survival" else l) for s, l, t, e in zip(
        table.slides.tolist(), table.label if table.label is not None else [None] * len(table),
        table.time if table.time is not None else [0] * len(table), table.event if table.event is not None else [0] * len(table))}
    with atomic_path(out / "test_predictions.csv") as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # quotes a name holding a comma, a quote or a line break
        writer.writerow(["sample", "fold", "truth", *cols])
        for r in results:
            for sid, row in zip(r.test_ids, r.test_scores):
                writer.writerow([sid, r.fold, truth[sid], *(f"{v:.6g}" for v in row)])
    written.append(out / "test_predictions.csv")
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in summary.items() if k != "written"}, indent=2))
    written.append(out / "results.json")
    title = f"{summary['protocol']} on {summary['input']} ({summary['task']}, {summary['n_samples']} samples, {summary['n_folds']} folds)"
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(f"# {title}\n\n" + markdown_table({f"{summary['protocol']} / {summary['input']}": summary["summary"]},
                                                          n_folds=summary["n_folds"]))
    written.append(out / "results.md")
    return written


def evaluate(labels, features, **kwargs) -> dict:
    """Run ``iter_evaluate`` to the end and return its results dict (see there for the arguments)."""
    gen = iter_evaluate(labels, features, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
