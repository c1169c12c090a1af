"""Latency benchmarks of exported bundles on the host, a cost model per board, and board results.

Several bundles are timed *interleaved* (A B A B ...), one single-image inference each turn, so
that machine drift (frequency scaling, another process) falls on all of them alike; the report
gives each one's ratio to the first. Field names follow OpenVINO's benchmark_app and ONNX Runtime's
perf_test: count, duration, latency percentiles, throughput, first inference, session creation.

The cost model counts FLOPs and bytes moved per inference from the exported ONNX graph and turns
them into a roofline estimate for each board in ``devices/profiles.toml``: always labelled an
estimate, never mixed with measured board results (``--ingest``).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

RUNTIMES = ("onnxruntime", "openvino", "torch")
INGEST_FIELDS = ("board", "runtime", "runtime_version", "precision", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                 "throughput_fps")  # what a board result must carry (trtexec gives no p90: None there)


@dataclass
class Session:
    name: str
    bundle: Path
    runtime: str
    runtime_version: str
    infer: object  # callable(image) -> None
    sample: np.ndarray
    model_bytes: int
    session_creation_ms: float
    peak_rss_mb: float
    first_inference_ms: float = 0.0
    distance: str = "graph"  # an enrollable bundle's distance step: graph (inside it), host or stick


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def open_run(run_dir: Path, *, threads: int, batch: int) -> Session:
    """A run directory's engine in PyTorch (the reference implementation), timed like a bundle."""
    import torch

    from .data import load_dataset
    from .runs import ENGINE, load_config, load_engine

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    engine = load_engine(run_dir)
    created = time.perf_counter() - started
    dataset = load_dataset(load_config(run_dir).dataset, engine.image_size[0])
    sample = dataset.x_test[:batch][:, None]

    def infer(image, engine=engine):
        engine.predict(image[:, 0])

    return Session(f"{run_dir.name}/torch", run_dir, "torch", torch.__version__, infer, sample,
                   (run_dir / ENGINE).stat().st_size, created * 1000.0, _peak_rss_mb())


DISTANCES = ("graph", "host", "stick")  # the whole graph; an enrollable bundle's trunk + numpy vote; its ranking graph


def open_bundle(bundle: Path, runtime: str, *, threads: int, batch: int | None = None,
                distance: str = "graph") -> Session:
    """A timed session of ``bundle`` in ``runtime``. ``distance`` picks what an enrollable bundle runs:
    its whole graph (the bank inside), its trunk graph with the k-NN step in numpy over the bank files
    ("host", as ``run_engine.py run`` does), or its ranking graph with only the label vote in numpy
    ("stick", ``run --distance stick``)."""
    if runtime == "torch":
        if distance != "graph":
            raise InputError("--distance host or stick times an exported enrollable bundle, not --runtime torch")
        if (bundle / "manifest.json").is_file():
            raise InputError(f"{bundle} is an exported bundle: --runtime torch times run directories (runs/<name>); "
                             "time a bundle with --runtime onnxruntime or openvino")
        return open_run(bundle, threads=threads, batch=batch or 1)
    if distance not in DISTANCES:
        raise InputError(f"unknown --distance {distance!r}: expected one of {', '.join(DISTANCES)}")
    from .export import read_manifest

    manifest = read_manifest(bundle)
    exported = int(manifest["input"]["shape"][0])
    if batch is not None and batch != exported:
        raise InputError(f"{bundle} is exported for batch {exported}, not {batch}: "
                         f"run 'slicenet export RUN --target T --batch {batch}' and bench that bundle")
    sample = np.load(bundle / manifest["samples"]["file"])[:exported]
    name = str(bundle).rstrip("/")  # as the user named it: two bundles of one run in other folders stay apart
    spec = manifest.get("enrollable") or {}
    if distance != "graph" and not (spec.get("stick") if distance == "stick" else spec):
        raise InputError(f"{bundle} has no {distance}-side distance step: export it with --enrollable" +
                         (" --target ncs2 and a majority vote" if distance == "stick" else ""))
    if distance == "stick" and runtime != "openvino":
        raise InputError("--distance stick times the stick's ranking graph, an IR: use --runtime openvino")
    outputs = {"graph": ["class", "votes"], "host": ["embedding"], "stick": ["nearest"]}[distance]
    if runtime == "onnxruntime":
        model = bundle / (spec.get("model", "").replace(".xml", ".onnx") if distance == "host"
                          else manifest["onnx_model"])
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        started = time.perf_counter()
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        created = time.perf_counter() - started
        from .boards.run_engine import input_type

        sample = sample.astype(input_type(session))  # once, outside the timing: float32 pixels for the Jetson

        def infer(image, session=session):
            return session.run(outputs, {"image": image})[0]

        version = ort.__version__
        model_bytes = model.stat().st_size
    elif runtime == "openvino":
        model = bundle / {"graph": manifest["model"], "host": spec.get("model", ""),
                          "stick": spec.get("stick", {}).get("model", "")}[distance]
        import openvino as ov

        from .export import OPENVINO_EXACT_CPU

        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", **OPENVINO_EXACT_CPU}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        started = time.perf_counter()
        compiled = ov.Core().compile_model(str(model), "CPU", config)
        created = time.perf_counter() - started
        request = compiled.create_infer_request()

        def infer(image, request=request):
            return request.infer({"image": image})[outputs[0]]

        version = ov.__version__
        model_bytes = sum(p.stat().st_size for p in (model, model.with_suffix(".bin")) if p.is_file())
    else:
        raise InputError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if distance != "graph":  # the board runner's own vote, over the bundle's (enrolled) bank
        from .boards import run_engine

        wrap = run_engine.enrollable_infer if distance == "host" else run_engine.stick_infer
        infer = wrap(str(bundle), manifest, infer)
        model_bytes += sum((bundle / spec[f]).stat().st_size for f in ("bank", "bank_labels"))
        name += f" ({distance} distance)"
    return Session(name, bundle, runtime, version, infer, sample, model_bytes, created * 1000.0, _peak_rss_mb(),
                   distance=distance)


