"""The local-mean k-NN head (Mitani and Hamamoto 2006): the k nearest prototypes *of each class* are
averaged, and the query goes to the class whose local mean is nearest (Euclidean).

Unlike the majority vote it uses every class's nearest prototypes, not only those among the k
nearest overall, and their mean smooths out one atypical neighbour. Every class needs at least k
prototypes. Its scores are minus each class's local-mean distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..knn import class_slots, local_mean_scores, local_mean_vote, nearest_per_class
from .base import SCORE_CHUNK, TIE_TOLERANCE, BankHead

if TYPE_CHECKING:
    from ..engine import PostProcessing
    from ..graph import Graph
    from ..views import Views

FILLER_SCORE = 1e4  # added below a padded class slot's score in the graph: never among a class's k nearest


@dataclass(eq=False)
class LocalMeanHead(BankHead):
    kind: ClassVar[str] = "local-mean"
    METRICS: ClassVar[tuple[str, ...]] = ("euclidean", "sqeuclidean")
    METRICS_NAME: ClassVar[str] = "Euclidean"
    RULE: ClassVar[str] = "local mean"

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return local_mean_vote(features, self.bank, self.bank_labels, n_classes=self.n_classes,
                               n_neighbors=self.n_neighbors)

    def winners(self, neighbours: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        neighbours, classes = neighbours.cpu(), classes.cpu()  # an engine may compute on a GPU
        return neighbours[torch.arange(len(classes)), classes].numpy()  # the winning class's k nearest

    def check(self, class_names: tuple[str, ...]) -> None:
        super().check(class_names)
        if len(self.bank_labels):
            counts = torch.bincount(self.bank_labels, minlength=self.n_classes)
            if int(counts.min()) < self.n_neighbors:
                name = class_names[int(counts.argmin())]
                raise InputError(f"the local-mean vote needs k={self.n_neighbors} prototypes of every class; "
                                 f"class {name!r} has {int(counts.min())}: lower --n-neighbors or use --vote "
                                 "majority")

    def details(self, votes: np.ndarray, class_names: tuple[str, ...], views: Views
                ) -> tuple[str, str, list[dict[str, Any]]]:
        # Each class's local-mean distance (the mean over the views), nearest first.
        title = "local-mean distances" + (f" over {views.count} test-time views" if views.count > 1 else "")
        rows = [{class_names[c]: round(float(-row[c]) / views.count, 4) for c in np.argsort(-row, kind="stable")}
                for row in votes]
        return "local_mean_distance", title, rows

    def near_ties(self, features: torch.Tensor, views: Views, n_images: int) -> np.ndarray:
        """Per image: in some view the two nearest local means, or some class's k-th and (k+1)-th
        nearest prototypes, lie within ``TIE_TOLERANCE``; or the views' summed scores' two best do."""
        if self.n_neighbors >= len(self.bank) or n_images == 0:
            return np.zeros(n_images, dtype=bool)
        k = self.n_neighbors
        slots = class_slots(self.bank_labels, self.n_classes)
        wider = min(k + 1, slots.shape[1])  # one scan gives the k nearest and the (k+1)-th
        nearest, indices = nearest_per_class(features, self.bank, slots, k=wider)
        scores = local_mean_scores(features, self.bank, indices[..., :k])
        best = scores.topk(2, dim=-1).values
        tied = best[:, 0] - best[:, 1] <= TIE_TOLERANCE
        if wider > k:
            tied |= (nearest[..., k] - nearest[..., k - 1] <= TIE_TOLERANCE).any(-1)
        tied_images = tied.reshape(views.count, n_images).any(0).cpu().numpy()
        if views.count > 1:  # the summed scores' two best classes
            summed = views.combine(scores, n_images).topk(2, dim=-1).values.cpu().numpy()
            tied_images |= summed[:, 0] - summed[:, 1] <= TIE_TOLERANCE * views.count
        return tied_images

    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The bank regrouped by class for the graph: (slot -> bank index [C * width], padding pointing
        at prototype 0; the score offset of each slot [1, C * width], -FILLER_SCORE on padding; the first
        slot of each class [1, C, 1]), ``width`` the largest class."""
        slots = class_slots(self.bank_labels, self.n_classes).cpu().numpy()
        n_classes, width = slots.shape
        mask = np.where(slots.reshape(-1) < 0, -FILLER_SCORE, 0.0).astype(np.float32)[None]
        offsets = (np.arange(n_classes, dtype=np.int64) * width).reshape(1, n_classes, 1)
        return slots.clip(0).reshape(-1), mask, offsets

    def describe(self, g: Graph, features: str, post: PostProcessing, *, rows: int, single_view: bool,
                 storage: dict[str, str]) -> tuple[str, str | None]:
        """From the ranking scores 2 q.b - ||b||^2 [rows, B] and the bank constant 2 B^T: the scores
        regrouped by class ([rows, C, width], padding far below any prototype), one TopK takes each
        class's k nearest, and the local mean m = (sum of the k) / k enters only through
        ``||q - m||^2 = ||q||^2 - 2 q.m + ||m||^2``: 2 q.m from the k scores plus their ||b||^2, and
        ||m||^2 from the gathered bank columns. Votes are -||q - m|| per class, as the engine's."""
        scores, query, bank_t, norm2 = self.ranking_scores(g, features, post=post, storage=storage)
        k, n_classes = self.n_neighbors, self.n_classes
        slots, mask, offsets = self.layout()
        slot_index = g.constant("class_slots", slots)
        grouped = g.add(g.gather(scores, slot_index, axis=1, name="class_scores_flat"),
                        g.constant("class_slot_mask", mask), name="class_scores_masked")
        grouped = g.reshape(grouped, (rows, n_classes, -1), name="class_scores")
        nearest_scores, nearest_slots = g.topk(grouped, k, axis=2, name="nearest_scores")
        nearest = g.gather(slot_index, g.add(nearest_slots, g.constant("class_offsets", offsets),
                                             name="nearest_flat_slots"), axis=0, name="nearest")  # [rows, C, k]
        norms = g.gather(norm2, nearest, axis=0, name="nearest_norm2")
        two_dots = g.reduce_sum(g.add(nearest_scores, norms, name="nearest_two_dots"), axes=(2,), keepdims=False,
                                name="two_dots")  # 2 sum q.b, [rows, C]
        two_sums = g.reduce_sum(g.gather(bank_t, nearest, axis=1, name="nearest_columns"), axes=(3,),
                                keepdims=False, name="two_sums")  # 2 sum b, [D, rows, C]
        four_sq = g.reduce_sum(g.mul(two_sums, two_sums, name="two_sums_sq"), axes=(0,), keepdims=False,
                               name="four_sum_sq")  # 4 ||sum b||^2, [rows, C]
        q2 = g.reduce_sum(g.mul(query, query, name="query_sq"), axes=(1,), keepdims=True, name="query_norm2")
        dist2 = g.add(g.sub(q2, g.mul(two_dots, g.constant("inv_k", np.array(1.0 / k, np.float32)),
                                      name="two_q_dot_mean"), name="q2_minus"),
                      g.mul(four_sq, g.constant("inv_4k2", np.array(1.0 / (4 * k * k), np.float32)),
                            name="mean_norm2"), name="local_mean_dist2")
        safe = g.maximum(dist2, g.constant("zero", np.array(0.0, dtype=np.float32)), name="local_mean_dist2_safe")
        return g.neg(g.sqrt(safe, name="local_mean_dist"), name="votes"), None

    def population_scores(self, bank: torch.Tensor, queries: torch.Tensor, *, y_fit: torch.Tensor,
                          y_val: torch.Tensor, n_classes: int, leave_one_out: bool, soft_score: str,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's local-mean rule for every candidate, and as the smooth score the softmax over
        classes of -distance / temperature at the right class (``soft_score`` does not apply).

        The bank is regrouped by class and padded to the largest class once ([P, C * W, D], padding with
        an infinite norm), so each chunk's ranking scores 2 q.b - ||b||^2 come out grouped and one TopK
        takes every class's k nearest. The squared distance to their mean m is ||q||^2 - 2 q.m + ||m||^2:
        2 q.m from those k scores plus their ||b||^2, ||m||^2 from the regrouped bank's Gram matrix at
        the k x k pairs (no gathered feature vectors). Under leave-one-out the queries are the bank's own
        rows, so their q.b are rows of that same Gram matrix: no second matmul. A class with fewer than k
        candidates (leave-one-out takes the query's own image out) averages those it has.
        """
        slots = class_slots(y_fit, n_classes)  # [C, W]
        n_pop, (n_classes, width) = bank.shape[0], slots.shape
        k = min(self.n_neighbors, width)
        flat, padding = slots.flatten().clamp_min(0), slots.flatten() < 0
        grouped = bank[:, flat].masked_fill(padding.unsqueeze(-1), 0.0)  # [P, C W, D]
        norm2 = (grouped * grouped).sum(-1).masked_fill(padding, float("inf")).unsqueeze(-2)  # [P, 1, C W]
        on_gram = False  # rank on the Gram matrix's rows themselves
        if leave_one_out:  # the queries in slot order: (their slot, their row in the bank)
            gram = grouped @ grouped.transpose(-1, -2)  # [P, C W, C W]
            blocks = gram.view(n_pop, n_classes, width, n_classes, width).diagonal(dim1=1, dim2=3)
            blocks = blocks.permute(0, 3, 1, 2).clone()  # [P, C, W, W]: each class's own Gram block
            query_slot = torch.nonzero(~padding).flatten()
            query_row = flat[query_slot]
            contiguous = not bool(padding.any())  # then the queries' slots are 0 .. C W - 1
            # Unit-length features (the l2 post-processings) share ||b||^2 = 1, so q.b alone ranks them
            # like 2 q.b - ||b||^2: the chunks are then views of the Gram matrix, its diagonal (each
            # image against itself) set to -inf. The hot path of the local-mean search.
            on_gram = contiguous and bool(((norm2 - 1.0).abs() < 1e-5).all())
            if on_gram:
                gram.diagonal(dim1=-2, dim2=-1).fill_(-float("inf"))
        else:
            by_class = grouped.view(n_pop, n_classes, width, -1)
            blocks = by_class @ by_class.transpose(-1, -2)  # [P, C, W, W]
            query_row = torch.arange(len(y_val), device=y_val.device)
        # The pair values are gathered from the class's own block (small, cache-resident), not the whole Gram.
        blocks = blocks.reshape(n_pop, 1, n_classes, width * width)
        hits, soft = [], []
        per_chunk = max(1, SCORE_CHUNK // (n_pop * n_classes * width))
        for start in range(0, len(query_row), per_chunk):
            rows = query_row[start : start + per_chunk]
            n_query = len(rows)
            if leave_one_out:
                own = query_slot[start : start + per_chunk]
                q = grouped[:, own]
                if on_gram:
                    r = gram[:, start : start + n_query]  # q.b [P, q, C W], a view
                else:
                    r = torch.add(norm2.neg(), gram[:, start : start + n_query] if contiguous else gram[:, own],
                                  alpha=2.0)  # 2 q.b - ||b||^2 [P, q, C W]
                    r[:, torch.arange(n_query, device=r.device), own] = -float("inf")  # not its own neighbour
            else:
                q = queries[:, rows]
                r = torch.baddbmm(norm2, q, grouped.transpose(-1, -2), beta=-1.0, alpha=2.0)  # [P, q, C W]
            top, position = r.reshape(n_pop, n_query, n_classes, width).topk(k, dim=-1)  # [P, q, C, k]
            del r
            if on_gram:
                dots = top  # q.b of each class's k nearest
            else:
                norms = norm2.view(n_pop, 1, n_classes, width).expand(-1, n_query, -1, -1).gather(-1, position)
                dots = (top + norms) / 2
            pairs = (position.unsqueeze(-1) * width + position.unsqueeze(-2)).flatten(-2)  # [P, q, C, k k]
            pair_values = blocks.expand(-1, n_query, -1, -1).gather(-1, pairs).view(*top.shape, k)
            valid = torch.isfinite(top)
            if bool(valid.all()):  # every class has k candidates (the usual case): no masking
                dot_sum = dots.sum(-1)  # sum of q.b over each class's k
                sum_norm2 = pair_values.sum((-1, -2))  # ||sum of b||^2
                count = torch.full_like(dot_sum, float(k))
            else:
                dot_sum = torch.where(valid, dots, 0.0).sum(-1)
                both = valid.unsqueeze(-1) & valid.unsqueeze(-2)
                sum_norm2 = torch.where(both, pair_values, 0.0).sum((-1, -2))
                count = valid.sum(-1)
            query_norm2 = (q * q).sum(-1, keepdim=True)
            squared = (query_norm2 - 2 * dot_sum / count + sum_norm2 / count**2).clamp_min(0.0)
            distance = torch.where(count > 0, squared.sqrt(), float("inf")).double()  # [P, q, C]
            truth = y_val[rows]
            hits.append((-distance).argmax(-1) == truth)
            chance = torch.softmax(-distance / temperature, -1)
            soft.append(chance.gather(-1, truth.expand(n_pop, -1).unsqueeze(-1)).squeeze(-1))
        hit, chance = torch.cat(hits, -1), torch.cat(soft, -1)
        if leave_one_out:  # back to the queries' own order
            hit = torch.empty_like(hit).index_copy_(-1, query_row, hit)
            chance = torch.empty_like(chance).index_copy_(-1, query_row, chance)
        return hit, chance
