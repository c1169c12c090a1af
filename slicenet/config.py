"""Configuration: frozen dataclasses with commented defaults, loadable from TOML, overridable from the
command line, and saved (resolved) beside every result.

Each field is written once, with ``option(default, help)``: the default, the one-line help that the
CLI shows for its flag (``--population-size`` for ``population_size``), and nothing else. Each
class's ``checks`` lists its own rules; ``make_config`` applies overrides and runs them, so a TOML
file, a flag and a library caller all meet the same checks with the same messages.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from .errors import InputError

AUTO_SHIFTS_MAX_TRAIN = 10_000  # bank_shifts = -1: shifted copies for training sets up to this size
Config = TypeVar("Config")


def option(default: Any, help: str, *, alias: str = "") -> Any:  # noqa: A002 (argparse's word)
    """A dataclass field with its default and the help line of its command-line flag (``alias``: a
    second spelling of the flag, such as ``--from`` for ``--init-from``)."""
    return field(default=default, metadata={"help": help, "alias": alias})


def help_of(cls: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(cls) if f.name == name)


class Checked:
    """A configuration that validates itself: ``checks`` yields (ok, message) pairs."""

    def checks(self) -> list[tuple[bool, str]]:
        return []

    def validate(self) -> None:
        seed = getattr(self, "seed", 0)  # every seeded configuration: numpy's generators take no negative seed
        for ok, message in [(seed >= 0, f"--seed must be 0 or positive, got {seed}"), *self.checks()]:
            if not ok:
                raise InputError(f"bad configuration: {message}")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


def vote_checks(key: str, vote: str, metric: str) -> list[tuple[bool, str]]:
    """The checks of a k-NN vote setting (``vote`` or ``fitness_vote``): a registered bank head, and
    one whose metric it can rank by (the local-mean rule is Euclidean)."""
    from .heads import BANK_HEADS

    if vote not in BANK_HEADS:
        return [(False, f"{key} {vote!r}: expected one of {', '.join(BANK_HEADS)}")]
    head = BANK_HEADS[vote]
    return [(metric in head.METRICS,
             f"{key} {vote} is {head.METRICS_NAME}: expected metric {head.METRICS[0]}, got {metric}")]


def _postprocessing_checks(config: Any) -> list[tuple[bool, str]]:
    from .knn import METRICS, POSTPROCESSING

    return [(config.metric in METRICS, f"metric {config.metric!r}: expected one of {', '.join(METRICS)}"),
            (config.postprocessing in POSTPROCESSING,
             f"postprocessing {config.postprocessing!r}: expected one of {', '.join(POSTPROCESSING)}")]


@dataclass(frozen=True)
class RunConfig(Checked):
    """``slicenet optimise``: a gradient-free search of the trunk, then a k-NN engine."""

    dataset: str = option("mnist", "mnist (default), mnist:<dir>, fashion-mnist[:<dir>], digits, folder:<dir>")
    method: str = option("cma", "optimiser: cma (default), pso, ga")
    preset: str = option("auto", "trunk preset: auto (default), default, lenet, wide, radu, tiny, pixels")
    granularity: str = option("layer", "serial search unit: layer (default) or filter (one filter at a time)")
    generations: tuple[int, ...] = option((100, 400), "generation budget per layer: one number for all, or one "
                                          "per layer, the last serving any later layers (filters share "
                                          "their layer's; radu: 30 250)")
    sweeps: int = option(1, "passes over the layers; later passes re-tune each layer given the others")
    population_size: int = option(0, "candidates per generation (0 = the method's default for the dimension)")
    sigma_scale: float = option(0.5, "initial search spread, as a multiple of the layer's He-init std")
    n_neighbors: int = option(9, "k of the k-NN head (the reference's k=9)")
    vote: str = option("majority", "k-NN head: majority (of the k nearest) or local-mean (nearest mean of each "
                       "class's k nearest; radu: local-mean)")
    fitness_vote: str = option("majority", "the head the search scores kernels with: majority or local-mean "
                               "(about twice the time per generation)")
    metric: str = option("euclidean", "k-NN distance: euclidean, sqeuclidean, cosine, manhattan")
    postprocessing: str = option("centre_l2", "feature post-processing, part of the engine: centre_l2, l2, none")
    validation_fraction: float = option(0.25, "holdout scoring: share of the scored images held out as queries")
    scoring: str = option("loo", "loo (every scored image vs all the others) or holdout (queries vs the rest)")
    search_images: int = option(1000, "training images scored per generation, a fresh stratified subset "
                                "(0 = all; radu: 300)")
    soft_weight: float = option(1.0, "weight of the smooth k-NN score that breaks accuracy ties")
    soft_score: str = option("knn", "smooth score: knn (softmax over the k neighbours) or nca (over the bank)")
    temperature: float = option(0.05, "softmax temperature of that smooth score")
    image_size: int = option(28, "folder datasets only: images are resized to this square size")
    prototypes: int = option(0, "LVQ prototypes per class in the final bank (k-means start, LVQ2.1 refined, "
                             "as 'slicenet condense'); 0 = every training image")
    bank_shifts: int = option(-1, "bank copies shifted by 1..n pixels (4 per step); 0 = none; -1 = auto: 1 for "
                              f"up to {AUTO_SHIFTS_MAX_TRAIN:,} training images of 16 pixels or more")
    query_shifts: int = option(0, "test-time views: each query and its copies shifted 1..n px vote together "
                               "(0 = the query alone); pair with --bank-shifts n")
    seed: int = option(0, "seeds initial weights, splits and optimiser: same seed, same run")
    threads: int = option(0, "torch CPU threads (0 = torch's default: all cores)")
    init_from: str = option("", "transfer: start from this run's trunk and weights (its preset and input size; "
                            "what 'slicenet transfer' sets)")
    tune: str = option("all", "with --init-from: the layers (0,1) or filters (0.3,1.2) searched; all or none")
    keep: int = option(0, "with --init-from: layers kept from the source (0 = all); later ones re-initialised and "
                       "searched")

    def checks(self) -> list[tuple[bool, str]]:
        from .data import shift_check
        from .optimisers import REGISTRY

        return [
            (self.method in REGISTRY, f"method {self.method!r}: expected one of {', '.join(REGISTRY)}"),
            (self.granularity in ("layer", "filter"),
             f"granularity {self.granularity!r}: expected layer or filter"),
            *_postprocessing_checks(self),
            (self.sweeps >= 1, f"sweeps must be at least 1, got {self.sweeps}"),
            (self.n_neighbors >= 1, f"n_neighbors must be at least 1, got {self.n_neighbors}"),
            *vote_checks("vote", self.vote, self.metric),
            *vote_checks("fitness_vote", self.fitness_vote, self.metric),
            (self.population_size == 0 or self.population_size >= 2,
             f"population_size must be 0 (auto) or at least 2, got {self.population_size}"),
            (self.sigma_scale > 0, f"sigma_scale must be positive, got {self.sigma_scale}"),
            (0 < self.validation_fraction < 1,
             f"validation_fraction must be between 0 and 1, got {self.validation_fraction}"),
            (self.soft_weight >= 0, f"soft_weight must be non-negative, got {self.soft_weight}"),
            (self.soft_score in ("knn", "nca"), f"soft_score {self.soft_score!r}: expected knn or nca"),
            (self.scoring in ("holdout", "loo"), f"scoring {self.scoring!r}: expected holdout or loo"),
            (self.temperature > 0, f"temperature must be positive, got {self.temperature}"),
            (self.image_size >= 4, f"image_size must be at least 4, got {self.image_size}"),
            (self.search_images == 0 or self.search_images >= 20,
             f"search_images must be 0 (all) or at least 20, got {self.search_images}"),
            (self.threads >= 0, f"threads must be 0 (auto) or positive, got {self.threads}"),
            (self.prototypes >= 0, f"prototypes must be 0 (every image) or positive, got {self.prototypes}"),
            (self.keep >= 0, f"keep must be 0 (every layer) or positive, got {self.keep}"),
            (bool(self.init_from) or (self.tune == "all" and self.keep == 0),
             "tune and keep choose what a transfer re-searches: give --init-from SOURCE_RUN (or use slicenet "
             "transfer)"),
            (self.prototypes == 0 or self.vote == "majority",
             "a condensed bank (prototypes > 0) is voted by majority: drop --prototypes or use --vote majority"),
            shift_check("bank_shifts", self.bank_shifts, minus_one="auto"),
            shift_check("query_shifts", self.query_shifts),
            (self.query_shifts == 0 or self.prototypes == 0,
             "test-time views (query_shifts) need the full bank: drop --prototypes or --query-shifts"),
        ]


@dataclass(frozen=True)
class BaselineConfig(Checked):
    """``slicenet baseline``: the same trunk trained by backprop, the baseline the k-NN engines are judged by."""

    dataset: str = option("mnist", "as for optimise (default mnist)")
    preset: str = option("auto", "trunk preset, as for optimise")
    hidden: tuple[int, ...] = option((128,), "width of the dense hidden layer; several widths = one run each")
    head: str = option("dense", "dense: the trained network as is; knn: the trained trunk + a k-NN head "
                       "(\"k-NN slicing\")")
    epochs: int = option(5, "maximum epochs (early stopping may end sooner)")
    optimizer: str = option("adam", "adam or sgd (momentum 0.9, step learning-rate schedule)")
    learning_rate: float = option(0.001, "learning rate (Adam's default; about 0.05 with sgd)")
    lr_step: int = option(5, "sgd: epochs between learning-rate drops")
    lr_gamma: float = option(0.1, "sgd: factor of each drop")
    batch_size: int = option(64, "mini-batch size")
    patience: int = option(3, "early stopping: epochs without a better validation accuracy")
    augment: bool = option(False, "random shifts (up to 2 px) and rotations (up to 10 degrees)")
    validation_fraction: float = option(0.1, "training images held out for early stopping")
    n_neighbors: int = option(9, "head knn: k")
    vote: str = option("majority", "head knn: majority or local-mean")
    metric: str = option("euclidean", "head knn: distance")
    postprocessing: str = option("centre_l2", "head knn: feature post-processing")
    image_size: int = option(28, "folder datasets only: images are resized to this square size")
    seed: int = option(0, "seed for init, split and batches")
    threads: int = option(0, "torch CPU threads (0 = all cores)")
    init_from: str = option("", "fine-tune this run's trunk (its weights; the dataset is resized to its input, "
                            "@H): backprop transfer, beside slicenet transfer's gradient-free one", alias="--from")
    freeze: str = option("", "with --init-from: trunk layers held fixed, 0,1 (0-based), all or none (default)")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.head in ("dense", "knn"), f"head {self.head!r}: expected dense or knn"),
            (self.optimizer in ("adam", "sgd"), f"optimizer {self.optimizer!r}: expected adam or sgd"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (self.lr_step >= 1 and 0 < self.lr_gamma <= 1, "lr_step must be >= 1 and lr_gamma in (0, 1]"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (0 < self.validation_fraction < 1,
             f"validation_fraction must be between 0 and 1, got {self.validation_fraction}"),
            (self.n_neighbors >= 1, f"n_neighbors must be at least 1, got {self.n_neighbors}"),
            *vote_checks("vote", self.vote, self.metric),
            *_postprocessing_checks(self),
            (self.threads >= 0, f"threads must be 0 (auto) or positive, got {self.threads}"),
            (bool(self.init_from) or not self.freeze, "freeze names layers of a source trunk: give --init-from "
             "SOURCE_RUN"),
        ]


# Defaults chosen for a preset, used where neither a flag nor the config file sets them. radu (the
# reference's trunk, 18,816 parameters, 9,216 features) costs ~100x a default candidate: 300 images a
# generation and 30 + 250 generations fit its search in 23 min on 2 cores. Its engine votes by local
# means: on the same searched trunk 98.1 % against the majority vote's 96.5 % (results/scale/README.md).
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "radu": {"search_images": 300, "generations": (30, 250), "vote": "local-mean"}}


def with_preset_defaults(config: RunConfig, given: set[str]) -> RunConfig:
    """``config`` with its preset's own defaults (``PRESET_DEFAULTS``) for the keys not in ``given``."""
    chosen = {k: v for k, v in PRESET_DEFAULTS.get(config.preset, {}).items() if k not in given}
    return make_config(config, RunConfig, **chosen) if chosen else config


