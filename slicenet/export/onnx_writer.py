"""The ONNX writer: a ``graph.Graph`` as an ONNX model of a given opset, with ``onnx.helper``.

Built by hand rather than with torch's exporter, so that the opset and every operation are exactly
what the target allows: torch 2.13's default exporter quietly ignores a request for opset 13 and
leaves opset 18 (docs/targets.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..graph import Graph

ONNX_IR_VERSION = 8  # readable by onnxruntime 1.11 (the Jetson Zoo's wheel for JetPack 4.6) and TensorRT 8.2


def write_onnx(graph: Graph, *, opset: int) -> Any:
    """``graph`` as a checked ``onnx.ModelProto`` of ``opset`` (13 or newer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if opset < 13:
        raise ValueError("the exported graph needs ONNX opset 13 or newer (ReduceSum with axes as input)")
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in graph.constants.items()]
    nodes = []

    def int64(name: str, values: tuple[int, ...]) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    for node in graph.nodes:
        a, out, inputs = node.attrs, node.outputs[0], list(node.inputs)
        attrs: dict[str, Any] = {}
        if node.op == "Cast":
            attrs = {"to": TensorProto.FLOAT}
        elif node.op == "Conv":
            attrs = {"kernel_shape": [a["kernel"]] * 2, "strides": [a["stride"]] * 2, "pads": [a["padding"]] * 4}
        elif node.op == "MaxPool":
            attrs = {"kernel_shape": [a["size"]] * 2, "strides": [a["size"]] * 2}
        elif node.op == "Reshape":
            inputs.append(int64(f"{out}.shape", a["shape"]))
        elif node.op == "ReduceSum":
            inputs.append(int64(f"{out}.axes", a["axes"]))
            attrs = {"keepdims": int(a["keepdims"])}
        elif node.op == "TopK":
            inputs.append(int64(f"{out}.k", (a["k"],)))
            attrs = {"axis": a["axis"], "largest": 1, "sorted": 1}  # largest=1: TensorRT 8.2 ignores largest=0
        elif node.op == "ArgMax":
            attrs = {"axis": a["axis"], "keepdims": 0}
        elif node.op in ("Gather", "Softmax"):
            attrs = {"axis": a["axis"]}
        nodes.append(helper.make_node(node.op, inputs, list(node.outputs), name=out, **attrs))
    types = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    model = helper.make_model(
        helper.make_graph(nodes, graph.name,
                          [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in graph.inputs],
                          [helper.make_tensor_value_info(t.name, types[t.dtype], list(t.shape)) for t in graph.outputs],
                          initializers),
        opset_imports=[helper.make_opsetid("", opset)], producer_name="slicenet", producer_version=__version__)
    model.ir_version = min(model.ir_version, ONNX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model
