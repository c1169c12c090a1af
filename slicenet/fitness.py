"""The fitness of a population of candidate kernels: k-NN quality on the validation split.

For every candidate p the trunk (with p's kernels in the layer under search) maps the fit images
to a bank and the validation images to queries; the k-NN head votes, and

    fitness_p = -(accuracy_p + soft_weight * soft_p)            (minimised)

``accuracy`` is the validation accuracy, the quantity we care about. On 1,000 validation images it
moves in steps of 0.1 %, so most candidates of a generation tie and the optimiser's ranking would be
noise. ``soft`` breaks those ties smoothly: for each query, the softmax-weighted share of its k
neighbours that carry the right label (weights ``exp(-distance / temperature)``, a k-NN version of
the NCA objective, Goldberger et al. 2004). It rises as the right neighbours move closer and the
wrong ones away, before any vote flips, so it points the search at the next accuracy step.

With ``vote="local-mean"`` the head scored is the engine's local-mean rule (``knn.local_mean_vote``)
and ``soft`` the softmax over classes of minus the local-mean distances, taken at the right class.

The whole population is one batch: one (grouped) convolution per layer, one batched distance
computation. ``fitness_one_by_one`` is the slow reference the tests compare it against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .knn import count_votes, pairwise_distances, postprocess
from .trunk import TrunkSpec, Weights, layer_forward, population_features

# float32 elements of intermediate activations per chunk (32 MiB): the population's activations then
# stay in a CPU's last-level cache between the convolution, the pooling and the next layer. Measured
# on the 2-core EPYC (32 MiB L3), lenet preset, 1,000 images: 2.5-3x faster than 512 MiB chunks on
# layer 1 (40 candidates), 2x on layer 2 (56 candidates); larger chunks fall out of the cache.
ACTIVATION_BUDGET = 2**23
SCORE_CHUNK = 2**25  # score entries (candidates x queries x bank) per chunk of the distance computation


def stratified_split(labels: np.ndarray, fraction: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, validation indices): ``fraction`` of every class goes to validation."""
    fit, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, int(round(fraction * len(members))))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


