"""Export targets: one class each, with the rules its runtime imposes, the files it writes and how
they are verified. The facts behind the rules are in docs/targets.md.

Every target writes the same graph description (``Engine.describe``); a target differs only in the
writers it uses, its ONNX opset, what it changes in the graph for its runtime (``prepare``: the
Jetson's takes float32 pixels and stores every weight as FP32, TensorRT 8.2 having no uint8 type and
no int8 tensor outside quantisation), its rule check (which fails naming the operation and the
target), and its board README.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..engine import Engine
from ..errors import InputError
from ..graph import Graph
from .ir_writer import write_ir
from .onnx_writer import write_onnx
from .verify import Verification, verify

TENSORRT_MAX_K = 3840
# Operations TensorRT 8.2's ONNX importer and MYRIAD in OpenVINO 2022.3 both accept (docs/targets.md).
BOARD_ONNX_OPS = frozenset({"Cast", "Mul", "Add", "Sub", "Conv", "MaxPool", "Relu", "Tanh", "Reshape", "ReduceSum",
                            "Sqrt", "Max", "Div", "MatMul", "Gemm", "Neg", "TopK", "Gather", "ArgMax", "Softmax"})
MYRIAD_IR_OPS = frozenset({"Parameter", "Result", "Const", "Convert", "Multiply", "Add", "Subtract", "Convolution",
                           "MaxPool", "ReLU", "Tanh", "Reshape", "ReduceSum", "Sqrt", "Maximum", "Divide", "MatMul",
                           "Negative", "TopK", "Gather", "SoftMax"})  # IR layer type names


class Target:
    """Plain ONNX for ONNX Runtime: any operation of a current opset."""

    name: ClassVar[str] = "onnx"
    onnx_opset: ClassVar[int] = 17
    allowed_ops: ClassVar[frozenset[str] | None] = None  # None: any operation of the opset
    model: ClassVar[str] = "engine.onnx"  # what run_engine.py runs
    ov2022_models: ClassVar[tuple[str, ...]] = ()  # files OpenVINO 2022.3.2 must read (export.ov2022)
    ranks_on_device: ClassVar[bool] = False  # an enrollable bundle's distance step can run on the device too
    input_dtype: ClassVar[str] = "uint8"  # the graph's image input (``prepare`` makes it so)
    readme: ClassVar[str] = """# {name}: ONNX (opset {opset}) for ONNX Runtime

    python3 run_engine.py --runtime onnxruntime      # checks sha256, runs the samples, writes result.json
    onnxruntime_perf_test -I -m times -r 1000 engine.onnx
