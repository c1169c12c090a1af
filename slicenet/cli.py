"""The ``slicenet`` command: a thin argparse shell over the library.

Each subcommand parses its flags (generated from its configuration dataclass, so each default and
each help line is written once, in ``config.py`` or ``condense.py``), calls one library function,
writes its files and prints. Bad input of any kind ends in one line on stderr and exit status 2
(``InputError``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import re
import shlex
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .errors import InputError

DEFAULT_REPORT = Path("report")  # the user's report and bench results; results/ holds the project's evidence


class Interrupted(Exception):
    """Ctrl-C during a command; the message says what to do next."""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (where it has one worth showing) and keeps the examples'
    line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS, [], "") \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


EXAMPLES = {
    "optimise": ["slicenet optimise --method cma",
                 "slicenet optimise --method pso --dataset fashion-mnist --out runs/fm",
                 "slicenet optimise --resume runs/fm"],
    "baseline": ["slicenet baseline --hidden 128 64", "slicenet baseline --head knn --vote local-mean"],
    "condense": ["slicenet condense runs/mnist-cma-s0 --budget-kb 74",
                 "slicenet condense runs/mnist-cma-s0 --prototypes 5 --precision int8 --metric cosine"],
    "export": ["slicenet export runs/mnist-cma-s0 --target ncs2", "slicenet export runs/mnist-cma-s0 --target jetson"],
    "arch-search": ["slicenet arch-search --dataset mnist --stages 2 --nodes 3 4 --filters 4 8 --out runs/arch",
                    "slicenet arch-search --paper --out runs/arch-paper",
                    "slicenet arch-search --config runs/arch/config.toml --seed 1 --out runs/arch-s1",
                    "slicenet arch-search --front --cost latency --board ncs2:usb-fp16 --out runs/arch-ncs2",
                    "slicenet arch-search --budget-macs 108800 --out runs/arch-within-default"],
    "transfer": ["slicenet transfer runs/mnist-cma-s0 --dataset digits --tune none --out runs/digits-from-mnist",
                 "slicenet transfer runs/mnist-cma-s0 --dataset fashion-mnist --tune 1 --out runs/fm-tune1",
                 "slicenet transfer runs/mnist-cma-s0 --dataset digits --tune ga --ga mask --out runs/digits-ga"],
    "enrol": ["slicenet enrol runs/mnist04 --dataset folder:new-digits --per-class 20 --out runs/mnist04-plus"],
    "check-2022": ["slicenet check-2022 export/mnist-cma-s0/ncs2"],
    "bench-search": ["slicenet bench-search cpu local:2", "slicenet bench-search cpu cuda --preset radu"],
    "bench": ["slicenet bench export/mnist-cma-s0/onnx export/mnist-dense128/onnx --threads 1",
              "slicenet bench --ingest result.json --bundle export/mnist-cma-s0/jetson"],
    "evaluate": ["slicenet evaluate runs/mnist-cma-s0",
                 "slicenet evaluate runs/mnist-cma-s0 --dataset folder:my-digits --class-map zero=0,one=1"],
    "predict": ["slicenet predict runs/mnist-cma-s0 digit.png",
                "slicenet predict runs/mnist-cma-s0 photo.png --invert"],
    "report": ["slicenet report", "slicenet report runs/mnist-cma-s0 runs/mnist-dense128 --out report/mnist"],
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's status), no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _flag_type(field: dataclasses.Field) -> type:
    if field.default is not None:
        return type(field.default)
    return float if "float" in str(field.type) else int


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One flag per field of a config dataclass (``--population-size`` for ``population_size``), its
    help and default from the field; flags default to None, meaning "not given". Returns the keys."""
    keys = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flags = ["--" + field.name.replace("_", "-"), *filter(None, [field.metadata.get("alias")])]
        shown = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        text = field.metadata.get("help", "") + (f" (default: {shown})" if shown not in (None, "") else "")
        if isinstance(field.default, bool):
            parser.add_argument(*flags, dest=field.name, action="store_true", default=None, help=text)
        elif isinstance(field.default, tuple):
            parser.add_argument(*flags, dest=field.name, type=int, nargs="+", default=None, help=text)
        else:
            parser.add_argument(*flags, dest=field.name, type=_flag_type(field), default=None, help=text)
        keys.append(field.name)
    return keys


