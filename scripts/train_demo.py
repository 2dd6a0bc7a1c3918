"""Train the shipped demo CARE checkpoint on synthetic slides, on a CPU, and measure what it learned.

    python scripts/train_demo.py [--work build/demo-train] [--out care_core/model/weights/care_demo]

1. Synthetic cohorts (care_core.synth): training slides (cohort seed 0) and held-out slides (seed 1,
   never seen in training), with stain-texture features and RNA / protein profiles.
2. Stage I (iBOT) -> Stage II RNA -> Stage II protein, each run starting from the one before, with a
   narrow CARE (embed_dim 128) so that the whole job fits a 2-core CPU in under 30 minutes.
3. On the held-out slides: region purity against the ground-truth compartments for the fixed k×k squares,
   the random init, and each stage; slide->RNA and slide->protein retrieval against chance; loss curves
   and region maps as PNG (docs/images/), figures as JSON (docs/demo_checkpoint.json).
4. The final CARE is written to --out (.safetensors + .json, with the figures and a model card in the
   JSON's ``extra``) and a model card beside it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(embed_dim=128, heads=4, spf_dim=64, mlp_ratio=2.0, input_norm=True)  # released structure (k=8, depth 2+2), narrower


def stage1_config(features: Path, epochs: int) -> dict:
    return {
        "features": str(features), "batch_size": 16, "epochs": epochs, "lr": 5e-4, "min_lr": 1e-5, "warmup_epochs": max(1, epochs // 10),
        "weight_decay": 0.04, "weight_decay_end": 0.2, "checkpoint_every": 50, "log_every": 1, "model": dict(MODEL),
        "subwsi": {"max_patches": 120, "min_patches": 24},  # small slides: several sub-WSIs each
        "views": {"n_local": 4, "global_size": [8, 12], "local_size": [4, 6], "global_min_patches": 30, "local_min_patches": 8},
        "out_dim": 256, "patch_out_dim": 256, "head_hidden": 256, "head_bottleneck": 64,
        "warmup_teacher_temp_epochs": max(1, epochs // 3), "momentum_teacher": 0.99,
    }


def stage2_config(cohort: Path, init: Path, modality: str, epochs: int) -> dict:
    return {
        "table": str(cohort / "cohort.csv"), "rna": str(cohort / "rna.h5ad"), "protein": str(cohort / "protein.csv"),
        "modality": modality, "init": str(init), "batch_size": 8, "epochs": epochs, "lr": 3e-4, "min_lr": 1e-5,
        "warmup_epochs": 2, "checkpoint_every": 50, "log_every": 1, "mol_dim": 64, "mol_depth": 1, "mol_heads": 4, "proj_dim": 64,
    }


def run(stage: str, cfg: dict, run_dir: Path) -> Path:
    from care_core.train.config import config_from_dict
    from care_core.train.trainer import train

    if (run_dir / "care.safetensors").exists():
        print(f"{run_dir}: done before, reused")
        return run_dir / "care"
    resume = (run_dir / "config.json").exists()
    t0 = time.perf_counter()
    for ev in train(config_from_dict(stage, cfg), run_dir, resume=resume):
        if ev.kind == "step" and (ev.step % 20 == 0 or ev.step == ev.total_steps):
            print(f"  stage {stage} step {ev.step}/{ev.total_steps} loss {ev.metrics['loss']:.4f} "
                  f"({ev.samples_per_s:.1f} samples/s, eta {ev.eta_s or 0:.0f} s)", flush=True)
    print(f"{run_dir}: {time.perf_counter() - t0:.0f} s")
    return run_dir / "care"


def heldout_truth(cohort: Path) -> list[tuple]:
    """(PatchFeatures, per-patch compartment, slide path) of every held-out slide."""
    import csv

    from care_core.features import load_features
    from care_core.synth.truth import patch_compartments, read_mask

    out = []
    with open(cohort / "cohort.csv") as fh:
        for row in csv.DictReader(fh):
            pf = load_features(cohort / row["features"])
            slide = cohort / "slides" / f"{Path(row['features']).stem}.svs"
            mask, ds = read_mask(slide.with_name(f"{slide.stem}_mask.tif"))
            out.append((pf, patch_compartments(pf.coords, pf.patch_size_level0, mask, ds), slide, row["sample_id"]))
    return out


def purity_of(model, truth) -> tuple[dict, list]:
    """Purity of ``model``'s regions over all held-out slides, and each slide's SlideEncoding."""
    from care_core.synth.truth import left_own_square, region_purity

    encs = [model.encode(pf) for pf, *_ in truth]
    labels = np.concatenate([lab for _, lab, *_ in truth])
    offset, regions = 0, []
    for e in encs:  # one id space over all slides
        regions.append(e.patch_region + offset)
        offset += e.n_regions
    p = region_purity(np.concatenate(regions), labels).as_dict()
    n = np.array([len(e.patch_region) for e in encs])
    p["left_own_square"] = float(np.average([left_own_square(e) for e in encs], weights=n))
    return p, encs


def fixed_squares(truth, k: int) -> dict:
    from care_core.synth.truth import region_purity

    labels = np.concatenate([lab for _, lab, *_ in truth])
    offset, regions = 0, []
    for pf, *_ in truth:
        g = pf.grid_indices() - pf.grid_indices().min(0)
        sq = np.unique((g // k) @ np.array([1, 1 << 20]), return_inverse=True)[1].reshape(-1)
        regions.append(sq + offset)
        offset += sq.max() + 1
    return {**region_purity(np.concatenate(regions), labels).as_dict(), "left_own_square": 0.0}


def retrieval(run_dir: Path, cohort: Path, modality: str) -> dict:
    """Held-out slide -> profile retrieval with a Stage II run's trained encoders: top-1 / top-5 against chance."""
    import torch

    from care_core.features import load_features
    from care_core.train.expression import load_molecular
    from care_core.train.trainer import load_run

    _, obj = load_run(run_dir)
    s = obj.student
    if modality == "rna":
        data = load_molecular(cohort / "cohort.csv", rna=cohort / "rna.h5ad", genes=list(s["mol"].genes))
        pairs = data.rna
    else:
        data = load_molecular(cohort / "cohort.csv", protein=cohort / "protein.csv", proteins=list(s["mol"].proteins))
        pairs = data.protein
    files = sorted(pairs)
    with torch.no_grad():
        pfs = [load_features(f) for f in files]
        out = s["care"]([torch.from_numpy(pf.features.astype(np.float32)) for pf in pfs], [pf.grid_indices() for pf in pfs],
                        return_patch_tokens=False)
        a = s["slide_proj"](out.slide_embedding)
        b = s["mol_proj"](s["mol"](torch.from_numpy(np.stack([pairs[f] for f in files]))))
        rank = (a @ b.T).argsort(1, descending=True).argsort(1).diagonal().numpy()  # rank of the true profile
    n = len(files)
    return {"n": n, "top1": float(np.mean(rank < 1)), "top5": float(np.mean(rank < 5)), "chance_top1": 1 / n, "chance_top5": min(5, n) / n}


