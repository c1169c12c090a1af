"""The k-NN head: batched torch distances, and a scikit-learn compatible classifier.

``knn_vote`` is the core used by the search (over a whole population at once) and by the engine;
``KNNClassifier`` wraps it in the estimator API so it slots into ``Pipeline`` and
``cross_val_score``. Votes are uniform, ties between classes go to the smallest class index, and
the neighbours are the k smallest distances: the same rules as ``KNeighborsClassifier``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

METRICS = ("euclidean", "sqeuclidean", "cosine", "manhattan")
VOTES = ("majority", "local-mean")  # how the k nearest prototypes decide the class
POSTPROCESSING = ("centre_l2", "l2", "none")


def pairwise_distances(queries: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances [..., Q, B] between queries [..., Q, D] and bank [..., B, D] (leading dims batch)."""
    if metric in ("euclidean", "sqeuclidean"):
        # ||q||^2 - 2 q.b + ||b||^2: one matmul, the same form the exported graph uses.
        squared = ((queries * queries).sum(-1, keepdim=True) - 2.0 * queries @ bank.transpose(-1, -2)
                   + (bank * bank).sum(-1).unsqueeze(-2)).clamp_min_(0.0)
        return squared.sqrt_() if metric == "euclidean" else squared
    if metric == "cosine":
        q = torch.nn.functional.normalize(queries, dim=-1)
        b = torch.nn.functional.normalize(bank, dim=-1)
        return 1.0 - q @ b.transpose(-1, -2)
    if metric == "manhattan":
        return torch.cdist(queries, bank, p=1.0)
    raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")


