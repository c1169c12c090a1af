#!/usr/bin/env bash
# Compact engines, exports and host latency (after run_mnist.sh and run_fashion.sh).
set -euo pipefail
# Re-runs on a quiet machine: PSO after its re-evaluation fix, and cma seed 0 (deterministic: the same
# engine; its first timing was inflated by other work on the machine).
rm -rf runs/mnist-pso-s0 runs/mnist-cma-s0
slicenet optimise --method pso --out runs/mnist-pso-s0 --quiet
slicenet optimise --method cma --seed 0 --out runs/mnist-cma-s0 --quiet
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --out runs/mnist-cma-s0-74kb
slicenet condense runs/mnist-cma-s0 --prototypes 20 --dims 64 --precision int8 --out runs/mnist-cma-s0-p20
slicenet optimise --method cma --bank-shifts 1 --out runs/mnist-cma-shifts-s0 --quiet
for run in mnist-cma-s0 mnist-dense/dense128 mnist-cma-s0-74kb fashion-cma-s0 fashion-dense/dense128 fashion-cma-s0-74kb; do
  slicenet export "runs/$run" --target onnx
done
for run in mnist-cma-s0 mnist-cma-s0-74kb; do
  for target in openvino jetson ncs2; do slicenet export "runs/$run" --target "$target"; done
done
# Host latency, ONNX Runtime, batch 1, one interleaved run per dataset (the first bundle is the ratio's base).
slicenet bench export/mnist-dense-dense128/onnx export/mnist-cma-s0/onnx export/mnist-cma-s0-74kb/onnx --runtime onnxruntime \
  --threads 1 --count 2000 --json results/bench-mnist-onnxruntime.json
slicenet bench export/mnist-cma-s0/openvino export/mnist-cma-s0-74kb/openvino --runtime openvino --threads 1 \
  --count 2000
slicenet report
