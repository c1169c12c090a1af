"""A run killed with SIGKILL at any moment resumes to exactly the engine of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slicenet.engine import Engine

ARGS = ["optimise", "--dataset", "digits", "--generations", "4", "6", "--population-size", "8", "--quiet",
        "--threads", "1"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "slicenet.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def history_rows(path):
    import pickle

    try:
        return len(pickle.loads((path / "checkpoint.pkl").read_bytes())["state"].history)
    except (FileNotFoundError, EOFError, pickle.UnpicklingError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("method,kill_after", [("cma", 5), ("pso", 2), ("ga", 7)])
def test_sigkill_then_resume_gives_the_same_engine(tmp_path, method, kill_after):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert start(*ARGS, "--method", method, "--out", str(reference)).wait(300) == 0

    process = start(*ARGS, "--method", method, "--out", str(killed))
    deadline = time.time() + 300
    while history_rows(killed) < kill_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()

    resumed = start("optimise", "--resume", str(killed), "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    a = Engine.load(reference / "engine.safetensors")
    b = Engine.load(killed / "engine.safetensors")
    for (wa, ba), (wb, bb) in zip(a.weights, b.weights, strict=True):
        assert torch.equal(wa, wb) and torch.equal(ba, bb)
    assert torch.equal(a.head.bank, b.head.bank)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (reference, killed))
    assert ma["test_accuracy"] == mb["test_accuracy"] and ma["evaluations"] == mb["evaluations"]
    history = (killed / "history.csv").read_text()
    assert history == (reference / "history.csv").read_text()


def test_resume_rejects_extra_flags(tmp_path):
    result = subprocess.run([sys.executable, "-m", "slicenet.cli", "optimise", "--resume", str(tmp_path),
                             "--method", "pso"], capture_output=True, text=True)
    assert result.returncode == 2 and "drop --method" in result.stderr