def run_interleaved(sessions: list[Session], count: int, warmup: int) -> dict[str, list[float]]:
    """Latencies in ms per session, timed A B A B ...; returns {name: [ms, ...]} and the order used."""
    for s in sessions:
        started = time.perf_counter()
        s.infer(s.sample)  # type: ignore[operator]
        s.first_inference_ms = (time.perf_counter() - started) * 1000.0
    for _ in range(warmup):
        for s in sessions:
            s.infer(s.sample)  # type: ignore[operator]
    latencies: dict[str, list[float]] = {s.name: [] for s in sessions}
    for _ in range(count):
        for s in sessions:
            started = time.perf_counter()
            s.infer(s.sample)  # type: ignore[operator]
            latencies[s.name].append((time.perf_counter() - started) * 1000.0)
    return latencies


def run_rounds(open_sessions: Callable[[], list[Session]], *, count: int, warmup: int,
               rounds: int) -> tuple[list[Session], dict[str, list[float]]]:
    """``count`` interleaved inferences per bundle in ``rounds`` rounds, each with every bundle opened
    afresh (new runtime sessions, new buffers) and the order rotated by one.

    Where a session's memory lands, and which bundle runs after which, moves a bundle's latency by a
    few per cent for the whole life of the session; with fresh sessions each round, the rounds
    sample that instead of repeating one draw. Returns the first round's sessions (session
    creation and first inference are theirs) and every latency, round after round."""
    latencies: dict[str, list[float]] = {}
    first: list[Session] = []
    for index, size in enumerate(len(block) for block in np.array_split(np.arange(count), rounds)):
        sessions = open_sessions()
        first = first or sessions
        shift = index % len(sessions)
        for name, values in run_interleaved(sessions[shift:] + sessions[:shift], size, warmup).items():
            latencies.setdefault(name, []).extend(values)
    return first, {s.name: latencies[s.name] for s in first}


def round_ratios(latencies: list[float], first: list[float], rounds: int) -> list[float]:
    """p50 ratios to the first bundle in each of the ``rounds`` rounds (consecutive blocks) of a run.

    One run's overall ratio can come from a stretch of drift; a ratio below 1 in every block is a
    difference that holds over the whole run, not a lucky stretch."""
    blocks = np.array_split(np.asarray(latencies), rounds)
    first_blocks = np.array_split(np.asarray(first), rounds)
    return [float(np.median(a) / np.median(b)) for a, b in zip(blocks, first_blocks, strict=True) if len(a)]


def summarise(session: Session, latencies: list[float], *, threads: int, batch: int = 1) -> dict:
    values = np.asarray(latencies)
    return {
        "name": session.name, "bundle": str(session.bundle), "runtime": session.runtime,
        "run_bundle": Path(session.bundle).resolve().parent.name if session.runtime != "torch" else session.name,
        "runtime_version": session.runtime_version, "threads": threads, "batch": batch, "count": len(values),
        "duration_s": float(values.sum() / 1000.0),
        "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()),
        "min_ms": float(values.min()), "max_ms": float(values.max()),
        "throughput_fps": float(batch * 1000.0 / values.mean()), "first_inference_ms": session.first_inference_ms,
        "session_creation_ms": session.session_creation_ms, "model_bytes": session.model_bytes,
        "peak_rss_mb": session.peak_rss_mb, "distance_step": session.distance,
    }


