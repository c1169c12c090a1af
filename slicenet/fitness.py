"""The fitness of a population of candidate kernels: k-NN quality on the training data.

For every candidate p the trunk (with p's kernels in the block under search) maps the scored images
to features; the head the search scores with (``Problem.head``, a k-NN vote) classifies each scored
image against the others, and

    fitness_p = -(accuracy_p + soft_weight * soft_p)            (minimised)

``accuracy`` is the k-NN accuracy, the quantity we care about. On 1,000 images it moves in steps of
0.1 %, so most candidates of a generation tie and the optimiser's ranking would be noise. ``soft``
breaks those ties smoothly (each head defines its own: for the majority vote the softmax-weighted
share of the k neighbours that carry the right label, a k-NN version of NCA, Goldberger et al. 2004;
for the local-mean vote the softmax over classes of minus the local-mean distances). It rises as the
right neighbours move closer and the wrong ones away, before any vote flips, so it points the search
at the next accuracy step.

The whole population is one batch: one (grouped) convolution per layer, one batched distance
computation (``evaluators.TorchEvaluator`` runs it). ``fitness_one_by_one`` is the slow reference
the tests compare it against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from .heads import BankHead, MajorityHead
from .knn import postprocess
from .trunk import Block, LayerInput, TrunkSpec, Weights, layer_forward, length, population_features, sum_of, take

# float32 elements of intermediate activations per chunk (32 MiB): the population's activations then
# stay in a CPU's last-level cache between the convolution, the pooling and the next layer. Measured
# on the 2-core EPYC (32 MiB L3), lenet preset, 1,000 images: 2.5-3x faster than 512 MiB chunks on
# layer 1 (40 candidates), 2x on layer 2 (56 candidates); larger chunks fall out of the cache.
ACTIVATION_BUDGET = 2**23

Split = tuple[torch.Tensor, torch.Tensor]


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
class Scores:
    fitness: np.ndarray  # [P], minimised
    accuracy: np.ndarray  # [P], k-NN accuracy on the scored images, in [0, 1]
    soft: np.ndarray  # [P], smooth score in [0, 1]

    @classmethod
    def of(cls, fitness: torch.Tensor, accuracy: torch.Tensor, soft: torch.Tensor) -> Scores:
        """The scores of tensors computed on any device: what leaves an evaluator is on the CPU, as numpy."""
        return cls(fitness.cpu().numpy(), accuracy.cpu().numpy(), soft.cpu().numpy())

    @classmethod
    def concat(cls, parts: list[Scores]) -> Scores:
        """The scores of consecutive shards of one population, in order."""
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("fitness", "accuracy", "soft")))


@dataclass(frozen=True)
class Problem:
    """The task a search scores candidates on (test images are never part of it).

    The training images are split into a bank (fit) and queries (validation). With ``resample`` the
    split is carved afresh, stratified, for every generation (Monte-Carlo cross-validation): a
    fixed split of 1,000 images is overfitted by a search that tries thousands of candidates on it,
    while a moving one only rewards kernels that generalise across the whole training set.
    """

    spec: TrunkSpec
    x_train: torch.Tensor  # normalised training images [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    n_classes: int
    head: BankHead = field(default_factory=MajorityHead)  # the vote scored (its k and metric; no bank)
    postprocessing: str = "centre_l2"
    validation_fraction: float = 0.25
    resample: bool = True  # a new validation split every generation
    search_images: int = 0  # training images scored per generation (a stratified subset); 0 = all
    seed: int = 0
    soft_weight: float = 1.0  # weight of the smooth tie-breaker against accuracy
    soft_score: str = "knn"  # majority head: "knn" (softmax over the k neighbours) or "nca" (the whole bank)
    temperature: float = 0.05  # softmax temperature over neighbour distances
    leave_one_out: bool = False  # every scored image is a query against all the others

    def split(self, key: tuple[int, ...] = ()) -> Split:
        """The (fit, validation) indices for generation ``key``; ``key=()`` gives the run's fixed split
        of the whole training set (used for the reported validation accuracy).

        With ``search_images`` set, both come from a fresh stratified subset of that many images:
        a cheaper, noisier score, which buys the optimiser more generations in the same time.
        """
        rng = np.random.default_rng([self.seed, *(key if self.resample else ())])
        labels = self.y_train.cpu().numpy()
        pool = np.arange(len(labels))
        if key and self.resample and 0 < self.search_images < len(labels):
            _, pool = stratified_split(labels, self.search_images / len(labels), rng)
        fit, val = stratified_split(labels[pool], self.validation_fraction, rng)
        return torch.from_numpy(pool[fit]), torch.from_numpy(pool[val])

    def to(self, device: torch.device) -> Problem:
        """The problem with its images and labels on ``device`` (splits stay computed on the CPU)."""
        if self.x_train.device == device:
            return self
        return dataclasses.replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device))

    def scored_rows(self, split: Split | None) -> torch.Tensor:
        """The training rows to run through the trunk for ``split``: the bank rows first then the
        queries, or with leave-one-out the whole subset once."""
        fit, val = split or self.split()
        if self.leave_one_out:
            return torch.cat([fit, val]).sort().values
        return torch.cat([fit, val])

    def score(self, features: torch.Tensor, split: Split | None) -> Scores:
        """Scores of P candidates from their features [P, rows, D] of ``scored_rows(split)``."""
        fit, val = split or self.split()
        if self.leave_one_out:
            both = self.scored_rows(split)
            return score_features(self, features, y_fit=self.y_train[both], y_val=self.y_train[both])
        return score_features(self, features, y_fit=self.y_train[fit], y_val=self.y_train[val])


def score_features(problem: Problem, features: torch.Tensor, *, y_fit: torch.Tensor, y_val: torch.Tensor) -> Scores:
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
    hits, soft = problem.head.population_scores(
        bank, queries, y_fit=y_fit, y_val=y_val, n_classes=problem.n_classes, leave_one_out=problem.leave_one_out,
        soft_score=problem.soft_score, temperature=problem.temperature)
    accuracy, soft_mean = hits.double().mean(-1), soft.mean(-1)
    fitness = -(accuracy + problem.soft_weight * soft_mean)
    return Scores.of(fitness, accuracy, soft_mean)


def chunk_size(spec: TrunkSpec, x: torch.Tensor, *, index: int, size: int, budget: int = ACTIVATION_BUDGET,
               image_size: tuple[int, int] | None = None) -> int:
    """Images per chunk so that the population's largest activation stays within ``budget`` floats.

    ``x`` is the input of layer ``index``; a graph trunk's sizes come from ``image_size``."""
    if spec.is_chain:
        channels, height, width = x.shape[1:]
        rest = TrunkSpec(spec.layers[index:], channels)  # the layers from ``index`` on, fed x
        sizes = rest.conv_sizes((height, width))
        layers = rest.layers
    else:
        assert image_size is not None
        sizes, layers = spec.conv_sizes(image_size)[index:], spec.layers[index:]
    largest = max([1] + [layer.out_channels * h * w for layer, (h, w) in zip(layers, sizes, strict=True)])
    return max(1, budget // (2 * size * largest))


@torch.no_grad()
def population_features_chunked(spec: TrunkSpec, layer_input: LayerInput, weights: Weights, *, block: Block,
                                population: torch.Tensor, budget: int = ACTIVATION_BUDGET,
                                image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Features [P, N, D] of P candidates for ``block`` on ``layer_input`` [N, ...] (the input of the
    block's layer; for a graph trunk the earlier outputs it reads, ``trunk.layer_input``), in chunks of
    images that keep the activations within ``budget``."""
    def block_input(x: LayerInput) -> torch.Tensor:
        return x if not isinstance(x, dict) else sum_of(x[s] for s in spec.sources(block.layer))

    chunk = chunk_size(spec, block_input(layer_input), index=block.layer, size=len(population), budget=budget,
                       image_size=image_size)
    parts = []
    for start in range(0, length(layer_input), chunk):
        x = take(layer_input, slice(start, start + chunk))
        held = None
        if block.filter is not None:
            held = layer_forward(block_input(x), *weights[block.layer], layer=spec.layers[block.layer])
        parts.append(population_features(x, spec, weights, index=block.layer, population=population,
                                         filter_index=block.filter, held_output=held))
    return torch.cat(parts, dim=1)


def fitness_one_by_one(problem: Problem, weights: Weights, *, block: Block, population: np.ndarray,
                       split: Split | None = None) -> Scores:
    """Reference implementation: each candidate built as a whole trunk and run on its own."""
    from .trunk import features

    rows = []
    for candidate in population:
        trial = [(w.clone().numpy(), b.clone().numpy()) for w, b in weights]
        block.set(trial, np.asarray(candidate, dtype=np.float32))
        trunk = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in trial]
        rows.append(features(problem.x_train, problem.spec, trunk)[problem.scored_rows(split)])
    return problem.score(torch.stack(rows), split)
