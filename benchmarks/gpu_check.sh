#!/usr/bin/env bash
# GPU check: the GPU figures of fastgen in one short run on one H100/H200 (benchmarks/gpu_check.py does the work).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [more options of benchmarks/gpu_check.py]
#
#   --dry-run   the same phases on the CPU: tiny preset at 32², 2 steps per stage, float32, batches 1 2 (≈ 35 s of
#               CPU time; 2m50 wall on 2 heavily loaded cores); a check of the script, not a measurement
#   --out DIR   where gpu_check.json and gpu_check.png go (default runs/gpu_check; on the device machine use $OUT)
#   -h          every option (--train-steps, --batches, --repeats, --peak-tflops, --dataset, --work)
#
# Python: .venv/bin/python of the repository when it exists, else python3 (with the repository on PYTHONPATH, so Ray
# workers import the same tree). Nothing is installed or downloaded: the venv and its packages must already be there.
# Ray: a private local cluster (unless RAY_ADDRESS is set), shut down at the end.
#
# What it does (details in gpu_check.py): a procedural 256² RGB dataset; `fastgen train`'s entry (pipelines.train)
# on jobs/configs/train-gpu-full.yaml (full preset, bf16 autocast) with --set overrides: 1 Ray Train worker, 50
# optimizer steps per stage (vae batch 8, base batch 16, fast batch 8), one checkpoint per stage, no sample grids;
# then the published model in bf16: UNet FLOPs per forward (FlopCounterMode), AIAS-10 + FARM synthesis at batches
# 1 4 16 64 (pairs/s, UNet TFLOP/s and fraction of peak, peak GPU memory), and a sample grid (an almost untrained
# model: a smoke image, not a quality figure).
# Exit status: 0 done; 1 a phase failed (the JSON's "status"/"error" say which); 124 stopped by the time limit.
#
# Time on one H200 (an estimate: it has not run on a GPU yet). Compute is small next to the fixed costs. FLOPs
# counted on the meta device: one UNet forward = 182 GFLOP per image at 4×32², VAE encode 273, decode 622, so an
# AIAS-10 pair ≈ 2.7 TFLOP; with forward + backward ≈ 3× forward a VAE step (batch 8) ≈ 21 TFLOP, a base step
# (batch 16, + encode) ≈ 13 TFLOP, a FAST step (batch 8) ≈ 4 TFLOP: the 150 training steps ≈ 1.9 PFLOP, ≈ 15 s even
# at 130 TFLOP/s; the sweep (warm-up + 3 calls per batch, Σ batch 85) ≈ 0.9 PFLOP, ≈ 10 s. The rest is overhead,
# scaled from the dry run on 2 loaded cores (Ray start 19 s, ≈ 35 s per TorchTrainer stage there): Ray ≈ 10 s;
# per stage a TorchTrainer start with a CUDA init and a from-scratch 0.98 G-parameter model ≈ 20-40 s; the base
# checkpoint (UNet + prompt encoder + AdamW state ≈ 11 GB of safetensors) ≈ 20-40 s; publishing and loading the
# model (≈ 4 GB each way) ≈ 30 s: ≈ 3-5 minutes in all. The hard limit GPU_CHECK_TIME_LIMIT (default 470 s, under
# 8 minutes) sends SIGTERM; the JSON then keeps every finished phase with "status": "interrupted".
# Disk: ≈ 20 GB of scratch (a temp folder, or --work DIR), removed at the end.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
LIMIT="${GPU_CHECK_TIME_LIMIT:-470}"
echo "gpu_check: $PY, time limit ${LIMIT} s" >&2
exec timeout --signal=TERM --kill-after=30 "$LIMIT" "$PY" -m benchmarks.gpu_check "$@"
