"""``slicenet arch-search``: the Genetic-CNN search over trunk structures, each scored gradient-free.

An individual (a genome, ``genetic.Genome``) is a trunk; its fitness is the k-NN validation accuracy
(on a split of the training images, never the test split) of a short ``slicenet optimise`` run of that
trunk (``search_generations`` generations per convolution on ``search_images`` images a generation):
each individual is an ordinary run directory, ``OUT/individuals/<genome>-e<k>``, which evaluate,
export, bench and condense accept. A genome evaluated again (the paper's rule) gets another run with
another search seed, and its fitness is the mean of all its runs.

Hardware-aware: three costs (trunk multiply-adds, engine KB, and the estimated latency on a board of
``devices/profiles.toml``) can each be a hard budget (``budget_macs``, ``budget_kb``, ``budget_ms``: an
individual over one gets the worst fitness), and one of them, ``cost``, is the second objective: of
NSGA-II's selection with ``front``, and of the accuracy / cost front of every structure evaluated,
which is always kept; each front member's exported graph is checked against the Jetson's and the
NCS2's rules.

The search's state, ``OUT/arch.json``, is written atomically after every generation, with the
generator's state: after a kill, the same command with ``--resume`` redoes the generation it was in
(its finished individual runs are kept, the interrupted one continues from its checkpoint) and ends
with the same result.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import write_json
from .config import Checked, RunConfig, option
from .data import load_dataset
from .errors import InputError
from .genetic import (
    GASettings,
    Genome,
    initial_population,
    next_generation,
    nsga_selection,
    pareto_ranks,
    preset_name,
    stage_bits,
)
from .trunk import resolve_preset

if TYPE_CHECKING:
    from .data import Dataset
    from .engine import Engine

STATE = "arch.json"
COST_UNITS = {"macs": "macs", "bytes": "kb", "latency": "ms"}  # --cost NAME and its --budget-UNIT
COSTS = tuple(COST_UNITS)


# The paper's MNIST setting (Xie and Yuille 2017, section 4.1): S=2, K=(3, 5), N=20, T=50 (its operators'
# probabilities are ArchConfig's defaults). ``--paper`` sets these; the filter widths stay --filters'.
PAPER_SETTING: dict[str, Any] = {"stages": 2, "nodes": (3, 5), "population": 20, "generations": 50}


def paper_flags() -> str:
    """The flags ``--paper`` stands for ("--stages 2 --nodes 3 5 --population 20 --generations 50")."""
    return " ".join(f"--{key} {' '.join(map(str, value)) if isinstance(value, tuple) else value}"
                    for key, value in PAPER_SETTING.items())


def with_paper_setting(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with the paper's setting added; a flag that would contradict it is refused."""
    clash = [key for key in PAPER_SETTING if overrides.get(key) is not None]
    if clash:
        given = " ".join(f"--{key}" for key in clash)
        raise InputError(f"--paper sets {paper_flags()}: drop {given}, or drop --paper and give them all")
    return {**overrides, **PAPER_SETTING}


