#!/usr/bin/env bash
# The redesign (issue 19), before and after, on one 2-core machine, from a folder holding runs/ made
# by slicenet 0.1 (commit 555f72b, checked out in ../before) and bundles exported by both releases.
# Run from that folder; $RESULTS is this repository's results/redesign.
set -euo pipefail
RESULTS=${RESULTS:-results/redesign}
OLD="env PYTHONPATH=../before python -m slicenet.cli"
RUNS="runs/mnist-cma-s0 runs/mnist-cma-lm-s0 runs/mnist-dense128 runs/mnist-cma-s0-p5 runs/mnist-cma-s0-120kmacs
      runs/fashion-cma-s0 runs/fashion-dense128 runs/fashion-cma-s0-p5 runs/fashion-cma-s0-120kmacs"
# 1. The runs, by slicenet 0.1 (results/redesign/README.md lists them: run_mnist.sh's and run_compact_bench.sh's
#    commands, and digits runs of every kind the report knows).
#    $OLD optimise --method cma --out runs/mnist-cma-s0 --quiet   ... (see the README)
# 2. Exported by both: 0.1 into export-before/, the redesign into export-after/.
for run in $RUNS; do
  for target in onnx openvino jetson ncs2; do
    $OLD export "$run" --target "$target" --out export-before
    slicenet export "$run" --target "$target" --out export-after
  done
done
# 3. Each engine's before and after bundles timed in one interleaved run (ONNX Runtime, 1 thread; OpenVINO CPU,
#    1 thread, on the NCS2 IR and the openvino IR).
for run in $RUNS; do
  name=$(basename "$run")
  slicenet bench "export-before/$name/onnx" "export-after/$name/onnx" --runtime onnxruntime --threads 1 \
    --count 3000 --rounds 5 --results "$RESULTS/bench"
  slicenet bench "export-before/$name/ncs2" "export-after/$name/ncs2" "export-before/$name/openvino" \
    "export-after/$name/openvino" --runtime openvino --threads 1 --count 2000 --rounds 5 --results "$RESULTS/bench"
done
# 4. The report: the same runs' tables, the bundles' operations per target, the 2022.3 check, the benches.
slicenet report $RUNS runs/digits-* runs/digits-dense/* --bundles export-before/*/* export-after/*/* \
  --bench "$RESULTS/bench" --out "$RESULTS"
