"""The OpenVINO IR writer: a ``graph.Graph`` as an OpenVINO model built from opset1 / opset3 operations.

OpenVINO 2022.3 (the last release with the NCS2's MYRIAD plugin) reads operation sets up to opset10,
while a current OpenVINO's converter emits TopK-11 (ArgMax too), which 2022.3 cannot read
(docs/targets.md). Building the model from ``openvino.opset1`` / ``opset3`` constructors keeps every
layer within what 2022.3 reads; the model is saved by the current OpenVINO as IR v11.

Mapping: Conv is a Convolution and an Add of the bias ([1, C, 1, 1]); Gemm a MatMul and an Add;
ArgMax a TopK of k=1 (indices sorted by index: ties to the smallest) and a Reshape that drops the
axis; integer constants (indices) are int32, as TopK's indices are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..graph import Graph


def write_ir(graph: Graph) -> Any:
    """``graph`` as an ``openvino.Model`` (save it with ``openvino.save_model``)."""
    import openvino.opset1 as ops
    import openvino.opset3 as ops3
    from openvino import Model

    values: dict[str, Any] = {}
    parameters = []
    for tensor in graph.inputs:
        parameters.append(ops.parameter(list(tensor.shape), np.dtype(tensor.dtype), name=tensor.name))
        values[tensor.name] = parameters[-1].output(0)

    def value(name: str) -> Any:
        if name not in values:
            array = graph.constants[name]
            if np.issubdtype(array.dtype, np.integer):
                array = array.astype(np.int32)
            constant = ops.constant(array)
            constant.set_friendly_name(name)  # the IR's layer keeps the graph's name (a bank's slots are found by it)
            values[name] = constant.output(0)
        return values[name]

    def topk(x: Any, k: int, axis: int, sort: str) -> Any:
        return ops3.topk(x, np.int64(k), axis, "max", sort, "i32")

    for node in graph.nodes:
        a, inputs = node.attrs, node.inputs
        x = value(inputs[0])
        if node.op == "Cast":
            out = ops.convert(x, "f32")
        elif node.op == "Conv":
            bias = graph.constants[inputs[2]].reshape(1, -1, 1, 1)
            pads = [a["padding"]] * 2
            out = ops.add(ops.convolution(x, value(inputs[1]), [a["stride"]] * 2, pads, pads, [1, 1]), bias)
        elif node.op == "Relu":
            out = ops.relu(x)
        elif node.op == "Tanh":
            out = ops.tanh(x)
        elif node.op == "MaxPool":
            out = ops.max_pool(x, [a["size"]] * 2, [0, 0], [0, 0], [a["size"]] * 2)
        elif node.op == "Reshape":
            out = ops.reshape(x, np.array(a["shape"], dtype=np.int64), special_zero=False)
        elif node.op == "MatMul":
            out = ops.matmul(x, value(inputs[1]), False, False)
        elif node.op == "Gemm":
            out = ops.add(ops.matmul(x, value(inputs[1]), False, False), value(inputs[2]))
        elif node.op in ("Add", "Sub", "Mul", "Div", "Max"):
            make = {"Add": ops.add, "Sub": ops.subtract, "Mul": ops.multiply, "Div": ops.divide,
                    "Max": ops.maximum}[node.op]
            out = make(x, value(inputs[1]))
        elif node.op == "Neg":
            out = ops.negative(x)
        elif node.op == "Sqrt":
            out = ops.sqrt(x)
        elif node.op == "ReduceSum":
            out = ops.reduce_sum(x, np.array(a["axes"], dtype=np.int64), a["keepdims"])
        elif node.op == "TopK":
            top = topk(x, a["k"], a["axis"], "value")
            values[node.outputs[0]], values[node.outputs[1]] = top.output(0), top.output(1)
            continue
        elif node.op == "Gather":
            out = ops.gather(x, value(inputs[1]), np.int64(a["axis"]))
        elif node.op == "ArgMax":
            shape = [int(d) for i, d in enumerate(x.get_shape()) if i != a["axis"]]
            out = ops.reshape(topk(x, 1, a["axis"], "index").output(1), np.array(shape, dtype=np.int64),
                              special_zero=False)
        elif node.op == "Softmax":
            out = ops.softmax(x, a["axis"])
        else:  # pragma: no cover -- graph.OPS lists every operation handled above
            raise ValueError(f"the IR writer has no mapping for {node.op}")
        values[node.outputs[0]] = out.output(0)
    results = []
    for tensor in graph.outputs:
        output = values[tensor.name]
        output.get_node().set_friendly_name(tensor.name)
        output.get_tensor().set_names({tensor.name})
        results.append(output)
    return Model(results, parameters, graph.name)
