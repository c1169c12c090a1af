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
# The same all-zero structure at the widest stage 2 within that budget (4 and 10 filters: 98,784 multiply-adds)
slicenet optimise --method cma --preset genetic:4,10:0-00/0-00-000 --quiet --out runs/mnist-cma-genetic-zero-4x10-s0
# ...and at the widths that fill the budget with fewer stage-1 filters (a later stop): 3 and 16 (105,840
# multiply-adds, 784 features), 2 and 24 (98,784, 1,176 features)
slicenet optimise --method cma --preset genetic:3,16:0-00/0-00-000 --quiet --out runs/mnist-cma-genetic-zero-3x16-s0
slicenet optimise --method cma --preset genetic:2,24:0-00/0-00-000 --quiet --out runs/mnist-cma-genetic-zero-2x24-s0
# ...and with three stages (a later stop), where again only the all-zero structure fits at these widths (1 of
# 512 each): 4, 8 and 6 filters (105,840 multiply-adds, 54 features), 4, 7 and 8 (102,312, 72 features)
slicenet optimise --method cma --preset genetic:4,8,6:0-00/0-00/0-00 --quiet --out runs/mnist-cma-genetic-zero-4x8x6-s0
slicenet optimise --method cma --preset genetic:4,7,8:0-00/0-00/0-00 --quiet --out runs/mnist-cma-genetic-zero-4x7x8-s0
# Seeds 0-2 of the all-zero structure at 4 and 8 filters against seeds 0-2 of the default preset (those are
# run_mnist.sh's runs, made here if missing), one machine, and their report (a later stop, where seed 0 of the
# structure was run again beside the others):
for seed in 0 1 2; do
  [ -f runs/mnist-cma-genetic-zero-s$seed/metrics.json ] || slicenet optimise --method cma \
    --preset genetic:4,8:0-00/0-00-000 --seed $seed --quiet --out runs/mnist-cma-genetic-zero-s$seed
  [ -f runs/mnist-cma-s$seed/metrics.json ] || slicenet optimise --method cma --seed $seed --quiet \
    --out runs/mnist-cma-s$seed
done
slicenet report runs/mnist-cma-s{0,1,2} runs/mnist-cma-genetic-zero-s{0,1,2} --out "$OUT/zero-seeds"
# Within the default preset's multiply-adds with edges: 3 and 3 filters (23 of 512 structures fit; 4 and 8
# leave only the all-zero one), from the all-zero start, the over-budget structures not run; then its best
# structure searched in full:
slicenet arch-search --dataset mnist --filters 3 3 --budget-macs 108800 --init zeros --generations 3 \
  --out runs/arch-mnist-3x3-budget-s0
slicenet optimise --method cma --preset genetic:3,3:0-00/0-00-001 --quiet --out runs/mnist-cma-genetic-3x3-best-s0
# A second seed of the GA against random search, and the all-zero start against the random start (both
# seeds), each at 16 evaluations (N=8, T=1):
slicenet arch-search --dataset mnist --generations 1 --seed 1 --out runs/arch-mnist-s1
slicenet arch-search --dataset mnist --generations 1 --seed 1 --strategy random --out runs/arch-mnist-random-s1
slicenet arch-search --dataset mnist --generations 1 --seed 0 --init zeros --out runs/arch-mnist-zeros-s0
slicenet arch-search --dataset mnist --generations 1 --seed 1 --init zeros --out runs/arch-mnist-zeros-s1
# How faithfully the short fitness ranks structures: 6 of the defaults' structures searched 5x longer.
slicenet arch-search --dataset mnist --out runs/arch-mnist-s0 --resume --rank-check 6 --rank-generations 30
# Fashion-MNIST (60,000 / 10,000): the defaults at 16 evaluations (N=8, T=1), then the best structure's own
# run (the search's short budget, a bank of every fit image) condensed within 74 KB: the whole budget grid
# (8.6 min since the search scores its engines on trunk features computed once), and three fixed settings
# within 74 KB (run first, when the grid took ~50 s a cell).
slicenet arch-search --dataset fashion-mnist --generations 1 --out runs/arch-fashion-s0
best=$(python -c "import json; e = json.load(open('runs/arch-fashion-s0/arch.json'))['evaluations']; \
mean = lambda g: sum(r['validation_accuracy'] for r in e[g]) / len(e[g]); g = max(e, key=mean); \
print(max(e[g], key=lambda r: r['validation_accuracy'])['run'])")
slicenet condense "$best" --budget-kb 74 --out runs/fashion-arch-best-74kb
slicenet condense "$best" --prototypes 15 --precision int8 --metric cosine --out runs/fashion-arch-best-p15
slicenet condense "$best" --prototypes 50 --dims 64 --precision int8 --metric cosine --out runs/fashion-arch-best-p50-d64
slicenet condense "$best" --prototypes 100 --dims 32 --precision int8 --metric cosine --out runs/fashion-arch-best-p100-d32
# That structure searched in full, as optimise searches a preset (seeds 0, 1 and 2), and condensed within 74 KB:
for seed in 0 1 2; do
  slicenet optimise --method cma --dataset fashion-mnist --preset genetic:4,8:1-11/0-00-000 --seed $seed --quiet \
    --out runs/fashion-cma-genetic-best-s$seed
  slicenet condense runs/fashion-cma-genetic-best-s$seed --budget-kb 74 --out runs/fashion-cma-genetic-best-s$seed-74kb
