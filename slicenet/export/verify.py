"""Running an exported model on this host (ONNX Runtime, OpenVINO on the CPU) and comparing every
prediction with the torch engine's before a bundle is declared good."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import Engine
from ..errors import InputError

# OpenVINO CPU settings that compute what the graph says: on CPUs with AMX it defaults to bf16, and
# since 2024 it quantises the activations of a MatMul whose weights are int8 (an int8 bank) to int8
# on the fly; either changes k-NN predictions (a neighbour 0.001 nearer than the next one swapped).
OPENVINO_EXACT_CPU = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}


@dataclass(frozen=True)
class Verification:
    images: int
    agreement: float  # share of test images whose exported prediction equals the torch engine's
    accuracy_torch: float
    accuracy_exported: float
    runtime: str
    precision: str
    near_ties: int = 0  # disagreements where float noise may legitimately swap the answer (Head.near_ties)

    @property
    def disagreements(self) -> int:
        return round((1 - self.agreement) * self.images)


def batches(images: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of ``batch`` images [batch, 1, H, W] (the last padded by repeating its final image) and
    how many of each chunk are real."""
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        yield np.ascontiguousarray(chunk[:, None]), real


def run_onnxruntime(path: Path, images: np.ndarray, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("onnxruntime is not installed: pip install 'slicenet[export]'") from None
    from ..boards.run_engine import input_type

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = input_type(session)
    classes: list[int] = []
    votes: list[np.ndarray] = []
    for chunk, real in batches(images, batch):
        c, v = session.run(["class", "votes"], {"image": chunk.astype(dtype)})
        classes.extend(int(x) for x in c[:real])
        votes.extend(v[:real])
    return np.array(classes), np.stack(votes)


def run_openvino(path: Path, images: np.ndarray, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    try:
        import openvino as ov
    except ImportError:
        raise InputError("openvino is not installed: pip install 'slicenet[export]'") from None
    compiled = ov.Core().compile_model(str(path), "CPU", OPENVINO_EXACT_CPU)
    request = compiled.create_infer_request()
    classes: list[int] = []
    votes: list[np.ndarray] = []
    for chunk, real in batches(images, batch):
        result = request.infer({"image": chunk})
        classes.extend(int(x) for x in np.asarray(result[compiled.output("class")]).reshape(-1)[:real])
        votes.extend(np.asarray(result[compiled.output("votes")])[:real])
    return np.array(classes), np.stack(votes)


RUNNERS = {"onnxruntime": run_onnxruntime, "openvino": run_openvino}


def verify(engine: Engine, path: Path, *, images: np.ndarray, labels: np.ndarray, runtime: str, precision: str,
           batch: int = 1) -> Verification:
    """Every prediction of the exported model at ``path`` against the torch engine's."""
    expected, _, _ = engine.predict(images)
    predicted, _ = RUNNERS[runtime](path, images, batch)
    differ = predicted != expected
    return Verification(len(images), float((~differ).mean()), float((expected == labels).mean()),
                        float((predicted == labels).mean()), runtime, precision, engine.near_ties(images[differ]))


def near_ties(engine: Engine, images: np.ndarray) -> int:
    return engine.near_ties(images)
