#!/usr/bin/env bash
# The NCS2 enrollable bundle's two places for the k-NN distance step (issue 23), measured on this host's
# CPU with OpenVINO: run from the folder whose runs/ holds runs/mnist04-cma-s0 (run_transfer.sh).
# 1. export the 0-4 trunk for the NCS2 with the bank outside the graph (and in the stick's ranking graph);
# 2. enrol digits 5-9 from 20 images each with the board runner alone (numpy + OpenVINO, no torch);
# 3. time the whole graph (5 classes), the trunk + numpy k-NN and the ranking graph + label vote, interleaved.
set -euo pipefail
OUT=${OUT:-results/transfer}
slicenet export runs/mnist04-cma-s0 --target ncs2 --enrollable --out export-stick
B=export-stick/mnist04-cma-s0/ncs2
# the first 20 training images of each of 5-9, as PNG class folders (what a user copies to the board)
python - <<'PY'
from pathlib import Path
from PIL import Image
from slicenet.data import load_dataset
data = load_dataset("mnist#5-9")
for c, name in enumerate(data.class_names):
    folder = Path("new-digits") / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(data.x_train[data.y_train == c][:20]):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
PY
python3 $B/run_engine.py enrol $B new-digits --per-class 20
python3 $B/run_engine.py run --bundle $B --runtime openvino --distance host --out "$OUT/stick_run_host.json"
python3 $B/run_engine.py run --bundle $B --runtime openvino --distance stick --out "$OUT/stick_run_stick.json"
slicenet bench $B --runtime openvino --distance graph host stick --count 2000 --rounds 5 --json "$OUT/stick_bench.json" \
  --results "$OUT/bench"