@dataclass(frozen=True)
class ArchConfig(Checked):
    """``slicenet arch-search``: the paper's operators and probabilities, the per-individual budget."""

    dataset: str = option("mnist", "as for optimise")
    stages: int = option(2, "S, the number of stages (each ends with a 2x2 max-pooling)")
    nodes: tuple[int, ...] = option((3, 4), "K_s, ordered nodes per stage (the paper's MNIST setting: 3 5)")
    filters: tuple[int, ...] = option((4, 8), "convolution filters per stage (every node of a stage has as many)")
    population: int = option(8, "N, individuals per generation (the paper's 20)")
    generations: int = option(3, "T, generations after the first (the paper's 50)")
    crossover_pairs: float = option(0.2, "p_C: probability a pair of individuals is crossed over")
    crossover_stages: float = option(0.3, "q_C: probability each pair of corresponding stages is swapped")
    mutation_individuals: float = option(0.8, "p_M: probability an individual not crossed over mutates")
    mutation_bits: float = option(0.1, "q_M: probability each of its bits flips")
    init: str = option("random", "the first generation: random (each bit Bernoulli(0.5)) or zeros")
    strategy: str = option("ga", "ga (the paper's GA) or random (random structures at equal evaluations)")
    cost: str = option("macs", "the cost: macs (the trunk's multiply-adds per image), bytes (the engine file) "
                       "or latency (estimated ms of its exported graph on --board)")
    board: str = option("jetson-nano:10W-fp16", "board and mode of devices/profiles.toml for --cost latency and "
                       "--budget-ms")
    budget_macs: int | None = option(None, "a hard budget: an individual whose trunk needs more multiply-adds per "
                                     "image gets the worst fitness and stays off the front (known from its "
                                     "structure: it is not run)")
    budget_kb: float | None = option(None, "a hard budget: likewise for an engine file over this many KB "
                                     "(1 KB = 1000 B; the individual's engine, its bank every training image: "
                                     "'condense --budget-kb' fits a bank to a budget afterwards; not run if its "
                                     "weights and bank alone are over)")
    budget_ms: float | None = option(None, "a hard budget: likewise for an estimated latency on --board over this "
                                     "many ms (known from its structure: it is not run)")
    front: bool = option(False, "the whole accuracy / cost front: NSGA-II's selection (non-domination rank, "
                         "then crowding distance) in place of the roulette")
    search_generations: int = option(6, "per individual: generations of the serial search per convolution")
    search_images: int = option(400, "per individual: training images scored per generation")
    seed: int = option(0, "seeds the GA and every individual's search")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.stages >= 1, f"--stages must be at least 1, got {self.stages}"),
            (len(self.nodes) == self.stages,
             f"--nodes gives {len(self.nodes)} node counts for --stages {self.stages}: give one per stage"),
            (all(k >= 2 for k in self.nodes), f"--nodes must be at least 2 per stage (K nodes code K(K-1)/2 bits), "
             f"got {' '.join(map(str, self.nodes))}"),
            (all(k <= 8 for k in self.nodes), "--nodes above 8 per stage: more than 28 bits a stage"),
            (len(self.filters) == self.stages,
             f"--filters gives {len(self.filters)} widths for --stages {self.stages}: give one per stage"),
            (self.population >= 2, f"--population must be at least 2, got {self.population}"),
            (self.generations >= 0, f"--generations must be 0 or more, got {self.generations}"),
            *[(0 <= p <= 1, f"--{name.replace('_', '-')} is a probability: between 0 and 1, got {p}")
              for name, p in (("crossover_pairs", self.crossover_pairs), ("crossover_stages", self.crossover_stages),
                              ("mutation_individuals", self.mutation_individuals),
                              ("mutation_bits", self.mutation_bits))],
            (self.init in ("random", "zeros"), f"--init {self.init!r}: expected random or zeros"),
            (self.strategy in ("ga", "random"), f"--strategy {self.strategy!r}: expected ga or random"),
            (self.cost in COSTS, f"--cost {self.cost!r}: expected one of {', '.join(COSTS)}"),
            *[(value is None or value > 0, f"--budget-{unit} must be positive, got {value}")
              for unit, value in self.budgets.items()],
            (self.search_generations >= 1, f"--search-generations must be at least 1, got {self.search_generations}"),
            (self.search_images >= 20, f"--search-images must be at least 20, got {self.search_images}"),
        ]

    @property
    def budgets(self) -> dict[str, float | None]:
        """The hard budgets by cost: {"macs": .., "kb": .., "ms": ..}, None where none is given."""
        return {"macs": self.budget_macs, "kb": self.budget_kb, "ms": self.budget_ms}

    @property
    def costs(self) -> tuple[str, ...]:
        """The costs an individual is measured by: the objective (``cost``) and every budgeted one."""
        wanted = {COST_UNITS[self.cost], *(unit for unit, value in self.budgets.items() if value is not None)}
        return tuple(unit for unit in COST_UNITS.values() if unit in wanted)

    @staticmethod
    def from_saved(saved: dict) -> dict:
        """A saved ``config`` of arch.json in today's keys: searches before the per-cost budget flags
        kept one ``budget`` on their ``cost`` (0 = none)."""
        saved = dict(saved)
        budget = saved.pop("budget", None)
        if budget is not None:
            for unit in COST_UNITS.values():
                saved.setdefault(f"budget_{unit}", None)
            if budget:
                kind = COST_UNITS[saved["cost"]]
                saved[f"budget_{kind}"] = int(budget) if kind == "macs" else float(budget)
        return saved

    @property
    def ga(self) -> GASettings:
        return GASettings(population=self.population, generations=self.generations,
                          crossover_pairs=self.crossover_pairs, crossover_stages=self.crossover_stages,
                          mutation_individuals=self.mutation_individuals, mutation_bits=self.mutation_bits)

    def run_config(self, genome: Genome, evaluation: int) -> RunConfig:
        """The optimise run that scores one evaluation of a genome."""
        from .config import make_config

        return make_config(dataset=self.dataset, preset=preset_name(genome, self.filters),
                           generations=[self.search_generations], search_images=self.search_images,
                           bank_shifts=0, seed=self.seed * 1000 + evaluation)


