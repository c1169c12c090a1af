"""The optimise pipeline as pure functions: prepare -> search -> build the engine -> evaluate; and the
metrics every kind of run reports.

No printing and no files here; ``runs`` persists what these return and the CLI drives both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import AUTO_SHIFTS_MAX_TRAIN, RunConfig
from .data import Dataset, load_dataset, shifted_copies
from .engine import Engine, normalise_images
from .errors import InputError
from .evaluators import Evaluator
from .fitness import Problem
from .heads import bank_head
from .search import SearchSettings, SearchState, serial_search
from .trunk import TrunkSpec, Weights, init_weights, resolve_preset

KINDS = ("search", "compact", "backprop-dense", "backprop-knn", "pixels")  # what a run's engine is


@dataclass(frozen=True)
class Prepared:
    config: RunConfig
    dataset: Dataset
    spec: TrunkSpec
    preset: str
    problem: Problem
    input_mean: float
    input_std: float
    bank_shifts: int  # resolved: shifted copies of every bank image, 1..n pixels
    start_weights: Weights | None = None  # a transfer's: the source run's trunk weights


def resolve_bank_shifts(requested: int, n_train: int, image_size: tuple[int, int]) -> int:
    """``-1`` (auto): 1-pixel shifted copies for training sets of at most ``AUTO_SHIFTS_MAX_TRAIN``
    images of 16 pixels or more, none otherwise. On MNIST-5k they lift test accuracy by 0.1-0.9
    points (six runs, mean about 0.5) for a bank five times larger; on 60,000 images the bank would
    reach 300,000 rows for a smaller gain, and on 8x8 images one pixel is no longer a small shift."""
    if requested >= 0:
        return requested
    return 1 if n_train <= AUTO_SHIFTS_MAX_TRAIN and min(image_size) >= 16 else 0


def load_inputs(dataset_spec: str, *, preset: str, image_size: int, threads: int
                ) -> tuple[Dataset, str, TrunkSpec, float, float]:
    """Dataset, resolved preset and input standardisation (from the training images only)."""
    if threads:
        torch.set_num_threads(threads)
    dataset = load_dataset(dataset_spec, image_size)
    name, spec = resolve_preset(preset, dataset.image_size)
    scaled = dataset.x_train.astype(np.float64) / 255.0
    return dataset, name, spec, float(scaled.mean()), float(scaled.std()) or 1.0


def check_vote(dataset: Dataset, *, vote: str, n_neighbors: int, flag: str = "--vote") -> None:
    """Fail before any search or training if the k-NN head's vote cannot work on this training set
    (the head's own check would, but only once the engine is built)."""
    smallest = int(np.bincount(dataset.y_train, minlength=dataset.n_classes).min())
    if vote == "local-mean" and smallest < n_neighbors:
        raise InputError(f"the local-mean vote needs k={n_neighbors} training images of every class; "
                         f"the smallest class has {smallest}: lower --n-neighbors or use {flag} majority")


def check_generations(generations: tuple[int, ...], spec: TrunkSpec) -> None:
    """One budget for all layers, or one per layer; the last serves any layers after it (the default pair
    reads "100 for the first layer, 400 for each later one", and a one-convolution trunk takes the 100).
    Budgets given for layers the trunk lacks would be dropped silently, so they are an error."""
    if generations != RunConfig().generations and 1 < len(generations) > len(spec.layers) > 0:
        raise InputError(f"--generations gives {len(generations)} budgets for a trunk of {len(spec.layers)} "
                         f"convolutions: give one for all, or at most one per convolution")


def load_source(config: RunConfig, dataset: Dataset) -> tuple[TrunkSpec, Weights]:
    """A transfer's source: the trunk and weights of ``config.init_from``'s engine, checked against the
    new images (one-line errors: not a run, images of another size)."""
    from .runs import load_trunk

    source = load_trunk(Path(config.init_from))
    if not source.spec.layers:
        raise InputError(f"{config.init_from} has no convolutions (a pixels run): nothing to transfer")
    if dataset.image_size != source.image_size:
        height, width = source.image_size
        raise InputError(f"the source engine of {config.init_from} takes {height}x{width} images and dataset "
                         f"{config.dataset!r} has {dataset.image_size[0]}x{dataset.image_size[1]}: add @{height} to "
                         "the dataset (resized), as slicenet transfer does")
    return source.spec, [(w.clone(), b.clone()) for w, b in source.weights]


def prepare(config: RunConfig) -> Prepared:
    dataset, preset, spec, mean, std = load_inputs(config.dataset, preset=config.preset,
                                                   image_size=config.image_size, threads=config.threads)
    start_weights = None
    if config.init_from:
        spec, start_weights = load_source(config, dataset)
        preset = "transfer"
        tuned_blocks(config, spec)  # a bad --tune fails here, before anything is written
    check_generations(config.generations, spec)
    if config.n_neighbors > len(dataset.y_train) * (1 - config.validation_fraction):
        raise InputError(f"n_neighbors={config.n_neighbors} exceeds the training images left for the "
                         "bank; use a smaller --n-neighbors")
    check_vote(dataset, vote=config.vote, n_neighbors=config.n_neighbors)
    check_vote(dataset, vote=config.fitness_vote, n_neighbors=config.n_neighbors, flag="--fitness-vote")
    if config.prototypes:
        from .condense import check_prototypes

        check_prototypes(dataset.y_train, config.prototypes, instead="0 for the full bank")
    problem = Problem(
        spec=spec, x_train=normalise_images(dataset.x_train, mean, std),
        y_train=torch.from_numpy(dataset.y_train), n_classes=dataset.n_classes,
        head=bank_head(config.fitness_vote, n_neighbors=config.n_neighbors, metric=config.metric),
        postprocessing=config.postprocessing, validation_fraction=config.validation_fraction, resample=True,
        seed=config.seed, search_images=config.search_images, soft_weight=config.soft_weight,
        soft_score=config.soft_score, temperature=config.temperature, leave_one_out=config.scoring == "loo")
    return Prepared(config, dataset, spec, preset, problem, mean, std,
                    resolve_bank_shifts(config.bank_shifts, len(dataset.y_train), dataset.image_size), start_weights)


def tuned_blocks(config: RunConfig, spec: TrunkSpec) -> tuple[tuple[int, int | None], ...] | None:
    """What a transfer searches, as (layer, filter or None) pairs; None: every block (any other run).
    Layers after ``keep`` are re-initialised, so they are always searched."""
    if not config.init_from:
        return None
    from .transfer import parse_tune

    named = parse_tune(config.tune, spec, config.granularity)
    if named is None:
        return None
    fresh = [(layer, None) for layer in range(config.keep, len(spec.layers))] if config.keep else []
    return tuple(dict.fromkeys([*named, *fresh]))


def search_settings(config: RunConfig, spec: TrunkSpec | None = None) -> SearchSettings:
    """The search's settings; a transfer's (``init_from``) need its trunk to resolve ``tune``."""
    tune = tuned_blocks(config, spec) if spec is not None else None
    return SearchSettings(method=config.method, granularity=config.granularity,
                          generations=config.generations, sweeps=config.sweeps,
                          population_size=config.population_size,
                          sigma_scale=config.sigma_scale, seed=config.seed, tune=tune)


def initial_state(prepared: Prepared) -> SearchState:
    """Seeded He-normal weights; a transfer's are its source's, re-initialised after ``keep`` layers."""
    fresh = init_weights(prepared.spec, prepared.config.seed)
    if prepared.start_weights is None:
        return SearchState.start(fresh)
    keep = prepared.config.keep or len(prepared.spec.layers)
    return SearchState.start([source if i < keep else new
                              for i, (source, new) in enumerate(zip(prepared.start_weights, fresh, strict=True))])


def run_search(prepared: Prepared, state: SearchState, *, evaluator: Evaluator | None = None,
               on_generation: Callable[[dict], None] | None = None,
               on_checkpoint: Callable[[SearchState], None] | None = None) -> SearchState:
    return serial_search(prepared.problem, search_settings(prepared.config, prepared.spec), state, evaluator=evaluator,
                         on_generation=on_generation, on_checkpoint=on_checkpoint)


def build_engine(prepared: Prepared, state: SearchState, *, images: np.ndarray | None = None,
                 labels: np.ndarray | None = None, info: dict | None = None) -> Engine:
    """The engine of a search state, its bank the given images (default: all training images)."""
    config, dataset = prepared.config, prepared.dataset
    images, labels = shifted_copies(dataset.x_train if images is None else images,
                                    dataset.y_train if labels is None else labels, prepared.bank_shifts)
    return Engine.build(prepared.spec, state.torch_weights(), images, labels, input_mean=prepared.input_mean,
                        input_std=prepared.input_std, class_names=dataset.class_names,
                        head=bank_head(config.vote, n_neighbors=config.n_neighbors, metric=config.metric),
                        postprocessing=config.postprocessing, query_shifts=config.query_shifts, info=info)


def evaluate(engine: Engine, images: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true class, columns: predicted)."""
    predicted, _, _ = engine.predict(images)
    n = engine.n_classes
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    per_class = np.divide(np.diag(confusion), support, out=np.zeros(n), where=support > 0)
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "per_class_accuracy": {name: float(a) for name, a in zip(engine.class_names, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
        "n_images": int(len(labels)),
    }


def class_index(names: tuple[str, ...], engine_names: tuple[str, ...], class_map: dict[str, str] | None = None
                ) -> np.ndarray:
    """For each of a dataset's class names, the index of the engine's class of that name (after
    ``class_map``, dataset name -> engine name); a name the engine lacks is a one-line error listing both."""
    class_map = class_map or {}
    unknown_keys = sorted(set(class_map) - set(names))
    if unknown_keys:
        raise InputError(f"--class-map names {', '.join(unknown_keys)}, which the dataset's classes "
                         f"({', '.join(names)}) do not include")
    bad_targets = sorted({target for target in class_map.values() if target not in engine_names})
    if bad_targets:
        raise InputError(f"--class-map maps to {', '.join(bad_targets)}, which the engine's classes "
                         f"({', '.join(engine_names)}) do not include")
    mapped = [class_map.get(name, name) for name in names]
    missing = [name for name, target in zip(names, mapped, strict=True) if target not in engine_names]
    if missing:
        raise InputError(f"the dataset's classes ({', '.join(names)}) do not match the engine's "
                         f"({', '.join(engine_names)}): no class for {', '.join(missing)}; rename the folders, or "
                         f"pass --class-map {missing[0]}={engine_names[0]},...")
    return np.array([engine_names.index(target) for target in mapped], dtype=np.int64)


def validation_accuracy(prepared: Prepared, state: SearchState) -> float:
    """Accuracy on the run's fixed validation split, with the bank built from the rest of the training set."""
    fit, val = (index.numpy() for index in prepared.problem.split())
    dataset = prepared.dataset
    engine = build_engine(prepared, state, images=dataset.x_train[fit], labels=dataset.y_train[fit])
    return evaluate(engine, dataset.x_train[val], dataset.y_train[val])["accuracy"]


def machine_info() -> dict:
    """Where a figure was measured: CPU model, cores, threads, library versions."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "system": platform.system()}


def engine_metrics(engine: Engine, dataset: Dataset, *, kind: str) -> dict:
    """What every run reports about its engine, whatever made it: the test split's accuracy, per-class
    accuracy and confusion matrix, its head and kind (as data: the report never parses a label), its
    size and cost, and where it was measured. Accuracies are fractions in [0, 1]."""
    assert kind in KINDS, kind
    test = evaluate(engine, dataset.x_test, dataset.y_test)
    bank = getattr(engine.head, "bank", None)
    return {
        "kind": kind,
        "head": engine.head.kind,
        "head_settings": engine.head.settings(),
        "dataset": dataset.name,
        "test_accuracy": test["accuracy"],
        "per_class_accuracy": test["per_class_accuracy"],
        "confusion_matrix": test["confusion_matrix"],
        "parameters": engine.parameters,
        "bank_size": 0 if bank is None else int(bank.shape[0]),
        "query_shifts": engine.views.shifts,
        "engine_bytes": engine.engine_bytes,
        "multiply_adds": engine.multiply_adds,
        "n_train": int(len(dataset.y_train)),
        "n_test": int(len(dataset.y_test)),
        "slicenet_version": __version__,
        "machine": machine_info(),
    }


def final_metrics(prepared: Prepared, state: SearchState, engine: Engine) -> dict:
    """The metrics of an optimise run: the engine's, then the search's."""
    dataset, config = prepared.dataset, prepared.config
    baseline = build_engine(prepared, initial_state(prepared))
    return {
        **engine_metrics(engine, dataset, kind="pixels" if not prepared.spec.layers else "search"),
        "method": config.method,
        "preset": prepared.preset,
        "granularity": config.granularity,
        "validation_accuracy": validation_accuracy(prepared, state),
        "random_init_test_accuracy": evaluate(baseline, dataset.x_test, dataset.y_test)["accuracy"],
        "n_features": prepared.spec.n_features(dataset.image_size),
        "bank_shifts": prepared.bank_shifts,
        "evaluations": state.evaluations,
        "search_seconds": round(state.search_seconds, 3),
        "n_neighbors": config.n_neighbors,
        "vote": config.vote,
        "fitness_vote": config.fitness_vote,
        "seed": config.seed,
        **({"transfer": {"source": config.init_from, "tune": config.tune, "keep": config.keep,
                         "granularity": config.granularity}} if config.init_from else {}),
    }


def final_engine(prepared: Prepared, state: SearchState, *, info: dict) -> tuple[Engine, dict]:
    """The run's engine and what its metrics add about it: the full bank of every training image, or
    with ``prototypes`` an LVQ bank of that many per class (``condense``'s, chosen by validation), whose
    full bank's test accuracy is recorded beside it."""
    engine = build_engine(prepared, state, info=info)
    config, dataset = prepared.config, prepared.dataset
    if not config.prototypes:
        return engine, {}
    from .condense import CompactSettings, accuracy, choose_and_build

    full_bank = accuracy(engine, dataset.x_test, dataset.y_test)
    compact, _, _ = choose_and_build(engine, dataset.x_train, dataset.y_train,
                                     CompactSettings(method="lvq", prototypes=config.prototypes),
                                     seed=config.seed, shifts=prepared.bank_shifts)
    return compact, {"full_bank_test_accuracy": full_bank}
