"""Run directories: what ``optimise`` writes, what ``evaluate`` / ``predict`` / ``--resume`` read.

    runs/<name>/
      config.toml          the resolved configuration (plus provenance)
      checkpoint.pkl       the search state after the latest generation (removed when the run ends)
      engine.safetensors   trunk, post-processing, bank and labels: all inference needs
      metrics.json         accuracies, sizes, timings
      history.csv          best and mean fitness per generation per block
      grid-checkpoint.json a condense budget search's scored cells (removed when the run ends)
      train-checkpoint.pt  a baseline's training state after its latest epoch (removed when the run ends)

Every file is written atomically, so a run killed at any moment leaves either the previous or the
next version of each file, and ``--resume`` continues from the latest checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_bytes, write_json, write_text
from .config import BaselineConfig, RunConfig, config_from_toml, load_toml, to_toml
from .engine import Engine, SourceTrunk
from .errors import InputError
from .search import SearchState

CONFIG, CHECKPOINT, ENGINE, METRICS, HISTORY, GRID_CHECKPOINT, TRAIN_CHECKPOINT = (
    "config.toml", "checkpoint.pkl", "engine.safetensors", "metrics.json", "history.csv", "grid-checkpoint.json",
    "train-checkpoint.pt")
HISTORY_FIELDS = ["block", "layer", "filter", "generation", "evaluations", "best_fitness", "mean_fitness",
                  "best_accuracy", "best_so_far"]
REQUIRED_METRICS = ("test_accuracy", "engine_bytes", "parameters", "method", "dataset")


def default_run_dir(config: RunConfig, root: str = "runs") -> Path:
    dataset = re.sub(r"[^A-Za-z0-9]+", "-", config.dataset.split(":")[0]).strip("-")
    return Path(root) / f"{config.method}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(path: Path, config: RunConfig | BaselineConfig, command: str) -> None:
    """Start a new run directory; refuses to overwrite a finished or unfinished run."""
    if (path / METRICS).exists():
        raise InputError(f"{path} already holds a finished run; choose another --out")
    if (path / CHECKPOINT).exists():
        raise InputError(f"{path} holds an unfinished run; continue it with --resume {path} "
                         "or choose another --out")
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file; expected a directory path")
    path.mkdir(parents=True, exist_ok=True)
    kind = "baseline" if isinstance(config, BaselineConfig) else "optimise"
    write_text(path / CONFIG, to_toml(config, {"version": __version__, "command": command, "kind": kind}))


def save_checkpoint(path: Path, state: SearchState, wall_seconds: float) -> None:
    # pickle, because the checkpoint must hold pycma's strategy object (pycma's own documented way to
    # save it); it is read back only through RestrictedUnpickler. The engine, which users share, is
    # safetensors.
    write_bytes(path / CHECKPOINT, pickle.dumps({"version": __version__, "state": state,
                                                 "wall_seconds": wall_seconds}, protocol=5))


# What a checkpoint may hold: classes of these packages, and the few functions numpy's and pycma's
# objects pickle by reference. Anything else (os.system, builtins.eval, subprocess...) is refused.
CHECKPOINT_PACKAGES = ("slicenet.", "cma.", "pyswarms.backend.", "numpy.")
CHECKPOINT_FUNCTIONS = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__bit_generator_ctor"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"), ("numpy.linalg", "eigh"),
    ("cma.options_parameters", "is_feasible"), ("cma.evolution_strategy", "_pass"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a slicenet checkpoint holds (``CHECKPOINT_PACKAGES`` classes and
    ``CHECKPOINT_FUNCTIONS``), so a crafted file cannot run a command when ``--resume`` reads it."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 -- pickle's protocol
        if (module, name) in CHECKPOINT_FUNCTIONS:
            return super().find_class(module, name)
        if module.startswith(CHECKPOINT_PACKAGES) or module in ("numpy", "cma"):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a slicenet checkpoint never holds")


def load_checkpoint(path: Path) -> tuple[SearchState, float]:
    file = path / CHECKPOINT
    if not file.is_file():
        if (path / METRICS).is_file():
            raise InputError(f"{path} is a finished run: nothing to resume")
        raise InputError(f"{path} has no {CHECKPOINT}: it is not an unfinished slicenet run; "
                         "expected a directory written by 'slicenet optimise'")
    try:
        payload = RestrictedUnpickler(io.BytesIO(file.read_bytes())).load()
        if not isinstance(payload, dict) or not isinstance(payload.get("state"), SearchState):
            raise pickle.UnpicklingError("it holds no search state")
        return payload["state"], float(payload["wall_seconds"])
    except pickle.UnpicklingError as exc:
        raise InputError(f"{file} is not a slicenet checkpoint ({exc}); refused to load it. Start the run "
                         "again without --resume") from None
    except Exception as exc:  # noqa: BLE001 -- any other unpickling failure means the same thing here
        raise InputError(f"{file} is damaged ({type(exc).__name__}); start the run again") from None


LEGACY_DEFAULTS = {"scoring": "holdout", "bank_shifts": 0}  # before these keys were written (slicenet 0.1)


def load_config(path: Path) -> RunConfig | BaselineConfig:
    if not (path / CONFIG).is_file():
        raise InputError(f"{path} is not a slicenet run directory (no {CONFIG}); expected a "
                         "directory written by 'slicenet optimise' or 'slicenet baseline'")
    data = load_toml(path / CONFIG)
    kind = data.get("slicenet", {}).get("kind", "optimise")
    if kind == "arch-search":
        raise InputError(f"{path} is an architecture search, not a run: continue it with 'slicenet arch-search "
                         f"--config {path / CONFIG} --resume --out {path}', or name one of its individuals/")
    if kind == "baseline":
        return config_from_toml(path / CONFIG, BaselineConfig)
    # A key missing from an older run's config meant what it meant then, not today's default (a
    # 0.1 run scored holdout, with a plain bank): resume and report must see what the run did.
    legacy = {key: value for key, value in LEGACY_DEFAULTS.items() if key not in data}
    return config_from_toml(path / CONFIG, RunConfig, **legacy)


def history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    fieldnames = list(history[0]) if history else HISTORY_FIELDS
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def write_results(path: Path, engine: Engine, *, metrics: dict, history: list[dict]) -> None:
    """Write the run's outputs; metrics.json last, since its presence marks a finished run."""
    write_bytes(path / ENGINE, engine.to_bytes())
    write_text(path / HISTORY, history_csv(history))
    write_json(path / METRICS, metrics)
    for checkpoint in (CHECKPOINT, GRID_CHECKPOINT, TRAIN_CHECKPOINT):
        (path / checkpoint).unlink(missing_ok=True)


