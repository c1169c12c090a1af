"""The one optimiser interface: ask / tell / stop / best, always minimising (pycma's protocol).

    while not opt.stop():
        X = opt.ask()                 # [population_size, dimension]
        opt.tell(X, fitness(X))       # one batched evaluation of the whole population

``tell`` treats NaN or infinite fitness as the worst value seen (evosax's rule), never as a crash.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def sanitise_fitness(fitness: np.ndarray) -> np.ndarray:
    """Replace NaN / +-inf with a value worse than every finite one (or 1e30 if none is finite)."""
    fitness = np.asarray(fitness, dtype=np.float64).copy()
    bad = ~np.isfinite(fitness)
    if bad.any():
        finite = fitness[~bad]
        fitness[bad] = (finite.max() + abs(finite.max()) + 1.0) if finite.size else 1e30
    return fitness


class Optimiser(ABC):
    """Minimises a function of ``dimension`` reals, starting around ``x0`` with spread ``sigma0``."""

    def __init__(self, x0: np.ndarray, *, sigma0: float, population_size: int, seed: int,
                 max_generations: int):
        if population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {population_size}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 must be positive, got {sigma0}")
        self.dimension = len(x0)
        self.population_size = population_size
        self.max_generations = max_generations
        self.generation = 0
        self.best_x = np.asarray(x0, dtype=np.float64).copy()
        self.best_f = np.inf
        self.rng = np.random.default_rng(seed)  # every draw of the optimiser's own: same seed, same run

    def _cloud(self, x0: np.ndarray, sigma0: float) -> np.ndarray:
        """A first population: ``x0`` plus isotropic Gaussian noise of spread ``sigma0``."""
        return x0 + sigma0 * self.rng.standard_normal((self.population_size, self.dimension))

    @abstractmethod
    def ask(self) -> np.ndarray:
        """A new population, shape [population_size, dimension]."""

    @abstractmethod
    def _tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        """Update the search distribution from sanitised fitness values."""

    def tell(self, solutions: np.ndarray, fitness: np.ndarray) -> None:
        solutions = np.asarray(solutions, dtype=np.float64)
        fitness = np.asarray(fitness, dtype=np.float64)
        if len(fitness) != len(solutions):
            raise ValueError(f"#f-values = {len(fitness)} must equal #solutions = {len(solutions)}")
        fitness = sanitise_fitness(fitness)
        best = int(np.argmin(fitness))
        if fitness[best] < self.best_f:
            self.best_f, self.best_x = float(fitness[best]), solutions[best].copy()
        self._tell(solutions, fitness)
        self.generation += 1

    def stop(self) -> bool:
        return self.generation >= self.max_generations

    def recommendation(self) -> np.ndarray:
        """The solution to keep when the block ends: by default the best one evaluated."""
        return self.best_x.copy()

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """The best solution evaluated so far and its fitness."""
        return self.best_x, self.best_f
