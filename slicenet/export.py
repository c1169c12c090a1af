"""Export an engine as one graph (image -> class, votes) for ONNX Runtime, OpenVINO, the NCS2 and the
Jetson Nano, check the graph against the target's rules, and verify it before declaring success.

The graph: uint8 image [1, 1, H, W] -> Cast -> (Conv -> Relu/Tanh -> MaxPool) per layer, with the
normalisation folded into the first Conv (or a Mul and an Add before it when that layer pads) ->
Reshape -> post-processing (Sub mean, L2 normalise) -> squared distances to the bank as
``||q||^2 - 2 q.B^T + ||B||^2`` (bank norms precomputed) -> TopK of the *negated* distance
(largest=1: TensorRT 8.2 ignores largest=0) -> Gather rows of a one-hot label matrix -> ReduceSum
(the votes) -> ArgMax (the class). No OneHot, static shapes, constant K. A dense-head engine ends
with MatMul/Add/Relu layers, Softmax (reported as the votes) and ArgMax instead. The local-mean
head (``--vote local-mean``) regroups the scores by class and takes each class's k nearest with one
TopK; see ``local_mean_onnx``. An engine with test-time views (``--query-shifts``) first gathers the
views from the flattened image (``view_layout``: one Gather, one Mul for the zero fill), runs them as
one batch of batch x views rows, and sums each image's votes over its views before the ArgMax.

ONNX graphs are built with ``onnx.helper`` rather than torch's exporter, so that the opset and every
operation are exactly what the target allows (torch 2.13's exporter quietly ignores opset requests).
The NCS2 IR is built from OpenVINO opset1/opset3 operations directly, because current OpenVINO's
converter emits TopK-11 and friends, which OpenVINO 2022.3 (the last release with MYRIAD) cannot read.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .engine import Engine
from .errors import InputError

TARGETS = ("onnx", "openvino", "jetson", "ncs2")
ONNX_OPSET = {"onnx": 17, "openvino": 17, "jetson": 13, "ncs2": 13}
TENSORRT_MAX_K = 3840
# Operations each target accepts (from ../shared/TARGETS.md: TensorRT 8.2's ONNX importer, MYRIAD
# in OpenVINO 2022.3); the graph is checked against these lists before anything is written.
ALLOWED_ONNX_OPS = {
    "onnx": None,  # any operation of the opset
    "openvino": None,
    "jetson": {"Cast", "Mul", "Add", "Sub", "Conv", "MaxPool", "Relu", "Tanh", "Reshape", "ReduceSum", "Sqrt",
               "Max", "Div", "MatMul", "Gemm", "Neg", "TopK", "Gather", "ArgMax", "Softmax"},
    "ncs2": {"Cast", "Mul", "Add", "Sub", "Conv", "MaxPool", "Relu", "Tanh", "Reshape", "ReduceSum", "Sqrt",
             "Max", "Div", "MatMul", "Gemm", "Neg", "TopK", "Gather", "ArgMax", "Softmax"},
}
MYRIAD_IR_OPS = {"Parameter", "Result", "Const", "Convert", "Multiply", "Add", "Subtract", "Convolution",
                 "MaxPool", "ReLU", "Tanh", "Reshape", "ReduceSum", "Sqrt", "Maximum", "Divide", "MatMul",
                 "Negative", "TopK", "Gather", "SoftMax"}  # IR layer type names
EPSILON = 1e-12  # guards the L2 normalisation against an all-zero feature vector
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
    near_ties: int = 0  # disagreements where the engine's k-th and (k+1)-th neighbours tie to float noise


TIE_TOLERANCE = 1e-5  # distance gap below which float32 summation order may swap two neighbours


def near_ties(engine: Engine, images: np.ndarray) -> int:
    """How many of ``images`` have a k-nearest set that float32 rounding can change: the k-th and
    (k+1)-th nearest prototypes lie within ``TIE_TOLERANCE`` of each other (on L2-normalised features
    distances are at most 2), in any of the engine's test-time views. A runtime that sums in another
    order may pick either, legitimately."""
    if engine.head != "knn" or len(images) == 0 or engine.n_neighbors >= len(engine.bank):
        return 0
    queries = engine.embed(engine.views(images))
    if engine.vote == "local-mean":
        tied, scores = local_mean_ties(engine, queries)
    else:
        from .knn import knn_vote

        _, nearest, _ = knn_vote(queries, engine.bank, engine.bank_labels, engine.n_classes,
                                 engine.n_neighbors + 1, engine.metric)
        tied = nearest[:, -1] - nearest[:, -2] <= TIE_TOLERANCE
    tied = tied.reshape(engine.n_views, len(images)).any(0).numpy()
    if engine.n_views > 1 and engine.vote == "local-mean":  # the summed scores' two best classes
        best = scores.reshape(engine.n_views, len(images), -1).sum(0).topk(2, dim=-1).values.numpy()
        tied |= best[:, 0] - best[:, 1] <= TIE_TOLERANCE * engine.n_views
    return int(tied.sum())


def local_mean_ties(engine: Engine, queries):
    """``near_ties`` for the local-mean head, per query: the two nearest local means, or some class's
    k-th and (k+1)-th nearest prototypes, lie within ``TIE_TOLERANCE``. Returns (tied [Q], the
    local-mean scores [Q, C] they were judged on)."""
    from .knn import class_slots, local_mean_scores, nearest_per_class

    k = engine.n_neighbors
    slots = class_slots(engine.bank_labels, engine.n_classes)
    wider = min(k + 1, slots.shape[1])  # one scan gives the k nearest and the (k+1)-th
    nearest, indices = nearest_per_class(queries, engine.bank, slots, wider)
    scores = local_mean_scores(queries, engine.bank, indices[..., :k])
    best = scores.topk(2, dim=-1).values
    tied = best[:, 0] - best[:, 1] <= TIE_TOLERANCE
    if wider > k:
        tied |= (nearest[..., k] - nearest[..., k - 1] <= TIE_TOLERANCE).any(-1)
    return tied, scores


# -- the ONNX graph ---------------------------------------------------------------------------------

def input_scale_shift(engine: Engine) -> tuple[float, float]:
    """The normalisation as ``pixel * scale + shift`` on uint8 pixels: (p / 255 - mean) / std."""
    return 1.0 / (255.0 * engine.input_std), -engine.input_mean / engine.input_std


def trunk_weights(engine: Engine) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """The convolutions' (kernel, bias) as float32 arrays, and whether the input normalisation is
    folded into the first of them.

    conv(s x + t, W) + b = conv(x, s W) + (b + t sum(W)) wherever the kernel covers no padding, so a
    first layer without padding takes the raw pixels: two graph operations fewer (~1 us, ~5 % of a
    default engine at batch 1 on ONNX Runtime). With padding, the zeros padded around the normalised
    image are not zeros of the raw one, so the normalisation stays a Mul and an Add."""
    weights = [(w.numpy().astype(np.float64), b.numpy().astype(np.float64)) for w, b in engine.weights]
    folded = bool(weights) and engine.spec.layers[0].padding == 0
    if folded:
        scale, shift = input_scale_shift(engine)
        kernel, bias = weights[0]
        weights[0] = (kernel * scale, bias + shift * kernel.sum(axis=(1, 2, 3)))
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights], folded


def build_onnx(engine: Engine, opset: int, batch: int = 1):
    """The whole engine as one ONNX model of the given opset (13 or newer), static batch ``batch``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if opset < 13:
        raise ValueError("the exported graph needs ONNX opset 13 or newer (ReduceSum with axes as input)")
    height, width = engine.image_size
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    x = node("Cast", ["image"], "image_f32", to=TensorProto.FLOAT)
    rows = batch * engine.n_views  # the trunk and head run on every test-time view of every image
    if engine.n_views > 1:
        pixels, keep = view_layout(engine)
        x = node("Reshape", [x, const("image_flat_shape", np.array([batch, height * width], dtype=np.int64))],
                 "image_flat")
        x = node("Mul", [node("Gather", [x, const("view_index", pixels)], "views_gathered", axis=1),
                         const("view_keep", keep)], "views_flat")
        x = node("Reshape", [x, const("views_shape", np.array([rows, 1, height, width], dtype=np.int64))], "views")
    convolutions, input_folded = trunk_weights(engine)
    if not input_folded:
        scale, shift = input_scale_shift(engine)
        x = node("Mul", [x, const("input_scale", np.array(scale, dtype=np.float32))], "scaled")
        x = node("Add", [x, const("input_shift", np.array(shift, dtype=np.float32))], "normalised")
    for index, ((kernel, kernel_bias), layer) in enumerate(zip(convolutions, engine.spec.layers, strict=True)):
        x = node("Conv", [x, const(f"conv{index}.weight", kernel), const(f"conv{index}.bias", kernel_bias)],
                 f"conv{index}", kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                 pads=[layer.padding] * 4)
        # The activation before the pooling: both are monotone, so max(act(x)) = act(max(x)) exactly,
        # and ONNX Runtime fuses a Conv with the activation that follows it (one kernel fewer per
        # layer: ~4 % of a default engine's latency at batch 1).
        x = node("Relu" if layer.activation == "relu" else "Tanh", [x], f"act{index}")
        if layer.pool > 1:
            x = node("MaxPool", [x], f"pool{index}", kernel_shape=[layer.pool] * 2, strides=[layer.pool] * 2)
    x = node("Reshape", [x, const("flat_shape", np.array([rows, -1], dtype=np.int64))], "features")
    if engine.head == "dense":
        for index, (weight, bias) in enumerate(engine.dense):
            x = node("MatMul", [x, const(f"dense{index}.weight_t", weight.numpy().T.copy())], f"dense{index}.mm")
            x = node("Add", [x, const(f"dense{index}.bias", bias.numpy())], f"dense{index}")
            if index < len(engine.dense) - 1:
                x = node("Relu", [x], f"dense{index}.relu")
        votes = node("Softmax", [x], "votes", axis=1)
        node("ArgMax", [x], "class", axis=1, keepdims=0)
    else:
        if engine.metric not in ("euclidean", "sqeuclidean", "cosine"):
            raise InputError(f"metric {engine.metric!r} cannot be exported; retrain with --metric euclidean")
        centre = engine.postprocessing == "centre_l2" or engine.projection is not None
        mean = engine.feature_mean.numpy().astype(np.float64)[None] if centre else None
        bank = engine.bank.numpy()
        if engine.metric == "cosine":
            # Cosine ranks the bank by q.b/|b| for each query: the query's own length does not change
            # its neighbours, so the query's L2 normalisation is left out, and the centring folds
            # into the next product's bias, (x - m) W = x W - m W: one Gemm instead of Sub + MatMul.
            bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), EPSILON)
            bank_t = bank.T.astype(np.float32).copy()
            first: np.ndarray = bank_t if engine.projection is None else engine.projection.numpy()
            if mean is None:
                x = node("MatMul", [x, const("first_weight", first)], "first_product")
            else:
                folded = (-(mean @ first.astype(np.float64))).astype(np.float32)
                x = node("Gemm", [x, const("first_weight", first), const("first_bias", folded)], "first_product")
            scores = x if engine.projection is None else node("MatMul", [x, const("bank_t", bank_t)], "dot")
        else:
            if mean is not None:
                x = node("Sub", [x, const("feature_mean", mean.astype(np.float32))], "centred")
            if engine.projection is not None:
                x = node("MatMul", [x, const("projection", engine.projection.numpy())], "projected")
            if engine.postprocessing in ("centre_l2", "l2"):
                square = node("Mul", [x, x], "square")
                norm = node("Sqrt", [node("ReduceSum", [square, const("axis1", np.array([1], dtype=np.int64))],
                                          "sum_square", keepdims=1)], "norm")
                norm = node("Max", [norm, const("epsilon", np.array(EPSILON, dtype=np.float32))], "norm_safe")
                x = node("Div", [x, norm], "query")
            bank_t = bank_constant(engine, bank, const, node, 2.0)
            scores = node("MatMul", [x, bank_t], "dot")
            # -||q - b||^2 = 2 q.b - ||b||^2 - ||q||^2. TopK ranks the bank for one query at a time,
            # so the query's own ||q||^2 is dropped, and the 2 is folded into the stored bank (exact:
            # a power of two): one MatMul and one Sub, larger is nearer, as TopK(largest=1) wants.
            scores = node("Sub", [scores, const("bank_norm2", (bank.astype(np.float64) ** 2).sum(1)
                                                 .astype(np.float32)[None])], "neg_distance")
        one_hot = np.eye(engine.n_classes, dtype=np.float32)[engine.bank_labels.numpy()]
        votes = "votes" if engine.n_views == 1 else "view_votes"
        one_nn = engine.vote == "majority" and engine.n_neighbors == 1 and engine.n_views == 1
        if engine.vote == "local-mean":
            local_mean_onnx(engine, rows, x, scores, bank_t, const, node, nodes, votes)
        elif one_nn:
            # 1-NN: the nearest prototype's one-hot row is the vote and its label the class (three
            # operations where TopK, Gather, ReduceSum and ArgMax would take four).
            nearest = node("ArgMax", [scores], "nearest", axis=1, keepdims=0)
            node("Gather", [const("bank_onehot", one_hot), nearest], "votes", axis=0)
            node("Gather", [const("bank_labels", engine.bank_labels.numpy().astype(np.int64)), nearest], "class",
                 axis=0)
        else:
            k = const("k", np.array([engine.n_neighbors], dtype=np.int64))
            nodes.append(helper.make_node("TopK", [scores, k], ["nearest_scores", "nearest"], name="topk",
                                          axis=-1, largest=1, sorted=1))
            gathered = node("Gather", [const("bank_onehot", one_hot), "nearest"], "neighbour_labels", axis=0)
            node("ReduceSum", [gathered, const("vote_axis", np.array([1], dtype=np.int64))], votes, keepdims=0)
        if engine.n_views > 1:  # each image's votes summed over its views (rows b*V .. b*V + V-1)
            votes = node("Reshape", [votes, const("view_votes_shape",
                                                  np.array([batch, engine.n_views, -1], dtype=np.int64))],
                         "view_votes_grouped")
            votes = node("ReduceSum", [votes, const("view_axis", np.array([1], dtype=np.int64))], "votes",
                         keepdims=0)
        if not one_nn:
            node("ArgMax", [votes], "class", axis=1, keepdims=0)
    graph = helper.make_graph(
        nodes, "slicenet_engine",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, 1, height, width])],
        [helper.make_tensor_value_info("class", TensorProto.INT64, [batch]),
         helper.make_tensor_value_info("votes", TensorProto.FLOAT, [batch, engine.n_classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="slicenet",
                              producer_version=__version__)
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime 1.11 (Jetson Zoo wheel) / TRT 8.2
    onnx.checker.check_model(model, full_check=True)
    return model


def view_layout(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    """The test-time views (``Engine.views``) as a gather from one flattened image: (pixel index
    [V * H * W], int64; keep [1, V * H * W], 0.0 where a shifted view's pixel is zero fill)."""
    from .data import shifted_copies

    height, width = engine.image_size
    ids = np.arange(1, height * width + 1, dtype=np.int64).reshape(1, height, width)  # 0 marks fill
    views = shifted_copies(ids, np.zeros(1, dtype=np.int64), engine.query_shifts)[0].reshape(-1)
    return np.maximum(views - 1, 0), (views > 0).astype(np.float32)[None]


FILLER_SCORE = 1e4  # added below a padded class slot's score: never among a class's k nearest


def local_mean_layout(engine: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bank regrouped by class for the local-mean head: (slot -> bank index [C * width], int64,
    padding pointing at prototype 0; the score offset of each slot [1, C * width], -FILLER_SCORE
    on padding; the first slot of each class [1, C, 1]), ``width`` the largest class."""
    from .knn import class_slots

    slots = class_slots(engine.bank_labels, engine.n_classes).numpy()
    n_classes, width = slots.shape
    mask = np.where(slots.reshape(-1) < 0, -FILLER_SCORE, 0.0).astype(np.float32)[None]
    offsets = (np.arange(n_classes, dtype=np.int64) * width).reshape(1, n_classes, 1)
    return slots.clip(0).reshape(-1), mask, offsets


def local_mean_onnx(engine: Engine, batch: int, query: str, scores: str, bank_t: str, const, node, nodes,
                    votes: str = "votes") -> None:
    """The local-mean head (``knn.local_mean_vote``) as graph operations, from the ranking scores
    ``2 q.b - ||b||^2`` [batch, B] and ``bank_t`` = 2 B^T.

    The scores are regrouped by class ([batch, C, width], padding far below any prototype), TopK takes
    each class's k nearest, and the local mean m = (sum of the k) / k enters only through
    ``||q - m||^2 = ||q||^2 - 2 q.m + ||m||^2``: 2 q.m from the k scores plus their ||b||^2, and
    ||m||^2 from the gathered bank columns. Votes are -||q - m|| per class, as the engine's."""
    from onnx import helper

    k, n_classes = engine.n_neighbors, engine.n_classes
    slots, mask, offsets = local_mean_layout(engine)
    slot_index = const("class_slots", slots)
    grouped = node("Add", [node("Gather", [scores, slot_index], "class_scores_flat", axis=1),
                           const("class_slot_mask", mask)], "class_scores_masked")
    grouped = node("Reshape", [grouped, const("class_shape", np.array([batch, n_classes, -1], dtype=np.int64))],
                   "class_scores")
    nodes.append(helper.make_node("TopK", [grouped, const("k", np.array([k], dtype=np.int64))],
                                  ["nearest_scores", "nearest_slots"], name="topk", axis=-1, largest=1, sorted=1))
    nearest = node("Gather", [slot_index, node("Add", ["nearest_slots", const("class_offsets", offsets)],
                                               "nearest_flat_slots")], "nearest", axis=0)  # [batch, C, k]
    norms = node("Gather", [node("Reshape", ["bank_norm2", const("flat", np.array([-1], dtype=np.int64))],
                                 "bank_norm2_flat"), nearest], "nearest_norm2", axis=0)
    axis = {i: const(f"axis_{i}", np.array([i], dtype=np.int64)) for i in (0, 1, 2, 3)}
    two_dots = node("ReduceSum", [node("Add", ["nearest_scores", norms], "nearest_two_dots"), axis[2]],
                    "two_dots", keepdims=0)  # 2 sum q.b, [batch, C]
    two_sums = node("ReduceSum", [node("Gather", [bank_t, nearest], "nearest_columns", axis=1), axis[3]],
                    "two_sums", keepdims=0)  # 2 sum b, [D, batch, C]
    four_sq = node("ReduceSum", [node("Mul", [two_sums, two_sums], "two_sums_sq"), axis[0]], "four_sum_sq",
                   keepdims=0)  # 4 ||sum b||^2, [batch, C]
    q2 = node("ReduceSum", [node("Mul", [query, query], "query_sq"), axis[1]], "query_norm2", keepdims=1)
    dist2 = node("Add", [node("Sub", [q2, node("Mul", [two_dots, const("inv_k", np.array(1.0 / k, np.float32))],
                                               "two_q_dot_mean")], "q2_minus"),
                         node("Mul", [four_sq, const("inv_4k2", np.array(1.0 / (4 * k * k), np.float32))],
                              "mean_norm2")], "local_mean_dist2")
    zero = const("zero", np.array(0.0, dtype=np.float32))
    node("Neg", [node("Sqrt", [node("Max", [dist2, zero], "local_mean_dist2_safe")], "local_mean_dist")], votes)


def bank_constant(engine: Engine, bank: np.ndarray, const, node, factor: float = 1.0) -> str:
    """``factor`` x the transposed bank as stored by the engine: fp32, or fp16 / int8 (times its
    scale) cast to fp32 in the graph, which reproduces the engine's decoded values exactly (the
    factor is a power of two, so scaling is exact too)."""
    precision = engine.storage.get("bank", "fp32")
    if precision == "fp32":
        return const("bank_t", (factor * bank.T).astype(np.float32).copy())
    from onnx import TensorProto

    from .engine import encode

    stored = encode("bank", torch_tensor(bank.T.copy()), precision)
    if precision == "fp16":
        return node("Cast", [const("bank_t_fp16", (stored["bank"] * factor).numpy())], "bank_t",
                    to=TensorProto.FLOAT)
    decoded = node("Cast", [const("bank_t_int8", stored["bank.q"].numpy())], "bank_t_q", to=TensorProto.FLOAT)
    return node("Mul", [decoded, const("bank_scale", (stored["bank.scale"] * factor).numpy())], "bank_t")


def torch_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def check_onnx(model, target: str) -> None:
    """Fail, naming the operation and the target, if the graph breaks the target's rules."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if target in ("jetson", "ncs2") and opset > 13:
        raise InputError(f"target {target}: ONNX opset {opset} is above 13, which TensorRT 8.2 / OpenVINO "
                         "2022.3's model optimizer accept")
    allowed = ALLOWED_ONNX_OPS[target]
    for n in model.graph.node:
        if allowed is not None and n.op_type not in allowed:
            raise InputError(f"operation {n.op_type} (node {n.name}) is not supported by target {target}")
        if n.op_type == "OneHot" and target in ("jetson", "ncs2"):
            raise InputError(f"operation OneHot is not supported by target {target}")
        if n.op_type == "TopK":
            largest = next((a.i for a in n.attribute if a.name == "largest"), 1)
            if target == "jetson" and largest == 0:
                raise InputError("operation TopK with largest=0 is not supported by target jetson "
                                 "(TensorRT 8.2 ignores it); use TopK of the negated distance")
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise InputError(f"target {target} needs static shapes; {value.name} has a dynamic dimension")
    k = next((i for i in model.graph.initializer if i.name == "k"), None)
    if k is not None and target == "jetson":
        from onnx import numpy_helper

        if int(numpy_helper.to_array(k)[0]) > TENSORRT_MAX_K:
            raise InputError(f"TopK K above {TENSORRT_MAX_K} is not supported by target jetson")


# -- the OpenVINO IR for the NCS2 (opset <= 10) -------------------------------------------------------

def build_ncs2_ir(engine: Engine, batch: int = 1):
    """The engine as an OpenVINO model of opset1 / opset3 operations only (readable by 2022.3)."""
    import openvino.opset1 as ops
    import openvino.opset3 as ops3
    from openvino import Model

    height, width = engine.image_size
    image = ops.parameter([batch, 1, height, width], np.uint8, name="image")
    x = ops.convert(image, "f32")
    rows = batch * engine.n_views  # as in build_onnx: every test-time view of every image
    if engine.n_views > 1:
        pixels, keep = view_layout(engine)
        x = ops.reshape(x, np.array([batch, height * width], dtype=np.int64), special_zero=False)
        x = ops.multiply(ops.gather(x, pixels.astype(np.int32), np.int64(1)), keep)
        x = ops.reshape(x, np.array([rows, 1, height, width], dtype=np.int64), special_zero=False)
    convolutions, input_folded = trunk_weights(engine)  # as in build_onnx
    if not input_folded:
        scale, shift = input_scale_shift(engine)
        x = ops.add(ops.multiply(x, np.float32(scale)), np.float32(shift))
    for (kernel, kernel_bias), layer in zip(convolutions, engine.spec.layers, strict=True):
        x = ops.convolution(x, kernel, [layer.stride] * 2, [layer.padding] * 2, [layer.padding] * 2, [1, 1])
        x = ops.add(x, kernel_bias.reshape(1, -1, 1, 1))
        x = ops.relu(x) if layer.activation == "relu" else ops.tanh(x)  # before the pooling, as in build_onnx
        if layer.pool > 1:
            x = ops.max_pool(x, [layer.pool] * 2, [0, 0], [0, 0], [layer.pool] * 2)
    x = ops.reshape(x, np.array([rows, -1], dtype=np.int64), special_zero=False)
    if engine.head == "dense":
        for index, (weight, bias) in enumerate(engine.dense):
            x = ops.add(ops.matmul(x, weight.numpy().T.copy(), False, False), bias.numpy()[None])
            if index < len(engine.dense) - 1:
                x = ops.relu(x)
        votes = ops.softmax(x, 1)
        top = ops3.topk(x, np.int64(1), 1, "max", "value", "i32")
    else:
        if engine.metric not in ("euclidean", "sqeuclidean", "cosine"):
            raise InputError(f"metric {engine.metric!r} cannot be exported; retrain with --metric euclidean")
        axis1 = np.array([1], dtype=np.int64)
        if engine.postprocessing == "centre_l2" or engine.projection is not None:
            x = ops.subtract(x, engine.feature_mean.numpy()[None])
        if engine.projection is not None:
            x = ops.matmul(x, engine.projection.numpy(), False, False)
        if engine.postprocessing in ("centre_l2", "l2") and engine.metric != "cosine":  # as in build_onnx
            norm = ops.sqrt(ops.reduce_sum(ops.multiply(x, x), axis1, True))
            x = ops.divide(x, ops.maximum(norm, np.float32(EPSILON)))
        bank = engine.bank.numpy()
        if engine.metric == "cosine":
            bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), EPSILON)
        factor = 1.0 if engine.metric == "cosine" else 2.0  # as in build_onnx: 2 q.b - ||b||^2
        bank_t = ops.constant((factor * bank.T).astype(np.float32).copy())  # one constant, shared below
        scores = ops.matmul(x, bank_t, False, False)
        norm2 = (bank.astype(np.float64) ** 2).sum(1).astype(np.float32)  # ||b||^2 of every prototype
        if engine.metric != "cosine":
            scores = ops.subtract(scores, norm2[None])
        if engine.vote == "local-mean":  # as local_mean_onnx
            k = engine.n_neighbors
            slots, mask, offsets = local_mean_layout(engine)
            grouped = ops.reshape(ops.add(ops.gather(scores, slots.astype(np.int32), np.int64(1)), mask),
                                  np.array([rows, engine.n_classes, -1], dtype=np.int64), special_zero=False)
            nearest = ops3.topk(grouped, np.int64(k), 2, "max", "value", "i32")
            index = ops.gather(slots.astype(np.int32), ops.add(nearest.output(1), offsets.astype(np.int32)),
                               np.int64(0))  # [batch, C, k]
            two_dots = ops.reduce_sum(ops.add(nearest.output(0), ops.gather(norm2, index, np.int64(0))),
                                      np.array([2], dtype=np.int64), False)
            two_sums = ops.reduce_sum(ops.gather(bank_t, index, np.int64(1)),
                                      np.array([3], dtype=np.int64), False)
            four_sq = ops.reduce_sum(ops.multiply(two_sums, two_sums), np.array([0], dtype=np.int64), False)
            dist2 = ops.add(ops.subtract(ops.reduce_sum(ops.multiply(x, x), axis1, True),
                                         ops.multiply(two_dots, np.float32(1.0 / k))),
                            ops.multiply(four_sq, np.float32(1.0 / (4 * k * k))))
            votes = ops.negative(ops.sqrt(ops.maximum(dist2, np.float32(0.0))))
        else:
            nearest = ops3.topk(scores, np.int64(engine.n_neighbors), 1, "max", "value", "i32")
            one_hot = np.eye(engine.n_classes, dtype=np.float32)[engine.bank_labels.numpy()]
            gathered = ops.gather(one_hot, nearest.output(1), np.int64(0))
            votes = ops.reduce_sum(gathered, axis1, False)
        if engine.n_views > 1:  # each image's votes summed over its views, as in build_onnx
            votes = ops.reduce_sum(ops.reshape(votes, np.array([batch, engine.n_views, -1], dtype=np.int64),
                                               special_zero=False), axis1, False)
        top = ops3.topk(votes, np.int64(1), 1, "max", "index", "i32")  # ties: the smallest class index
    votes.set_friendly_name("votes")
    class_index = ops.reshape(top.output(1), np.array([batch], dtype=np.int64), special_zero=False)
    class_index.set_friendly_name("class")
    model = Model([class_index, votes], [image], "slicenet_engine")
    model.outputs[0].get_tensor().set_names({"class"})
    model.outputs[1].get_tensor().set_names({"votes"})
    return model


def check_ir_opsets(xml_path: Path, max_opset: int = 10) -> dict:
    """Every layer of an IR must come from opset1..``max_opset`` and be a MYRIAD-supported type."""
    text = xml_path.read_text()
    ir_version = int(re.search(r'<net [^>]*version="(\d+)"', text).group(1))  # type: ignore[union-attr]
    if ir_version not in (10, 11):
        raise InputError(f"IR version {ir_version}: OpenVINO 2022.3 reads IR v10 and v11 only")
    layers = re.findall(r'<layer [^>]*type="([^"]+)"[^>]*version="([^"]+)"', text)
    for op_type, version in layers:
        number = int(version[5:]) if version.startswith("opset") else None
        if number is None or number > max_opset:
            raise InputError(f"operation {op_type} ({version}) is not supported by target ncs2: "
                             f"OpenVINO 2022.3 reads opset1..opset{max_opset} only")
        if op_type not in MYRIAD_IR_OPS:
            raise InputError(f"operation {op_type} is not supported by target ncs2 (MYRIAD)")
    precisions = set(re.findall(r'<layer [^>]*type="Const"[^>]*>\s*<data [^>]*element_type="([^"]+)"', text))
    return {"ir_version": ir_version, "layers": len(layers), "const_precisions": sorted(precisions)}


# -- verification -----------------------------------------------------------------------------------

def batches(images: np.ndarray, batch: int):
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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    classes: list[int] = []
    votes: list[np.ndarray] = []
    for chunk, real in batches(images, batch):
        c, v = session.run(["class", "votes"], {"image": chunk})
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


def verify(engine: Engine, runtime: str, path: Path, images: np.ndarray, labels: np.ndarray,
           precision: str, batch: int = 1) -> Verification:
    expected, _, _ = engine.predict(images)
    run = run_onnxruntime if runtime == "onnxruntime" else run_openvino
    predicted, _ = run(path, images, batch)
    differ = predicted != expected
    return Verification(len(images), float((~differ).mean()), float((expected == labels).mean()),
                        float((predicted == labels).mean()), runtime, precision, near_ties(engine, images[differ]))


# -- bundles ----------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BOARD_README = {
    "onnx": """# {name}: ONNX (opset {opset}) for ONNX Runtime

    python3 run_engine.py --runtime onnxruntime      # checks sha256, runs the samples, writes result.json
    onnxruntime_perf_test -I -m times -r 1000 engine.onnx
""",
    "openvino": """# {name}: OpenVINO IR (FP32) for current OpenVINO on CPU

    python3 run_engine.py --runtime openvino --device CPU
    benchmark_app -m engine.xml -d CPU -hint latency -infer_precision f32
""",
    "jetson": """# {name}: NVIDIA Jetson Nano (JetPack 4.6.x, TensorRT 8.2.1, Python 3.6)

`engine.onnx` is ONNX opset 13 with static shapes, K={k} <= 3840, no OneHot, and the nearest
neighbours found as TopK(largest=1) of the negated distance (TensorRT 8.2 ignores largest=0).

    sudo nvpmodel -m 0 && sudo jetson_clocks          # 10 W MAXN (use -m 1 for the 5 W mode)
    /usr/src/tensorrt/bin/trtexec --onnx=engine.onnx --fp16 --saveEngine=engine.plan
    /usr/src/tensorrt/bin/trtexec --loadEngine=engine.plan --useSpinWait --noDataTransfers \\
        --warmUp=500 --duration=10 --percentile=99
    python3 run_engine.py --runtime onnxruntime       # onnxruntime-gpu 1.11.0 (Jetson Zoo, cp36) or CPU
    tegrastats --interval 100                         # board power: POM_5V_IN

Copy `result.json` back and run `slicenet bench --ingest result.json` on the host.
""",
    "ncs2": """# {name}: Intel Neural Compute Stick 2 (MYRIAD, OpenVINO 2022.3 LTS)

`engine.xml` / `engine.bin` are an FP16 IR (v{ir_version}) built from opset1/opset3 operations only,
static shapes, MYRIAD-supported layers. MYRIAD ships only in the 2022.3 archive installers (not pip):

    source /opt/intel/openvino_2022/setupvars.sh
    compile_tool -m engine.xml -d MYRIAD -o engine.blob          # no stick attached: add -c myriad.conf
    benchmark_app -m engine.xml -d MYRIAD -hint latency
    python3 run_engine.py --runtime openvino --device MYRIAD

`myriad.conf` holds `MYRIAD_ENABLE_MX_BOOT NO`. Fallback: `engine.onnx` (opset 13) converts with
2022.3's own model optimizer: `mo --input_model engine.onnx --compress_to_fp16`.
Copy `result.json` back and run `slicenet bench --ingest result.json` on the host.
""",
}


def bundle_name(run_dir: Path) -> str:
    """The run's folder name, prefixed by its parent's for runs nested in a group (baseline widths)."""
    path = run_dir.resolve()
    return path.name if path.parent.name in ("runs", "") else f"{path.parent.name}-{path.name}"


def bundle_folder(run_dir: Path, target: str, out_root: Path, batch: int = 1) -> Path:
    return out_root / bundle_name(run_dir) / (target if batch == 1 else f"{target}-b{batch}")


def export_bundle(engine: Engine, run_dir: Path, target: str, out_root: Path, images: np.ndarray,
                  labels: np.ndarray, devices_dir: Path, n_samples: int = 32, batch: int = 1) -> dict:
    """Write ``out_root/<run>/<target>[-b<batch>]/`` and return its manifest (verified before it is written)."""
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}: expected one of {', '.join(TARGETS)}")
    if not 1 <= batch <= 4096:
        raise InputError(f"--batch must be between 1 and 4096, got {batch}")
    name = bundle_name(run_dir)
    bundle = bundle_folder(run_dir, target, out_root, batch)
    staging = bundle.with_name(f".{bundle.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    opset = ONNX_OPSET[target]
    model = build_onnx(engine, opset, batch)
    check_onnx(model, target)
    checks: dict = {"onnx_opset": opset, "onnx_ops": sorted({n.op_type for n in model.graph.node})}
    import onnx

    verifications = []
    if target in ("onnx", "jetson", "ncs2"):
        onnx.save_model(model, str(staging / "engine.onnx"))
        verifications.append(verify(engine, "onnxruntime", staging / "engine.onnx", images, labels, "fp32", batch))
    if target == "openvino":
        import openvino as ov

        onnx.save_model(model, str(staging / "engine.onnx"))  # kept: the IR's source, and the cost model's
        ov.save_model(ov.convert_model(str(staging / "engine.onnx")), str(staging / "engine.xml"),
                      compress_to_fp16=False)
        verifications.append(verify(engine, "openvino", staging / "engine.xml", images, labels, "fp32", batch))
    if target == "ncs2":
        import openvino as ov

        ov.save_model(build_ncs2_ir(engine, batch), str(staging / "engine.xml"), compress_to_fp16=True)
        checks["ir"] = check_ir_opsets(staging / "engine.xml")
        if "f16" not in checks["ir"]["const_precisions"]:
            raise InputError("the NCS2 IR has no FP16 weights; MYRIAD needs an FP16 model")
        (staging / "myriad.conf").write_text("MYRIAD_ENABLE_MX_BOOT NO\n")
        verifications.append(verify(engine, "openvino", staging / "engine.xml", images, labels, "fp16-weights",
                                    batch))
    for v in verifications:
        disagreements = round((1 - v.agreement) * v.images)
        if v.precision == "fp32" and disagreements > v.near_ties:
            raise InputError(f"target {target}: {v.runtime} disagrees with the torch engine on {disagreements} "
                             f"of {v.images} test images ({v.near_ties} of them numerical near-ties); not exported")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(images), size=min(max(n_samples, batch), len(images)), replace=False))
    samples = np.ascontiguousarray(images[pick][:, None])
    np.save(staging / "samples.npy", samples)
    expected, expected_votes, _ = engine.predict(images[pick])
    shutil.copy(devices_dir / "run_engine.py", staging / "run_engine.py")
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    readme = BOARD_README[target].format(name=name, opset=opset, k=engine.n_neighbors,
                                         ir_version=checks.get("ir", {}).get("ir_version", ""))
    (staging / "README.md").write_text(readme)
    manifest = {
        "format": "slicenet-bundle/1", "target": target, "slicenet_version": __version__, "run": str(run_dir),
        "model": "engine.xml" if target in ("openvino", "ncs2") else "engine.onnx",
        "fallback_model": "engine.onnx" if target == "ncs2" else None,
        "onnx_model": "engine.onnx",  # every bundle carries the ONNX graph (the IR's source for OpenVINO)
        "batch": batch,
        "input": {"name": "image", "shape": [batch, 1, *engine.image_size], "dtype": "uint8",
                  "normalisation": {"scale": 1.0 / 255.0, "mean": engine.input_mean, "std": engine.input_std,
                                    "formula": "(image / 255 - mean) / std, inside the graph"}},
        "outputs": {"class": f"int64 [{batch}]", "votes": f"float32 [{batch}, {engine.n_classes}]"},
        "class_names": list(engine.class_names), "head": engine.head, "k": engine.n_neighbors,
        "metric": engine.metric, "postprocessing": engine.postprocessing, "parameters": engine.parameters,
        "engine_bytes": engine.engine_bytes, "multiply_adds": engine.multiply_adds,
        "bank_size": int(engine.bank.shape[0]),
        "checks": checks,
        "verification": [v.__dict__ for v in verifications],
        "samples": {"file": "samples.npy", "expected_classes": expected.tolist(),
                    "expected_votes": np.round(expected_votes, 6).tolist()},
        "sha256": {f: sha256(staging / f) for f in files},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if bundle.exists():
        shutil.rmtree(bundle)
    staging.rename(bundle)  # the bundle appears whole or not at all
    return manifest