def build_parser() -> argparse.ArgumentParser:
    from .archsearch import ArchConfig, paper_flags
    from .condense import CondenseConfig
    from .config import BaselineConfig, RunConfig
    from .transfer import TransferConfig

    parser = _Parser(prog="slicenet", description="Gradient-free, k-NN sliced CNNs for edge boards.",
                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"slicenet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    class Commands:  # every subcommand with the same help formatter and its examples at the end
        @staticmethod
        def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            examples = "\n".join(f"  {line}" for line in EXAMPLES.get(name, []))
            kwargs.setdefault("epilog", f"examples:\n{examples}")
            kwargs["description"] = textwrap.fill(kwargs.get("description") or kwargs.get("help") or "", 100)
            return subparsers.add_parser(name, formatter_class=_Help, **kwargs)

    commands = Commands()

    optimise = commands.add_parser("optimise", help="optimise a trunk without gradients; write a run directory")
    optimise.add_argument("--config", help="TOML file of options (flags override it)")
    optimise.set_defaults(keys=add_config_flags(optimise, RunConfig), func=cmd_optimise)
    optimise.add_argument("--out", type=Path, help="run directory (default runs/<method>-<dataset>-<time>; with "
                          "--seeds, the folder of their seed<N> runs)")
    optimise.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run")
    optimise.add_argument("--device", default="auto", help="where populations are scored: cpu, cuda[:N] or auto "
                          "(CUDA when torch sees one)")
    optimise.add_argument("--cluster", default=None, help="score populations on Ray actors: local[:N] (a Ray "
                          "instance here with N CPUs), auto (the cluster this machine joined) or HEAD:PORT")
    optimise.add_argument("--workers", type=int, default=0, help="with --cluster: actors (default: one per CPU, "
                          "or per GPU with --device cuda)")
    optimise.add_argument("--seeds", type=int, nargs="+", default=None,
                          help="one run per seed (OUT/seed<N>), as Ray tasks with --cluster; rerun the same command "
                               "to continue unfinished ones")
    optimise.add_argument("--quiet", action="store_true", help="no progress bar")

    baseline = commands.add_parser("baseline", help="train the same trunk with backprop (dense or k-NN head)")
    baseline.add_argument("--config", help="TOML file of options (flags override it)")
    baseline.set_defaults(keys=add_config_flags(baseline, BaselineConfig), func=cmd_baseline)
    baseline.add_argument("--out", type=Path, help="run directory (several widths: one sub-folder each)")
    baseline.add_argument("--device", default="auto", help="where to train: cpu, cuda[:N] or auto")
    baseline.add_argument("--quiet", action="store_true", help="no progress bar")

    condense = commands.add_parser("condense", help="compact a run's engine: fewer prototypes, dimensions, bytes")
    condense.add_argument("run", type=Path, help="the run directory whose engine to condense (runs/<name>)")
    condense.set_defaults(keys=add_config_flags(condense, CondenseConfig), func=cmd_condense)
    condense.add_argument("--out", type=Path, help="run directory (default <run>-p<N> or <run>-<B>kb)")
    condense.add_argument("--device", default="auto", help="method joint: where its populations are scored: cpu, "
                          "cuda[:N] or auto")
    condense.add_argument("--cluster", default=None, help="method joint: score its populations on Ray actors "
                          "(local[:N], auto or HEAD:PORT, as optimise)")

    arch = commands.add_parser("arch-search", help="Genetic-CNN search of trunk structures, each scored by a short "
                               "gradient-free search (hardware-aware: a budget or the accuracy / cost front)")
    arch.set_defaults(keys=add_config_flags(arch, ArchConfig), func=cmd_arch_search)
    arch.add_argument("--out", type=Path, required=True, help="the search's folder: arch.json, config.toml (its "
                      "resolved options) and individuals/")
    arch.add_argument("--config", help="TOML file of options (flags override it), such as a search's config.toml")
    arch.add_argument("--paper", action="store_true", help=f"the paper's MNIST setting: {paper_flags()} "
                      "(1,020 evaluations; the widths stay --filters')")
    arch.add_argument("--resume", action="store_true", help="continue the search in --out (after a kill: the same "
                      "result)")
    arch.add_argument("--cluster", default=None, help="evaluate a generation's individuals as Ray tasks (local[:N], "
                      "auto or HEAD:PORT)")
    arch.add_argument("--device", default="cpu", help="where each individual's populations are scored: cpu, "
                      "cuda[:N] or auto (default cpu, so that a search gives the same fitness on every machine; "
                      "with --cluster and cuda each task holds one GPU)")
    arch.add_argument("--quiet", action="store_true", help="no line per generation")
    arch.add_argument("--rank-check", type=int, default=0, metavar="N",
                      help="after the search: N of its structures (evenly spread over its ranking) searched again "
                           "with a longer budget, and the rank correlation of short and long fitness (in arch.json)")
    arch.add_argument("--rank-generations", type=int, default=30,
                      help="with --rank-check: generations per convolution of the long searches (default 30, 5x "
                           "the short default)")
    arch.add_argument("--rank-images", type=int, default=0,
                      help="with --rank-check: images a generation of the long searches (default 0: as the short)")

    transfer = commands.add_parser("transfer", help="a run's trunk on a new dataset: keep it, re-search some layers "
                                   "(or let a GA choose which) from its weights, and a new bank")
    transfer.add_argument("source", type=Path, help="the source run directory (its trunk and weights)")
    transfer.set_defaults(keys=add_config_flags(transfer, TransferConfig), func=cmd_transfer)
    transfer.add_argument("--out", type=Path, required=True, help="the new run directory (--tune ga: the GA's "
                          "folder, ga.json and individuals/)")
    transfer.add_argument("--device", default="auto", help="where populations are scored: cpu, cuda[:N] or auto")
    transfer.add_argument("--cluster", default=None, help="--tune ga: the GA's individuals as Ray tasks (local[:N], "
                          "auto or HEAD:PORT); otherwise the populations on Ray actors")
    transfer.add_argument("--quiet", action="store_true", help="no progress bar")

    enrol = commands.add_parser("enrol", help="add classes (or prototypes of existing ones) to an engine from a "
                                "folder of images: no search, no gradient")
    enrol.add_argument("run", type=Path, help="the run directory whose engine to extend")
    enrol.add_argument("--dataset", required=True, help="folder:DIR, one sub-folder of images per class (named as "
                       "the class); or any dataset spec, its training images enrolled")
    enrol.add_argument("--per-class", type=int, default=0, help="images enrolled per class (default 0: all), the "
                       "first N of each folder in name order")
    enrol.add_argument("--new-only", action="store_true", help="a folder named as an existing class is an error "
                       "(default: its images become more prototypes of that class)")
    enrol.add_argument("--n-neighbors", type=int, default=0, help="k of the enrolled engine's vote (default 0: the "
                       "engine's; few images per new class need a small k, e.g. 1)")
    enrol.add_argument("--bank-shifts", type=int, default=-1, help="shifted copies of each enrolled image, 1..n "
                       "pixels (default -1: as the engine's bank was built)")
    enrol.add_argument("--evaluate-on", default="", help="the dataset whose test split metrics.json reports "
                       "(default: the source run's; classes matched by name)")
    enrol.add_argument("--out", type=Path, required=True, help="the new run directory")
    enrol.set_defaults(func=cmd_enrol)

    export = commands.add_parser("export", help="export a run's engine for a target and verify it")
    export.add_argument("run", type=Path, help="the run directory to export (runs/<name>, not its engine file)")
    export.add_argument("--target", required=True, help="onnx, openvino, jetson or ncs2")
    export.add_argument("--out", type=Path, default=Path("export"), help="bundle root (default export/)")
    export.add_argument("--batch", type=int, default=1, help="static batch of the exported graph (default 1)")
    export.add_argument("--verify-images", type=int, default=0,
                        help="test images to verify on (default 0: the whole test split)")
    export.add_argument("--no-check-2022", dest="check_2022", action="store_false",
                        help="target ncs2: skip the check by OpenVINO 2022.3.2's own runtime (on by default; the "
                             "manifest then says 'not checked')")
    export.add_argument("--enrollable", action="store_true",
                        help="also ship the trunk graph alone and the bank as files, so that 'run_engine.py enrol "
                             "BUNDLE DIR' adds classes on the board (the vote then runs in numpy on the host; "
                             "ncs2: or on the stick, 'run_engine.py run --distance stick')")
    export.add_argument("--capacity", type=int, default=0,
                        help="with --enrollable, target ncs2: prototypes the stick's ranking graph holds, enrolled "
                             "ones included (default 0: twice the bank)")
    export.set_defaults(func=cmd_export)

    check = commands.add_parser("check-2022", help="read, compile and run models with OpenVINO 2022.3.2, the NCS2's "
                                "last release (its own runtime, from its pip wheel)")
    check.add_argument("paths", nargs="+", type=Path, help="exported bundle folders (their IR and ONNX fallback, with "
                       "their sample images) or model files (.xml, .onnx)")
    check.add_argument("--device", default="CPU", help="2022.3 device to compile for (default CPU; MYRIAD needs "
                       "the stick and 2022.3's archive install)")
    check.set_defaults(func=cmd_check_2022)

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
    bench.add_argument("--distance", nargs="+", default=["graph"], choices=["graph", "host", "stick"],
                       help="what each bundle runs, each timed interleaved with the others: its whole graph "
                            "(default); with --enrollable bundles the trunk and the k-NN step in numpy (host) or, "
                            "NCS2 bundles, the ranking graph and only the label vote in numpy (stick)")
    bench.add_argument("--json", type=Path, help="also write the list of results to this file")
    bench.add_argument("--results", type=Path, default=DEFAULT_REPORT / "bench",
                       help=f"folder for one JSON file per bundle timed (default {DEFAULT_REPORT}/bench, which "
                            "'slicenet report' reads)")
    bench.add_argument("--profiles", type=Path, default=None, help="board profiles (default devices/profiles.toml)")
    bench.add_argument("--ingest", type=Path, help="store a board result: the result.json of devices/run_engine.py, "
                       "or the output of trtexec (with --bundle)")
    bench.add_argument("--bundle", type=Path, help="with --ingest of a trtexec log: the bundle it timed")
    bench.add_argument("--board", help="with --ingest: the board's name, if the result's is wrong")
    bench.add_argument("--precision", help="with --ingest of a trtexec log: fp16 or fp32, where the log does not say")
    bench.set_defaults(func=cmd_bench)

    search_bench = commands.add_parser(
        "bench-search", help="seconds per generation of the search, evaluator against evaluator (interleaved)")
    search_bench.add_argument("evaluators", nargs="+", help="what scores the populations, each in turn: a device "
                              "(cpu, cuda, cuda:N) or a Ray cluster (local:N, HEAD:PORT); the first is the reference")
    for flag, default, text in (("--dataset", "mnist", "dataset, as for optimise"),
                                ("--preset", "auto", "trunk preset, as for optimise"),
                                ("--method", "cma", "optimiser, as for optimise")):
        search_bench.add_argument(flag, default=default, help=text)
    search_bench.add_argument("--generations", type=int, default=5, help="timed generations per block")
    search_bench.add_argument("--population-size", type=int, default=0, help="0 = the method's default")
    search_bench.add_argument("--search-images", type=int, default=1000, help="training images scored per generation")
    search_bench.add_argument("--granularity", default="layer", help="layer or filter (the first filter of each "
                              "layer is timed)")
    search_bench.add_argument("--json", type=Path, help="write the result to this file")
    search_bench.set_defaults(func=cmd_bench_search)

    evaluate = commands.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    evaluate.add_argument("run", type=Path, help="the run directory whose engine to evaluate")
    evaluate.add_argument("--dataset", help="evaluate on this dataset (default: the run's own)")
    evaluate.add_argument("--split", default="auto",
                          help="auto (default: a folder: dataset whole, any other dataset's test split), test, all")
    evaluate.add_argument("--class-map", default="",
                          help="dataset class -> engine class, where their names differ: zero=0,one=1,...")
    evaluate.add_argument("--device", default="auto", help="where the engine runs: cpu, cuda[:N] or auto")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify image files with a run's engine")
    predict.add_argument("run", type=Path, help="the run directory whose engine classifies")
    predict.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...), resized to the engine's "
                         "input and made grayscale")
    predict.add_argument("--invert", action="store_true",
                         help="invert the images first (a dark drawing on a light background, for an engine trained "
                              "on light on dark, as MNIST's)")
    predict.add_argument("--json", action="store_true", help="print JSON")
    predict.set_defaults(func=cmd_predict)

    report = commands.add_parser(
        "report", help="tables and plots of finished runs and benchmarks (written to report/ unless --out)",
        description="Build REPORT.md, runs.csv and plots from run directories. Reads: the runs named (default: "
        "every finished run under runs/), the benchmark results of --bench (default OUT/bench, where 'slicenet "
        "bench' writes by default) and, with --bundles, exported bundles. Writes: OUT/REPORT.md, OUT/runs.csv and "
        "OUT/*.png only, all at once once everything is built; nothing else. The project's committed evidence "
        "in results/ is rewritten only when asked (--out results/...).",
    )
    report.add_argument("runs", nargs="*", type=Path, help="run directories (default: every finished run in runs/)")
    report.add_argument("--out", type=Path, default=DEFAULT_REPORT, help=f"output folder (default {DEFAULT_REPORT}/)")
    report.add_argument("--bench", type=Path, default=None,
                        help="folder of 'slicenet bench' results to tabulate (default OUT/bench)")
    report.add_argument("--bundles", type=Path, nargs="+", default=[],
                        help="exported bundle folders to list with their operations and checks")
    report.add_argument("--arch", type=Path, nargs="+", default=[],
                        help="architecture searches (arch-search --out folders): fitness per generation, the front; "
                        "with no runs named, a report of the searches alone")
    report.add_argument("--strict", action="store_true",
                        help="a run or benchmark file that cannot be read is an error (default: skipped, with a "
                             "warning naming it)")
    report.set_defaults(func=cmd_report)
    return parser


