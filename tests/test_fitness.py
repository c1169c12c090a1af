import numpy as np
import pytest
import torch

from slicenet.data import load_dataset
from slicenet.engine import normalise_images
from slicenet.evaluators import TorchEvaluator
from slicenet.fitness import Problem, fitness_one_by_one
from slicenet.heads import LocalMeanHead
from slicenet.trunk import PRESETS, Block, flatten_layer, init_weights


def population_fitness(problem, weights, block, population, split=None):
    """The search's evaluator: the whole population as one batch."""
    return TorchEvaluator(problem).bind(weights, block)(population, split)


@pytest.fixture(scope="module")
def problem():
    data = load_dataset("digits")
    return Problem(PRESETS["tiny"], normalise_images(data.x_train[:400], 0.3, 0.4),
                   torch.from_numpy(data.y_train[:400]), 10, validation_fraction=0.25, seed=0)


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("soft_score", ["knn", "nca"])
@pytest.mark.parametrize("filter_index", [None, 2])
@pytest.mark.parametrize("layer", [0, 1])
def test_batched_fitness_equals_one_by_one(problem, layer, filter_index, soft_score, leave_one_out):
    problem = Problem(**{**problem.__dict__, "soft_score": soft_score, "leave_one_out": leave_one_out})
    weights = init_weights(problem.spec, 0)
    rng = np.random.default_rng(layer)
    if filter_index is None:
        base = flatten_layer(*weights[layer])
    else:
        base = flatten_layer(weights[layer][0][filter_index:filter_index + 1],
                             weights[layer][1][filter_index:filter_index + 1])
    population = base + 0.2 * rng.standard_normal((5, base.size))
    split = problem.split((7, 1, 0))
    block = Block(layer, filter_index)
    batched = population_fitness(problem, weights, block, population, split)
    reference = fitness_one_by_one(problem, weights, block=block, population=population, split=split)
    np.testing.assert_allclose(batched.accuracy, reference.accuracy)
    np.testing.assert_allclose(batched.fitness, reference.fitness, rtol=1e-5, atol=1e-6)
    assert np.all((0 <= batched.accuracy) & (batched.accuracy <= 1))
    assert np.all((0 <= batched.soft) & (batched.soft <= 1))


def test_fitness_rewards_accuracy(problem):
    weights = init_weights(problem.spec, 0)
    base = flatten_layer(*weights[0])
    population = np.stack([base, np.zeros_like(base)])  # all-zero kernels: every image looks alike
    scores = population_fitness(problem, weights, Block(0, None), population)
    assert scores.accuracy[0] > scores.accuracy[1] and scores.fitness[0] < scores.fitness[1]


def test_splits_are_resampled_per_generation_and_reproducible(problem):
    a, b = problem.split((0, 1, 0)), problem.split((0, 2, 0))
    assert not torch.equal(a[1], b[1])
    assert torch.equal(problem.split((0, 1, 0))[1], a[1])
    fixed = Problem(**{**problem.__dict__, "resample": False})
    assert torch.equal(fixed.split((0, 1, 0))[1], fixed.split((0, 2, 0))[1])


def test_scores_against_a_plain_numpy_reference(problem):
    """Accuracy from scikit-learn's k-NN, NCA soft score from its textbook formula."""
    from sklearn.neighbors import KNeighborsClassifier

    from slicenet.fitness import score_features
    from slicenet.knn import postprocess

    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(2, 120, 6)).astype(np.float32))
    y_fit, y_val = torch.arange(90) % 3, torch.arange(30) % 3
    nca = Problem(**{**problem.__dict__, "soft_score": "nca", "n_classes": 3, "temperature": 0.3})
    scores = score_features(nca, feats, y_fit=y_fit, y_val=y_val)
    for p in range(2):
        bank, queries = feats[p, :90], feats[p, 90:]
        mean = bank.mean(0)
        bank, queries = postprocess(bank, mean, "centre_l2").numpy(), postprocess(queries, mean, "centre_l2").numpy()
        knn = KNeighborsClassifier(n_neighbors=9, algorithm="brute").fit(bank, y_fit.numpy())
        assert scores.accuracy[p] == pytest.approx(knn.score(queries, y_val.numpy()))
        d = np.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1))
        w = np.exp(-d / 0.3)
        p_same = (w * (y_val.numpy()[:, None] == y_fit.numpy()[None])).sum(1) / w.sum(1)
        assert scores.soft[p] == pytest.approx(p_same.mean(), rel=1e-5)


