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


def test_local_mean_engine_round_trips_and_votes_by_its_rule(engine_and_data, tmp_path):
    import dataclasses

    from slicenet.knn import local_mean_vote

    engine, data = engine_and_data
    local = dataclasses.replace(engine, vote="local-mean")
    (tmp_path / "e.safetensors").write_bytes(local.to_bytes())
    again = Engine.load(tmp_path / "e.safetensors")
    assert again.vote == "local-mean" and Engine.from_bytes(engine.to_bytes()).vote == "majority"
    predicted, scores, neighbours = again.predict(data.x_test)
    expected, _ = local_mean_vote(engine.embed(data.x_test), engine.bank, engine.bank_labels, 10, 9)
    assert np.array_equal(predicted, expected.argmax(-1).numpy()) and np.allclose(scores, expected.numpy())
    # The neighbours returned are the winning class's k nearest.
    assert (engine.bank_labels.numpy()[neighbours] == predicted[:, None]).all() and neighbours.shape[1] == 9


@pytest.mark.parametrize("vote", ["majority", "local-mean"])
def test_test_time_views_sum_each_shifted_querys_votes(engine_and_data, tmp_path, vote):
    """query_shifts=1: the votes are the sum over the query and its four 1-px shifted copies (zero
    fill, as the bank's shifted copies), each voted alone; the neighbours are the query's own."""
    import dataclasses

    engine, data = engine_and_data
    single = dataclasses.replace(engine, vote=vote)
    views = dataclasses.replace(single, query_shifts=1)
    (tmp_path / "e.safetensors").write_bytes(views.to_bytes())
    again = Engine.load(tmp_path / "e.safetensors")
    assert again.query_shifts == 1 and again.n_views == 5
    images = data.x_test[:50]
    expected = 0
    for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        shifted = np.zeros_like(images)
        shifted[:, max(0, dy): 8 + min(0, dy), max(0, dx): 8 + min(0, dx)] = \
            images[:, max(0, -dy): 8 - max(0, dy), max(0, -dx): 8 - max(0, dx)]
        expected = expected + single.predict(shifted)[1]
    predicted, votes, neighbours = again.predict(images)
    assert np.allclose(votes, expected, atol=1e-5) and np.array_equal(predicted, np.argmax(expected, -1))
    if vote == "majority":
        assert np.array_equal(neighbours, single.predict(images)[2])
    assert views.multiply_adds == 5 * single.multiply_adds


@pytest.mark.parametrize("change,match", [
    (dict(metric="cosine"), "local-mean vote is Euclidean"),
    (dict(n_neighbors=500), "needs k=500 prototypes of every class"),
    (dict(vote="median"), "unknown vote 'median'"),
    (dict(query_shifts=7), "query_shifts=7: expected 0 to 4"),
])
def test_a_vote_the_bank_cannot_serve_is_refused_on_load(engine_and_data, tmp_path, change, match):
    import dataclasses

    engine, _ = engine_and_data
    (tmp_path / "e.safetensors").write_bytes(dataclasses.replace(engine, **{"vote": "local-mean", **change})
                                             .to_bytes())
    with pytest.raises(InputError, match=match):
        Engine.load(tmp_path / "e.safetensors")