def _flags_given(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in args.keys}


def _command(args: argparse.Namespace) -> str:
    return shlex.join(["slicenet", *args.argv])


def _progress(total: int, done: int, quiet: bool):  # noqa: ANN202 -- (tqdm bar, callback)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="gen", disable=quiet, dynamic_ncols=True, file=sys.stderr)

    def on_generation(event: dict) -> None:
        # Both figures are the search's own: the best fitness of the block so far, and the best k-NN
        # accuracy this generation scored on its sample of training images. Neither is validation accuracy.
        bar.set_description(event["label"])
        bar.set_postfix(fitness_best_so_far=f"{event['best_so_far']:.4f}",
                        this_gen_best_train_acc=f"{event['best_accuracy']:.3f}")
        bar.update(1)

    return bar, on_generation


def _check_device_and_cluster(args: argparse.Namespace) -> None:
    """``--cluster``: a bad or silent address fails in one line before anything is written; so does a
    ``--device`` this machine lacks (with a cluster, only its spelling: the workers look on their own machines)."""
    from .device import kind, resolve

    if args.cluster:
        from .cluster import check_cluster

        kind(args.device)
        check_cluster(args.cluster)
    elif args.device not in ("auto", "cpu"):
        resolve(args.device)  # --device cuda without a GPU: one line, before anything