done
# The default preset's second seed, with the full bank (its condense --budget-kb 74 was stopped for time)
slicenet optimise --method cma --dataset fashion-mnist --seed 1 --quiet --out runs/fashion-cma-s1
slicenet report runs/mnist-cma-s0 runs/mnist-cma-genetic-zero-s0 runs/mnist-cma-genetic-zero-4x10-s0 \
  runs/mnist-cma-genetic-3x3-best-s0 runs/fashion-cma-s0 runs/fashion-cma-s1 runs/fashion-cma-genetic-best-s* \
  runs/fashion-arch-best-74kb \
  runs/fashion-arch-best-p15 runs/fashion-arch-best-p50-d64 runs/fashion-arch-best-p100-d32 --arch runs/arch-mnist-s0 runs/arch-mnist-random-s0 \
  runs/arch-mnist-s1 runs/arch-mnist-random-s1 runs/arch-mnist-zeros-s0 runs/arch-mnist-zeros-s1 runs/arch-fashion-s0 \
  runs/arch-mnist-3x3-budget-s0 --out "$OUT"
# The GA against random search over four seeds at 16 evaluations (N=8, T=1), all run on one machine (an AMD EPYC,
# not the Intel Xeon of the runs above: seed 0's first generation differs from theirs in one structure's fitness),
# in one report whose verdict is a one-sided paired t-test of the two strategies' best fitness:
for seed in 0 1 2 3; do
  name=s$seed; [ $seed -le 1 ] && name=s$seed-t1   # arch-mnist-s0 and -s1 above are other runs
  slicenet arch-search --dataset mnist --generations 1 --seed $seed --out runs/arch-mnist-$name
  slicenet arch-search --dataset mnist --generations 1 --seed $seed --strategy random --out runs/arch-mnist-random-$name
done
slicenet report runs/arch-mnist-s2/individuals/1_01_0_11_101-e0 --arch runs/arch-mnist-s0-t1 runs/arch-mnist-random-s0-t1 \
  runs/arch-mnist-s1-t1 runs/arch-mnist-random-s1-t1 runs/arch-mnist-s2 runs/arch-mnist-random-s2 runs/arch-mnist-s3 \
  runs/arch-mnist-random-s3 --out "$OUT/seeds"
# Compact engines voting each query's 1-px shifted views (condense --query-shifts, new in this stop), on an
# AMD EPYC (2 cores): seed 0 of the searched structure run again in full (the runs above are gone with their
# machine), condensed within 74 KB by the same rule without and with views, the pick exported and verified for
# both boards; then a report of these runs alone.
slicenet optimise --method cma --dataset fashion-mnist --preset genetic:4,8:1-11/0-00-000 --seed 0 --quiet \
  --out runs/fashion-cma-genetic-best-s0
slicenet condense runs/fashion-cma-genetic-best-s0 --budget-kb 74 --out runs/fashion-cma-genetic-best-s0-74kb
slicenet condense runs/fashion-cma-genetic-best-s0 --budget-kb 74 --query-shifts 1 \
  --out runs/fashion-cma-genetic-best-s0-74kb-views1
# One fixed setting with views and prototypes fitted to the 1-px shifted copies too (the grid's most accurate
# setting without views; the budget search with --bank-shifts 1 would take hours here):
slicenet condense runs/fashion-cma-genetic-best-s0 --prototypes 15 --precision int8 --metric cosine --n-neighbors 1 \
  --query-shifts 1 --bank-shifts 1 --out runs/fashion-cma-genetic-best-s0-p15-views1-shifts1
slicenet export runs/fashion-cma-genetic-best-s0-74kb-views1 --target jetson --verify-images 1000
slicenet export runs/fashion-cma-genetic-best-s0-74kb-views1 --target ncs2 --verify-images 1000
slicenet report runs/fashion-cma-genetic-best-s0 runs/fashion-cma-genetic-best-s0-74kb \
  runs/fashion-cma-genetic-best-s0-74kb-views1 runs/fashion-cma-genetic-best-s0-p15-views1-shifts1 --out "$OUT/views"
# The settling run named above (AMD EPYC, 2 cores): the structure searched in full again (seed 0: 88.51 % again;
# seeds 1 and 2 in later stops), the budget search with views and prototypes fitted to the 1-px shifted copies, its
# pick exported and verified for both boards, and a report of each seed's two runs (seed 0's in views-shifts/):
for seed in 0 1 2; do
  run=runs/fashion-cma-genetic-best-s$seed
  slicenet optimise --method cma --dataset fashion-mnist --preset genetic:4,8:1-11/0-00-000 --seed $seed --quiet \
    --out $run
  slicenet condense $run --budget-kb 74 --query-shifts 1 --bank-shifts 1 --out $run-74kb-views1-shifts1
  for board in jetson ncs2; do
    slicenet export $run-74kb-views1-shifts1 --target $board --verify-images 1000
  done
  report=$OUT/views-shifts
  [ "$seed" = 0 ] || report=$OUT/views-shifts-s$seed
  slicenet report $run $run-74kb-views1-shifts1 --out "$report"
done
