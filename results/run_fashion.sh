#!/usr/bin/env bash
# Full-size runs on Fashion-MNIST (60,000 / 10,000; Debian's dataset-fashion-mnist), in the order run.
set -euo pipefail
slicenet optimise --method cma --dataset fashion-mnist --out runs/fashion-cma-s0 --quiet
slicenet optimise --method pso --dataset fashion-mnist --out runs/fashion-pso-s0 --quiet
slicenet optimise --preset pixels --postprocessing none --dataset fashion-mnist --out runs/fashion-pixels --quiet
slicenet baseline --dataset fashion-mnist --hidden 128 64 32 16 8 --epochs 5 --out runs/fashion-dense --quiet
slicenet baseline --dataset fashion-mnist --head knn --epochs 5 --out runs/fashion-backprop-knn --quiet
slicenet condense runs/fashion-cma-s0 --budget-kb 74 --out runs/fashion-cma-s0-74kb