def test_fixed_split_covers_the_whole_training_set(problem):
    subset = Problem(**{**problem.__dict__, "search_images": 100})
    fit, val = subset.split()
    assert len(fit) + len(val) == len(problem.y_train)
    fit, val = subset.split((0, 1, 0))
    assert len(fit) + len(val) == 100


def test_leave_one_out_matches_scikit_learn(problem):
    """Every scored image is a query against all the others, never against itself."""
    from sklearn.neighbors import KNeighborsClassifier

    from slicenet.knn import postprocess
    from slicenet.trunk import features

    loo = Problem(**{**problem.__dict__, "leave_one_out": True})
    weights = init_weights(loo.spec, 0)
    fit, val = loo.split((3, 0, 0))
    rows = torch.cat([fit, val]).sort().values
    x = features(loo.x_train[rows], loo.spec, weights)
    x = postprocess(x, x.mean(0, keepdim=True), "centre_l2").numpy()
    y = loo.y_train[rows].numpy()
    # n_neighbors + 1 neighbours of each training point, then drop the point itself.
    k = loo.head.n_neighbors
    knn = KNeighborsClassifier(n_neighbors=k + 1).fit(x, y)
    _, idx = knn.kneighbors(x)
    others = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    votes = np.stack([np.bincount(y[o], minlength=10) for o in others])
    expected = (votes.argmax(1) == y).mean()
    scores = population_fitness(loo, weights, Block(0, None), flatten_layer(*weights[0])[None], split=(fit, val))
    assert scores.accuracy[0] == pytest.approx(expected)


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize(("n_images", "postprocessing"), [(150, "centre_l2"), (148, "centre_l2"), (148, "none")])
def test_local_mean_scores_against_the_engines_rule(problem, leave_one_out, n_images, postprocessing):
    """The batched local-mean fitness (Gram-matrix form) against knn.local_mean_vote, query by query:
    the same hits, and the softmax over classes of minus the local-mean distances as the soft score.
    150 images make classes of unequal size (padded slots); 148 equal ones, where leave-one-out ranks
    unit-length features on the Gram matrix itself, and features left unnormalised ("none") do not."""
    from slicenet.fitness import score_features
    from slicenet.knn import local_mean_vote, postprocess

    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(3, n_images, 6)).astype(np.float32))
    y = torch.arange(n_images) % 4
    n_fit = 110
    local = Problem(**{**problem.__dict__, "head": LocalMeanHead(n_neighbors=5), "n_classes": 4,
                       "temperature": 0.3, "leave_one_out": leave_one_out, "postprocessing": postprocessing})
    scores = (score_features(local, feats, y_fit=y, y_val=y) if leave_one_out
              else score_features(local, feats, y_fit=y[:n_fit], y_val=y[n_fit:]))
    for p in range(3):
        if leave_one_out:
            points = postprocess(feats[p], feats[p].mean(0), postprocessing)
            others = [torch.arange(n_images) != i for i in range(n_images)]
            rule = [local_mean_vote(points[i : i + 1], points[others[i]], y[others[i]], n_classes=4,
                                    n_neighbors=5)[0][0] for i in range(n_images)]
            class_scores, truth = torch.stack(rule), y
        else:
            mean = feats[p, :n_fit].mean(0)
            bank = postprocess(feats[p, :n_fit], mean, postprocessing)
            queries = postprocess(feats[p, n_fit:], mean, postprocessing)
            class_scores, truth = local_mean_vote(queries, bank, y[:n_fit], n_classes=4, n_neighbors=5)[0], y[n_fit:]
        assert scores.accuracy[p] == pytest.approx((class_scores.argmax(-1) == truth).double().mean().item())
        soft = torch.softmax(class_scores.double() / 0.3, -1)[torch.arange(len(truth)), truth].mean().item()
        assert scores.soft[p] == pytest.approx(soft, rel=1e-5)


def test_local_mean_fitness_batched_equals_one_by_one(problem):
    local = Problem(**{**problem.__dict__, "head": LocalMeanHead(n_neighbors=9), "leave_one_out": True})
    weights = init_weights(local.spec, 0)
    base = flatten_layer(*weights[1])
    population = base + 0.2 * np.random.default_rng(0).standard_normal((4, base.size))
    split = local.split((2, 1, 0))
    batched = population_fitness(local, weights, Block(1, None), population, split)
    reference = fitness_one_by_one(local, weights, block=Block(1, None), population=population, split=split)
    np.testing.assert_allclose(batched.accuracy, reference.accuracy)
    np.testing.assert_allclose(batched.fitness, reference.fitness, rtol=1e-5, atol=1e-6)
