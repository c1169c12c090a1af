"""The engine's inference graph, described once, in a small vocabulary of named operations.

The engine (its views, trunk, post-processing and head, each describing its own part) writes the
graph into a ``Graph``; writers turn that one description into a file: ``export.onnx_writer`` an
ONNX model (opset 13 or 17, as the target says), ``export.ir_writer`` an OpenVINO IR of opset1 /
opset3 operations (what OpenVINO 2022.3, the last release with the NCS2's plugin, reads). So every
target gets every optimisation the description holds, and none can drift from another.

The vocabulary is ONNX's semantics with static attributes: a Reshape's shape, a ReduceSum's axes and
a TopK's k are Python ints here, and each writer makes them the constants its format wants. Axes
are non-negative. TopK always takes the largest k, sorted (TensorRT 8.2 ignores ``largest=0``, so
nearest neighbours are the largest of minus a distance). Integer constants are indices; a writer
may store them in the integer type its runtime prefers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OPS = ("Cast", "Conv", "Relu", "Tanh", "MaxPool", "Reshape", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div",
       "Neg", "Sqrt", "Max", "ReduceSum", "TopK", "Gather", "ArgMax", "Softmax")


@dataclass
class Node:
    op: str  # one of OPS
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tensor:
    name: str
    dtype: str  # numpy dtype name: uint8, float32, int64
    shape: tuple[int, ...]


class Graph:
    """A builder of named operations; each method returns its output's name."""

    def __init__(self, name: str = "slicenet_engine"):
        self.name = name
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self._names: set[str] = set()

    # -- structure -----------------------------------------------------------------------------

    def _fresh(self, name: str) -> str:
        base, index = name, 1
        while name in self._names:
            index += 1
            name = f"{base}_{index}"
        self._names.add(name)
        return name

    def input(self, name: str, dtype: str, shape: tuple[int, ...]) -> str:
        name = self._fresh(name)
        self.inputs.append(Tensor(name, dtype, tuple(shape)))
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        name = self._fresh(name)
        self.constants[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], name: str, n_outputs: int = 1, **attrs: Any) -> Any:
        assert op in OPS, op
        outputs = [self._fresh(name)] + [self._fresh(f"{name}_{i}") for i in range(1, n_outputs)]
        self.nodes.append(Node(op, list(inputs), outputs, attrs))
        return outputs[0] if n_outputs == 1 else tuple(outputs)

    def rename(self, old: str, new: str) -> None:
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
            node.outputs = [new if o == old else o for o in node.outputs]
        self._names.add(new)

    def output(self, name: str, value: str, dtype: str, shape: tuple[int, ...]) -> None:
        """Declare ``value`` a graph output called ``name``: its producer's output is renamed, and a
        tensor already called ``name`` (a head's per-view votes, before the views are summed) moves aside."""
        if value != name:
            if name in self._names:
                self.rename(name, self._fresh(f"{name}_per_row"))
            self.rename(value, name)
        self.outputs.append(Tensor(name, dtype, tuple(shape)))

    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def producer(self, name: str) -> Node | None:
        return next((n for n in self.nodes if name in n.outputs), None)

    def fold_constants(self) -> Graph:
        """Evaluate the Casts and Muls whose inputs are all constants (a stored int8 or fp16 bank
        decoded to float32), for writers whose format stores every weight at one precision anyway
        (the NCS2's FP16 IR). The values are those the graph would compute, exactly."""
        folded = Graph(self.name)
        folded.inputs, folded.outputs, folded._names = list(self.inputs), list(self.outputs), set(self._names)
        folded.constants = dict(self.constants)
        for node in self.nodes:
            if node.op in ("Cast", "Mul") and all(i in folded.constants for i in node.inputs):
                values = [folded.constants[i].astype(np.float32) for i in node.inputs]
                result = values[0] if node.op == "Cast" else values[0] * values[1]
                folded.constants[node.outputs[0]] = result
                continue
            folded.nodes.append(node)
        used = {i for n in folded.nodes for i in n.inputs} | {o.name for o in folded.outputs}
        folded.constants = {k: v for k, v in folded.constants.items() if k in used}
        return folded

    def with_float_input(self) -> Graph:
        """The same graph taking its uint8 inputs as float32 (the pixel values 0-255 unchanged), for a
        runtime with no uint8 type (TensorRT 8.2): each input's Cast to float32 is dropped and its
        readers read the input itself. uint8 -> float32 is exact, so every value is the graph's own."""
        changed = Graph(self.name)
        changed.outputs, changed._names = list(self.outputs), set(self._names)
        changed.constants = dict(self.constants)
        uint8 = {t.name for t in self.inputs if t.dtype == "uint8"}
        changed.inputs = [Tensor(t.name, "float32", t.shape) if t.name in uint8 else t for t in self.inputs]
        replaced: dict[str, str] = {}
        for node in self.nodes:
            if node.op == "Cast" and node.inputs[0] in uint8:
                replaced[node.outputs[0]] = node.inputs[0]
                continue
            changed.nodes.append(Node(node.op, [replaced.get(i, i) for i in node.inputs], list(node.outputs),
                                      dict(node.attrs)))
        return changed

    # -- operations ----------------------------------------------------------------------------

    def cast(self, x: str, *, name: str) -> str:
        """To float32."""
        return self.node("Cast", [x], name)

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray, *, stride: int, padding: int, name: str) -> str:
        return self.node("Conv", [x, self.constant(f"{name}.weight", weight), self.constant(f"{name}.bias", bias)],
                         name, kernel=int(weight.shape[-1]), stride=stride, padding=padding)

    def relu(self, x: str, *, name: str) -> str:
        return self.node("Relu", [x], name)

    def tanh(self, x: str, *, name: str) -> str:
        return self.node("Tanh", [x], name)

    def max_pool(self, x: str, size: int, *, name: str) -> str:
        return self.node("MaxPool", [x], name, size=size)

    def reshape(self, x: str, shape: tuple[int, ...], *, name: str) -> str:
        return self.node("Reshape", [x], name, shape=tuple(int(s) for s in shape))

    def matmul(self, a: str, b: str, *, name: str) -> str:
        return self.node("MatMul", [a, b], name)

    def gemm(self, a: str, b: str, c: str, *, name: str) -> str:
        """a @ b + c."""
        return self.node("Gemm", [a, b, c], name)

    def add(self, a: str, b: str, *, name: str) -> str:
        return self.node("Add", [a, b], name)

    def sub(self, a: str, b: str, *, name: str) -> str:
        return self.node("Sub", [a, b], name)

    def mul(self, a: str, b: str, *, name: str) -> str:
        return self.node("Mul", [a, b], name)

    def div(self, a: str, b: str, *, name: str) -> str:
        return self.node("Div", [a, b], name)

    def neg(self, x: str, *, name: str) -> str:
        return self.node("Neg", [x], name)

    def sqrt(self, x: str, *, name: str) -> str:
        return self.node("Sqrt", [x], name)

    def maximum(self, a: str, b: str, *, name: str) -> str:
        return self.node("Max", [a, b], name)

    def reduce_sum(self, x: str, *, axes: tuple[int, ...], keepdims: bool, name: str) -> str:
        return self.node("ReduceSum", [x], name, axes=tuple(axes), keepdims=bool(keepdims))

    def topk(self, x: str, k: int, *, axis: int, name: str) -> tuple[str, str]:
        """(values, indices) of the k largest along ``axis``, largest first."""
        return self.node("TopK", [x], name, n_outputs=2, k=int(k), axis=axis)

    def gather(self, data: str, indices: str, *, axis: int, name: str) -> str:
        return self.node("Gather", [data, indices], name, axis=axis)

    def argmax(self, x: str, *, axis: int, name: str) -> str:
        """Indices of the largest along ``axis``, that axis dropped; ties to the smallest index."""
        return self.node("ArgMax", [x], name, axis=axis)

    def softmax(self, x: str, *, axis: int, name: str) -> str:
        return self.node("Softmax", [x], name, axis=axis)