def slug(genome: Genome) -> str:
    return re.sub(r"[^01]+", "_", genome.code()) or "empty"


def board_profile(board: str) -> dict:
    """The profile of ``board`` ("jetson-nano:10W-fp16", a board and one of its modes of
    devices/profiles.toml), reduced to that one mode: what a latency estimate needs."""
    from . import bench
    from .export import board_file

    profiles = bench.load_profiles(board_file("profiles.toml"))["boards"]
    name, _, mode = board.partition(":")
    modes = profiles.get(name, {}).get("modes", {})
    if mode not in modes:
        known = ", ".join(f"{b}:{m}" for b, p in profiles.items() for m in p.get("modes", {}))
        raise InputError(f"--board {board!r}: expected a board and mode of devices/profiles.toml: {known}")
    return {"boards": {name: {**profiles[name], "modes": {mode: modes[mode]}}}}


def individual_costs(config: ArchConfig, run_dir: Path) -> dict[str, float]:
    """The individual's costs, by unit, those ``config`` needs: its trunk's multiply-adds per image
    ("macs"), its engine file in KB ("kb"), the estimated latency in ms of its exported graph on
    ``config.board`` ("ms")."""
    from .runs import load_engine

    return engine_costs(load_engine(run_dir), config.costs, board=config.board)


def engine_costs(engine: Engine, units: tuple[str, ...], *, board: str) -> dict[str, float]:
    """An engine's costs in ``units`` (of "macs", "kb", "ms"), each measured only if asked for."""
    costs = {}
    for unit in units:
        if unit == "macs":
            costs[unit] = float(engine.spec.multiply_adds(engine.image_size))
        elif unit == "kb":
            costs[unit] = engine.engine_bytes / 1000.0
        else:
            from . import bench
            from .export.onnx_writer import write_onnx

            model = write_onnx(engine.describe(), opset=13)
            (row,) = bench.estimates(bench.graph_cost(model), board_profile(board), operations=len(model.graph.node))
            costs[unit] = float(row["estimated_ms"])
    return costs


def stand_in(config: ArchConfig, genome: Genome, dataset: Dataset) -> Engine:
    """The engine an individual's run will write, but for its values: the structure's trunk with zero
    weights and, under the run's head, a bank of zeros with a row for every training image (the run's
    bank: no shifted copies). Its multiply-adds and its exported graph (so the estimated latency) are
    the run's, since neither depends on values; its file is the run's less the provenance the run
    records in it."""
    import torch

    from .engine import Engine
    from .heads import bank_head
    from .trunk import init_weights

    run = config.run_config(genome, 0)
    _, spec = resolve_preset(run.preset, dataset.image_size)
    weights = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in init_weights(spec, 0)]
    raw = torch.zeros(len(dataset.y_train), spec.n_features(dataset.image_size))
    return Engine.from_features(spec, weights, raw, dataset.y_train, image_size=dataset.image_size, input_mean=0.0,
                                input_std=1.0, head=bank_head(run.vote, n_neighbors=run.n_neighbors, metric=run.metric),
                                class_names=dataset.class_names, postprocessing=run.postprocessing,
                                query_shifts=run.query_shifts)