def _coerce(cls: type, name: str, value: Any) -> Any:
    default = getattr(cls(), name)
    where = f"--{name.replace('_', '-')} (config key {name})"  # a flag or a TOML key: the message names both
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
            raise InputError(f"{where}: expected one or more positive integers, got {value!r}")
        return tuple(items)
    if default is None:  # an optional number (condense's budgets)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return _finite(where, value)
    if (not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int))) or (
            isinstance(value, bool) and not isinstance(default, bool)):  # TOML's true is not the number 1
        raise InputError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return _finite(where, type(default)(value))


def _finite(where: str, value: Any) -> Any:
    """``value``, unless it is a float that is infinite or not a number (argparse's float and TOML both
    read "inf" and "nan"; no option of slicenet means anything by them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {value}")
    return value


def make_config(base: Config | None = None, cls: type[Config] = RunConfig,  # type: ignore[assignment]
                **overrides: Any) -> Config:
    """A config of ``cls`` from ``base`` (default: the defaults) with ``overrides`` (``None`` values
    skipped: a flag not given) applied, coerced and checked."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    values = {name: _coerce(cls, name, value) for name, value in overrides.items() if value is not None}
    config = dataclasses.replace(base or cls(), **values)  # type: ignore[type-var]
    config.validate()  # type: ignore[attr-defined]
    return config


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


def config_from_toml(path: str | Path, cls: type[Config] = RunConfig,  # type: ignore[assignment]
                     **overrides: Any) -> Config:
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

    document: dict[str, Any] = {key: value for key, value in config.to_dict().items() if value is not None}
    if provenance:
        document["slicenet"] = provenance
    return tomli_w.dumps(document)
