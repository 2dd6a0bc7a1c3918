"""Synthetic benchmark of the evaluation protocols: a local, a global and a region task on synthetic slides.

Cohort: ``--slides`` synthetic H&E slides (``care_core.synth``, ``--size`` px square at 0.5 µm/px), stain-texture
features on 128-px patches (64 µm; the descriptor run at 128 px so a slide costs seconds), each slide cut into
overlapping crops of 20 x 20 patches (stride 8); a crop is one "slide" of the benchmark and its source slide is
its patient, so splits keep a slide's crops together. Ground truth comes from the compartment masks:

- local task: is there a small patch of necrosis in the crop (1 to 12 % of its patches) or none at all
  (crops with more necrosis are left out): a signal confined to one place;
- global task: the dominant compartment of the crop;
- region task: the compartment covering most of each CARE region's patches (``region_labels_from_mask``),
  a classifier on region embeddings (split by source slide), accuracy per class.

Inputs, all through the paper's logistic-regression protocol on the same 5 folds: mean pooling of patch
features, ABMIL on patch features, CARE slide embedding, CARE ROI feature, and CARE with fixed regions
(the same weights, ``fixed_regions=True``), for an untrained CARE (seed 0) and every ``--model`` checkpoint.

The cohort is cached (default ``$NAPARI_CARE_CACHE`` or ``~/.cache/napari-care``, ``bench-synthetic-tasks/``);
only missing slides are rendered. Results: markdown tables on stdout and ``results.json`` in the cache.

    python bench/bench_synthetic_tasks.py [--slides 30] [--size 4608] [--model CKPT ...] [--folds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

CROP, STRIDE, PATCH_PX = 20, 8, 128
NECROSIS, LOCAL_MAX = 5, 0.12


def cache_dir() -> Path:
    root = Path(os.environ.get("NAPARI_CARE_CACHE", Path.home() / ".cache" / "napari-care"))
    return root / "bench-synthetic-tasks"


def build_slides(folder: Path, n_slides: int, size: int) -> list[tuple[Path, Path]]:
    """(features .h5, mask .tif) per slide, rendering and extracting only the missing ones."""
    from care_core.features import extract_features
    from care_core.features.stain_texture import SPEC, StainTextureEncoder
    from care_core.synth import write_sample_slide
    from care_core.wsi import detect_tissue, open_slide, patch_grid

    encoder = StainTextureEncoder(dataclasses.replace(SPEC, input_px=PATCH_PX, patch_px=PATCH_PX))
    out = []
    for i in range(n_slides):
        h5, mask = folder / f"slide_{i:03d}.h5", folder / f"slide_{i:03d}_mask.tif"
        if not (h5.is_file() and mask.is_file()):
            t0 = time.perf_counter()
            sample = write_sample_slide(folder / f"slide_{i:03d}.svs", width_px=size, height_px=size, seed=1000 + i)
            with warnings.catch_warnings(), open_slide(sample.slide_path) as slide:
                warnings.simplefilter("ignore", UserWarning)  # 128-px patches for a 512-px descriptor: on purpose
                grid = patch_grid(slide, detect_tissue(slide), target_mpp=0.5, patch_px=PATCH_PX)
                extract_features(slide, grid, encoder, batch_size=64, num_workers=1).save(h5)
            assert sample.mask_path == mask  # the mask stays; the slide itself is not needed again
            sample.slide_path.unlink()
            print(f"slide {i}: {time.perf_counter() - t0:.1f} s", flush=True)
        out.append((h5, mask))
    return out


def crops(slides) -> list[dict]:
    """Crops of CROP x CROP patches: features, the per-patch compartment, source slide."""
    import tifffile

    from care_core.evaluate import patch_labels_from_mask
    from care_core.features import PatchFeatures, load_features
    from care_core.model.encoding import SlideEncoding
    from care_core.synth import COMPARTMENTS

    names = {k: v for k, v in COMPARTMENTS.items()}
    out = []
    for s, (h5, mask_path) in enumerate(slides):
        pf, mask = load_features(h5), tifffile.imread(mask_path)
        probe = SlideEncoding(np.zeros(1, np.float32), coords=pf.coords, patch_size_level0=pf.patch_size_level0)
        patch_class = patch_labels_from_mask(probe, mask, 16, names)
        grid = pf.grid_indices()
        for y0 in range(0, int(grid[:, 1].max()) - CROP + 2, STRIDE):
            for x0 in range(0, int(grid[:, 0].max()) - CROP + 2, STRIDE):
                keep = ((grid[:, 0] >= x0) & (grid[:, 0] < x0 + CROP) & (grid[:, 1] >= y0) & (grid[:, 1] < y0 + CROP)
                        & np.array([c is not None for c in patch_class]))
                if keep.sum() < 0.5 * CROP * CROP:
                    continue
                sub = PatchFeatures(pf.features[keep], pf.coords[keep], pf.patch_size_level0, mpp=pf.mpp,
                                    patch_px=pf.patch_px, encoder=pf.encoder)
                out.append({"id": f"s{s:03d}_{x0}_{y0}", "patient": f"s{s:03d}", "features": sub,
                            "classes": patch_class[keep], "mask": mask})
    return out


def tasks(items: list[dict]) -> dict[str, dict[str, str]]:
    """{task: {crop id: label}} for the local and the global task."""
    local, glob = {}, {}
    for it in items:
        cls = it["classes"]
        frac = np.mean(cls == "necrosis")
        if frac == 0:
            local[it["id"]] = "absent"
        elif frac <= LOCAL_MAX:
            local[it["id"]] = "present"
        names, counts = np.unique(cls.astype(str), return_counts=True)
        glob[it["id"]] = str(names[np.argmax(counts)])
    return {"local (small necrosis present)": local, "global (dominant compartment)": glob}


def label_table(labels: dict[str, str], patient: dict[str, str], min_patients: int):
    """A LabelTable, leaving out classes held by fewer than ``min_patients`` source slides."""
    from care_core.evaluate import LabelTable

    by_class: dict[str, set] = {}
    for i, c in labels.items():
        by_class.setdefault(c, set()).add(patient[i])
    ok = {c for c, p in by_class.items() if len(p) >= min_patients}
    ids = [i for i in labels if labels[i] in ok]
    obj = lambda a: np.array(a, dtype=object)  # noqa: E731
    return LabelTable(obj(ids), obj([patient[i] for i in ids]), label=obj([labels[i] for i in ids]))


def cross_validate(X: dict, table, folds) -> tuple[dict, np.ndarray, np.ndarray]:
    """LR protocol over the folds: (summary, pooled test truth, pooled test predictions); a fold that cannot
    be fitted (one class in its training split) makes the row empty instead of stopping the benchmark."""
    from care_core.evaluate import iter_cross_validate, summarise

    try:
        results = list(iter_cross_validate(X, table, folds, "lr", input_kind="slide", name="bench"))
    except ValueError as exc:
        print(f"  row left empty: {exc}")
        return {}, np.zeros(0, int), np.zeros(0, int)
    index = {c: i for i, c in enumerate(table.classes)}
    truth = np.concatenate([[index[c] for c in table.select(r.test_ids).label] for r in results])
    pred = np.concatenate([r.test_scores.argmax(1) for r in results])
    return summarise([r.metrics for r in results]), truth, pred


def abmil(items_by_id: dict, table, folds) -> dict:
    from care_core.evaluate import ABMILClassifier, classification_metrics, summarise

    index = {c: i for i, c in enumerate(table.classes)}
    per_fold = []
    for k, fold in enumerate(folds):
        if len(set(table.select(fold.train).label)) < 2:
            print("  ABMIL row left empty: one class in a training split")
            return {}
        y = lambda ids: np.array([index[c] for c in table.select(ids).label])  # noqa: E731
        bag = lambda ids: [np.asarray(items_by_id[i]["features"].features, np.float32) for i in ids]  # noqa: E731
        clf = ABMILClassifier(n_classes=len(index), seed=k).fit(bag(fold.train), y(fold.train), bag(fold.val), y(fold.val))
        per_fold.append(classification_metrics(y(fold.test), clf.predict_proba(bag(fold.test))))
    return summarise(per_fold)


def encode_all(model, items: list[dict]) -> dict:
    return {it["id"]: model.encode(it["features"]) for it in items}


def models(paths: list[str], input_dim: int) -> dict:
    """{name: (adaptive CARE, fixed-region CARE with the same weights)}."""
    from care_core.model import CARE, load_checkpoint

    out = {}
    loaded = [("untrained (seed 0)", CARE.from_seed(0, input_dim=input_dim))]
    loaded += [(f"checkpoint {Path(p).name}", load_checkpoint(p)) for p in paths]
    for name, care in loaded:
        fixed = CARE({**care.config.to_dict(), "fixed_regions": True})
        fixed.load_state_dict(care.state_dict())
        out[name] = (care.eval(), fixed.eval())
    return out


def main() -> None:
    import torch

    from care_core._atomic import atomic_path
    from care_core.evaluate import make_splits, markdown_table, region_labels_from_mask
    from care_core.synth import COMPARTMENTS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=30)
    ap.add_argument("--size", type=int, default=4608, help="slide side in px at 0.5 µm/px")
    ap.add_argument("--model", action="append", default=[], help="CARE checkpoint(s) to report beside the untrained one")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # measured here: CARE on one thread 0.83 s per crop, on two busy cores 2.2 s
    folder = args.cache or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    items = crops(build_slides(folder, args.slides, args.size))
    by_id = {it["id"]: it for it in items}
    patient = {it["id"]: it["patient"] for it in items}
    print(f"{len(items)} crops of {CROP}x{CROP} patches from {args.slides} slides ({time.perf_counter() - t0:.0f} s)")
    means = {it["id"]: it["features"].features.astype(np.float64).mean(0) for it in items}
    variants = models(args.model, items[0]["features"].dim)
    encodings = {}
    for name, (adaptive, fixed) in variants.items():
        t1 = time.perf_counter()
        encodings[name] = (encode_all(adaptive, items), encode_all(fixed, items))
        print(f"encoded with {name}: {time.perf_counter() - t1:.0f} s", flush=True)

    report: dict = {"crops": len(items), "slides": args.slides, "tasks": {}}
    for task, labels in tasks(items).items():
        table = label_table(labels, patient, args.folds)
        if len(table.classes) < 2:
            print(f"\n### {task}: skipped, fewer than two classes held by {args.folds}+ source slides")
            continue
        folds = make_splits(table, n_folds=args.folds, seed=0)
        counts = {str(c): int(np.sum(table.label == c)) for c in table.classes}
        rows = {"mean pooling": cross_validate(means, table, folds)[0], "ABMIL": abmil(by_id, table, folds)}
        for name, (adaptive, fixed) in encodings.items():
            rows[f"CARE slide, {name}"] = cross_validate({i: e.slide_embedding for i, e in adaptive.items()}, table, folds)[0]
            rows[f"CARE ROI, {name}"] = cross_validate({i: e.roi_embedding for i, e in adaptive.items()}, table, folds)[0]
            rows[f"CARE fixed regions, {name}"] = cross_validate({i: e.slide_embedding for i, e in fixed.items()},
                                                                 table, folds)[0]
            rows[f"CARE fixed-region ROI, {name}"] = cross_validate({i: e.roi_embedding for i, e in fixed.items()},
                                                                    table, folds)[0]
        print(f"\n### {task}: {len(table)} crops, classes {counts}\n")
        print(markdown_table(rows))
        report["tasks"][task] = {"classes": counts, "rows": rows}

    names = dict(COMPARTMENTS)
    region_rows, per_class = {}, {}
    for name, (adaptive, fixed) in encodings.items():
        for kind, encs in (("adaptive", adaptive), ("fixed", fixed)):
            labels, X, Xmean = {}, {}, {}
            for cid, enc in encs.items():
                f = by_id[cid]["features"].features.astype(np.float64)
                for r, c in enumerate(region_labels_from_mask(enc, by_id[cid]["mask"], 16, names)):
                    if c is not None:
                        rid = f"{cid}#{r}"
                        labels[rid], X[rid] = c, enc.region_embeddings[r]
                        Xmean[rid] = f[enc.patch_region == r].mean(0)
            rpatient = {rid: patient[rid.split("#")[0]] for rid in labels}
            table = label_table(labels, rpatient, args.folds)
            folds = make_splits(table, n_folds=args.folds, seed=0)
            for inp, data in ((f"CARE region embedding, {kind} regions", X), (f"region mean of patch features, {kind} regions", Xmean)):
                summary, truth, pred = cross_validate(data, table, folds)
                row = f"{inp}, {name}"
                region_rows[row] = summary
                per_class[row] = {c: {"accuracy": float(np.mean(pred[truth == j] == j)), "n": int(np.sum(truth == j))}
                                  for j, c in enumerate(table.classes)}
    print("\n### region task (compartment of each region, split by source slide)\n")
    print(markdown_table(region_rows))
    classes = sorted({c for v in per_class.values() for c in v})
    print("| accuracy per class | " + " | ".join(f"{c} (n)" for c in classes) + " |")
    print("|---" * (len(classes) + 1) + "|")
    for row, v in per_class.items():
        print(f"| {row} | " + " | ".join(f"{100 * v[c]['accuracy']:.1f} ({v[c]['n']})" if c in v else "n/a"
                                          for c in classes) + " |")
    report["region_task"] = {"rows": region_rows, "per_class": per_class}
    with atomic_path(folder / "results.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nresults: {folder / 'results.json'} (total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
