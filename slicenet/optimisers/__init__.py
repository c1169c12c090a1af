"""Optimisers behind one ask / tell interface, and the one registry the CLI and tests iterate over."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Optimiser, sanitise_fitness
from .cma_es import CMAES
from .ga import GA
from .pso import PSO

REGISTRY: dict[str, type[Optimiser]] = {"cma": CMAES, "pso": PSO, "ga": GA}


def make_optimiser(method: str, x0: np.ndarray, *, sigma0: float, population_size: int = 0, seed: int = 0,
                   max_generations: int) -> Optimiser:
    """Build a registered optimiser; ``population_size`` 0 picks the method's default for the dimension."""
    if method not in REGISTRY:
        raise InputError(f"unknown method {method!r}: expected one of {', '.join(REGISTRY)}")
    cls = REGISTRY[method]
    if population_size == 0:
        population_size = cls.default_population_size(len(x0))  # type: ignore[attr-defined]
    return cls(x0, sigma0=sigma0, population_size=population_size, seed=seed, max_generations=max_generations)


__all__ = ["REGISTRY", "Optimiser", "make_optimiser", "sanitise_fitness", "CMAES", "PSO", "GA"]
