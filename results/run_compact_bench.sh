#!/usr/bin/env bash
# Compact engines, exports and host latency (after run_mnist.sh and run_fashion.sh).
set -euo pipefail
# Unchanged since slicenet 0.2: slicenet baseline --hidden 128 --epochs 20 --patience 20 --threads 1 --out runs/mnist-dense-20ep --quiet
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --out runs/mnist-cma-s0-74kb
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --metric cosine --out runs/mnist-cma-s0-74kb-cosine
slicenet condense runs/mnist-cma-s0 --prototypes 10 --precision int8 --metric cosine --out runs/mnist-cma-s0-p10
slicenet condense runs/fashion-cma-s0 --prototypes 10 --precision int8 --metric cosine --out runs/fashion-cma-s0-p10
for run in mnist-cma-s0 mnist-dense/dense128 mnist-cma-s0-74kb mnist-cma-s0-74kb-cosine mnist-cma-s0-p10 \
           fashion-cma-s0 fashion-dense/dense128 fashion-cma-s0-74kb fashion-cma-s0-p10; do
  slicenet export "runs/$run" --target onnx
done
for run in mnist-cma-s0 mnist-cma-s0-74kb-cosine; do
  for target in openvino jetson ncs2; do slicenet export "runs/$run" --target "$target"; done
done
# Host latency, ONNX Runtime, batch 1, one interleaved run per dataset (the first bundle is the ratio's base).
slicenet bench export/mnist-dense-dense128/onnx export/mnist-cma-s0/onnx export/mnist-cma-s0-74kb/onnx \
  export/mnist-cma-s0-74kb-cosine/onnx export/mnist-cma-s0-p10/onnx --runtime onnxruntime --threads 1 --count 4000 \
  --json results/bench-mnist-onnxruntime.json
slicenet bench export/fashion-dense-dense128/onnx export/fashion-cma-s0/onnx export/fashion-cma-s0-74kb/onnx \
  export/fashion-cma-s0-p10/onnx --runtime onnxruntime --threads 1 --count 2000
slicenet bench export/mnist-cma-s0/openvino export/mnist-cma-s0-74kb-cosine/openvino --runtime openvino --threads 1 \
  --count 2000
slicenet report
