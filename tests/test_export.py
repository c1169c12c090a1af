import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from slicenet.cli import main
from slicenet.errors import InputError
from slicenet.export import build_onnx, bundle_name, check_ir_opsets, check_onnx

DEVICES = Path(__file__).resolve().parent.parent / "devices"


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "dense"
    assert main(["baseline", "--dataset", "digits", "--epochs", "2", "--hidden", "16", "--quiet",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def local_mean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "local-mean"
    assert main(["optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--vote",
                 "local-mean", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("target", ["onnx", "openvino", "jetson", "ncs2"])
@pytest.mark.parametrize("which", ["tiny_run", "dense_run", "local_mean_run"])
def test_every_target_exports_and_verifies(request, which, target, tmp_path):
    run = request.getfixturevalue(which)
    assert main(["export", str(run), "--target", target, "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(run) / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    for v in manifest["verification"]:
        assert v["images"] == 360
        if v["precision"] == "fp32":
            assert v["agreement"] == 1.0  # identical predictions to the torch engine
        else:
            assert v["agreement"] >= 0.99 and abs(v["accuracy_exported"] - v["accuracy_torch"]) <= 0.01
    for name, digest in manifest["sha256"].items():
        import hashlib
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert manifest["input"]["dtype"] == ("float32" if target == "jetson" else "uint8")  # TensorRT 8.2: no uint8
    assert manifest["input"]["shape"] == [1, 1, 8, 8]
    assert manifest["multiply_adds"] == json.loads((run / "metrics.json").read_text())["multiply_adds"]
    assert (bundle / "README.md").is_file() and (bundle / "run_engine.py").is_file()


def test_jetson_file_rules(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "--target", "jetson", "--out", str(tmp_path)]) == 0
    model = onnx.load(str(tmp_path / bundle_name(tiny_run) / "jetson" / "engine.onnx"))
    assert max(o.version for o in model.opset_import) <= 13
    ops = {n.op_type for n in model.graph.node}
    assert "OneHot" not in ops
    for n in model.graph.node:
        if n.op_type == "TopK":
            assert next(a.i for a in n.attribute if a.name == "largest") == 1
    assert not (tmp_path / bundle_name(tiny_run) / "jetson" / "engine.onnx.data").exists()  # one file
    # TensorRT 8.2 has no uint8 type: float32 pixels in, no Cast left, every constant FP32 or an index.
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert "Cast" not in ops
    assert {i.data_type for i in model.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_jetson_export_of_a_stored_bank_holds_its_decoded_values_in_fp32(tiny_run, tmp_path, precision):
    """An int8 or fp16 bank reaches TensorRT 8.2 as the FP32 values the engine computes with (it takes
    an int8 tensor only with quantisation scales): the predictions and votes are the engine's."""
    from slicenet.data import load_dataset
    from slicenet.engine import Engine
    from slicenet.export import run_onnxruntime, target

    engine = Engine.load(tiny_run / "engine.safetensors").with_storage(bank=precision)
    model = target("jetson").onnx_model(engine.describe(batch=2))
    assert {i.data_type for i in model.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    onnx.save(model, tmp_path / "engine.onnx")
    images = load_dataset("digits").x_test[:41]
    expected_class, expected, _ = engine.predict(images)
    classes, votes = run_onnxruntime(tmp_path / "engine.onnx", images, 2)
    assert np.array_equal(classes, expected_class) and abs(votes - expected).max() < 1e-4


def test_the_jetson_rules_name_a_type_tensorrt_8_2_cannot_take(tiny_run):
    from slicenet.engine import Engine

    raw = build_onnx(Engine.load(tiny_run / "engine.safetensors"), 13)  # not prepared: a uint8 image input
    with pytest.raises(InputError, match="tensor image is UINT8, which target jetson cannot take"):
        check_onnx(raw, "jetson")
    check_onnx(raw, "ncs2")  # OpenVINO reads uint8


def test_ncs2_ir_is_opset10_and_fp16(tiny_run, tmp_path):
    import re

    assert main(["export", str(tiny_run), "--target", "ncs2", "--out", str(tmp_path)]) == 0
    xml = (tmp_path / bundle_name(tiny_run) / "ncs2" / "engine.xml").read_text()
    versions = re.findall(r'<layer [^>]*version="opset(\d+)"', xml)
    assert versions and max(int(v) for v in versions) <= 10
    weights = re.findall(r'<layer [^>]*name="[^"]*"[^>]*type="Const"[^>]*>\s*<data [^>]*element_type="(\w+)"', xml)
    assert "f16" in weights


def _with_node(model, op_type: str, **attrs):
    extra = helper.make_node(op_type, ["votes"], ["extra"], name="forbidden", **attrs)
    model.graph.node.append(extra)
    return model


def test_forbidden_operations_are_named(tiny_run):
    from slicenet.engine import Engine
    from slicenet.export import target

    engine = Engine.load(tiny_run / "engine.safetensors")
    model = target("jetson").onnx_model(engine.describe())
    one_hot = onnx.ModelProto()
    one_hot.CopyFrom(model)
    one_hot.graph.node.append(helper.make_node("OneHot", ["nearest", "k", "votes"], ["x"], name="oh"))
    with pytest.raises(InputError, match="operation OneHot .* not supported by target jetson"):
        check_onnx(one_hot, "jetson")
    smallest = onnx.ModelProto()
    smallest.CopyFrom(model)
    for n in smallest.graph.node:
        if n.op_type == "TopK":
            for a in n.attribute:
                if a.name == "largest":
                    a.i = 0
    with pytest.raises(InputError, match="TopK with largest=0"):
        check_onnx(smallest, "jetson")
    newer = build_onnx(engine, 17)
    with pytest.raises(InputError, match="opset 17 is above 13"):
        check_onnx(newer, "ncs2")
    check_onnx(newer, "onnx")  # any operation of a current opset is fine for plain ONNX Runtime


def test_ir_checker_rejects_a_newer_opset(tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text('<net name="m" version="11"><layers><layer id="0" name="t" type="TopK" version="opset11">'
                   '</layer></layers></net>')
    with pytest.raises(InputError, match="TopK \\(opset11\\) is not supported by target ncs2"):
        check_ir_opsets(xml)


@pytest.mark.parametrize("target,runtime", [("jetson", "onnxruntime"), ("ncs2", "openvino"),
                                            ("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_board_runner_runs_here(tiny_run, tmp_path, target, runtime):
    assert main(["export", str(tiny_run), "--target", target, "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(tiny_run) / target
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "--runtime", runtime, "--iterations", "20",
                             "--warmup", "2", "--out", str(tmp_path / "r.json")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads((tmp_path / "r.json").read_text())
    for key in ("board", "runtime", "runtime_version", "precision", "power_mode", "p50_ms", "p90_ms", "p99_ms",
                "mean_ms", "min_ms", "max_ms", "throughput_fps", "first_inference_ms"):
        assert key in out, key
    assert out["samples_matching_expected"] == out["samples"]


def test_board_runner_detects_a_damaged_file(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(tiny_run) / "onnx"
    data = bytearray((bundle / "samples.npy").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "samples.npy").write_bytes(bytes(data))
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "--runtime", "onnxruntime"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "samples.npy has sha256" in result.stderr


@pytest.mark.parametrize("flags,match", [
    (["--iterations", "0"], "--iterations must be at least 1"),  # was an IndexError
    (["--providers", "CUDAExcutionProvider"], "knows no such execution provider"),  # was timed on the CPU
    (["--out", "/nonexistent/r.json"], "its folder does not exist"),  # was a traceback after the timing
])
def test_board_runner_refuses_bad_flags_in_one_line(tiny_run, tmp_path, flags, match):
    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(tiny_run) / "onnx"
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "--runtime", "onnxruntime", *flags],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr and not (tmp_path / "result.json").exists()


def test_board_code_is_python36_compatible():
    """Checked by a tool (vermin), not by eye; and no torch or slicenet import."""
    import re
    import shutil

    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    result = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations", "--eval-annotations", str(DEVICES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in DEVICES.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(torch|slicenet)\b", path.read_text(), re.M), path


def test_unknown_target(tiny_run, capsys):
    assert main(["export", str(tiny_run), "--target", "tpu"]) == 2
    assert "unknown target 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["onnx", "ncs2"])
def test_batched_export_verifies_and_benches(tiny_run, tmp_path, target):
    assert main(["export", str(tiny_run), "--target", target, "--batch", "8", "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(tiny_run) / f"{target}-b8"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["input"]["shape"][0] == 8 and manifest["verification"][0]["agreement"] == 1.0
    runtime = "onnxruntime" if target == "onnx" else "openvino"
    result = subprocess.run([sys.executable, str(bundle / "run_engine.py"), "--runtime", runtime, "--iterations", "5",
                             "--warmup", "1", "--out", str(tmp_path / "r.json")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["batch"] == 8
    out = tmp_path / "b.json"
    assert main(["bench", str(bundle), "--runtime", runtime, "--batch", "8", "--count", "5", "--warmup", "1",
                 "--json", str(out), "--results", str(tmp_path / "res")]) == 0
    assert json.loads(out.read_text())[0]["batch"] == 8
    assert main(["bench", str(bundle), "--runtime", runtime, "--batch", "4", "--count", "5"]) == 2


@pytest.mark.parametrize("target", ["onnx", "ncs2"])
def test_batched_local_mean_export_verifies(local_mean_run, tmp_path, target):
    assert main(["export", str(local_mean_run), "--target", target, "--batch", "8", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / bundle_name(local_mean_run) / f"{target}-b8" / "manifest.json").read_text())
    assert manifest["verification"][0]["agreement"] == 1.0


def test_local_mean_votes_are_the_engines(local_mean_run, tmp_path):
    """Not only the class: the exported votes are the engine's minus local-mean distances, in fp32."""
    import openvino as ov

    from slicenet.data import load_dataset
    from slicenet.engine import Engine
    from slicenet.export import build_ncs2_ir, run_onnxruntime, run_openvino

    engine = Engine.load(local_mean_run / "engine.safetensors")
    images = load_dataset("digits").x_test[:40]
    _, expected, _ = engine.predict(images)
    onnx.save(build_onnx(engine, 13), tmp_path / "engine.onnx")
    ov.save_model(build_ncs2_ir(engine), str(tmp_path / "engine.xml"), compress_to_fp16=False)
    for votes in (run_onnxruntime(tmp_path / "engine.onnx", images)[1],
                  run_openvino(tmp_path / "engine.xml", images)[1]):
        assert abs(votes - expected).max() < 1e-4


@pytest.mark.parametrize("which,change", [("tiny_run", {}), ("tiny_run", {"n_neighbors": 1}),
                                           ("local_mean_run", {})])
def test_test_time_views_export_with_the_engines_votes(request, tmp_path, which, change):
    """An engine with test-time views (--query-shifts 1): every target's graph gathers the five views
    of each image, runs them as one batch and sums their votes, which equal the engine's, at batch 1
    and batch 3; the graphs keep to the targets' rules."""
    import dataclasses

    import openvino as ov

    from slicenet.data import load_dataset
    from slicenet.engine import Engine
    from slicenet.export import build_ncs2_ir, run_onnxruntime, run_openvino, target

    run = request.getfixturevalue(which)
    from slicenet.views import Views

    loaded = Engine.load(run / "engine.safetensors")
    engine = dataclasses.replace(loaded, views=Views(1), head=dataclasses.replace(loaded.head, **change))
    images = load_dataset("digits").x_test[:40]
    expected_class, expected, _ = engine.predict(images)
    for batch in (1, 3):
        onnx.save(target("jetson").onnx_model(engine.describe(batch=batch)), tmp_path / "jetson.onnx")
        onnx.save(target("ncs2").onnx_model(engine.describe(batch=batch)), tmp_path / "engine.onnx")
        ov.save_model(build_ncs2_ir(engine, batch), str(tmp_path / "engine.xml"), compress_to_fp16=False)
        for classes, votes in (run_onnxruntime(tmp_path / "jetson.onnx", images, batch),
                               run_onnxruntime(tmp_path / "engine.onnx", images, batch),
                               run_openvino(tmp_path / "engine.xml", images, batch)):
            assert abs(votes - expected).max() < 1e-4 and np.array_equal(classes, expected_class)
        assert check_ir_opsets(tmp_path / "engine.xml")


def test_a_run_with_test_time_views_exports_to_every_target(tmp_path):
    out = tmp_path / "views"
    assert main(["optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--vote",
                 "local-mean", "--bank-shifts", "1", "--query-shifts", "1", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["query_shifts"] == 1 and metrics["bank_size"] == 5 * 1437
    for target in ("onnx", "openvino", "jetson", "ncs2"):
        assert main(["export", str(out), "--target", target, "--out", str(tmp_path / "bundles")]) == 0
        manifest = json.loads((tmp_path / "bundles" / bundle_name(out) / target / "manifest.json").read_text())
        assert all(v["agreement"] == 1.0 for v in manifest["verification"] if v["precision"] == "fp32")
        assert manifest["multiply_adds"] == metrics["multiply_adds"]


def test_near_ties_are_counted_only_where_float_noise_can_swap_neighbours(tiny_run):
    """A duplicated bank makes every image's first and second neighbour tie exactly; the engine as
    trained has no such ties on the digits test images."""
    import dataclasses

    import torch

    from slicenet.data import load_dataset
    from slicenet.engine import Engine
    from slicenet.export import near_ties

    engine = Engine.load(tiny_run / "engine.safetensors")
    images = load_dataset("digits").x_test[:20]
    assert near_ties(engine, images) == 0
    head = engine.head
    shifted = (head.bank_labels + 1) % 10
    doubled = engine.with_head(dataclasses.replace(head, bank=torch.cat([head.bank, head.bank]),
                                                   bank_labels=torch.cat([head.bank_labels, shifted]), n_neighbors=1))
    assert near_ties(doubled, images) == len(images)


def test_local_mean_near_ties_count_a_class_whose_kth_and_next_prototypes_tie(local_mean_run):
    """Every prototype twice: each class's 1st and 2nd nearest tie exactly, for every image."""
    import dataclasses

    import torch

    from slicenet.data import load_dataset
    from slicenet.engine import Engine
    from slicenet.export import near_ties

    engine = Engine.load(local_mean_run / "engine.safetensors")
    images = load_dataset("digits").x_test[:20]
    head = engine.head
    doubled = engine.with_head(dataclasses.replace(head, bank=torch.cat([head.bank, head.bank]),
                                                   bank_labels=torch.cat([head.bank_labels, head.bank_labels]),
                                                   n_neighbors=1))
    assert near_ties(doubled, images) == len(images)


def test_openvino_runs_are_exact_f32():
    # Verification and bench turn off bf16 and OpenVINO's on-the-fly int8 activations beside int8
    # weights (which swapped one MNIST neighbour 0.001 nearer than the next); both keys must exist.
    import openvino as ov

    from slicenet.export import OPENVINO_EXACT_CPU

    supported = set(ov.Core().get_property("CPU", "SUPPORTED_PROPERTIES"))
    assert set(OPENVINO_EXACT_CPU) <= supported


@pytest.mark.parametrize("padding", [0, 1])
def test_normalisation_folds_into_an_unpadded_first_conv(padding, tmp_path):
    """Without padding the first Conv takes the raw pixels (no Mul/Add in the graph) and computes what
    normalising first computes; with padding the normalisation stays, since padded zeros differ."""
    import openvino as ov
    import torch

    from slicenet.data import load_dataset
    from slicenet.engine import Engine, PostProcessing
    from slicenet.export import build_ncs2_ir, run_onnxruntime, run_openvino
    from slicenet.heads import DenseHead
    from slicenet.trunk import LayerSpec, TrunkSpec, init_weights

    data = load_dataset("digits")
    spec = TrunkSpec((LayerSpec(4, 3, padding=padding, pool=2),))
    generator = torch.Generator().manual_seed(0)
    n_features = spec.n_features(data.image_size)
    dense = [(torch.randn(10, n_features, generator=generator) * 0.3, torch.randn(10, generator=generator))]
    engine = Engine(spec, init_weights(spec, 0), 0.3, 0.4, PostProcessing("none"), DenseHead(dense), data.class_names,
                    data.image_size)
    images = data.x_test[:50]
    _, expected, _ = engine.predict(images)

    model = build_onnx(engine, 17)
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("Conv") == (3 if padding else 1)  # Cast (Mul, Add) Conv
    onnx.save(model, tmp_path / "engine.onnx")
    _, votes = run_onnxruntime(tmp_path / "engine.onnx", images)
    assert abs(votes - expected).max() < 1e-5

    ir = build_ncs2_ir(engine)
    assert ("Multiply" in {op.get_type_name() for op in ir.get_ops()}) == bool(padding)
    ov.save_model(ir, tmp_path / "engine.xml", compress_to_fp16=False)
    _, votes = run_openvino(tmp_path / "engine.xml", images)
    assert abs(votes - expected).max() < 1e-5


def _newer_opset_ir(path):
    """An IR of what today's OpenVINO writes for a TopK: opset11, which 2022.3 cannot read."""
    import openvino as ov
    import openvino.opset11 as opset11

    x = ov.opset1.parameter([1, 10], np.float32, name="image")
    ov.save_model(ov.Model([opset11.topk(x, np.int64(3), 1, "max", "value", "i32").output(0)], [x], "newer"),
                  str(path))
    return path


def test_every_ncs2_export_is_read_and_run_by_openvino_2022(tiny_run, tmp_path):
    """The IR and its ONNX fallback are read (IR and ONNX frontends), compiled for the CPU plugin and
    classify the samples with OpenVINO 2022.3.2's own runtime; the manifest records it."""
    assert main(["export", str(tiny_run), "--target", "ncs2", "--out", str(tmp_path)]) == 0
    check = json.loads((tmp_path / bundle_name(tiny_run) / "ncs2" / "manifest.json").read_text())["checks"][
        "openvino_2022"]
    assert check["release"] == "2022.3.2" and check["status"] == "passed"
    for name in ("engine.xml", "engine.onnx"):
        assert check["models"][name]["read"] and check["models"][name]["compiled"]
        if "samples" in check["models"][name]:  # where a CPython 3.10 runs 2022.3's Python API
            assert check["models"][name]["samples_agree"] == check["models"][name]["samples"]
    assert main(["export", str(tiny_run), "--target", "ncs2", "--no-check-2022", "--out", str(tmp_path / "n")]) == 0
    skipped = json.loads((tmp_path / "n" / bundle_name(tiny_run) / "ncs2" / "manifest.json").read_text())
    assert skipped["checks"]["openvino_2022"]["status"] == "not checked"


def test_a_graph_of_a_newer_opset_fails_the_2022_check_naming_the_operation(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "check-2022",
                             str(_newer_opset_ir(tmp_path / "newer.xml"))], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "TopK" in result.stdout and "opset11" in result.stdout


def test_an_ncs2_export_that_2022_refuses_is_not_written(tiny_run, tmp_path, monkeypatch):
    import openvino as ov

    from slicenet.export import targets

    newer = _newer_opset_ir(tmp_path / "newer.xml")
    monkeypatch.setattr(targets, "write_ir", lambda graph: ov.Core().read_model(str(newer)))
    monkeypatch.setattr(targets, "verify", lambda *args, **kwargs: targets.Verification(1, 1.0, 1.0, 1.0, "x", "y"))
    monkeypatch.setattr(targets, "check_ir_opsets", lambda path: {"ir_version": 11, "layers": 1,
                                                                  "const_precisions": ["f16"]})
    with pytest.raises(InputError, match="TopK .* opset11"):
        from slicenet.data import load_dataset
        from slicenet.engine import Engine
        from slicenet.export import export_bundle

        data = load_dataset("digits")
        export_bundle(Engine.load(tiny_run / "engine.safetensors"), run_dir=tiny_run, target_name="ncs2",
                      out_root=tmp_path / "out", images=data.x_test[:20], labels=data.y_test[:20])
    assert not (tmp_path / "out" / bundle_name(tiny_run) / "ncs2").exists()
    assert not list((tmp_path / "out" / bundle_name(tiny_run)).iterdir())  # no staging folder left behind


@pytest.mark.parametrize("case", ["no compiler", "no such model", "not a model"])
def test_the_2022_checks_own_errors_are_one_line(tmp_path, case):
    import os
    import shutil

    from slicenet.export import ov2022

    env = dict(os.environ)
    if case == "no compiler":  # a fresh cache (the wheel reused, no reader built yet) and no g++
        cache = tmp_path / "cache" / f"openvino-{ov2022.RELEASE}"
        cache.mkdir(parents=True)
        shutil.copytree(ov2022.cache_root() / "download", cache / "download")
        env.update(SLICENET_CACHE=str(tmp_path / "cache"), CXX="no-such-compiler")
        model = str(_newer_opset_ir(tmp_path / "m.xml"))
    elif case == "not a model":
        model = str(tmp_path / "digit.png")
        (tmp_path / "digit.png").write_bytes(b"\x89PNG")
    else:
        model = str(tmp_path / "missing.xml")
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "check-2022", model], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {"no compiler": "no C++ compiler", "no such model": "no such model file",
            "not a model": "expected an exported bundle folder or its model files"}[case] in result.stderr
