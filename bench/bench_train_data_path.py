"""Stage I: does the data path bind? Trainer steps/s against model forward+backward alone on batches in memory.

A cohort of feature files (blob-shaped tissue grids, 230-d like stain-texture) is written to a temp folder;
the demo's Stage I config runs through ``train`` (sub-WSI reads, views, augmentations, masks, logging,
checkpoints) and, on the same batches collected beforehand, a bare loop of objective forward + backward +
AdamW step. Goal: ratio >= 0.9.

    python bench/bench_train_data_path.py [--slides 24] [--steps 12] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def write_cohort(folder: Path, n: int, dim: int = 230) -> None:
    from scipy import ndimage

    from care_core.features import PatchFeatures

    rng = np.random.default_rng(0)
    for s in range(n):
        field = ndimage.gaussian_filter(rng.standard_normal((60, 60)), 5)
        rows, cols = np.nonzero(field > np.quantile(field, 0.6))
        grid = np.stack([cols, rows], 1)
        PatchFeatures(features=rng.standard_normal((len(grid), dim)).astype(np.float32), coords=grid * 1024,
                      patch_size_level0=1024, mpp=0.25, patch_px=512, encoder="stain-texture").save(folder / f"s{s}.h5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=24)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from care_core.train.config import config_from_dict
    from care_core.train.stages import build_stage
    from care_core.train.trainer import step_samples, train
    from train_demo import stage1_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cohort(tmp / "f", args.slides)
        base = stage1_config(tmp / "f", epochs=1000)
        base.update(checkpoint_every=10_000)
        for workers in args.workers:
            cfg = config_from_dict("1", {**base, "num_workers": workers})
            run = tmp / f"run{workers}"
            times = []
            for ev in train(cfg, run):
                if ev.kind == "step":
                    times.append(time.perf_counter())
                    if ev.step > args.steps:
                        break
            trainer_rate = (len(times) - 2) / (times[-1] - times[1])  # steps 2..n: the first is warm-up
            # the same batches, already in memory, through forward + backward + step only
            torch.manual_seed(cfg.seed)
            setup = build_stage("1", cfg, run)
            n = setup.n_samples
            batches = []
            for s in range(args.steps + 1):
                epoch, idx = step_samples(s, n, cfg.batch_size, cfg.seed)
                batches.append([setup.make_sample(int(i), epoch) for i in idx])
            obj = setup.objective.train()
            opt = torch.optim.AdamW([p for p in obj.trainable().parameters() if p.requires_grad], lr=cfg.lr)
            stamps = []
            for b in batches:
                loss, _ = obj(b, {"teacher_temp": 0.04, "momentum": 0.99})
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], cfg.clip_grad)
                opt.step()
                obj.update_teacher(0.99)
                stamps.append(time.perf_counter())
            bare_rate = (len(stamps) - 2) / (stamps[-1] - stamps[1])
            print(f"num_workers={workers}: trainer {trainer_rate:.3f} steps/s, forward+backward alone {bare_rate:.3f} steps/s, "
                  f"ratio {trainer_rate / bare_rate:.2f} (goal >= 0.9); {n} sub-WSIs, batch {cfg.batch_size}, "
                  f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