# -- cost model -------------------------------------------------------------------------------------

def graph_cost(model) -> dict:
    """FLOPs (a multiply-add counts 2) and bytes moved per inference, from an ONNX graph.

    Bytes moved = every initializer read once + every node's input and output activations read or
    written once (float32 unless typed otherwise): a lower bound that ignores caches.
    """
    import onnx
    from onnx import numpy_helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    itemsize: dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value for d in dims)
        itemsize[value.name] = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for name, array in weights.items():
        shapes[name], itemsize[name] = array.shape, array.itemsize

    def size(name: str) -> int:
        return int(np.prod(shapes.get(name, ()))) if name in shapes else 0

    flops, activation_bytes = 0, 0
    per_op: dict[str, int] = {}
    for n in model.graph.node:
        out = n.output[0]
        if n.op_type == "Conv":
            weight = shapes[n.input[1]]
            node_flops = 2 * size(out) * int(np.prod(weight[1:]))
        elif n.op_type == "MatMul":
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            node_flops = 2 * int(np.prod(a)) * b[-1]
        elif n.op_type == "Gemm":
            a, b = shapes[n.input[0]], shapes[n.input[1]]
            node_flops = 2 * int(np.prod(a)) * b[-1] + size(out)
        elif n.op_type == "MaxPool":
            kernel = next(a.ints for a in n.attribute if a.name == "kernel_shape")
            node_flops = size(out) * int(np.prod(kernel))
        elif n.op_type in ("ReduceSum", "TopK", "ArgMax", "Softmax"):
            node_flops = size(n.input[0])
        elif n.op_type in ("Reshape", "Gather", "Cast"):
            node_flops = 0
        else:
            node_flops = size(out)
        flops += node_flops
        per_op[n.op_type] = per_op.get(n.op_type, 0) + node_flops
        for name in list(n.input) + list(n.output):
            if name and name not in weights:
                activation_bytes += size(name) * itemsize.get(name, 4)
    weight_bytes = sum(int(a.nbytes) for a in weights.values())
    return {"flops": int(flops), "weight_bytes": weight_bytes, "activation_bytes": int(activation_bytes),
            "bytes_moved": weight_bytes + int(activation_bytes), "flops_by_op": per_op}


def load_profiles(path: Path) -> dict:
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read board profiles {path}: {exc}") from None


def estimates(cost: dict, profiles: dict, *, operations: int = 0) -> list[dict]:
    """Latency estimate per board and power mode: the roofline max(compute time, memory time) plus the
    per-inference overhead the profile states (``fixed_us``, and ``per_op_us`` for each of the graph's
    ``operations``: a kernel launch on the Jetson, a layer dispatch on the stick), both scaled by the
    mode's clock. Estimates, always labelled so; a measurement (``--ingest``) replaces them."""
    rows = []
    for board, profile in profiles.get("boards", {}).items():
        for mode, numbers in profile.get("modes", {}).items():
            scale = 0.5 if numbers.get("fp16") else 1.0  # FP16 halves the bytes moved
            compute_s = cost["flops"] / (numbers["peak_gflops"] * 1e9)
            memory_s = cost["bytes_moved"] * scale / (numbers["bandwidth_gbs"] * 1e9)
            overhead_s = (numbers.get("fixed_us", 0.0) + numbers.get("per_op_us", 0.0) * operations) * 1e-6
            rows.append({"board": profile.get("name", board), "mode": mode, "kind": "estimate",
                         "estimated_ms": 1000.0 * (max(compute_s, memory_s) + overhead_s),
                         "bound": "overhead" if overhead_s > max(compute_s, memory_s)
                         else "compute" if compute_s >= memory_s else "memory",
                         "roofline_ms": 1000.0 * max(compute_s, memory_s), "overhead_ms": 1000.0 * overhead_s,
                         "peak_gflops": numbers["peak_gflops"], "bandwidth_gbs": numbers["bandwidth_gbs"]})
    return rows