def planned_costs(config: ArchConfig, genome: Genome, dataset: Dataset) -> dict[str, float]:
    """An individual's budgeted costs as known from its structure, before its run: the multiply-adds
    and the estimated latency exactly, the engine's KB as a lower bound (the run's engine is
    ``stand_in``'s with its provenance added, and the file only grows by it), so that a structure
    over a budget here is over it after its run too."""
    units = tuple(unit for unit, budget in config.budgets.items() if budget is not None)
    if not units:
        return {}
    if units == ("macs",):  # no engine needed
        _, spec = resolve_preset(preset_name(genome, config.filters), dataset.image_size)
        return {"macs": float(spec.multiply_adds(dataset.image_size))}
    return engine_costs(stand_in(config, genome, dataset), units, board=config.board)


def _over(config: ArchConfig, costs: dict[str, float]) -> dict[str, float]:
    """The costs of ``costs`` over their budgets."""
    return {unit: cost for unit, cost in costs.items() if cost > (config.budgets[unit] or float("inf"))}


def evaluate_individual(config: ArchConfig, genome_code: str, evaluation: int, run_dir: str, *,
                        device: str = "cpu") -> dict:
    """One evaluation: the individual's optimise run (kept if finished, continued if checkpointed), its
    populations scored on ``device``."""
    from .runs import optimise_or_resume

    genome = Genome.parse(genome_code)
    metrics = optimise_or_resume(config.run_config(genome, evaluation), Path(run_dir),
                                 command=f"slicenet arch-search (individual {genome_code}, evaluation {evaluation})",
                                 device=device)
    return {"run": run_dir, "validation_accuracy": metrics["validation_accuracy"],
            "test_accuracy": metrics["test_accuracy"], **_costs(config, individual_costs(config, Path(run_dir))),
            "multiply_adds": metrics["multiply_adds"], "engine_bytes": metrics["engine_bytes"],
            "wall_seconds": metrics["wall_seconds"]}


def _costs(config: ArchConfig, costs: dict[str, float]) -> dict:
    return {"cost": costs[COST_UNITS[config.cost]], "costs": costs}


def search(config: ArchConfig, out: Path, *, resume: bool = False, cluster: str | None = None, device: str = "cpu",
           on_start: Callable[[], None] | None = None, on_generation: Callable[[dict], None] | None = None) -> dict:
    """Run (or, with ``resume``, continue) the search in ``out``, each individual's populations scored on
    ``device``; returns the final state. ``on_start`` is called once the inputs are checked and the state is
    in place, before the first evaluation."""
    config.validate()
    loaded: list[Dataset] = []
    planned: dict[str, dict[str, float]] = {}  # by genome: its costs known before its run

    def dataset() -> Dataset:  # once: by the start's checks, or on resume only if a budget needs it
        if not loaded:
            loaded.append(load_dataset(config.dataset))
        return loaded[0]

    state = _load(out, config) if resume else _start(out, config, dataset(), planned)
    if on_start is not None:
        on_start()
    rng = np.random.default_rng()
    while state["generation"] <= config.generations:
        rng.bit_generator.state = state["rng"]
        population = [Genome.parse(code) for code in state["population"]]
        skipped = _over_budgets(config, population, state, dataset, planned)
        records = _evaluate(config, out, [g for g in population if g.code() not in skipped], state, cluster=cluster,
                            device=device)
        fitness, accuracy, cost = _scores(config, population, state["evaluations"])
        row = {"generation": state["generation"], "evaluations": sum(map(len, state["evaluations"].values())),
               "max": float(np.max(fitness)), "min": float(np.min(fitness)), "mean": float(np.mean(fitness)),
               "median": float(statistics.median(fitness)),
               "best": population[int(np.argmax(fitness))].code(), "individuals": records,
               "skipped": [g.code() for g in population if g.code() in skipped]}
        state["history"].append(row)
        if on_generation is not None:
            on_generation(row)
        if state["generation"] < config.generations:
            if config.strategy == "random":
                children = initial_population(config.population, config.nodes, rng)
            else:
                select = nsga_selection(accuracy, cost, len(population), rng) if config.front else None
                children = next_generation(population, fitness, config.ga, rng, select=select)
            state["population"] = [g.code() for g in children]
        state["generation"] += 1
        state["rng"] = rng.bit_generator.state
        state["front"] = front(config, state["evaluations"])
        write_json(out / STATE, state)
    if not state.get("front_checks"):
        state["front_checks"] = check_front(state["front"])
        write_json(out / STATE, state)
    return state