def save_train_checkpoint(path: Path, config: BaselineConfig, state: dict) -> None:
    """A baseline's training state (``baseline.train``'s ``on_checkpoint``), with the settings it needs."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": "slicenet-train-checkpoint/1", "config": json.dumps(config.to_dict(), sort_keys=True),
                "state": state}, buffer)
    write_bytes(path / TRAIN_CHECKPOINT, buffer.getvalue())


def load_train_checkpoint(path: Path, config: BaselineConfig) -> dict | None:
    """The training state a killed baseline left in ``path`` (None if none), provided it was started with
    the same ``config``: else a one-line error, and the checkpoint is kept. Read with torch's
    weights_only loader: tensors and plain values, never code."""
    import torch

    file = path / TRAIN_CHECKPOINT
    if not file.is_file():
        return None
    try:
        saved = torch.load(io.BytesIO(file.read_bytes()), weights_only=True)
        same = saved["config"] == json.dumps(config.to_dict(), sort_keys=True)
        state = saved["state"]
    except Exception as exc:  # noqa: BLE001 -- any unreadable file: one line, never a traceback
        raise InputError(f"{file} is damaged ({type(exc).__name__}); delete it to train from the start") from None
    if not same:
        raise InputError(f"{path} holds an unfinished baseline of other settings; rerun the command that started "
                         "it to continue it, or choose another --out")
    return dict(state)


def load_grid_checkpoint(path: Path, fingerprint: dict) -> tuple[dict[str, list[dict]], float]:
    """The cells a killed ``condense --budget-kb`` scored in ``path`` (``{}`` if none) and the seconds
    it had run, provided it was started with the same ``fingerprint`` (settings, source engine, data):
    else a one-line error, and the checkpoint is kept."""
    file = path / GRID_CHECKPOINT
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        return {}, 0.0
    except (OSError, ValueError) as exc:
        raise InputError(f"{file} is damaged ({exc}); delete it to start the budget search again") from None
    if not isinstance(state, dict) or state.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        raise InputError(f"{path} holds an unfinished budget search of other settings, another source engine or "
                         "other data; rerun the command that started it to continue it, or choose another --out")
    return dict(state["cells"]), float(state.get("wall_seconds", 0.0))


def save_grid_checkpoint(path: Path, fingerprint: dict, cells: dict[str, list[dict]], wall_seconds: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / GRID_CHECKPOINT, {"format": "slicenet-grid-checkpoint/1", "fingerprint": fingerprint,
                                        "cells": cells, "wall_seconds": wall_seconds})


def load_metrics(path: Path) -> dict:
    file = path / METRICS
    try:
        metrics = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is not a finished slicenet run (no {METRICS}); expected a directory "
                         "written by 'slicenet optimise'") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{file} is not valid JSON ({exc}); re-run the command that wrote it") from None
    missing = [key for key in REQUIRED_METRICS if not isinstance(metrics, dict) or key not in metrics]
    if missing:
        raise InputError(f"{file} lacks {', '.join(missing)}; re-run the command that wrote it")
    return metrics


def load_engine(path: Path) -> Engine:
    return Engine.load(engine_file(path))


def load_trunk(path: Path) -> SourceTrunk:
    """A run's trunk (structure, weights, input size) without reading its bank."""
    return Engine.load_trunk(engine_file(path))


