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
# A second seed of the GA against random search, and the all-zero start against the random start (both
# seeds), each at 16 evaluations (N=8, T=1):
slicenet arch-search --dataset mnist --generations 1 --seed 1 --out runs/arch-mnist-s1
slicenet arch-search --dataset mnist --generations 1 --seed 1 --strategy random --out runs/arch-mnist-random-s1
slicenet arch-search --dataset mnist --generations 1 --seed 0 --init zeros --out runs/arch-mnist-zeros-s0
slicenet arch-search --dataset mnist --generations 1 --seed 1 --init zeros --out runs/arch-mnist-zeros-s1
# How faithfully the short fitness ranks structures: 6 of the defaults' structures searched 5x longer.
slicenet arch-search --dataset mnist --out runs/arch-mnist-s0 --resume --rank-check 6 --rank-generations 30
slicenet report runs/mnist-cma-s0 runs/mnist-cma-genetic-zero-s0 --arch runs/arch-mnist-s0 runs/arch-mnist-random-s0 \
  runs/arch-mnist-s1 runs/arch-mnist-random-s1 runs/arch-mnist-zeros-s0 runs/arch-mnist-zeros-s1 \
  --out "$OUT"