def parse_trtexec(text: str) -> dict:
    """The performance summary of a ``trtexec`` run (TensorRT 8.x's format: "Throughput: 2130.5 qps",
    "Latency: min = 0.41 ms, max = 1.2 ms, mean = 0.45 ms, median = 0.44 ms, percentile(99%) = 0.61 ms",
    the same for "GPU Compute Time"), as the fields of a board result."""
    import re

    def summary(name: str) -> dict[str, float] | None:
        match = re.search(rf"\] {re.escape(name)}: min = ([\d.e+-]+) ms, max = ([\d.e+-]+) ms, mean = ([\d.e+-]+) ms, "
                          r"median = ([\d.e+-]+) ms, percentile\((\d+(?:\.\d+)?)%\) = ([\d.e+-]+) ms", text)
        if match is None:
            match = re.search(rf"^{re.escape(name)}: min = ([\d.e+-]+) ms, max = ([\d.e+-]+) ms, mean = ([\d.e+-]+) "
                              r"ms, median = ([\d.e+-]+) ms, percentile\((\d+(?:\.\d+)?)%\) = ([\d.e+-]+) ms",
                              text, re.M)
        if match is None:
            return None
        low, high, mean, median, percent, value = match.groups()
        return {"min_ms": float(low), "max_ms": float(high), "mean_ms": float(mean), "p50_ms": float(median),
                "percentile": float(percent), "percentile_ms": float(value)}

    latency = summary("Latency")
    throughput = re.search(r"Throughput: ([\d.e+-]+) qps", text)
    if latency is None or throughput is None:
        raise ValueError("no trtexec performance summary (Throughput: ... qps and Latency: min = ...) in it")
    queries = re.search(r"Timing trace has (\d+) queries over ([\d.e+-]+) s", text)
    version = re.search(r"TensorRT version: ([\d.]+)|\[TensorRT v(\d+)\]", text)
    precision = re.search(r"Precision: (\S+)", text)
    result = {"runtime": "tensorrt", "runtime_version": next((g for g in version.groups() if g), "") if version else "",
              "p50_ms": latency["p50_ms"], "mean_ms": latency["mean_ms"], "min_ms": latency["min_ms"],
              "max_ms": latency["max_ms"], "throughput_fps": float(throughput.group(1)),
              "p90_ms": None, "p99_ms": latency["percentile_ms"] if latency["percentile"] == 99 else None,
              f"p{latency['percentile']:g}_ms": latency["percentile_ms"],
              "precision": ("fp16" if "FP16" in precision.group(1) else "fp32") if precision else None,
              "measured_on": "board", "device": "GPU (TensorRT)", "source": "trtexec"}
    gpu = summary("GPU Compute Time")
    if gpu is not None:
        result["gpu_compute_p50_ms"] = gpu["p50_ms"]
    if queries is not None:
        result["count"], result["duration_s"] = int(queries.group(1)), float(queries.group(2))
    return result


def ingest(path: Path, *, bundle: Path | None = None, board: str | None = None, precision: str | None = None) -> dict:
    """A board result, checked field by field: the result.json of devices/run_engine.py, or a trtexec log
    (with ``bundle``, the exported bundle it timed). Results the runner measured on the host CPU (no
    stick, no Jetson GPU) are kept as host results, never as a board's."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"ingest file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ingest file {path}: {exc}") from None
    if "Throughput:" in text and "qps" in text:
        if bundle is None:
            raise InputError(f"{path} is a trtexec log: name the bundle it timed with --bundle export/<run>/jetson")
        try:
            data = parse_trtexec(text)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}; pass the output of trtexec --loadEngine=engine.plan ...") from None
        from .export import read_manifest

        manifest = read_manifest(bundle)
        data.update(bundle=f"{Path(bundle).resolve().parent.name}/{Path(bundle).name}", target=manifest["target"],
                    board=board or "NVIDIA Jetson Nano", precision=precision or data["precision"] or "fp16")
        if data["target"] != "jetson":
            raise InputError(f"{bundle} is a {data['target']} bundle; trtexec results belong to a jetson bundle")
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"ingest file {path} is not valid JSON ({exc}); expected the result.json written "
                             "by devices/run_engine.py, or a trtexec log") from None
        if not isinstance(data, dict):
            raise InputError(f"ingest file {path}: expected a JSON object written by devices/run_engine.py")
        for field in INGEST_FIELDS:
            if field not in data:
                raise InputError(f"ingest file {path} lacks the field {field!r}; expected the result.json written "
                                 "by devices/run_engine.py")
        if board:
            data["board"] = board
        data.setdefault("measured_on", _measured_on(data))
    for field in INGEST_FIELDS[4:]:
        value = data.get(field)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise InputError(f"ingest file {path}: field {field!r} must be a non-negative number, got {value!r}")
    return {**data, "kind": "measured" if data["measured_on"] == "board" else "host-runner",
            "ingested_from": str(path)}


def _measured_on(data: dict) -> str:
    """For results of runners before they said: a MYRIAD device or a Jetson's GPU is a board."""
    device, runtime = str(data.get("device", "")), str(data.get("runtime", ""))
    on_gpu = "CUDA" in device or "Tensorrt" in device or "tensorrt" in runtime
    return "board" if "MYRIAD" in device or ("Jetson" in str(data.get("board", "")) and on_gpu) else "host"
