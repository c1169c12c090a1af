#!/usr/bin/env python3
"""Run an exported slicenet bundle on a board and time it.

Runs on a Jetson Nano (JetPack 4.6, Python 3.6, onnxruntime-gpu 1.11 from the Jetson Zoo, or CPU
onnxruntime) and on a host with only OpenVINO 2022.3 and numpy (NCS2: --device MYRIAD). It imports
neither torch nor slicenet, and keeps to Python 3.6 syntax (the tests check that with a tool).

    python3 run_engine.py --runtime onnxruntime [--providers CUDAExecutionProvider]
    python3 run_engine.py --runtime tensorrt [--precision fp16]     # Jetson: onnxruntime-gpu's TensorRT provider
    python3 run_engine.py --runtime openvino --device MYRIAD [--model engine.blob]

It checks the sha256 of every file against manifest.json, runs the shipped sample images, checks
their predictions against the expected ones, times warm-up then timed single-image inferences, and
writes result.json for `slicenet bench --ingest result.json`.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def fail(message):
    sys.stderr.write("run_engine: error: " + message + "\n")
    sys.exit(2)


def check_files(folder, manifest):
    for name, digest in sorted(manifest["sha256"].items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            fail(f"{name} is missing from the bundle; copy the whole folder")
        with open(path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != digest:
            fail(f"{name} has sha256 {actual} but the manifest says {digest}: the copy is damaged")


def onnxruntime_runner(model_path, providers, tensorrt=False, fp16=False, cache=None):
    try:
        import onnxruntime as ort
    except ImportError:
        fail("onnxruntime is not installed: pip3 install onnxruntime (on the Jetson Nano: onnxruntime-gpu 1.11.0 "
             "for JetPack 4.6, see the bundle's README)")
    available = ort.get_available_providers()
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            fail("onnxruntime here has no TensorRT execution provider (it has " + ", ".join(available) + "): on the "
                 "Jetson Nano install onnxruntime-gpu 1.11.0 for JetPack 4.6 (see the bundle's README)")
        options = {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": cache or "."}
        chosen = [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        chosen = [p for p in chosen if (p[0] if isinstance(p, tuple) else p) in available]
    else:
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    started = time.perf_counter()
    session = ort.InferenceSession(model_path, providers=chosen)
    created = time.perf_counter() - started

    def infer(image):
        outputs = session.run(["class", "votes"], {"image": image})
        return [int(c) for c in np.asarray(outputs[0]).reshape(-1)]

    return infer, created, "onnxruntime", ort.__version__, ",".join(session.get_providers())


def openvino_runner(model_path, device):
    try:
        try:
            from openvino.runtime import Core  # 2022.3
        except ImportError:
            from openvino import Core  # newer releases
        import openvino
    except ImportError:
        fail("openvino is not installed: for the NCS2 install OpenVINO 2022.3 from its archive and source its "
             "setupvars.sh (see the bundle's README)")

    core = Core()
    if device != "CPU" and device not in core.available_devices:
        fail("OpenVINO sees no " + device + " device (it sees " + (", ".join(core.available_devices) or "none") +
             "): plug the stick in, install its USB rules (install_NCS_udev_rules.sh, see the bundle's README) and "
             "run setupvars.sh of OpenVINO 2022.3, or use --device CPU")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        # Compute what the graph says: no bf16 (the default on AMX CPUs) and, where the release has
        # it (2024 and later), no on-the-fly int8 quantisation of activations beside int8 weights.
        config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
                config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        except Exception:  # a release without the property list: nothing to turn off
            pass
    started = time.perf_counter()
    if model_path.endswith(".blob"):  # compiled for the stick by compile_tool
        import io

        with open(model_path, "rb") as handle:
            compiled = core.import_model(io.BytesIO(handle.read()), device, config)
    else:
        compiled = core.compile_model(model_path, device, config)
    created = time.perf_counter() - started
    request = compiled.create_infer_request()
    output = compiled.output("class")

    def infer(image):
        result = request.infer({"image": image})
        return [int(c) for c in np.asarray(result[output]).reshape(-1)]

    version = getattr(openvino, "__version__", None) or openvino.runtime.get_version()
    return infer, created, "openvino", version, device


def power_mode():
    """The Jetson power mode (nvpmodel -q), or None elsewhere."""
    try:
        output = subprocess.check_output(["nvpmodel", "-q"], stderr=subprocess.STDOUT, timeout=5)
        return output.decode("utf-8", "replace").strip().splitlines()[0]
    except Exception:  # noqa: BLE001 -- no nvpmodel: not a Jetson
        return None


def device_name():
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8", "replace").strip("\x00 \n")
    return platform.node() + " (" + platform.machine() + ")"


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--runtime", choices=["onnxruntime", "tensorrt", "openvino"], required=True,
                        help="tensorrt: onnxruntime-gpu's TensorRT execution provider (the Jetson Nano)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16",
                        help="tensorrt: the precision TensorRT builds the engine in (default fp16, as trtexec --fp16)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU or MYRIAD")
    parser.add_argument("--providers", nargs="+", default=["CUDAExecutionProvider", "CPUExecutionProvider"])
    parser.add_argument("--model", help="model file inside the bundle (default: the manifest's)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--out", default="result.json")
    parser.add_argument("--board", help="name of the board for the result (default: read from the system)")
    args = parser.parse_args(argv)

    manifest_path = os.path.join(args.bundle, "manifest.json")
    if not os.path.isfile(manifest_path):
        fail(f"no manifest.json in {args.bundle}: pass --bundle <exported bundle folder>")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    check_files(args.bundle, manifest)
    model_path = os.path.join(args.bundle, args.model or manifest["model"])
    samples = np.load(os.path.join(args.bundle, manifest["samples"]["file"]))
    expected = manifest["samples"]["expected_classes"]
    if samples.ndim != 4 or len(samples) != len(expected):
        fail("samples.npy does not match the manifest's expected classes")
    batch = int(manifest["input"]["shape"][0])

    def chunk(start):
        """``batch`` samples from ``start``, wrapping around the shipped samples."""
        return samples[[(start + i) % len(samples) for i in range(batch)]]

    if not os.path.isfile(model_path):
        fail(args.model + " is not in the bundle: compile it first (see the bundle's README)" if args.model
             else manifest["model"] + " is missing from the bundle; copy the whole folder")
    if args.runtime in ("onnxruntime", "tensorrt"):
        infer, created, runtime, version, where = onnxruntime_runner(
            model_path, args.providers, tensorrt=args.runtime == "tensorrt", fp16=args.precision == "fp16",
            cache=args.bundle)
        if args.runtime == "tensorrt":
            runtime = "onnxruntime-tensorrt"
    else:
        infer, created, runtime, version, where = openvino_runner(model_path, args.device)
    if args.runtime == "tensorrt":
        precision = args.precision
    elif where == "MYRIAD" or manifest["target"] == "ncs2":
        precision = "fp16"
    else:
        precision = "fp32"
    board = "MYRIAD" in where or ("Jetson" in device_name() and ("CUDA" in where or "Tensorrt" in where))

    started = time.perf_counter()
    predicted = infer(chunk(0))
    first = time.perf_counter() - started
    for start in range(batch, len(samples), batch):
        predicted += infer(chunk(start))
    matches = sum(int(p == e) for p, e in zip(predicted[:len(expected)], expected))
    for i in range(args.warmup):
        infer(chunk(i * batch))
    latencies = []
    timed_start = time.perf_counter()
    for i in range(args.iterations):
        image = chunk(i * batch)
        t0 = time.perf_counter()
        infer(image)
        latencies.append((time.perf_counter() - t0) * 1000.0)
    duration = time.perf_counter() - timed_start
    result = {
        "format": "slicenet-board-result/2",
        "bundle": os.path.basename(manifest["run"].rstrip("/")) + "/" + os.path.basename(os.path.abspath(args.bundle)),
        "target": manifest["target"],
        "model": os.path.basename(model_path),
        "board": args.board or ("Intel Neural Compute Stick 2 (MYRIAD) on " + device_name() if "MYRIAD" in where
                                else device_name()),
        "measured_on": "board" if board else "host",
        "runtime": runtime,
        "runtime_version": str(version),
        "device": where,
        "precision": precision,
        "power_mode": power_mode(),
        "python": platform.python_version(),
        "batch": batch,
        "count": args.iterations,
        "duration_s": duration,
        "session_creation_ms": created * 1000.0,
        "first_inference_ms": first * 1000.0,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": float(np.mean(latencies)),
        "min_ms": float(np.min(latencies)),
        "max_ms": float(np.max(latencies)),
        "throughput_fps": args.iterations * batch / duration,
        "samples": len(expected),
        "samples_matching_expected": matches,
    }
    with open(args.out + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print("{}: p50 {:.3f} ms, p99 {:.3f} ms, {:.0f} inferences/s; {}/{} samples match -> {}".format(
        result["bundle"], result["p50_ms"], result["p99_ms"], result["throughput_fps"], matches, len(expected),
        args.out))
    if matches != len(expected):
        message = f"{len(expected) - matches} of {len(expected)} sample predictions differ from the expected ones"
        if result["precision"] == "fp32":
            fail(message)
        sys.stderr.write("run_engine: warning: " + message + " (FP16: see the manifest's verification for the "
                         "accuracy change FP16 weights bring)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
