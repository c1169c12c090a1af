"""CPU against CUDA (issue 21): two runs of one seed, one searched on each device, compared on the test split.

    python results/scale/compare_devices.py runs/CPU-RUN runs/CUDA-RUN OUT.json

It reports how far their trunks and banks are apart, each engine's test predictions computed on the CPU and on
the GPU, how many of those agree, and how many test images are a near tie (an answer float32 rounding can
change, Engine.near_ties). Run by results/scale/gpu_bench.sh on a machine with a CUDA GPU.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from slicenet import pipeline, runs
from slicenet.atomic import write_json
from slicenet.data import evaluation_set


def main(cpu_dir: str, cuda_dir: str, out: str) -> int:
    cpu_run, cuda_run = Path(cpu_dir), Path(cuda_dir)
    engines = {"cpu_search": runs.load_engine(cpu_run), "cuda_search": runs.load_engine(cuda_run)}
    config = runs.load_config(cpu_run)
    first = engines["cpu_search"]
    images, labels, names = evaluation_set(config.dataset, first.image_size[0], split="test")
    labels = pipeline.class_index(names, first.class_names)[labels]
    predicted = {}
    for name, engine in engines.items():
        for device in ("cpu", "cuda"):
            predicted[f"{name}_on_{device}"] = engine.to(device).predict(images)[0]
    largest = [max(float((wa - wb).abs().max()), float((ba - bb).abs().max()))
               for (wa, ba), (wb, bb) in zip(first.weights, engines["cuda_search"].weights, strict=True)]
    bank = [getattr(engine.head, "bank", None) for engine in engines.values()]
    same_bank_shape = bank[0] is not None and bank[1] is not None and bank[0].shape == bank[1].shape
    keys = list(predicted)
    result = {
        "runs": {"cpu_search": str(cpu_run), "cuda_search": str(cuda_run)},
        "metrics": {name: {k: runs.load_metrics(run).get(k) for k in (
            "device", "test_accuracy", "validation_accuracy", "search_seconds", "wall_seconds", "evaluations")}
            for name, run in (("cpu_search", cpu_run), ("cuda_search", cuda_run))},
        "n_test": len(labels),
        "accuracy": {key: float(np.mean(predicted[key] == labels)) for key in keys},
        "disagreements": {f"{a} vs {b}": int(np.sum(predicted[a] != predicted[b]))
                          for i, a in enumerate(keys) for b in keys[i + 1:]},
        "near_ties": {name: engine.near_ties(images) for name, engine in engines.items()},
        "max_weight_difference_per_layer": largest,
        "identical_trunks": all(d == 0.0 for d in largest),
        "identical_banks": bool(same_bank_shape and torch.equal(bank[0], bank[1])),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
