"""Run configuration: one frozen dataclass with commented defaults, loadable from TOML, overridable
from the command line, and saved (resolved) beside every result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import InputError

AUTO_SHIFTS_MAX_TRAIN = 10_000  # bank_shifts = -1: shifted copies for training sets up to this size


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "mnist"  # mnist | mnist:<dir> | fashion-mnist[:<dir>] | digits | folder:<dir>
    method: str = "cma"  # optimiser: cma | pso | ga
    preset: str = "auto"  # trunk: auto | default | radu | tiny
    granularity: str = "layer"  # serial search unit: a whole layer, or one filter at a time
    generations: tuple[int, ...] = (100, 400)  # generation budget per layer (filters share their layer's)
    sweeps: int = 1  # passes over the layers; later passes re-tune each layer given the others
    population_size: int = 0  # candidates per generation; 0 = the method's default for the dimension
    sigma_scale: float = 0.5  # initial search spread, as a multiple of the layer's He-init std
    n_neighbors: int = 9  # k of the k-NN head (the reference's k=9)
    vote: str = "majority"  # k-NN head: majority of the k nearest | local-mean (of each class's k nearest)
    fitness_vote: str = "majority"  # the head the search scores kernels with: majority | local-mean (about
    # twice the time per generation)
    metric: str = "euclidean"  # k-NN distance: euclidean | sqeuclidean | cosine | manhattan
    postprocessing: str = "centre_l2"  # features: centre_l2 | l2 | none (part of the engine)
    validation_fraction: float = 0.25  # share of the scored images held out as k-NN queries (holdout)
    scoring: str = "loo"  # loo: every scored image vs all the others | holdout: queries vs the rest
    search_images: int = 1000  # training images scored per generation, a fresh stratified subset; 0 = all
    soft_weight: float = 1.0  # weight of the smooth k-NN score that breaks accuracy ties
    soft_score: str = "knn"  # smooth score: knn (softmax over the k neighbours) | nca (over the whole bank)
    temperature: float = 0.05  # softmax temperature of that smooth score
    image_size: int = 28  # folder datasets only: images are resized to this square size
    prototypes: int = 0  # k-means prototypes per class in the final bank; 0 = every training image
    bank_shifts: int = -1  # bank copies shifted by 1..n pixels (4 per step); 0 = none; -1 = auto: 1 for
    # training sets of at most AUTO_SHIFTS_MAX_TRAIN images of 16 pixels or more, else 0
    query_shifts: int = 0  # test-time views: each query and its copies shifted by 1..n pixels (4 per step),
    # the head's votes summed over the views; 0 = the query alone. Pairs with bank_shifts >= n
    seed: int = 0  # seeds initial weights, validation split and optimiser: same seed, same run
    threads: int = 0  # torch CPU threads; 0 = torch's default (all cores)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class BaselineConfig:
    """A backprop-trained network with the same trunk: the baseline the k-NN engines are judged by."""

    dataset: str = "mnist"  # as for optimise
    preset: str = "auto"  # the same trunk presets as optimise
    hidden: tuple[int, ...] = (128,)  # width of the dense hidden layer; several widths = one run each
    head: str = "dense"  # dense: the trained network as is; knn: trained trunk + k-NN head ("k-NN slicing")
    epochs: int = 5  # maximum epochs (early stopping may end sooner)
    optimizer: str = "adam"  # adam | sgd (momentum 0.9, step learning-rate schedule)
    learning_rate: float = 0.001  # Adam's default; use about 0.05 with sgd
    lr_step: int = 5  # sgd: epochs between learning-rate drops
    lr_gamma: float = 0.1  # sgd: factor of each drop
    batch_size: int = 64
    patience: int = 3  # early stopping: epochs without a better validation accuracy
    augment: bool = False  # random shifts (up to 2 px) and rotations (up to 10 degrees)
    validation_fraction: float = 0.1  # training images held out for early stopping
    n_neighbors: int = 9  # head = knn: k
    vote: str = "majority"  # head = knn: majority | local-mean
    metric: str = "euclidean"  # head = knn: distance
    postprocessing: str = "centre_l2"  # head = knn: feature post-processing
    image_size: int = 28  # folder datasets only
    seed: int = 0
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}




def _coerce(name: str, value: Any, cls: type = RunConfig) -> Any:
    default = getattr(cls(), name)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"config {name}: expected true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise InputError(f"config {name}: expected one or more positive integers, got {value!r}")
        return tuple(items)
    if not isinstance(value, type(default)) and not (
            isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)):
        raise InputError(f"config {name}: expected {type(default).__name__}, got {value!r}")
    return type(default)(value)


def make_config(base: Any = None, cls: type = RunConfig, **overrides: Any) -> Any:
    """A config of ``cls`` from ``base`` (default: the defaults) with ``overrides`` applied and checked."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    values = {name: _coerce(name, value, cls) for name, value in overrides.items() if value is not None}
    config = dataclasses.replace(base or cls(), **values)
    (validate if cls is RunConfig else validate_baseline)(config)
    return config


def vote_checks(key: str, vote: str, metric: str) -> list[tuple[bool, str]]:
    """The checks of a k-NN vote setting (``vote`` or ``fitness_vote``): known, and Euclidean if local-mean."""
    from .knn import VOTES

    return [(vote in VOTES, f"{key} {vote!r}: expected one of {', '.join(VOTES)}"),
            (vote == "majority" or metric in ("euclidean", "sqeuclidean"),
             f"{key} local-mean is Euclidean: expected metric euclidean, got {metric}")]


