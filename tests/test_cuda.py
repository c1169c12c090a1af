"""The commands that take ``--device``, on a CUDA GPU against the CPU (skipped where torch sees none).

CI has no GPU, so these run on a machine that has one (``results/scale/gpu_bench.sh`` makes the measurements);
the CPU-only side of ``--device`` (its error without a GPU) is tested in test_cluster.py.
"""

import json

import numpy as np
import pytest
import torch

from slicenet.cli import main
from slicenet.data import load_dataset
from slicenet.engine import Engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: these compare CPU and "
                                "CUDA where there is one (results/scale/gpu_bench.sh)")

SEARCH = ["optimise", "--dataset", "digits", "--generations", "3", "--population-size", "8", "--quiet"]


def engine(run):
    return Engine.load(run / "engine.safetensors")


def predictions(engine_, images):
    return engine_.predict(images)[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same short digits search, scored on the CPU and on the GPU."""
    root = tmp_path_factory.mktemp("cuda")
    for device in ("cpu", "cuda"):
        assert main([*SEARCH, "--device", device, "--out", str(root / device)]) == 0
    return root / "cpu", root / "cuda"


def test_a_cuda_search_gives_the_cpu_searchs_fitness_and_predictions(pair):
    cpu, cuda = pair
    a, b = (json.loads((run / "metrics.json").read_text()) for run in pair)
    assert a["evaluations"] == b["evaluations"]
    history = [np.loadtxt(run / "history.csv", delimiter=",", skiprows=1, usecols=(-1,), ndmin=1) for run in pair]
    np.testing.assert_allclose(history[1], history[0], rtol=1e-4, atol=1e-5)
    for (wa, ba), (wb, bb) in zip(engine(cpu).weights, engine(cuda).weights, strict=True):
        torch.testing.assert_close(wb, wa, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb, ba, rtol=1e-4, atol=1e-5)
    x_test = load_dataset("digits").x_test
    assert np.array_equal(predictions(engine(cpu), x_test), predictions(engine(cuda), x_test))
    assert a["test_accuracy"] == b["test_accuracy"]


def test_an_engine_evaluated_on_cuda_predicts_as_on_the_cpu(pair, capsys):
    cpu, _ = pair
    results = []
    for device in ("cpu", "cuda"):
        capsys.readouterr()
        assert main(["evaluate", str(cpu), "--device", device, "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    x_test = load_dataset("digits").x_test
    assert np.array_equal(predictions(engine(cpu), x_test), predictions(engine(cpu).to("cuda"), x_test))


def test_the_baseline_trains_on_cuda_as_on_the_cpu(tmp_path):
    metrics = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert main(["baseline", "--dataset", "digits", "--quiet", "--epochs", "3", "--hidden", "16", "--device",
                     device, "--out", str(out)]) == 0
        metrics[device] = json.loads((out / "metrics.json").read_text())
        assert engine(out).weights[0][0].device.type == "cpu"  # the file holds a CPU engine, as every run's
    assert metrics["cuda"]["device"].startswith("cuda")
    # the same seed and batches; only float rounding (and cuDNN's kernels) differ
    assert abs(metrics["cuda"]["test_accuracy"] - metrics["cpu"]["test_accuracy"]) <= 0.05, metrics


def test_a_joint_condense_on_cuda_equals_the_cpu_one(pair, tmp_path):
    cpu, _ = pair
    outs = []
    for device in ("cpu", "cuda"):
        outs.append(tmp_path / device)
        assert main(["condense", str(cpu), "--prototypes", "3", "--method", "joint", "--device", device,
                     "--out", str(outs[-1])]) == 0
    a, b = (json.loads((out / "metrics.json").read_text()) for out in outs)
    assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.01, (a["test_accuracy"], b["test_accuracy"])


def test_a_transfer_searches_on_cuda(pair, tmp_path):
    cpu, _ = pair
    out = tmp_path / "t"
    assert main(["transfer", str(cpu), "--dataset", "digits", "--generations", "2", "--search-images", "200",
                 "--quiet", "--device", "cuda", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.5


def test_an_arch_search_scores_its_individuals_on_cuda(tmp_path):
    from .test_genetic import ARCH

    assert main([*ARCH, "--device", "cuda", "--out", str(tmp_path / "a")]) == 0
    individuals = sorted((tmp_path / "a" / "individuals").glob("*/metrics.json"))
    assert individuals and all(json.loads(m.read_text())["device"].startswith("cuda") for m in individuals)
