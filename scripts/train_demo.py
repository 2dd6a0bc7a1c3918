"""Train the shipped demo CARE checkpoint and its demo prediction heads on synthetic slides, on a CPU, and measure
what they learned on held-out slides.

    python scripts/train_demo.py [--work build/demo-train] [--install]

1. Synthetic cohorts (care_core.synth, 12000 x 9600 px at 0.5 µm/px): training slides (cohort seed 0) and
   held-out slides (seed 1, never seen in training), with stain-texture features, local structures (TIL, TLS),
   RNA / protein profiles that depend on them, labels, per-patch truth and compartment outlines.
2. Stage I (iBOT) -> Stage II RNA -> Stage II protein, each run starting from the one before, with a narrow CARE
   (embed_dim 128) so that the whole job fits one CPU thread in about 30 minutes.
3. Demo heads with the project's own ``care evaluate --final-head`` on the training cohort: a region classifier
   of the compartments (from the outlines) and a slide head for a molecular label (the TLS signature high / low,
   from the slide embedding; of the slide heads tried, the one whose cross-validated AUROC on the training cohort
   was best: TIL or TLS present and either signature, from the slide embedding or the ROI feature).
4. bench/bench_method.py on the held-out slides: regions, ROI, embeddings and retrieval against the trivial
   baselines; its tables go into the model card, its figures into docs/method_benchmark.json and
   docs/images/method_regions.png.
5. The checkpoint (.safetensors + .json with the figures and the card in ``extra``), the card (.md) and the heads
   go to WORK/care_demo*; --install copies them into the package (care_core/model/weights/), replacing the
   shipped demo. The defaults are the settings of the shipped checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "care_core" / "model" / "weights"
MODEL = dict(embed_dim=128, heads=4, spf_dim=64, mlp_ratio=2.0, input_norm=True)  # released structure (k=8, depth 2+2), narrower
SIZE = dict(width_px=12000, height_px=9600)


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
        "top_proteins": 16,  # our choice for the demo: the paper's 10 most abundant would rarely reach a structure's markers
    }


def run(stage: str, cfg: dict, run_dir: Path) -> Path:
    from care_core.train.config import config_from_dict
    from care_core.train.trainer import train

    timing = run_dir / "train_seconds.txt"  # what the run took when it trained (a reused run keeps its figure)
    if (run_dir / "care.safetensors").exists() and timing.is_file():
        print(f"{run_dir}: done before ({timing.read_text().strip()} s), reused")
        return run_dir / "care"
    resume = (run_dir / "config.json").exists()
    t0 = time.perf_counter()
    for ev in train(config_from_dict(stage, cfg), run_dir, resume=resume):
        if ev.kind == "step" and (ev.step % 20 == 0 or ev.step == ev.total_steps):
            print(f"  stage {stage} step {ev.step}/{ev.total_steps} loss {ev.metrics['loss']:.4f} "
                  f"({ev.samples_per_s:.1f} samples/s, eta {ev.eta_s or 0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    timing.write_text(f"{seconds:.0f}\n")
    print(f"{run_dir}: {seconds:.0f} s")
    return run_dir / "care"


def trained_seconds(*run_dirs: Path) -> int:
    """Training time of the given runs, as each recorded it."""
    return sum(int((d / "train_seconds.txt").read_text()) for d in run_dirs)


def demo_heads(cohort: Path, model: Path, work: Path) -> dict[str, Path]:
    """The demo heads, each fitted by `care evaluate --final-head` on the training cohort: {name: head path}."""
    from care_core.cli import main as care

    runs = {
        "compartments": ["--labels", str(cohort / "labels" / "dominant.csv"), "--annotations", str(cohort / "annotations")],
        "tls_signature": ["--labels", str(cohort / "labels" / "tls_signature.csv"), "--folds", "3"],  # 12 patients
    }
    out = {}
    for name, extra in runs.items():
        run = work / f"heads_{name}"
        if not (run / "results.json").is_file():
            if care(["evaluate", *extra, "--features", str(cohort / "features"), "--model", str(model),
                     "--final-head", "--out", str(run)]) != 0:
                raise SystemExit(f"care evaluate for the {name} head failed")
        (head,) = sorted((run / "heads").glob("*_all.json"))
        out[name] = head.with_suffix("")
    return out


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


def model_card(f: dict, bench_md: str, heads: dict) -> str:
    head_lines = "\n".join(f"- `{p.name}`: {what}" for p, what in heads.values())
    return f"""# CARE demo checkpoint — a demo, not for diagnosis

This checkpoint exists so that the napari plugin, `make demo` and `care encode` show a *trained* CARE out of
the box. It was trained by `scripts/train_demo.py` on synthetic H&E-like slides only, with a narrow
configuration (embed_dim 128, 4 heads, k = 8, depth 2 + 2). It has never seen a real slide: do not use it
for research conclusions or for any clinical purpose.