def cmd_optimise(args: argparse.Namespace) -> int:
    from . import runs
    from .config import RunConfig, config_from_toml, make_config, with_preset_defaults
    from .device import resolve
    from .pipeline import search_settings
    from .search import total_generations

    overrides = _flags_given(args)
    _check_device_and_cluster(args)
    if args.workers < 0:
        raise InputError(f"--workers must be 0 (one per CPU, or per GPU) or positive, got {args.workers}")
    if args.resume is not None:
        given = ["--" + key.replace("_", "-") for key, value in overrides.items() if value is not None]
        given += ["--config"] * (args.config is not None) + ["--out"] * (args.out is not None)
        given += ["--seeds"] * bool(args.seeds)
        if given:
            raise InputError(f"--resume takes its configuration from {args.resume / runs.CONFIG}; "
                             f"drop {', '.join(given)}")
        run_dir = args.resume
        loaded = runs.load_config(run_dir)
        if not isinstance(loaded, RunConfig):
            raise InputError(f"{run_dir} is a baseline run, not an optimise run: nothing to resume")
        config = loaded
        runs.load_checkpoint(run_dir)  # a finished, damaged or crafted checkpoint fails here, in one line
    else:
        config = config_from_toml(args.config, **overrides) if args.config else make_config(**overrides)
        set_keys = {k for k, v in overrides.items() if v is not None}
        if args.config:
            from .config import load_toml

            set_keys |= set(load_toml(args.config))
        config = with_preset_defaults(config, set_keys)
        run_dir = args.out or runs.default_run_dir(config)
    if args.seeds:
        return _fan_out(args, config, run_dir)

    def on_start(prepared, state):  # noqa: ANN001, ANN202 -- the progress bar, once the data is loaded
        scored = f"{config.search_images:,}" if config.search_images else "all"
        where = f"Ray cluster {args.cluster}" if args.cluster else f"device {resolve(args.device)}"  # auto: which
        print(f"run directory: {run_dir} ({'resumed' if args.resume else 'new'}; populations scored on {where}; "
              f"each generation scores {scored} training images by {config.scoring} k-NN; the bar shows the "
              "block's best fitness so far and this generation's best accuracy on those images, not validation "
              "accuracy)", file=sys.stderr)
        bar, on_generation = _progress(total_generations(search_settings(config, prepared.spec), prepared.spec),
                                       len(state.history), args.quiet)
        bars.append(bar)
        return on_generation

    bars: list = []
    try:
        with _keep_freed_memory():
            metrics = runs.optimise(config, run_dir, command=_command(args), resume=args.resume is not None,
                                    device=args.device, cluster=args.cluster, workers=args.workers,
                                    on_start=on_start)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; the search is checkpointed: continue with 'slicenet optimise --resume "
                          f"{run_dir}'") from None
    finally:
        for bar in bars:
            bar.close()
    print(f"test accuracy {metrics['test_accuracy']:.4f} (random init {metrics['random_init_test_accuracy']:.4f}, "
          f"validation {metrics['validation_accuracy']:.4f}); engine {metrics['engine_bytes']:,} bytes; "
          f"{metrics['evaluations']:,} evaluations in {metrics['wall_seconds']:.0f} s -> {run_dir}")
    print(f"next: slicenet evaluate {run_dir} | slicenet export {run_dir} --target onnx (jetson, ncs2, openvino) | "
          f"slicenet condense {run_dir} --budget-kb 74")
    return 0


def _fan_out(args: argparse.Namespace, config: Any, root: Path) -> int:
    """``--seeds``: one run per seed, ``ROOT/seed<N>``, as Ray tasks on ``--cluster`` (in this process one
    after the other without one); a finished run is kept, a checkpointed one continued."""
    from . import runs

    repeated = sorted({seed for seed in args.seeds if args.seeds.count(seed) > 1})
    if repeated:
        raise InputError(f"--seeds names seed {', '.join(map(str, repeated))} more than once: give each seed once "
                         "(each is its own run directory, seed<N>)")
    configs = [dataclasses.replace(config, seed=seed) for seed in args.seeds]
    for seeded in configs:
        seeded.validate()  # a negative seed: one line, before any run starts
    jobs = [{"config": seeded, "run_dir": Path(root) / f"seed{seeded.seed}",
             "command": _command(args) + f"  # seed {seeded.seed}", "device": args.device} for seeded in configs]
    print(f"{len(jobs)} runs ({', '.join(str(j['run_dir']) for j in jobs)}) "
          + (f"as Ray tasks on {args.cluster}" if args.cluster else "one after the other"), file=sys.stderr)
    if args.cluster:
        from .cluster import fan_out

        results = fan_out(runs.optimise_or_resume, jobs, cluster=args.cluster, device=args.device)
    else:
        results = [runs.optimise_or_resume(**job) for job in jobs]
    for job, metrics in zip(jobs, results, strict=True):
        print(f"{job['run_dir']}: test accuracy {metrics['test_accuracy']:.4f} in {metrics['wall_seconds']:.0f} s")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import baseline, pipeline, runs
    from .config import BaselineConfig, config_from_toml, make_config
    from .device import resolve

    overrides = _flags_given(args)
    config = (config_from_toml(args.config, BaselineConfig, **overrides) if args.config
              else make_config(None, BaselineConfig, **overrides))
    device = resolve(args.device)
    start = None
    if config.init_from:
        from .data import split_modifiers

        source = runs.load_trunk(Path(config.init_from))
        if split_modifiers(config.dataset)[2] is None:
            config = dataclasses.replace(config, dataset=f"{config.dataset}@{source.image_size[0]}",
                                         image_size=source.image_size[0])
        baseline.frozen_layers(config.freeze, source.spec)  # a bad --freeze: one line, before any training
    dataset, preset, spec, mean, std = pipeline.load_inputs(config.dataset, preset=config.preset,
                                                            image_size=config.image_size, threads=config.threads)
    if config.init_from:
        if dataset.image_size != source.image_size:
            raise InputError(f"the source engine takes {source.image_size[0]}x{source.image_size[1]} images; dataset "
                             f"{config.dataset!r} has {dataset.image_size[0]}x{dataset.image_size[1]}")
        spec, preset, start = source.spec, "transfer", [(w.clone(), b.clone()) for w, b in source.weights]
    if config.head == "knn":
        pipeline.check_vote(dataset, vote=config.vote, n_neighbors=config.n_neighbors)
    command = _command(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = dataset.name.split(":")[0]
    for hidden in config.hidden:
        single = dataclasses.replace(config, hidden=(hidden,))
        label = f"{config.head}{hidden}" if config.head == "dense" else f"backprop{hidden}-knn"
        if args.out is None:
            run_dir = Path("runs") / f"baseline-{label}-{name}-{stamp}"
        else:
            run_dir = args.out if len(config.hidden) == 1 else args.out / label
        if ((run_dir / runs.METRICS).exists() and args.out is not None and len(config.hidden) > 1
                and runs.load_config(run_dir) == single):
            print(f"{label}: finished before in {run_dir}, kept", file=sys.stderr)
            continue  # a width finished before a kill: rerunning the command continues with the next
        resume = runs.load_train_checkpoint(run_dir, single)  # before config.toml is written again
        if resume is None:
            runs.create_run_dir(run_dir, single, command)
        else:
            print(f"{label}: continuing the training in {run_dir} after epoch {resume['epoch']}", file=sys.stderr)
        bar = tqdm(total=config.epochs, initial=resume["epoch"] if resume else 0, unit="epoch", disable=args.quiet,
                   file=sys.stderr, desc=label)

        def on_epoch(row: dict, bar=bar) -> None:  # noqa: ANN001
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_acc=f"{row['validation_accuracy']:.4f}")
            bar.update(1)

        def on_checkpoint(state: dict, run_dir=run_dir, single=single) -> None:  # noqa: ANN001
            runs.save_train_checkpoint(run_dir, single, state)

        try:
            with bar:
                engine, metrics, history = baseline.run(dataset, spec, preset=preset, hidden=hidden, config=single,
                                                        input_mean=mean, input_std=std, on_epoch=on_epoch,
                                                        device=device, start=start, on_checkpoint=on_checkpoint,
                                                        resume=resume)
        except KeyboardInterrupt:
            again = ("rerun the same command" if args.out is not None else
                     f"rerun it with --out {run_dir}" + (f" --hidden {hidden}" if len(config.hidden) > 1 else ""))
            raise Interrupted(f"interrupted; the training in {run_dir} is checkpointed after each epoch: {again} to "
                              "continue") from None
        metrics["command"] = command
        runs.write_results(run_dir, engine, metrics=metrics, history=history)
        print(f"{label}: test accuracy {metrics['test_accuracy']:.4f} after {metrics['epochs']} epochs; "
              f"{metrics['parameters']:,} parameters, engine {metrics['engine_bytes']:,} bytes -> {run_dir}")
    return 0


