"""Method benchmark (shared/METHOD_BENCHMARK.md): do CARE's regions, ROI and embeddings beat the trivial answers,
on held-out synthetic slides with ground truth (compartments and local structures)?

Held-out cohort: a `care synth --cohort` folder of another seed than training (default: the one
scripts/train_demo.py writes, ``build/demo-train/heldout``), with its labels/ and truth/. Models: an untrained
CARE of the same architecture as the checkpoints (seed 0), each stage of a train_demo run folder that exists
(stage1, stage2_rna, stage2_protein under --work), and any --model CKPT.

1. Partitions: squares, k-means + connected components and SLIC (compactness 1 and 0.1) at the mean region size
   of the last model, the best assignment CARE's rule allows, and each model: purity, share >= 90 % pure,
   regions, mean size; the model's purity as a ratio to the rule's best.
2. ROI: median attention sharpness (max beta x regions), how often the ROI holds the slide's local structure
   (the region with most structure patches) and is not simply the largest region, ROI content.
3. Embeddings with the paper's LR protocol (5 patient folds, validation log-loss) on the cohort's global, local,
   molecular and survival labels: slide embedding and ROI feature of each model, mean pooling, ABMIL; tumour
   share by ridge, leave-one-out R².
4. Retrieval slide -> RNA / protein with each Stage II run's encoders: top-1 / top-5 against chance.

Markdown tables on stdout, figures as JSON (--json), region maps as PNG (--png).

    python bench/bench_method.py [--work build/demo-train] [--heldout DIR] [--model CKPT ...] [--json F] [--png F]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"Stage I": "stage1", "Stage II RNA": "stage2_rna", "Stage II protein": "stage2_protein"}
TASKS = {  # label file -> (kind, metric reported)
    "dominant": ("global", "f1_weighted"), "tumour": ("global", "auroc"), "til": ("local", "auroc"),
    "tls": ("local", "auroc"), "til_signature": ("molecular", "auroc"), "tls_signature": ("molecular", "auroc"),
    "survival": ("survival", "c_index"),
}


def load_cohort(folder: Path) -> list[dict]:
    """One dict per held-out slide: id, features, per-patch truth, slide path."""
    from care_core.features import load_features
    from care_core.synth.truth import patch_truth

    out = []
    with open(folder / "cohort.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            pf = load_features(folder / row["features"])
            slide = folder / row["slide"]
            truth = patch_truth(pf.coords, pf.patch_size_level0, slide.with_name(f"{slide.stem}_mask.tif"))
            out.append({"id": Path(row["features"]).stem, "features": pf, "labels": truth.compartment,
                        "structure": truth.structure, "slide": slide, "sample_id": row["sample_id"]})
    return out


def models(work: Path, extra: list[Path]) -> dict:
    """{name: CARE}: untrained (the checkpoints' architecture), each stage found under `work`, each --model."""
    from care_core.model import CARE, load_checkpoint

    found = {name: work / sub / "care" for name, sub in STAGES.items() if (work / sub / "care.safetensors").is_file()}
    found.update({f"checkpoint {p.name}": p for p in extra})
    if not found:
        raise SystemExit(f"no stage run under {work} and no --model given")
    loaded = {name: load_checkpoint(p).eval() for name, p in found.items()}
    ref = next(iter(loaded.values()))
    untrained = CARE.from_seed(0, ref.config).eval()
    if ref.config.input_norm:  # the same input standardisation as the trained model: only the weights differ
        untrained.set_feature_statistics(ref.feature_mean, ref.feature_std)
    return {"untrained (same architecture)": untrained, **loaded}


def pooled_purity(parts: list[np.ndarray], cohort: list[dict]) -> dict:
    from care_core.synth.truth import region_purity

    offset, ids = 0, []
    for p in parts:
        ids.append(p + offset)
        offset += int(p.max()) + 1
    return region_purity(np.concatenate(ids), np.concatenate([c["labels"] for c in cohort])).as_dict()


def partitions(cohort: list[dict], encs: dict) -> dict:
    from care_core.evaluate.method import kmeans_regions, rule_best_regions, slic_regions, square_regions

    last = list(encs)[-1]
    k = 8
    rows = {"squares (k x k)": [square_regions(c["features"].grid_indices(), k) for c in cohort]}
    target = [len(e.patch_region) / e.n_regions for e in encs[last]]
    rows["k-means + components"] = [kmeans_regions(c["features"].features, c["features"].grid_indices(), t)
                                    for c, t in zip(cohort, target)]
    for comp in (1.0, 0.1):
        rows[f"SLIC, compactness {comp:g}"] = [slic_regions(c["features"].features, c["features"].grid_indices(), t,
                                                            compactness=comp) for c, t in zip(cohort, target)]
    rows["rule's best"] = [rule_best_regions(c["features"].grid_indices(), c["labels"], k=k) for c in cohort]
    for name, e in encs.items():
        rows[f"CARE, {name}"] = [x.patch_region for x in e]
    table = {name: pooled_purity(parts, cohort) for name, parts in rows.items()}
    best = table["rule's best"]["purity"]
    for v in table.values():
        v["ratio_to_rule_best"] = v["purity"] / best
    return table, rows


def roi_table(cohort: list[dict], encs: dict) -> dict:
    from care_core.evaluate.method import roi_report

    out = {}
    for name, e in encs.items():
        reps = [roi_report(x.patch_region, int(x.roi), x.beta, c["labels"], c["structure"]) for x, c in zip(e, cohort)]
        with_s = [r for r in reps if r.holds_structure is not None]
        hits = [r for r in with_s if r.holds_structure]
        out[name] = {
            "sharpness_median": float(np.median([r.sharpness for r in reps])),
            "slides_with_structure": len(with_s),
            "roi_holds_structure": len(hits) / max(len(with_s), 1),
            "hits_not_largest": float(np.mean([not r.is_largest for r in hits])) if hits else float("nan"),
            "roi_is_largest_all": float(np.mean([r.is_largest for r in reps])),
            "roi_structure_share": float(np.mean([r.structure_share for r in with_s])) if with_s else float("nan"),
            "slide_structure_share": float(np.mean([np.mean(c["structure"] > 0) for c in cohort
                                                    if (c["structure"] > 0).any()])) if with_s else float("nan"),
            "roi_tumour_share": float(np.mean([r.compartment_share.get(1, 0.0) for r in reps])),
        }
    return out


def label_tables(folder: Path) -> dict:
    from care_core.evaluate import read_labels

    out = {}
    for task in TASKS:
        try:
            out[task] = read_labels(folder / "labels" / f"{task}.csv")
        except ValueError as exc:  # e.g. one class only on a small cohort
            print(f"task {task} left out: {exc}")
    return out


def cross_validated(X: dict, table, folds, metric: str) -> float:
    from care_core.evaluate import iter_cross_validate

    protocol = "survival" if table.kind == "survival" else "lr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = list(iter_cross_validate(X, table, folds, protocol, input_kind="slide", name="bench"))
    return float(np.nanmean([r.metrics[metric] for r in results]))


def abmil_score(cohort_by_id: dict, table, folds, metric: str) -> float:
    from care_core.evaluate import ABMILClassifier, classification_metrics

    index = {c: i for i, c in enumerate(table.classes)}
    scores = []
    for k, fold in enumerate(folds):
        def y(ids):
            return np.array([index[c] for c in table.select(ids).label])

        def bag(ids):
            return [np.asarray(cohort_by_id[i]["features"].features, np.float32) for i in ids]

        clf = ABMILClassifier(n_classes=len(index), seed=k).fit(bag(fold.train), y(fold.train), bag(fold.val), y(fold.val))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores.append(classification_metrics(y(fold.test), clf.predict_proba(bag(fold.test)))[metric])
    return float(np.nanmean(scores))


def loo_r2(X: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out R² of a ridge regression (alpha chosen inside each training split)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15))).fit(X[keep], y[keep])
        pred[i] = model.predict(X[i:i + 1])[0]
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def embeddings(cohort: list[dict], encs: dict, folder: Path, abmil: bool) -> dict:
    from care_core.evaluate import make_splits

    by_id = {c["id"]: c for c in cohort}
    inputs = {"mean pooling": {c["id"]: c["features"].features.astype(np.float64).mean(0) for c in cohort}}
    for name, e in encs.items():
        inputs[f"slide embedding, {name}"] = {c["id"]: x.slide_embedding for c, x in zip(cohort, e)}
        inputs[f"ROI feature, {name}"] = {c["id"]: x.roi_embedding for c, x in zip(cohort, e)}
    with open(folder / "compartments.csv", newline="") as fh:
        tumour = {Path(r["slide"]).stem: float(r["tumour"]) for r in csv.DictReader(fh)}
    ids = [c["id"] for c in cohort]
    rows = {name: {"tumour share R² (LOO)": loo_r2(np.stack([X[i] for i in ids]), np.array([tumour[i] for i in ids]))}
            for name, X in inputs.items()}
    if abmil:
        rows["ABMIL"] = {}
    for task, table in label_tables(folder).items():
        kind, metric = TASKS[task]
        try:
            folds = make_splits(table, n_folds=5, seed=0)
        except ValueError as exc:
            print(f"task {task} left out: {exc}")
            continue
        col = f"{task} ({kind}, {metric})"
        for name, X in inputs.items():
            rows[name][col] = cross_validated(X, table, folds, metric)
        if abmil and table.kind != "survival":
            rows["ABMIL"][col] = abmil_score(by_id, table, folds, metric)
    return rows