def _start(out: Path, config: ArchConfig, dataset: Dataset, planned: dict[str, dict[str, float]]) -> dict:
    if (out / STATE).exists():
        raise InputError(f"{out} holds an architecture search already; continue it with --resume, or choose "
                         "another --out")
    rng = np.random.default_rng(config.seed)
    population = initial_population(config.population, config.nodes, rng, zeros=config.init == "zeros")
    # A dataset that does not load (the caller's ``dataset``), images too small for a structure, a budget
    # nothing keeps: one line, before the state is written (a state left behind would refuse the
    # corrected command).
    image_size = dataset.image_size
    board_profile(config.board)  # a bad --board fails even where no cost reads it
    try:
        for genome in population:
            resolve_preset(preset_name(genome, config.filters), image_size)
    except InputError:
        raise InputError(f"--stages {config.stages} pool {image_size[0]}x{image_size[1]} images to nothing: use fewer "
                         "--stages or larger images (--dataset D@H)") from None
    _check_budgets_leave_room(config, dataset, planned)
    state = {"format": "slicenet-arch-search/1", "config": config.to_dict(), "generation": 0,
             "population": [g.code() for g in population], "rng": rng.bit_generator.state, "evaluations": {},
             "history": [], "front": []}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / STATE, state)
    return state


def _check_budgets_leave_room(config: ArchConfig, dataset: Dataset, planned: dict[str, dict[str, float]]) -> None:
    """A one-line error if no structure can keep the hard budgets: the all-zero structure (one
    convolution a stage) is the cheapest in every cost, so if it is over one, every structure is. Its
    costs are kept in ``planned`` for the first generation."""
    zeros = Genome(tuple((0,) * stage_bits(k) for k in config.nodes), config.nodes)
    planned[zeros.code()] = planned_costs(config, zeros, dataset)
    over = _over(config, planned[zeros.code()])
    if "kb" in over:
        n_features = resolve_preset(preset_name(zeros, config.filters), dataset.image_size)[1].n_features(
            dataset.image_size)
        raise InputError(f"--budget-kb {config.budget_kb:g}: the smallest structure's engine is already "
                         f"{over['kb']:,.0f} KB, its bank every one of the {len(dataset.y_train):,} training images "
                         f"({n_features} features each), so no structure fits: search without --budget-kb and "
                         "condense the chosen run (slicenet condense RUN --budget-kb N), or raise --budget-kb")
    if "macs" in over:
        raise InputError(f"--budget-macs {config.budget_macs}: the smallest structure (one convolution a stage) "
                         f"already needs {over['macs']:,.0f} multiply-adds per image, so no structure fits: raise "
                         "--budget-macs, or narrow --filters")
    if "ms" in over:
        raise InputError(f"--budget-ms {config.budget_ms:g}: the smallest structure (one convolution a stage) already "
                         f"needs an estimated {over['ms']:.3g} ms on {config.board}, its k-NN over every one of the "
                         f"{len(dataset.y_train):,} training images included, so no structure fits: raise --budget-ms, "
                         "or search without it and condense the chosen run to a smaller, faster bank")


