#!/usr/bin/env bash
# Scaling the search (issue 21): seconds per generation, evaluator against evaluator, in one interleaved
# run each (slicenet bench-search), on this machine; then a two-node Ray cluster started here, which must
# give the identical engine. Run from a folder where runs/ may be written; $OUT is results/scale.
set -euo pipefail
OUT=${OUT:-results/scale}
# 1. In-process (2 torch threads) against Ray actors on a local instance of 2 CPUs (one thread each).
slicenet bench-search cpu local:2 --preset default --generations 8 --json "$OUT/default-cpu-vs-local2.json"
slicenet bench-search cpu local:2 --preset lenet --generations 6 --json "$OUT/lenet-cpu-vs-local2.json"
slicenet bench-search cpu local:2 --preset radu --search-images 300 --generations 3 --json "$OUT/radu-cpu-vs-local2.json"
# The crossover: the default trunk with fewer and more images a generation.
for images in 200 500 2000; do
  slicenet bench-search cpu local:2 --preset default --search-images "$images" --generations 6 \
    --json "$OUT/default-${images}img-cpu-vs-local2.json"
done
# 2. A two-node cluster on this machine: a head and a second node, one CPU each. Ray 2.60 uses token
# authentication where ~/.ray/auth_token exists; every process that joins by address then needs
# RAY_AUTH_MODE=token (and the head's token), the driver included.
ray get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token
ray start --head --port=6390 --num-cpus=1 --include-dashboard=false --disable-usage-stats >/dev/null
ray start --address=127.0.0.1:6390 --num-cpus=1 --disable-usage-stats >/dev/null
slicenet bench-search cpu 127.0.0.1:6390 --preset default --generations 8 --json "$OUT/default-cpu-vs-2nodes.json"
slicenet optimise --dataset digits --generations 3 --population-size 8 --device cpu --quiet --out runs/scale-local
slicenet optimise --dataset digits --generations 3 --population-size 8 --cluster 127.0.0.1:6390 --quiet \
  --out runs/scale-2nodes
python -c "import sys, torch; from slicenet.engine import Engine; a, b = (Engine.load(f'runs/{n}/engine.safetensors') \
for n in ('scale-local', 'scale-2nodes')); same = all(torch.equal(x, y) for p, q in zip(a.weights, b.weights) \
for x, y in zip(p, q)) and torch.equal(a.head.bank, b.head.bank); print('identical engine on 2 nodes:', same); \
sys.exit(0 if same else 1)" | tee "$OUT/two-nodes-identical.txt"
ray stop >/dev/null
# 3. The reference's network on these 2 cores: the preset's defaults (local-mean head), then the majority
# vote; each run's config, history and metrics are copied here.
slicenet optimise --method cma --preset radu --device cpu --quiet --out runs/mnist-cma-radu-lm-s0
slicenet optimise --method cma --preset radu --vote majority --device cpu --quiet --out runs/mnist-cma-radu-s0  # first run as --search-images 300 --generations 30 250, the same settings
for run in mnist-cma-radu-lm-s0 mnist-cma-radu-s0; do
  mkdir -p "$OUT/$run" && cp runs/$run/{config.toml,history.csv,metrics.json} "$OUT/$run/"
done
# 4. On a GPU: results/scale/gpu_bench.sh (CPU against CUDA per generation, one seed searched on each and
# compared image by image, radu on the GPU). Not run yet: no GPU has been lent to this project's machines.
