"""Serial search: the trunk's kernels optimised without gradients, one block at a time.

As in the reference's k-NN slicing, layer 1 is optimised first (later layers held at their initial
values) and frozen, then layer 2 on top of it, and so on. With ``sweeps`` > 1 the pass repeats
(block coordinate descent): layer 1 is re-tuned for the layer 2 it now feeds, and so on. With
``granularity="filter"`` each block is one filter (its kernel and bias) with the rest of its layer
held, the reference's "serial" mode.

A block starts from the current weights and ends with the optimiser's recommendation (the best
candidate evaluated; CMA-ES's distribution mean), kept only if it beats the starting weights on
held-out validation splits. Populations are scored by an ``evaluators.Evaluator`` (in-process by
default); the loop does not know where. Everything the search needs to continue after a kill is in
``SearchState`` (picklable); the caller persists it from ``on_checkpoint`` after every generation,
and a resumed search ends with exactly the weights of an uninterrupted one, because every random
draw comes from state stored in it.

This module is pure: no printing, no files. Progress goes to the ``on_generation`` callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .evaluators import Evaluator, TorchEvaluator
from .fitness import Problem, Scores, Split
from .optimisers import Optimiser, make_optimiser
from .trunk import Block, TrunkSpec, Weights

ACCEPT_SPLITS = 4  # validation splits on which a block's result must beat its starting weights


@dataclass(frozen=True)
class SearchSettings:
    method: str = "cma"  # a registered optimiser
    granularity: str = "layer"  # "layer" or "filter"
    generations: tuple[int, ...] = (20, 60)  # generation budget per layer (shared by its filters)
    sweeps: int = 1  # passes over the layers: later passes re-tune each layer given the others
    population_size: int = 0  # 0: the method's default for the block's dimension
    sigma_scale: float = 0.5  # initial step size, as a multiple of the layer's He-init std
    seed: int = 0
    tune: tuple[tuple[int, int | None], ...] | None = None  # only these (layer, filter or None = all); None: all


def make_blocks(spec: TrunkSpec, granularity: str, sweeps: int = 1,
                tune: tuple[tuple[int, int | None], ...] | None = None) -> list[Block]:
    """The blocks of the search in order; ``tune`` keeps only the named layers (``(layer, None)``) and
    filters (``(layer, filter)``), the rest held at their starting weights (a transfer's)."""
    if granularity == "layer":
        one_pass = [Block(i, None) for i in range(len(spec.layers))]
    elif granularity == "filter":
        one_pass = [Block(i, f) for i, layer in enumerate(spec.layers) for f in range(layer.out_channels)]
    else:
        raise ValueError(f"unknown granularity {granularity!r}: expected layer or filter")
    if tune is not None:
        layers = {layer for layer, number in tune if number is None}
        one_pass = [b for b in one_pass if b.layer in layers or (b.layer, b.filter) in tune]
    return one_pass * sweeps


def block_generations(settings: SearchSettings, spec: TrunkSpec, block: Block) -> int:
    budget = settings.generations[min(block.layer, len(settings.generations) - 1)]
    if block.filter is None:
        return budget
    return max(1, budget // spec.layers[block.layer].out_channels)


def total_generations(settings: SearchSettings, spec: TrunkSpec) -> int:
    return sum(block_generations(settings, spec, block)
               for block in make_blocks(spec, settings.granularity, settings.sweeps, settings.tune))


@dataclass
class SearchState:
    """A search in progress: the weights so far and the optimiser of the current block."""

    weights: list[tuple[np.ndarray, np.ndarray]]
    block_index: int = 0
    optimiser: Optimiser | None = None
    evaluations: int = 0
    search_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, weights: Weights) -> SearchState:
        return cls([(w.numpy().copy(), b.numpy().copy()) for w, b in weights])

    def torch_weights(self) -> Weights:
        return [(torch.from_numpy(w.copy()), torch.from_numpy(b.copy())) for w, b in self.weights]


def run_generations(optimiser: Optimiser, evaluate: Callable[[np.ndarray, Split | None], Scores],
                    split_of: Callable[[int], Split | None] = lambda generation: None
                    ) -> Iterator[tuple[np.ndarray, Scores, float]]:
    """The one ask / evaluate / tell loop: yields (population, its scores, seconds) per generation
    until the optimiser stops; ``split_of(generation)`` is the split each generation is scored on."""
    while not optimiser.stop():
        started = time.perf_counter()
        population = optimiser.ask()
        scores = evaluate(population, split_of(optimiser.generation))
        optimiser.tell(population, scores.fitness)
        yield population, scores, time.perf_counter() - started


def serial_search(problem: Problem, settings: SearchSettings, state: SearchState, *,
                  evaluator: Evaluator | None = None,
                  on_generation: Callable[[dict], None] | None = None,
                  on_checkpoint: Callable[[SearchState], None] | None = None) -> SearchState:
    """Run (or continue) the serial search; returns the final state with the optimised weights."""
    spec = problem.spec
    blocks = make_blocks(spec, settings.granularity, settings.sweeps, settings.tune)
    evaluator = evaluator or TorchEvaluator(problem)
    while state.block_index < len(blocks):
        block_index, block = state.block_index, blocks[state.block_index]
        weights = state.torch_weights()
        evaluate = evaluator.bind(weights, block)
        x0 = block.vector(weights)
        if state.optimiser is None:
            fan_in = spec.in_channels_of(block.layer) * spec.layers[block.layer].kernel ** 2
            state.optimiser = make_optimiser(settings.method, x0,
                                             sigma0=settings.sigma_scale * (2.0 / fan_in) ** 0.5,
                                             population_size=settings.population_size,
                                             seed=settings.seed * 1000 + block_index,
                                             max_generations=block_generations(settings, spec, block))
        optimiser = state.optimiser
        def search_split(generation: int, block_index: int = block_index) -> Split:
            return problem.split((block_index, generation, 0))  # role 0: search

        for population, scores, seconds in run_generations(optimiser, evaluate, search_split):
            state.evaluations += len(population)
            state.search_seconds += seconds
            best = int(np.argmin(scores.fitness))
            row = {
                "block": block_index, "layer": block.layer + 1,
                "filter": "" if block.filter is None else block.filter + 1,
                "generation": optimiser.generation, "evaluations": state.evaluations,
                "best_fitness": float(scores.fitness[best]), "mean_fitness": float(scores.fitness.mean()),
                "best_accuracy": float(scores.accuracy[best]), "best_so_far": optimiser.best[1],
            }
            state.history.append(row)
            if on_generation is not None:
                on_generation({**row, "label": block.label(), "n_blocks": len(blocks),
                               "max_generations": optimiser.max_generations})
            if on_checkpoint is not None:
                on_checkpoint(state)
        # The recommendation replaces the starting weights only if it scores better on the same
        # held-out splits, averaged: a block can never make the trunk worse by this measure.
        candidates = np.stack([x0, optimiser.recommendation()])
        totals = np.zeros(2)
        for repeat in range(ACCEPT_SPLITS):
            totals += evaluate(candidates, problem.split((block_index, repeat, 1))).fitness  # role 1: acceptance
        state.evaluations += 2 * ACCEPT_SPLITS
        if totals[1] < totals[0]:
            block.set(state.weights, candidates[1])
        state.block_index += 1
        state.optimiser = None
        if on_checkpoint is not None:
            on_checkpoint(state)
    return state