def _load(out: Path, config: ArchConfig) -> dict:
    try:
        state = json.loads((out / STATE).read_text())
    except FileNotFoundError:
        raise InputError(f"{out} has no {STATE}: nothing to resume; start the search without --resume") from None
    except ValueError as exc:
        raise InputError(f"{out / STATE} is damaged ({exc}); start the search again in another --out") from None
    if ArchConfig.from_saved(state.get("config", {})) != config.to_dict():
        raise InputError(f"{out} was started with other settings; resume it with the same flags, or choose another "
                         "--out")
    state["config"] = config.to_dict()
    return state


def _over_budgets(config: ArchConfig, population: list[Genome], state: dict, dataset: Callable[[], Dataset],
                  planned: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The structures of ``population`` over a hard budget by the costs known before their runs
    (``planned_costs``, kept in ``planned`` by genome), with the costs over: these get the worst fitness
    without a run (under a tight budget most random structures are over it). Recorded in the state's
    ``skipped``, never in its evaluations; ``dataset`` loads the search's images if a cost needs them."""
    if all(budget is None for budget in config.budgets.values()):
        return {}
    for genome in population:
        if genome.code() not in planned:
            planned[genome.code()] = planned_costs(config, genome, dataset())
    over = {g.code(): costs for g in population if (costs := _over(config, planned[g.code()]))}
    state.setdefault("skipped", {}).update(over)
    return over


def _evaluate(config: ArchConfig, out: Path, population: list[Genome], state: dict, *,
              cluster: str | None, device: str = "cpu") -> list[dict]:
    """Every individual of a generation evaluated (as Ray tasks on ``cluster``, else one after the other);
    a genome seen before gets its next evaluation."""
    seen = {code: len(records) for code, records in state["evaluations"].items()}
    jobs: list[dict[str, Any]] = []
    for genome in population:
        code = genome.code()
        evaluation = seen.get(code, 0)
        seen[code] = evaluation + 1
        jobs.append({"config": config, "genome_code": code, "evaluation": evaluation,
                     "run_dir": str(out / "individuals" / f"{slug(genome)}-e{evaluation}"), "device": device})
    if cluster:
        from .cluster import fan_out

        results = fan_out(evaluate_individual, jobs, cluster=cluster, device=device)
    else:
        results = [evaluate_individual(**job) for job in jobs]
    records = []
    for job, result in zip(jobs, results, strict=True):
        state["evaluations"].setdefault(job["genome_code"], []).append(result)
        records.append({"genome": job["genome_code"], "evaluation": job["evaluation"], **result})
    return records


def within_budgets(config: ArchConfig, records: list[dict]) -> bool:
    """Whether a structure (its evaluations' records) keeps every hard budget, each cost the mean of
    its records (a record before per-cost budgets holds only ``cost``, the one its budget was on)."""
    for unit, budget in config.budgets.items():
        if budget is not None and np.mean([r.get("costs", {unit: r["cost"]})[unit] for r in records]) > budget:
            return False
    return True


def _scores(config: ArchConfig, population: list[Genome], evaluations: dict) -> tuple[np.ndarray, ...]:
    """(fitness, mean validation accuracy, cost) per individual; over a budget: the worst fitness. An
    individual skipped as over a budget before its run (no evaluation) scores 0 and takes the population's
    highest cost, so that NSGA-II's selection ranks it below every structure that was run."""
    run = [g.code() in evaluations for g in population]
    accuracy = np.array([np.mean([r["validation_accuracy"] for r in evaluations[g.code()]]) if ok else 0.0
                         for g, ok in zip(population, run, strict=True)])
    cost = np.array([np.mean([r["cost"] for r in evaluations[g.code()]]) if ok else np.nan
                     for g, ok in zip(population, run, strict=True)])
    cost[~np.array(run)] = np.nanmax(cost) if any(run) else 0.0
    within = np.array([ok and within_budgets(config, evaluations[g.code()])
                       for g, ok in zip(population, run, strict=True)])
    return np.where(within, accuracy, 0.0), accuracy, cost


def front(config: ArchConfig, evaluations: dict) -> list[dict]:
    """Every structure evaluated that no other beats in both accuracy and cost (within the budgets)."""
    rows = [{"genome": code, "validation_accuracy": float(np.mean([r["validation_accuracy"] for r in records])),
             "cost": float(np.mean([r["cost"] for r in records])), "evaluations": len(records),
             "test_accuracy": float(np.mean([r["test_accuracy"] for r in records])),
             "run": max(records, key=lambda r: r["validation_accuracy"])["run"]}
            for code, records in evaluations.items() if within_budgets(config, records)]
    if not rows:
        return []
    ranks = pareto_ranks(np.array([r["validation_accuracy"] for r in rows]), np.array([r["cost"] for r in rows]))
    return sorted((r for r, rank in zip(rows, ranks, strict=True) if rank == 0), key=lambda r: r["cost"])


def check_front(members: list[dict]) -> list[dict]:
    """Each front member's exported graph against the Jetson's and the NCS2's rules (ONNX opset 13; the
    NCS2's IR of opset <= 10 layers)."""
    import tempfile

    import openvino as ov

    from .export.ir_writer import write_ir
    from .export.targets import check_ir_opsets, target
    from .runs import load_engine

    checks = []
    for member in members:
        graph = load_engine(Path(member["run"])).describe()
        result = {"genome": member["genome"], "run": member["run"]}
        for name in ("jetson", "ncs2"):
            try:
                target(name).onnx_model(graph)
                result[name] = "passes"
            except InputError as exc:
                result[name] = f"fails: {exc}"
        with tempfile.TemporaryDirectory() as folder:
            ov.save_model(write_ir(graph.fold_constants()), str(Path(folder) / "engine.xml"), compress_to_fp16=True)
            try:
                check_ir_opsets(Path(folder) / "engine.xml")
                result["ncs2_ir"] = "passes"
            except InputError as exc:
                result["ncs2_ir"] = f"fails: {exc}"
        checks.append(result)
    return checks


# -- how faithfully the short budget ranks structures -------------------------------------------------

RANK_SEED = 500  # the long runs' seed offset: no evaluation of the search uses it (theirs count from 0)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks."""
    ra, rb = average_ranks(np.asarray(a, float)), average_ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator else float("nan")


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (ties in either list corrected for)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    denominator = float(np.sqrt((da != 0).sum() * (db != 0).sum()))
    return float((da * db).sum() / denominator) if denominator else float("nan")


def repeat_noise(evaluations: dict) -> dict:
    """How much one short evaluation of a structure varies with its search's seed, against how much
    structures differ: the within-structure standard deviation (pooled over structures evaluated at
    least twice), the spread of the structures' means, and the one-way intraclass correlation ICC(1)
    (the share of a single evaluation's variance that is the structure's)."""
    groups = [np.array([r["validation_accuracy"] for r in records]) for records in evaluations.values()]
    repeated = [g for g in groups if len(g) >= 2]
    if not repeated:
        return {"structures_repeated": 0}
    within = float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in repeated) / sum(len(g) - 1 for g in repeated)))
    means = np.array([g.mean() for g in groups])
    n = len(groups)
    sizes = np.array([len(g) for g in groups], dtype=float)
    k0 = (sizes.sum() - (sizes ** 2).sum() / sizes.sum()) / (n - 1) if n > 1 else 1.0
    grand = np.concatenate(groups).mean()
    between_ms = float((sizes * (means - grand) ** 2).sum() / (n - 1)) if n > 1 else 0.0
    within_ms = within ** 2
    denominator = between_ms + (k0 - 1) * within_ms  # 0 with one structure only: no ICC
    icc = (between_ms - within_ms) / denominator if n > 1 and denominator else float("nan")
    return {"structures_repeated": len(repeated), "evaluations_repeated": int(sum(len(g) for g in repeated)),
            "within_sd": within, "between_sd_of_means": float(means.std(ddof=1)) if n > 1 else 0.0,
            "icc1": float(icc)}


