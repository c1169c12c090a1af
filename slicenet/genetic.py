"""Genetic CNN (Xie and Yuille, ICCV 2017): a binary encoding of a trunk's connections, and its GA.

**Encoding.** S stages; stage s has K_s ordered nodes, each a 3x3 convolution (F_s filters, "same"
padding) followed by the activation, whose input is the element-wise sum of its predecessors'
outputs. Stage s is coded by K_s (K_s - 1) / 2 bits, grouped by target node: bit (i -> j) for i < j,
in the order (1->2) | (1->3),(2->3) | (1->4),(2->4),(3->4) | ...; a genome is written with "-"
between a stage's groups and a space between stages ("1-01 0-01-100"). A default input node (a
convolution of the stage's input) feeds every node without a predecessor; a default output node
sums every node without a successor, convolves the sum and feeds the max-pooling that ends the stage.
A node with no edge to another ordinary node is dropped; a stage with no edge at all is a single
convolution (then the pooling). The k-NN head follows the last stage.

**GA** (the paper's Algorithm 1). Bits initialised Bernoulli(0.5) (or all zero); each generation:
selection by N Russian-roulette draws with replacement, with probability proportional to
r - min(r) (the worst always dies); crossover of consecutive pairs with probability p_C, each pair of
corresponding stages swapped with probability q_C; mutation of each individual not crossed over
with probability p_M, each bit flipped with probability q_M; then every individual is evaluated,
one seen before again, its fitness the mean of all its evaluations. With a second objective (a cost)
the roulette gives way to NSGA-II's selection: binary tournaments by non-domination rank, then
crowding distance (Deb et al. 2002).

This module is pure: genomes, trunks, operators, ranks. ``archsearch`` runs the search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .trunk import LayerSpec, TrunkSpec

KERNEL = 3  # every node's convolution, "same" padding, so that a node's inputs have one shape
POOL = 2  # the max-pooling that ends every stage


def stage_bits(nodes: int) -> int:
    """K (K - 1) / 2: the bits that code a stage of K nodes."""
    return nodes * (nodes - 1) // 2


def edge_order(nodes: int) -> list[tuple[int, int]]:
    """The (i, j) edge of each bit of a stage, 1-based, grouped by target: (1,2) | (1,3),(2,3) | ..."""
    return [(i, j) for j in range(2, nodes + 1) for i in range(1, j)]


@dataclass(frozen=True)
class Genome:
    """One structure: the bits of each stage, and each stage's node count."""

    stages: tuple[tuple[int, ...], ...]
    nodes: tuple[int, ...]

    def __post_init__(self) -> None:
        for bits, count in zip(self.stages, self.nodes, strict=True):
            if len(bits) != stage_bits(count) or any(b not in (0, 1) for b in bits):
                raise InputError(f"a stage of {count} nodes is coded by {stage_bits(count)} bits, got {bits}")

    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(b for stage in self.stages for b in stage)

    def code(self) -> str:
        """The paper's notation, e.g. "1-01 0-01-100"."""
        parts = []
        for bits, count in zip(self.stages, self.nodes, strict=True):
            groups, start = [], 0
            for width in range(1, count):
                groups.append("".join(map(str, bits[start : start + width])))
                start += width
            parts.append("-".join(groups) if groups else "")
        return " ".join(parts)

    @classmethod
    def parse(cls, code: str) -> Genome:
        """A genome from the paper's notation; each stage's node count follows from its groups."""
        stages, nodes = [], []
        for part in code.split():
            groups = part.split("-")
            if any(len(g) != k + 1 or set(g) - {"0", "1"} for k, g in enumerate(groups)):
                raise InputError(f"genome {code!r}: stage {part!r} must be groups of 1, 2, 3, ... bits separated "
                                 "by '-', e.g. 1-01 (3 nodes) or 0-01-100 (4 nodes)")
            stages.append(tuple(int(b) for g in groups for b in g))
            nodes.append(len(groups) + 1)
        if not stages:
            raise InputError(f"genome {code!r}: expected at least one stage, e.g. '1-01 0-01-100'")
        return cls(tuple(stages), tuple(nodes))

    @classmethod
    def from_bits(cls, bits: np.ndarray | tuple[int, ...], nodes: tuple[int, ...]) -> Genome:
        stages, start = [], 0
        for count in nodes:
            stages.append(tuple(int(b) for b in bits[start : start + stage_bits(count)]))
            start += stage_bits(count)
        return cls(tuple(stages), tuple(nodes))


