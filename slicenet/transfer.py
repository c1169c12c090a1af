"""Transfer to a new dataset: a source run's trunk adapted to new images, and the GA that picks what to
re-tune (``slicenet transfer``).

A transferred run is an ordinary optimise run whose configuration names its source
(``init_from``): the source's trunk, its weights as the search's starting point, the new images
resized to the source's input (``dataset@H``), and a bank of the new training images. What the
search re-tunes is ``tune``: ``none`` (every layer kept: the "freeze the convolutions" baseline),
``all`` (every layer re-searched from the source weights), or a set of layers ("0,1") or, with
``--granularity filter``, of filters ("0.3,1.7"); ``keep`` re-initialises the layers after the first
``keep`` (He-normal, seeded), which are then searched too.

Two GAs choose the set, each faithful to its paper:

- ``depth`` (Safiuddin 2021): four genes, the layers kept (1..L), how many of them are re-tuned
  (0..kept, the last ones), the search's initial step size (log-uniform 0.05..2, as ``sigma_scale``)
  and k (1, 3, 5, 7, 9); tournament selection (k=2), two-point crossover, and mutation that redraws
  a gene within its range.
- ``mask`` (Jeong et al. 2022): one bit per layer, or per filter where the trunk has fewer than 8
  layers (re-tune it or keep it frozen), random initial genomes; the top half kept, children by
  one-point crossover (half at the midpoint, half at a random point), each bit flipped with
  probability 4 %.

Fitness: the validation accuracy (a split of the new training images, never their test split) of
the individual's transferred run; individuals are run directories, evaluated as Ray tasks on
``--cluster`` where given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json
from .config import Checked, RunConfig, make_config, option
from .errors import InputError
from .trunk import TrunkSpec

SIGMA_RANGE = (0.05, 2.0)  # depth GA: the initial step size gene, log-uniform
K_CHOICES = (1, 3, 5, 7, 9)  # depth GA: k
MASK_FLIP = 0.04  # mask GA: per-bit flip probability (Jeong et al.)
MASK_FILTERS_BELOW = 8  # mask GA: one bit per filter where the trunk has fewer layers


def parse_tune(tune: str, spec: TrunkSpec, granularity: str) -> list[tuple[int, int | None]] | None:
    """The blocks a ``tune`` value names: None (all), [] (none), or (layer, filter) pairs; a bad value is
    a one-line error naming the layers and filters there are."""
    if tune == "all":
        return None
    if tune == "none":
        return []
    blocks: list[tuple[int, int | None]] = []
    for part in (p.strip() for p in tune.split(",") if p.strip()):
        try:
            if granularity == "filter":
                layer, _, number = part.partition(".")
                block: tuple[int, int | None] = (int(layer), int(number) if number else None)
            else:
                block = (int(part), None)
        except ValueError:
            raise InputError(f"tune {tune!r}: expected all, none, layers like 0,1 or (granularity filter) filters "
                             "like 0.3,1.2") from None
        layer_index, filter_index = block
        if not 0 <= layer_index < len(spec.layers):
            raise InputError(f"tune {tune!r}: layer {layer_index} does not exist; the trunk has layers 0.."
                             f"{len(spec.layers) - 1}")
        if filter_index is not None and not 0 <= filter_index < spec.layers[layer_index].out_channels:
            raise InputError(f"tune {tune!r}: layer {layer_index} has filters 0.."
                             f"{spec.layers[layer_index].out_channels - 1}")
        blocks.append(block)
    return blocks


@dataclass(frozen=True)
class TransferConfig(Checked):
    """``slicenet transfer``: what to re-tune, and the budgets."""

    dataset: str = option("digits", "the new dataset, as for optimise (its images are resized to the source's)")
    tune: str = option("none", "none (keep every layer, a new bank), all (re-search every layer from the source "
                       "weights), layers 0,1 (filters 0.3,1.2 with --granularity filter), or ga")
    granularity: str = option("layer", "layer or filter: what --tune names")
    ga: str = option("mask", "with --tune ga: mask (Jeong et al.: a bit per layer or filter) or depth (Safiuddin: "
                     "layers kept, re-tuned, step size, k)")
    ga_population: int = option(6, "with --tune ga: individuals per generation")
    ga_generations: int = option(2, "with --tune ga: generations after the first")
    generations: tuple[int, ...] = option((30, 120), "the search's generations per re-tuned layer")
    search_images: int = option(1000, "training images scored per generation")
    n_neighbors: int = option(9, "k of the k-NN head (the depth GA chooses its own)")
    vote: str = option("", "k-NN head: majority or local-mean (default: the source run's)")
    bank_shifts: int = option(-1, "bank copies shifted by 1..n pixels (-1 = auto, as optimise)")
    seed: int = option(0, "seeds the GA, the searches and re-initialised layers")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.granularity in ("layer", "filter"), f"--granularity {self.granularity!r}: expected layer or filter"),
            (self.ga in ("mask", "depth"), f"--ga {self.ga!r}: expected mask or depth"),
            (self.ga_population >= 2, f"--ga-population must be at least 2, got {self.ga_population}"),
            (self.ga_generations >= 0, f"--ga-generations must be 0 or more, got {self.ga_generations}"),
            (self.tune != "ga" or self.granularity == "layer" or self.ga == "mask",
             "--ga depth chooses whole layers: drop --granularity filter"),
        ]

    def run_config(self, source: Path, *, size: int, tune: str, granularity: str | None = None, keep: int = 0,
                   sigma_scale: float | None = None, n_neighbors: int | None = None, seed: int | None = None
                   ) -> RunConfig:
        """The optimise run of one transfer: the new images resized to the source's ``size``."""
        from .data import split_modifiers
        from .runs import load_trunk

        dataset = self.dataset if split_modifiers(self.dataset)[2] is not None else f"{self.dataset}@{size}"
        vote = self.vote or load_trunk(source).vote  # as the source engine votes (a local-mean radu run stays one)
        overrides: dict[str, Any] = {
            "dataset": dataset, "init_from": str(source), "tune": tune, "image_size": size,
            "granularity": granularity or self.granularity, "keep": keep, "generations": list(self.generations),
            "search_images": self.search_images, "n_neighbors": n_neighbors or self.n_neighbors, "vote": vote,
            "bank_shifts": self.bank_shifts, "seed": self.seed if seed is None else seed}
        if sigma_scale is not None:
            overrides["sigma_scale"] = sigma_scale
        return make_config(**overrides)


