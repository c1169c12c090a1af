import dataclasses

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from slicenet.data import load_dataset
from slicenet.engine import Engine
from slicenet.errors import InputError
from slicenet.heads import LocalMeanHead, MajorityHead
from slicenet.trunk import PRESETS, init_weights
from slicenet.views import Views


@pytest.fixture(scope="module")
def engine_and_data():
    data = load_dataset("digits")
    engine = Engine.build(PRESETS["tiny"], init_weights(PRESETS["tiny"], 0), data.x_train, data.y_train,
                          input_mean=0.3, input_std=0.4, head=MajorityHead(n_neighbors=9),
                          class_names=data.class_names, info={"method": "test"})
    return engine, data


def with_head(engine, cls, **settings):
    """The same bank under another head (or other settings of one)."""
    head = engine.head
    merged = {"n_neighbors": head.n_neighbors, "metric": head.metric, **settings}
    return engine.with_head(cls(bank=head.bank, bank_labels=head.bank_labels, classes=head.classes, **merged))


def test_predictions_match_scikit_learn_on_engine_features(engine_and_data):
    engine, data = engine_and_data
    predicted, votes, _ = engine.predict(data.x_test)
    ref = KNeighborsClassifier(n_neighbors=9, algorithm="brute").fit(engine.head.bank.numpy(), data.y_train)
    assert np.array_equal(predicted, ref.predict(engine.embed(data.x_test).numpy()))
    assert votes.sum(1).tolist() == [9] * len(data.x_test)


def test_round_trip_is_exact_and_size_is_the_file(engine_and_data, tmp_path):
    engine, data = engine_and_data
    blob = engine.to_bytes()
    (tmp_path / "e.safetensors").write_bytes(blob)
    again = Engine.load(tmp_path / "e.safetensors")
    assert engine.engine_bytes == len(blob)
    assert torch.equal(again.head.bank, engine.head.bank) and again.class_names == engine.class_names
    assert np.array_equal(again.predict(data.x_test)[0], engine.predict(data.x_test)[0])
    assert again.info == {"method": "test"}
    # the same engine is the same bytes, saved again or loaded and saved (safetensors keeps its metadata
    # in a hash map: unsorted, the bytes changed from one save to the next)
    assert all(blob == other for other in (engine.to_bytes(), again.to_bytes(), engine.to_bytes()))


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_the_trunk_alone_reads_as_the_whole_engine_has_it(engine_and_data, tmp_path, weights):
    engine = engine_and_data[0].with_storage(weights, "fp16")
    (tmp_path / "e.safetensors").write_bytes(engine.to_bytes())
    whole, trunk = Engine.load(tmp_path / "e.safetensors"), Engine.load_trunk(tmp_path / "e.safetensors")
    assert trunk.spec == whole.spec and trunk.image_size == whole.image_size
    assert all(torch.equal(a, b) for pair, other in zip(trunk.weights, whole.weights, strict=True)
               for a, b in zip(pair, other, strict=True))


@pytest.mark.parametrize("load", [Engine.load, Engine.load_trunk])
def test_damaged_engine_is_rejected(tmp_path, load):
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="not a slicenet engine"):
        load(path)


def test_wrong_image_shape(engine_and_data):
    engine, _ = engine_and_data
    with pytest.raises(InputError, match="expected images of shape"):
        engine.predict(np.zeros((2, 28, 28), dtype=np.uint8))


def test_local_mean_engine_round_trips_and_votes_by_its_rule(engine_and_data, tmp_path):

    from slicenet.knn import local_mean_vote

    engine, data = engine_and_data
    local = with_head(engine, LocalMeanHead)
    (tmp_path / "e.safetensors").write_bytes(local.to_bytes())
    again = Engine.load(tmp_path / "e.safetensors")
    assert again.head.kind == "local-mean" and Engine.from_bytes(engine.to_bytes()).head.kind == "majority"
    predicted, scores, neighbours = again.predict(data.x_test)
    expected, _ = local_mean_vote(engine.embed(data.x_test), engine.head.bank, engine.head.bank_labels,
                                  n_classes=10, n_neighbors=9)
    assert np.array_equal(predicted, expected.argmax(-1).numpy()) and np.allclose(scores, expected.numpy())
    # The neighbours returned are the winning class's k nearest.
    assert (engine.head.bank_labels.numpy()[neighbours] == predicted[:, None]).all() and neighbours.shape[1] == 9


