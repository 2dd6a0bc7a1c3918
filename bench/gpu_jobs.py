"""The Train CARE widget's jobs on a GPU, run as the window runs them (care commands in a child process through
care_core.train.jobs): a fine-tune cut by SIGTERM and resumed against an uninterrupted one, a linear probe with
its final head, a Stage I run, and the time of one fine-tuning epoch of the released-size CARE on slides of
--patches patches. Prints one JSON line of results and writes $OUT/gpu_jobs.json.

    python bench/gpu_jobs.py                 # on the GPU ("auto" picks cuda)
    python bench/gpu_jobs.py --smoke         # anywhere: small sizes on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def run(commands, run_dir, cut_after_checkpoint=False):
    """Run care commands as the widget does; with cut_after_checkpoint, SIGTERM at the first checkpoint."""
    from care_core.train.jobs import start_commands

    t0 = time.perf_counter()
    job = start_commands(commands, run_dir)
    while job.running:
        if cut_after_checkpoint and any((Path(run_dir) / "checkpoints").glob("step_*.pt")):
            job.cancel()
            break
        time.sleep(0.05)
    job.wait()
    if job.returncode not in (0, 143):
        raise SystemExit(f"{commands[-1][0]} failed ({job.returncode}): {job._stderr[-5:]}")
    return job.returncode, time.perf_counter() - t0


def max_diff(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    x, y = load_file(a), load_file(b)
    return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k]))) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="small sizes on the CPU")
    ap.add_argument("--patches", type=int, default=10000, help="patches per slide of the released-size epoch")
    args = ap.parse_args()
    import torch

    from care_core.model import CARE, save_checkpoint
    from train_cohort import TINY_MODEL, write_labelled_cohort

    device = "cpu" if args.smoke else "auto"
    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_labelled_cohort(root / "tiny", 5, n_side=8, dim=8)
        ckpt = save_checkpoint(CARE.from_seed(0, input_dim=8, **TINY_MODEL), root / "tiny" / "care0",
                               encoder="stain-texture", feature_mpp=0.5, patch_px=256)
        ft = {"labels": str(root / "tiny" / "labels.csv"), "features": str(root / "tiny" / "features"), "init": str(ckpt),
              "epochs": 4, "min_epochs": 4, "patience": 4, "lr": 1e-3, "min_lr": 1e-3, "log_every": 1,
              "checkpoint_every": 6, "device": device}
        (root / "ft.json").write_text(json.dumps(ft))
        fine = lambda run_dir: [["finetune", "--events-json", "--out", str(run_dir), "--config", str(root / "ft.json")]]  # noqa: E731
        _, out["finetune_tiny_s"] = run(fine(root / "whole"), root / "whole")
        rc, _ = run(fine(root / "cut"), root / "cut", cut_after_checkpoint=True)
        out["cut_rc"] = rc
        run([["finetune", "--events-json", "--resume", str(root / "cut")]], root / "cut")
        out["resume_max_abs_diff"] = max_diff(root / "whole" / "care.safetensors", root / "cut" / "care.safetensors")
        out["resume_head_max_abs_diff"] = max_diff(root / "whole" / "head.safetensors", root / "cut" / "head.safetensors")
        _, out["probe_s"] = run([["evaluate", "--labels", str(root / "tiny" / "labels.csv"), "--features",
                                  str(root / "tiny" / "features"), "--model", str(ckpt), "--folds", "5", "--final-head",
                                  "--events-json", "--out", str(root / "probe")]], root / "probe")
        out["probe_cv"] = json.loads((root / "probe" / "results.json").read_text())["summary"]["auroc"]["mean"]
        s1 = {"features": str(root / "tiny" / "features"), "init": str(ckpt), "epochs": 2, "batch_size": 4, "lr": 1e-3,
              "warmup_epochs": 0.5, "log_every": 1, "device": device, "subwsi": {"min_patches": 8},
              "views": {"global_min_patches": 8, "local_min_patches": 4, "global_size": [4, 6], "local_size": [2, 4]}}
        (root / "s1.json").write_text(json.dumps(s1))
        _, out["stage1_tiny_s"] = run([["pretrain", "--events-json", "--stage", "1", "--out", str(root / "s1"),
                                        "--config", str(root / "s1.json")]], root / "s1")
        losses = [json.loads(x)["loss"] for x in (root / "s1" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
        out["stage1_loss_first_last"] = [losses[0], losses[-1]]
        # one epoch of the released-size CARE (768-d, the paper's fine-tune) on 10 slides of --patches patches
        n_side = int(np.sqrt((40 if args.smoke else args.patches) / 0.7))
        write_labelled_cohort(root / "big", 5, n_side=n_side, dim=768 if not args.smoke else 32)
        big = dict(ft, features=str(root / "big" / "features"), labels=str(root / "big" / "labels.csv"), init="",
                   epochs=1, min_epochs=1, patience=1, lr=2e-5, min_lr=2e-5, checkpoint_every=1000)
        (root / "big.json").write_text(json.dumps(big))
        _, out["finetune_released_epoch_s"] = run([["finetune", "--events-json", "--out", str(root / "big_run"),
                                                    "--config", str(root / "big.json")]], root / "big_run")
        rows = [json.loads(x) for x in (root / "big_run" / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "samples_per_s" in r]
        out["finetune_released_slides_per_s"] = steps[-1]["samples_per_s"] if steps else None
        out["finetune_released_patches"] = n_side * n_side * 0.7
    print(json.dumps(out))
    folder = Path(os.environ.get("OUT", "."))
    (folder / "gpu_jobs.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
