"""``slicenet bench --search``: seconds per generation of the search, evaluator against evaluator.

Every evaluator named (in-process on a device, Ray actors on a cluster) scores the same populations on
the same splits, generation by generation, taking turns (A B A B, the order rotated each generation)
so that machine drift falls on all alike; the optimiser is told the first evaluator's scores, and
every other evaluator's scores are compared with them bit for bit. Start-up (Ray's, the actors', a
device's first transfer) is timed apart from the generations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InputError
from .fitness import Problem
from .optimisers import make_optimiser
from .search import SearchSettings, block_generations, make_blocks
from .trunk import Weights


def search_bench(problem: Problem, weights: Weights, settings: SearchSettings,
                 evaluators: dict[str, Callable[[], Any]], *, generations: int) -> dict:
    """Time ``generations`` generations of each block of the serial search, under every evaluator.

    ``evaluators`` maps a name to a factory (so that its start-up is timed). Returns, per evaluator, its
    start-up seconds and, per block, the median seconds per generation, the ratio of each evaluator's
    median to the first's, and whether every score equalled the first evaluator's."""
    names = list(evaluators)
    built, startup = {}, {}
    for name in names:
        started = time.perf_counter()
        built[name] = evaluators[name]()
        startup[name] = time.perf_counter() - started
    blocks_out = []
    try:
        blocks = [b for b in make_blocks(problem.spec, settings.granularity, 1) if b.filter in (None, 0)]
        for index, block in enumerate(blocks):  # per filter: each layer's first filter stands for its others
            x0 = block.vector(weights)
            fan_in = problem.spec.in_channels_of(block.layer) * problem.spec.layers[block.layer].kernel ** 2
            optimiser = make_optimiser(settings.method, x0, sigma0=settings.sigma_scale * (2.0 / fan_in) ** 0.5,
                                       population_size=settings.population_size, seed=settings.seed,
                                       max_generations=min(generations, block_generations(settings, problem.spec,
                                                                                          block)))
            bound = {}
            for name in names:
                started = time.perf_counter()
                bound[name] = built[name].bind(weights, block)
                startup[name] += time.perf_counter() - started
            seconds: dict[str, list[float]] = {name: [] for name in names}
            identical = {name: True for name in names}
            largest = {name: 0.0 for name in names}  # fitness difference to the first (a GPU's float rounding)
            while not optimiser.stop():
                population = optimiser.ask()
                split = problem.split((index, optimiser.generation, 0))
                shift = optimiser.generation % len(names)
                scores = {}
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    scores[name] = bound[name](population, split)
                    seconds[name].append(time.perf_counter() - started)
                for name in names[1:]:
                    identical[name] &= bool(np.array_equal(scores[name].fitness, scores[names[0]].fitness))
                    largest[name] = max(largest[name], float(np.max(np.abs(scores[name].fitness
                                                                           - scores[names[0]].fitness))))
                optimiser.tell(population, scores[names[0]].fitness)
            medians = {name: statistics.median(values) for name, values in seconds.items()}
            blocks_out.append({"block": block.label(), "population": len(population),
                               "generations": len(seconds[names[0]]),
                               "seconds_per_generation": medians,
                               "ratio_to_first": {name: medians[name] / medians[names[0]] for name in names},
                               "identical_to_first": identical, "max_fitness_difference": largest})
    finally:
        for evaluator in built.values():
            evaluator.close()
    return {"evaluators": names, "startup_seconds": startup, "blocks": blocks_out}


def evaluator_factory(problem: Problem, spec: str) -> Callable[[], Any]:
    """An evaluator from a word: a device (cpu, cuda, cuda:N, auto) or a cluster (local[:N], auto is a device
    here, ray://..., HOST:PORT)."""
    from .evaluators import TorchEvaluator

    if spec in ("cpu", "auto") or spec.startswith("cuda"):
        from .device import resolve

        device = resolve(spec)
        return lambda: TorchEvaluator(problem, device=device)
    from .cluster import RayEvaluator, parse_cluster

    try:
        parse_cluster(spec)
    except InputError:
        raise InputError(f"evaluator {spec!r}: expected a device (cpu, cuda, cuda:N, auto) or a Ray cluster "
                         "(local[:N], ray://..., or the head's HOST:PORT as 'ray start --head' prints)") from None
    return lambda: RayEvaluator(problem, cluster=spec)