def retrieval(run_dir: Path, cohort_dir: Path, modality: str) -> dict:
    """Held-out slide -> profile retrieval with a Stage II run's encoders: top-1 / top-5 against chance."""
    import torch

    from care_core.features import load_features
    from care_core.train.expression import load_molecular
    from care_core.train.trainer import load_run

    _, obj = load_run(run_dir)
    s = obj.student
    if modality == "rna":
        pairs = load_molecular(cohort_dir / "cohort.csv", rna=cohort_dir / "rna.h5ad", genes=list(s["mol"].genes)).rna
    else:
        pairs = load_molecular(cohort_dir / "cohort.csv", protein=cohort_dir / "protein.csv",
                               proteins=list(s["mol"].proteins)).protein
    files = sorted(pairs)
    with torch.no_grad():
        pfs = [load_features(f) for f in files]
        out = s["care"]([torch.from_numpy(pf.features.astype(np.float32)) for pf in pfs], [pf.grid_indices() for pf in pfs],
                        return_patch_tokens=False)
        a = s["slide_proj"](out.slide_embedding)
        b = s["mol_proj"](s["mol"](torch.from_numpy(np.stack([pairs[f] for f in files]))))
        rank = (a @ b.T).argsort(1, descending=True).argsort(1).diagonal().numpy()
    n = len(files)
    return {"n": n, "top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)), "chance_top1": 1 / n,
            "chance_top5": min(5, n) / n}


