#!/usr/bin/env bash
# The runs behind results/REPORT.md on MNIST-5k (4,000/1,000), in the order they were run, one at a
# time on an otherwise idle machine. Each run records its own command, machine and timings in
# runs/<name>/metrics.json; `slicenet report` rebuilds results/ from those run directories.
set -euo pipefail
for seed in 0 1 2; do
  slicenet optimise --method cma --seed "$seed" --out "runs/mnist-cma-s$seed" --quiet
done
slicenet optimise --method pso --out runs/mnist-pso-s0 --quiet
slicenet optimise --method ga --out runs/mnist-ga-s0 --quiet
slicenet optimise --method cma --bank-shifts 0 --out runs/mnist-cma-noshift-s0 --quiet
# Run just before bank shifts became auto (their configs record bank_shifts = 0): holdout scoring with
# twice the generations, and the filter-by-filter search (its 277 s are pessimistic: the test suite
# shared the machine with it).
# slicenet optimise --method cma --scoring holdout --generations 200 800 --out runs/mnist-cma-holdout-s0 --quiet
# slicenet optimise --method cma --granularity filter --out runs/mnist-cma-filter-s0 --quiet
# Unchanged since slicenet 0.2 (their trunks and training did not change): backprop baselines.
# slicenet baseline --hidden 128 64 32 16 8 --epochs 5 --out runs/mnist-dense --quiet
# slicenet baseline --head knn --epochs 5 --out runs/mnist-backprop-knn --quiet
# Unchanged since slicenet 0.1: the radu and raw-pixel rows (their configs record holdout scoring).
# slicenet optimise --method cma --preset radu --generations 8 24 --search-images 500 --out runs/mnist-cma-radu-s0 --quiet
# slicenet optimise --preset pixels --postprocessing none --out runs/mnist-pixels --quiet
# slicenet baseline --preset radu --hidden 128 64 32 16 8 --epochs 5 --out runs/mnist-radu-dense --quiet
# slicenet baseline --preset radu --head knn --epochs 5 --out runs/mnist-radu-backprop-knn --quiet
# Second seeds for the pso and ga gains (run last, after the compact engines).
slicenet optimise --method pso --seed 1 --out runs/mnist-pso-s1 --quiet
slicenet optimise --method ga --seed 1 --out runs/mnist-ga-s1 --quiet
# The local-mean head (--vote local-mean) on the default search, 3 seeds.
for seed in 0 1 2; do
  slicenet optimise --method cma --vote local-mean --seed "$seed" --out "runs/mnist-cma-lm-s$seed" --quiet
done
# The same search, its engine with test-time views (each query voted with its four 1-px shifts; the bank
# already holds 1-px shifted copies on MNIST-5k), seed 0.
slicenet optimise --method cma --vote local-mean --query-shifts 1 --out runs/mnist-cma-lm-tta-s0 --quiet
