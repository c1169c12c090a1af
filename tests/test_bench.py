import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from slicenet import bench
from slicenet.cli import main
from slicenet.errors import InputError

FIELDS = ("name", "runtime", "runtime_version", "threads", "count", "duration_s", "p50_ms", "p90_ms", "p99_ms",
          "mean_ms", "min_ms", "max_ms", "throughput_fps", "first_inference_ms", "session_creation_ms",
          "model_bytes", "peak_rss_mb", "p50_ratio_to_first", "cost", "estimates")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_run):
    root = tmp_path_factory.mktemp("bench")
    run = tiny_run
    for target in ("onnx", "openvino"):
        assert main(["export", str(run), "--target", target, "--out", str(root / "export")]) == 0
    from slicenet.export import bundle_name

    return root / "export" / bundle_name(run)


@pytest.mark.parametrize("runtime,targets", [("onnxruntime", ["onnx"]), ("openvino", ["openvino", "onnx"])])
def test_every_field_on_each_runtime(bundles, tmp_path, runtime, targets):
    out = tmp_path / "r.json"
    assert main(["bench", *[str(bundles / t) for t in targets], "--runtime", runtime, "--count", "30",
                 "--warmup", "3", "--threads", "1", "--json", str(out), "--results", str(tmp_path / "b")]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == len(targets) and rows[0]["p50_ratio_to_first"] == 1.0
    for row in rows:
        for field in FIELDS:
            assert field in row, field
        assert row["count"] == 30 and row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert all(e["kind"] == "estimate" for e in row["estimates"])
    assert len(list((tmp_path / "b").glob("*.json"))) == len(targets)


def test_interleaving_alternates():
    calls = []
    sessions = [bench.Session(name, None, "x", "0", lambda image, name=name: calls.append(name), np.zeros(1),
                              0, 0.0, 0.0) for name in ("A", "B", "C")]
    latencies = bench.run_interleaved(sessions, count=4, warmup=1)
    assert calls[:3] == ["A", "B", "C"]  # first inferences
    assert calls[3:] == ["A", "B", "C"] * 5  # one warm-up round, then four timed rounds
    assert all(len(v) == 4 for v in latencies.values())


def test_each_round_opens_fresh_sessions_in_a_rotated_order():
    calls, opened = [], []

    def open_sessions():
        opened.append(len(opened))
        return [bench.Session(name, None, "x", "0", lambda image, name=name: calls.append(name), np.zeros(1),
                              0, 0.0, 0.0) for name in ("A", "B", "C")]

    first, latencies = bench.run_rounds(open_sessions, count=7, warmup=0, rounds=3)
    assert len(opened) == 3 and [s.name for s in first] == ["A", "B", "C"]
    # Rounds of 3, 2 and 2 inferences each, after one first inference per bundle; round 2 starts
    # with B, round 3 with C.
    assert calls == ["A", "B", "C"] * 4 + ["B", "C", "A"] * 3 + ["C", "A", "B"] * 3
    assert list(latencies) == ["A", "B", "C"] and all(len(v) == 7 for v in latencies.values())


def test_torch_times_run_directories_not_bundles(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path)]) == 0
    bundle = next(tmp_path.glob("*/onnx"))
    capsys.readouterr()
    assert main(["bench", str(bundle), "--runtime", "torch", "--count", "3", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "--runtime torch times run directories" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text,match", [("{broken", "is damaged"), ('{"model": "x"}', "lacks target, onnx_model")])
def test_a_damaged_manifest_is_one_line_everywhere(tiny_run, tmp_path, capsys, text, match):
    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path)]) == 0
    bundle = next(tmp_path.glob("*/onnx"))
    (bundle / "manifest.json").write_text(text)  # these raised JSONDecodeError or KeyError tracebacks
    for command in (["bench", str(bundle), "--count", "3", "--rounds", "1"], ["check-2022", str(bundle)],
                    ["report", str(tiny_run), "--bundles", str(bundle), "--out", str(tmp_path / "r")]):
        capsys.readouterr()
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err


def test_rounds_must_fit_the_count(capsys):
    assert main(["bench", "export/none", "--count", "3", "--rounds", "5"]) == 2
    assert "--rounds must be between 1 and --count (3)" in capsys.readouterr().err


