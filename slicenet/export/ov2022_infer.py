"""Classify a bundle's sample images with OpenVINO 2022.3's own Python API (run by ``ov2022.py``).

It runs under a CPython 3.10 with the openvino==2022.3.2 wheel and numpy on its path (2022.3 has no
wheel for newer Pythons), imports nothing from slicenet, and prints one JSON object:

    python3.10 ov2022_infer.py SAMPLES.npy DEVICE MODEL [MODEL ...]
    {"release": "2022.3.2-...", "models": {MODEL: {"read": true, "compiled": true,
     "classes": [...], "error": ""}}}
"""

import json
import sys

import numpy as np


def classify(core, path, samples, device):
    row = {"read": False, "compiled": False, "classes": [], "error": ""}
    try:
        model = core.read_model(path)
        row["read"] = True
        # f32 on the CPU: what the graph says (AMX CPUs default to bf16).
        compiled = core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {})
        row["compiled"] = True
        batch = int(compiled.input(0).get_shape()[0])
        request = compiled.create_infer_request()
        output = compiled.output("class")
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            real = len(chunk)
            if real < batch:  # the last batch padded with its final image
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
            result = request.infer({0: np.ascontiguousarray(chunk)})
            row["classes"].extend(int(c) for c in np.asarray(result[output]).reshape(-1)[:real])
    except Exception as exc:  # noqa: BLE001 -- whatever 2022.3 raises is the answer
        row["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return row


def main(argv):
    from openvino.runtime import Core, get_version

    samples = np.load(argv[0])
    core = Core()
    models = {path: classify(core, path, samples, argv[1]) for path in argv[2:]}
    print(json.dumps({"release": get_version(), "models": models}))
    return 0 if all(m["compiled"] for m in models.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
