"""``slicenet report``: regenerate ``results/`` from run directories, never from hand-typed numbers.

Runs that differ only in their seed form one group; the report quotes the group's median and range,
lists every run with the command that produced it and the machine it ran on, and puts the
reference paper's published figures beside ours in their own columns (they are the paper's numbers,
not ours, and say so).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import InputError
from .runs import ENGINE, HISTORY, load_config, load_engine, load_metrics

# "Hybrid Deep Learning Topology for Image Classification", table of results. Its engine sizes count
# the convolution (and dense) weights only, not a k-NN head's prototype bank.
REFERENCE: dict[str, dict[str, Any]] = {
    "dense 128": {"params": "1.2 M", "engine": "4.5 MB", "acc_4k_5": 97.5, "acc_60k_5": 99.91, "acc_4k_20": 98.0},
    "dense 64": {"params": "122 k", "engine": "0.5 MB", "acc_4k_5": 97.0, "acc_60k_5": 98.96, "acc_4k_20": 97.5},
    "dense 32": {"params": "70 k", "engine": "273 KB", "acc_4k_5": 97.0, "acc_60k_5": 98.98, "acc_4k_20": 97.5},
    "dense 16": {"params": "44.6 k", "engine": "174 KB", "acc_4k_5": 96.1, "acc_60k_5": 98.65, "acc_4k_20": 97.4},
    "dense 8": {"params": "31.7 k", "engine": "124 KB", "acc_4k_5": 87.5, "acc_60k_5": 97.8, "acc_4k_20": 96.5},
    "k-NN (k=9), CMA": {"params": "18.8 k", "engine": "74 KB", "acc_4k_5": 97.5, "acc_60k_5": 98.57,
                        "acc_4k_20": 97.5},
    "k-NN (k=9), PSO": {"params": "18.8 k", "engine": "74 KB", "acc_4k_5": 97.3, "acc_60k_5": 98.52,
                        "acc_4k_20": 97.3},
}
REFERENCE_ENGINE_BYTES = {"dense 128": 4.5e6, "dense 64": 0.5e6, "dense 32": 273e3, "dense 16": 174e3,
                          "dense 8": 124e3, "k-NN (k=9), CMA": 74e3, "k-NN (k=9), PSO": 74e3}

LEVEL_BAND = 0.03  # p50 ratios this close to 1 are reported as level: runs of the same bundles move this much

COLUMNS = ["run", "network", "kind", "head", "method", "dataset", "preset", "granularity", "parameters",
           "engine_bytes", "multiply_adds", "test_accuracy", "random_init_test_accuracy", "validation_accuracy",
           "evaluations", "wall_seconds", "seed", "cpu", "cores", "command"]
ENGINE_KINDS = {  # a run's kind (metrics.json) -> legend entry and marker of the accuracy / size plot
    "search": ("k-NN, gradient-free search", "o"),
    "compact": ("k-NN, compact bank", "s"),
    "backprop-knn": ("backprop trunk + k-NN", "^"),
    "backprop-dense": ("backprop, dense head", "D"),
    "pixels": ("k-NN on raw pixels", "v"),
}


def run_kind(metrics: dict) -> str:
    """What made a run's engine (``pipeline.KINDS``), as metrics.json records it; runs written before it
    was recorded say it in their other fields."""
    if "kind" in metrics:
        return str(metrics["kind"])
    if "hidden" in metrics:
        return "backprop-knn" if metrics.get("head") == "knn" else "backprop-dense"
    if metrics.get("compact"):
        return "compact"
    return "pixels" if metrics.get("preset") == "pixels" else "search"


def run_head(metrics: dict, config: dict) -> dict:
    """The engine's head settings (``Head.settings``), as metrics.json records them; for older runs, from
    what their config asked for (a condensed bank always votes by majority, with its own k)."""
    if "head_settings" in metrics:
        return dict(metrics["head_settings"])
    kind = run_kind(metrics)
    if kind == "backprop-dense":
        return {"kind": "dense", "layers": 2}
    if kind == "compact":
        return {"kind": "majority", "n_neighbors": metrics["compact"]["n_neighbors"],
                "metric": metrics["compact"].get("metric") or config.get("metric", "euclidean")}
    return {"kind": config.get("vote", "majority"), "n_neighbors": config.get("n_neighbors", 9),
            "metric": config.get("metric", "euclidean")}


def head_label(settings: dict, query_shifts: int = 0) -> str:
    """The head's own label (``Head.label``) from its settings, with the engine's test-time views."""
    from .heads import BankHead, head_class
    from .views import Views

    cls = head_class(settings["kind"])
    if not issubclass(cls, BankHead):
        return settings["kind"]
    head = cls(n_neighbors=int(settings["n_neighbors"]), metric=str(settings.get("metric", "euclidean")))
    return head.label(Views(int(query_shifts)))


def query_views(metrics: dict, config: dict) -> int:
    """The engine's test-time views (query shifts): a compact engine's own, never its source run's
    (whose config.toml it carries)."""
    if run_kind(metrics) == "compact":
        return int(metrics.get("query_shifts", 0))
    return int(metrics.get("query_shifts", config.get("query_shifts", 0)))


def bank_shifts(metrics: dict, config: dict) -> int:
    """Shifted copies per bank image: resolved in metrics.json since 0.3 (the config may say -1, auto);
    for a condensed bank, the shifted copies its prototypes were fitted to (none before 0.4)."""
    if metrics.get("compact"):
        return int(metrics["compact"].get("bank_shifts", 0))
    return max(0, int(metrics.get("bank_shifts", config.get("bank_shifts", 0))))


def shifts_label(shifts: int) -> str:
    """The row-name suffix of a bank with shifted copies ("" for a plain bank)."""
    return f", bank + {shifts}-px shifts" if shifts else ""


def network_name(metrics: dict, config: dict) -> str:
    """The row label, matching the reference's names where the network is the same kind. Built from
    the run's kind and head (data), never parsed back."""
    kind, views = run_kind(metrics), query_views(metrics, config)
    head = head_label(run_head(metrics, config), views)
    if kind.startswith("backprop"):
        epochs = "" if config.get("epochs", 5) == 5 else f", {config['epochs']} epochs max"
        if kind == "backprop-knn":
            return f"backprop trunk + {head}{epochs}"
        return f"dense {metrics['hidden']}{epochs}"
    if kind == "pixels":
        return f"{head} on raw pixels"
    name = f"{head}, {metrics['method'].upper()}"
    if config.get("granularity", "layer") != "layer":
        name += ", per filter"
    if config.get("sweeps", 1) > 1:
        name += f", {config['sweeps']} sweeps"
    if config.get("fitness_vote", "majority") != "majority":
        name += f", {config['fitness_vote']} fitness"
    name += shifts_label(bank_shifts(metrics, config))
    if config.get("scoring", "holdout") != RunConfig().scoring:
        name += f", {config.get('scoring', 'holdout')} scoring"
    compact = metrics.get("compact")
    if compact:
        name += (f", compact: {compact['method']} {compact['prototypes']}/class, dims {compact['dims'] or 'all'}, "
                 f"{compact['precision']}")
        name += f", {compact['metric']}" if compact.get("metric") else ""
    return name