def plot(cohort: list[dict], parts: dict, encs: dict, path: Path, n_slides: int = 3) -> None:
    """Ground truth, structures, baselines and each model's regions (ROI outlined) for the first slides that have
    a local structure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [i for i, c in enumerate(cohort) if (c["structure"] > 0).any()][:n_slides] or [0]
    cols = ["truth", "squares (k x k)", "k-means + components", "SLIC, compactness 1", *[f"CARE, {n}" for n in encs]]
    fig, axes = plt.subplots(len(show), len(cols), figsize=(2.3 * len(cols), 2.0 * len(show)), squeeze=False)
    comp_colors = np.array([[1, 1, 1], [0.55, 0.2, 0.6], [0.95, 0.6, 0.7], [0.2, 0.2, 0.7], [1, 0.95, 0.7], [0.6, 0.6, 0.6]])
    rng = np.random.default_rng(3)
    palette = rng.uniform(0.2, 1.0, (4096, 3))
    for r, i in enumerate(show):
        c = cohort[i]
        g = c["features"].grid_indices() - c["features"].grid_indices().min(0)
        shape = tuple(g.max(0)[::-1] + 1)
        for col, name in enumerate(cols):
            img = np.ones(shape + (3,))
            ax = axes[r, col]
            if name == "truth":
                img[g[:, 1], g[:, 0]] = comp_colors[np.maximum(c["labels"], 0)]
                s = c["structure"] > 0
                img[g[s, 1], g[s, 0]] = [0.1, 0.8, 0.2]
            else:
                part = parts[name][i]
                img[g[:, 1], g[:, 0]] = palette[part % len(palette)]
                if name.startswith("CARE, "):
                    e = encs[name.removeprefix("CARE, ")][i]
                    roi = e.patch_region == e.roi
                    ax.scatter(g[roi, 0], g[roi, 1], s=3, c="k", marker="x", linewidths=0.5)
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("CARE, ", ""), fontsize=7)
    fig.suptitle("held-out slides: truth (structures green), partitions, CARE regions (ROI marked x)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_table(rows: dict, cols: list[str] | None = None, scale: dict | None = None) -> str:
    cols = cols or list(dict.fromkeys(k for v in rows.values() for k in v))
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, v in rows.items():
        cells = []
        for k in cols:
            x = v.get(k)
            cells.append("n/a" if x is None or (isinstance(x, float) and not np.isfinite(x))
                         else f"{x:.3f}" if isinstance(x, float) else str(x))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "demo-train", help="a scripts/train_demo.py work folder")
    ap.add_argument("--heldout", type=Path, default=None, help="held-out cohort folder (default WORK/heldout)")
    ap.add_argument("--model", type=Path, action="append", default=[], help="another CARE checkpoint to report")
    ap.add_argument("--no-abmil", action="store_true", help="skip the ABMIL rows (the slowest part)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--png", type=Path, default=None, help="write region maps here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    folder = args.heldout or args.work / "heldout"
    cohort = load_cohort(folder)
    nets = models(args.work, args.model)
    encs = {name: [m.encode(c["features"]) for c in cohort] for name, m in nets.items()}
    print(f"{len(cohort)} held-out slides ({folder}), {sum(len(c['labels']) for c in cohort)} patches; "
          f"models: {', '.join(nets)}\n")

    part_table, parts = partitions(cohort, encs)
    print("### Regions (pooled over slides)\n")
    print(fmt_table(part_table, ["purity", "share_pure90", "n_regions", "mean_size", "ratio_to_rule_best"]) + "\n")
    rois = roi_table(cohort, encs)
    print("### ROI and attention\n")
    print(fmt_table(rois) + "\n")
    emb = embeddings(cohort, encs, folder, abmil=not args.no_abmil)
    print("### Embeddings (LR protocol, 5 patient folds; tumour share: ridge, leave-one-out R²)\n")
    print(fmt_table(emb) + "\n")
    retr = {}
    for name, sub in STAGES.items():
        if name.startswith("Stage II") and (args.work / sub / "care.safetensors").is_file():
            retr[name] = retrieval(args.work / sub, folder, "rna" if "RNA" in name else "protein")
    if retr:
        print("### Retrieval, held-out slide -> its own profile\n")
        print(fmt_table(retr) + "\n")
    if args.png:
        plot(cohort, parts, encs, args.png)
    figures = {"heldout": str(folder.name), "n_slides": len(cohort), "regions": part_table, "roi": rois,
               "embeddings": emb, "retrieval": retr, "seconds": round(time.perf_counter() - t0)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    print(f"done in {figures['seconds']} s")


if __name__ == "__main__":
    main()