"""

    def prepare(self, graph: Graph) -> Graph:
        """The engine's graph as this target's runtime must receive it (the same values): unchanged here."""
        return graph

    def onnx_model(self, graph: Graph) -> Any:
        """``graph`` as this target's ONNX model (``prepare``d, of its opset), checked by its rules."""
        model = write_onnx(self.prepare(graph), opset=self.onnx_opset)
        self.check_onnx(model)
        return model

    def check_onnx(self, model: Any) -> None:
        """Fail, naming the operation and the target, if the ONNX graph breaks the target's rules."""
        for node in model.graph.node:
            if self.allowed_ops is not None and node.op_type not in self.allowed_ops:
                raise InputError(f"operation {node.op_type} (node {node.name}) is not supported by target {self.name}")
        for value in list(model.graph.input) + list(model.graph.output):
            if any(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim):
                raise InputError(f"target {self.name} needs static shapes; {value.name} has a dynamic dimension")

    def write(self, engine: Engine, graph: Graph, *, folder: Path, images: np.ndarray, labels: np.ndarray,
              batch: int) -> tuple[dict, list[Verification]]:
        """Write the target's files into ``folder``; return (the checks passed, the verifications)."""
        import onnx

        model = self.onnx_model(graph)
        onnx.save_model(model, str(folder / "engine.onnx"))
        checks = {"onnx_opset": self.onnx_opset, "onnx_ops": sorted({n.op_type for n in model.graph.node}),
                  "operations": {"description": len(graph.nodes), "onnx": len(model.graph.node)}}
        return checks, self.verify(engine, folder=folder, images=images, labels=labels, batch=batch)

    def verify(self, engine: Engine, *, folder: Path, images: np.ndarray, labels: np.ndarray, batch: int
               ) -> list[Verification]:
        return [verify(engine, folder / "engine.onnx", images=images, labels=labels, runtime="onnxruntime",
                       precision="fp32", batch=batch)]

    def write_trunk(self, graph: Graph, folder: Path) -> tuple[str, str, dict]:
        """An enrollable bundle's trunk graph (image -> embedding), by this target's rules: (the file
        its runner runs, the runtime that runs it here, its checks)."""
        import onnx

        model = self.onnx_model(graph)
        onnx.save(model, str(folder / "trunk.onnx"))
        return "trunk.onnx", "onnxruntime", {"onnx_opset": self.onnx_opset, "operations": len(model.graph.node)}

    def write_ranking(self, graph: Graph, folder: Path, stem: str) -> dict:
        """An enrollable bundle's distance step on the device (``Engine.describe_ranking``, where
        ``ranks_on_device``): its checks and where its bank's constants lie in the file."""
        raise InputError(f"target {self.name} runs an enrollable bundle's distance step on its host")

    def readme_text(self, *, name: str, engine: Engine, checks: dict) -> str:
        text = self.readme.format(name=name, opset=self.onnx_opset, k=getattr(engine.head, "n_neighbors", ""),
                                  ir_version=checks.get("ir", {}).get("ir_version", ""))
        if "enrollable" not in checks:
            return text
        runtime = "openvino" if self.name in ("openvino", "ncs2") else "onnxruntime"
        text += f"""
## Enrolling new classes here

This bundle keeps its bank outside the graph: `trunk.*` gives each image's embedding, `bank-G.npy` and
`bank_labels-G.npy` are the prototypes. New classes, from a folder of class sub-folders of images
(named as the classes; a folder named as an existing class adds prototypes to it):

    python3 run_engine.py enrol . NEW_CLASSES_DIR [--per-class N] [--new-only] --runtime {runtime}
    python3 run_engine.py run --runtime {runtime}                   # the trunk here, the k-NN vote in numpy
"""
        if checks["enrollable"].get("ranking", {}).get("status") != "not written" and self.ranks_on_device:
            text += """    python3 run_engine.py run --runtime openvino --device MYRIAD --distance stick

With `--distance stick` the stick also computes the distances and the k nearest, in `ranked-G.xml`,
whose `.bin` holds the bank as FP16 constants of a fixed number of slots (manifest.json,
enrollable.stick.capacity); `enrol` rewrites them and refuses to overfill them.
"""
        return text


class OpenvinoTarget(Target):
    """Current OpenVINO on a CPU: an FP32 IR from the IR writer, beside its ONNX source."""

    name = "openvino"
    model = "engine.xml"
    readme = """# {name}: OpenVINO IR (FP32) for current OpenVINO on CPU

    python3 run_engine.py --runtime openvino --device CPU
    benchmark_app -m engine.xml -d CPU -hint latency -infer_precision f32
"""

    def write(self, engine: Engine, graph: Graph, *, folder: Path, images: np.ndarray, labels: np.ndarray,
              batch: int) -> tuple[dict, list[Verification]]:
        # The ONNX file is kept beside the IR: its source, and the cost model's.
        checks, _ = super().write(engine, graph, folder=folder, images=images, labels=labels, batch=batch)
        checks["ir"] = self.write_ir(graph, folder)
        checks["operations"]["ir"] = checks["ir"]["layers"]
        return checks, [verify(engine, folder / "engine.xml", images=images, labels=labels, runtime="openvino",
                               precision=checks["ir"]["precision"], batch=batch)]

    def verify(self, engine: Engine, *, folder: Path, images: np.ndarray, labels: np.ndarray, batch: int
               ) -> list[Verification]:
        return []  # the IR is what this target runs: verified in write

    def write_ir(self, graph: Graph, folder: Path, stem: str = "engine") -> dict:
        import openvino as ov

        ov.save_model(write_ir(graph), str(folder / f"{stem}.xml"), compress_to_fp16=False)
        return {**ir_summary(folder / f"{stem}.xml"), "precision": "fp32"}

    def write_trunk(self, graph: Graph, folder: Path) -> tuple[str, str, dict]:
        _, _, checks = super().write_trunk(graph, folder)
        return "trunk.xml", "openvino", {**checks, "ir": self.write_ir(graph, folder, "trunk")}


