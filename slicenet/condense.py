"""Compact engines: fewer prototypes, fewer feature dimensions, fewer bytes per number.

A k-NN head stores its reference set; with every training image as a prototype the bank dwarfs the
trunk. Three levers, each chosen by validation accuracy (never by the test split):

- **Prototype reduction**, per class, never dropping a class: ``kmeans`` (class-wise k-means
  centroids), ``cnn`` (Hart's condensed nearest neighbour after Wilson's editing: a subset of real
  training images), ``optimised`` (k-means centroids then moved without gradients by the same
  ask/tell optimisers as the trunk, to maximise validation k-NN quality), ``lvq`` (k-means
  centroids then refined by Kohonen's LVQ2.1 rule: for a training image that falls near the border
  between its nearest right and nearest wrong prototype, the right one steps towards it and the wrong
  one away. A label-driven competitive rule, no loss gradient. It places the prototypes where the
  classes meet, which k-means, fitting each class on its own, does not: on Fashion-MNIST, the best
  engines within 74 KB go from 84.5 % (k-means, 200 per class in 32 dimensions, 5-NN) to 86.7 % (LVQ,
  50 per class in all 128, 1-NN), next to 86.8 % for the 60,000-image bank).
  ``joint`` fits the bank and the trunk's last layer to each other: LVQ prototypes, then rounds of
  moving the last layer's kernels with the trunk's optimiser (the bank held) and refitting the bank
  by LVQ (``tune_jointly``), for the LVQ engine that validation picked; kept only where validation
  accuracy says the tuned engine beats it.
- **Feature reduction**: a PCA projection of the centred trunk features, part of the engine and of
  its export (one MatMul).
- **Storage precision**: fp32, fp16 or int8 (symmetric, one scale per tensor) for bank and weights.
- **Test-time views** (``--query-shifts n``, asked for, never chosen): each query and its copies
  shifted 1..n px vote together over the compact bank. The bank's bytes are unchanged; the engine's
  multiply-adds are 4n+1 times the single view's, and the exported graph carries the views' gather
  table (``views.Views``). A trade of compute for accuracy that only the user can price.
- **Metric**: cosine (the bank's directions only) or euclidean, by validation, cosine on a tie. On
  L2-normalised queries the two rank real training images alike, but centroids are shorter than
  unit length; and a cosine engine exports to a shorter graph (ranking by q.b/|b| is unchanged by
  the query's own length, so the query's normalisation drops out: see ``export.build_onnx``).

``budget_search`` tries the grid of these settings (and LVQ's window) and returns the most accurate
engine within a byte budget, and if asked within a budget of multiply-adds per image (what a head
costs at run time: a 1-NN head over 50 prototypes of 128 numbers needs 6,400, a dense-128 head
17,664), together with the accuracy / size frontier it found. Where the source run's bank holds
shifted copies of the training images (``--bank-shifts``), the prototypes are fitted to them too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .config import Checked, option
from .data import shifted_copies
from .engine import Engine, PostProcessing, normalise_images
from .errors import InputError
from .fitness import Scores, Split, stratified_split
from .heads import MajorityHead
from .knn import count_votes, knn_vote, pairwise_distances
from .storage import PRECISIONS
from .trunk import Block, TrunkSpec, Weights, features
from .views import Views

METHODS = ("kmeans", "cnn", "optimised", "lvq", "joint")
LVQ_WINDOW = 0.3  # Kohonen's relative window w: update when min(d_r/d_w, d_w/d_r) > (1 - w) / (1 + w)
# Windows tried when none is given, chosen by validation. A narrower window moves prototypes only for
# images right at a border. On Fashion-MNIST, where the classes overlap, 50 prototypes per class in
# 16 dimensions score 84.8 % with 0.3 and 85.2 % with 0.15; the best window differs by dataset and size.
LVQ_WINDOWS = (0.1, 0.2, 0.3)
LVQ_RATE = 0.02  # LVQ2.1 step size at the first pass, decaying linearly to 0 (points lie on the unit sphere)
LVQ_BATCH = 128  # images per vectorised LVQ step
JOINT_ROUNDS = 2  # method joint: rounds of (tune the last layer to the bank, refit the bank by LVQ)
JOINT_SEARCH_IMAGES = 4000  # method joint: training images that score each candidate last layer
JOINT_SIGMA = 0.1  # method joint: the optimiser's initial step, relative to the layer's weight spread
SMOOTH_TEMPERATURE = 0.05  # methods optimised and joint: softmax temperature of the smooth score
COMPACT_METRICS = ("cosine", "euclidean")  # preference order on a validation tie
EvaluatorFactory = Callable[[Any], Any]  # problem -> evaluators.Evaluator (the joint method's; default in-process)
GRID_PROTOTYPES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 100, 200, 300, 500)  # budget search: per class
GRID_DIMS = (0, 128, 64, 32, 16, 8)  # budget search: PCA dimensions (0 = all)
GRID_NEIGHBORS = (1, 3, 5, 9)  # k tried where none is given
AUTO_SPLITS_MAX_TRAIN = 10_000  # --splits 0: 3 validation splits up to this many training images, else 1


@dataclass(frozen=True)
class CompactSettings(Checked):
    """One compact engine: how its bank is reduced, projected and stored, and how it votes."""

    method: str = option("lvq", "lvq (default: k-means then LVQ2.1), kmeans, cnn (Hart's condensed NN), optimised "
                         "(prototypes moved by the optimiser) or joint (LVQ, then the trunk's last layer tuned to "
                         "its bank, kept if validation agrees)")
    prototypes: int | None = option(None, "prototypes per class (a class with fewer images keeps them all)")
    dims: int = option(0, "PCA feature dimensions (0 = all)")
    precision: str = option("fp32", "bank and weight storage: fp32, fp16, int8 (one scale per tensor)")
    n_neighbors: int = option(0, "k (0 = chosen by validation among 1, 3, 5, 9)")
    metric: str = option("", "cosine or euclidean (default: chosen by validation, cosine on a tie)")
    window: float = option(0.0, "method lvq: LVQ2.1 window, between 0 and 1 (0 = chosen by validation among "
                           "0.1, 0.2, 0.3)")
    epochs: int = option(4, "method lvq: passes over the training images")
    generations: int = option(100, "methods optimised and joint: generations of the optimiser (joint: per round)")
    optimiser: str = option("cma", "methods optimised and joint: the registered optimiser (cma, pso, ga)")
    query_shifts: int = option(0, "test-time views: each query and its copies shifted 1..n px vote together "
                               "(4n+1 times the trunk's multiply-adds, no more bank bytes; 0 = the query alone)")

    def checks(self) -> list[tuple[bool, str]]:
        from .data import shift_check
        from .optimisers import REGISTRY

        return [
            (self.method in METHODS, f"unknown reduction method {self.method!r}: expected one of {', '.join(METHODS)}"),
            (self.prototypes is None or self.prototypes >= 1,
             f"--prototypes must be at least 1, got {self.prototypes}"),
            (self.dims >= 0, f"--dims must be 0 (all) or positive, got {self.dims}"),
            (self.precision in PRECISIONS,
             f"unknown precision {self.precision!r}: expected {', '.join(PRECISIONS)}"),
            (self.n_neighbors >= 0, f"--n-neighbors must be 0 (chosen) or positive, got {self.n_neighbors}"),
            (self.metric in ("", *COMPACT_METRICS),
             f"unknown metric {self.metric!r} for condense: expected cosine or euclidean"),
            (0.0 <= self.window < 1.0,
             f"--window must be at least 0 (0 = chosen by validation) and below 1, got {self.window:g}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.generations >= 1, f"--generations must be at least 1, got {self.generations}"),
            (self.optimiser in REGISTRY, f"--optimiser {self.optimiser!r}: expected one of {', '.join(REGISTRY)}"),
            shift_check("--query-shifts", self.query_shifts),
            (self.query_shifts == 0 or self.method != "joint",
             "--method joint tunes the last layer for one view per query: drop --query-shifts or choose "
             "another --method"),
        ]

    def compact_fields(self) -> dict[str, Any]:
        """This engine's settings alone (what metrics.json records as ``compact``)."""
        return {f.name: getattr(self, f.name) for f in fields(CompactSettings)}