def cmd_condense(args: argparse.Namespace) -> int:
    from . import condense, runs
    from .atomic import write_text
    from .config import make_config, to_toml
    from .data import load_dataset

    started = time.perf_counter()
    settings = make_config(None, condense.CondenseConfig, **_flags_given(args))  # checked before any work
    _check_device_and_cluster(args)
    engine = runs.load_engine(args.run)
    source = runs.load_metrics(args.run)
    config = runs.load_config(args.run)
    run = Path(args.run)
    suffix = f"{settings.budget_kb:g}kb" if settings.budget_kb is not None else f"p{settings.prototypes}"
    out = args.out or run.with_name(f"{run.name}-{suffix}")
    if (out / runs.METRICS).exists():
        raise InputError(f"{out} already holds a finished run; choose another --out")
    condense.check_source(engine, settings)
    # A budget search checkpoints its grid cell by cell in OUT: the same command continues a killed one.
    source_shifts = int(source.get("bank_shifts", 0))
    fingerprint = {"settings": settings.to_dict(), "dataset": config.dataset, "source_bank_shifts": source_shifts,
                   "source_engine_sha256": hashlib.sha256(runs.engine_file(run).read_bytes()).hexdigest()
                   } if settings.budget_kb is not None else {}
    cells, before = runs.load_grid_checkpoint(out, fingerprint) if fingerprint else ({}, 0.0)
    started -= before  # the wall time counts every part of a search continued
    if cells:
        print(f"continuing the budget search in {out}: {len(cells)} cells of its grid were scored before",
              file=sys.stderr)

    def on_cell_done(key: str, trials: list[dict]) -> None:
        cells[key] = trials
        runs.save_grid_checkpoint(out, fingerprint, cells, time.perf_counter() - started)

    dataset = load_dataset(config.dataset, engine.image_size[0])
    from tqdm import tqdm

    bars: list[tqdm] = []  # the bar starts with the grid's first cell: an error before it is the only line

    def on_cell(done: int, total: int) -> None:  # one (prototypes per class, dims) cell of the grid
        if not bars:
            bars.append(tqdm(desc="budget search", unit="cell", total=total, file=sys.stderr, dynamic_ncols=True))
        bars[0].update(done + 1 - bars[0].n)

    try:
        with _keep_freed_memory():  # its cma / pso / ga / joint searches, like optimise's
            compact, extra = condense.condense(engine, dataset.x_train, dataset.y_train, settings,
                                               source_bank_shifts=source_shifts, on_cell=on_cell,
                                               evaluator=lambda problem: runs.make_evaluator(
                                                   problem, device=args.device, cluster=args.cluster),
                                               done_cells=cells, on_cell_done=on_cell_done)
    except KeyboardInterrupt:
        if not cells:
            raise
        raise Interrupted(f"interrupted; {len(cells)} cells of the budget search are kept in {out}: rerun the same "
                          "command to continue") from None
    finally:
        for bar in bars:
            bar.close()
    metrics = {**condense.compact_metrics(compact, dataset, source=source, extra=extra, source_run=str(run)),
               "wall_seconds": round(time.perf_counter() - started, 3), "command": _command(args)}
    if "frontier" in extra:
        _print_frontier(settings, extra)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / runs.CONFIG, to_toml(config, {"version": __version__, "command": metrics["command"],
                                                   "kind": "optimise", "condensed_from": str(run)}))
    runs.write_results(out, compact, metrics=metrics, history=[])
    print(f"test accuracy {metrics['test_accuracy']:.4f} (full bank {source['test_accuracy']:.4f}); engine "
          f"{metrics['engine_bytes']:,} bytes (full bank {source['engine_bytes']:,}) -> {out}")
    return 0


def _print_frontier(settings: Any, extra: dict) -> None:
    from .data import copies_per_image

    front, chosen = extra["frontier"], extra["compact"]
    within = f"{settings.budget_kb:g} KB" + (f" and {settings.budget_macs:,} MACs" if settings.budget_macs else "")
    splits = f", mean of {settings.splits} splits" if settings.splits > 1 else ""
    views = f", each query voting its {copies_per_image(settings.query_shifts)} views" if settings.query_shifts else ""
    print(f"accuracy / size frontier ({extra['trials']} engines within {within}{views}, validation "
          f"accuracy{splits}):")
    for point in front:
        window = f", window {point['window']:g}" if point["window"] else ""
        print(f"  {point['engine_bytes']:>9,} B  {point['multiply_adds']:>9,} MACs  "
              f"{100 * point['validation_accuracy']:6.2f} %  {point['prototypes']} per class, "
              f"dims {point['dims'] or 'all'}, {point['precision']}, k={point['n_neighbors']}, "
              f"{point['metric']}{window}")
    if settings.method == "joint":
        print("method joint: the pick's last layer tuned to its bank, validation accuracy "
              f"{100 * chosen['lvq_validation_accuracy']:.2f} -> {100 * chosen['validation_accuracy']:.2f} %"
              if chosen["method"] == "joint" else
              "method joint: tuning the pick's last layer did not raise its validation accuracy; "
              "kept the LVQ engine")


