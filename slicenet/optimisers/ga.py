"""A real-coded genetic algorithm: tournament selection (k=2), two-point crossover, Gaussian
mutation and elitism, as in the GA work on CNN kernels that the ``ga`` optimiser follows.
"""

from __future__ import annotations

import numpy as np

from .base import Optimiser


class GA(Optimiser):
    def __init__(self, x0: np.ndarray, *, sigma0: float, population_size: int, seed: int,
                 max_generations: int, elite: int = 2, crossover_rate: float = 0.9,
                 mutation_rate: float = 0.1, mutation_decay: float = 0.5):
        super().__init__(x0, sigma0=sigma0, population_size=population_size, seed=seed,
                         max_generations=max_generations)
        self.elite = min(elite, population_size - 1)
        self.crossover_rate = crossover_rate  # probability a pair of parents is recombined
        self.mutation_rate = mutation_rate  # probability each gene is perturbed
        self.mutation_decay = mutation_decay  # sigma shrinks to this fraction by the last generation
        self.sigma0 = sigma0
        self.population = self._cloud(x0, sigma0)
        self.population[0] = x0  # the starting point competes too

    def ask(self) -> np.ndarray:
        return self.population.copy()

    def _tournament(self, fitness: np.ndarray, count: int) -> np.ndarray:
        pairs = self.rng.integers(0, len(fitness), size=(count, 2))
        return np.where(fitness[pairs[:, 0]] <= fitness[pairs[:, 1]], pairs[:, 0], pairs[:, 1])

    def _tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        n_children = self.population_size - self.elite
        order = np.argsort(fitness, kind="stable")
        mothers = solutions[self._tournament(fitness, n_children)]
        fathers = solutions[self._tournament(fitness, n_children)]
        children = mothers.copy()
        # Two-point crossover: genes between two cut points come from the other parent.
        cuts = np.sort(self.rng.integers(0, self.dimension + 1, size=(n_children, 2)), axis=1)
        genes = np.arange(self.dimension)
        swap = (genes >= cuts[:, :1]) & (genes < cuts[:, 1:])
        swap &= (self.rng.random(n_children) < self.crossover_rate)[:, None]
        children[swap] = fathers[swap]
        progress = self.generation / max(1, self.max_generations - 1)
        sigma = self.sigma0 * (1.0 - (1.0 - self.mutation_decay) * progress)
        mutate = self.rng.random(children.shape) < self.mutation_rate
        children += mutate * sigma * self.rng.standard_normal(children.shape)
        self.population = np.concatenate([solutions[order[: self.elite]], children])

    @staticmethod
    def default_population_size(dimension: int) -> int:
        return 24
