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
    engine = (tmp_path / "w" / "dense8" / "engine.safetensors").read_bytes()
    # the same command again (after a kill between widths) keeps the finished ones; other settings are refused
    assert main([*FAST, "--epochs", "1", "--hidden", "16", "8", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "dense8" / "engine.safetensors").read_bytes() == engine
    assert main([*FAST, "--epochs", "2", "--hidden", "16", "8", "--out", str(tmp_path / "w")]) == 2


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


def test_a_killed_baseline_continues_to_the_same_network(tmp_path, monkeypatch, capsys):
    import slicenet.baseline as core

    flags = [*FAST, "--epochs", "5", "--hidden", "16", "--optimizer", "sgd", "--augment"]  # schedule and generator
    assert main([*flags, "--out", str(tmp_path / "whole")]) == 0
    epochs, real = [], core.accuracy

    def killed_in_the_fourth_epoch(*args, **kwargs):
        epochs.append(1)  # the validation accuracy is scored once an epoch
        if len(epochs) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "killed"
    monkeypatch.setattr(core, "accuracy", killed_in_the_fourth_epoch)
    assert main([*flags, "--out", str(out)]) == 130
    assert (out / "train-checkpoint.pt").is_file() and not (out / "metrics.json").exists()
    assert "checkpointed after each epoch: rerun the same command" in capsys.readouterr().err
    monkeypatch.setattr(core, "accuracy", real)
    assert main([*FAST, "--epochs", "5", "--hidden", "16", "--out", str(out)]) == 2  # other settings
    assert "unfinished baseline of other settings" in capsys.readouterr().err
    assert main([*flags, "--out", str(out)]) == 0
    assert "continuing the training" in capsys.readouterr().err and not (out / "train-checkpoint.pt").exists()
    assert (out / "engine.safetensors").read_bytes() == (tmp_path / "whole" / "engine.safetensors").read_bytes()
    whole, continued = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert [continued[k] for k in ("epochs", "best_epoch", "validation_accuracy", "test_accuracy", "gradient_steps")] \
        == [whole[k] for k in ("epochs", "best_epoch", "validation_accuracy", "test_accuracy", "gradient_steps")]


def test_augment_identity_and_shape():
    x = torch.randn(4, 1, 28, 28)
    out = augment(x, torch.Generator().manual_seed(0), shift=0.0, degrees=0.0)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    assert augment(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_bad_baseline_flags(capsys):
    assert main([*FAST, "--head", "svm"]) == 2
    assert "head 'svm'" in capsys.readouterr().err