def test_round_ratios_compare_consecutive_blocks():
    first = [1.0] * 6 + [2.0] * 6
    other = [0.9] * 6 + [2.2] * 6  # faster in the first half, slower in the second
    assert bench.round_ratios(other, first, 2) == pytest.approx([0.9, 1.1])
    assert bench.round_ratios(other, first, 1) == pytest.approx([1.55 / 1.5])  # medians of the whole run


def test_a_difference_counts_only_where_every_round_agrees():
    from slicenet.report import latency_verdict

    assert latency_verdict({"p50_ratio_to_first": 0.92, "p50_ratio_rounds": [0.90, 0.92, 0.95]}).startswith("faster")
    assert latency_verdict({"p50_ratio_to_first": 1.2, "p50_ratio_rounds": [1.1, 1.2, 1.3]}).startswith("slower")
    assert latency_verdict({"p50_ratio_to_first": 0.9, "p50_ratio_rounds": [0.8, 0.9, 1.01]}).startswith("level")
    # Steady but small: inside the 3 % that whole runs of the same bundles move by.
    assert latency_verdict({"p50_ratio_to_first": 0.98, "p50_ratio_rounds": [0.98, 0.98, 0.98]}).startswith("level")
    assert latency_verdict({"p50_ratio_to_first": 0.98}).startswith("level")  # older runs: the 3 % band


def test_flop_count_of_a_small_graph_matches_a_hand_count():
    weight = np.ones((2, 1, 3, 3), dtype=np.float32)
    dense = np.ones((18, 4), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]),
         helper.make_node("Reshape", ["c", "shape"], ["f"]),
         helper.make_node("MatMul", ["f", "d"], ["m"]),
         helper.make_node("Relu", ["m"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(dense, "d"),
         numpy_helper.from_array(np.array([1, 18], dtype=np.int64), "shape")])
    cost = bench.graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    # Conv: 2x3x3 outputs x 9 multiply-adds x 2 = 324; MatMul: 18 x 4 x 2 = 144; Relu: 4.
    assert cost["flops"] == 324 + 144 + 4
    assert cost["weight_bytes"] == weight.nbytes + dense.nbytes + 16


def test_estimates_are_rooflines():
    profiles = {"boards": {"b": {"name": "Board", "modes": {"m": {"peak_gflops": 1.0, "bandwidth_gbs": 1.0}}}}}
    (row,) = bench.estimates({"flops": 2e9, "bytes_moved": 1e9}, profiles)
    assert row["estimated_ms"] == pytest.approx(2000.0) and row["bound"] == "compute" and row["kind"] == "estimate"


def test_malformed_ingest_names_the_missing_field(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"board": "nano", "runtime": "onnxruntime"}))
    assert main(["bench", "--ingest", str(path), "--results", str(tmp_path)]) == 2
    assert "lacks the field 'runtime_version'" in capsys.readouterr().err
    path.write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        bench.ingest(path)


def test_ingest_stores_a_board_result(tmp_path):
    result = {"board": "NVIDIA Jetson Nano", "runtime": "tensorrt", "runtime_version": "8.2.1", "precision": "fp16",
              "power_mode": "NV Power Mode: MAXN", "p50_ms": 0.4, "p90_ms": 0.5, "p99_ms": 0.9, "mean_ms": 0.45,
              "throughput_fps": 2200.0}
    path = tmp_path / "nano.json"
    path.write_text(json.dumps(result))
    assert main(["bench", "--ingest", str(path), "--results", str(tmp_path / "b")]) == 0
    (stored,) = (tmp_path / "b").glob("board-*.json")
    assert json.loads(stored.read_text())["kind"] == "measured"


def test_torch_runtime_on_run_directories(tiny_run, tmp_path):
    out = tmp_path / "t.json"
    run = tiny_run
    assert (run / "metrics.json").is_file()
    assert main(["bench", str(run), "--runtime", "torch", "--count", "5", "--warmup", "1", "--json", str(out),
                 "--results", str(tmp_path / "b")]) == 0
    (row,) = json.loads(out.read_text())
    assert row["runtime"] == "torch" and row["p50_ms"] > 0 and row["test_accuracy"] > 0.5


def test_latency_ratios_keep_their_digits_when_small():
    from slicenet.report import format_ratio

    assert format_ratio(1.234) == "1.23"
    assert format_ratio(0.95) == "0.95"
    assert format_ratio(0.004171) == "0.0042"  # not "0.00": a 240x gap must read as one
