import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from slicenet.data import load_dataset
from slicenet.engine import Engine
from slicenet.errors import InputError
from slicenet.trunk import PRESETS, init_weights


@pytest.fixture(scope="module")
def engine_and_data():
    data = load_dataset("digits")
    engine = Engine.build(PRESETS["tiny"], init_weights(PRESETS["tiny"], 0), data.x_train, data.y_train,
                          0.3, 0.4, "centre_l2", 9, "euclidean", data.class_names, {"method": "test"})
    return engine, data


def test_predictions_match_scikit_learn_on_engine_features(engine_and_data):
    engine, data = engine_and_data
    predicted, votes, _ = engine.predict(data.x_test)
    ref = KNeighborsClassifier(n_neighbors=9, algorithm="brute").fit(engine.bank.numpy(), data.y_train)
    assert np.array_equal(predicted, ref.predict(engine.embed(data.x_test).numpy()))
    assert votes.sum(1).tolist() == [9] * len(data.x_test)


def test_round_trip_is_exact_and_size_is_the_file(engine_and_data, tmp_path):
    engine, data = engine_and_data
    blob = engine.to_bytes()
    (tmp_path / "e.safetensors").write_bytes(blob)
    again = Engine.load(tmp_path / "e.safetensors")
    assert engine.engine_bytes == len(blob)
    assert torch.equal(again.bank, engine.bank) and again.class_names == engine.class_names
    assert np.array_equal(again.predict(data.x_test)[0], engine.predict(data.x_test)[0])
    assert again.info == {"method": "test"}


def test_damaged_engine_is_rejected(tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="not a slicenet engine"):
        Engine.load(path)


def test_wrong_image_shape(engine_and_data):
    engine, _ = engine_and_data
    with pytest.raises(InputError, match="expected images of shape"):
        engine.predict(np.zeros((2, 28, 28), dtype=np.uint8))