def engine_file(path: Path) -> Path:
    """A finished run's engine file; a path that is not one is a one-line error."""
    path = Path(path)
    if path.is_file():
        raise InputError(f"{path} is a file: pass the run directory ({path.parent}), not its engine file")
    if not path.is_dir():
        raise InputError(f"run directory {path} does not exist")
    if not (path / ENGINE).is_file():
        raise InputError(f"{path} has no {ENGINE}: not a finished slicenet run; expected a directory "
                         "written by 'slicenet optimise' (an interrupted one continues with --resume)")
    return path / ENGINE


def load_command(path: Path) -> str:
    """The command line that started the run (recorded in config.toml's [slicenet] table)."""
    return str(load_toml(path / CONFIG).get("slicenet", {}).get("command", ""))


def optimise(config: RunConfig, run_dir: Path, *, command: str, resume: bool = False, device: str = "cpu",
             cluster: str | None = None, workers: int = 0,
             on_start: Callable[[Any, SearchState], Callable[[dict], None] | None] | None = None) -> dict:
    """One whole ``slicenet optimise`` run: a new run directory (or, with ``resume``, the checkpointed
    one continued), the search, its engine and metrics.json; returns the metrics. Populations are
    scored on ``device``, or by Ray actors on ``cluster``. ``on_start(prepared, state)`` may return
    the per-generation callback (the CLI's progress bar). What a Ray task of ``fan_out`` runs."""
    from . import pipeline

    started = time.perf_counter()
    state, previous_wall = load_checkpoint(run_dir) if resume else (None, 0.0)
    prepared = pipeline.prepare(config)  # loads data: fails before anything is written
    # The device and the cluster answer, or fail in one line, before anything is written too.
    evaluator = make_evaluator(prepared.problem, device=device, cluster=cluster, workers=workers)
    if state is None:
        create_run_dir(run_dir, config, command)
        state = pipeline.initial_state(prepared)
    on_generation = on_start(prepared, state) if on_start is not None else None

    def on_checkpoint(current: SearchState) -> None:
        save_checkpoint(run_dir, current, previous_wall + time.perf_counter() - started)

    with evaluator:
        state = pipeline.run_search(prepared, state, evaluator=evaluator, on_generation=on_generation,
                                    on_checkpoint=on_checkpoint)
    info = {"method": config.method, "dataset": prepared.dataset.name}
    engine, extra = pipeline.final_engine(prepared, state, info=info)
    engine_seconds = previous_wall + time.perf_counter() - started  # the engine exists: the rest is evaluation
    metrics = {**pipeline.final_metrics(prepared, state, engine), **extra,
               "engine_seconds": round(engine_seconds, 3),
               "wall_seconds": round(previous_wall + time.perf_counter() - started, 3),
               "command": load_command(run_dir), "device": str(getattr(evaluator, "device", device)),
               "cluster": cluster or ""}
    write_results(run_dir, engine, metrics=metrics, history=state.history)
    return metrics


def make_evaluator(problem: Any, *, device: str = "cpu", cluster: str | None = None, workers: int = 0) -> Any:
    """The population evaluator a run asks for: in-process on ``device``, or Ray actors on ``cluster``."""
    if cluster:
        from .cluster import RayEvaluator

        return RayEvaluator(problem, cluster=cluster, workers=workers, device=device)
    from .evaluators import TorchEvaluator

    return TorchEvaluator(problem, device=device)


def optimise_or_resume(config: RunConfig, run_dir: Path, *, command: str, device: str = "cpu") -> dict:
    """A run of a fan-out: finished already (its metrics), checkpointed (continued) or new (started). A
    finished or checkpointed run of other settings is an error, never taken for this one's."""
    run_dir = Path(run_dir)
    if ((run_dir / METRICS).is_file() or (run_dir / CHECKPOINT).is_file()) and load_config(run_dir) != config:
        raise InputError(f"{run_dir} holds a run of other settings; rerun the command that started it to continue "
                         "it, or choose another --out")
    if (run_dir / METRICS).is_file():
        return load_metrics(run_dir)
    return optimise(config, run_dir, command=command, resume=(run_dir / CHECKPOINT).is_file(), device=device)