- Trained on: {f['trained_on']}.
- Training: Stage I (iBOT, {f['epochs']['stage1']} epochs) -> Stage II RNA -> Stage II protein ({f['epochs']['stage2']} epochs
  each), {f['train_seconds']} s on {f['torch_threads']} CPU thread(s).
- Expects: `stain-texture` features of 512 px patches at 0.5 µm/px.
- Demo heads beside it (fitted by `care evaluate --final-head` on the training cohort; cross-validated metrics in
  each head's JSON):
{head_lines}

## Held-out benchmark (bench/bench_method.py, {f['evaluated_on']})

{bench_md}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "demo-train")
    ap.add_argument("--install", action="store_true", help="copy the checkpoint, card and heads into care_core/model/weights")
    ap.add_argument("--train-slides", type=int, default=24)
    ap.add_argument("--heldout-slides", type=int, default=32)
    ap.add_argument("--stage1-epochs", type=int, default=30)
    ap.add_argument("--stage2-epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a loaded machine)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from care_core.features import load_features
    from care_core.model import load_checkpoint, save_checkpoint
    from care_core.synth.cohort import write_synthetic_cohort

    t_start = time.perf_counter()
    w = args.work
    train_cohort = write_synthetic_cohort(w / "train", args.train_slides, seed=0, workers=1, **SIZE).parent
    held = write_synthetic_cohort(w / "heldout", args.heldout_slides, seed=1, workers=1, **SIZE).parent
    t_data = time.perf_counter() - t_start
    print(f"cohorts ready ({t_data:.0f} s)")

    s1 = run("1", stage1_config(train_cohort / "features", args.stage1_epochs), w / "stage1")
    s2 = run("2", stage2_config(train_cohort, s1, "rna", args.stage2_epochs), w / "stage2_rna")
    s3 = run("2", stage2_config(train_cohort, s2, "protein", args.stage2_epochs), w / "stage2_protein")
    t_train = trained_seconds(w / "stage1", w / "stage2_rna", w / "stage2_protein")
    heads = demo_heads(train_cohort, s3, w)
    images = ROOT / "docs" / "images"
    plot_losses({"Stage I (iBOT)": (w / "stage1", ["loss", "loss_cls", "loss_mim"]),
                 "Stage II RNA": (w / "stage2_rna", ["loss_clip"]), "Stage II protein": (w / "stage2_protein", ["loss_clip"])},
                images / "train_demo_loss.png")
    bench_json = ROOT / "docs" / "method_benchmark.json"
    bench = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_method.py"), "--work", str(w), "--json", str(bench_json),
                            "--png", str(images / "method_regions.png"), "--threads", str(args.threads)],
                           check=True, capture_output=True, text=True)
    print(bench.stdout)
    bench_md = bench.stdout[bench.stdout.index("### Regions"):bench.stdout.rindex("done in")].strip()

    n_patches = sum(len(load_features(f).coords) for f in sorted((train_cohort / "features").glob("*.h5")))
    figures = {
        "trained_on": f"{args.train_slides} synthetic slides (cohort seed 0, {SIZE['width_px']}x{SIZE['height_px']} px at "
                      f"0.5 µm/px, {n_patches} patches), stain-texture features (512 px at 0.5 µm/px)",
        "evaluated_on": f"{args.heldout_slides} held-out synthetic slides (cohort seed 1)",
        "epochs": {"stage1": args.stage1_epochs, "stage2": args.stage2_epochs},
        "train_seconds": round(t_train),
        "torch_threads": torch.get_num_threads(),
        "benchmark": json.loads(bench_json.read_text()),
    }
    from dataclasses import replace

    from care_core.evaluate import load_head

    head_info = {}
    for name, path in heads.items():  # saved again under the demo's names (the name is part of the hashed JSON)
        head = replace(load_head(path), name=f"care_demo_{name}")
        head.save(w / head.name)
        cv = ", ".join(f"{k} {v:.3f}" for k, v in head.metrics.get("cv", {}).items())
        what = ("region classifier of the compartments" if name == "compartments"
                else "TLS signature high / low, a slide head on the slide embedding")
        head_info[name] = (w / head.name, f"{what}; cross-validated on {head.metrics.get('n_samples')} samples: {cv}")
    card = model_card(figures, bench_md, head_info)
    final = load_checkpoint(s3)
    meta = final.checkpoint_meta
    out = w / "care_demo"
    save_checkpoint(final, out, encoder=meta.encoder, feature_mpp=meta.feature_mpp, patch_px=meta.patch_px,
                    extra={"demo": True, "not_for_diagnosis": True, "model_card": card, **figures})
    out.with_suffix(".md").write_text(card)
    print(card)
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.install:
        for f in [out.with_suffix(s) for s in (".json", ".safetensors", ".md")] + [w / f"care_demo_{n}{s}" for n in heads
                                                                                    for s in (".json", ".safetensors")]:
            shutil.copyfile(f, WEIGHTS / f.name)
        print(f"installed into {WEIGHTS}")


if __name__ == "__main__":
    main()