@dataclass(frozen=True)
class CondenseConfig(CompactSettings):
    """``slicenet condense``: a compact engine of given settings, or the best within a budget."""

    budget_kb: float | None = option(None, "an engine within this many KB (1 KB = 1000 B): of the settings "
                                     "searched (prototypes, dims, precision, k, metric, LVQ window), the smallest "
                                     "whose validation accuracy is within one standard error of the best")
    budget_macs: int | None = option(None, "with --budget-kb: at most this many multiply-adds per image "
                                     "(trunk and head)")
    splits: int = option(0, "with --budget-kb: rank settings by their mean validation accuracy over this many "
                         "random fit / validation splits (0 = auto: 3 for training sets of up to "
                         f"{AUTO_SPLITS_MAX_TRAIN:,} images, else 1)")
    bank_shifts: int = option(-1, "fit prototypes to the images plus copies shifted 1..n px (-1 = as the "
                              "source run's bank)")
    seed: int = option(0, "seed of the split, k-means, LVQ's order and the optimiser")

    def checks(self) -> list[tuple[bool, str]]:
        from .data import shift_check

        return [
            ((self.prototypes is None) != (self.budget_kb is None),
             "give one of --prototypes N (per class) or --budget-kb B, not "
             + ("both" if self.prototypes is not None else "neither")),
            *super().checks(),
            (self.budget_kb is None or self.budget_kb > 0, f"--budget-kb must be positive, got {self.budget_kb}"),
            (self.budget_macs is None or self.budget_kb is not None,
             "--budget-macs limits the search of --budget-kb: give --budget-kb too"),
            (self.budget_macs is None or self.budget_macs >= 1,
             f"--budget-macs must be a positive number of multiply-adds, got {self.budget_macs}"),
            (self.splits >= 0, f"--splits must be 0 (auto) or at least 1, got {self.splits}"),
            (self.splits <= 1 or self.budget_kb is not None,
             "--splits ranks the settings of --budget-kb: give --budget-kb too"),
            shift_check("--bank-shifts", self.bank_shifts, minus_one="as the source run"),
        ]


def kmeans_centres(points: np.ndarray, count: int, *, seed: int) -> np.ndarray:
    """``count`` k-means centres of ``points`` [N, D] (all of them, copied, where N <= count)."""
    from sklearn.cluster import KMeans

    if count >= len(points):
        return points.copy()
    return KMeans(n_clusters=count, n_init=3, random_state=seed).fit(points).cluster_centers_.astype(np.float32)


def _hart_cnn(points: np.ndarray, labels: np.ndarray, count: int, seed: int, n_classes: int) -> np.ndarray:
    """Indices of a condensed subset: Wilson-edited (k=3), then Hart's 1-NN condensing, then exactly
    ``count`` per class (Hart's order first, padded with the images nearest the class centroids)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(points)
    y = torch.from_numpy(labels)
    _, _, idx = knn_vote(x, x, y, n_classes=n_classes, n_neighbors=4)  # the nearest is the image itself: drop it
    keep = (count_votes(y[idx[:, 1:]], n_classes).argmax(1) == y).numpy()
    order = rng.permutation(np.flatnonzero(keep))
    store: list[int] = []
    for label in range(n_classes):
        members = order[labels[order] == label]
        if len(members):
            store.append(int(members[0]))
    for _ in range(3):  # passes until nothing is absorbed
        added = False
        for i in order:
            if i in store:
                continue
            d = pairwise_distances(x[i : i + 1], x[store], "euclidean")[0]
            if labels[store[int(d.argmin())]] != labels[i]:
                store.append(int(i))
                added = True
        if not added:
            break
    chosen = []
    for label in range(n_classes):
        members = np.flatnonzero(labels == label)
        picked = [i for i in store if labels[i] == label][:count]
        if len(picked) < min(count, len(members)):
            centres = kmeans_centres(points[members], min(count, len(members)), seed=seed)
            centre_distances = pairwise_distances(torch.from_numpy(centres), x[members], "euclidean").numpy()
            for row in centre_distances:
                for j in np.argsort(row):
                    if members[j] not in picked:
                        picked.append(int(members[j]))
                        break
                if len(picked) >= min(count, len(members)):
                    break
        chosen.extend(picked)
    return np.asarray(chosen)


def class_centres(points: np.ndarray, labels: np.ndarray, n_classes: int, count: int, *, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(k-means centres of each class, ``count`` per class or all of a smaller class; their labels): the
    bank of method kmeans, and where lvq, joint and optimised start."""
    bank, bank_labels = [], []
    for label in range(n_classes):
        centres = kmeans_centres(points[labels == label], count, seed=seed)
        bank.append(centres)
        bank_labels.append(np.full(len(centres), label))
    return np.concatenate(bank), np.concatenate(bank_labels)


