"""A newcomer's path, from the user's side: the CLI in a temporary directory, as a person would meet it."""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slicenet.cli import main
from slicenet.data import load_dataset
from slicenet.export import bundle_name

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd=None, env=None, code=None):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "slicenet.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **(env or {})})


def one_line_error(result, match):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr, result.stderr


# -- install ---------------------------------------------------------------------------------------

def test_a_missing_package_is_one_line_naming_the_install_and_writes_nothing(tiny_run, tmp_path):
    blocked = "import sys; sys.modules['onnx'] = None; from slicenet.cli import main; sys.exit(main(sys.argv[1:]))"
    result = cli("export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path / "export"), code=blocked)
    one_line_error(result, "needs onnx, which is not installed: pip install slicenet")
    assert not (tmp_path / "export").exists()


def test_the_main_install_brings_what_using_it_needs():
    import tomllib

    dependencies = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for package in ("onnx", "onnxruntime", "openvino", "matplotlib"):
        assert package in dependencies


@pytest.mark.slow
def test_a_wheel_install_exports_without_a_checkout(tiny_run, tmp_path):
    """Built as a wheel, installed in a fresh virtual environment (its dependencies from this one), run
    outside the checkout: the bundle still carries the board runner, from the package itself."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True, timeout=600)
    located = subprocess.run([str(python), "-c", "import slicenet; print(slicenet.__file__)"], capture_output=True,
                             text=True, cwd=tmp_path, check=True).stdout
    assert str(venv) in located  # the wheel's copy, not the checkout's
    result = subprocess.run([str(python), "-m", "slicenet.cli", "export", str(tiny_run), "--target", "onnx",
                             "--out", str(tmp_path / "export")], capture_output=True, text=True, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "export" / bundle_name(tiny_run) / "onnx"
    assert (bundle / "run_engine.py").read_text() == (ROOT / "devices" / "run_engine.py").read_text()


def test_export_of_an_engine_file_says_to_pass_the_run_directory(tiny_run):
    one_line_error(cli("export", str(tiny_run / "engine.safetensors"), "--target", "onnx"),
                   "pass the run directory")


# -- report ------------------------------------------------------------------------------------------

def test_the_report_never_writes_results_unless_asked_and_skips_a_corrupt_run(tiny_run, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "REPORT.md").write_text("the project's evidence\n")
    broken = tmp_path / "runs" / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "metrics.json").write_text("{not json")
    result = cli("report", str(tiny_run), str(broken), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken" in result.stderr
    assert (tmp_path / "results" / "REPORT.md").read_text() == "the project's evidence\n"
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "| k-NN (k=9), CMA | digits |" in report and "No benchmark results in `report/bench`" in report
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(
        ["REPORT.md", "runs.csv", "accuracy_vs_engine_size.png", "fitness_vs_evaluations.png",
         "confusion_matrix_best_knn.png"])  # nothing else, no staging folder left behind


def test_a_strict_report_fails_before_writing_anything(tiny_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "metrics.json").write_text('{"test_accuracy": 0.5}')
    result = cli("report", str(tiny_run), str(broken), "--strict", "--out", str(tmp_path / "out"))
    one_line_error(result, "lacks engine_bytes")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_report_that_fails_half_way_leaves_the_previous_one_whole(tiny_run, tmp_path, monkeypatch):
    from slicenet import report

    assert main(["report", str(tiny_run), "--out", str(tmp_path / "out")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def broken_plots(rows, out, bench=None):
        (out / "accuracy_vs_engine_size.png").write_bytes(b"half a plot")
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(report, "render_plots", broken_plots)
    with pytest.raises(RuntimeError):
        main(["report", str(tiny_run), "--out", str(tmp_path / "out")])
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_bench_writes_next_to_the_users_report(tiny_run, tmp_path):
    assert cli("export", str(tiny_run), "--target", "onnx", "--out", "export", cwd=tmp_path).returncode == 0
    bundle = f"export/{bundle_name(tiny_run)}/onnx"
    result = cli("bench", bundle, "--count", "20", "--warmup", "2", "--rounds", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert bundle in result.stdout and "ESTIMATES" in result.stdout  # full names, and the board estimates
    assert list((tmp_path / "report" / "bench").glob("*.json")) and not (tmp_path / "results").exists()
    assert cli("report", str(tiny_run), cwd=tmp_path).returncode == 0
    assert "### Host, measured" in (tmp_path / "report" / "REPORT.md").read_text()


# -- evaluate on a folder --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """The digits test split as image folders, named 0..9 and zero..nine."""
    data = load_dataset("digits")
    root = tmp_path_factory.mktemp("folders")
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for names, folder in ((list("0123456789"), "digits"), (words, "words")):
        for index, (image, label) in enumerate(zip(data.x_test, data.y_test, strict=True)):
            (root / folder / names[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / folder / names[label] / f"{index}.png")
    return root, words


def test_evaluate_a_folder_whole_and_by_class_name(tiny_run, digit_folders):
    root, words = digit_folders
    result = cli("evaluate", str(tiny_run), "--dataset", f"folder:{root / 'digits'}", "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    assert evaluated["n_images"] == 360 and evaluated["split"] == "all"  # every image, not a 20 % split
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["test_accuracy"])  # the same 360 images
    split = json.loads(cli("evaluate", str(tiny_run), "--dataset", f"folder:{root / 'digits'}", "--split", "test",
                           "--json").stdout)
    assert split["n_images"] == 72
    one_line_error(cli("evaluate", str(tiny_run), "--dataset", f"folder:{root / 'words'}"),
                   "do not match the engine's (0, 1, 2")
    mapping = ",".join(f"{word}={index}" for index, word in enumerate(words))
    mapped = cli("evaluate", str(tiny_run), "--dataset", f"folder:{root / 'words'}", "--class-map", mapping, "--json")
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["accuracy"] == pytest.approx(metrics["test_accuracy"])


# -- the boards --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ncs2_bundle(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("boards")
    assert main(["export", str(tiny_run), "--target", "ncs2", "--no-check-2022", "--out", str(out)]) == 0
    return out / bundle_name(tiny_run) / "ncs2"


@pytest.mark.parametrize("args,match", [
    (["--runtime", "openvino", "--device", "MYRIAD"], "OpenVINO sees no MYRIAD device"),
    (["--runtime", "openvino", "--device", "MYRIAD", "--model", "engine.blob"], "engine.blob is not in the bundle"),
    (["--runtime", "tensorrt"], "no TensorRT execution provider"),
])
def test_the_runner_says_what_is_missing_in_one_line(ncs2_bundle, args, match):
    result = subprocess.run([sys.executable, str(ncs2_bundle / "run_engine.py"), *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr


def test_a_result_measured_on_the_host_is_never_a_boards(ncs2_bundle, tiny_run, tmp_path):
    result = subprocess.run([sys.executable, str(ncs2_bundle / "run_engine.py"), "--runtime", "openvino",
                             "--iterations", "10", "--warmup", "1", "--out", str(tmp_path / "result.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads((tmp_path / "result.json").read_text())
    assert measured["measured_on"] == "host" and measured["target"] == "ncs2"
    assert main(["bench", "--ingest", str(tmp_path / "result.json"), "--results", str(tmp_path / "r" / "bench")]) == 0
    (stored,) = (tmp_path / "r" / "bench").glob("*.json")
    assert json.loads(stored.read_text())["kind"] == "host-runner"
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "REPORT.md").read_text()
    boards = report[report.index("### Boards, measured"):]
    assert "None yet" in boards and "measured by the board runner" in report


TRTEXEC = """[12/01/2026-10:00:00] [I] Precision: FP32+FP16
[12/01/2026-10:00:05] [I] Timing trace has 21934 queries over 3.00012 s
[12/01/2026-10:00:05] [I] === Performance summary ===
[12/01/2026-10:00:05] [I] Throughput: 7311.06 qps
[12/01/2026-10:00:05] [I] Latency: min = 0.121 ms, max = 0.549 ms, mean = 0.132 ms, median = 0.130 ms, \
percentile(99%) = 0.163 ms
[12/01/2026-10:00:05] [I] GPU Compute Time: min = 0.11 ms, max = 0.5 ms, mean = 0.12 ms, median = 0.118 ms, \
percentile(99%) = 0.15 ms
"""


def test_trtexec_timing_is_ingested_as_the_bundles_board_result(tiny_run, tmp_path):
    assert main(["export", str(tiny_run), "--target", "jetson", "--out", str(tmp_path)]) == 0
    (tmp_path / "trtexec.txt").write_text(TRTEXEC)
    bundle = tmp_path / bundle_name(tiny_run) / "jetson"
    assert main(["bench", "--ingest", str(tmp_path / "trtexec.txt"), "--results", str(tmp_path / "b")]) == 2
    assert main(["bench", "--ingest", str(tmp_path / "trtexec.txt"), "--bundle", str(bundle),
                 "--results", str(tmp_path / "b")]) == 0
    (stored,) = (tmp_path / "b").glob("*.json")
    result = json.loads(stored.read_text())
    assert result["kind"] == "measured" and result["target"] == "jetson" and result["precision"] == "fp16"
    assert result["p50_ms"] == 0.130 and result["p99_ms"] == 0.163 and result["throughput_fps"] == 7311.06


def test_board_estimates_never_beat_this_hosts_cpu(tiny_run, tmp_path):
    """The overhead terms: no estimate several times faster than ONNX Runtime on this host; the
    Jetson's 5 W mode slower than its 10 W mode."""
    import onnx

    from slicenet import bench
    from slicenet.export import board_file

    assert main(["export", str(tiny_run), "--target", "onnx", "--out", str(tmp_path)]) == 0
    bundle = tmp_path / bundle_name(tiny_run) / "onnx"
    model = onnx.load(str(bundle / "engine.onnx"))
    rows = bench.estimates(bench.graph_cost(model), bench.load_profiles(board_file("profiles.toml")),
                           operations=len(model.graph.node))
    session = bench.open_bundle(bundle, "onnxruntime", threads=1)
    _, latencies = bench.run_rounds(lambda: [session], count=200, warmup=20, rounds=1)
    host_ms = float(np.median(latencies[session.name]))
    assert all(r["estimated_ms"] > host_ms / 2 for r in rows), (host_ms, rows)
    by_mode = {r["mode"]: r["estimated_ms"] for r in rows}
    assert by_mode["5W-fp16"] > by_mode["10W-fp16"] and by_mode["5W-fp32"] > by_mode["10W-fp32"]


# -- what the screen says --------------------------------------------------------------------------

def test_optimise_names_its_directory_and_the_next_commands(tmp_path):
    result = cli("optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4",
                 "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert f"run directory: {tmp_path / 'run'}" in result.stderr
    assert "fitness_best_so_far" in result.stderr and "this_gen_best_train_acc" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("next: slicenet evaluate")


@pytest.mark.parametrize("command", ["optimise", "baseline", "condense", "export", "check-2022", "bench", "evaluate",
                                     "predict", "report"])
def test_every_help_shows_defaults_positionals_and_examples(command):
    result = cli(command, "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "examples:\n  slicenet " + command in text
    if command in ("optimise", "condense", "bench"):
        assert "(default: " in text
    if command in ("condense", "export", "evaluate", "predict"):
        assert "run directory" in text.split("options:")[0]  # the positional has its own line


def test_predict_warns_about_an_inverted_image_and_inverts_it(tiny_run, tmp_path):
    image = load_dataset("digits").x_test[0]
    Image.fromarray(255 - image).save(tmp_path / "dark-on-light.png")
    warned = cli("predict", str(tiny_run), str(tmp_path / "dark-on-light.png"))
    assert warned.returncode == 0 and "looks inverted" in warned.stderr and "--invert" in warned.stderr
    flipped = cli("predict", str(tiny_run), str(tmp_path / "dark-on-light.png"), "--invert", "--json")
    Image.fromarray(image).save(tmp_path / "plain.png")
    plain = cli("predict", str(tiny_run), str(tmp_path / "plain.png"), "--json")
    assert "looks inverted" not in flipped.stderr
    assert json.loads(flipped.stdout)[0]["class"] == json.loads(plain.stdout)[0]["class"]


# -- reliability -------------------------------------------------------------------------------------

class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_checkpoint_is_refused_before_it_runs_anything(tmp_path):
    run = tmp_path / "run"
    assert cli("optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--quiet",
               "--out", str(run)).returncode == 0
    (run / "metrics.json").unlink()
    (run / "checkpoint.pkl").write_bytes(pickle.dumps({"version": "x", "state": _RunsACommand(), "wall_seconds": 0}))
    result = cli("optimise", "--resume", str(run), "--quiet", cwd=tmp_path)
    one_line_error(result, "is not a slicenet checkpoint")
    assert "posix.system" in result.stderr or "os.system" in result.stderr
    assert not (tmp_path / "pwned").exists()
