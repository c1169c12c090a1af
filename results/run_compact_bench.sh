#!/usr/bin/env bash
# Compact engines, exports and host latency (after run_mnist.sh and run_fashion.sh), one at a time on
# an otherwise idle machine.
set -euo pipefail
# Unchanged since slicenet 0.2: slicenet baseline --hidden 128 --epochs 20 --patience 20 --threads 1 --out runs/mnist-dense-20ep --quiet
# The most accurate engines within 74 KB (LVQ, the default), and k-means for comparison.
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --out runs/mnist-cma-s0-74kb
# The same search ranking each setting by its mean over 3 random validation splits: MNIST-5k's split
# holds 1,000 images, so one split ranks the 3,672 settings within its noise (it picks the same engine).
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --splits 3 --out runs/mnist-cma-s0-74kb-3splits
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --method kmeans --out runs/mnist-cma-s0-74kb-kmeans
slicenet condense runs/fashion-cma-s0 --budget-kb 74 --out runs/fashion-cma-s0-74kb
slicenet condense runs/fashion-cma-s0 --budget-kb 74 --method kmeans --out runs/fashion-cma-s0-74kb-kmeans
# Engines for latency: within 74 KB and 120,000 multiply-adds per image. The trunk takes 108,800, so
# the head may take 11,200 at most, against 17,664 for the dense-128 head (126,464 in all). Cosine:
# its graph has no query normalisation (see slicenet/export.py).
slicenet condense runs/mnist-cma-s0 --budget-kb 74 --budget-macs 120000 --metric cosine --out runs/mnist-cma-s0-120kmacs
slicenet condense runs/fashion-cma-s0 --budget-kb 74 --budget-macs 120000 --metric cosine \
  --out runs/fashion-cma-s0-120kmacs
# Smaller engines: 24 KB on Fashion, 10 prototypes per class (int8, cosine, 1-NN) on both.
slicenet condense runs/fashion-cma-s0 --budget-kb 24 --out runs/fashion-cma-s0-24kb
slicenet condense runs/mnist-cma-s0 --prototypes 10 --precision int8 --metric cosine --out runs/mnist-cma-s0-p10
slicenet condense runs/fashion-cma-s0 --prototypes 10 --precision int8 --metric cosine --out runs/fashion-cma-s0-p10
# The leanest heads that keep the accuracy targets: 5 per class, one Gemm of 6,400 multiply-adds.
slicenet condense runs/mnist-cma-s0 --prototypes 5 --precision int8 --metric cosine --out runs/mnist-cma-s0-p5
slicenet condense runs/fashion-cma-s0 --prototypes 5 --precision int8 --metric cosine --out runs/fashion-cma-s0-p5
# The bank and the trunk's last layer fitted to each other (kept where validation beats plain LVQ; on
# MNIST-5k it does not, and `--method joint` returns the LVQ engine above).
slicenet condense runs/fashion-cma-s0 --prototypes 10 --precision int8 --metric cosine --n-neighbors 1 --window 0.1 \
  --method joint --out runs/fashion-cma-s0-p10-joint
slicenet condense runs/fashion-cma-s0 --budget-kb 74 --budget-macs 120000 --metric cosine --method joint \
  --out runs/fashion-cma-s0-120kmacs-joint
for run in mnist-cma-s0 mnist-dense/dense128 mnist-cma-s0-74kb mnist-cma-s0-74kb-3splits mnist-cma-s0-74kb-kmeans \
           mnist-cma-s0-120kmacs mnist-cma-s0-p10 mnist-cma-s0-p5 fashion-cma-s0 fashion-dense/dense128 fashion-cma-s0-74kb fashion-cma-s0-74kb-kmeans \
           fashion-cma-s0-120kmacs fashion-cma-s0-24kb fashion-cma-s0-p10 fashion-cma-s0-p10-joint \
           fashion-cma-s0-120kmacs-joint fashion-cma-s0-p5; do
  slicenet export "runs/$run" --target onnx
done
for run in mnist-cma-s0 mnist-cma-s0-74kb mnist-cma-s0-120kmacs; do
  for target in openvino jetson ncs2; do slicenet export "runs/$run" --target "$target"; done
done
# Host latency, ONNX Runtime, 1 thread, batch 1, the dense-128 baseline first (the ratios' base); a
# difference counts only where all rounds of a run agree (10 rounds of fresh sessions for the compact
# engines). They are timed without the full-bank engines: interleaved with a 10-30 MB engine, every
# small engine runs from a cold cache.
slicenet bench export/mnist-dense-dense128/onnx export/mnist-cma-s0-120kmacs/onnx export/mnist-cma-s0-74kb/onnx \
  export/mnist-cma-s0-74kb-kmeans/onnx export/mnist-cma-s0-p10/onnx export/mnist-cma-s0-p5/onnx --runtime onnxruntime \
  --threads 1 --count 10000 --rounds 10 --json results/bench-mnist-onnxruntime.json
slicenet bench export/fashion-dense-dense128/onnx export/fashion-cma-s0-120kmacs/onnx export/fashion-cma-s0-74kb/onnx \
  export/fashion-cma-s0-74kb-kmeans/onnx export/fashion-cma-s0-24kb/onnx export/fashion-cma-s0-p10/onnx \
  export/fashion-cma-s0-p10-joint/onnx export/fashion-cma-s0-120kmacs-joint/onnx export/fashion-cma-s0-p5/onnx \
  --runtime onnxruntime --threads 1 --count 10000 --rounds 10
# A control for the noise: the two datasets' dense-128 engines are the same graph with other weights,
# so their ratio is what equal graphs measure in the same rounds, beside the leanest compact engines.
slicenet bench export/mnist-dense-dense128/onnx export/fashion-dense-dense128/onnx export/mnist-cma-s0-p5/onnx \
  export/fashion-cma-s0-p5/onnx --runtime onnxruntime --threads 1 --count 10000 --rounds 10
slicenet bench export/mnist-dense-dense128/onnx export/mnist-cma-s0/onnx --runtime onnxruntime --threads 1 --count 2000
slicenet bench export/fashion-dense-dense128/onnx export/fashion-cma-s0/onnx --runtime onnxruntime --threads 1 \
  --count 1000
slicenet bench export/mnist-cma-s0/openvino export/mnist-cma-s0-74kb/openvino --runtime openvino --threads 1 \
  --count 2000
# The local-mean head's cost: the same trunk and 20,000-prototype bank, majority against local mean.
for target in onnx openvino jetson ncs2; do slicenet export runs/mnist-cma-lm-s0 --target "$target"; done
slicenet bench export/mnist-cma-s0/onnx export/mnist-cma-lm-s0/onnx --runtime onnxruntime --threads 1 --count 2000 \
  --rounds 5
slicenet report