# -- the two GAs ---------------------------------------------------------------------------------------

def depth_genome(rng: np.random.Generator, layers: int) -> dict:
    kept = int(rng.integers(1, layers + 1))
    return {"kept": kept, "retuned": int(rng.integers(0, kept + 1)),
            "sigma": float(np.exp(rng.uniform(*np.log(SIGMA_RANGE)))), "k": int(rng.choice(K_CHOICES))}


def depth_valid(genome: dict, layers: int) -> dict:
    """Genes back within their ranges (``retuned`` can exceed a smaller ``kept`` after crossover)."""
    kept = min(max(1, genome["kept"]), layers)
    return {**genome, "kept": kept, "retuned": min(max(0, genome["retuned"]), kept)}


def depth_next(population: list[dict], fitness: np.ndarray, rng: np.random.Generator, layers: int) -> list[dict]:
    """Tournament selection (k=2), two-point crossover over the gene order, redraw mutation of one gene."""
    genes = ["kept", "retuned", "sigma", "k"]
    children: list[dict] = []
    while len(children) < len(population):
        parents = []
        for _ in range(2):
            a, b = rng.integers(0, len(population), 2)
            parents.append(population[a] if fitness[a] >= fitness[b] else population[b])
        lo, hi = sorted(rng.integers(0, len(genes) + 1, 2))
        child = {g: (parents[1][g] if lo <= i < hi else parents[0][g]) for i, g in enumerate(genes)}
        gene = genes[int(rng.integers(0, len(genes)))]
        child[gene] = depth_genome(rng, layers)[gene] if gene != "retuned" else int(rng.integers(0, child["kept"] + 1))
        children.append(depth_valid(child, layers))
    return children


def depth_run(genome: dict, spec: TrunkSpec) -> dict:
    """A depth genome as run settings: layers after ``kept`` re-initialised and searched, and the last
    ``retuned`` of the kept ones re-tuned from the source weights."""
    layers = len(spec.layers)
    tuned = list(range(genome["kept"] - genome["retuned"], layers))
    return {"tune": ",".join(map(str, tuned)) if tuned else "none", "keep": genome["kept"],
            "sigma_scale": genome["sigma"], "n_neighbors": genome["k"], "granularity": "layer"}


