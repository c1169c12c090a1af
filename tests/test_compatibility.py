"""Behaviour kept across the redesign, against answers recorded by slicenet 0.1 before it (commit 555f72b):

- engine files written by that release (format slicenet-engine/1) load, predict the same classes and
  votes, cost the same, and export to every target;
- the same seed gives the same engine: sha256 of the trunk weights (and of the bank, for condensed
  engines) and of the test predictions of small seeded digits runs, for cma / pso / ga, filter by
  filter, the local-mean fitness, holdout + NCA scoring, LVQ and joint condensation.

tests/data/pins-0.1.json and tests/data/engines-0.1/ were written by that release's code.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from slicenet.cli import main
from slicenet.data import load_dataset
from slicenet.engine import FORMAT, Engine

DATA = Path(__file__).parent / "data"
PINS = json.loads((DATA / "pins-0.1.json").read_text())
EXPECTED = json.loads((DATA / "engines-0.1" / "expected.json").read_text())
# The pins are digests of CPU arithmetic: a GPU rounds differently (tests/test_cuda.py compares the two), and
# --device auto would take one where there is one.
ON_CPU = ["--device", "cpu"]


def weights_digest(engine: Engine) -> str:
    digest = hashlib.sha256()
    for weight, bias in engine.weights:
        digest.update(weight.numpy().astype(np.float32).tobytes())
        digest.update(bias.numpy().astype(np.float32).tobytes())
    return digest.hexdigest()


def predictions_digest(engine: Engine, images: np.ndarray) -> str:
    return hashlib.sha256(engine.predict(images)[0].astype(np.int64).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_engine_file_of_the_previous_release_loads_and_predicts_as_it_did(name, digits, tmp_path):
    path = DATA / "engines-0.1" / f"{name}.safetensors"
    assert json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])[
        "__metadata__"]["format"] == "slicenet-engine/1"
    engine = Engine.load(path)
    expected = EXPECTED[name]
    classes, votes, _ = engine.predict(digits.x_test)
    assert classes.tolist() == expected["classes"]
    np.testing.assert_allclose(votes[:100], expected["votes"], atol=2e-6)
    assert engine.multiply_adds == expected["multiply_adds"] and engine.parameters == expected["parameters"]
    # Written again by this release: the current format, the same predictions, the same bytes but the header's.
    (tmp_path / "again.safetensors").write_bytes(engine.to_bytes())
    again = Engine.load(tmp_path / "again.safetensors")
    assert again.to_bytes()[:8] and FORMAT == "slicenet-engine/2"
    assert np.array_equal(again.predict(digits.x_test)[0], classes)
    assert abs(again.engine_bytes - expected["engine_bytes"]) < 400  # only the JSON header differs


@pytest.mark.parametrize("case", [c for c in PINS if not c.startswith("condense-")])
def test_the_same_seed_gives_the_same_engine_as_before(case, digits, tmp_path):
    pin = PINS[case]
    assert main(["optimise", *pin["args"], *ON_CPU, "--out", str(tmp_path / case)]) == 0
    engine = Engine.load(tmp_path / case / "engine.safetensors")
    assert weights_digest(engine) == pin["weights_sha256"]
    assert predictions_digest(engine, digits.x_test) == pin["predictions_sha256"]
    metrics = json.loads((tmp_path / case / "metrics.json").read_text())
    assert metrics["evaluations"] == pin["evaluations"] and metrics["test_accuracy"] == pin["test_accuracy"]


@pytest.fixture(scope="module")
def pinned_cma_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pins") / "cma"
    assert main(["optimise", *PINS["cma"]["args"], *ON_CPU, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("case", [c for c in PINS if c.startswith("condense-")])
def test_condensed_engines_are_the_same_as_before(case, pinned_cma_run, digits, tmp_path):
    pin = PINS[case]
    assert main(["condense", str(pinned_cma_run), *pin["args"], *ON_CPU, "--out", str(tmp_path / case)]) == 0
    engine = Engine.load(tmp_path / case / "engine.safetensors")
    assert weights_digest(engine) == pin["weights_sha256"]
    assert hashlib.sha256(engine.bank_head.bank.numpy().tobytes()).hexdigest() == pin["bank_sha256"]
    assert predictions_digest(engine, digits.x_test) == pin["predictions_sha256"]