def plot_losses(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4))
    for ax, (name, (run_dir, keys)) in zip(axes, runs.items()):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows]
        for k in keys:
            ax.plot(steps, [r[k] for r in rows], label=k, lw=1)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_regions(slide_path: Path, encs: dict, labels: np.ndarray, path: Path) -> None:
    """Thumbnail + ground truth + region maps of one held-out slide, regions drawn as patch cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from care_core.wsi import open_slide

    with open_slide(slide_path) as slide:
        thumb = np.asarray(slide.thumbnail(600))
    first = next(iter(encs.values()))
    g = first.grid - first.grid.min(0)
    shape = tuple(g.max(0)[::-1] + 1)
    rng = np.random.default_rng(3)

    def raster(values, n_colors):
        colors = rng.uniform(0.15, 1.0, (n_colors, 3))
        img = np.ones(shape + (3,))
        img[g[:, 1], g[:, 0]] = colors[values]
        return img

    panels = [("slide", thumb), ("ground truth", raster(np.maximum(labels, 0), 6))]
    panels += [(name, raster(e.patch_region, e.n_regions)) for name, e in encs.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8))
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "demo-train")
    ap.add_argument("--out", type=Path, default=ROOT / "care_core" / "model" / "weights" / "care_demo")
    ap.add_argument("--train-slides", type=int, default=24)
    ap.add_argument("--heldout-slides", type=int, default=8)
    ap.add_argument("--stage1-epochs", type=int, default=6)
    ap.add_argument("--stage2-epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a loaded machine)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from care_core.model import CARE, load_checkpoint, save_checkpoint
    from care_core.synth.cohort import write_synthetic_cohort

    t_start = time.perf_counter()
    w = args.work
    size = dict(width_px=12000, height_px=9600, workers=1)
    train_cohort = write_synthetic_cohort(w / "train", args.train_slides, seed=0, **size).parent
    t_data = time.perf_counter() - t_start
    print(f"training cohort ready ({t_data:.0f} s)")

    t0 = time.perf_counter()
    s1 = run("1", stage1_config(train_cohort / "features", args.stage1_epochs), w / "stage1")
    s2 = run("2", stage2_config(train_cohort, s1, "rna", args.stage2_epochs), w / "stage2_rna")
    s3 = run("2", stage2_config(train_cohort, s2, "protein", args.stage2_epochs), w / "stage2_protein")
    t_train = time.perf_counter() - t0
    held = write_synthetic_cohort(w / "heldout", args.heldout_slides, seed=1, **size).parent

    truth = heldout_truth(held)
    k = 8
    table, encs = {"fixed k×k squares": fixed_squares(truth, k)}, {}
    for name, model in [("random init", CARE.from_seed(0, input_dim=truth[0][0].dim, **MODEL)),
                        ("Stage I", load_checkpoint(s1)), ("Stage II RNA", load_checkpoint(s2)),
                        ("Stage II protein", load_checkpoint(s3))]:
        table[name], e = purity_of(model.eval(), truth)
        encs[name] = e[0]
    retr = {"rna": retrieval(w / "stage2_rna", held, "rna"), "protein": retrieval(w / "stage2_protein", held, "protein")}
    images = ROOT / "docs" / "images"
    plot_losses({"Stage I (iBOT)": (w / "stage1", ["loss", "loss_cls", "loss_mim"]),
                 "Stage II RNA": (w / "stage2_rna", ["loss_clip"]), "Stage II protein": (w / "stage2_protein", ["loss_clip"])},
                images / "train_demo_loss.png")
    plot_regions(truth[0][2], encs, truth[0][1], images / "train_demo_regions.png")

    from care_core.features import load_features

    n_patches = sum(len(load_features(f).coords) for f in sorted((train_cohort / "features").glob("*.h5")))
    figures = {
        "trained_on": f"{args.train_slides} synthetic slides (cohort seed 0, 12000x9600 px at 0.5 µm/px, {n_patches} patches), "
                      "stain-texture features (512 px at 0.5 µm/px)",
        "evaluated_on": f"{len(truth)} held-out synthetic slides (cohort seed 1)",
        "train_seconds": round(t_train), "data_seconds": round(t_data), "torch_threads": torch.get_num_threads(),
        "region_purity": table, "retrieval": retr,
    }
    (ROOT / "docs" / "demo_checkpoint.json").write_text(json.dumps(figures, indent=2))
    card = model_card(figures)
    final = load_checkpoint(s3)
    meta = final.checkpoint_meta
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(final, args.out, encoder=meta.encoder, feature_mpp=meta.feature_mpp, patch_px=meta.patch_px,
                    extra={"demo": True, "not_for_diagnosis": True, "model_card": card, **figures})
    args.out.with_suffix(".md").write_text(card)
    print(card)


def model_card(f: dict) -> str:
    rows = "\n".join(
        f"| {name} | {p['purity']:.3f} | {p['share_pure90']:.3f} | {p['mean_size']:.1f} | {p['left_own_square']:.3f} |"
        for name, p in f["region_purity"].items()
    )
    r, p = f["retrieval"]["rna"], f["retrieval"]["protein"]
    return f"""# CARE demo checkpoint — a demo, not for diagnosis

