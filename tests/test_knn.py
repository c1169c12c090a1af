import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slicenet.knn import KNNClassifier, knn_vote, pairwise_distances


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 2
    y = rng.integers(0, 4, 300)
    X = centres[y] + rng.normal(size=(300, 6))
    return X[:200], y[:200], X[200:], y[200:]


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "cosine"])
def test_matches_scikit_learn(blobs, metric):
    X, y, Xq, _ = blobs
    ours = KNNClassifier(n_neighbors=9, metric=metric).fit(X, y)
    ref = KNeighborsClassifier(n_neighbors=9, metric=metric, algorithm="brute").fit(X, y)
    assert np.array_equal(ours.predict(Xq), ref.predict(Xq))
    np.testing.assert_allclose(ours.predict_proba(Xq), ref.predict_proba(Xq))
    dist, idx = ours.kneighbors(Xq)
    ref_dist, ref_idx = ref.kneighbors(Xq)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    assert np.array_equal(idx, ref_idx)


def test_string_labels_and_small_batches(blobs):
    X, y, Xq, _ = blobs
    names = np.array(["ant", "bee", "cat", "dog"])[y]
    ours = KNNClassifier(n_neighbors=5, batch_elements=64).fit(X, names)
    ref = KNeighborsClassifier(n_neighbors=5).fit(X, names)
    assert np.array_equal(ours.predict(Xq), ref.predict(Xq))


def test_pipeline_and_cross_val_score(blobs):
    X, y, _, _ = blobs
    scores = cross_val_score(make_pipeline(StandardScaler(), KNNClassifier(n_neighbors=9)), X, y, cv=3)
    ref = cross_val_score(make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=9)), X, y, cv=3)
    np.testing.assert_allclose(scores, ref)


def test_ties_go_to_the_smallest_class():
    bank = torch.tensor([[0.0], [1.0], [-1.0], [2.0]])
    votes, _, _ = knn_vote(torch.tensor([[0.1]]), bank, torch.tensor([1, 0, 1, 0]), 2, 4)
    assert votes.tolist() == [[2, 2]] and votes.argmax(-1).item() == 0


def test_batched_distances_equal_per_item():
    q, b = torch.randn(3, 5, 7), torch.randn(3, 11, 7)
    batched = pairwise_distances(q, b, "euclidean")
    for p in range(3):
        torch.testing.assert_close(batched[p], torch.cdist(q[p], b[p]), rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_neighbors"):
        KNNClassifier(n_neighbors=50).fit(np.zeros((10, 2)), np.arange(10) % 2)
    with pytest.raises(ValueError, match="metric"):
        KNNClassifier(metric="chebyshev").fit(np.zeros((10, 2)), np.arange(10) % 2)
    model = KNNClassifier(n_neighbors=3).fit(np.random.rand(10, 2), np.arange(10) % 2)
    with pytest.raises(ValueError, match="features"):
        model.predict(np.zeros((2, 3)))