class BoardTarget(Target):
    """What both boards' toolchains read: ONNX opset <= 13 (TensorRT 8.2; OpenVINO 2022.3's model
    optimizer), static shapes, constant K, no OneHot, and only ``BOARD_ONNX_OPS``."""

    onnx_opset = 13
    allowed_ops = BOARD_ONNX_OPS

    def check_onnx(self, model: Any) -> None:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset > 13:
            raise InputError(f"target {self.name}: ONNX opset {opset} is above 13, which TensorRT 8.2 / OpenVINO "
                             "2022.3's model optimizer accept")
        for node in model.graph.node:
            if node.op_type == "OneHot":
                raise InputError(f"operation OneHot is not supported by target {self.name}")
        super().check_onnx(model)
        constants = {i.name for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "TopK" and node.input[1] not in constants:
                raise InputError(f"target {self.name} needs a constant K for TopK (node {node.name})")


class JetsonTarget(BoardTarget):
    """NVIDIA Jetson Nano: TensorRT 8.2 ignores TopK's largest=0, takes K <= 3840, has no uint8 type
    (from 8.5 on) and takes an int8 tensor only with quantisation scales: so the graph takes float32
    pixels, and a bank stored as int8 (or fp16) is decoded to FP32 constants in the file, the values
    the engine computes with (TensorRT builds its own FP16 engine from them)."""

    name = "jetson"
    input_dtype = "float32"
    # ONNX element types TensorRT 8.2's parser maps (INT64 is narrowed to INT32), INT8 left out (above).
    TENSOR_TYPES: ClassVar[frozenset[str]] = frozenset({"FLOAT", "FLOAT16", "INT32", "INT64", "BOOL"})
    readme = """# {name}: NVIDIA Jetson Nano (JetPack 4.6.x, TensorRT 8.2.1, Python 3.6)

`engine.onnx` is ONNX opset 13 with static shapes, K={k} <= 3840, no OneHot, and the nearest
neighbours found as TopK(largest=1) of the negated distance (TensorRT 8.2 ignores largest=0). Its
input `image` is float32 holding the pixel values 0-255 (TensorRT 8.2 has no uint8 type), and every
weight is FP32: TensorRT 8.2 takes an int8 tensor only with quantisation scales.

Once, on the board (JetPack 4.6 has Python 3.6.9; PyPI has no aarch64 GPU wheel of onnxruntime): take
`onnxruntime_gpu-1.11.0-cp36-cp36m-linux_aarch64.whl` from the Jetson Zoo (elinux.org/Jetson_Zoo,
"ONNX Runtime"), then

    pip3 install numpy onnxruntime_gpu-1.11.0-cp36-cp36m-linux_aarch64.whl

Power mode and clocks, then the FP16 TensorRT engine and its timing:

    sudo nvpmodel -m 0 && sudo jetson_clocks          # 10 W MAXN (use -m 1 for the 5 W mode)
    /usr/src/tensorrt/bin/trtexec --onnx=engine.onnx --fp16 --saveEngine=engine.plan
    /usr/src/tensorrt/bin/trtexec --loadEngine=engine.plan --useSpinWait --noDataTransfers \\
        --warmUp=500 --duration=10 --percentile=99 | tee trtexec.txt
    tegrastats --interval 100                         # board power: POM_5V_IN

The samples' predictions at that precision (TensorRT FP16, through onnxruntime-gpu's TensorRT
provider; the engine is cached in this folder), and the runner's own timing:

    python3 run_engine.py --runtime tensorrt --precision fp16
    python3 run_engine.py --runtime onnxruntime       # CUDA (or CPU) provider, FP32

Copy `result.json` and `trtexec.txt` back and, on the host:

    slicenet bench --ingest result.json
    slicenet bench --ingest trtexec.txt --bundle export/{name}/jetson
"""

    def prepare(self, graph: Graph) -> Graph:
        return graph.fold_constants().with_float_input()

    def check_onnx(self, model: Any) -> None:
        from onnx import TensorProto, numpy_helper

        super().check_onnx(model)
        typed = [(f"tensor {v.name}", v.type.tensor_type.elem_type) for v in [*model.graph.input, *model.graph.output]]
        typed += [(f"constant {i.name}", i.data_type) for i in model.graph.initializer]
        typed += [(f"Cast {n.name}", a.i) for n in model.graph.node if n.op_type == "Cast" for a in n.attribute
                  if a.name == "to"]
        for what, elem_type in typed:
            if TensorProto.DataType.Name(elem_type) not in self.TENSOR_TYPES:
                raise InputError(f"{what} is {TensorProto.DataType.Name(elem_type)}, which target jetson cannot "
                                 f"take (TensorRT 8.2 takes {', '.join(sorted(self.TENSOR_TYPES))})")
        constants = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type != "TopK":
                continue
            if next((a.i for a in node.attribute if a.name == "largest"), 1) == 0:
                raise InputError("operation TopK with largest=0 is not supported by target jetson "
                                 "(TensorRT 8.2 ignores it); use TopK of the negated distance")
            if int(numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0]) > TENSORRT_MAX_K:
                raise InputError(f"TopK K above {TENSORRT_MAX_K} is not supported by target jetson")