@dataclass(frozen=True)
class Problem:
    """The validation task a search scores candidates on (test images are never part of it).

    The training images are split into a bank (fit) and queries (validation). With ``resample`` the
    split is carved afresh, stratified, for every generation (Monte-Carlo cross-validation): a
    fixed split of 1,000 images is overfitted by a search that tries thousands of candidates on it,
    while a moving one only rewards kernels that generalise across the whole training set.
    """

    spec: TrunkSpec
    x_train: torch.Tensor  # normalised training images [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    n_classes: int
    validation_fraction: float = 0.25
    resample: bool = True  # a new validation split every generation
    search_images: int = 0  # training images scored per generation (a stratified subset); 0 = all
    seed: int = 0
    n_neighbors: int = 9
    metric: str = "euclidean"
    postprocessing: str = "centre_l2"
    soft_weight: float = 1.0  # weight of the smooth tie-breaker against accuracy
    soft_score: str = "knn"  # "knn": softmax over the k neighbours; "nca": over the whole bank
    temperature: float = 0.05  # softmax temperature over neighbour distances
    leave_one_out: bool = False  # every scored image is a query against all the others
    vote: str = "majority"  # the head scored: majority of the k nearest, or local-mean (as the engine's)

    def split(self, key: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """The (fit, validation) indices for generation ``key``; ``key=()`` gives the run's fixed split
        of the whole training set (used for the reported validation accuracy).

        With ``search_images`` set, both come from a fresh stratified subset of that many images:
        a cheaper, noisier score, which buys the optimiser more generations in the same time.
        """
        rng = np.random.default_rng([self.seed, *(key if self.resample else ())])
        labels = self.y_train.numpy()
        pool = np.arange(len(labels))
        if key and self.resample and 0 < self.search_images < len(labels):
            _, pool = stratified_split(labels, self.search_images / len(labels), rng)
        fit, val = stratified_split(labels[pool], self.validation_fraction, rng)
        return torch.from_numpy(pool[fit]), torch.from_numpy(pool[val])


@dataclass(frozen=True)
class Scores:
    fitness: np.ndarray  # [P], minimised
    accuracy: np.ndarray  # [P], validation accuracy in [0, 1]
    soft: np.ndarray  # [P], smooth score in [0, 1]


def _distances(values: torch.Tensor, metric: str, query_norm2: torch.Tensor | None) -> torch.Tensor:
    """Distances from the values ``score_features`` ranks by: negated distances, or (``query_norm2``
    given) the euclidean ranking score 2 q.b - ||b||^2."""
    if query_norm2 is None:
        return -values
    squared = (query_norm2 - values).clamp_min(0.0)
    return squared.sqrt() if metric == "euclidean" else squared


def score_features(problem: Problem, features: torch.Tensor, y_fit: torch.Tensor, y_val: torch.Tensor
                   ) -> Scores:
    """Scores of P candidates from their features [P, N_fit + N_val, D], the fit rows first.

    With ``problem.leave_one_out`` the features are [P, N, D], ``y_fit`` and ``y_val`` the same N
    labels, and each image is a query against the N - 1 others.
    """
    if problem.leave_one_out:
        bank = queries = features
    else:
        bank, queries = features[:, : len(y_fit)], features[:, len(y_fit) :]
    mean = bank.mean(1, keepdim=True)
    bank = postprocess(bank, mean, problem.postprocessing)
    queries = postprocess(queries, mean, problem.postprocessing)
    if problem.vote == "local-mean":
        hit, chance = _local_mean_scores(problem, bank, queries, y_fit, y_val)
        accuracy, soft_mean = hit.double().mean(-1), chance.mean(-1)
        return Scores((-(accuracy + problem.soft_weight * soft_mean)).numpy(), accuracy.numpy(), soft_mean.numpy())
    same_class = (y_val.unsqueeze(-1) == y_fit).double()  # [Q, B]
    hits, soft = [], []
    per_chunk = max(1, SCORE_CHUNK // (features.shape[0] * len(y_fit)))
    ranked = problem.metric in ("euclidean", "sqeuclidean")
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
            r = pairwise_distances(q, bank, problem.metric).neg_()
        if problem.leave_one_out:  # an image is not its own neighbour
            own = torch.arange(rows.start, min(rows.stop, len(y_val)))
            r[:, own - rows.start, own] = -float("inf")
        top, idx = r.topk(problem.n_neighbors, dim=-1)
        labels = y_fit[idx]
        hits.append(count_votes(labels, problem.n_classes).argmax(-1) == y_val[rows])
        query_norm2 = (q * q).sum(-1, keepdim=True) if ranked else None
        if problem.soft_score == "nca":
            # NCA (Goldberger et al. 2004): probability that a softmax over the whole bank picks a
            # same-class image; unlike the top-k form it also pulls in same-class images that are
            # not yet among the k nearest.
            logits = -_distances(r, problem.metric, query_norm2).double() / problem.temperature
            soft.append((torch.logsumexp(logits + torch.log(same_class[rows]), -1)
                         - torch.logsumexp(logits, -1)).exp())
        else:
            neighbour = _distances(top, problem.metric, query_norm2).double()
            weights = torch.softmax(-neighbour / problem.temperature, dim=-1)
            soft.append((weights * (labels == y_val[rows].unsqueeze(-1))).sum(-1))
    accuracy = torch.cat(hits, -1).double().mean(-1)
    soft_mean = torch.cat(soft, -1).mean(-1)
    fitness = -(accuracy + problem.soft_weight * soft_mean)
    return Scores(fitness.numpy(), accuracy.numpy(), soft_mean.numpy())


def _local_mean_scores(problem: Problem, bank: torch.Tensor, queries: torch.Tensor, y_fit: torch.Tensor,
                       y_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hits [P, Q], soft [P, Q]) of the local-mean head (``knn.local_mean_vote``) for post-processed
    ``bank`` [P, B, D] and ``queries`` [P, Q, D] (the same rows under leave-one-out).

    The bank is regrouped by class and padded to the largest class once ([P, C * W, D], padding with
    an infinite norm), so each chunk's ranking scores 2 q.b - ||b||^2 come out grouped and one TopK
    takes every class's k nearest. The squared distance to their mean m is ||q||^2 - 2 q.m + ||m||^2:
    2 q.m from those k scores plus their ||b||^2, ||m||^2 from the regrouped bank's Gram matrix at
    the k x k pairs (no gathered feature vectors). Under leave-one-out the queries are the bank's own
    rows, so their q.b are rows of that same Gram matrix: no second matmul. A class with fewer than k
    candidates (leave-one-out takes the query's own image out) averages those it has. ``soft`` is the
    softmax over classes of -distance / temperature, at the right class.
    """
    from .knn import class_slots

    if problem.metric not in ("euclidean", "sqeuclidean"):
        raise ValueError("the local-mean vote is Euclidean")
    slots = class_slots(y_fit, problem.n_classes)  # [C, W]
    n_pop, (n_classes, width) = bank.shape[0], slots.shape
    k = min(problem.n_neighbors, width)
    flat, padding = slots.flatten().clamp_min(0), slots.flatten() < 0
    grouped = bank[:, flat].masked_fill(padding.unsqueeze(-1), 0.0)  # [P, C W, D]
    norm2 = (grouped * grouped).sum(-1).masked_fill(padding, float("inf")).unsqueeze(-2)  # [P, 1, C W]
    on_gram = False  # rank on the Gram matrix's rows themselves
    if problem.leave_one_out:  # the queries in slot order: (their slot, their row in the bank)
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
        query_row = torch.arange(len(y_val))
    # The pair values are gathered from the class's own block (small, cache-resident), not the whole Gram.
    blocks = blocks.reshape(n_pop, 1, n_classes, width * width)
    hits, soft = [], []
    per_chunk = max(1, SCORE_CHUNK // (n_pop * n_classes * width))
    for start in range(0, len(query_row), per_chunk):
        rows = query_row[start : start + per_chunk]
        n_query = len(rows)
        if problem.leave_one_out:
            own = query_slot[start : start + per_chunk]
            q = grouped[:, own]
            if on_gram:
                r = gram[:, start : start + n_query]  # q.b [P, q, C W], a view
            else:
                r = torch.add(norm2.neg(), gram[:, start : start + n_query] if contiguous else gram[:, own],
                              alpha=2.0)  # 2 q.b - ||b||^2 [P, q, C W]
                r[:, torch.arange(n_query), own] = -float("inf")  # an image is not its own neighbour
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
        chance = torch.softmax(-distance / problem.temperature, -1)
        soft.append(chance.gather(-1, truth.expand(n_pop, -1).unsqueeze(-1)).squeeze(-1))
    hit, chance = torch.cat(hits, -1), torch.cat(soft, -1)
    if problem.leave_one_out:  # back to the queries' own order
        hit = torch.empty_like(hit).index_copy_(-1, query_row, hit)
        chance = torch.empty_like(chance).index_copy_(-1, query_row, chance)
    return hit, chance


def scored_rows(problem: Problem, split: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the training rows to run through the trunk, bank rows, query rows) of a split: the bank
    rows first then the queries, or with leave-one-out the whole subset as both."""
    fit, val = split or problem.split()
    if problem.leave_one_out:
        both = torch.cat([fit, val]).sort().values
        return both, both, both
    return torch.cat([fit, val]), fit, val


def _chunk_size(spec: TrunkSpec, x: torch.Tensor, index: int, size: int) -> int:
    """Images per chunk so that the population's largest activation stays within the budget."""
    channels, height, width = x.shape[1:]
    rest = TrunkSpec(spec.layers[index:], channels)  # the layers from ``index`` on, fed x
    largest = max([1] + [layer.out_channels * h * w
                         for layer, (h, w) in zip(rest.layers, rest.conv_sizes((height, width)), strict=True)])
    return max(1, ACTIVATION_BUDGET // (2 * size * largest))


@torch.no_grad()
def population_fitness(problem: Problem, layer_input: torch.Tensor, weights: Weights, index: int,
                       population: np.ndarray, filter_index: int | None = None,
                       split: tuple[torch.Tensor, torch.Tensor] | None = None) -> Scores:
    """Score P candidates for layer ``index`` (or one filter of it) in one batch.

    ``layer_input`` is the input of layer ``index`` for the training images, i.e.
    ``problem.x_train`` through the frozen layers before it (cached by the search).
    """
    candidates = torch.as_tensor(population, dtype=torch.float32)
    rows, fit, val = scored_rows(problem, split)
    chunk = _chunk_size(problem.spec, layer_input, index, len(candidates))
    parts = []
    for x in layer_input[rows].split(chunk):
        held = None
        if filter_index is not None:
            held = layer_forward(x, *weights[index], problem.spec.layers[index])
        parts.append(population_features(x, problem.spec, weights, index, candidates, filter_index, held))
    return score_features(problem, torch.cat(parts, dim=1), problem.y_train[fit], problem.y_train[val])


def fitness_one_by_one(problem: Problem, weights: Weights, index: int, population: np.ndarray,
                       filter_index: int | None = None,
                       split: tuple[torch.Tensor, torch.Tensor] | None = None) -> Scores:
    """Reference implementation: each candidate built as a whole trunk and run on its own."""
    from .trunk import features, unflatten_layer

    index_rows, fit, val = scored_rows(problem, split)
    rows = []
    for candidate in population:
        trial = [(w.clone(), b.clone()) for w, b in weights]
        if filter_index is None:
            trial[index] = unflatten_layer(candidate, problem.spec, index)
        else:
            kernel = trial[index][0][filter_index]
            kernel.copy_(torch.as_tensor(candidate[:-1], dtype=torch.float32).reshape(kernel.shape))
            trial[index][1][filter_index] = float(candidate[-1])
        rows.append(features(problem.x_train, problem.spec, trial)[index_rows])
    return score_features(problem, torch.stack(rows), problem.y_train[fit], problem.y_train[val])