def mask_units(spec: TrunkSpec) -> list[tuple[int, int | None]]:
    """What a mask bit stands for: a layer, or a filter where the trunk has fewer than 8 layers."""
    if len(spec.layers) < MASK_FILTERS_BELOW:
        return [(i, f) for i, layer in enumerate(spec.layers) for f in range(layer.out_channels)]
    return [(i, None) for i in range(len(spec.layers))]


def mask_next(population: list[np.ndarray], fitness: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The top half kept; children of pairs of them by one-point crossover (half at the midpoint, half at
    a random point); every child's bits flipped with probability 4 %."""
    order = np.argsort(-np.asarray(fitness), kind="stable")
    parents = [population[i] for i in order[: max(1, len(population) // 2)]]
    children = [p.copy() for p in parents]
    count = 0
    while len(children) < len(population):
        a, b = (parents[int(i)] for i in rng.integers(0, len(parents), 2))
        point = len(a) // 2 if count % 2 == 0 else int(rng.integers(1, len(a)))
        child = np.concatenate([a[:point], b[point:]])
        flips = rng.random(len(child)) < MASK_FLIP
        children.append(np.where(flips, 1 - child, child))
        count += 1
    return children


def mask_run(bits: np.ndarray, spec: TrunkSpec) -> dict:
    units = [u for u, bit in zip(mask_units(spec), bits, strict=True) if bit]
    per_filter = len(spec.layers) < MASK_FILTERS_BELOW
    tune = ",".join(f"{layer}.{f}" if per_filter else str(layer) for layer, f in units) or "none"
    return {"tune": tune, "granularity": "filter" if per_filter else "layer"}


def ga_search(config: TransferConfig, source: Path, spec: TrunkSpec, size: int, out: Path, *,
              evaluate: Callable[[list[dict]], list[dict]], on_generation: Callable[[dict], None] | None = None
              ) -> dict:
    """The GA over what to re-tune; ``evaluate(jobs)`` runs the individuals' transfers (in order) and
    returns their metrics. The state, ``OUT/ga.json``, is written after every generation."""
    rng = np.random.default_rng(config.seed)
    layers = len(spec.layers)
    if config.ga == "depth":
        population: list[Any] = [depth_genome(rng, layers) for _ in range(config.ga_population)]
    else:
        population = [rng.integers(0, 2, len(mask_units(spec))) for _ in range(config.ga_population)]
    history: list[dict] = []
    evaluated: dict[str, dict] = {}
    for generation in range(config.ga_generations + 1):
        settings = [depth_run(g, spec) if config.ga == "depth" else mask_run(g, spec) for g in population]
        names = [json.dumps(s, sort_keys=True) for s in settings]
        todo = [(name, s) for name, s in zip(names, settings, strict=True) if name not in evaluated]
        todo = list({name: s for name, s in todo}.items())
        jobs = [{"config": config.run_config(source, size=size, **s),
                 "run_dir": out / "individuals" / f"g{generation}-{i}"}
                for i, (_, s) in enumerate(todo)]
        for (name, s), metrics in zip(todo, evaluate(jobs), strict=True):
            evaluated[name] = {"settings": s, "validation_accuracy": metrics["validation_accuracy"],
                               "test_accuracy": metrics["test_accuracy"], "run": metrics["run"],
                               "wall_seconds": metrics["wall_seconds"], "evaluations": metrics["evaluations"]}
        fitness = np.array([evaluated[n]["validation_accuracy"] for n in names])
        row = {"generation": generation, "max": float(fitness.max()), "mean": float(fitness.mean()),
               "best": evaluated[names[int(fitness.argmax())]]["settings"],
               "individuals": [evaluated[n] for n in names]}
        history.append(row)
        if on_generation is not None:
            on_generation(row)
        write_json(out / "ga.json", {"config": config.to_dict(), "history": history, "evaluated": evaluated})
        if generation < config.ga_generations:
            population = (depth_next(population, fitness, rng, layers) if config.ga == "depth"
                          else mask_next(population, fitness, rng))
    best = max(evaluated.values(), key=lambda e: e["validation_accuracy"])
    return {"history": history, "evaluated": evaluated, "best": best}
