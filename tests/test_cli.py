import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from slicenet.cli import main
from slicenet.data import load_dataset
from slicenet.engine import Engine

FAST = ["--dataset", "digits", "--generations", "2", "--population-size", "6", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits-cma"
    assert main(["optimise", *FAST, "--out", str(out)]) == 0
    return out


def test_optimise_writes_a_complete_run(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_accuracy", "validation_accuracy", "random_init_test_accuracy", "parameters",
                "engine_bytes", "wall_seconds", "evaluations", "method", "dataset", "command"):
        assert key in metrics, key
    for key in ("test_accuracy", "validation_accuracy", "random_init_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["test_accuracy"] > 0.8  # digits with a k-NN head, even after two generations
    assert metrics["engine_bytes"] == (run_dir / "engine.safetensors").stat().st_size
    assert not (run_dir / "checkpoint.pkl").exists()
    assert 0.0 < metrics["engine_seconds"] <= metrics["wall_seconds"]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("block,layer,filter,generation") and len(history) == 1 + 2 * 2
    assert 'method = "cma"' in (run_dir / "config.toml").read_text()


def test_an_engine_is_the_same_bytes_wherever_its_run_lives(run_dir, tmp_path):
    """The same command into another directory (a path of another length) writes the same engine, byte for
    byte, and so does condensing it: an engine's bytes, its size and its hash never depend on a path."""
    elsewhere = tmp_path / "a" / "much-longer-directory-name" / "digits-cma"
    assert main(["optimise", *FAST, "--out", str(elsewhere)]) == 0
    assert (elsewhere / "engine.safetensors").read_bytes() == (run_dir / "engine.safetensors").read_bytes()
    # an engine written before this release kept its run's path in its info: it is dropped on load
    old = tmp_path / "old-engine"
    shutil.copytree(elsewhere, old)
    engine = Engine.load(old / "engine.safetensors")
    engine.info = {**engine.info, "run": str(old)}
    (old / "engine.safetensors").write_bytes(engine.to_bytes())
    assert "run" not in Engine.load(old / "engine.safetensors").info  # so condense and enrol never write it again
    condensed = [tmp_path / "c", tmp_path / "another-condensed-engine", tmp_path / "old" / "condensed"]
    for source, out in zip((run_dir, elsewhere, old), condensed, strict=True):
        assert main(["condense", str(source), "--prototypes", "3", "--out", str(out)]) == 0
    blobs = [(out / "engine.safetensors").read_bytes() for out in condensed]
    assert blobs[0] == blobs[1] == blobs[2]
    assert str(tmp_path).encode() not in blobs[0] and str(run_dir.parent).encode() not in blobs[0]


def test_evaluate_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert result["accuracy"] == metrics["test_accuracy"]
    assert np.array(result["confusion_matrix"]).sum() == result["n_images"]


def test_evaluate_table(run_dir, capsys):
    assert main(["evaluate", str(run_dir)]) == 0
    assert "confusion matrix" in capsys.readouterr().out


def test_predict_an_image_file(run_dir, tmp_path, capsys):
    data = load_dataset("digits")
    path = tmp_path / "digit.png"
    Image.fromarray(data.x_test[0]).save(path)
    assert main(["predict", str(run_dir), str(path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert sum(row["votes"].values()) == 9 and row["label"] in data.class_names


def test_the_run_names_the_device_auto_chose(tmp_path, capsys):
    assert main(["optimise", *FAST, "--out", str(tmp_path / "r")]) == 0
    chosen = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"populations scored on device {chosen}" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["device"].startswith(chosen)


def test_local_mean_vote_end_to_end(tmp_path, capsys):
    """optimise --vote local-mean: recorded, predicted with each class's local-mean distance, and
    named as such in the report."""
    out = tmp_path / "local-mean"
    assert main(["optimise", *FAST, "--vote", "local-mean", "--fitness-vote", "local-mean", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vote"] == metrics["fitness_vote"] == "local-mean"
    data = load_dataset("digits")
    Image.fromarray(data.x_test[0]).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "digit.png"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    distances = row["local_mean_distance"]
    assert len(distances) == 10 and next(iter(distances)) == row["label"]  # nearest first
    assert list(distances.values()) == sorted(distances.values())
    assert main(["report", str(out), "--out", str(tmp_path / "results")]) == 0
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "| k-NN (k=9, local mean), CMA, local-mean fitness | digits |" in report
    assert "| k-NN (k=9, local mean) on a random-init trunk | digits |" in report  # measured with its head


def test_test_time_views_end_to_end(tmp_path, capsys):
    """optimise --query-shifts 1: recorded, predicted with the votes of all five views, and named in the report."""
    out = tmp_path / "views"
    assert main(["optimise", *FAST, "--query-shifts", "1", "--bank-shifts", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["query_shifts"] == 1 and metrics["bank_shifts"] == 1
    Image.fromarray(load_dataset("digits").x_test[0]).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "digit.png")]) == 0
    assert "votes over 5 test-time views" in capsys.readouterr().out
    assert main(["predict", str(out), str(tmp_path / "digit.png"), "--json"]) == 0
    assert sum(json.loads(capsys.readouterr().out)[0]["votes"].values()) == 5 * 9
    assert main(["report", str(out), "--out", str(tmp_path / "results")]) == 0
    report = (tmp_path / "results" / "REPORT.md").read_text()
    assert "| k-NN (k=9, 5 views), CMA, bank + 1-px shifts | digits |" in report
    assert "| k-NN (k=9, 5 views) on a random-init trunk, bank + 1-px shifts | digits |" in report


@pytest.mark.parametrize("method", ["pso", "ga"])
def test_other_methods_and_filter_granularity(tmp_path, method):
    out = tmp_path / method
    assert main(["optimise", *FAST, "--method", method, "--granularity", "filter", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["method"] == method


def test_config_file(tmp_path):
    (tmp_path / "run.toml").write_text('dataset = "digits"\ngenerations = [1]\npopulation_size = 4\nseed = 2\n')
    out = tmp_path / "run"
    assert main(["optimise", "--config", str(tmp_path / "run.toml"), "--quiet", "--out", str(out)]) == 0
    assert "seed = 2" in (out / "config.toml").read_text()


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slicenet.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("command", [
    ["optimise", "--dataset", "digits"], ["report"], ["arch-search", "--dataset", "digits"],
    ["condense", "RUN", "--prototypes", "2"], ["export", "RUN", "--target", "onnx"],
    ["enrol", "RUN", "--dataset", "digits"], ["transfer", "RUN", "--dataset", "digits"],
])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, command, run_main):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for out in (taken, taken / "below"):
        status, err = run_main([a.replace("RUN", str(tmp_path / "no-run")) for a in command] + ["--out", str(out)])
        assert status == 2 and len(err.strip().splitlines()) == 1 and "is a file" in err, err
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("args,match", [
    (["optimise", "--method", "adam"], "method 'adam'"),
    (["optimise", "--preset", "resnet", "--dataset", "digits"], "unknown trunk preset"),
    (["optimise", "--dataset", "folder:/nonexistent"], "not a directory"),
    (["optimise", "--dataset", "digits", "--preset", "radu", "--n-neighbors", "0"], "n_neighbors"),
    (["optimise", "--generations", "x"], "invalid int value"),
    (["optimise", "--config", "/nonexistent.toml"], "does not exist"),
    (["evaluate", "/nonexistent"], "does not exist"),
    (["predict", "/nonexistent", "x.png"], "does not exist"),
    (["optimise", "--resume", "/tmp"], "not a slicenet run directory"),
    (["optimise", "--dataset", "digits", "--vote", "median"], "vote 'median'"),
    (["optimise", "--dataset", "digits", "--vote", "local-mean", "--metric", "cosine"], "local-mean is Euclidean"),
    (["optimise", "--dataset", "digits", "--vote", "local-mean", "--prototypes", "5"], "voted by majority"),
    (["optimise", "--dataset", "digits", "--fitness-vote", "local-mean", "--metric", "manhattan"],
     "fitness_vote local-mean is Euclidean"),
    (["optimise", "--dataset", "digits", "--fitness-vote", "local-mean", "--n-neighbors", "150"],
     "smallest class has 139: lower --n-neighbors or use --fitness-vote majority"),
    (["optimise", "--dataset", "digits", "--vote", "local-mean", "--n-neighbors", "150"], "smallest class has 139"),
    (["baseline", "--dataset", "digits", "--head", "knn", "--vote", "local-mean", "--n-neighbors", "150"],
     "smallest class has 139"),
    (["optimise", "--dataset", "digits", "--query-shifts", "5"], "query_shifts must be between 0 and 4 pixels"),
    (["optimise", "--dataset", "digits", "--query-shifts", "1", "--prototypes", "5"],
     "test-time views (query_shifts) need the full bank"),
    (["optimise", "--dataset", "digits", "--seed", "-1"], "--seed must be 0 or positive, got -1"),
    (["optimise", "--dataset", "digits", "--seeds", "0", "-2"], "--seed must be 0 or positive, got -2"),
    (["optimise", "--dataset", "digits", "--seeds", "0", "1", "0"], "--seeds names seed 0 more than once"),
    (["baseline", "--dataset", "digits", "--seed", "-3"], "--seed must be 0 or positive"),
    (["arch-search", "--dataset", "digits", "--seed", "-1", "--out", "/tmp/never-written"],
     "--seed must be 0 or positive"),
    (["arch-search", "--dataset", "digits", "--rank-generations", "0", "--out", "/tmp/never-written"],
     "--rank-generations must be at least 1"),  # before the search, not after it
    (["arch-search", "--dataset", "digits", "--rank-images", "5", "--out", "/tmp/never-written"],
     "--rank-images must be 0 (as the short searches) or at least 20"),
    (["optimise", "--dataset", "digits", "--workers", "-1"], "--workers must be 0"),
    (["export", "/nonexistent", "--target", "onnx", "--verify-images", "-1"], "--verify-images must be 0"),
    (["bench", "export/none", "--threads", "-1"], "--threads must be 0 (the runtime's default) or positive"),
    (["bench", "export/none", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["bench-search", "nosuch", "--dataset", "digits"], "evaluator 'nosuch': expected a device"),
    (["optimise", "--dataset", "digits", "--generations", "2", "3", "4"],
     "--generations gives 3 budgets for a trunk of 2 convolutions"),  # the third was dropped silently
    (["optimise", "--dataset", "digits", "--preset", "genetic:0,8:0-00/0-00-000"],
     "each stage needs at least 1 filter"),  # was a ZeroDivisionError
    (["optimise", "--dataset", "digits", "--prototypes", "1000"], "keeps every image of every class"),
    (["report", "runs/none-such"], "runs/none-such"),  # the one run named: its error, in one line
    (["report", "--bench", "pyproject.toml"], "--bench pyproject.toml is a file"),
])
def test_bad_input_exits_2_with_one_line(args, match, run_main):
    """In-process (``run_main``); the test below checks what a shell sees from the real command."""
    status, err = run_main(args)
    assert status == 2, err
    assert match in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args,match", [
    (["optimise", "--method", "adam"], "method 'adam'"),
    (["optimise", "--generations", "x"], "invalid int value"),
])
def test_a_bad_flag_from_the_shell_exits_2_without_a_traceback(args, match):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert match in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_python_dash_m_slicenet_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "slicenet", "--version"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.startswith("slicenet "), result.stderr
    bad = subprocess.run([sys.executable, "-m", "slicenet", "optimise", "--method", "adam"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("slicenet: error:"), bad.stderr


def test_bad_image_and_not_a_run(run_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = cli("predict", str(run_dir), str(bad))
    assert result.returncode == 2 and "cannot decode image" in result.stderr
    result = cli("evaluate", str(tmp_path))
    assert result.returncode == 2 and "not a finished slicenet run" in result.stderr


def test_out_refuses_to_overwrite_a_finished_run(run_dir):
    before = (run_dir / "engine.safetensors").read_bytes()
    result = cli("optimise", *FAST, "--out", str(run_dir))
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    assert (run_dir / "engine.safetensors").read_bytes() == before


def test_report_from_runs(run_dir, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    assert "slicenet optimise --dataset digits" in text and "| k-NN (k=9), CMA | digits | tiny |" in text
    assert (out / "accuracy_vs_engine_size.png").stat().st_size > 1000
    csv_text = (out / "runs.csv").read_text()
    assert csv_text.startswith("run,network,kind,head,method,dataset")  # what the engine is, as data
    assert ',"k-NN (k=9), CMA",search,majority,cma,digits,' in csv_text
    # Every engine's multiply-adds per image, recorded by the run and listed beside its bytes.
    macs = json.loads((run_dir / "metrics.json").read_text())["multiply_adds"]
    assert macs == Engine.load(run_dir / "engine.safetensors").multiply_adds
    assert f"| {macs:,} | 1 |" in text


def test_report_names_a_malformed_metrics_file(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "metrics.json").write_text("{not json")
    result = cli("report", str(broken), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "metrics.json is not valid JSON" in result.stderr
    (broken / "metrics.json").write_text('{"test_accuracy": 0.5}')
    result = cli("report", str(broken), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "lacks engine_bytes" in result.stderr


def test_report_row_names_follow_the_resolved_bank():
    from slicenet.report import bank_shifts, network_name

    run = {"method": "cma", "preset": "default", "bank_shifts": 1}
    config = {"n_neighbors": 9, "granularity": "layer", "scoring": "loo", "bank_shifts": -1}
    assert network_name(run, config) == "k-NN (k=9), CMA, bank + 1-px shifts"
    # A condensed bank is built from the plain training images, whatever its source run had.
    assert bank_shifts({**run, "compact": {"method": "kmeans"}}, config) == 0
    assert bank_shifts({**run, "compact": {"method": "lvq", "bank_shifts": 1}}, config) == 1  # fitted to shifts
    plain = network_name({**run, "bank_shifts": 0}, {**config, "scoring": "holdout"})
    assert plain == "k-NN (k=9), CMA, holdout scoring"
    swept = network_name({**run, "bank_shifts": 0}, {**config, "sweeps": 2, "granularity": "filter"})
    assert swept == "k-NN (k=9), CMA, per filter, 2 sweeps"


def test_the_size_plot_names_only_engines_no_smaller_one_matches():
    from slicenet.condense import frontier
    from slicenet.report import run_kind

    points = [{"engine_bytes": b, "test_median": a, "name": n} for b, a, n in
              [(10, 0.80, "small"), (10, 0.70, "small, worse"), (20, 0.75, "larger, worse"),
               (30, 0.80, "larger, level"), (40, 0.90, "largest, best")]]
    assert [p["name"] for p in frontier(points, value="test_median")] == ["small", "largest, best"]
    timed = [{"p50_ms": t, "accuracy": a} for t, a in [(0.02, 86.0), (0.03, 85.0), (1.4, 86.8)]]
    assert frontier(timed, cost="p50_ms", value="accuracy") == [timed[0], timed[2]]
    # What a run is comes from its metrics (``kind``), or for runs written before that was recorded,
    # from their other fields: never from the label.
    assert run_kind({"kind": "compact", "hidden": 128}) == "compact"
    assert run_kind({"hidden": 128, "head": "dense"}) == "backprop-dense"
    assert run_kind({"hidden": 128, "head": "knn"}) == "backprop-knn"
    assert run_kind({"preset": "pixels"}) == "pixels"
    assert run_kind({"compact": {"method": "lvq"}}) == "compact"
    assert run_kind({"preset": "default"}) == "search"


def test_class_maps_are_checked_against_both_sides():
    from slicenet.errors import InputError
    from slicenet.pipeline import class_index

    engine = ("0", "1", "2")
    assert list(class_index(("one", "zero"), engine, {"one": "1", "zero": "0"})) == [1, 0]
    with pytest.raises(InputError, match="maps to 9, which the engine's classes \\(0, 1, 2\\) do not include"):
        class_index(("one",), engine, {"one": "9"})
    with pytest.raises(InputError, match="names two, which the dataset's classes"):
        class_index(("one",), engine, {"one": "1", "two": "2"})


@pytest.mark.parametrize("mapping", ["cat=0,dog", "=0", "cat="])
def test_a_malformed_class_map_is_one_line(tiny_run, mapping, run_main):
    status, err = run_main(["evaluate", str(tiny_run), "--dataset", "digits", "--class-map", mapping])
    assert status == 2 and "expected dataset=engine pairs" in err and len(err.strip().splitlines()) == 1, err
