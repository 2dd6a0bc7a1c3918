"""CARE forward on CUDA in bfloat16: time and peak GPU memory at 10k and 100k patches, adaptive vs fixed.

    python bench/gpu_care.py            # CUDA: sizes 10000 100000
    python bench/gpu_care.py --smoke    # any machine: 2000 patches (CPU when no CUDA), checks it runs

Writes ``$OUT/gpu_care.json`` when the OUT environment variable is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from care_core.model.care import CARE


def tissue_grid(n: int, seed: int = 0) -> np.ndarray:
    """The n highest cells of a smoothed random field: tissue-like blobs with holes (col, row)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n / 0.45)))
    field = ndimage.gaussian_filter(rng.standard_normal((side, side)), sigma=side / 12)
    rows, cols = np.unravel_index(np.argsort(field, axis=None)[::-1][:n], field.shape)
    return np.stack([cols, rows], 1).astype(np.int64)


def measure(model: CARE, n: int, device: torch.device, repeats: int) -> dict:
    grid = tissue_grid(n)
    x = torch.randn(n, model.config.input_dim, device=device)
    amp = device.type == "cuda"

    def once():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model([x], [grid], return_patch_tokens=False)

    once()  # warm-up
    if amp:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = once()
        if amp:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if amp else None
    return {"n": n, "seconds_median": float(np.median(times)), "seconds_all": times, "peak_gpu_mb": peak,
            "regions": int(len(out.pi)), "finite": bool(torch.isfinite(out.slide_embedding).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--smoke", action="store_true", help="2000 patches, one repeat (CPU when no CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes, repeats = ([2000], 1) if args.smoke else (args.sizes, args.repeats)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": "bfloat16" if device.type == "cuda" else "float32"}
    for fixed in (False, True):
        model = CARE.from_seed(0, fixed_regions=fixed).to(device).eval()
        key = "fixed" if fixed else "adaptive"
        result[key] = [measure(model, n, device, repeats) for n in sizes]
        for r in result[key]:
            mem = f"{r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] is not None else "n/a"
            print(f"{key:8s} N={r['n']:>7}  {r['seconds_median'] * 1000:8.1f} ms  peak {mem}  {r['regions']} regions")
    a, f = result["adaptive"][-1], result["fixed"][-1]
    result["adaptive_over_fixed"] = a["seconds_median"] / f["seconds_median"]
    if len(sizes) > 1:
        result["time_ratio_last_over_first"] = a["seconds_median"] / result["adaptive"][0]["seconds_median"]
    print(json.dumps({k: v for k, v in result.items() if k not in ("adaptive", "fixed")}))
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_care.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
