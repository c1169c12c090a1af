"""Population evaluators: where and how a population of candidate vectors for one block is scored.

The search loop never knows whether a population is scored in this process, on a GPU or by a cluster
of workers (as pycma's ``with EvalParallel2(f, n_jobs) as eval_all: fitvals = eval_all(X)``):

    with TorchEvaluator(problem, device="cpu") as evaluator:
        evaluate = evaluator.bind(weights, block)      # the frozen weights and the block under search
        scores = evaluate(population, split)           # fitness, accuracy, smooth score per candidate

A problem (``fitness.Problem`` for the search, ``condense.BankProblem`` for the joint condensation)
says which training rows to run through the trunk (``scored_rows``) and how to score the features
the candidates give them (``score``); the evaluator runs the trunk for the population, in one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np
import torch

from .fitness import Scores, Split, population_features_chunked
from .trunk import Block, LayerInput, TrunkSpec, Weights, layer_input, take


class ScoredProblem(Protocol):
    @property
    def spec(self) -> TrunkSpec: ...

    @property
    def x_train(self) -> torch.Tensor: ...  # the images the trunk runs on (normalised [N, C, H, W])

    def scored_rows(self, split: Split | None) -> torch.Tensor: ...

    def score(self, features: torch.Tensor, split: Split | None) -> Scores: ...

    def to(self, device: torch.device) -> ScoredProblem: ...


class Evaluator(ABC):
    """Scores populations for one problem; ``bind`` fixes the trunk's frozen weights and the block."""

    def __init__(self, problem: ScoredProblem):
        self.problem = problem
        self.weights: Weights = []
        self.block = Block(0, None)

    def bind(self, weights: Weights, block: Block) -> Evaluator:
        self.weights, self.block = weights, block
        return self

    @abstractmethod
    def __call__(self, population: np.ndarray, split: Split | None = None) -> Scores:
        """Scores of ``population`` [P, n] (each row the block's parameters) on ``split``."""

    def close(self) -> None:
        """Release what the evaluator holds (workers, device memory); nothing for the in-process one."""
        return None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TorchEvaluator(Evaluator):
    """The in-process evaluator: the whole population as one batch of torch operations on ``device``.

    The block's layer input (the training images through the frozen layers before it) is computed once
    per layer and frozen weights, not once per generation.
    """

    def __init__(self, problem: ScoredProblem, *, device: str | torch.device = "cpu",
                 activation_budget: int | None = None):
        from .device import activation_budget as budget_for
        from .device import resolve

        super().__init__(problem)
        self.device = resolve(device) if isinstance(device, str) else device
        # floats of activations per chunk of images: the CPU's last-level cache, or a share of the GPU's memory
        self.activation_budget = activation_budget or budget_for(self.device)
        self._problem = problem.to(self.device)  # its images once on the device
        self._cache: tuple[int, list[torch.Tensor]] | None = None
        self._layer_input: LayerInput = torch.empty(0)

    def bind(self, weights: Weights, block: Block) -> TorchEvaluator:
        super().bind(weights, block)
        earlier = [t for w, b in weights[: block.layer] for t in (w, b)]
        if (self._cache is None or self._cache[0] != block.layer
                or not all(torch.equal(a, b) for a, b in zip(self._cache[1], earlier, strict=True))):
            with torch.no_grad():
                on_device = [(w.to(self.device), b.to(self.device)) for w, b in weights]
                self._layer_input = layer_input(self._problem.x_train, self._problem.spec, on_device,
                                                index=block.layer)
            self._cache = (block.layer, [t.clone() for t in earlier])
        return self

    @torch.no_grad()
    def __call__(self, population: np.ndarray, split: Split | None = None) -> Scores:
        rows = self.problem.scored_rows(split)
        height, width = self._problem.x_train.shape[-2:]
        weights = [(w.to(self.device), b.to(self.device)) for w, b in self.weights]
        features = population_features_chunked(
            self.problem.spec, take(self._layer_input, rows.to(self.device)), weights, block=self.block,
            population=torch.as_tensor(population, dtype=torch.float32, device=self.device),
            budget=self.activation_budget, image_size=(int(height), int(width)))
        return self._problem.score(features, split)
