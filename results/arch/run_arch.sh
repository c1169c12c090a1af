#!/usr/bin/env bash
# Architecture search evidence (issue 22) on MNIST-5k, 2 cores, from a folder where runs/ may be written:
# the defaults (S=2, K=(3,4), filters 4 and 8, N=8, T=3; a 6-generation search per convolution on 400 images),
# the same budget by random search (the paper's ablation), then the report with the hand-designed presets.
set -euo pipefail
OUT=${OUT:-results/arch}
slicenet arch-search --dataset mnist --out runs/arch-mnist-s0
slicenet arch-search --dataset mnist --strategy random --out runs/arch-mnist-random-s0   # stopped after generation 1 (time)
# The front's member within the default preset's multiply-adds, searched in full as optimise does:
slicenet optimise --method cma --preset genetic:4,8:0-00/0-00-000 --out runs/mnist-cma-genetic-zero-s0
slicenet report runs/mnist-cma-s0 runs/mnist-cma-genetic-zero-s0 --arch runs/arch-mnist-s0 runs/arch-mnist-random-s0 \
  --out "$OUT"
