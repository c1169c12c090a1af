#!/usr/bin/env bash
# Issue 21 on one CUDA GPU: seconds per generation CPU against CUDA (slicenet bench-search, the two evaluators
# interleaved on the same populations of one run), the same seed searched on each device and compared image by
# image (compare_devices.py), and the reference's network (--preset radu) searched on the GPU (target: >= 97.5 %
# on MNIST-5k within 5 minutes). Run from the repository's root on a machine with a GPU and slicenet installed;
# figures land in $DEST (default results/scale), run directories in runs/.
# Each step runs even where an earlier one failed (its status is printed), so one run gives every figure it can.
set -uo pipefail
DEST=${DEST:-results/scale}
mkdir -p "$DEST" runs
step() { echo "== $*"; local started=$SECONDS; "$@"; local status=$?; echo "== status $status after $((SECONDS - started)) s: $*"; }
step nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# 1. Seconds per generation, CPU (all of this machine's cores, torch's default threads) against CUDA.
step timeout 180 slicenet bench-search cpu cuda --preset default --generations 8 --json "$DEST/default-cpu-vs-cuda.json"
step timeout 180 slicenet bench-search cpu cuda --preset lenet --generations 6 --json "$DEST/lenet-cpu-vs-cuda.json"
step timeout 240 slicenet bench-search cpu cuda --preset radu --generations 3 --json "$DEST/radu-cpu-vs-cuda.json"
# 2. One seed, the default trunk, searched on the CPU (in the background, 12 threads: the GPU runs keep 4 cores)
# and on the GPU; then the reference's trunk on the GPU, timed by its own metrics.json.
(export OMP_NUM_THREADS=12; step timeout 600 slicenet optimise --method cma --device cpu --quiet --out runs/mnist-cma-s0-cpu) &
step timeout 300 slicenet optimise --method cma --device cuda --quiet --out runs/mnist-cma-s0-cuda
step timeout 420 slicenet optimise --method cma --preset radu --device cuda --quiet --out runs/mnist-cma-radu-cuda-s0
wait
step python results/scale/compare_devices.py runs/mnist-cma-s0-cpu runs/mnist-cma-s0-cuda \
  "$DEST/default-cpu-vs-cuda-engines.json"
for run in mnist-cma-s0-cpu mnist-cma-s0-cuda mnist-cma-radu-cuda-s0; do
  mkdir -p "$DEST/$run" && cp runs/$run/{config.toml,history.csv,metrics.json} "$DEST/$run/"
done