@pytest.mark.parametrize("vote", ["majority", "local-mean"])
def test_test_time_views_sum_each_shifted_querys_votes(engine_and_data, tmp_path, vote):
    """query_shifts=1: the votes are the sum over the query and its four 1-px shifted copies (zero
    fill, as the bank's shifted copies), each voted alone; the neighbours are the query's own."""

    engine, data = engine_and_data
    single = with_head(engine, LocalMeanHead if vote == "local-mean" else MajorityHead)
    views = dataclasses.replace(single, views=Views(1))
    (tmp_path / "e.safetensors").write_bytes(views.to_bytes())
    again = Engine.load(tmp_path / "e.safetensors")
    assert again.views.shifts == 1 and again.n_views == 5
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
    ({"head": {"kind": "local-mean", "n_neighbors": 9, "metric": "cosine"}}, "local-mean vote is Euclidean"),
    ({"head": {"kind": "local-mean", "n_neighbors": 500, "metric": "euclidean"}},
     "needs k=500 prototypes of every class"),
    ({"head": {"kind": "median", "n_neighbors": 9, "metric": "euclidean"}}, "unknown head 'median'"),
    ({"views": {"query_shifts": 7}}, "query_shifts must be between 0 and 4 pixels, got 7"),
    ({"format": "slicenet-engine/9"}, "a newer slicenet may have written it"),
])
def test_a_head_the_bank_cannot_serve_is_refused_on_load(engine_and_data, tmp_path, change, match):
    """A damaged or hand-edited header: one line naming what is wrong."""
    import json

    from safetensors.torch import save

    engine, _ = engine_and_data
    metadata = engine._metadata()
    metadata.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in change.items()})
    (tmp_path / "e.safetensors").write_bytes(save(engine._tensors(), metadata))
    with pytest.raises(InputError, match=match):
        Engine.load(tmp_path / "e.safetensors")
    if "format" in change:  # the trunk alone is refused with the same one line
        with pytest.raises(InputError, match=f"^{tmp_path / 'e.safetensors'} is not a slicenet engine \\(format"):
            Engine.load_trunk(tmp_path / "e.safetensors")


def test_every_head_is_registered_and_round_trips(engine_and_data, tmp_path):
    """The registry the file format, the CLI and the tests share: each head's settings and tensors
    survive the file, and its label and multiply-adds are its own."""
    from slicenet.heads import HEADS, DenseHead

    engine, data = engine_and_data
    dense = DenseHead([(torch.randn(16, 64), torch.randn(16)), (torch.randn(10, 16), torch.randn(10))])
    engines = {"majority": engine, "local-mean": with_head(engine, LocalMeanHead),
               "dense": dataclasses.replace(engine, head=dense)}
    assert set(engines) == set(HEADS)
    for kind, candidate in engines.items():
        (tmp_path / f"{kind}.safetensors").write_bytes(candidate.to_bytes())
        again = Engine.load(tmp_path / f"{kind}.safetensors")
        assert again.head.kind == kind and again.head.settings() == candidate.head.settings()
        assert np.array_equal(again.predict(data.x_test)[0], candidate.predict(data.x_test)[0])
        assert again.multiply_adds == candidate.multiply_adds
    assert engines["local-mean"].head.label() == "k-NN (k=9, local mean)"
    assert engine.head.label(Views(1)) == "k-NN (k=9, 5 views)" and dense.label() == "dense 16"
    assert dense.multiply_adds == 64 * 16 + 16 * 10 and engine.head.multiply_adds == engine.head.bank.numel()