def reduce_bank(points: np.ndarray, labels: np.ndarray, n_classes: int, settings: CompactSettings, *, seed: int,
                queries: np.ndarray | None = None, query_labels: np.ndarray | None = None,
                n_neighbors: int = 1, start: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes (and their labels) from post-processed training features, ``settings.prototypes``
    per class (or all of a smaller class). ``start``: these points' ``class_centres`` for the same
    count and seed, where the caller has them already (the budget search tries several LVQ windows
    from one k-means)."""
    settings.validate()
    assert settings.prototypes is not None, "reduce_bank needs settings.prototypes"
    if settings.method == "cnn":
        chosen = _hart_cnn(points, labels, settings.prototypes, seed, n_classes)
        return points[chosen], labels[chosen]
    prototypes, prototype_labels = start or class_centres(points, labels, n_classes, settings.prototypes, seed=seed)
    if settings.method in ("lvq", "joint"):  # joint: LVQ prototypes, then the last layer (build_compact)
        on_sphere = bool(np.allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-3))
        prototypes = lvq21(prototypes, prototype_labels, points, labels, epochs=settings.epochs, seed=seed,
                           window=settings.window or LVQ_WINDOW, sphere=on_sphere)
    if settings.method == "optimised":
        assert queries is not None and query_labels is not None
        prototypes = _optimise_prototypes(prototypes, prototype_labels, queries, query_labels, n_classes=n_classes,
                                          settings=settings, seed=seed, n_neighbors=n_neighbors)
    return prototypes, prototype_labels


def lvq21(prototypes: np.ndarray, prototype_labels: np.ndarray, points: np.ndarray, labels: np.ndarray, *,
          epochs: int, seed: int, rate: float = LVQ_RATE, window: float = LVQ_WINDOW,
          batch: int = LVQ_BATCH, sphere: bool = False) -> np.ndarray:
    """Prototypes refined by Kohonen's LVQ2.1 rule, ``epochs`` shuffled passes over the points.

    For a point x whose nearest same-class prototype r and nearest other-class prototype w lie at
    distances d_r, d_w with min(d_r / d_w, d_w / d_r) > (1 - window) / (1 + window) (x falls in the
    window around their border), r += a (x - r) and w -= a (x - w); the step a decays linearly from
    ``rate`` to 0. The points of a batch of ``batch`` images are matched to the same prototypes, then
    each prototype takes the mean of its steps (batch LVQ). Labels never change, so no class loses a
    prototype.

    With ``sphere`` (points on the unit sphere, as L2-normalised features are), the prototypes are put
    back on it after every step. Euclidean and cosine distances then rank them alike, so the engine
    gets the accuracy of the euclidean fit with the shorter cosine graph (on Fashion-MNIST, 10 per
    class in the full 128 dimensions: 86.0 % cosine, against 85.7 % cosine and 86.1 % euclidean for
    prototypes left off the sphere).
    """
    w = torch.from_numpy(np.ascontiguousarray(prototypes, dtype=np.float32)).clone()
    if sphere:
        w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x_all = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w_labels = torch.from_numpy(np.asarray(prototype_labels, dtype=np.int64))
    threshold = (1 - window) / (1 + window)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x_all) + batch - 1) // batch)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(x_all), batch):
            rows = order[start : start + batch]
            x, y = x_all[rows], y_all[rows]
            a = rate * (1 - step / steps)
            step += 1
            distances = torch.cdist(x, w)
            same = w_labels.unsqueeze(0) == y.unsqueeze(1)
            d_right, right = distances.masked_fill(~same, float("inf")).min(1)
            d_wrong, wrong = distances.masked_fill(same, float("inf")).min(1)
            ratio = torch.minimum(d_right / d_wrong.clamp_min(1e-12), d_wrong / d_right.clamp_min(1e-12))
            inside = (ratio > threshold) & torch.isfinite(d_right) & torch.isfinite(d_wrong)
            if not inside.any():
                continue
            x, right, wrong = x[inside], right[inside], wrong[inside]
            # A prototype matched by several points of the batch takes their mean step, not their
            # sum: the step size then stays a, however few prototypes share the batch.
            moves = torch.zeros_like(w).index_add_(0, right, x - w[right]).index_add_(0, wrong, w[wrong] - x)
            counts = torch.zeros(len(w)).index_add_(0, right, torch.ones(len(right)))
            counts.index_add_(0, wrong, torch.ones(len(wrong)))
            w += a * moves / counts.clamp_min(1).unsqueeze(1)
            if sphere:
                w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return w.numpy()


def knn_quality(votes: torch.Tensor, distances: torch.Tensor, neighbour_labels: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k-NN accuracy, smooth score) averaged over the queries [..., Q]: what the optimised and joint
    methods maximise, their sum. The smooth score (the softmax over the k neighbours' distances that
    falls on the query's class) tells apart candidates of equal accuracy."""
    correct = (votes.argmax(-1) == labels).double().mean(-1)
    weights = torch.softmax(-distances.double() / SMOOTH_TEMPERATURE, -1)
    return correct, (weights * (neighbour_labels == labels.unsqueeze(-1))).sum(-1).mean(-1)


def _quality_scores(accuracy: torch.Tensor, soft: torch.Tensor) -> Scores:
    return Scores.of(-(accuracy + soft), accuracy, soft)


def _optimise_prototypes(start: np.ndarray, labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, *,
                         n_classes: int, settings: CompactSettings, seed: int, n_neighbors: int) -> np.ndarray:
    """Move the prototypes without gradients to maximise k-NN accuracy (+ the smooth score)."""
    from .optimisers import make_optimiser
    from .search import run_generations

    y_bank = torch.from_numpy(labels)
    q = torch.from_numpy(queries)
    y_q = torch.from_numpy(query_labels)
    optimiser = make_optimiser(settings.optimiser, start.reshape(-1).astype(np.float64),
                               sigma0=float(np.std(start)) * 0.1, seed=seed, max_generations=settings.generations)
    k = min(n_neighbors, len(start))

    def evaluate(population: np.ndarray, split: Split | None = None) -> Scores:
        banks = torch.as_tensor(population, dtype=torch.float32).reshape(len(population), *start.shape)
        votes, distances, idx = knn_vote(q.expand(len(population), *q.shape), banks, y_bank, n_classes=n_classes,
                                         n_neighbors=k)
        return _quality_scores(*knn_quality(votes, distances, y_bank[idx], y_q))

    start_score = evaluate(start.reshape(1, -1)).fitness[0]
    for _ in run_generations(optimiser, evaluate):
        pass
    best = optimiser.recommendation()
    return (best if evaluate(best[None]).fitness[0] < start_score else start.reshape(-1)).reshape(
        start.shape).astype(np.float32)


@dataclass(frozen=True)
class BankProblem:
    """Candidate last layers scored against a fixed bank: the joint condensation's problem, for
    ``evaluators.TorchEvaluator``. Each candidate's features of the scored images, post-processed as
    the engine does, are voted on by the engine's bank; fitness is minus (accuracy + smooth score)."""

    engine: Engine
    x_train: torch.Tensor  # normalised images [N, 1, H, W]
    y_train: torch.Tensor  # int64 [N]
    rows: torch.Tensor  # the images scored

    @property
    def spec(self) -> TrunkSpec:
        return self.engine.spec

    def to(self, device: torch.device) -> BankProblem:
        return BankProblem(self.engine.to(device), self.x_train.to(device), self.y_train.to(device), self.rows)

    def scored_rows(self, split: Split | None) -> torch.Tensor:
        return self.rows

    def score(self, features: torch.Tensor, split: Split | None) -> Scores:
        head = self.engine.bank_head
        votes, distances, idx = knn_vote(self.engine.post(features), head.bank, head.bank_labels,
                                         n_classes=head.n_classes, n_neighbors=head.n_neighbors, metric=head.metric)
        return _quality_scores(*knn_quality(votes, distances, head.bank_labels[idx], self.y_train[self.rows]))


def raw_features(engine: Engine, images: np.ndarray) -> torch.Tensor:
    return features(normalise_images(images, engine.input_mean, engine.input_std), engine.spec, engine.weights)


def pca_projection(raw: torch.Tensor, mean: torch.Tensor, dims: int) -> torch.Tensor:
    """[D, dims] principal directions of the centred features."""
    centred = (raw - mean).double()
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return v[:dims].T.float().contiguous()


def fit_post(engine: Engine, raw: torch.Tensor, dims: int) -> PostProcessing:
    """The engine's post-processing with the mean of ``raw`` (training features [N, D]) and, for
    ``dims`` below D, their first ``dims`` principal directions."""
    mean = raw.mean(0)
    projection = pca_projection(raw, mean, dims) if dims and dims < raw.shape[1] else None
    return PostProcessing(engine.post.method, mean, projection)


def shared_fit(engine: Engine, raw: torch.Tensor, labels: np.ndarray, *, method: str, prototypes: int, dims: int,
               seed: int) -> tuple[PostProcessing, tuple[np.ndarray, np.ndarray] | None]:
    """What the engines of one (prototypes, dims) setting share whatever their LVQ window and k, as
    ``build_compact`` takes them: the post-processing fitted to ``raw`` and the k-means start of the
    prototypes (none for cnn, which picks its own)."""
    post = fit_post(engine, raw, dims)
    if method == "cnn":
        return post, None
    return post, class_centres(post(raw).numpy(), labels, engine.n_classes, prototypes, seed=seed)


def build_compact(engine: Engine, images: np.ndarray, labels: np.ndarray, settings: CompactSettings, *, seed: int,
                  raw: torch.Tensor | None = None, n_neighbors: int | None = None,
                  evaluator: EvaluatorFactory | None = None, post: PostProcessing | None = None,
                  start: tuple[np.ndarray, np.ndarray] | None = None) -> Engine:
    """A compact engine from ``engine``'s trunk and the given training images. ``raw``, ``post`` and
    ``start`` (``class_centres`` of the post-processed features) are what it would compute itself,
    given where the caller has them already."""
    source = engine.bank_head
    raw = raw_features(engine, images) if raw is None else raw
    post = post or fit_post(engine, raw, settings.dims)
    points = post(raw).numpy()
    k = n_neighbors or settings.n_neighbors or source.n_neighbors
    bank, bank_labels = reduce_bank(points, labels, engine.n_classes, settings, seed=seed, queries=points,
                                    query_labels=labels, n_neighbors=k, start=start)
    # A compact bank is voted on by majority; its k and prototypes are chosen for its views (one by default).
    head = MajorityHead(n_neighbors=min(k, len(bank)), metric=settings.metric or source.metric,
                        bank=torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)),
                        bank_labels=torch.from_numpy(bank_labels.astype(np.int64)), classes=engine.n_classes)
    compact = dataclasses.replace(engine, post=post, head=head, views=Views(settings.query_shifts))
    if settings.method == "joint":
        compact = tune_jointly(compact, images, labels, settings, seed=seed, evaluator=evaluator)
    return compact.with_storage(settings.precision, settings.precision)


