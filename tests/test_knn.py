import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from slicenet.knn import KNNClassifier, class_slots, knn_vote, local_mean_vote, pairwise_distances


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
    votes, _, _ = knn_vote(torch.tensor([[0.1]]), bank, torch.tensor([1, 0, 1, 0]), n_classes=2, n_neighbors=4)
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


def local_mean_by_hand(query: np.ndarray, bank: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each class's local-mean distance for one query, the textbook way (Mitani and Hamamoto 2006)."""
    distances = []
    for label in range(labels.max() + 1):
        members = bank[labels == label]
        nearest = members[np.argsort(np.linalg.norm(members - query, axis=1), kind="stable")[:k]]
        distances.append(np.linalg.norm(query - nearest.mean(0)))
    return np.array(distances)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_local_mean_vote_matches_the_rule_by_hand(blobs, k):
    X, y, Xq, _ = blobs
    bank, queries = torch.tensor(X, dtype=torch.float32), torch.tensor(Xq, dtype=torch.float32)
    # A small chunk budget: several chunks of queries, the same answer.
    scores, indices = local_mean_vote(queries, bank, torch.tensor(y), n_classes=4, n_neighbors=k, chunk_elements=500)
    expected = np.stack([local_mean_by_hand(q, X, y, k) for q in Xq])
    np.testing.assert_allclose(-scores.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert indices.shape == (len(Xq), 4, k)
    assert (y[indices.numpy()] == np.arange(4)[None, :, None]).all()  # each class's own prototypes


def test_local_mean_differs_from_the_majority_where_it_should():
    """Two near prototypes of class 1 lose to three farther ones of class 0 under the majority of the
    5 nearest, but class 1's 2 nearest average closer than class 0's: the local mean picks class 1."""
    bank = torch.tensor([[1.0], [1.5], [2.0], [0.2], [-0.2], [5.0], [6.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    query = torch.tensor([[0.0]])
    votes, _, _ = knn_vote(query, bank, labels, n_classes=2, n_neighbors=5)
    scores, _ = local_mean_vote(query, bank, labels, n_classes=2, n_neighbors=2)
    assert votes.argmax(-1).item() == 0 and scores.argmax(-1).item() == 1


def test_class_slots_and_the_k_requirement():
    slots = class_slots(torch.tensor([1, 0, 1, 1]), 3)
    assert slots.tolist() == [[1, -1, -1], [0, 2, 3], [-1, -1, -1]]
    with pytest.raises(ValueError, match="at least k=2 prototypes of every class"):
        local_mean_vote(torch.zeros(1, 2), torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]), n_classes=2,
                        n_neighbors=2)


@pytest.mark.parametrize("vote,k", [("majority", 3), ("local-mean", 2)])
def test_follows_every_convention_of_scikit_learns_developer_guide(vote, k):
    """scikit-learn's own estimator checks (fit returns self, input validation, n_features_in_, pickling,
    classes_, NotFittedError, ...), for both votes."""
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(KNNClassifier(n_neighbors=k, vote=vote), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed and sum(r["status"] == "passed" for r in results) > 40


def test_the_local_mean_vote_as_an_estimator_matches_the_rule(blobs):
    X, y, Xq, _ = blobs
    model = KNNClassifier(n_neighbors=3, vote="local-mean").fit(X, y)
    expected = np.stack([local_mean_by_hand(q, X, y, 3) for q in Xq]).argmin(1)
    assert np.array_equal(model.predict(Xq), expected)
    np.testing.assert_allclose(model.predict_proba(Xq).sum(1), 1.0)
    with pytest.raises(ValueError, match="local-mean.* Euclidean"):
        KNNClassifier(vote="local-mean", metric="cosine").fit(X, y)
