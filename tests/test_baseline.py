import json

import torch

from slicenet.baseline import augment
from slicenet.cli import main
from slicenet.engine import Engine

FAST = ["baseline", "--dataset", "digits", "--quiet"]


def test_one_epoch_gives_a_valid_run_directory(tmp_path):
    out = tmp_path / "b"
    assert main([*FAST, "--epochs", "1", "--hidden", "16", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "validation_accuracy", "random_init_test_accuracy", "parameters",
                "engine_bytes", "wall_seconds", "evaluations", "method", "dataset", "epochs", "command"):
        assert key in metrics, key
    assert metrics["epochs"] == 1 and metrics["head"] == "dense"
    engine = Engine.load(out / "engine.safetensors")
    assert engine.head.kind == "dense" and engine.parameters == metrics["parameters"]
    assert metrics["kind"] == "backprop-dense" and metrics["head_settings"] == {"kind": "dense", "layers": 2}
    assert metrics["engine_bytes"] == (out / "engine.safetensors").stat().st_size
    assert main(["evaluate", str(out), "--json"]) == 0


def test_predict_with_a_dense_head_shows_its_probabilities(tmp_path, capsys):
    from PIL import Image

    from slicenet.data import load_dataset

    out = tmp_path / "b"
    assert main([*FAST, "--epochs", "1", "--hidden", "16", "--out", str(out)]) == 0
    Image.fromarray(load_dataset("digits").x_test[0]).save(tmp_path / "digit.png")
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "digit.png"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    probabilities = row["probabilities"]
    assert next(iter(probabilities)) == row["label"] and 0.98 <= sum(probabilities.values()) <= 1.0


def test_several_widths_one_run_each(tmp_path):
    assert main([*FAST, "--epochs", "1", "--hidden", "16", "8", "--out", str(tmp_path / "w")]) == 0
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["dense16", "dense8"]


def test_early_stopping_stops(tmp_path):
    out = tmp_path / "e"
    # A learning rate this small never changes the validation accuracy, so it never improves.
    assert main([*FAST, "--epochs", "10", "--patience", "2", "--learning-rate", "1e-12", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["stopped_early"] is True


def test_knn_head_on_the_trained_trunk(tmp_path):
    out = tmp_path / "k"
    assert main([*FAST, "--epochs", "2", "--head", "knn", "--optimizer", "sgd", "--learning-rate", "0.05",
                 "--out", str(out)]) == 0
    engine = Engine.load(out / "engine.safetensors")
    assert engine.head.family == "knn" and engine.head.bank.shape[0] > 0
    assert json.loads((out / "metrics.json").read_text())["kind"] == "backprop-knn"
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.8


def test_augment_identity_and_shape():
    x = torch.randn(4, 1, 28, 28)
    out = augment(x, torch.Generator().manual_seed(0), shift=0.0, degrees=0.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    assert augment(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_bad_baseline_flags(capsys):
    assert main([*FAST, "--head", "svm"]) == 2
    assert "head 'svm'" in capsys.readouterr().err