def tune_jointly(engine: Engine, images: np.ndarray, labels: np.ndarray, settings: CompactSettings, *,
                 seed: int, evaluator: EvaluatorFactory | None = None) -> Engine:
    """The bank and the trunk's last layer fitted to each other, without gradients.

    The trunk was tuned for a bank of every training image; a bank of a few prototypes per class
    wants features that fall near *its* prototypes. Each of ``JOINT_ROUNDS`` rounds (block coordinate
    ascent): the registered optimiser (``settings.optimiser``) moves the last layer's kernels and
    biases, the bank held, to maximise k-NN accuracy plus a smooth score of ``JOINT_SEARCH_IMAGES``
    training images against the bank (``BankProblem``, scored by the search's own evaluator: the whole
    population in one grouped convolution); then LVQ2.1 refits the prototypes to the new features,
    starting from the old ones. The feature mean and projection are held, so every round's engine is
    a complete engine. A round is kept only if it raises the k-NN accuracy on all the training images
    it was given.
    """
    from .evaluators import TorchEvaluator
    from .optimisers import make_optimiser
    from .search import run_generations
    from .trunk import unflatten_layer

    if not engine.spec.layers:
        raise InputError("method joint tunes the trunk's last convolution: this trunk has none (preset pixels)")
    block = Block(len(engine.spec.layers) - 1, None)
    rng = np.random.default_rng(seed)
    search = torch.from_numpy(rng.choice(len(images), min(len(images), JOINT_SEARCH_IMAGES), replace=False))
    x = normalise_images(images, engine.input_mean, engine.input_std)
    on_sphere = bool(torch.allclose(engine.bank_head.bank.norm(dim=1), torch.ones(1), atol=1e-3))

    best, best_accuracy = engine, accuracy(engine, images, labels)
    for round_index in range(JOINT_ROUNDS):
        start = block.vector(best.weights)
        optimiser = make_optimiser(settings.optimiser, start, sigma0=JOINT_SIGMA * float(np.std(start)),
                                   seed=seed + round_index, max_generations=settings.generations)
        problem = BankProblem(best, x, torch.from_numpy(labels), search)
        with (evaluator or TorchEvaluator)(problem) as scorer:
            for _ in run_generations(optimiser, scorer.bind(best.weights, block)):
                pass
        weights = list(best.weights)
        weights[block.layer] = unflatten_layer(optimiser.recommendation(), best.spec, block.layer)
        candidate = dataclasses.replace(best, weights=weights)
        points = candidate.embed(images).numpy()
        head = candidate.bank_head
        refitted = lvq21(head.bank.numpy(), head.bank_labels.numpy(), points, labels, epochs=settings.epochs,
                         seed=seed + round_index, window=settings.window or LVQ_WINDOW, sphere=on_sphere)
        candidate = candidate.with_head(dataclasses.replace(head, bank=torch.from_numpy(refitted)))
        candidate_accuracy = accuracy(candidate, images, labels)
        if candidate_accuracy <= best_accuracy:
            break
        best, best_accuracy = candidate, candidate_accuracy
    return best