def check_rank_options(*, count: int | None, generations: int, images: int) -> None:
    """The rank check's options as one-line errors (``count`` None: no rank check asked for; its
    other options are still checked, before a search that may take hours)."""
    if count is not None and count < 3:
        raise InputError(f"--rank-check needs at least 3 structures to rank, got {count}")
    if generations < 1:
        raise InputError(f"--rank-generations must be at least 1, got {generations}")
    if images != 0 and images < 20:
        raise InputError(f"--rank-images must be 0 (as the short searches) or at least 20, got {images}")


def rank_check(config: ArchConfig, out: Path, *, count: int, generations: int, images: int = 0,
               cluster: str | None = None, device: str = "cpu") -> dict:
    """``count`` of a finished search's structures (evenly spread over its ranking, best and worst
    included) searched again with a longer budget (``generations`` per convolution on ``images``
    images, default the short budget's), each an ordinary run ``OUT/rank-check/<structure>-g<G>``
    (kept if finished, continued if checkpointed); the short fitness against the long runs' validation
    accuracy as Spearman's rho and Kendall's tau-b, written into ``arch.json`` as ``rank_check``."""
    from .config import make_config
    from .runs import optimise_or_resume

    state = _load(out, config)
    if state["generation"] <= config.generations:
        raise InputError(f"{out}: the search is not finished (generation {state['generation']} of "
                         f"{config.generations}); run it to the end with --resume first")
    check_rank_options(count=count, generations=generations, images=images)
    images = images or config.search_images
    short = sorted(((float(np.mean([r["validation_accuracy"] for r in records])), code)
                   for code, records in state["evaluations"].items()), reverse=True)
    if len(short) < count:
        raise InputError(f"the search evaluated {len(short)} distinct structures: --rank-check at most that many")
    picked = [short[int(round(i))] for i in np.linspace(0, len(short) - 1, count)]
    jobs: list[dict[str, Any]] = [
        {"config": make_config(dataset=config.dataset, preset=preset_name(Genome.parse(code), config.filters),
                               generations=[generations], search_images=images, bank_shifts=0,
                               seed=config.seed * 1000 + RANK_SEED),
         "run_dir": out / "rank-check" / f"{slug(Genome.parse(code))}-g{generations}",
         "command": f"slicenet arch-search --rank-check (structure {code})", "device": device} for _, code in picked]
    if cluster:
        from .cluster import fan_out

        results = fan_out(optimise_or_resume, jobs, cluster=cluster, device=device)
    else:
        results = [optimise_or_resume(**job) for job in jobs]
    rows = [{"genome": code, "short_validation": accuracy, "short_evaluations": len(state["evaluations"][code]),
             "long_validation": m["validation_accuracy"], "long_test": m["test_accuracy"],
             "long_wall_seconds": m["wall_seconds"], "run": str(job["run_dir"])}
            for (accuracy, code), job, m in zip(picked, jobs, results, strict=True)]
    a, b = np.array([r["short_validation"] for r in rows]), np.array([r["long_validation"] for r in rows])
    state["rank_check"] = {"structures": rows, "generations": generations, "images": images,
                           "spearman": spearman(a, b), "kendall_tau_b": kendall_tau_b(a, b),
                           "spearman_long_test": spearman(a, np.array([r["long_test"] for r in rows])),
                           "noise": repeat_noise(state["evaluations"])}
    write_json(out / STATE, state)
    return state


def describe(code: str) -> str:
    """A structure as text: each stage's DAG ("in -> 1; 1 -> 2; 2 -> out")."""
    from .genetic import decode_stage

    genome = Genome.parse(code)
    return " | ".join(f"stage {s + 1}: {decode_stage(bits, k).describe()}"
                      for s, (bits, k) in enumerate(zip(genome.stages, genome.nodes, strict=True)))


def structures(nodes: tuple[int, ...]) -> int:
    return 2 ** sum(stage_bits(k) for k in nodes)