def count_votes(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Votes [..., n_classes] (int64) from neighbour labels [..., k]: one vote per neighbour."""
    return torch.zeros(*labels.shape[:-1], n_classes, dtype=torch.int64, device=labels.device).scatter_add_(
        -1, labels, torch.ones_like(labels))


def knn_vote(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *, n_classes: int,
             n_neighbors: int, metric: str = "euclidean", chunk_elements: int = 2**25
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k nearest neighbours and their votes, chunked over queries to bound memory.

    Returns (votes [..., Q, n_classes] int64, neighbour distances [..., Q, k], neighbour indices).
    """
    batch = int(np.prod(queries.shape[:-2])) if queries.dim() > 2 else 1
    per_chunk = max(1, chunk_elements // max(1, batch * bank.shape[-2]))
    votes, distances, indices = [], [], []
    for chunk in queries.split(per_chunk, dim=-2):
        d = pairwise_distances(chunk, bank, metric)
        # topk of the negated distance: the k nearest (the same trick the exported graph needs).
        neg, idx = (-d).topk(n_neighbors, dim=-1)
        votes.append(count_votes(bank_labels[idx], n_classes))
        distances.append(-neg)
        indices.append(idx)
    return torch.cat(votes, -2), torch.cat(distances, -2), torch.cat(indices, -2)


def class_slots(bank_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Bank indices grouped by class [n_classes, largest class], in bank order, padded with -1."""
    counts = torch.bincount(bank_labels, minlength=n_classes)
    slots = torch.full((n_classes, int(counts.max())), -1, dtype=torch.int64, device=bank_labels.device)
    for label in range(n_classes):
        members = torch.nonzero(bank_labels == label).flatten()
        slots[label, : len(members)] = members
    return slots


def nearest_per_class(queries: torch.Tensor, bank: torch.Tensor, slots: torch.Tensor, *, k: int,
                      chunk_elements: int = 2**25) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's k nearest prototypes (Euclidean) for queries [Q, D], given ``class_slots``: (their
    distances [Q, C, k], nearest first, inf where a class has fewer; their bank indices [Q, C, k]).

    The bank is regrouped by class once ([C * W, D], padded rows ranked last), so each chunk's ranking
    scores 2 q.b - ||b||^2 (larger is nearer; the exported graph's form) come out grouped by class and
    one TopK takes every class's k nearest: one matmul per chunk, no gather of a [q, B] matrix.
    """
    flat, padding = slots.flatten().clamp_min(0), slots.flatten() < 0
    grouped = bank[flat]
    neg_norm2 = (grouped * grouped).sum(-1).neg_().masked_fill_(padding, -float("inf"))
    per_chunk = max(1, chunk_elements // len(flat))
    distances, indices = [], []
    for chunk in queries.split(per_chunk):
        ranking = torch.addmm(neg_norm2, chunk, grouped.T, alpha=2.0)  # [q, C W]
        top, position = ranking.view(len(chunk), len(slots), -1).topk(k, dim=-1)
        del ranking
        squared = (chunk * chunk).sum(-1)[:, None, None] - top  # ||q - b||^2; +inf on padding
        distances.append(squared.clamp_min_(0.0).sqrt_())
        indices.append(slots.expand(len(chunk), -1, -1).gather(-1, position))
    return torch.cat(distances), torch.cat(indices)


def local_mean_scores(queries: torch.Tensor, bank: torch.Tensor, indices: torch.Tensor, *,
                      chunk_elements: int = 2**25) -> torch.Tensor:
    """Minus the distance [Q, C] from each query [Q, D] to the mean of its chosen prototypes per class
    (``indices`` [Q, C, k] into the bank), in chunks that bound the gathered [q, C, k, D] vectors."""
    per_chunk = max(1, chunk_elements // max(1, indices[0].numel() * bank.shape[1]))
    return torch.cat([-(chunk.unsqueeze(1) - bank[idx].mean(-2)).norm(dim=-1)
                      for chunk, idx in zip(queries.split(per_chunk), indices.split(per_chunk), strict=True)])


def local_mean_vote(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *, n_classes: int,
                    n_neighbors: int, chunk_elements: int = 2**25) -> tuple[torch.Tensor, torch.Tensor]:
    """The local-mean rule (Mitani and Hamamoto 2006): the k nearest prototypes *of each class* are
    averaged, and the query goes to the class whose local mean is nearest (Euclidean).

    Unlike the majority vote it uses every class's nearest prototypes, not just those among the k
    nearest overall, and their mean smooths out a single atypical neighbour. Every class needs at
    least k prototypes. Returns (scores [Q, n_classes]: minus the distance to each class's local
    mean, so the largest wins, ties to the smallest class index; neighbour indices [Q, n_classes, k]).
    """
    slots = class_slots(bank_labels, n_classes)
    if int((slots >= 0).sum(1).min()) < n_neighbors:
        raise ValueError(f"the local-mean vote needs at least k={n_neighbors} prototypes of every class")
    _, indices = nearest_per_class(queries, bank, slots, k=n_neighbors, chunk_elements=chunk_elements)
    return local_mean_scores(queries, bank, indices, chunk_elements=chunk_elements), indices


def postprocess(features: torch.Tensor, mean: torch.Tensor | None, method: str) -> torch.Tensor:
    """Feature post-processing that belongs to the engine (and so to its export).

    ``centre_l2`` subtracts the bank's mean feature, then scales to unit length: ReLU features all
    share a large positive component, and removing it makes Euclidean neighbours follow the
    direction of the activation pattern rather than its overall strength.
    """
    if method == "none":
        return features
    if method == "centre_l2":
        assert mean is not None
        features = features - mean
    elif method != "l2":
        raise ValueError(f"unknown post-processing {method!r}: expected one of {', '.join(POSTPROCESSING)}")
    return torch.nn.functional.normalize(features, dim=-1)


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour classifier with torch distances, computed in batches.

    Follows scikit-learn's developer guide: ``__init__`` only stores the parameters, ``fit`` validates
    its input and returns ``self``, learned attributes end in ``_``, and errors say how to fix the
    input. So it slots into ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``.

    Parameters: ``n_neighbors`` (k); ``metric`` (one of ``METRICS``); ``vote``: ``"majority"`` (of the k
    nearest, ties to the smallest class, as ``KNeighborsClassifier``) or ``"local-mean"`` (Mitani and
    Hamamoto 2006: the class whose k nearest prototypes have the nearest mean; Euclidean; every class
    needs k training samples); ``temperature``: local-mean's ``predict_proba`` is the softmax over
    classes of minus the local-mean distances divided by it; ``batch_elements``: how many distance
    entries a batch may hold (a memory bound, not a result changer).
    Learned attributes: ``classes_``, ``n_features_in_``, ``bank_``, ``bank_labels_``.
    """

    def __init__(self, n_neighbors: int = 9, metric: str = "euclidean", vote: str = "majority",
                 temperature: float = 0.05, batch_elements: int = 2**25):
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.vote = vote
        self.temperature = temperature
        self.batch_elements = batch_elements

    def fit(self, X, y) -> KNNClassifier:  # noqa: N803 (scikit-learn's argument names)
        from sklearn.utils.validation import validate_data

        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is not supported; use one of {', '.join(METRICS)}")
        if self.vote not in VOTES:
            raise ValueError(f"vote={self.vote!r} is not supported; use one of {', '.join(VOTES)}")
        if self.vote == "local-mean" and self.metric not in ("euclidean", "sqeuclidean"):
            raise ValueError(f"vote='local-mean' is Euclidean; use metric='euclidean', not {self.metric!r}")
        if not 1 <= self.n_neighbors <= len(X):
            raise ValueError(f"n_neighbors={self.n_neighbors} must be between 1 and n_samples = {len(X)}; "
                             "use a smaller n_neighbors")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if self.vote == "local-mean":
            smallest = int(np.bincount(encoded).min())
            if smallest < self.n_neighbors:
                raise ValueError(f"vote='local-mean' needs n_neighbors={self.n_neighbors} samples of every class; "
                                 f"the smallest class has {smallest}: lower n_neighbors")
        self.bank_ = torch.from_numpy(np.ascontiguousarray(X))
        self.bank_labels_ = torch.from_numpy(encoded.astype(np.int64))
        return self

    def _queries(self, X) -> torch.Tensor:  # noqa: N803
        from sklearn.utils.validation import validate_data

        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return torch.from_numpy(np.ascontiguousarray(X))

    def _votes(self, X) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: N803
        return knn_vote(self._queries(X), self.bank_, self.bank_labels_, n_classes=len(self.classes_),
                        n_neighbors=self.n_neighbors, metric=self.metric, chunk_elements=self.batch_elements)

    def _scores(self, X) -> torch.Tensor:  # noqa: N803
        """[Q, n_classes], larger is likelier: votes, or minus the local-mean distances."""
        if self.vote == "local-mean":
            return local_mean_vote(self._queries(X), self.bank_, self.bank_labels_, n_classes=len(self.classes_),
                                   n_neighbors=self.n_neighbors, chunk_elements=self.batch_elements)[0]
        return self._votes(X)[0].double()

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        _, distances, indices = self._votes(X)
        return distances.numpy(), indices.numpy()

    def predict_proba(self, X) -> np.ndarray:  # noqa: N803
        scores = self._scores(X)
        if self.vote == "local-mean":
            return torch.softmax(scores.double() / self.temperature, -1).numpy()
        return scores.numpy() / self.n_neighbors

    def predict(self, X) -> np.ndarray:  # noqa: N803
        best = self._scores(X).argmax(-1).numpy()  # checks that it is fitted first
        return self.classes_[best]