class Ncs2Target(BoardTarget):
    """Intel Neural Compute Stick 2: an FP16 IR of opset1 / opset3 operations for OpenVINO 2022.3's MYRIAD
    plugin, and an opset-13 ONNX fallback for 2022.3's own model optimizer."""

    name = "ncs2"
    model = "engine.xml"
    ov2022_models = ("engine.xml", "engine.onnx")  # the IR, and the fallback mo converts
    ranks_on_device = True
    readme = """# {name}: Intel Neural Compute Stick 2 (MYRIAD, OpenVINO 2022.3 LTS)

`engine.xml` / `engine.bin` are an FP16 IR (v{ir_version}) built from opset1/opset3 operations only,
static shapes, MYRIAD-supported layers; OpenVINO 2022.3.2's own runtime read and compiled them and the
ONNX fallback before this bundle was written (manifest.json, checks.openvino_2022). MYRIAD ships only in
the 2022.3 archive installers (not pip). Once, on the host the stick is plugged into:

    source /opt/intel/openvino_2022/setupvars.sh
    sudo usermod -a -G users "$(whoami)"              # then log out and in
    sudo /opt/intel/openvino_2022/install_dependencies/install_NCS_udev_rules.sh   # USB rules; replug the stick

Compile for the stick once; the blob is what the later commands load:

    compile_tool -m engine.xml -d MYRIAD -o engine.blob          # no stick attached: add -c myriad.conf
    benchmark_app -m engine.blob -d MYRIAD -hint latency
    python3 run_engine.py --runtime openvino --device MYRIAD --model engine.blob

`myriad.conf` holds `MYRIAD_ENABLE_MX_BOOT NO`. Fallback: `engine.onnx` (opset 13) converts with
2022.3's own model optimizer: `mo --input_model engine.onnx --compress_to_fp16`.
Copy `result.json` back and run `slicenet bench --ingest result.json` on the host.
"""

    @staticmethod
    def write_fp16_ir(graph: Graph, path: Path) -> dict:
        """``graph`` as the stick's FP16 IR at ``path``, checked by its rules (opset <= 10, MYRIAD layers).
        The stick computes in FP16 whatever the file holds: a stored int8 or fp16 bank is decoded to
        constants, which the FP16 compression stores (one decompression step fewer on the stick)."""
        import openvino as ov

        ov.save_model(write_ir(graph.fold_constants()), str(path), compress_to_fp16=True)
        return check_ir_opsets(path)

    def write(self, engine: Engine, graph: Graph, *, folder: Path, images: np.ndarray, labels: np.ndarray,
              batch: int) -> tuple[dict, list[Verification]]:
        checks, verifications = super().write(engine, graph, folder=folder, images=images, labels=labels, batch=batch)
        checks["ir"] = self.write_fp16_ir(graph, folder / "engine.xml")
        checks["operations"]["ir"] = checks["ir"]["layers"]
        if "f16" not in checks["ir"]["const_precisions"]:
            raise InputError("the NCS2 IR has no FP16 weights; MYRIAD needs an FP16 model")
        (folder / "myriad.conf").write_text("MYRIAD_ENABLE_MX_BOOT NO\n")
        verifications.append(verify(engine, folder / "engine.xml", images=images, labels=labels, runtime="openvino",
                                    precision="fp16-weights", batch=batch))
        return checks, verifications

    def write_trunk(self, graph: Graph, folder: Path) -> tuple[str, str, dict]:
        """The trunk on the stick (FP16 IR, opset <= 10); the vote runs on the host, in numpy."""
        _, _, checks = super().write_trunk(graph, folder)
        return "trunk.xml", "openvino", {**checks, "ir": self.write_fp16_ir(graph, folder / "trunk.xml")}

    def write_ranking(self, graph: Graph, folder: Path, stem: str) -> dict:
        """The ranking graph as an FP16 IR by the stick's rules, and the offset, size and shape of its
        bank constants in the .bin (what ``run_engine.py enrol`` rewrites)."""
        checks = self.write_fp16_ir(graph, folder / f"{stem}.xml")
        text = (folder / f"{stem}.xml").read_text()
        constants = {}
        for name in ("bank_t", "bank_norm2"):
            found = re.search(rf'<layer [^>]*name="{name}(?:_compressed)?" type="Const"[^>]*>\s*<data '
                              r'element_type="([^"]+)" shape="([^"]*)" offset="(\d+)" size="(\d+)"', text)
            if not found or found.group(1) != "f16":
                raise InputError(f"the NCS2 ranking graph stores {name} " + (f"as {found.group(1)}, not FP16" if found
                                 else "under another name") + ": it cannot be enrolled into")
            constants[name] = {"offset": int(found.group(3)), "size": int(found.group(4)),
                               "shape": [int(d) for d in found.group(2).split(",")]}
        return {"checks": checks, "constants": constants, "element_type": "f16"}