def cmd_arch_search(args: argparse.Namespace) -> int:
    from . import archsearch
    from .atomic import write_text
    from .config import config_from_toml, make_config, to_toml
    from .runs import CONFIG

    flags = _flags_given(args)
    overrides = archsearch.with_paper_setting(flags) if args.paper else flags
    config = (config_from_toml(args.config, archsearch.ArchConfig, **overrides) if args.config
              else make_config(None, archsearch.ArchConfig, **overrides))
    _check_device_and_cluster(args)
    archsearch.check_rank_options(count=args.rank_check or None, generations=args.rank_generations,
                                  images=args.rank_images)  # before the search, not once it is done

    def on_start() -> None:  # the state is written: the folder is the search's
        write_text(args.out / CONFIG, to_toml(config, {"kind": "arch-search", "version": __version__,
                                                             "command": _command(args)}))
        print(f"architecture search in {args.out}: {archsearch.structures(config.nodes):,} structures, "
              f"{config.population} individuals x {config.generations + 1} generations, each a "
              f"{config.search_generations}-generation search per convolution on {config.search_images} images",
              file=sys.stderr)

    def on_generation(row: dict) -> None:
        if not args.quiet:
            print(f"generation {row['generation']}: fitness max {row['max']:.4f} min {row['min']:.4f} mean "
                  f"{row['mean']:.4f} median {row['median']:.4f}; best {row['best']}", file=sys.stderr)

    state = archsearch.search(config, args.out, resume=args.resume, cluster=args.cluster, device=args.device,
                              on_start=on_start, on_generation=on_generation)
    if args.rank_check:
        state = archsearch.rank_check(config, args.out, count=args.rank_check, generations=args.rank_generations,
                                      images=args.rank_images, cluster=args.cluster, device=args.device)
        check = state["rank_check"]
        print(f"rank check: {len(check['structures'])} structures, {config.search_generations} against "
              f"{check['generations']} generations per convolution: Spearman {check['spearman']:.2f}, Kendall "
              f"tau-b {check['kendall_tau_b']:.2f}", file=sys.stderr)
    if not state["front"]:
        print("no individual within the budget: raise " + " or ".join(
            f"--budget-{unit}" for unit, value in config.budgets.items() if value is not None))
        return 0
    print(f"front ({config.cost}): " + "; ".join(f"{m['genome']} {100 * m['validation_accuracy']:.2f} % at "
                                                 f"{m['cost']:,.4g}" for m in state["front"]))
    print(f"next: slicenet report --arch {args.out} | slicenet export {state['front'][-1]['run']} --target onnx")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from . import runs, transfer
    from .config import make_config

    config = make_config(None, transfer.TransferConfig, **_flags_given(args))
    source = runs.load_trunk(args.source)  # not a run: one line, before anything is written
    spec, size = source.spec, source.image_size[0]
    config = dataclasses.replace(config, vote=config.vote or source.vote)  # read once, not again per run
    _check_device_and_cluster(args)
    if config.tune != "ga":
        transfer.parse_tune(config.tune, spec, config.granularity)
        run_config = config.run_config(args.source, size=size, tune=config.tune)
        metrics = runs.optimise(run_config, args.out, command=_command(args), device=args.device,
                                cluster=args.cluster)
        print(f"{args.out}: test accuracy {metrics['test_accuracy']:.4f} (validation "
              f"{metrics['validation_accuracy']:.4f}, the source's trunk as it was "
              f"{metrics['random_init_test_accuracy']:.4f}); tune {config.tune}; "
              f"{metrics['evaluations']:,} evaluations in {metrics['wall_seconds']:.0f} s")
        return 0
    command = _command(args)

    def evaluate(jobs: list[dict]) -> list[dict]:
        jobs = [{**job, "command": f"{command}  # individual {job['run_dir'].name}", "device": args.device}
                for job in jobs]
        if args.cluster:
            from .cluster import fan_out

            results = fan_out(runs.optimise_or_resume, jobs, cluster=args.cluster, device=args.device)
        else:
            results = [runs.optimise_or_resume(**job) for job in jobs]
        return [{**m, "run": str(job["run_dir"])} for job, m in zip(jobs, results, strict=True)]

    def on_generation(row: dict) -> None:
        if not args.quiet:
            print(f"generation {row['generation']}: validation max {row['max']:.4f} mean {row['mean']:.4f}; "
                  f"best {row['best']}", file=sys.stderr)

    result = transfer.ga_search(config, args.source, spec, size, args.out, evaluate=evaluate,
                                on_generation=on_generation)
    best = result["best"]
    print(f"GA ({config.ga}) best: {best['settings']} validation {best['validation_accuracy']:.4f}, test "
          f"{best['test_accuracy']:.4f} -> {best['run']}; {len(result['evaluated'])} transfers, "
          f"{sum(e['wall_seconds'] for e in result['evaluated'].values()):.0f} s in all ({args.out / 'ga.json'})")
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    from . import enrol

    metrics = enrol.enrol_run(args.run, args.dataset, out=args.out, per_class=args.per_class, new_only=args.new_only,
                              n_neighbors=args.n_neighbors, evaluate_on=args.evaluate_on,
                              bank_shifts=args.bank_shifts,
                              command=_command(args))
    added = ", ".join(f"{name} ({n})" for name, n in metrics["enrolled"].items())
    print(f"{args.out}: enrolled {added}; {metrics['bank_size']:,} prototypes, {len(metrics['class_names'])} classes; "
          f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['evaluated_on']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import export, runs
    from .data import load_dataset
    from .enrol import enrolment_rules

    export.target(args.target)  # an unknown target fails before anything is read
    if args.verify_images < 0:
        raise InputError(f"--verify-images must be 0 (the whole test split) or positive, got {args.verify_images}")
    engine = runs.load_engine(args.run)
    dataset = load_dataset(runs.load_config(args.run).dataset, engine.image_size[0])
    images, labels = dataset.x_test, dataset.y_test
    if args.verify_images:
        images, labels = images[: args.verify_images], labels[: args.verify_images]
    manifest = export.export_bundle(engine, run_dir=args.run, target_name=args.target, out_root=args.out,
                                    images=images, labels=labels, batch=args.batch, check_2022=args.check_2022,
                                    enrollable=args.enrollable, enrolment=enrolment_rules(runs.load_metrics(args.run)),
                                    capacity=args.capacity)
    bundle = export.bundle_folder(Path(args.run), target_name=args.target, out_root=args.out, batch=args.batch)
    for v in manifest["verification"]:
        print(f"{args.target}: {v['runtime']} ({v['precision']}) agrees with the torch engine on "
              f"{100 * v['agreement']:.2f} % of {v['images']} test images; accuracy "
              f"{100 * v['accuracy_torch']:.2f} % -> {100 * v['accuracy_exported']:.2f} %")
    if "openvino_2022" in manifest["checks"]:
        from .export import ov2022

        print(f"{args.target}: {ov2022.describe(manifest['checks']['openvino_2022'])}")
    print(f"bundle -> {bundle}")
    return 0


def cmd_check_2022(args: argparse.Namespace) -> int:
    from .export import ov2022, read_manifest

    status = 0
    for path in args.paths:
        if path.is_dir():
            manifest = read_manifest(path)
            models = [path / m for m in dict.fromkeys([manifest["model"], manifest["onnx_model"]])]
            result = ov2022.check(models, samples=np.load(path / manifest["samples"]["file"]),
                                  expected=manifest["samples"]["expected_classes"], device=args.device)
        else:
            if path.exists() and path.suffix.lower() not in (".xml", ".onnx"):
                raise InputError(f"{path}: expected an exported bundle folder or its model files (.xml or .onnx)")
            result = ov2022.check([path], device=args.device)
        if result["status"] == "not checked":
            raise InputError(ov2022.describe(result))
        print(f"{path}: {ov2022.describe(result)}")
        status = max(status, 0 if result["status"] == "passed" else 1)
    return status


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .atomic import write_json
    from .extras import require
    from .pipeline import machine_info
    from .report import format_ratio

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.ingest is not None:
        if args.bundles:
            raise InputError("--ingest takes no bundles; run it on its own (a trtexec log names its bundle with "
                             "--bundle)")
        result = bench.ingest(args.ingest, bundle=args.bundle, board=args.board, precision=args.precision)
        where = "board" if result["kind"] == "measured" else "host"
        name = re.sub(r"[^A-Za-z0-9]+", "-", f"{where}-{result['board']}-{result.get('bundle', '')}").strip("-")
        path = args.results / f"{name}-{stamp}.json"
        write_json(path, result)
        print(f"stored {result.get('bundle', '?')} ({result.get('target', '?')}) on {result['board']}, measured on the "
              f"{where}: {result['runtime']} {result['runtime_version']}, {result['precision']}, device "
              f"{result.get('device')}, power mode {result.get('power_mode')}: p50 {result['p50_ms']:.3f} ms -> {path}")
        return 0
    if not args.bundles:
        raise InputError("name at least one exported bundle (export/<run>/<target>), or use --ingest FILE")
    if args.runtime not in bench.RUNTIMES:
        raise InputError(f"unknown runtime {args.runtime!r}: expected one of {', '.join(bench.RUNTIMES)}")
    if args.threads < 0:
        raise InputError(f"--threads must be 0 (the runtime's default) or positive, got {args.threads}")
    if args.batch is not None and args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    if args.count < 1 or args.warmup < 0:
        raise InputError("--count must be at least 1 and --warmup at least 0")
    if not 1 <= args.rounds <= args.count:
        raise InputError(f"--rounds must be between 1 and --count ({args.count}), got {args.rounds}")
    require("onnx", *{"onnxruntime": ["onnxruntime"], "openvino": ["openvino"]}.get(args.runtime, []), purpose="bench")
    import onnx

    from .export import board_file, read_manifest

    profiles = bench.load_profiles(args.profiles or board_file("profiles.toml"))
    sessions, latencies = bench.run_rounds(
        lambda: [bench.open_bundle(bundle, args.runtime, threads=args.threads, batch=args.batch, distance=distance)
                 for bundle in args.bundles for distance in args.distance], count=args.count, warmup=args.warmup,
        rounds=args.rounds)
    results = []
    for session in sessions:
        row = bench.summarise(session, latencies[session.name], threads=args.threads, batch=len(session.sample))
        if args.runtime == "torch":
            from . import runs

            metrics = runs.load_metrics(session.bundle)
            row.update(test_accuracy=metrics["test_accuracy"], engine_bytes=metrics["engine_bytes"],
                       multiply_adds=metrics.get("multiply_adds"), cost=None, estimates=[])
        else:
            manifest = read_manifest(session.bundle)
            if session.distance == "graph":  # the cost model reads the whole graph; a split step has none
                model = onnx.load(str(session.bundle / manifest["onnx_model"]))
                cost = bench.graph_cost(model)
                row["cost"] = {k: v for k, v in cost.items() if k != "flops_by_op"}
                row["estimates"] = bench.estimates(cost, profiles, operations=len(model.graph.node))
            else:
                row["cost"], row["estimates"] = None, []
            row["test_accuracy"] = next((v["accuracy_exported"] for v in manifest["verification"]), None)
            row["engine_bytes"] = manifest["engine_bytes"]
            row["multiply_adds"] = manifest.get("multiply_adds")  # absent from bundles exported before it was recorded
            row["target"] = manifest["target"]
        row["command"] = _command(args)
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
    width = max(len("bundle"), *(len(row["name"]) for row in results))
    print(f"{'bundle':{width}s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'fps':>9s} "
          f"{'ratio':>6s} {'rounds':>11s} {'first ms':>8s}")
    for row in results:
        spread = f"{format_ratio(min(row['p50_ratio_rounds']))}-{format_ratio(max(row['p50_ratio_rounds']))}"
        print(f"{row['name']:{width}s} {row['p50_ms']:8.4f} {row['p90_ms']:8.4f} {row['p99_ms']:8.4f} "
              f"{row['mean_ms']:8.4f} {row['throughput_fps']:9.0f} {format_ratio(row['p50_ratio_to_first']):>6s} "
              f"{spread:>11s} {row['first_inference_ms']:8.3f}")
    print(f"{args.runtime} {results[0]['runtime_version']}, {args.count} interleaved inferences per bundle; "
          f"JSON in {args.results}")
    estimated = [(row["name"], e) for row in results for e in row.get("estimates", [])]
    if estimated:
        print("board latency ESTIMATES (devices/profiles.toml: roofline + assumed overheads; not measurements):")
        for name, e in estimated:
            print(f"  {name:{width}s} {e['board']}, {e['mode']}: {e['estimated_ms']:.3f} ms ({e['bound']}-bound; "
                  f"roofline {e['roofline_ms']:.4f} ms + overhead {e['overhead_ms']:.3f} ms)")
    return 0


def cmd_bench_search(args: argparse.Namespace) -> int:
    from . import pipeline, scale
    from .atomic import write_json
    from .config import RunConfig, make_config
    from .trunk import init_weights

    config: RunConfig = make_config(dataset=args.dataset, preset=args.preset, method=args.method,
                                    granularity=args.granularity, population_size=args.population_size,
                                    search_images=args.search_images, generations=(max(1, args.generations),))
    if args.generations < 1:
        raise InputError(f"--generations must be at least 1, got {args.generations}")
    if len(set(args.evaluators)) != len(args.evaluators):
        raise InputError("name each evaluator once")
    prepared = pipeline.prepare(config)
    factories = {spec: scale.evaluator_factory(prepared.problem, spec) for spec in args.evaluators}
    settings = pipeline.search_settings(config)
    if args.granularity == "filter":  # every filter's budget is the layer's: time the first filter of each layer
        settings = dataclasses.replace(settings, generations=tuple(
            args.generations * layer.out_channels for layer in prepared.spec.layers))
    result = scale.search_bench(prepared.problem, init_weights(prepared.spec, 0), settings, factories,
                                generations=args.generations)
    result.update(command=_command(args), machine=pipeline.machine_info(), dataset=prepared.dataset.name,
                  preset=prepared.preset, parameters=prepared.spec.parameters,
                  n_features=prepared.spec.n_features(prepared.dataset.image_size))
    if args.json:
        write_json(args.json, result)
    first = args.evaluators[0]
    print(f"{prepared.preset} trunk ({prepared.spec.parameters:,} parameters), {config.search_images} images a "
          f"generation; start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["startup_seconds"].items()))
    for row in result["blocks"]:
        differ = {name: "" if row["identical_to_first"][name] else
                  f", scores differ by up to {row['max_fitness_difference'][name]:.1e}" for name in args.evaluators}
        cells = ", ".join(f"{name} {row['seconds_per_generation'][name]:.3f} s ({row['ratio_to_first'][name]:.2f}x"
                          f"{differ[name]})" for name in args.evaluators)
        print(f"  {row['block']} (population {row['population']}, median of {row['generations']} generations): "
              f"{cells}; ratios to {first}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import pipeline, runs
    from .data import evaluation_set

    engine = runs.load_engine(args.run)
    spec = args.dataset or runs.load_config(args.run).dataset
    class_map = dict(pair.split("=", 1) for pair in args.class_map.split(",") if "=" in pair)
    if args.class_map and (len(class_map) != len([p for p in args.class_map.split(",") if p])
                           or not all(k and v for k, v in class_map.items())):
        raise InputError(f"--class-map {args.class_map!r}: expected dataset=engine pairs, e.g. zero=0,one=1")
    images, labels, names = evaluation_set(spec, engine.image_size[0], split=args.split)
    if tuple(images.shape[1:]) != engine.image_size:
        raise InputError(f"dataset {spec!r} has {images.shape[1]}x{images.shape[2]} images but the engine expects "
                         f"{engine.image_size[0]}x{engine.image_size[1]}")
    labels = pipeline.class_index(names, engine.class_names, class_map)[labels]  # matched by name
    from .device import resolve

    result = pipeline.evaluate(engine.to(resolve(args.device)), images, labels)
    result.update(dataset=spec, split="all" if args.split == "all" or (args.split == "auto" and spec.startswith(
        "folder:")) else "test")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{spec} ({'every image' if result['split'] == 'all' else 'test split'}): accuracy "
          f"{result['accuracy']:.4f} on {result['n_images']} images")
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
    if args.invert:
        images = 255 - images
    hint = " (after --invert)" if args.invert else ": pass --invert to flip it"
    for path, image in zip(args.images, images, strict=True):
        if looks_inverted(image, engine.input_mean):
            print(f"slicenet: warning: {path} looks inverted against the engine's training images (their mean "
                  f"brightness {engine.input_mean:.2f}, this image's {image.mean() / 255:.2f}){hint}",
                  file=sys.stderr)
    predicted, votes, _ = engine.predict(images)
    key, title, details = engine.head.details(votes, engine.class_names, engine.views)
    rows = [{"image": str(path), "class": int(p), "label": engine.class_names[p], key: detail}
            for path, p, detail in zip(args.images, predicted, details, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            shown = ", ".join(f"{label}: {value}" for label, value in row[key].items())
            print(f"{row['image']}: {row['label']}  ({title} {shown})")
    return 0


def looks_inverted(image: np.ndarray, training_mean: float) -> bool:
    """An image whose brightness is nearer the training images' once inverted (a dark digit on a light
    background, for an engine trained on MNIST's light digits on black), by a clear margin."""
    mean = float(image.mean()) / 255.0
    return abs((1.0 - mean) - training_mean) + 0.1 < abs(mean - training_mean)


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
    from .extras import require

    require("matplotlib", "onnx", purpose="report")
    if args.bench is not None and args.bench.is_file():
        raise InputError(f"--bench {args.bench} is a file; expected the folder 'slicenet bench' wrote its JSON to")
    arch = report.load_arch(args.arch)  # a folder that is no search fails before anything else is read
    # With --arch and no runs named, the searches alone: every run under runs/ would include each search's
    # individuals (they are run directories too).
    run_dirs = args.runs or ([] if arch else sorted(p.parent for p in Path("runs").rglob("metrics.json")))
    if not run_dirs and not arch:
        raise InputError("no finished runs to report: pass run directories, or run 'slicenet optimise' first")
    rows, skipped = report.collect(run_dirs, strict=args.strict)
    bench_folder = args.bench or args.out / "bench"
    bench, skipped_bench = report.load_bench(bench_folder)
    if args.strict and skipped_bench:
        path, why = skipped_bench[0]
        raise InputError(f"{path} is not a readable bench result ({why}); --strict: nothing was written")
    bundles = report.load_bundles(args.bundles)
    if run_dirs and not rows and len(skipped) == 1:  # the one run named is the error, said once
        path, why = skipped[0]
        raise InputError(f"{why if str(path) in why else f'{path}: {why}'}; nothing was written")
    for path, why in [*skipped, *skipped_bench]:
        print(f"slicenet: warning: skipped {path}: {why}", file=sys.stderr)
    if run_dirs and not rows:
        raise InputError("none of the runs named could be read; nothing was written")
    written = report.write_report(args.out, rows, command=_command(args), bench=bench, bench_folder=bench_folder,
                                  bundles=bundles, arch=arch)
    print(f"wrote {len(written)} files to {args.out}/ (REPORT.md, runs.csv, {len(written) - 2} plots) from "
          f"{len(rows)} runs and {len(bench)} bench results in {bench_folder}")
    return 0


# The output paths of every command: folders (--out, --results) and files (--json, where it is a path).
OUTPUT_FOLDERS, OUTPUT_FILES = ("out", "results"), ("json",)


def check_output_paths(args: argparse.Namespace) -> None:
    """An output path that cannot be written, as one line before any work: a folder that is a file, a
    file that is a folder, or either under a file."""
    for name in (*OUTPUT_FOLDERS, *OUTPUT_FILES):
        path = getattr(args, name, None)
        if not isinstance(path, Path):
            continue
        flag = "--" + name
        if name in OUTPUT_FOLDERS and path.exists() and not path.is_dir():
            raise InputError(f"{flag} {path} is a file; expected a folder path")
        if name in OUTPUT_FILES and path.is_dir():
            raise InputError(f"{flag} {path} is a folder; expected a file path")
        above = next((p for p in path.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise InputError(f"{flag} {path}: {above} is a file, not a folder; choose another path")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded beside results as the command that produced them
    try:
        check_output_paths(args)
        return int(args.func(args))
    except InputError as exc:
        print(f"slicenet: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"slicenet: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("slicenet: interrupted (an optimise run continues with --resume DIR)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
