"""The ``slicenet`` command: a thin argparse shell over ``pipeline`` and ``runs``.

Bad input of any kind ends in one line on stderr and exit status 2 (``InputError``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import __version__
from .errors import InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's status), no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


CONFIG_FLAGS = {  # flag -> (config key, type, help)
    "--dataset": ("dataset", str, "mnist (default), mnist:<dir>, fashion-mnist[:<dir>], digits, folder:<dir>"),
    "--method": ("method", str, "optimiser: cma (default), pso, ga"),
    "--preset": ("preset", str, "trunk preset: auto (default), default, lenet, wide, radu, tiny, pixels"),
    "--granularity": ("granularity", str, "layer (default) or filter: optimise one filter at a time"),
    "--sweeps": ("sweeps", int, "passes over the layers (later passes re-tune each layer)"),
    "--population-size": ("population_size", int, "candidates per generation (0 = method default)"),
    "--sigma-scale": ("sigma_scale", float, "initial spread as a multiple of the He-init std"),
    "--n-neighbors": ("n_neighbors", int, "k of the k-NN head (default 9)"),
    "--vote": ("vote", str, "k-NN head: majority (default) or local-mean (nearest mean of each class's k nearest)"),
    "--fitness-vote": ("fitness_vote", str, "the head the search scores with: majority (default) or local-mean"),
    "--metric": ("metric", str, "k-NN distance: euclidean, sqeuclidean, cosine, manhattan"),
    "--postprocessing": ("postprocessing", str, "feature post-processing: centre_l2, l2, none"),
    "--validation-fraction": ("validation_fraction", float, "share of the scored images used as queries"),
    "--search-images": ("search_images", int, "training images scored per generation (0 = all)"),
    "--scoring": ("scoring", str, "loo (default: each scored image vs all others) or holdout (queries vs the rest)"),
    "--soft-weight": ("soft_weight", float, "weight of the smooth k-NN score in the fitness"),
    "--soft-score": ("soft_score", str, "smooth score: knn (k neighbours) or nca (whole bank)"),
    "--temperature": ("temperature", float, "softmax temperature of the smooth k-NN score"),
    "--image-size": ("image_size", int, "folder datasets: resize images to this size"),
    "--prototypes": ("prototypes", int, "k-means prototypes per class in the bank (0 = every training image)"),
    "--bank-shifts": ("bank_shifts", int, "bank copies shifted 1..n px (0 = none, -1 = auto: 1 up to 10,000 images)"),
    "--query-shifts": ("query_shifts", int, "test-time views: each query and its copies shifted 1..n px, votes "
                       "summed (0 = none; pair with --bank-shifts n)"),
    "--seed": ("seed", int, "seed for weights, splits and optimiser (same seed, same run)"),
    "--threads": ("threads", int, "torch CPU threads (0 = all cores)"),
}


BASELINE_FLAGS = {
    "--dataset": ("dataset", str, "as for optimise (default mnist)"),
    "--preset": ("preset", str, "trunk preset, as for optimise"),
    "--head": ("head", str, "dense (default) or knn: the trained trunk with a k-NN head"),
    "--epochs": ("epochs", int, "maximum epochs (default 5)"),
    "--optimizer": ("optimizer", str, "adam (default) or sgd (momentum 0.9, step schedule)"),
    "--learning-rate": ("learning_rate", float, "learning rate (default 0.001)"),
    "--lr-step": ("lr_step", int, "sgd: epochs between learning-rate drops"),
    "--lr-gamma": ("lr_gamma", float, "sgd: factor of each drop"),
    "--batch-size": ("batch_size", int, "mini-batch size (default 64)"),
    "--patience": ("patience", int, "early stopping patience in epochs (default 3)"),
    "--validation-fraction": ("validation_fraction", float, "training images held out for early stopping"),
    "--n-neighbors": ("n_neighbors", int, "head knn: k (default 9)"),
    "--vote": ("vote", str, "head knn: majority (default) or local-mean"),
    "--seed": ("seed", int, "seed for init, split and batches"),
    "--threads": ("threads", int, "torch CPU threads (0 = all cores)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slicenet", description="Gradient-free, k-NN sliced CNNs for edge boards.")
    parser.add_argument("--version", action="version", version=f"slicenet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config_flags(name: str, text: str, flags: dict) -> argparse.ArgumentParser:
        """A subcommand whose options mirror a config dataclass: --config TOML, then flags over it."""
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", help="TOML file of options (flags override it)")
        for flag, (key, kind, help_text) in flags.items():
            sub.add_argument(flag, dest=key, type=kind, default=None, help=help_text)
        return sub

    optimise = with_config_flags("optimise", "optimise a trunk without gradients; write a run directory",
                                 CONFIG_FLAGS)
    optimise.add_argument("--generations", type=int, nargs="+", default=None,
                          help="generation budget per layer (one number for all, or one per layer)")
    optimise.add_argument("--out", type=Path, help="run directory (default runs/<method>-<dataset>-<time>)")
    optimise.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run")
    optimise.add_argument("--quiet", action="store_true", help="no progress bar")
    optimise.set_defaults(func=cmd_optimise)

    baseline = with_config_flags("baseline", "train the same trunk with backprop (dense or k-NN head)",
                                 BASELINE_FLAGS)
    baseline.add_argument("--hidden", type=int, nargs="+", default=None,
                          help="dense hidden widths, one run each (default 128)")
    baseline.add_argument("--augment", action="store_true", default=None, help="random shifts and rotations")
    baseline.add_argument("--out", type=Path, help="run directory (several widths: one sub-folder each)")
    baseline.add_argument("--quiet", action="store_true", help="no progress bar")
    baseline.set_defaults(func=cmd_baseline)

    condense = commands.add_parser("condense", help="compact a run's engine: fewer prototypes, dimensions, bytes")
    condense.add_argument("run", type=Path)
    size = condense.add_mutually_exclusive_group(required=True)
    size.add_argument("--prototypes", type=int, help="prototypes per class")
    size.add_argument("--budget-kb", type=float, help="the most accurate engine within this many KB (1 KB = 1000 B)")
    condense.add_argument("--budget-macs", type=int,
                          help="with --budget-kb: at most this many multiply-adds per image (trunk and head)")
    condense.add_argument("--splits", type=int, default=1,
                          help="with --budget-kb: rank settings by their mean validation accuracy over this many "
                               "random fit / validation splits (default 1; more for small datasets)")
    condense.add_argument("--method", default="lvq",
                          help="lvq (default), kmeans, cnn, optimised or joint (the LVQ engine validation picks, "
                               "then the trunk's last layer tuned to its bank, kept if validation agrees)")
    condense.add_argument("--dims", type=int, default=0, help="PCA feature dimensions (0 = all)")
    condense.add_argument("--precision", default="fp32", help="bank and weight storage: fp32, fp16, int8")
    condense.add_argument("--n-neighbors", type=int, default=0, help="k (0 = chosen by validation)")
    condense.add_argument("--metric", default="", help="cosine or euclidean (default: chosen by validation)")
    condense.add_argument("--generations", type=int, default=100,
                          help="methods optimised and joint: generations of the optimiser (joint: per round)")
    condense.add_argument("--epochs", type=int, default=4, help="method lvq: passes over the training images")
    condense.add_argument("--window", type=float, default=0.0,
                          help="method lvq: LVQ2.1 window, between 0 and 1 (default 0: chosen by validation "
                               "among 0.1, 0.2, 0.3)")
    condense.add_argument("--bank-shifts", type=int, default=-1,
                          help="fit prototypes to the images plus copies shifted 1..n px (-1 = as the source bank)")
    condense.add_argument("--seed", type=int, default=0)
    condense.add_argument("--out", type=Path, help="run directory (default <run>-p<N> or <run>-<B>kb)")
    condense.set_defaults(func=cmd_condense)

    export = commands.add_parser("export", help="export a run's engine for a target and verify it")
    export.add_argument("run", type=Path)
    export.add_argument("--target", required=True, help="onnx, openvino, jetson or ncs2")
    export.add_argument("--out", type=Path, default=Path("export"), help="bundle root (default export/)")
    export.add_argument("--batch", type=int, default=1, help="static batch of the exported graph (default 1)")
    export.add_argument("--verify-images", type=int, default=0,
                        help="test images to verify on (default 0: the whole test split)")
    export.set_defaults(func=cmd_export)

    bench = commands.add_parser("bench", help="time exported bundles (interleaved), estimate board latency, "
                                "or ingest a board result")
    bench.add_argument("bundles", nargs="*", type=Path,
                       help="exported bundle folders (export/<run>/<target>); run directories with --runtime torch")
    bench.add_argument("--runtime", default="onnxruntime", help="onnxruntime (default), openvino or torch")
    bench.add_argument("--threads", type=int, default=0, help="runtime threads (0 = runtime default)")
    bench.add_argument("--count", type=int, default=1000, help="timed inferences per bundle")
    bench.add_argument("--warmup", type=int, default=100, help="untimed inferences per bundle first")
    bench.add_argument("--rounds", type=int, default=5,
                       help="rounds, each with freshly opened sessions and the order rotated; a difference "
                            "counts where every round shows it")
    bench.add_argument("--batch", type=int, default=None,
                       help="images per inference: checked against the bundles (export them with --batch N)")
    bench.add_argument("--json", type=Path, help="also write the list of results to this file")
    bench.add_argument("--results", type=Path, default=Path("results/bench"), help="per-run JSON folder")
    bench.add_argument("--profiles", type=Path, default=None, help="board profiles (default devices/profiles.toml)")
    bench.add_argument("--ingest", type=Path, help="store a result.json written by devices/run_engine.py")
    bench.set_defaults(func=cmd_bench)

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--dataset", help="evaluate on this dataset's test split (default: the run's)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify image files with a run's engine")
    predict.add_argument("run", type=Path)
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    report = commands.add_parser("report", help="regenerate results/ (REPORT.md, runs.csv) from run directories")
    report.add_argument("runs", nargs="*", type=Path, help="run directories (default: every finished run in runs/)")
    report.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    report.set_defaults(func=cmd_report)
    return parser


def _progress(total: int, done: int, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="gen", disable=quiet, dynamic_ncols=True, file=sys.stderr)

    def on_generation(event: dict) -> None:
        bar.set_description(event["label"])
        bar.set_postfix(best_fitness=f"{event['best_so_far']:.4f}", val_acc=f"{event['best_accuracy']:.3f}")
        bar.update(1)

    return bar, on_generation


def cmd_optimise(args: argparse.Namespace) -> int:
    from . import pipeline, runs
    from .config import RunConfig, config_from_toml, make_config
    from .search import block_generations, make_blocks

    overrides = {key: getattr(args, key) for key, _, _ in CONFIG_FLAGS.values()}
    overrides["generations"] = args.generations
    started = time.perf_counter()
    if args.resume is not None:
        given = [flag for flag, (key, _, _) in CONFIG_FLAGS.items() if overrides[key] is not None]
        given += ["--generations"] * (args.generations is not None) + ["--config"] * (args.config is not None)
        given += ["--out"] * (args.out is not None)
        if given:
            raise InputError(f"--resume takes its configuration from {args.resume / runs.CONFIG}; "
                             f"drop {', '.join(given)}")
        run_dir = args.resume
        loaded = runs.load_config(run_dir)
        if not isinstance(loaded, RunConfig):
            raise InputError(f"{run_dir} is a baseline run, not an optimise run: nothing to resume")
        config = loaded
        state, previous_wall = runs.load_checkpoint(run_dir)
    else:
        config = config_from_toml(args.config, **overrides) if args.config else make_config(**overrides)
        run_dir = args.out or runs.default_run_dir(config)
        previous_wall = 0.0
        state = None
    prepared = pipeline.prepare(config)  # loads data: fails before anything is written
    if state is None:
        runs.create_run_dir(run_dir, config, shlex.join(["slicenet", *args.argv]))
        state = pipeline.initial_state(prepared)

    settings = pipeline.search_settings(config)
    blocks = make_blocks(prepared.spec, settings.granularity, settings.sweeps)
    total = sum(block_generations(settings, prepared.spec, block) for block in blocks)
    bar, on_generation = _progress(total, len(state.history), args.quiet)

    def on_checkpoint(current) -> None:
        runs.save_checkpoint(run_dir, current, previous_wall + time.perf_counter() - started)

    with bar, _keep_freed_memory():
        state = pipeline.run_search(prepared, state, on_generation, on_checkpoint)
    info = {"method": config.method, "dataset": prepared.dataset.name, "run": str(run_dir)}
    engine = pipeline.build_engine(prepared, state, info=info)
    full_bank = None
    if config.prototypes:
        from .condense import CompactSettings, accuracy, choose_and_build

        full_bank = accuracy(engine, prepared.dataset.x_test, prepared.dataset.y_test)
        engine, _, _ = choose_and_build(engine, prepared.dataset.x_train, prepared.dataset.y_train,
                                        CompactSettings("lvq", config.prototypes, 0, "fp32"),
                                        config.seed, shifts=prepared.bank_shifts)
    engine_seconds = previous_wall + time.perf_counter() - started  # the engine exists: the rest is evaluation
    metrics = pipeline.final_metrics(prepared, state, engine)
    if full_bank is not None:
        metrics["full_bank_test_accuracy"] = full_bank
    metrics["engine_seconds"] = round(engine_seconds, 3)
    metrics["wall_seconds"] = round(previous_wall + time.perf_counter() - started, 3)
    metrics["command"] = runs.load_command(run_dir)
    metrics["slicenet_version"] = __version__
    runs.write_results(run_dir, engine, metrics, state.history)
    print(f"test accuracy {metrics['test_accuracy']:.4f} (random init {metrics['random_init_test_accuracy']:.4f}, "
          f"validation {metrics['validation_accuracy']:.4f}); engine {metrics['engine_bytes']:,} bytes; "
          f"{metrics['evaluations']:,} evaluations in {metrics['wall_seconds']:.0f} s -> {run_dir}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm import tqdm

    from . import baseline, pipeline, runs
    from .config import BaselineConfig, config_from_toml, make_config

    overrides = {key: getattr(args, key) for key, _, _ in BASELINE_FLAGS.values()}
    overrides.update(hidden=args.hidden, augment=args.augment)
    config = (config_from_toml(args.config, BaselineConfig, **overrides) if args.config
              else make_config(None, BaselineConfig, **overrides))
    dataset, preset, spec, mean, std = pipeline.load_inputs(config.dataset, config.preset, config.image_size,
                                                            config.threads)
    if config.head == "knn":
        pipeline.check_vote(config.vote, config.n_neighbors, dataset)
    command = shlex.join(["slicenet", *args.argv])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = dataset.name.split(":")[0]
    for hidden in config.hidden:
        started = time.perf_counter()
        single = dataclasses.replace(config, hidden=(hidden,))
        label = f"{config.head}{hidden}" if config.head == "dense" else f"backprop{hidden}-knn"
        if args.out is None:
            run_dir = Path("runs") / f"baseline-{label}-{name}-{stamp}"
        else:
            run_dir = args.out if len(config.hidden) == 1 else args.out / label
        runs.create_run_dir(run_dir, single, command)
        bar = tqdm(total=config.epochs, unit="epoch", disable=args.quiet, file=sys.stderr, desc=label)

        def on_epoch(row: dict, bar=bar) -> None:
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_acc=f"{row['validation_accuracy']:.4f}")
            bar.update(1)

        with bar:
            model, history, summary = baseline.train(dataset, spec, hidden, single, mean, std, on_epoch)
        info = {"method": f"backprop-{config.optimizer}", "dataset": dataset.name, "run": str(run_dir)}
        engine = baseline.to_engine(model, dataset, single, mean, std, info)
        untrained = baseline.to_engine(baseline.Network(spec, dataset.image_size, hidden, dataset.n_classes,
                                                        config.seed), dataset, single, mean, std, info)
        test = pipeline.evaluate(engine, dataset.x_test, dataset.y_test)
        metrics = {
            "method": f"backprop-{config.optimizer}", "head": config.head, "hidden": hidden,
            "dataset": dataset.name, "preset": preset, "granularity": "",
            "test_accuracy": test["accuracy"], "per_class_accuracy": test["per_class_accuracy"],
            "confusion_matrix": test["confusion_matrix"],
            "random_init_test_accuracy": pipeline.evaluate(untrained, dataset.x_test, dataset.y_test)["accuracy"],
            **summary,
            "parameters": engine.parameters, "engine_bytes": engine.engine_bytes,
            "multiply_adds": engine.multiply_adds, "evaluations": summary["gradient_steps"] * config.batch_size,
            "wall_seconds": round(time.perf_counter() - started, 3), "n_train": int(len(dataset.y_train)),
            "n_test": int(len(dataset.y_test)), "seed": config.seed, "augment": config.augment,
            "command": command, "slicenet_version": __version__, "machine": pipeline.machine_info(),
        }
        runs.write_results(run_dir, engine, metrics, history)
        print(f"{label}: test accuracy {metrics['test_accuracy']:.4f} after {summary['epochs']} epochs; "
              f"{metrics['parameters']:,} parameters, engine {metrics['engine_bytes']:,} bytes -> {run_dir}")
    return 0


def cmd_condense(args: argparse.Namespace) -> int:
    with _keep_freed_memory():  # its cma / pso / ga / joint searches, like optimise's
        return _condense(args)


def _condense(args: argparse.Namespace) -> int:
    from . import condense, runs
    from .atomic import write_text
    from .config import to_toml
    from .data import load_dataset
    from .pipeline import machine_info

    started = time.perf_counter()
    engine = runs.load_engine(args.run)
    source = runs.load_metrics(args.run)
    config = runs.load_config(args.run)
    if args.method not in condense.METHODS:
        raise InputError(f"unknown reduction method {args.method!r}: expected one of {', '.join(condense.METHODS)}")
    if args.precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"unknown precision {args.precision!r}: expected fp32, fp16 or int8")
    if args.metric not in ("", *condense.COMPACT_METRICS):
        raise InputError(f"unknown metric {args.metric!r} for condense: expected cosine or euclidean")
    if args.method == "joint" and not engine.spec.layers:
        raise InputError(f"--method joint tunes the trunk's last convolution, and {args.run} has none (preset "
                         "pixels): choose another --method")
    if args.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {args.epochs}")
    if not 0.0 <= args.window < 1.0:
        raise InputError(f"--window must be at least 0 (0 = chosen by validation) and below 1, got {args.window:g}")
    if args.budget_macs is not None and args.budget_kb is None:
        raise InputError("--budget-macs limits the search of --budget-kb: give --budget-kb too")
    if args.splits != 1 and args.budget_kb is None:
        raise InputError("--splits ranks the settings of --budget-kb: give --budget-kb too")
    if args.splits < 1:
        raise InputError(f"--splits must be at least 1, got {args.splits}")
    if args.budget_macs is not None and args.budget_macs < 1:
        raise InputError(f"--budget-macs must be a positive number of multiply-adds, got {args.budget_macs}")
    if args.bank_shifts < -1:
        raise InputError(f"--bank-shifts must be -1 (as the source run), 0 or positive, got {args.bank_shifts}")
    shifts = int(source.get("bank_shifts", 0)) if args.bank_shifts == -1 else args.bank_shifts
    if args.prototypes is not None and args.prototypes < 1:
        raise InputError(f"--prototypes must be at least 1, got {args.prototypes}")
    if args.budget_kb is not None and args.budget_kb <= 0:
        raise InputError(f"--budget-kb must be positive, got {args.budget_kb}")
    dataset = load_dataset(config.dataset, engine.image_size[0])
    run = Path(args.run)
    if args.budget_kb is not None:
        out = args.out or run.with_name(f"{run.name}-{args.budget_kb:g}kb")
        compact, chosen, trials = condense.budget_search(engine, dataset.x_train, dataset.y_train,
                                                         int(args.budget_kb * 1000), args.seed, args.method,
                                                         metrics=(args.metric,) if args.metric else
                                                         condense.COMPACT_METRICS, epochs=args.epochs,
                                                         shifts=shifts, budget_macs=args.budget_macs,
                                                         splits=args.splits, generations=args.generations)
        front = condense.frontier(trials)
        within = f"{args.budget_kb:g} KB" + (f" and {args.budget_macs:,} MACs" if args.budget_macs else "")
        splits = f", mean of {args.splits} splits" if args.splits > 1 else ""
        print(f"accuracy / size frontier ({len(trials)} engines within {within}, validation accuracy{splits}):")
        for point in front:
            window = f", window {point['window']:g}" if point["window"] else ""
            print(f"  {point['engine_bytes']:>9,} B  {point['multiply_adds']:>9,} MACs  "
                  f"{100 * point['validation_accuracy']:6.2f} %  {point['prototypes']} per class, "
                  f"dims {point['dims'] or 'all'}, {point['precision']}, k={point['n_neighbors']}, "
                  f"{point['metric']}{window}")
        if args.method == "joint":
            print("method joint: the pick's last layer tuned to its bank, validation accuracy "
                  f"{100 * chosen['lvq_validation_accuracy']:.2f} -> {100 * chosen['validation_accuracy']:.2f} %"
                  if chosen["method"] == "joint" else
                  "method joint: tuning the pick's last layer did not raise its validation accuracy; "
                  "kept the LVQ engine")
        extra = {"budget_bytes": int(args.budget_kb * 1000), "frontier": front, "validation_accuracy":
                 chosen["validation_accuracy"], "compact": {**chosen, "bank_shifts": shifts}}
        if args.budget_macs is not None:
            extra["budget_macs"] = args.budget_macs
        if args.splits > 1:
            extra["validation_splits"] = args.splits
    else:
        out = args.out or run.with_name(f"{run.name}-p{args.prototypes}")
        settings = condense.CompactSettings(args.method, args.prototypes, args.dims, args.precision,
                                            args.n_neighbors, args.generations, metric=args.metric,
                                            epochs=args.epochs, window=args.window)
        compact, val_accuracy, chosen_settings = condense.choose_and_build(engine, dataset.x_train, dataset.y_train,
                                                                           settings, args.seed, shifts=shifts)
        extra = {"validation_accuracy": val_accuracy,
                 "compact": {**dataclasses.asdict(chosen_settings), "bank_shifts": shifts}}
    if (out / runs.METRICS).exists():
        raise InputError(f"{out} already holds a finished run; choose another --out")
    compact.info = {**engine.info, "condensed_from": str(run)}
    metrics = {key: source[key] for key in ("method", "dataset", "preset", "granularity", "random_init_test_accuracy",
                                            "evaluations", "n_train", "n_test", "seed") if key in source}
    metrics.update(extra)
    metrics.update({
        "test_accuracy": condense.accuracy(compact, dataset.x_test, dataset.y_test),
        "full_bank_test_accuracy": source["test_accuracy"], "full_bank_engine_bytes": source["engine_bytes"],
        "parameters": compact.parameters, "engine_bytes": compact.engine_bytes, "bank_size": int(len(compact.bank)),
        "multiply_adds": compact.multiply_adds,
        "wall_seconds": round(time.perf_counter() - started, 3), "condensed_from": str(run),
        "command": shlex.join(["slicenet", *args.argv]), "slicenet_version": __version__,
        "machine": machine_info(),
    })
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / runs.CONFIG, to_toml(config, {"version": __version__, "command": metrics["command"],
                                                   "kind": "optimise", "condensed_from": str(run)}))
    runs.write_results(out, compact, metrics, [])
    print(f"test accuracy {metrics['test_accuracy']:.4f} (full bank {source['test_accuracy']:.4f}); engine "
          f"{metrics['engine_bytes']:,} bytes (full bank {source['engine_bytes']:,}) -> {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import export, runs
    from .data import load_dataset

    if args.target not in export.TARGETS:
        raise InputError(f"unknown target {args.target!r}: expected one of {', '.join(export.TARGETS)}")
    engine = runs.load_engine(args.run)
    dataset = load_dataset(runs.load_config(args.run).dataset, engine.image_size[0])
    images, labels = dataset.x_test, dataset.y_test
    if args.verify_images:
        images, labels = images[: args.verify_images], labels[: args.verify_images]
    devices = Path(__file__).resolve().parent.parent / "devices"
    if not (devices / "run_engine.py").is_file():
        raise InputError(f"{devices / 'run_engine.py'} is missing: export runs from a slicenet checkout "
                         "(pip install -e .)")
    manifest = export.export_bundle(engine, args.run, args.target, args.out, images, labels, devices,
                                    batch=args.batch)
    bundle = export.bundle_folder(Path(args.run), args.target, args.out, args.batch)
    for v in manifest["verification"]:
        print(f"{args.target}: {v['runtime']} ({v['precision']}) agrees with the torch engine on "
              f"{100 * v['agreement']:.2f} % of {v['images']} test images; accuracy "
              f"{100 * v['accuracy_torch']:.2f} % -> {100 * v['accuracy_exported']:.2f} %")
    print(f"bundle -> {bundle}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import onnx

    from . import bench
    from .atomic import write_json
    from .pipeline import machine_info
    from .report import format_ratio

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.ingest is not None:
        if args.bundles:
            raise InputError("--ingest takes no bundles; run it on its own")
        result = bench.ingest(args.ingest)
        path = args.results / f"board-{re.sub(r'[^A-Za-z0-9]+', '-', result['board']).strip('-')}-{stamp}.json"
        write_json(path, result)
        print(f"stored {result['board']} ({result['runtime']} {result['runtime_version']}, {result['precision']}, "
              f"power mode {result.get('power_mode')}): p50 {result['p50_ms']:.3f} ms -> {path}")
        return 0
    if not args.bundles:
        raise InputError("name at least one exported bundle (export/<run>/<target>), or use --ingest FILE")
    if args.runtime not in bench.RUNTIMES:
        raise InputError(f"unknown runtime {args.runtime!r}: expected one of {', '.join(bench.RUNTIMES)}")
    if args.count < 1 or args.warmup < 0:
        raise InputError("--count must be at least 1 and --warmup at least 0")
    if not 1 <= args.rounds <= args.count:
        raise InputError(f"--rounds must be between 1 and --count ({args.count}), got {args.rounds}")
    profiles_path = args.profiles or Path(__file__).resolve().parent.parent / "devices" / "profiles.toml"
    profiles = bench.load_profiles(profiles_path)
    sessions, latencies = bench.run_rounds(
        lambda: [bench.open_bundle(bundle, args.runtime, args.threads, args.batch) for bundle in args.bundles],
        args.count, args.warmup, args.rounds)
    results = []
    for session in sessions:
        row = bench.summarise(session, latencies[session.name], args.threads, len(session.sample))
        if args.runtime == "torch":
            from . import runs

            metrics = runs.load_metrics(session.bundle)
            row.update(test_accuracy=metrics["test_accuracy"], engine_bytes=metrics["engine_bytes"],
                       multiply_adds=metrics.get("multiply_adds"), cost=None, estimates=[])
        else:
            manifest = json.loads((session.bundle / "manifest.json").read_text())
            cost = bench.graph_cost(onnx.load(str(session.bundle / manifest["onnx_model"])))
            row["cost"] = {k: v for k, v in cost.items() if k != "flops_by_op"}
            row["estimates"] = bench.estimates(cost, profiles)
            row["test_accuracy"] = next((v["accuracy_exported"] for v in manifest["verification"]), None)
            row["engine_bytes"] = manifest["engine_bytes"]
            row["multiply_adds"] = manifest.get("multiply_adds")  # absent from bundles exported before it was recorded
        row["command"] = shlex.join(["slicenet", *args.argv])
        row["machine"] = machine_info()
        results.append(row)
    first = results[0]["p50_ms"]
    for session, row in zip(sessions, results, strict=True):
        row["p50_ratio_to_first"] = row["p50_ms"] / first
        row["p50_ratio_rounds"] = bench.round_ratios(latencies[session.name], latencies[sessions[0].name],
                                                     args.rounds)
        safe = re.sub(r"[^A-Za-z0-9]+", "-", row["name"]).strip("-")
        write_json(args.results / f"{safe}-{row['runtime']}-{stamp}.json", row)
    if args.json:
        write_json(args.json, results)
    print(f"{'bundle':40s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'fps':>9s} "
          f"{'ratio':>6s} {'rounds':>11s} {'first ms':>8s}")
    for row in results:
        spread = f"{format_ratio(min(row['p50_ratio_rounds']))}-{format_ratio(max(row['p50_ratio_rounds']))}"
        print(f"{row['name'][:40]:40s} {row['p50_ms']:8.4f} {row['p90_ms']:8.4f} {row['p99_ms']:8.4f} "
              f"{row['mean_ms']:8.4f} {row['throughput_fps']:9.0f} {format_ratio(row['p50_ratio_to_first']):>6s} "
              f"{spread:>11s} {row['first_inference_ms']:8.3f}")
    print(f"{args.runtime} {results[0]['runtime_version']}, {args.count} interleaved inferences per bundle; "
          f"JSON in {args.results}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import pipeline, runs
    from .data import load_dataset

    engine = runs.load_engine(args.run)
    spec = args.dataset or runs.load_config(args.run).dataset
    dataset = load_dataset(spec, engine.image_size[0])
    if dataset.image_size != engine.image_size:
        raise InputError(f"dataset {spec!r} has {dataset.image_size[0]}x{dataset.image_size[1]} images but the "
                         f"engine expects {engine.image_size[0]}x{engine.image_size[1]}")
    if dataset.n_classes != engine.n_classes:
        raise InputError(f"dataset {spec!r} has {dataset.n_classes} classes but the engine has {engine.n_classes}")
    result = pipeline.evaluate(engine, dataset.x_test, dataset.y_test)
    result["dataset"] = spec
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{spec}: test accuracy {result['accuracy']:.4f} on {result['n_images']} images")
    width = max(len(name) for name in engine.class_names)
    for name, accuracy in result["per_class_accuracy"].items():
        print(f"  {name:>{width}}  {accuracy:.4f}")
    print("confusion matrix (rows: true, columns: predicted)")
    for row in result["confusion_matrix"]:
        print("  " + " ".join(f"{count:5d}" for count in row))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from . import runs
    from .data import load_image

    engine = runs.load_engine(args.run)
    images = np.stack([load_image(path, engine.image_size) for path in args.images])
    predicted, votes, _ = engine.predict(images)
    if engine.head == "dense":  # softmax probabilities, likeliest first, the negligible left out
        key, title = "probabilities", "probabilities"
        details = [{engine.class_names[c]: round(float(vote[c]), 4) for c in np.argsort(-vote, kind="stable")
                    if vote[c] >= 0.001} for vote in votes]
    elif engine.vote == "local-mean":  # each class's local-mean distance (mean over the views), nearest first
        key, title = "local_mean_distance", "local-mean distances"
        details = [{engine.class_names[c]: round(float(-vote[c]) / engine.n_views, 4)
                    for c in np.argsort(-vote, kind="stable")} for vote in votes]
    else:
        key, title = "votes", "votes"
        details = [{engine.class_names[c]: int(v) for c, v in enumerate(vote) if v} for vote in votes]
    if engine.head == "knn" and engine.n_views > 1:
        title += f" over {engine.n_views} test-time views"
    rows = [{"image": str(path), "class": int(p), "label": engine.class_names[p], key: detail}
            for path, p, detail in zip(args.images, predicted, details, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            shown = ", ".join(f"{label}: {value}" for label, value in row[key].items())
            print(f"{row['image']}: {row['label']}  ({title} {shown})")
    return 0


@contextlib.contextmanager
def _keep_freed_memory() -> Iterator[None]:
    """While a search runs, ask glibc to keep freed memory instead of returning it to the kernel.

    The search allocates and frees activations of hundreds of MB every generation; by default each
    goes through mmap and the kernel zeroes fresh pages every time (measured: 40 % of CPU time in
    the kernel). A process-wide setting, so it lives here in the CLI, not in the library. It ends
    with the search: scoring a large bank afterwards (a 300,000-prototype bank with test-time views)
    frees blocks of many sizes, which a heap that is never trimmed fragments into tens of GB
    (measured: 16 GB after 3,000 Fashion-MNIST queries, against 2.3 GB with glibc's defaults).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if sys.platform.startswith("linux") and name else None
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap
    libc.mallopt(-1, 2**34)  # M_TRIM_THRESHOLD: keep freed heap memory
    try:
        yield
    finally:
        libc.mallopt(-4, 65536)  # glibc's defaults again
        libc.mallopt(-1, 128 * 1024)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def cmd_report(args: argparse.Namespace) -> int:
    from . import report
    from .atomic import write_text

    run_dirs = args.runs or sorted(p.parent for p in Path("runs").rglob("metrics.json"))
    if not run_dirs:
        raise InputError("no finished runs to report: pass run directories, or run 'slicenet optimise' first")
    rows = report.collect(run_dirs)
    command = shlex.join(["slicenet", *args.argv])
    bench = report.load_bench(args.out / "bench")
    plots = report.render_plots(rows, args.out, bench)
    write_text(args.out / "runs.csv", report.render_csv(rows))
    write_text(args.out / "REPORT.md", report.render_markdown(rows, command, plots, bench))
    print(f"wrote {args.out / 'REPORT.md'}, runs.csv and {len(plots)} plots from {len(rows)} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded beside results as the command that produced them
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"slicenet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slicenet: interrupted (an optimise run continues with --resume DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