def validate_baseline(config: BaselineConfig) -> None:
    from .knn import METRICS, POSTPROCESSING

    checks = [
        (config.head in ("dense", "knn"), f"head {config.head!r}: expected dense or knn"),
        (config.optimizer in ("adam", "sgd"), f"optimizer {config.optimizer!r}: expected adam or sgd"),
        (config.epochs >= 1, f"epochs must be at least 1, got {config.epochs}"),
        (config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}"),
        (config.lr_step >= 1 and 0 < config.lr_gamma <= 1, "lr_step must be >= 1 and lr_gamma in (0, 1]"),
        (config.batch_size >= 1, f"batch_size must be at least 1, got {config.batch_size}"),
        (config.patience >= 1, f"patience must be at least 1, got {config.patience}"),
        (0 < config.validation_fraction < 1,
         f"validation_fraction must be between 0 and 1, got {config.validation_fraction}"),
        (config.n_neighbors >= 1, f"n_neighbors must be at least 1, got {config.n_neighbors}"),
        *vote_checks("vote", config.vote, config.metric),
        (config.metric in METRICS, f"metric {config.metric!r}: expected one of {', '.join(METRICS)}"),
        (config.postprocessing in POSTPROCESSING,
         f"postprocessing {config.postprocessing!r}: expected one of {', '.join(POSTPROCESSING)}"),
        (config.threads >= 0, f"threads must be 0 (auto) or positive, got {config.threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"bad configuration: {message}")


def validate(config: RunConfig) -> None:
    from .data import MAX_SHIFTS
    from .knn import METRICS, POSTPROCESSING
    from .optimisers import REGISTRY

    checks = [
        (config.method in REGISTRY, f"method {config.method!r}: expected one of {', '.join(REGISTRY)}"),
        (config.granularity in ("layer", "filter"), f"granularity {config.granularity!r}: expected layer or filter"),
        (config.metric in METRICS, f"metric {config.metric!r}: expected one of {', '.join(METRICS)}"),
        (config.postprocessing in POSTPROCESSING,
         f"postprocessing {config.postprocessing!r}: expected one of {', '.join(POSTPROCESSING)}"),
        (config.sweeps >= 1, f"sweeps must be at least 1, got {config.sweeps}"),
        (config.n_neighbors >= 1, f"n_neighbors must be at least 1, got {config.n_neighbors}"),
        *vote_checks("vote", config.vote, config.metric),
        *vote_checks("fitness_vote", config.fitness_vote, config.metric),
        (config.population_size == 0 or config.population_size >= 2,
         f"population_size must be 0 (auto) or at least 2, got {config.population_size}"),
        (config.sigma_scale > 0, f"sigma_scale must be positive, got {config.sigma_scale}"),
        (0 < config.validation_fraction < 1,
         f"validation_fraction must be between 0 and 1, got {config.validation_fraction}"),
        (config.soft_weight >= 0, f"soft_weight must be non-negative, got {config.soft_weight}"),
        (config.soft_score in ("knn", "nca"), f"soft_score {config.soft_score!r}: expected knn or nca"),
        (config.scoring in ("holdout", "loo"), f"scoring {config.scoring!r}: expected holdout or loo"),
        (config.temperature > 0, f"temperature must be positive, got {config.temperature}"),
        (config.image_size >= 4, f"image_size must be at least 4, got {config.image_size}"),
        (config.search_images == 0 or config.search_images >= 20,
         f"search_images must be 0 (all) or at least 20, got {config.search_images}"),
        (config.threads >= 0, f"threads must be 0 (auto) or positive, got {config.threads}"),
        (config.prototypes >= 0, f"prototypes must be 0 (every image) or positive, got {config.prototypes}"),
        (config.prototypes == 0 or config.vote == "majority",
         "a condensed bank (prototypes > 0) is voted by majority: drop --prototypes or use --vote majority"),
        (-1 <= config.bank_shifts <= MAX_SHIFTS,
         f"bank_shifts must be -1 (auto) or between 0 and {MAX_SHIFTS} pixels, got {config.bank_shifts}"),
        (0 <= config.query_shifts <= MAX_SHIFTS,
         f"query_shifts must be between 0 and {MAX_SHIFTS} pixels, got {config.query_shifts}"),
        (config.query_shifts == 0 or config.prototypes == 0,
         "test-time views (query_shifts) need the full bank: drop --prototypes or --query-shifts"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"bad configuration: {message}")


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML ({exc}); expected lines like "
                         "method = \"cma\"") from None
    return data


def config_from_toml(path: str | Path, cls: type = RunConfig, **overrides: Any) -> Any:
    """A config from a TOML file (flat keys, as written beside every run), then ``overrides``."""
    data = load_toml(path)
    data.pop("slicenet", None)  # provenance table written beside runs
    try:
        base = make_config(None, cls, **data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return make_config(base, cls, **overrides)


def to_toml(config: Any, provenance: dict[str, str] | None = None) -> str:
    import tomli_w

    document: dict[str, Any] = dict(config.to_dict())
    if provenance:
        document["slicenet"] = provenance
    return tomli_w.dumps(document)
