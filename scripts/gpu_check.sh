#!/usr/bin/env bash
# GPU check: the tests marked `gpu`, then the GPU benches, on one CUDA machine.
#
#   bash scripts/gpu_check.sh
#   ONLY="gpu_profile gpu_pretrain_rotating gpu_pretrain_fast" bash scripts/gpu_check.sh   # Stage I step only
#   SMOKE=1 bash scripts/gpu_check.sh    # any machine: the benches' CPU smoke sizes, to check the script itself
#
# The Stage I steps come first (issue 21): gpu_profile (the trainer's profile_steps: top host and device items
# per step, with data loading and syncs), gpu_pretrain_rotating (the eager model step, a new batch each step: the
# baseline of the next one), gpu_pretrain_fast (the same with bucket_shapes and torch.compile, after warm-up
# steps that compile). Their limits add up to about 9 minutes; with the older steps the sum of the limits passes
# 10, so on a machine lent in 10-minute calls run the Stage I steps in one call and the rest in another.
#
# Logs and JSON results go to $OUT (default: a gpu-check-out folder in the temporary directory):
# gpu_check.log (everything printed), gpu_dmon.log (nvidia-smi dmon, one line a second, with timestamps),
# gpu_profile.json + gpu_profile/ (trace.json, top.txt, summary.json), gpu_pretrain_rotating.json,
# gpu_pretrain_fast.json (+ their _profile/ folders), gpu_care.json, gpu_extract.json (thread and process
# readers), gpu_decode.json (JPEG tiles decoded on the GPU against CPU threads), gpu_pretrain.json, geometry_in_step/gpu_pretrain.json, gpu_jobs.json (the Train CARE widget's jobs)
# and gpu_check.json: every JSON above in one file, under its name. ONLY="gpu_jobs pytest_gpu" runs the named steps alone. Each step has
# its own time limit; a failing step does not stop the next one, and the script exits non-zero when any
# step failed.
#
# No network is needed. Python packages the machine lacks (the pyramid and region stack: dask, zarr,
# tiffslide, imagecodecs, shapely, ...; napari and Qt are not needed) can be put as wheels in .whl/ (or the
# folder $WHEELS names): they are installed into /tmp/site, which goes on PYTHONPATH after the checkout.
# The project itself is used from the checkout (PYTHONPATH), not installed. On one H200 the check took 2 minutes
# 10 s on 2026-12-04, before the Stage I steps were added (not yet run on a GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-${TMPDIR:-/tmp}/gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
ONLY=${ONLY:-}  # space-separated step names to run (default: all)
WHEELS=${WHEELS:-.whl}
SUMMARY=()
FAILED=0

step() {  # step NAME LIMIT_S COMMAND...   (skipped unless $ONLY is empty or names it)
    local name=$1 limit=$2 t0 rc
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    echo
    echo "=== $(date -u +%H:%M:%S) $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo "=== $(date -u +%H:%M:%S) $name: rc=$rc after $(($(date +%s) - t0)) s"
    [ "$rc" -eq 0 ] || FAILED=1
    SUMMARY+=("$name rc=$rc $(($(date +%s) - t0))s")
}

main() {
echo "=== $(date -u +%FT%TZ) gpu_check in $PWD ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl; then
        export PYTHONPATH=/tmp/site
    else
        echo "wheel install failed"; FAILED=1
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi
$PY - <<'EOF'
import importlib
import torch
print(f"python torch {torch.__version__} cuda {torch.version.cuda} cudnn {torch.backends.cudnn.version()} "
      f"available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, cc {p.major}.{p.minor}")
for name in ("numpy", "scipy", "timm", "h5py", "tifffile", "tiffslide", "zarr", "dask", "imagecodecs", "shapely"):
    try:
        print(f"  {name} {importlib.import_module(name).__version__}")
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"  {name}: {type(e).__name__}: {e}")
EOF

nvidia-smi dmon -s pucm -o T -d 1 >"$OUT/gpu_dmon.log" 2>&1 &
DMON=$!

mkdir -p "$OUT/geometry_in_step"
if [ "$SMOKE" = 1 ]; then
    step gpu_profile 120 $PY bench/gpu_profile.py --device cpu --slides 4 --patches 300 --batch 2 --profile 1 \
        --workers 0 --small
    step gpu_pretrain_rotating 90 $PY bench/gpu_pretrain.py --device cpu --batches 1 --steps 1 --patches 60 \
        --warmup 1 --json gpu_pretrain_rotating.json
    step gpu_pretrain_fast 150 $PY bench/gpu_pretrain.py --device cpu --batches 1 --steps 1 --patches 60 \
        --warmup 1 --bucket-shapes --compile aot_eager --json gpu_pretrain_fast.json --profile 1
else
    step gpu_profile 150 $PY bench/gpu_profile.py --batch 64 --profile 5 --sync-every 10
    step gpu_pretrain_rotating 90 $PY bench/gpu_pretrain.py --batches 64 128 --steps 10 --warmup 2 \
        --json gpu_pretrain_rotating.json --profile 3
    step gpu_pretrain_fast 300 $PY bench/gpu_pretrain.py --batches 64 128 --steps 10 --warmup 6 --bucket-shapes \
        --compile default --json gpu_pretrain_fast.json --profile 3
fi
# the GUI test modules import napari / Qt, which a GPU machine does not need
step pytest_gpu 150 $PY -m pytest -q -m gpu tests/ --ignore-glob='tests/test_gui_*.py' -p no:cacheprovider -rs
if [ "$SMOKE" = 1 ]; then
    step gpu_care 75 $PY bench/gpu_care.py --smoke
    step gpu_pretrain 110 $PY bench/gpu_pretrain.py --device cpu --batches 1 --steps 1 --patches 60
    step gpu_extract 110 $PY bench/gpu_extract.py --device cpu --n 64 --batch 32
    step gpu_decode 60 $PY bench/gpu_decode.py --device cpu --tiles 256 --threads 2
    step gpu_pretrain_geometry_in_step 45 env OUT="$OUT/geometry_in_step" \
        $PY bench/gpu_pretrain.py --device cpu --batches 1 --steps 1 --patches 60 --geometry-in-step
    step gpu_jobs 240 $PY bench/gpu_jobs.py --smoke
else
    step gpu_care 75 $PY bench/gpu_care.py --sizes 10000 100000 --repeats 3
    step gpu_pretrain 110 $PY bench/gpu_pretrain.py --batches 32 64 128 --steps 10
    step gpu_extract 110 $PY bench/gpu_extract.py --device cuda --n 4096 --batch 128
    step gpu_decode 60 $PY bench/gpu_decode.py --tiles 4096 --batch 128
    step gpu_pretrain_geometry_in_step 45 env OUT="$OUT/geometry_in_step" \
        $PY bench/gpu_pretrain.py --batches 64 --steps 5 --geometry-in-step
    step gpu_jobs 240 $PY bench/gpu_jobs.py
fi

kill "$DMON" 2>/dev/null
wait "$DMON" 2>/dev/null
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
found = {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))
         if p.name != "gpu_check.json" and not any(part.endswith("_profile") or part == "gpu_profile"
                                                   for part in p.relative_to(out).parts[:-1])}
(out / "gpu_check.json").write_text(json.dumps(found, indent=2))
print(f"gpu_check.json: {', '.join(found) or 'no figures'}")
EOF
echo
echo "=== summary"
printf '%s\n' "${SUMMARY[@]}"
return "$FAILED"
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