@dataclass(frozen=True)
class StageGraph:
    """A decoded stage: its kept ordinary nodes (1-based, in order), each one's kept predecessors, and
    the nodes without a successor (summed into the output node). No nodes: a single convolution."""

    nodes: tuple[int, ...]
    predecessors: dict[int, tuple[int, ...]]
    sinks: tuple[int, ...]

    def describe(self) -> str:
        if not self.nodes:
            return "a single convolution"
        edges = ["in -> " + ", ".join(str(n) for n in self.nodes if not self.predecessors[n])]
        edges += [f"{p} -> {n}" for n in self.nodes for p in self.predecessors[n]]
        edges.append(" + ".join(str(n) for n in self.sinks) + " -> out")
        return "; ".join(edges)


def decode_stage(bits: tuple[int, ...], nodes: int) -> StageGraph:
    edges = [edge for edge, bit in zip(edge_order(nodes), bits, strict=True) if bit]
    kept = tuple(n for n in range(1, nodes + 1) if any(n in edge for edge in edges))
    predecessors = {n: tuple(i for i, j in edges if j == n) for n in kept}
    sinks = tuple(n for n in kept if not any(i == n for i, _ in edges))
    return StageGraph(kept, predecessors, sinks)


def trunk(genome: Genome, filters: tuple[int, ...], *, in_channels: int = 1) -> TrunkSpec:
    """The trunk a genome codes: per stage its input node, kept nodes and output node (a single
    convolution where the stage has no edge), the output pooled; layers in topological order."""
    if len(filters) != len(genome.stages):
        raise InputError(f"preset {preset_name(genome, filters)!r} gives {len(filters)} filter widths for "
                         f"{len(genome.stages)} stages: give one per stage, e.g. genetic:4,8:1-01/0-01-100")
    layers: list[LayerSpec] = []

    def add(out: int, sources: tuple[int, ...], pool: int = 1) -> int:
        index = len(layers)
        chain = sources == (index - 1,)  # the layer before it: a chain layer, written as such
        layers.append(LayerSpec(out, KERNEL, padding=KERNEL // 2, pool=pool, inputs=() if chain else sources))
        return index

    stage_input = -1
    for bits, count, width in zip(genome.stages, genome.nodes, filters, strict=True):
        graph = decode_stage(bits, count)
        if not graph.nodes:
            stage_input = add(width, (stage_input,), POOL)
            continue
        entry = add(width, (stage_input,))
        ids: dict[int, int] = {}
        for node in graph.nodes:
            ids[node] = add(width, tuple(ids[p] for p in graph.predecessors[node]) or (entry,))
        stage_input = add(width, tuple(ids[n] for n in graph.sinks), POOL)
    return TrunkSpec(tuple(layers), in_channels)


def preset_name(genome: Genome, filters: tuple[int, ...]) -> str:
    """The trunk as a preset string ("genetic:4,8:1-01/0-01-100"), which ``trunk.resolve_preset`` reads:
    an individual is an ordinary optimise run."""
    return f"genetic:{','.join(map(str, filters))}:{genome.code().replace(' ', '/')}"


def parse_preset(name: str) -> tuple[Genome, tuple[int, ...]]:
    _, widths, code = (name.split(":", 2) + ["", ""])[:3]
    try:
        filters = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise InputError(f"preset {name!r}: expected genetic:<filters per stage>:<genome>, e.g. "
                         "genetic:4,8:1-01/0-01-100") from None
    if min(filters) < 1:
        raise InputError(f"preset {name!r}: each stage needs at least 1 filter, got {widths}; e.g. "
                         "genetic:4,8:1-01/0-01-100")
    return Genome.parse(code.replace("/", " ")), filters


# -- the GA's operators (the paper's Algorithm 1) -----------------------------------------------------

@dataclass(frozen=True)
class GASettings:
    population: int = 20  # N
    generations: int = 50  # T
    crossover_pairs: float = 0.2  # p_C: probability a pair of individuals is crossed over
    crossover_stages: float = 0.3  # q_C: probability each pair of corresponding stages is swapped
    mutation_individuals: float = 0.8  # p_M: probability an individual (not crossed over) mutates
    mutation_bits: float = 0.1  # q_M: probability each of its bits flips


def initial_population(count: int, nodes: tuple[int, ...], rng: np.random.Generator, *, zeros: bool = False
                       ) -> list[Genome]:
    length = sum(stage_bits(k) for k in nodes)
    return [Genome.from_bits(np.zeros(length, dtype=int) if zeros else rng.integers(0, 2, length), nodes)
            for _ in range(count)]


def roulette(fitness: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn with replacement, with probability proportional to r - min(r): the worst
    individual is never drawn; all equal: uniform."""
    weights = np.asarray(fitness, dtype=float) - np.min(fitness)
    if weights.sum() <= 0:
        return rng.integers(0, len(fitness), count)
    return rng.choice(len(fitness), size=count, replace=True, p=weights / weights.sum())


def crossover(a: Genome, b: Genome, rng: np.random.Generator, q: float) -> tuple[Genome, Genome]:
    """Each pair of corresponding stages swapped with probability ``q``."""
    left, right = list(a.stages), list(b.stages)
    for s in range(len(left)):
        if rng.random() < q:
            left[s], right[s] = right[s], left[s]
    return Genome(tuple(left), a.nodes), Genome(tuple(right), b.nodes)


def mutate(genome: Genome, rng: np.random.Generator, q: float) -> Genome:
    bits = np.array(genome.bits)
    flips = rng.random(len(bits)) < q
    return Genome.from_bits(np.where(flips, 1 - bits, bits), genome.nodes)


def next_generation(population: list[Genome], fitness: np.ndarray, settings: GASettings, rng: np.random.Generator,
                    *, select: np.ndarray | None = None) -> list[Genome]:
    """Selection (roulette, or the indices ``select`` chose), crossover of consecutive pairs, mutation of
    the individuals not crossed over: the paper's step from one generation to the next."""
    chosen = roulette(fitness, len(population), rng) if select is None else select
    children = [population[i] for i in chosen]
    crossed = [False] * len(children)
    for k in range(0, len(children) - 1, 2):
        if rng.random() < settings.crossover_pairs:
            children[k], children[k + 1] = crossover(children[k], children[k + 1], rng, settings.crossover_stages)
            crossed[k] = crossed[k + 1] = True
    for k, child in enumerate(children):
        if not crossed[k] and rng.random() < settings.mutation_individuals:
            children[k] = mutate(child, rng, settings.mutation_bits)
    return children


# -- two objectives: NSGA-II's ranks and crowding ---------------------------------------------------------

def pareto_ranks(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Non-domination rank of each point (0: the front), accuracy maximised and cost minimised."""
    n = len(accuracy)
    ranks = np.full(n, -1)
    remaining = set(range(n))
    rank = 0
    while remaining:
        front = [i for i in remaining if not any(
            accuracy[j] >= accuracy[i] and cost[j] <= cost[i] and (accuracy[j] > accuracy[i] or cost[j] < cost[i])
            for j in remaining)]
        for i in front:
            ranks[i] = rank
        remaining -= set(front)
        rank += 1
    return ranks


def crowding(accuracy: np.ndarray, cost: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Crowding distance within each front (the boundary points infinite)."""
    distance = np.zeros(len(accuracy))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        for values in (np.asarray(accuracy, float), np.asarray(cost, float)):
            order = members[np.argsort(values[members], kind="stable")]
            distance[order[0]] = distance[order[-1]] = np.inf
            span = values[order[-1]] - values[order[0]]
            if span > 0 and len(order) > 2:
                distance[order[1:-1]] += (values[order[2:]] - values[order[:-2]]) / span
    return distance


def nsga_selection(accuracy: np.ndarray, cost: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` binary tournaments: the lower rank wins, then the larger crowding distance."""
    ranks = pareto_ranks(accuracy, cost)
    distance = crowding(accuracy, cost, ranks)
    pairs = rng.integers(0, len(accuracy), size=(count, 2))
    better = (ranks[pairs[:, 0]] < ranks[pairs[:, 1]]) | (
        (ranks[pairs[:, 0]] == ranks[pairs[:, 1]]) & (distance[pairs[:, 0]] >= distance[pairs[:, 1]]))
    return np.where(better, pairs[:, 0], pairs[:, 1])