TARGETS: dict[str, Target] = {t.name: t for t in (Target(), OpenvinoTarget(), JetsonTarget(), Ncs2Target())}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}")
    return TARGETS[name]


def check_onnx(model: Any, name: str) -> None:
    """``target(name).check_onnx(model)``."""
    target(name).check_onnx(model)


def ir_summary(xml_path: Path) -> dict:
    """IR version, layers (Parameter, Result and Const left out), the Converts among them that only
    decompress an FP16 constant (what ``compress_to_fp16`` adds: no work per inference), and the
    constants' precisions."""
    text = xml_path.read_text()
    version = re.search(r'<net [^>]*version="(\d+)"', text)
    layers = dict(re.findall(r'<layer id="(\d+)" [^>]*type="([^"]+)"', text))
    edges = re.findall(r'<edge from-layer="(\d+)"[^>]*to-layer="(\d+)"', text)
    decompressing = {to for source, to in edges if layers.get(source) == "Const" and layers.get(to) == "Convert"}
    precisions = set(re.findall(r'<layer [^>]*type="Const"[^>]*>\s*<data [^>]*element_type="([^"]+)"', text))
    operations = sum(t not in ("Parameter", "Result", "Const") for t in layers.values())
    return {"ir_version": int(version.group(1)) if version else 0, "layers": operations,
            "decompression_layers": len(decompressing), "compute_layers": operations - len(decompressing),
            "const_precisions": sorted(precisions)}


def check_ir_opsets(xml_path: Path, max_opset: int = 10) -> dict:
    """Every layer of an IR must come from opset1..``max_opset`` and be a MYRIAD-supported type."""
    summary = ir_summary(xml_path)
    if summary["ir_version"] not in (10, 11):
        raise InputError(f"IR version {summary['ir_version']}: OpenVINO 2022.3 reads IR v10 and v11 only")
    for op_type, version in re.findall(r'<layer [^>]*type="([^"]+)"[^>]*version="([^"]+)"', xml_path.read_text()):
        number = int(version[5:]) if version.startswith("opset") else None
        if number is None or number > max_opset:
            raise InputError(f"operation {op_type} ({version}) is not supported by target ncs2: "
                             f"OpenVINO 2022.3 reads opset1..opset{max_opset} only")
        if op_type not in MYRIAD_IR_OPS:
            raise InputError(f"operation {op_type} is not supported by target ncs2 (MYRIAD)")
    return summary