def reference_key(metrics: dict, config: dict) -> str | None:
    """The reference paper's row for the same network: a dense baseline of its widths (5 epochs), or
    the k=9 majority-vote engine searched layer by layer by CMA-ES or PSO (whatever its bank's shifted
    copies or scoring; the paper's figures are MNIST's)."""
    kind = run_kind(metrics)
    if metrics.get("transfer") or metrics.get("enrolled"):  # not the paper's setting: no reference row
        return None
    if kind == "backprop-dense" and config.get("epochs", 5) == 5:
        key = f"dense {metrics['hidden']}"
    elif kind == "search" and metrics.get("method") in ("cma", "pso"):
        head = run_head(metrics, config)
        plain = (head["kind"] == "majority" and int(head["n_neighbors"]) == 9
                 and not query_views(metrics, config)
                 and config.get("granularity", "layer") == "layer" and config.get("sweeps", 1) == 1
                 and config.get("fitness_vote", "majority") == "majority")
        key = f"k-NN (k=9), {metrics['method'].upper()}" if plain else ""
    else:
        key = ""
    return key if key in REFERENCE else None


def collect(run_dirs: list[Path], *, strict: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
    """One row per run directory (metrics.json + config.toml), and the runs skipped with the reason
    (a run that cannot be read: its one-line error). With ``strict`` the first such run is an error."""
    rows, skipped = [], []
    for run_dir in run_dirs:
        try:
            rows.append(_row(Path(run_dir)))
        except InputError as exc:
            if strict:
                raise InputError(f"{run_dir}: {exc} (--strict: nothing was written)") from None
            skipped.append((Path(run_dir), str(exc)))
    return rows, skipped


def _row(run_dir: Path) -> dict:
    metrics = load_metrics(run_dir)
    config = load_config(run_dir).to_dict()
    machine = metrics.get("machine", {})
    row = {key: metrics.get(key, "") for key in COLUMNS}
    if row["multiply_adds"] == "" and (run_dir / ENGINE).is_file():  # older runs did not record it
        row["multiply_adds"] = load_engine(run_dir).multiply_adds
    try:
        head = run_head(metrics, config)
        views = query_views(metrics, config)
        row.update(run=str(run_dir), cpu=machine.get("cpu", ""), cores=machine.get("cores", ""),
                   network=network_name(metrics, config), path=run_dir, kind=run_kind(metrics),
                   head=head["kind"], head_label=head_label(head, views), reference=reference_key(metrics, config),
                   full_bank_test_accuracy=metrics.get("full_bank_test_accuracy"),
                   full_bank_engine_bytes=metrics.get("full_bank_engine_bytes"), compact=metrics.get("compact"),
                   frontier=metrics.get("frontier"), shifts=bank_shifts(metrics, config),
                   transfer=metrics.get("transfer"), enrolled=metrics.get("enrolled"),
                   enrolled_from=metrics.get("enrolled_from", ""), per_class=metrics.get("per_class", 0),
                   evaluated_on=metrics.get("evaluated_on", ""), ga=_ga_of(run_dir),
                   bank_size=metrics.get("bank_size", 0))
        row["group"] = (row["network"], row["dataset"], row["preset"],
                        tuple(sorted((k, str(v)) for k, v in config.items() if k not in ("seed", "threads"))))
        for key in ("test_accuracy", "random_init_test_accuracy", "wall_seconds", "evaluations"):
            float(row[key] or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{run_dir / 'metrics.json'} is damaged (missing or bad {exc}); re-run the command "
                         "that wrote it") from None
    return row


def _ga_of(run_dir: Path) -> dict | None:
    """The transfer GA a run was an individual of (``DIR/individuals/RUN`` beside ``DIR/ga.json``): its
    mode, how many transfers it ran and their total wall time and evaluations."""
    state_file = run_dir.parent.parent / "ga.json"
    if run_dir.parent.name != "individuals" or not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
        evaluated = list(state["evaluated"].values())
        return {"mode": state["config"]["ga"], "transfers": len(evaluated),
                "generations": int(state["config"]["ga_generations"]),
                "wall_seconds": sum(e["wall_seconds"] for e in evaluated),
                "evaluations": sum(e["evaluations"] for e in evaluated),
                "best": max(evaluated, key=lambda e: e["validation_accuracy"])["run"] == str(run_dir)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def transfer_table(rows: list[dict]) -> list[str]:
    """Jeong et al.'s layout: what was re-tuned, and what it cost (a GA's row: its choice, and the time
    and evaluations of all its transfers)."""
    transfers = [r for r in rows if r.get("transfer")]
    if not transfers:
        return []
    lines = ["", "## Transfer (a source run's trunk on new data)", "",
             "Re-tuned: what the gradient-free search changed, from the source's weights; the rest is kept. A GA's "
             "row is its choice (the individual of best validation accuracy); its wall time and evaluations are "
             "those of every transfer it ran.", "",
             "| dataset | source | re-tuned | test acc | validation | evaluations | wall s | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(transfers, key=lambda r: (r["dataset"], str(r["transfer"]["source"]))):
        t, ga = r["transfer"], r.get("ga")
        tuned = t["tune"] + (f" ({t['granularity']}s)" if t.get("granularity") == "filter" and t["tune"] != "none"
                             else "")
        if t.get("keep"):  # a depth genome's
            tuned += f", the source's first {t['keep']} layers carried over (any after them re-initialised)"
        evaluations, wall = r["evaluations"], r["wall_seconds"]
        if ga is not None:
            tuned = (f"random selection ({ga['mode']} genomes, {ga['transfers']} transfers) chose: {tuned}"
                     if ga["generations"] == 0 else f"GA ({ga['mode']}, {ga['transfers']} transfers) chose: {tuned}")
            evaluations, wall = ga["evaluations"], ga["wall_seconds"]
        lines.append(f"| {r['dataset']} | `{t['source']}` | {tuned} | {_pct(r['test_accuracy'])} | "
                     f"{_pct(r['validation_accuracy'] or 0)} | {evaluations:,} | {wall:.0f} | `{r['command']}` |")
    return lines


def enrol_table(rows: list[dict]) -> list[str]:
    enrolled = [r for r in rows if r.get("enrolled")]
    if not enrolled:
        return []
    lines = ["", "## Enrolment (new classes as prototypes, no search)", "",
             "| engine | enrolled from | classes added (prototypes) | per class | bank | test acc | evaluated on |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(enrolled, key=lambda r: (r["enrolled_from"], r["per_class"] or 10**9)):
        added = ", ".join(f"{name} ({n})" for name, n in r["enrolled"].items())
        lines.append(f"| `{Path(r['run']).name}` | `{r['enrolled_from']}` | {added} | {r['per_class'] or 'all'} | "
                     f"{r['bank_size']:,} | {_pct(r['test_accuracy'])} | {r['evaluated_on']} |")
    return lines


def _count(value: int | str) -> str:
    """A count with thousands separators; blank where the run did not record it."""
    return f"{value:,}" if value != "" else ""


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def groups(rows: list[dict]) -> list[dict]:
    """Median, min and max per group of runs that differ only in their seed, plus derived rows for
    the random-initialised trunks of the k-NN runs (measured by those runs, before any search)."""
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["group"], []).append(row)
    summary = []
    for members in by_key.values():
        first = members[0]
        accuracy = [m["test_accuracy"] for m in members]
        summary.append({
            "network": first["network"], "dataset": first["dataset"], "preset": first["preset"],
            "parameters": first["parameters"], "engine_bytes": first["engine_bytes"],
            "multiply_adds": first["multiply_adds"], "runs": len(members),
            "test_median": statistics.median(accuracy), "test_min": min(accuracy), "test_max": max(accuracy),
            "random_init_median": statistics.median(m["random_init_test_accuracy"] for m in members),
            "wall_median": statistics.median(m["wall_seconds"] for m in members),
            "wall_max": max(m["wall_seconds"] for m in members),
            "evaluations": statistics.median(m["evaluations"] for m in members),
            "command": first["command"], "best_run": max(members, key=lambda m: m["test_accuracy"])["path"],
            "derived": False, "kind": first["kind"], "reference": first["reference"],
        })
    # The random-init trunk of a (preset, seed) is the same whatever the search did next: one row each
    # per bank (plain or with shifted copies) and k-NN head, condensed runs left out (they copy their
    # source's).
    random_init: dict[tuple, dict] = {}
    for row in rows:
        if row["kind"] == "search" and row["evaluations"]:
            random_init.setdefault((row["dataset"], row["preset"], row["shifts"], row["head_label"], row["seed"]), row)
    by_preset: dict[tuple, list[dict]] = {}
    for (dataset, preset, shifts, head, _), row in random_init.items():
        by_preset.setdefault((dataset, preset, shifts, head), []).append(row)
    for members in by_preset.values():
        accuracy = [m["random_init_test_accuracy"] for m in members]
        first = members[0]
        summary.append({
            "network": f"{first['head_label']} on a random-init trunk" + shifts_label(first["shifts"]),
            "dataset": first["dataset"], "preset": first["preset"],
            "parameters": first["parameters"], "engine_bytes": first["engine_bytes"],
            "multiply_adds": first["multiply_adds"], "runs": len(members),
            "test_median": statistics.median(accuracy), "test_min": min(accuracy), "test_max": max(accuracy),
            "wall_median": 0.0, "wall_max": 0.0, "evaluations": 0, "best_run": first["path"], "derived": True,
            "kind": "search", "reference": None,
            "command": "measured by the runs above before their search (metrics.json random_init_test_accuracy)",
        })
    return sorted(summary, key=lambda g: (g["dataset"], g["preset"], -g["test_median"]))


def _reference_cells(group: dict) -> str:
    # The paper's figures are MNIST's; a shifted bank or another fitness scoring is still the same
    # network (the bank's copies are counted in the engine bytes column): ``reference_key``.
    ref = REFERENCE.get(group["reference"] or "")
    if ref is None or not str(group["dataset"]).startswith("mnist"):
        return "| | | | | |"
    return f"| {ref['params']} | {ref['engine']} | {ref['acc_4k_5']} | {ref['acc_60k_5']} | {ref['acc_4k_20']} |"


def compact_table(rows: list[dict]) -> list[str]:
    # condensed engines beside their source's full bank (an engine enrolled into one keeps its
    # reduction's record, not a full bank: the enrolment table has it)
    compact = [r for r in rows if r["compact"] and not r["enrolled"]]
    if not compact:
        return []
    lines = ["", "## Compact engines (condensed banks)", "",
             "Loss is the compact engine's test accuracy minus its source run's (full bank), in points.", "",
             "| engine | dataset | engine bytes | full-bank bytes | multiply-adds | test acc | full-bank test acc "
             "| loss (points) | command |", "|---|---|---|---|---|---|---|---|---|"]
    for r in compact:
        lines.append(f"| {r['network']} | {r['dataset']} | {r['engine_bytes']:,} | {r['full_bank_engine_bytes']:,} | "
                     f"{_count(r['multiply_adds'])} | "
                     f"{_pct(r['test_accuracy'])} | {_pct(r['full_bank_test_accuracy'])} | "
                     f"{100 * (r['test_accuracy'] - r['full_bank_test_accuracy']):+.2f} | `{r['command']}` |")
    return lines


def load_bench(folder: Path) -> tuple[list[dict], list[tuple[Path, str]]]:
    """The benchmark results in ``folder`` (``slicenet bench --results``), and the files skipped as
    unreadable, with the reason."""
    import json

    results, skipped = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "p50_ms" not in data:
                raise ValueError("not a slicenet bench result")
        except (OSError, ValueError) as exc:
            skipped.append((path, f"{exc}"))
            continue
        data["file"] = path.name
        results.append(data)
    return results, skipped


def load_bundles(folders: list[Path]) -> list[dict]:
    """What the report's export section lists of each exported bundle: its target, its operations
    (counted in its files, so bundles of earlier releases count alike), its verification and the
    OpenVINO 2022.3 check its manifest records."""
    import onnx

    from .export import read_manifest
    from .export.targets import ir_summary

    bundles = []
    for folder in folders:
        manifest = read_manifest(folder)
        onnx_file = Path(folder) / manifest["onnx_model"]
        ir_file = Path(folder) / "engine.xml"
        graph = onnx.load(str(onnx_file), load_external_data=False).graph
        bundles.append({
            "bundle": str(folder), "target": manifest["target"], "batch": manifest.get("batch", 1),
            "slicenet_version": manifest.get("slicenet_version", ""),
            "description_ops": manifest.get("checks", {}).get("operations", {}).get("description"),
            "onnx_ops": len(graph.node), "onnx_op_types": sorted({n.op_type for n in graph.node}),
            "ir_layers": ir_summary(ir_file)["compute_layers"] if ir_file.is_file() else None,
            "verification": manifest.get("verification", []),
            "openvino_2022": manifest.get("checks", {}).get("openvino_2022"),
            "engine_bytes": manifest.get("engine_bytes"),
        })
    return bundles


def load_arch(folders: list[Path]) -> list[dict]:
    """The states of architecture searches (``OUT/arch.json`` of ``slicenet arch-search``)."""
    import json

    from .archsearch import ArchConfig

    states = []
    for folder in folders:
        path = Path(folder) / "arch.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{folder} is not an architecture search (no arch.json); pass an arch-search --out "
                             "folder") from None
        except ValueError as exc:
            raise InputError(f"{path} is damaged ({exc})") from None
        state["folder"] = str(folder)
        state["config"] = ArchConfig.from_saved(state.get("config", {}))
        states.append(state)
    return states


def arch_tables(states: list[dict]) -> list[str]:
    """Per search: fitness per generation (the layout of Genetic CNN's table 1), and the front with each
    structure's bit string and DAG."""
    if not states:
        return []
    from .archsearch import describe

    lines = ["", "## Architecture search (Genetic CNN)", ""]
    lines += _arch_comparison(states)
    for state in states:
        config = state["config"]
        lines += ["", f"### `{state['folder']}`: {config['dataset']}, stages {config['stages']}, nodes "
                  f"{'/'.join(map(str, config['nodes']))}, filters {'/'.join(map(str, config['filters']))}, "
                  f"{config['strategy']}, init {config['init']}, N={config['population']}, T={config['generations']}"
                  + _budgets(config)
                  + (", NSGA-II front" if config["front"] else ""), "",
                  "Fitness: the k-NN validation accuracy of each individual's short gradient-free search "
                  f"({config['search_generations']} generations per convolution, {config['search_images']} images a "
                  "generation); a structure evaluated again is the mean of its runs."
                  + (f" {len(state['skipped'])} structures drawn were over a budget by their structure alone and "
                     "were not run (the worst fitness, 0)." if state.get("skipped") else ""), "",
                  "| generation | evaluations | max | min | mean | median | best structure |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['generation']} | {r['evaluations']} | {_pct(r['max'])} | {_pct(r['min'])} | {_pct(r['mean'])} "
                  f"| {_pct(r['median'])} | `{r['best']}` |" for r in state["history"]]
        lines += ["", f"Front (validation accuracy against {config['cost']}; test accuracy for reference only):", "",
                  f"| structure | DAG | validation | test | {config['cost']} | runs |", "|---|---|---|---|---|---|"]
        lines += [f"| `{m['genome']}` | {describe(m['genome'])} | {_pct(m['validation_accuracy'])} | "
                  f"{_pct(m['test_accuracy'])} | {m['cost']:,.6g} | {m['evaluations']} |" for m in state["front"]]
        checks = state.get("front_checks") or []
        failing = [c for c in checks
                   if any(str(c.get(k, "")).startswith("fails") for k in ("jetson", "ncs2", "ncs2_ir"))]
        lines += ["", "Every front member's exported graph checked against the Jetson's and the NCS2's rules: "
                  + (f"{len(checks) - len(failing)} of {len(checks)} pass" if checks else "not checked yet") + "."]
        lines += _fitness_faithfulness(state)
    return lines


def _budgets(config: dict) -> str:
    """A search's hard budgets as text (", budget 108800 macs"), empty where it has none."""
    from .archsearch import COST_UNITS

    return "".join(f", budget {config[f'budget_{unit}']:g} {unit}" for unit in COST_UNITS.values()
                   if config[f"budget_{unit}"] is not None)


def _arch_comparison(states: list[dict]) -> list[str]:
    """Searches of one dataset and one search space (nodes, filters, budgets and fitness budget) side by
    side at equal evaluations (the fewest any of them made): the paper's ablations, GA against random
    search and the all-zero start against a random one."""
    space = ("dataset", "nodes", "filters", "budget_macs", "budget_kb", "budget_ms", "search_generations",
             "search_images")
    by_space: dict[tuple, list[dict]] = {}
    for state in states:
        by_space.setdefault(tuple(str(state["config"][key]) for key in space), []).append(state)
    lines: list[str] = []
    for group in by_space.values():
        if len(group) < 2:
            continue
        config = group[0]["config"]
        budgets = _budgets(config)
        equal = min(state["history"][-1]["evaluations"] for state in group if state["history"])
        at_equal = {id(state): [r for r in state["history"] if r["evaluations"] <= equal] for state in group}
        lines += [f"Searches on {config['dataset']} at equal evaluations ({equal}) over nodes "
                  f"{'/'.join(map(str, config['nodes']))}, filters {'/'.join(map(str, config['filters']))}{budgets}: "
                  "the best fitness of any generation "
                  "(a structure's mean over its evaluations so far) and the last generation's mean.", "",
                  "| search | strategy | init | seed | best fitness | last generation's mean | its best structure |",
                  "|---|---|---|---|---|---|---|"]
        results: dict[tuple[str, str, int], tuple[float, float]] = {}  # for the GA-against-random pairing
        first: dict[tuple[str, str, int], str] = {}
        repeats = []
        for state in group:
            rows = at_equal[id(state)]
            if not rows:
                continue
            best = max(rows, key=lambda r: r["max"])
            config = state["config"]
            lines.append(f"| `{state['folder']}` | {config['strategy']} | {config['init']} | {config['seed']} | "
                         f"{_pct(best['max'])} | {_pct(rows[-1]['mean'])} | `{best['best']}` |")
            key = (config["strategy"], config["init"], config["seed"])
            if key in first:  # one search counted once: the first listed is paired, the others named
                repeats.append(f"`{state['folder']}` repeats `{first[key]}`'s strategy, start and seed")
            else:
                results[key], first[key] = (best["max"], rows[-1]["mean"]), state["folder"]
        verdict = ga_against_random(results)
        lines += ["", *verdict]
        if repeats and verdict:
            lines += ["; ".join(repeats) + ": only the first is paired (a seed's two searches are not two samples).",
                      ""]
    return lines


def ga_against_random(results: dict[tuple[str, str, int], tuple[float, float]]) -> list[str]:
    """Whether the GA beats random search: searches paired by start and seed ((strategy, init, seed) ->
    (best fitness, last generation's mean), at equal evaluations), and a one-sided paired t-test of the
    GA's best fitness (the validation metric) over random search's at the 5 % level, which needs two
    pairs or more. Its verdict, a sentence either way; no lines without a pair."""
    pairs = sorted((init, seed) for strategy, init, seed in results
                   if strategy == "ga" and ("random", init, seed) in results)
    if not pairs:
        return []
    best = [100 * (results[("ga", *p)][0] - results[("random", *p)][0]) for p in pairs]
    last = [100 * (results[("ga", *p)][1] - results[("random", *p)][1]) for p in pairs]
    text = (f"GA against random search, paired by start and seed ({', '.join(f'seed {s} {i}' for i, s in pairs)}): "
            f"the GA's best fitness minus random search's {', '.join(f'{d:+.2f}' for d in best)} points, its last "
            f"generation's mean {', '.join(f'{d:+.2f}' for d in last)}; the GA is ahead on best fitness in "
            f"{sum(d > 0 for d in best)} of {len(pairs)}.")
    if len(pairs) < 2:
        return [f"{text} One pair cannot show that the GA beats random search: run another --seed of both.", ""]
    mean, se, p = _paired_t(best)
    p_last = _paired_t(last)[2]
    verdict = ("**The GA beats random search**" if p < 0.05 else "**The GA is not shown to beat random search**")
    return [f"{text} Mean {mean:+.2f} points, standard error {se:.2f}: one-sided paired t-test p = {p:.3f} over "
            f"{len(pairs)} pairs. {verdict} on best fitness at the 5 % level (the verdict's measure; the last "
            f"generation's mean gives p = {p_last:.3f}, but a GA's population gathers on structures it has found "
            "good, so its mean rises without its best improving).", ""]


def _paired_t(differences: list[float]) -> tuple[float, float, float]:
    """A paired t-test of two or more differences: their mean, its standard error, and the one-sided p
    that the mean is above 0."""
    from scipy import stats

    mean, se = statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(differences))
    p = float(stats.t.sf(mean / se, len(differences) - 1)) if se > 0 else (0.0 if mean > 0 else 1.0)
    return mean, se, p


def _fitness_faithfulness(state: dict) -> list[str]:
    """How faithfully the short fitness ranks structures: its noise over repeated evaluations, and the
    rank check against longer searches (``arch-search --rank-check``) where it was run."""
    from .archsearch import repeat_noise

    noise = state.get("rank_check", {}).get("noise") or repeat_noise(state["evaluations"])
    lines = []
    if noise.get("structures_repeated"):
        lines += ["", f"Noise of the short fitness: {noise['structures_repeated']} structures evaluated more than once "
                  f"({noise['evaluations_repeated']} evaluations) vary by {100 * noise['within_sd']:.2f} points "
                  f"(pooled standard deviation) with the search's seed; the structures' means spread by "
                  f"{100 * noise['between_sd_of_means']:.2f} points; "
                  + ("no ICC(1): the search ran one structure only." if math.isnan(noise["icc1"]) else
                     f"ICC(1) {noise['icc1']:.2f} (the share of one evaluation's variance that is the structure's"
                     + ("; at or below 0, no difference between the structures shows through the noise"
                        if noise["icc1"] <= 0 else "") + ").")]
    check = state.get("rank_check")
    if not check:
        return lines
    config = state["config"]
    lines += ["", f"Rank check: {len(check['structures'])} structures searched again with {check['generations']} "
              f"generations per convolution on {check['images']} images (the short fitness: "
              f"{config['search_generations']} on {config['search_images']}). Spearman's rho "
              f"{check['spearman']:.2f}, Kendall's tau-b {check['kendall_tau_b']:.2f} (short fitness against the long "
              f"searches' validation accuracy; against their test accuracy: rho {check['spearman_long_test']:.2f}).",
              "", "| structure | short validation (evaluations) | long validation | long test | long wall s |",
              "|---|---|---|---|---|"]
    lines += [f"| `{r['genome']}` | {_pct(r['short_validation'])} ({r['short_evaluations']}) | "
              f"{_pct(r['long_validation'])} | {_pct(r['long_test'])} | {r['long_wall_seconds']:,.0f} |"
              for r in check["structures"]]
    return lines


def bundle_table(bundles: list[dict]) -> list[str]:
    if not bundles:
        return []
    lines = ["", "## Exported bundles", "",
             "Operations are counted in each bundle's files: ONNX nodes, and IR layers without Parameter, Result, "
             "Const and the Converts that only decompress an FP16 constant (the IR has no bias input, so a Conv or "
             "a Gemm with a bias is two layers there, and an ArgMax a TopK and a Reshape). "
             "Verification: every test image's class against the torch engine's. OpenVINO 2022.3.2: read and "
             "compiled by that release's own runtime (`slicenet check-2022`), and the sample images' classes "
             "by its CPU plugin.", "",
             "| bundle | target | slicenet | graph description ops | ONNX nodes | IR layers | verification "
             "| OpenVINO 2022.3.2 |", "|---|---|---|---|---|---|---|---|"]
    for b in bundles:
        checks = "; ".join(f"{v['runtime']} {v['precision']}: {100 * v['agreement']:.2f} % of {v['images']:,}"
                           for v in b["verification"])
        lines.append(f"| `{b['bundle']}` | {b['target']} | {b['slicenet_version']} | "
                     f"{b['description_ops'] if b['description_ops'] is not None else ''} | {b['onnx_ops']} | "
                     f"{b['ir_layers'] if b['ir_layers'] is not None else ''} | {checks} | "
                     f"{_check_2022_cell(b['openvino_2022'], b['target'])} |")
    return lines


def _check_2022_cell(check: dict | None, target: str) -> str:
    if check is None:
        return "not checked (exported before the check existed)" if target == "ncs2" else ""
    if check["status"] == "not checked":
        return f"not checked: {check.get('reason', '')}"
    cells = []
    for name, row in check["models"].items():
        state = "read, compiled" if row["compiled"] else ("read, NOT compiled" if row["read"] else "NOT read")
        if "samples" in row:
            state += f", {row['samples_agree']}/{row['samples']} samples agree"
        cells.append(f"{name}: {state}")
    return "; ".join(cells)


def format_ratio(value: float) -> str:
    """A latency ratio: two decimals, or two significant digits below 0.1 (0.0042, not 0.00)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def latency_verdict(row: dict) -> str:
    """Faster or slower only where every round of the interleaved run (each with fresh sessions) is
    more than ``LEVEL_BAND`` away from 1 on the same side: repeated runs of the same bundles here moved
    by about 3 % as a whole, so a steady 2 % is not a difference. Runs timed before rounds were recorded fall
    back to the band around their overall ratio."""
    rounds = row.get("p50_ratio_rounds") or []
    if len(rounds) >= 3:
        spread = f"per-round ratios {format_ratio(min(rounds))}-{format_ratio(max(rounds))}"
        if max(rounds) < 1 - LEVEL_BAND:
            return f"faster (in all {len(rounds)} rounds: {spread})"
        if min(rounds) > 1 + LEVEL_BAND:
            return f"slower (in all {len(rounds)} rounds: {spread})"
        return f"level (not {LEVEL_BAND:.0%} apart in every round: {spread})"
    ratio = row["p50_ratio_to_first"]
    return (f"level (within {LEVEL_BAND:.0%}: not a measurable difference)" if abs(ratio - 1) < LEVEL_BAND
            else "slower" if ratio > 1 else "faster")


def latency_tables(bench: list[dict], folder: Path | None = None) -> list[str]:
    host = [b for b in bench if b.get("kind") not in ("measured", "host-runner")]
    boards = [b for b in bench if b.get("kind") == "measured"]
    if not bench:
        if folder is None:
            return []
        return ["", "## Latency", "", f"No benchmark results in `{folder}`: time bundles with `slicenet bench "
                f"BUNDLE... --results {folder}` (or pass `--bench DIR` to the report) to fill this section."]
    lines = ["", "## Latency", "", *([f"Benchmark results read from `{folder}`.", ""] if folder is not None else []),
             "### Host, measured (`slicenet bench`, interleaved, batch 1)", "",
             "| bundle | runtime | threads | p50 ms | p90 ms | p99 ms | mean ms | fps | p50 / first bundle | "
             "first inference ms | test acc | engine bytes | multiply-adds | machine | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in host:
        acc = _pct(b["test_accuracy"]) if b.get("test_accuracy") is not None else ""
        machine = b.get("machine", {})
        lines.append(f"| {b['name']} | {b['runtime']} {b['runtime_version']} | {b['threads'] or 'default'} | "
                     f"{b['p50_ms']:.4f} | {b['p90_ms']:.4f} | {b['p99_ms']:.4f} | {b['mean_ms']:.4f} | "
                     f"{b['throughput_fps']:.0f} | {format_ratio(b['p50_ratio_to_first'])} | "
                     f"{b['first_inference_ms']:.3f} | "
                     f"{acc} | {b.get('engine_bytes', 0):,} | {_count(b.get('multiply_adds') or '')} | "
                     f"{machine.get('cpu', '')}, {machine.get('cores', '')} "
                     f"cores | `{b.get('command', '')}` |")
    runs_by_command: dict[str, list[dict]] = {}
    for b in host:
        runs_by_command.setdefault(b.get("command", ""), []).append(b)
    findings = []
    for members in runs_by_command.values():
        first = min(members, key=lambda b: abs(b["p50_ratio_to_first"] - 1.0))
        for b in members:
            if b is not first:
                verdict = latency_verdict(b)
                findings.append(f"- `{b['name']}` ({b['runtime']}): p50 {b['p50_ms']:.4f} ms, "
                                f"{format_ratio(b['p50_ratio_to_first'])}x the p50 of `{first['name']}` "
                                f"({first['p50_ms']:.4f} ms) in the same interleaved run: **{verdict}**.")
    if findings:
        lines += ["", "In words (each against the first bundle of its own interleaved run):", ""] + findings
    estimated = [(b["name"], e) for b in host for e in b.get("estimates", [])]
    if estimated:
        lines += ["", "### Boards, ESTIMATED (devices/profiles.toml: roofline plus assumed overheads; not measured)",
                  "", "| bundle | board | mode | estimated ms | bound |", "|---|---|---|---|---|"]
        seen = set()
        for name, e in estimated:
            if (name, e["board"], e["mode"]) in seen:
                continue
            seen.add((name, e["board"], e["mode"]))
            lines.append(f"| {name} | {e['board']} | {e['mode']} | {e['estimated_ms']:.4f} | {e['bound']} |")
    host_runner = [b for b in bench if b.get("kind") == "host-runner"]
    if host_runner:
        lines += ["", "### Host, measured by the board runner (`devices/run_engine.py` on a PC: no stick, no Jetson "
                  "GPU)", "", "| bundle | target | machine | runtime | precision | device | p50 ms | p99 ms | fps |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {b.get('bundle', '')} | {b.get('target', '')} | {b['board']} | {b['runtime']} "
                  f"{b['runtime_version']} | {b['precision']} | {b.get('device', '')} | {b['p50_ms']:.3f} | "
                  f"{_ms(b.get('p99_ms'))} | {b['throughput_fps']:.0f} |" for b in host_runner]
    lines += ["", "### Boards, measured (`slicenet bench --ingest`)", ""]
    if boards:
        lines += ["| board | bundle | target | runtime | precision | device | power mode | p50 ms | p99 ms | fps |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {b['board']} | {b.get('bundle', '')} | {b.get('target', '')} | {b['runtime']} "
                  f"{b['runtime_version']} | {b['precision']} | {b.get('device', '')} | {b.get('power_mode')} | "
                  f"{b['p50_ms']:.3f} | {_ms(b.get('p99_ms'))} | {b['throughput_fps']:.0f} |" for b in boards]
    else:
        lines.append("None yet: no board was attached here; results from `devices/run_engine.py` on a board, or "
                     "trtexec's output, appear here once ingested.")
    return lines


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def render_markdown(rows: list[dict], *, command: str, plots: list[str], bench: list[dict] | None = None,
                    bench_folder: Path | None = None, bundles: list[dict] | None = None,
                    arch: list[dict] | None = None) -> str:
    if not rows:  # a report of architecture searches alone (report --arch with no runs named)
        return _searches_only_markdown(command=command, plots=plots, arch=arch or [], bundles=bundles or [],
                                       bench=bench or [], bench_folder=bench_folder)
    lines = [
        "# slicenet results", "",
        f"Generated by `{command}` from {len(rows)} run directories: every measured figure comes from a run's",
        "`metrics.json`. Test accuracies in %, on the dataset's fixed test split, which neither the search nor",
        "early stopping ever sees. Runs that differ only in `--seed` form one row: median [min, max].",
        "**Engine bytes** are ours: every byte inference needs (the engine file: trunk, post-processing,",
        "prototype bank and labels, or the dense head). The reference's engine sizes, in their own columns,",
        "count the network weights only, not a k-NN head's bank. Reference accuracies are the paper's",
        "published MNIST figures (4,000/1,000 and 60,000/10,000 splits), not measured here.",
        "**Multiply-adds** are per image: the convolutions, then the dense layers, or the projection and one",
        "product per prototype and feature of the bank (a full bank of 60,000 images costs 60,000 x its width).", "",
        "## Measured networks beside the reference", "",
        "| network | dataset | preset | params | engine bytes | multiply-adds | runs | test acc "
        "| wall s (median / max) | ref params | ref engine (weights only) | ref acc 4k/1k 5 ep "
        "| ref acc 60k/10k 5 ep | ref acc 4k/1k 20 ep | command (first seed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups(rows):
        lines.append(
            f"| {g['network']} | {g['dataset']} | {g['preset']} | {g['parameters']:,} | {g['engine_bytes']:,} | "
            f"{_count(g['multiply_adds'])} | {g['runs']} | "
            f"{_pct(g['test_median'])} [{_pct(g['test_min'])}, {_pct(g['test_max'])}] | "
            f"{g['wall_median']:.0f} / {g['wall_max']:.0f} " + _reference_cells(g) + f" `{g['command']}` |")
    lines += compact_table(rows)
    lines += transfer_table(rows)
    lines += enrol_table(rows)
    lines += arch_tables(arch or [])
    lines += bundle_table(bundles or [])
    lines += latency_tables(bench or [], bench_folder)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Every run, with its command and machine", "",
              "| run | network | test acc | random init | validation | evaluations | wall s | machine | command |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{Path(row['run']).name}` | {row['network']} | {_pct(row['test_accuracy'])} | "
                     f"{_pct(row['random_init_test_accuracy'])} | {_pct(row['validation_accuracy'] or 0)} | "
                     f"{row['evaluations']:,} | {row['wall_seconds']:.0f} | {row['cpu']}, {row['cores']} cores | "
                     f"`{row['command']}` |")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def reference_points(ax) -> None:
    """The paper's published (engine size, MNIST 4k/1k accuracy) points, marked as the reference's."""
    ax.scatter(list(REFERENCE_ENGINE_BYTES.values()), [REFERENCE[k]["acc_4k_5"] for k in REFERENCE_ENGINE_BYTES],
               marker="x", color="grey", label="reference, MNIST 4k/1k (weights only)")


def finish_axes(ax, xlabel: str, ylabel: str, *, log_x: bool = False, legend: bool = True) -> None:
    if log_x:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # over a short span the minor labels overprint
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _searches_only_markdown(*, command: str, plots: list[str], arch: list[dict], bundles: list[dict],
                            bench: list[dict], bench_folder: Path | None) -> str:
    lines = ["# slicenet results", "",
             f"Generated by `{command}` from {len(arch)} architecture search(es) and no run directories: every",
             "figure comes from a search's `arch.json`. Accuracies in %."]
    lines += arch_tables(arch) + bundle_table(bundles) + latency_tables(bench, bench_folder)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(out: Path, rows: list[dict], *, command: str, bench: list[dict], bench_folder: Path,
                 bundles: list[dict], arch: list[dict] | None = None) -> list[str]:
    """REPORT.md, runs.csv and the plots into ``out``, all or nothing: everything is rendered into a
    staging folder beside it first, and moved into place only once every file exists. Returns the
    files written."""
    import shutil
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        plots = render_plots(rows, staging, bench) + render_arch_plot(arch or [], rows, staging)
        (staging / "runs.csv").write_text(render_csv(rows))
        (staging / "REPORT.md").write_text(render_markdown(rows, command=command, plots=plots, bench=bench,
                                                           bench_folder=bench_folder, bundles=bundles, arch=arch))
        written = ["REPORT.md", "runs.csv", *plots]
        for name in written:
            os.replace(staging / name, out / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def render_arch_plot(states: list[dict], rows: list[dict], out: Path) -> list[str]:
    """Every structure each search evaluated, its front, and the hand-designed presets' runs on the same
    dataset (trunk multiply-adds against validation accuracy): ``arch_front.png``."""
    if not states:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(states), figsize=(6.5 * len(states), 4.5), squeeze=False)
    for ax, state in zip(axes[0], states, strict=True):
        config = state["config"]
        points = [(float(np.mean([r["cost"] for r in records])),
                   100 * float(np.mean([r["validation_accuracy"] for r in records])))
                  for records in state["evaluations"].values()]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=10, color="grey", label="structures evaluated")
        front = state["front"]
        ax.step([m["cost"] for m in front], [100 * m["validation_accuracy"] for m in front], where="post", marker="o",
                color="red", label="front")
        if config["cost"] == "macs":
            hand = [r for r in rows if r["kind"] == "search" and r["dataset"] == config["dataset"]
                    and not str(r["preset"]).startswith("genetic:") and r["validation_accuracy"] != ""]
            for r in hand:
                engine = load_engine(r["path"])
                ax.scatter(engine.spec.multiply_adds(engine.image_size), 100 * r["validation_accuracy"], marker="s",
                           color="blue")
                ax.annotate(str(r["preset"]), (engine.spec.multiply_adds(engine.image_size),
                                               100 * r["validation_accuracy"]), fontsize=7)
        ax.set_title(f"{state['folder']}: {config['dataset']}", fontsize=9)
        finish_axes(ax, {"macs": "trunk multiply-adds per image", "bytes": "engine KB",
                         "latency": f"estimated ms ({config['board']})"}[config["cost"]],
                    "validation accuracy (%)", log_x=True)
    from .atomic import write_with

    write_with(out / "arch_front.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return ["arch_front.png"]


def render_plots(rows: list[dict], out: Path, bench: list[dict] | None = None) -> list[str]:
    """PNG plots into ``out``; returns their file names. Each is written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .atomic import write_with
    from .condense import frontier
    from .engine import Engine

    written = []

    def save(fig, name: str) -> None:
        write_with(out / name, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(name)

    def panels(names: list[str], height: float = 4.5):
        """A figure with one titled subplot per dataset, side by side: (figure, [(axes, dataset)])."""
        fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), height), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            ax.set_title(name, fontsize=9)
        return fig, list(zip(axes[0], names, strict=True))

    summary = [g for g in groups(rows) if not g["derived"]]
    datasets = sorted({g["dataset"] for g in summary})
    fig, pairs = panels(datasets, height=5) if datasets else (None, [])  # none: a report of searches alone
    for ax, dataset in pairs:
        mine = [g for g in summary if g["dataset"] == dataset]
        for kind, (legend, marker) in ENGINE_KINDS.items():
            points = [g for g in mine if g["kind"] == kind]
            if points:
                ax.scatter([g["engine_bytes"] for g in points], [100 * g["test_median"] for g in points],
                           marker=marker, label=legend)
        # Only the engines that no smaller engine matches in accuracy are named; the tables list all.
        for g in frontier(mine, value="test_median"):
            ax.annotate(f"{g['network'].replace(' (k=9)', '')} [{g['preset']}]",
                        (g["engine_bytes"], 100 * g["test_median"]), fontsize=6,
                        xytext=(4, -3), textcoords="offset points")
        if dataset == "mnist":
            reference_points(ax)
        finish_axes(ax, "engine bytes (ours: all inference needs)", "test accuracy (%)", log_x=True)
    if fig is not None:
        save(fig, "accuracy_vs_engine_size.png")

    searches = [r for r in rows if r["kind"] == "search" and r["evaluations"] and (r["path"] / HISTORY).is_file()]
    if searches:
        # Per dataset, one curve per (method, trunk): its most accurate run, named, since the runs of
        # one trunk may differ in scoring or budget and only runs scored alike share a fitness scale.
        picked: dict[tuple, dict] = {}
        for row in searches:
            key = (row["dataset"], row["method"], row["preset"])
            if key not in picked or row["test_accuracy"] > picked[key]["test_accuracy"]:
                picked[key] = row
        fig, pairs = panels(sorted({key[0] for key in picked}))
        for ax, dataset in pairs:
            for key in sorted(k for k in picked if k[0] == dataset):
                row = picked[key]
                with open(row["path"] / HISTORY) as handle:
                    history = list(csv.DictReader(handle))
                evaluations = np.array([float(h["evaluations"]) for h in history])
                best_so_far = np.minimum.accumulate(np.array([float(h["mean_fitness"]) for h in history]))
                ax.plot(evaluations, best_so_far, label=f"{row['method']}, {row['preset']}: {Path(row['run']).name}")
            finish_axes(ax, "fitness evaluations", "best generation-mean fitness so far (lower is better)")
        save(fig, "fitness_vs_evaluations.png")

    host = [b for b in bench or [] if b.get("kind") not in ("measured", "host-runner")
            and b.get("test_accuracy") is not None]
    if host:
        # One point per bundle and runtime: the median p50 of its interleaved runs (their ratios, in the
        # tables, are the figures to compare; this plot only places the engines). The panel is the
        # dataset of the run a bundle was exported from (bundle names start with export's name for it).
        from .export import bundle_name

        dataset_of = {bundle_name(Path(r["run"])): r["dataset"] for r in rows}
        timed: dict[tuple[str, str], list[dict]] = {}
        for b in host:
            timed.setdefault((b["name"], b["runtime"]), []).append(b)
        placed = [{"name": name, "runtime": runtime, "p50_ms": statistics.median(b["p50_ms"] for b in runs),
                   "accuracy": 100 * runs[0]["test_accuracy"],
                   "dataset": dataset_of.get(runs[0].get("run_bundle", name.split("/")[0]), "other")}
                  for (name, runtime), runs in timed.items()]
        fig, pairs = panels(sorted({p["dataset"] for p in placed}))
        for ax, dataset in pairs:
            mine = [p for p in placed if p["dataset"] == dataset]
            for runtime in sorted({p["runtime"] for p in mine}):
                points = [p for p in mine if p["runtime"] == runtime]
                ax.scatter([p["p50_ms"] for p in points], [p["accuracy"] for p in points], label=runtime)
            for p in frontier(mine, cost="p50_ms", value="accuracy"):  # no faster engine is as accurate
                ax.annotate(p["name"], (p["p50_ms"], p["accuracy"]), fontsize=6, xytext=(4, -3),
                            textcoords="offset points")
            finish_axes(ax, "p50 latency, batch 1, host CPU (ms; median over runs)", "test accuracy (%)",
                        log_x=True)
        save(fig, "accuracy_vs_latency.png")

    fronts = [r for r in rows if r.get("frontier")]
    if fronts:
        fig, pairs = panels(sorted({r["dataset"] for r in fronts}), height=5)
        for ax, dataset in pairs:
            for r in (r for r in fronts if r["dataset"] == dataset):
                points = r["frontier"]
                ax.step([p["engine_bytes"] for p in points], [100 * p["validation_accuracy"] for p in points],
                        where="post", marker="o", markersize=3,
                        label=f"{Path(r['run']).name}: {r['compact']['method']} budget search (validation)")
            mine = [g for g in summary if g["dataset"] == dataset]
            ax.scatter([g["engine_bytes"] for g in mine], [100 * g["test_median"] for g in mine], marker="s", s=14,
                       color="black", label="every engine (test)")
            for g in frontier(mine, value="test_median"):
                ax.annotate(g["network"][:48], (g["engine_bytes"], 100 * g["test_median"]), fontsize=5,
                            xytext=(4, -3), textcoords="offset points")
            if dataset == "mnist":
                reference_points(ax)
            ax.axvline(74_000, color="red", linestyle=":", label="74 KB")
            finish_axes(ax, "engine bytes", "accuracy (%): squares = test, steps = validation", log_x=True,
                        legend=False)
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        save(fig, "size_frontier.png")

    knn = [g for g in summary if g["kind"] in ("search", "compact")]
    if knn:
        best = max(knn, key=lambda g: g["test_median"])
        engine = Engine.load(best["best_run"] / "engine.safetensors")
        matrix = np.array(load_metrics(best["best_run"])["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_xticks(range(len(engine.class_names)), engine.class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(engine.class_names)), engine.class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{best['network']}, {best['dataset']}: {100 * best['test_median']:.2f} %", fontsize=9)
        save(fig, "confusion_matrix_best_knn.png")
    return written