def accuracy(engine: Engine, images: np.ndarray, labels: np.ndarray) -> float:
    predicted, _, _ = engine.predict(images)
    return float((predicted == labels).mean())


class ValidationFeatures:
    """Validation images and their trunk features, computed once per storage precision and views: every
    compact engine a budget search builds has its source's trunk, stored at the engine's precision,
    whatever its bank, so the thousands of engines it scores share a few trunk passes (on Fashion-MNIST's
    15,000 validation images and a 6-convolution trunk, ~1.6 s each, times the views)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self._raw: dict[tuple[str, Views], tuple[Weights, torch.Tensor]] = {}

    def accuracy(self, engine: Engine) -> float:
        """``accuracy(engine, images, labels)``, for engines of one trunk (checked)."""
        key = engine.storage["weights"], engine.views
        if key not in self._raw:
            self._raw[key] = engine.weights, raw_features(engine, engine.views.expand(self.images))
        weights, raw = self._raw[key]
        assert all(torch.equal(a, b) for pair, other in zip(weights, engine.weights, strict=True)
                   for a, b in zip(pair, other, strict=True)), "ValidationFeatures serves engines of one trunk"
        predicted, _, _ = engine.head.predict(engine.post(raw), engine.views, len(self.images))
        return float((predicted == self.labels).mean())


def with_vote(engine: Engine, *, n_neighbors: int, metric: str) -> Engine:
    """The same compact engine voting with another k and metric."""
    return engine.with_head(dataclasses.replace(engine.bank_head, n_neighbors=n_neighbors, metric=metric))


FitSplit = tuple[np.ndarray, np.ndarray, torch.Tensor, np.ndarray]


def _fit_split(engine: Engine, images: np.ndarray, labels: np.ndarray, *, validation_fraction: float, seed: int,
               shifts: int) -> FitSplit:
    """(fit images, their labels, their raw features, validation indices): the fit part of a stratified
    split, with ``shifts`` pixels of shifted copies; the validation images stay plain, so none is
    scored against its own shifted twin."""
    fit, val = stratified_split(labels, validation_fraction, np.random.default_rng(seed))
    fit_images, fit_labels = shifted_copies(images[fit], labels[fit], shifts)
    return fit_images, fit_labels, raw_features(engine, fit_images), val


def _validation_accuracy(engine: Engine, images: np.ndarray, labels: np.ndarray, splits: list[FitSplit],
                         settings: CompactSettings, seed: int, evaluator: EvaluatorFactory | None = None) -> float:
    """Mean validation accuracy of the engine ``settings`` build, over ``_fit_split`` splits."""
    return float(np.mean([accuracy(build_compact(engine, fit_images, fit_labels, settings, seed=seed, raw=raw_fit,
                                                 n_neighbors=settings.n_neighbors, evaluator=evaluator),
                                   images[val], labels[val])
                          for fit_images, fit_labels, raw_fit, val in splits]))


def choose_and_build(engine: Engine, images: np.ndarray, labels: np.ndarray, settings: CompactSettings, *,
                     seed: int, validation_fraction: float = 0.25, shifts: int = 0,
                     evaluator: EvaluatorFactory | None = None) -> tuple[Engine, float, CompactSettings]:
    """Pick k and the metric by validation (where not given), then build on all the images.

    Returns (engine, validation accuracy, the settings used, k, metric and LVQ window filled in). With ``shifts``
    the prototypes are fitted to the images and their shifted copies (the bank of a source run built
    with ``--bank-shifts``); the validation images are never shifted copies of fitted ones."""
    split = _fit_split(engine, images, labels, validation_fraction=validation_fraction, seed=seed, shifts=shifts)
    fit_images, fit_labels, raw_fit, val = split
    candidates = [settings.n_neighbors] if settings.n_neighbors else list(GRID_NEIGHBORS)
    metrics = [settings.metric] if settings.metric else list(COMPACT_METRICS)
    # joint: k, metric and window are chosen for the LVQ engine it starts from; then that one engine's
    # last layer is tuned, and kept tuned only where validation accuracy beats the LVQ engine.
    method = "lvq" if settings.method == "joint" else settings.method
    windows = [settings.window] if settings.window or method != "lvq" else list(LVQ_WINDOWS)
    scored = []
    built: dict[tuple[int, float], Engine] = {}
    scoring = ValidationFeatures(images[val], labels[val])
    assert settings.prototypes is not None, "choose_and_build needs settings.prototypes"
    post, start = shared_fit(engine, raw_fit, fit_labels, method=method, prototypes=settings.prototypes,
                             dims=settings.dims, seed=seed)
    for window in windows:
        for k in candidates:  # built per k where the prototypes depend on k (the optimised method tunes them for it)
            key = (k if method == "optimised" else 0, window)
            if key not in built:
                built[key] = build_compact(engine, fit_images, fit_labels,
                                           dataclasses.replace(settings, window=window, method=method), seed=seed,
                                           raw=raw_fit, n_neighbors=k, post=post, start=start)
            trial = built[key]
            for preference, metric in enumerate(metrics):
                voting = with_vote(trial, n_neighbors=min(k, len(trial.bank_head.bank)), metric=metric)
                scored.append((scoring.accuracy(voting), -k, -preference, window, k, metric))
    val_accuracy, _, _, window, k, metric = max(scored)
    chosen = dataclasses.replace(settings, n_neighbors=k, metric=metric, window=window, method=method)
    if settings.method == "joint":
        tuned = dataclasses.replace(chosen, method="joint")
        tuned_accuracy = _validation_accuracy(engine, images, labels, [split], tuned, seed, evaluator)
        if tuned_accuracy > val_accuracy:
            chosen, val_accuracy = tuned, tuned_accuracy
    return build_compact(engine, *shifted_copies(images, labels, shifts), chosen, seed=seed, n_neighbors=k,
                         evaluator=evaluator), val_accuracy, chosen


def budget_search(engine: Engine, images: np.ndarray, labels: np.ndarray, *, budget_bytes: int, seed: int,
                  method: str = "lvq", on_trial: Callable[[dict], None] | None = None,
                  validation_fraction: float = 0.25, metrics: tuple[str, ...] = COMPACT_METRICS,
                  epochs: int = CompactSettings.epochs, shifts: int = 0,
                  budget_macs: int | None = None, splits: int = 1,
                  generations: int = CompactSettings.generations,
                  on_cell: Callable[[int, int], None] | None = None,
                  evaluator: EvaluatorFactory | None = None, query_shifts: int = 0,
                  done_cells: dict[str, list[dict]] | None = None,
                  on_cell_done: Callable[[str, list[dict]], None] | None = None) -> tuple[Engine, dict, list[dict]]:
    """The most accurate engine within ``budget_bytes`` (and, if given, ``budget_macs`` multiply-adds
    per image) over a grid of prototypes x dims x precision x k x metric (x LVQ window for lvq; joint
    searches the grid with lvq, then tunes the trunk's last layer for the pick if validation agrees).

    Returns (engine built on all images, its trial, every trial). Accuracy is validation accuracy:
    with ``splits`` > 1, its mean over that many random fit / validation splits. A small validation
    split ranks thousands of settings within its noise (MNIST-5k's 1,000 images: one image is 0.1
    point), so the best score is partly luck; the mean of several splits is steadier. (On MNIST-5k
    within 74 KB, 3 splits pick the same engine as one.)
    ``shifts`` as for ``choose_and_build``; ``generations`` per round of joint's layer search;
    ``on_cell(done, total)`` reports progress over the grid's (prototypes, dims) cells. With ``query_shifts``
    every engine votes each query's shifted views (``Views``): scored so, and its multiply-adds counted so.

    Resumable: ``on_cell_done(key, trials)`` gets each scored cell's trials (a checkpoint keeps them), and
    ``done_cells`` (key -> trials, from such a checkpoint) are taken as scored, not run again. Every cell is
    seeded on its own, so a search continued this way ends with the same trials and engine as one that
    never stopped.
    """
    views = Views(query_shifts)
    trunk_macs = views.count * engine.spec.multiply_adds(engine.image_size)
    trunk_bytes = engine.with_storage("int8", "int8").spec.parameters

    def nothing_fits() -> InputError:
        within = f"{budget_bytes} bytes" + (f" and {budget_macs} multiply-adds" if budget_macs is not None else "")
        over_views = f" over its {views.count} views" if views.count > 1 else ""
        return InputError(f"no engine fits in {within} (the trunk alone needs about {trunk_bytes} bytes at int8 "
                          f"and {trunk_macs} multiply-adds{over_views}); raise --budget-kb or --budget-macs")

    if trunk_bytes > budget_bytes or (budget_macs is not None and trunk_macs > budget_macs):
        raise nothing_fits()  # before the training features are computed
    data = [_fit_split(engine, images, labels, validation_fraction=validation_fraction, seed=seed + split,
                       shifts=shifts) for split in range(splits)]
    n_features = data[0][2].shape[1]
    class_sizes = np.bincount(data[0][1], minlength=engine.n_classes)
    # joint tunes the trunk's last layer for one bank: the grid is searched with LVQ, then the pick is
    # tuned and kept tuned only if that raises its validation accuracy (same splits).
    grid_method = "lvq" if method == "joint" else method
    windows = LVQ_WINDOWS if grid_method == "lvq" else (0.0,)
    validation = [ValidationFeatures(images[val], labels[val]) for *_, val in data]
    trials: list[dict[str, Any]] = []
    cells = [(p, d) for p in GRID_PROTOTYPES for d in GRID_DIMS if d < n_features]
    for cell, (prototypes, dims) in enumerate(cells):
        if on_cell is not None:
            on_cell(cell, len(cells))
        key = grid_cell_key(prototypes, dims)
        if done_cells is not None and key in done_cells:
            trials += done_cells[key]
            for kept in done_cells[key]:
                if on_trial is not None:
                    on_trial(kept)
            continue
        cell_trials: list[dict[str, Any]] = []
        # The bank alone, at one byte a number, is a lower bound of the engine's size, and its
        # multiply-adds are known from the shapes: skip settings that cannot fit before paying
        # for their prototypes.
        bank_numbers = int(np.minimum(class_sizes, prototypes).sum()) * (dims or n_features)
        macs = trunk_macs + views.count * (n_features * dims + bank_numbers)  # the engine's multiply_adds
        if bank_numbers > budget_bytes or (budget_macs is not None and macs > budget_macs):
            continue
        shared = [shared_fit(engine, raw_fit, fit_labels, method=grid_method, prototypes=prototypes, dims=dims,
                             seed=seed) for _, fit_labels, raw_fit, _ in data]  # per split, for every window
        for window in windows:
            scores: dict[tuple[str, int, str], list[float]] = {}
            costs: dict[str, tuple[int, int]] = {}
            for (fit_images, fit_labels, raw_fit, _), (post, start), scoring in zip(data, shared, validation,
                                                                                   strict=True):
                base = build_compact(engine, fit_images, fit_labels,
                                     CompactSettings(method=grid_method, prototypes=prototypes, dims=dims,
                                                     precision="fp32", n_neighbors=1, epochs=epochs,
                                                     window=window, query_shifts=query_shifts), seed=seed,
                                     raw=raw_fit, n_neighbors=1, post=post, start=start)
                for precision in PRECISIONS:
                    stored = base.with_storage(precision, precision)
                    costs[precision] = (stored.engine_bytes, stored.multiply_adds)  # whatever k and metric
                    if costs[precision][0] > budget_bytes:  # engine_bytes serialises the engine: once
                        continue
                    for k in GRID_NEIGHBORS:
                        if k > len(base.bank_head.bank):
                            continue
                        for metric in metrics:
                            scores.setdefault((precision, k, metric), []).append(
                                scoring.accuracy(with_vote(stored, n_neighbors=k, metric=metric)))
            for (precision, k, metric), values in scores.items():
                if len(values) < splits:  # over budget on some split
                    continue
                trial: dict[str, Any] = {
                    "method": grid_method, "prototypes": prototypes, "dims": dims, "precision": precision,
                    "n_neighbors": k, "metric": metric, "window": window, "query_shifts": query_shifts,
                    "engine_bytes": costs[precision][0], "multiply_adds": costs[precision][1],
                    "validation_accuracy": float(np.mean(values))}
                if splits > 1:
                    trial["validation_splits"] = values
                cell_trials.append(trial)
                if on_trial is not None:
                    on_trial(trial)
        trials += cell_trials
        if on_cell_done is not None:
            on_cell_done(key, cell_trials)
    if not trials:
        raise nothing_fits()
    best = pick_within_noise(trials, n_validation=len(data[0][3]) * splits)
    settings = CompactSettings(method=grid_method, prototypes=best["prototypes"], dims=best["dims"],
                               precision=best["precision"], n_neighbors=best["n_neighbors"], metric=best["metric"],
                               epochs=epochs, window=best["window"], query_shifts=query_shifts)
    if method == "joint":
        tuned = dataclasses.replace(settings, method="joint", generations=generations)
        tuned_accuracy = _validation_accuracy(engine, images, labels, data, tuned, seed, evaluator)
        if tuned_accuracy > best["validation_accuracy"]:
            best = {**best, "method": "joint", "validation_accuracy": tuned_accuracy,
                    "lvq_validation_accuracy": best["validation_accuracy"]}
            settings = tuned
    final = build_compact(engine, *shifted_copies(images, labels, shifts), settings, seed=seed,
                          n_neighbors=best["n_neighbors"], evaluator=evaluator)
    if final.engine_bytes > budget_bytes:  # k-means on more images cannot grow it, but check anyway
        raise InputError(f"the chosen engine is {final.engine_bytes} bytes, over the budget; raise --budget-kb")
    if budget_macs is not None and final.multiply_adds > budget_macs:
        raise InputError(f"the chosen engine needs {final.multiply_adds} multiply-adds, over the budget; "
                         "raise --budget-macs")
    return final, best, trials


def grid_cell_key(prototypes: int, dims: int) -> str:
    """A budget search's (prototypes per class, PCA dims) cell, as a checkpoint names it."""
    return f"p{prototypes}-d{dims}"


def pick_within_noise(trials: list[dict], *, n_validation: int) -> dict:
    """The smallest engine (bytes, then multiply-adds) whose validation accuracy is within one standard
    error of the best's, sqrt(p (1 - p) / n) over the ``n_validation`` images scored (all splits).

    Thousands of settings ranked on one validation split: the top score is partly the luck of that
    split (on MNIST-5k's 1,000 images one image is 0.1 point, and the standard error near 98 % is 0.44),
    and the engine with the highest score is rarely the best on new images. Among engines that the
    split cannot tell apart, the smallest is the one to keep (measured: results/compact_choice.md).
    """
    best = max(trials, key=lambda t: (t["validation_accuracy"], -t["engine_bytes"], -t["multiply_adds"],
                                      -COMPACT_METRICS.index(t["metric"])))
    p = best["validation_accuracy"]
    noise = (p * (1 - p) / max(1, n_validation)) ** 0.5
    close = [t for t in trials if t["validation_accuracy"] >= p - noise]
    chosen = min(close, key=lambda t: (t["engine_bytes"], t["multiply_adds"], -t["validation_accuracy"],
                                       COMPACT_METRICS.index(t["metric"])))
    return {**chosen, "best_validation_accuracy": p, "validation_noise": noise}


def frontier(trials: list[dict], cost: str = "engine_bytes", value: str = "validation_accuracy") -> list[dict]:
    """The accuracy / size Pareto frontier: each trial more accurate than every smaller one (by default;
    ``cost`` and ``value`` name other keys, e.g. the report's latency and test accuracy)."""
    best_so_far, points = -float("inf"), []
    for trial in sorted(trials, key=lambda t: (t[cost], -t[value])):
        if trial[value] > best_so_far:
            best_so_far = trial[value]
            points.append(trial)
    return points


def condense(engine: Engine, images: np.ndarray, labels: np.ndarray, config: CondenseConfig, *,
             source_bank_shifts: int = 0, on_trial: Callable[[dict], None] | None = None,
             on_cell: Callable[[int, int], None] | None = None,
             evaluator: EvaluatorFactory | None = None, done_cells: dict[str, list[dict]] | None = None,
             on_cell_done: Callable[[str, list[dict]], None] | None = None) -> tuple[Engine, dict]:
    """``slicenet condense`` without its files: the compact engine ``config`` asks for, from training
    ``images``, and what its metrics.json records about how it was chosen (``compact``, the validation
    accuracy, and for a budget its frontier). ``done_cells`` and ``on_cell_done``: a budget search's
    checkpoint, as ``budget_search`` takes them."""
    check_source(engine, config)
    shifts = source_bank_shifts if config.bank_shifts == -1 else config.bank_shifts
    if config.budget_kb is None:
        check_prototypes(labels, config.prototypes or 0, instead="use the source engine as it is")
        compact, validation, chosen = choose_and_build(engine, images, labels, config, seed=config.seed,
                                                       shifts=shifts, evaluator=evaluator)
        return compact, {"validation_accuracy": validation, "compact": {**chosen.compact_fields(),
                                                                        "bank_shifts": shifts}}
    splits = config.splits or (3 if len(labels) <= AUTO_SPLITS_MAX_TRAIN else 1)
    compact, best, trials = budget_search(
        engine, images, labels, budget_bytes=int(config.budget_kb * 1000), seed=config.seed, method=config.method,
        on_trial=on_trial, metrics=(config.metric,) if config.metric else COMPACT_METRICS, epochs=config.epochs,
        shifts=shifts, budget_macs=config.budget_macs, splits=splits, generations=config.generations,
        on_cell=on_cell, evaluator=evaluator, query_shifts=config.query_shifts, done_cells=done_cells,
        on_cell_done=on_cell_done)
    extra: dict[str, Any] = {"budget_bytes": int(config.budget_kb * 1000), "frontier": frontier(trials),
                             "validation_accuracy": best["validation_accuracy"],
                             "compact": {**best, "bank_shifts": shifts}, "trials": len(trials)}
    if config.budget_macs is not None:
        extra["budget_macs"] = config.budget_macs
    if splits > 1:
        extra["validation_splits"] = splits
    return compact, extra


def check_prototypes(labels: np.ndarray, prototypes: int, *, instead: str) -> None:
    """A bank of ``prototypes`` per class keeps all of a smaller class; at the largest class's size it keeps
    every image of every class, which condenses nothing: say so rather than build the full bank."""
    largest = int(np.bincount(labels).max())
    if prototypes >= largest:
        raise InputError(f"--prototypes {prototypes} keeps every image of every class (the largest has {largest} "
                         f"training images): give fewer per class, or {instead}")


def check_source(engine: Engine, config: CondenseConfig) -> None:
    """Fail before any work if ``config`` cannot condense ``engine``."""
    config.validate()
    engine.bank_head  # noqa: B018 -- a one-line error for an engine without a bank
    n_features = engine.spec.n_features(engine.image_size)
    if config.budget_kb is None and config.dims > n_features:
        raise InputError(f"--dims {config.dims}: this engine's features have {n_features} dimensions; give at most "
                         f"{n_features}, or 0 for all")
    if config.method == "joint" and not engine.spec.layers:
        raise InputError("--method joint tunes the trunk's last convolution, and this engine has none (preset "
                         "pixels): choose another --method")


def budget_grid_size(engine: Engine, config: CondenseConfig) -> int:
    """An upper bound of the trials a budget search makes (for a progress bar)."""
    n_features = engine.spec.n_features(engine.image_size)
    dims = [d for d in GRID_DIMS if d < n_features]
    windows = len(LVQ_WINDOWS) if config.method in ("lvq", "joint") else 1
    metrics = 1 if config.metric else len(COMPACT_METRICS)
    return len(GRID_PROTOTYPES) * len(dims) * windows * len(PRECISIONS) * len(GRID_NEIGHBORS) * metrics


SOURCE_KEYS = ("method", "dataset", "preset", "granularity", "random_init_test_accuracy", "evaluations", "n_train",
               "n_test", "seed")  # what a compact engine's metrics.json copies from its source run's


def compact_metrics(compact: Engine, dataset: Any, *, source: dict, extra: dict, source_run: str) -> dict:
    """A compact engine's metrics.json: the engine's own (``pipeline.engine_metrics``), its source run's
    search, how it was chosen (``extra``, from ``condense``) and what the full bank scored."""
    from .pipeline import engine_metrics

    return {**{key: source[key] for key in SOURCE_KEYS if key in source}, **extra,
            **engine_metrics(compact, dataset, kind="compact"),
            "full_bank_test_accuracy": source["test_accuracy"], "full_bank_engine_bytes": source["engine_bytes"],
            "condensed_from": source_run}