This checkpoint exists so that the napari plugin, `make demo` and `care encode` show a *trained* CARE out of
the box. It was trained by `scripts/train_demo.py` on synthetic H&E-like slides only, with a narrow
configuration (embed_dim 128, 4 heads, k = 8, depth 2 + 2). It has never seen a real slide: do not use it
for research conclusions or for any clinical purpose.

- Trained on: {f['trained_on']}.
- Training: Stage I (iBOT) -> Stage II RNA -> Stage II protein, {f['train_seconds']} s on {f['torch_threads']} CPU threads.
- Expects: `stain-texture` features of 512 px patches at 0.5 µm/px.
- Evaluated on: {f['evaluated_on']}, against their ground-truth compartments.

| partition | size-weighted purity | regions ≥ 90 % pure | mean region size (patches) | patches off their own square |
|---|---|---|---|---|
{rows}

Held-out retrieval: slide -> RNA top-1 {r['top1']:.2f} / top-5 {r['top5']:.2f} (chance {r['chance_top1']:.2f} / {r['chance_top5']:.2f},
{r['n']} slides); slide -> protein top-1 {p['top1']:.2f} / top-5 {p['top5']:.2f} (chance {p['chance_top1']:.2f} / {p['chance_top5']:.2f}, {p['n']} slides).
"""


if __name__ == "__main__":
    main()
