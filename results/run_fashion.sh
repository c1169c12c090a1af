#!/usr/bin/env bash
# Full-size runs on Fashion-MNIST (60,000 / 10,000; Debian's dataset-fashion-mnist), in the order run.
# The two parts ran side by side, one torch thread each (so their wall times are pessimistic).
set -euo pipefail
part=${1:-all}
if [[ $part == all || $part == a ]]; then
  slicenet optimise --method cma --dataset fashion-mnist --threads 1 --out runs/fashion-cma-s0 --quiet
  slicenet optimise --method pso --dataset fashion-mnist --threads 1 --out runs/fashion-pso-s0 --quiet
  slicenet baseline --dataset fashion-mnist --hidden 128 64 32 16 8 --epochs 5 --threads 1 --out runs/fashion-dense --quiet
  slicenet baseline --dataset fashion-mnist --head knn --epochs 5 --threads 1 --out runs/fashion-backprop-knn --quiet
  slicenet condense runs/fashion-cma-s0 --budget-kb 74 --out runs/fashion-cma-s0-74kb
fi
if [[ $part == all || $part == b ]]; then
  # The 30-minute budget: the wider lenet trunk (3,424 parameters, 256 features), 3x the generations.
  slicenet optimise --method cma --dataset fashion-mnist --preset lenet --generations 600 2400 \
    --threads 1 --out runs/fashion-cma-lenet-long --quiet
fi
# Unchanged since slicenet 0.1: slicenet optimise --preset pixels --postprocessing none --dataset fashion-mnist --out runs/fashion-pixels --quiet
