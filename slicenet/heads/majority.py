"""The reference's k-NN head: the majority vote of the k nearest prototypes.

Votes are uniform, ties between classes go to the smallest class index, and the neighbours are the k
smallest distances: the rules of scikit-learn's ``KNeighborsClassifier``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from ..knn import count_votes, knn_vote, pairwise_distances
from .base import SCORE_CHUNK, TIE_TOLERANCE, BankHead

if TYPE_CHECKING:
    from ..engine import PostProcessing
    from ..graph import Graph
    from ..views import Views


def _distances(values: torch.Tensor, metric: str, query_norm2: torch.Tensor | None) -> torch.Tensor:
    """Distances from the values the fitness ranks by: negated distances, or (``query_norm2`` given)
    the euclidean ranking score 2 q.b - ||b||^2."""
    if query_norm2 is None:
        return -values
    squared = (query_norm2 - values).clamp_min(0.0)
    return squared.sqrt() if metric == "euclidean" else squared


@dataclass(eq=False)
class MajorityHead(BankHead):
    kind: ClassVar[str] = "majority"

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        votes, _, indices = knn_vote(features, self.bank, self.bank_labels, n_classes=self.n_classes,
                                     n_neighbors=self.n_neighbors, metric=self.metric)
        return votes, indices

    def near_ties(self, features: torch.Tensor, views: Views, n_images: int) -> np.ndarray:
        """The k-th and (k+1)-th nearest prototypes lie within ``TIE_TOLERANCE`` of each other (on
        L2-normalised features distances are at most 2), in any view: a runtime that sums in another
        order may pick either."""
        if self.n_neighbors >= len(self.bank) or n_images == 0:
            return np.zeros(n_images, dtype=bool)
        _, nearest, _ = knn_vote(features, self.bank, self.bank_labels, n_classes=self.n_classes,
                                 n_neighbors=self.n_neighbors + 1, metric=self.metric)
        tied = nearest[:, -1] - nearest[:, -2] <= TIE_TOLERANCE
        return tied.reshape(views.count, n_images).any(0).cpu().numpy()

    def describe(self, g: Graph, features: str, post: PostProcessing, *, rows: int, single_view: bool,
                 storage: dict[str, str]) -> tuple[str, str | None]:
        scores, _, _, _ = self.ranking_scores(g, features, post=post, storage=storage)
        one_hot = g.constant("bank_onehot", np.eye(self.n_classes, dtype=np.float32)[self.bank_labels.numpy()])
        if self.n_neighbors == 1 and single_view:
            # 1-NN: the nearest prototype's one-hot row is the vote and its label the class (three
            # operations where TopK, Gather, ReduceSum and ArgMax would take four).
            nearest = g.argmax(scores, axis=1, name="nearest")
            labels = g.constant("bank_labels", self.bank_labels.numpy().astype(np.int64))
            return (g.gather(one_hot, nearest, axis=0, name="votes"),
                    g.gather(labels, nearest, axis=0, name="class"))
        _, nearest = g.topk(scores, self.n_neighbors, axis=1, name="nearest")
        gathered = g.gather(one_hot, nearest, axis=0, name="neighbour_labels")
        return g.reduce_sum(gathered, axes=(1,), keepdims=False, name="votes"), None

    def population_scores(self, bank: torch.Tensor, queries: torch.Tensor, *, y_fit: torch.Tensor,
                          y_val: torch.Tensor, n_classes: int, leave_one_out: bool, soft_score: str,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The majority vote of each query's k nearest, and as the smooth score either the softmax
        over those k distances that falls on the right class ("knn") or, over the whole bank, NCA's
        probability of picking a same-class image (Goldberger et al. 2004)."""
        same_class = (y_val.unsqueeze(-1) == y_fit).double()  # [Q, B]
        hits, soft = [], []
        per_chunk = max(1, SCORE_CHUNK // (bank.shape[0] * len(y_fit)))
        ranked = self.metric in ("euclidean", "sqeuclidean")
        if ranked:
            bank_norm2 = (bank * bank).sum(-1).unsqueeze(-2)  # [P, 1, B]
        for start in range(0, len(y_val), per_chunk):
            rows = slice(start, start + per_chunk)
            q = queries[:, rows]
            if ranked:
                # Euclidean neighbours by the ranking score 2 q.b - ||b||^2 = ||q||^2 - ||q - b||^2 (one
                # fused batched matmul, larger is nearer); distances are recovered for the k neighbours
                # only. The hot path of the search: about twice as fast as full distance matrices.
                r = torch.baddbmm(bank_norm2, q, bank.transpose(-1, -2), beta=-1.0, alpha=2.0)  # [P, q, B]
            else:
                r = pairwise_distances(q, bank, self.metric).neg_()
            if leave_one_out:  # an image is not its own neighbour
                own = torch.arange(rows.start, min(rows.stop, len(y_val)), device=r.device)
                r[:, own - rows.start, own] = -float("inf")
            top, idx = r.topk(self.n_neighbors, dim=-1)
            labels = y_fit[idx]
            hits.append(count_votes(labels, n_classes).argmax(-1) == y_val[rows])
            query_norm2 = (q * q).sum(-1, keepdim=True) if ranked else None
            if soft_score == "nca":
                logits = -_distances(r, self.metric, query_norm2).double() / temperature
                soft.append((torch.logsumexp(logits + torch.log(same_class[rows]), -1)
                             - torch.logsumexp(logits, -1)).exp())
            else:
                neighbour = _distances(top, self.metric, query_norm2).double()
                weights = torch.softmax(-neighbour / temperature, dim=-1)
                soft.append((weights * (labels == y_val[rows].unsqueeze(-1))).sum(-1))
        return torch.cat(hits, -1), torch.cat(soft, -1)
