"""Genetic CNN: the encoding against hand-worked examples, the GA's operators against their
probabilities, graph trunks against one trunk at a time, and arch-search end to end on digits."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from slicenet.cli import main
from slicenet.errors import InputError
from slicenet.genetic import (
    GASettings,
    Genome,
    crossover,
    decode_stage,
    initial_population,
    mutate,
    next_generation,
    nsga_selection,
    pareto_ranks,
    roulette,
    stage_bits,
    trunk,
)
from slicenet.trunk import Block, features, init_weights, population_features, resolve_preset


def test_the_papers_example_decodes_by_hand():
    genome = Genome.parse("1-01 0-01-100 0-11-101-0001")
    assert genome.nodes == (3, 4, 5) and len(genome.bits) == 3 + 6 + 10
    assert genome.code() == "1-01 0-01-100 0-11-101-0001"
    first, second, third = (decode_stage(bits, k) for bits, k in zip(genome.stages, genome.nodes, strict=True))
    # 1-01: (1->2)=1, (1->3)=0, (2->3)=1: a chain in -> 1 -> 2 -> 3 -> out.
    assert first.nodes == (1, 2, 3) and first.predecessors == {1: (), 2: (1,), 3: (2,)} and first.sinks == (3,)
    # 0-01-100: edges 2->3 and 1->4; nodes 1 and 2 read the input node, 3 and 4 feed the output node.
    assert second.predecessors == {1: (), 2: (), 3: (2,), 4: (1,)} and second.sinks == (3, 4)
    # 0-11-101-0001: 1->3, 2->3, 1->4, 3->4, 4->5.
    assert third.predecessors == {1: (), 2: (), 3: (1, 2), 4: (1, 3), 5: (4,)} and third.sinks == (5,)


def test_an_all_zero_stage_is_one_convolution_and_isolated_nodes_are_dropped():
    assert decode_stage((0, 0, 0), 3).nodes == ()
    spec = trunk(Genome.parse("0-00 1-00-000"), (4, 8))
    # Stage 1: one convolution, pooled. Stage 2: only 1->2 is an edge, nodes 3 and 4 are dropped:
    # input node, 1, 2, output node.
    assert [layer.out_channels for layer in spec.layers] == [4, 8, 8, 8, 8]
    assert [layer.pool for layer in spec.layers] == [2, 1, 1, 1, 2]
    assert [spec.sources(i) for i in range(5)] == [(-1,), (0,), (1,), (2,), (3,)]
    isolated = decode_stage((0, 0, 1, 0, 0, 0), 4)  # 2->3 only: nodes 1 and 4 have no edge
    assert isolated.nodes == (2, 3)


@pytest.mark.parametrize("preset,match", [
    ("genetic:4:1-01/0-00-000", "gives 1 filter widths for 2 stages"),
    ("genetic:4,x:1-01/0-00-000", "expected genetic:<filters per stage>:<genome>"),
    ("genetic:4,8:1-0x/0-00-000", "must be groups of 1, 2, 3, ... bits"),
])
def test_a_bad_genetic_preset_is_one_line(preset, match):
    with pytest.raises(InputError, match=re.escape(match)):
        resolve_preset(preset, (28, 28))


def test_a_node_sums_its_predecessors():
    spec = trunk(Genome.parse("0-11"), (3,))  # 1 and 2 read the input node, 3 sums them
    assert spec.sources(3) == (1, 2) and spec.sources(4) == (3,)
    weights = init_weights(spec, 0)
    x = torch.randn(2, 1, 8, 8)
    relu = torch.relu
    conv = torch.nn.functional.conv2d
    entry = relu(conv(x, *weights[0], padding=1))
    one, two = (relu(conv(entry, *weights[i], padding=1)) for i in (1, 2))
    three = relu(conv(one + two, *weights[3], padding=1))
    out = relu(torch.nn.functional.max_pool2d(conv(three, *weights[4], padding=1), 2))
    torch.testing.assert_close(features(x, spec, weights), out.flatten(1))


@pytest.mark.parametrize("layer,filter_index", [(0, None), (2, None), (3, 1), (5, None)])
def test_a_graph_trunks_population_equals_one_trunk_each(layer, filter_index):
    from slicenet.trunk import layer_input

    spec = trunk(Genome.parse("1-01 1-10-111"), (3, 4))
    weights = init_weights(spec, 2)
    x = torch.randn(5, 1, 12, 12)
    block = Block(layer, filter_index)
    base = block.vector(weights)
    candidates = base + 0.2 * np.random.default_rng(0).standard_normal((4, base.size))
    cached = layer_input(x, spec, weights, index=layer)
    held = None
    if filter_index is not None:
        from slicenet.trunk import layer_forward, sum_of

        held = layer_forward(sum_of(cached[s] for s in spec.sources(layer)), *weights[layer],
                             layer=spec.layers[layer])
    batched = population_features(cached, spec, weights, index=layer,
                                  population=torch.tensor(candidates, dtype=torch.float32),
                                  filter_index=filter_index, held_output=held)
    for p, candidate in enumerate(candidates):
        trial = [(w.clone().numpy(), b.clone().numpy()) for w, b in weights]
        block.set(trial, candidate.astype(np.float32))
        expected = features(x, spec, [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in trial])
        torch.testing.assert_close(batched[p], expected, rtol=1e-4, atol=1e-5)


def test_operators_keep_the_bit_count_and_their_probabilities():
    rng = np.random.default_rng(0)
    nodes = (3, 5)
    length = stage_bits(3) + stage_bits(5)
    population = initial_population(4000, nodes, rng)
    bits = np.array([g.bits for g in population])
    assert bits.shape == (4000, length) and abs(bits.mean() - 0.5) < 0.01  # Bernoulli(0.5)
    assert not np.array(initial_population(3, nodes, rng, zeros=True)[0].bits).any()
    flipped = np.mean([np.mean(np.array(mutate(g, rng, 0.1).bits) != np.array(g.bits)) for g in population])
    assert abs(flipped - 0.1) < 0.01  # q_M
    a, b = Genome.parse("1-11 1-11-111-1111"), Genome.parse("0-00 0-00-000-0000")
    swaps = np.array([[x != y for x, y in zip(crossover(a, b, rng, 0.3)[0].stages, a.stages, strict=True)]
                      for _ in range(4000)])
    assert abs(swaps.mean() - 0.3) < 0.02  # q_C, per pair of corresponding stages
    children = next_generation(population[:1000], rng.random(1000), GASettings(), rng)
    assert len(children) == 1000 and all(len(c.bits) == length for c in children)


def test_roulette_never_draws_the_worst_and_follows_r_minus_min_r():
    rng = np.random.default_rng(1)
    fitness = np.array([0.90, 0.95, 0.96, 0.97])
    draws = roulette(fitness, 100_000, rng)
    counts = np.bincount(draws, minlength=4) / len(draws)
    weights = (fitness - fitness.min()) / (fitness - fitness.min()).sum()
    assert counts[0] == 0 and np.allclose(counts, weights, atol=0.01)


def test_nsga_ranks_and_tournaments():
    accuracy = np.array([0.9, 0.8, 0.95, 0.7, 0.9])
    cost = np.array([10.0, 5.0, 20.0, 30.0, 12.0])
    assert pareto_ranks(accuracy, cost).tolist() == [0, 0, 0, 2, 1]
    chosen = nsga_selection(accuracy, cost, 10_000, np.random.default_rng(0))
    assert np.bincount(chosen, minlength=5)[3] < np.bincount(chosen, minlength=5)[0]


ARCH = ["arch-search", "--dataset", "digits", "--population", "4", "--generations", "1", "--search-generations",
        "1", "--search-images", "100", "--nodes", "3", "3", "--filters", "4", "8", "--quiet"]


def test_a_two_generation_search_gives_run_directories_and_a_front(tmp_path):
    assert main([*ARCH, "--out", str(tmp_path / "arch")]) == 0
    state = json.loads((tmp_path / "arch" / "arch.json").read_text())
    assert [row["generation"] for row in state["history"]] == [0, 1]
    for row in state["history"]:
        assert row["min"] <= row["median"] <= row["max"] and len(row["individuals"]) == 4
        for individual in row["individuals"]:
            assert (tmp_path / individual["run"].split(str(tmp_path) + "/")[-1]).is_dir() or \
                os.path.isdir(individual["run"])
            assert main(["evaluate", individual["run"], "--json"]) == 0  # an ordinary run directory
    assert state["front"] and all(c["jetson"] == "passes" and c["ncs2"] == "passes" and c["ncs2_ir"] == "passes"
                                  for c in state["front_checks"])
    assert main(["report", state["history"][0]["individuals"][0]["run"], "--arch", str(tmp_path / "arch"),
                 "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "## Architecture search" in report and state["front"][0]["genome"] in report
    # the rank check: 3 of its structures searched again for longer, their rank correlation recorded
    assert main([*ARCH, "--out", str(tmp_path / "arch"), "--resume", "--rank-check", "3", "--rank-generations",
                 "2"]) == 0
    check = json.loads((tmp_path / "arch" / "arch.json").read_text())["rank_check"]
    assert len(check["structures"]) == 3 and -1 <= check["spearman"] <= 1 and check["generations"] == 2
    assert all(main(["evaluate", r["run"], "--json"]) == 0 for r in check["structures"])
    short = [r["short_validation"] for r in check["structures"]]
    assert short == sorted(short, reverse=True)  # best, middle, worst of the ranking
    assert main(["report", check["structures"][0]["run"], "--arch", str(tmp_path / "arch"), "--out",
                 str(tmp_path / "report2")]) == 0
    assert "Rank check: 3 structures" in (tmp_path / "report2" / "REPORT.md").read_text()


def test_a_search_saves_its_resolved_options_and_config_reads_them_back(tmp_path, run_main):
    first = tmp_path / "first"
    assert main([*ARCH, "--generations", "0", "--population", "2", "--budget-macs", "90000", "--out", str(first)]) == 0
    saved = json.loads((first / "arch.json").read_text())["config"]
    text = (first / "config.toml").read_text()
    assert "budget_macs = 90000" in text and "search_images = 100" in text and "[slicenet]" in text
    again = tmp_path / "again"
    assert main(["arch-search", "--config", str(first / "config.toml"), "--quiet", "--out", str(again)]) == 0
    assert json.loads((again / "arch.json").read_text())["config"] == saved  # the same search, from its file
    seed1 = tmp_path / "seed1"
    assert main(["arch-search", "--config", str(first / "config.toml"), "--seed", "1", "--quiet", "--out",
                 str(seed1)]) == 0
    assert json.loads((seed1 / "arch.json").read_text())["config"] == {**saved, "seed": 1}  # flags override it
    status, err = run_main(["optimise", "--resume", str(first)])  # a search's folder is no run to resume
    assert status == 2 and "is an architecture search, not a run" in err and len(err.strip().splitlines()) == 1


def test_rank_correlations_and_noise_match_reference_answers():
    from scipy import stats

    from slicenet.archsearch import kendall_tau_b, repeat_noise, spearman

    rng = np.random.default_rng(1)
    for _ in range(30):
        a, b = rng.integers(0, 4, 8).astype(float), rng.integers(0, 4, 8).astype(float)  # with ties
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12, nan_ok=True)
        assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12, nan_ok=True)
    # by hand: structure x evaluated at 0.90 and 0.92, y at 0.95 and 0.97, z once at 0.80
    records = {c: [{"validation_accuracy": v} for v in values]
               for c, values in {"x": [0.90, 0.92], "y": [0.95, 0.97], "z": [0.80]}.items()}
    noise = repeat_noise(records)
    assert noise["structures_repeated"] == 2 and noise["within_sd"] == pytest.approx(np.sqrt(0.0002 * 2 / 2))
    assert noise["between_sd_of_means"] == pytest.approx(np.std([0.91, 0.96, 0.80], ddof=1))
    # one structure only (a budget that leaves one): its noise, and no ICC rather than a division by zero
    alone = repeat_noise({"x": records["x"]})
    assert alone["within_sd"] == pytest.approx(np.sqrt(0.0002)) and np.isnan(alone["icc1"])


def test_the_reports_ga_against_random_verdict_is_a_paired_t_test():
    from scipy import stats

    from slicenet.report import ga_against_random

    # by hand: three seeds, the GA ahead by 0.4, 0.2 and 0.3 points on best fitness
    ga = {0: (0.954, 0.941), 1: (0.962, 0.945), 2: (0.950, 0.940)}
    rand = {0: (0.950, 0.940), 1: (0.960, 0.946), 2: (0.947, 0.938)}
    results = {**{("ga", "random", s): v for s, v in ga.items()},
               **{("random", "random", s): v for s, v in rand.items()},
               ("ga", "zeros", 0): (0.99, 0.99)}  # an all-zero start has no random search to pair with
    (line, _) = ga_against_random(results)
    reference = stats.ttest_rel([v[0] for v in ga.values()], [v[0] for v in rand.values()], alternative="greater")
    assert "(seed 0 random, seed 1 random, seed 2 random)" in line and "+0.40, +0.20, +0.30 points" in line
    assert "last generation's mean +0.10, -0.10, +0.20" in line and "ahead on best fitness in 3 of 3" in line
    assert f"p = {reference.pvalue:.3f}" in line and "Mean +0.30 points, standard error 0.06" in line
    assert ("**The GA beats random search**" in line) == (reference.pvalue < 0.05)
    last = stats.ttest_rel([v[1] for v in ga.values()], [v[1] for v in rand.values()], alternative="greater")
    assert f"the last generation's mean gives p = {last.pvalue:.3f}" in line
    # the signs disagree: not shown; one pair: says it cannot show it; none: nothing
    (line, _) = ga_against_random({**results, ("random", "random", 1): (0.970, 0.946)})
    assert "**The GA is not shown to beat random search**" in line and "ahead on best fitness in 2 of 3" in line
    (line, _) = ga_against_random({k: v for k, v in results.items() if k[2] == 0})
    assert "One pair cannot show that the GA beats random search" in line
    assert ga_against_random({("ga", "zeros", 0): (0.99, 0.99)}) == []


def test_the_report_pairs_a_seeds_searches_once():
    from slicenet.report import _arch_comparison

    def state(folder: str, strategy: str, seed: int, best: float) -> dict:
        config = {"dataset": "digits", "nodes": [3, 4], "filters": [4, 8], "budget_macs": None, "budget_kb": None,
                  "budget_ms": None, "search_generations": 6, "search_images": 400, "strategy": strategy,
                  "init": "random", "seed": seed}
        return {"folder": folder, "config": config,
                "history": [{"evaluations": 8, "max": best, "mean": best - 0.01, "best": "0-00 0-00-000"}]}

    # seed 0's GA twice (a T=3 and a T=1 run, the same at equal evaluations): paired once, the repeat named
    states = [state("ga0", "ga", 0, 0.95), state("ga0-again", "ga", 0, 0.95), state("r0", "random", 0, 0.94),
              state("ga1", "ga", 1, 0.96), state("r1", "random", 1, 0.96)]
    text = "\n".join(_arch_comparison(states))
    assert "(seed 0 random, seed 1 random)" in text and "+1.00, +0.00 points" in text
    assert "`ga0-again` repeats `ga0`'s strategy, start and seed: only the first is paired" in text
    assert text.count("| `ga0") == 2  # the table still lists both


def test_a_killed_search_resumes_to_the_same_front(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main([*ARCH, "--out", str(reference)]) == 0
    process = subprocess.Popen([sys.executable, "-m", "slicenet.cli", *ARCH, "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "individuals").glob("*/checkpoint.pkl")) and time.time() < deadline:
        if list((killed / "individuals").glob("*-e*/metrics.json")):
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert main([*ARCH, "--out", str(killed), "--resume"]) == 0
    a, b = (json.loads((p / "arch.json").read_text()) for p in (reference, killed))
    strip = [{k: v for k, v in m.items() if k != "run"} for m in a["front"]]
    assert strip == [{k: v for k, v in m.items() if k != "run"} for m in b["front"]]
    assert [r["max"] for r in a["history"]] == [r["max"] for r in b["history"]]
    # two searches of one dataset: the report sets them side by side at equal evaluations
    assert main(["report", a["front"][0]["run"], "--arch", str(reference), str(killed), "--out",
                 str(tmp_path / "report")]) == 0
    assert "Searches on digits at equal evaluations (8)" in (tmp_path / "report" / "REPORT.md").read_text()


def _record(accuracy: float, macs: float, kb: float) -> dict:
    return {"validation_accuracy": accuracy, "test_accuracy": accuracy, "cost": macs, "run": f"r{accuracy}",
            "costs": {"macs": macs, "kb": kb}}


def test_budgets_give_the_worst_fitness_and_keep_structures_off_the_front():
    from slicenet.archsearch import ArchConfig, _scores, front
    from slicenet.config import make_config

    # by hand: a within both budgets; b over the multiply-adds; c over the KB (its mean of two records);
    # d within both and cheaper than a but less accurate: the front is d, a
    evaluations = {"0-00 0-00": [_record(0.90, 100, 10)], "1-00 0-00": [_record(0.99, 300, 10)],
                   "0-01 0-00": [_record(0.97, 150, 12), _record(0.95, 150, 30)],
                   "0-10 0-00": [_record(0.80, 50, 5)]}
    population = [Genome.parse(code) for code in evaluations]
    config = make_config(None, ArchConfig, budget_macs=200, budget_kb=20.0)
    assert config.costs == ("macs", "kb")
    fitness, accuracy, cost = _scores(config, population, evaluations)
    assert fitness.tolist() == [0.90, 0.0, 0.0, 0.80] and accuracy.tolist() == pytest.approx([0.90, 0.99, 0.96, 0.80])
    assert cost.tolist() == [100, 300, 150, 50]
    assert [m["genome"] for m in front(config, evaluations)] == ["0-10 0-00", "0-00 0-00"]
    # no budget: everyone scored as measured, and on the front (each costs more and scores more)
    fitness, _, _ = _scores(ArchConfig(), population, evaluations)
    assert fitness.tolist() == pytest.approx([0.90, 0.99, 0.96, 0.80])
    assert [m["genome"] for m in front(ArchConfig(), evaluations)] == ["0-10 0-00", "0-00 0-00", "0-01 0-00",
                                                                     "1-00 0-00"]


def test_structures_over_the_multiply_add_budget_are_not_run(tmp_path):
    # on 8x8 digits with 4 and 8 filters the all-zero structure needs 6,912 multiply-adds and any edge
    # adds at least two 4-to-4 convolutions (9,216 each): under 7,000 only the all-zero structure is run
    out = tmp_path / "budget"
    assert main([*ARCH, "--budget-macs", "7000", "--init", "zeros", "--generations", "2", "--out", str(out)]) == 0
    state = json.loads((out / "arch.json").read_text())
    assert list(state["evaluations"]) == ["0-00 0-00"] and state["skipped"]
    assert all(costs["macs"] > 7000 for costs in state["skipped"].values())
    for row in state["history"]:
        assert len(row["individuals"]) + len(row["skipped"]) == 4
        assert all(r["costs"]["macs"] == 6912 for r in row["individuals"])
    assert sorted(p.name.rsplit("-e", 1)[0] for p in (out / "individuals").iterdir()) == ["0_00_0_00"] * len(
        state["evaluations"]["0-00 0-00"])
    assert [m["genome"] for m in state["front"]] == ["0-00 0-00"]
    assert any(row["skipped"] for row in state["history"])  # mutants of the all-zero start, over the budget
    assert all(row["min"] == 0.0 for row in state["history"] if row["skipped"])  # the worst fitness
    assert main(["report", state["front"][0]["run"], "--arch", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert ", budget 7000 macs" in report
    assert f"{len(state['skipped'])} structures drawn were over a budget by their structure alone" in report
    # the searches alone (no runs named: not every run under runs/, which holds each search's individuals)
    assert main(["report", "--arch", str(out), "--out", str(tmp_path / "alone")]) == 0
    alone = (tmp_path / "alone" / "REPORT.md").read_text()
    assert "and no run directories" in alone and "## Architecture search" in alone and "Measured networks" not in alone
    assert main(["report", "--arch", str(tmp_path / "alone"), "--out", str(tmp_path / "r3")]) == 2  # no search
    assert not (tmp_path / "r3").exists()


def test_the_costs_known_before_a_run_are_the_runs_and_the_all_zero_structure_is_the_cheapest(tmp_path):
    from slicenet.archsearch import ArchConfig, evaluate_individual, individual_costs, planned_costs
    from slicenet.config import make_config
    from slicenet.data import load_dataset

    config = make_config(None, ArchConfig, dataset="digits", search_generations=1, search_images=100,
                         budget_macs=10**9, budget_kb=1e6, budget_ms=1e3)
    dataset = load_dataset("digits")
    for code in ("0-00 0-00-000", "1-11 0-10-101"):
        genome = Genome.parse(code)
        planned = planned_costs(config, genome, dataset)
        run = tmp_path / code.replace(" ", "_")
        evaluate_individual(config, code, 0, str(run))
        measured = individual_costs(config, run)
        # multiply-adds and the latency estimate exactly; the file less the provenance the run adds
        assert planned["macs"] == measured["macs"] and planned["ms"] == measured["ms"]
        assert measured["kb"] - 2.0 < planned["kb"] <= measured["kb"]
    zeros = planned_costs(config, Genome.parse("0-00 0-00-000"), dataset)
    for genome in initial_population(12, (3, 4), np.random.default_rng(0)):
        costs = planned_costs(config, genome, dataset)
        assert all(costs[unit] >= zeros[unit] for unit in zeros), genome.code()


def test_structures_over_a_latency_budget_are_not_run(tmp_path):
    from slicenet.archsearch import ArchConfig, planned_costs
    from slicenet.config import make_config
    from slicenet.data import load_dataset

    # ARCH's space (nodes 3 and 3): a budget between the all-zero structure's estimate and every other
    # structure's, so that only the all-zero one is run
    config = make_config(None, ArchConfig, dataset="digits", nodes=(3, 3), budget_ms=1e3)
    dataset = load_dataset("digits")
    estimates = {code: planned_costs(config, Genome.parse(code), dataset)["ms"]
                 for code in (f"{a}-{b}{c} {d}-{e}{f}" for a, b, c, d, e, f in np.ndindex(*(2,) * 6))}
    zeros = estimates.pop("0-00 0-00")
    budget = (zeros + min(estimates.values())) / 2
    out = tmp_path / "latency"
    assert main([*ARCH, "--budget-ms", repr(budget), "--init", "zeros", "--out", str(out)]) == 0
    state = json.loads((out / "arch.json").read_text())
    assert list(state["evaluations"]) == ["0-00 0-00"]
    assert state["skipped"] and all(costs["ms"] > budget for costs in state["skipped"].values())
    assert all(r["costs"]["ms"] == zeros for r in state["evaluations"]["0-00 0-00"])  # the estimate, exactly


def test_a_search_saved_with_one_budget_on_its_cost_resumes_as_before(tmp_path):
    from slicenet.archsearch import STATE, ArchConfig, _load
    from slicenet.config import make_config

    config = make_config(None, ArchConfig, cost="bytes", budget_kb=74.0)
    old = {k: v for k, v in config.to_dict().items() if not k.startswith("budget_")}
    (tmp_path / STATE).write_text(json.dumps({"config": {**old, "budget": 74.0}, "generation": 0}))
    assert _load(tmp_path, config)["config"] == config.to_dict()
    assert ArchConfig.from_saved({**old, "budget": 0.0}) == ArchConfig(cost="bytes").to_dict()
    with pytest.raises(InputError, match="started with other settings"):
        _load(tmp_path, make_config(None, ArchConfig, cost="bytes", budget_kb=64.0))


def test_the_paper_setting_is_one_flag():
    from slicenet.archsearch import ArchConfig, with_paper_setting
    from slicenet.config import make_config

    config = make_config(None, ArchConfig, **with_paper_setting({"dataset": "digits", "nodes": None}))
    assert (config.stages, config.nodes, config.population, config.generations) == (2, (3, 5), 20, 50)
    assert (config.crossover_pairs, config.crossover_stages, config.mutation_individuals,
            config.mutation_bits) == (0.2, 0.3, 0.8, 0.1)


@pytest.mark.parametrize("flags,match", [
    (["--stages", "3"], "--nodes gives 2 node counts for --stages 3"),
    (["--budget-kb", "0"], "--budget-kb must be positive"),
    (["--budget-ms", "inf"], "--budget-ms (config key budget_ms): expected a finite number, got inf"),
    (["--budget-kb", "5"], "--budget-kb 5: the smallest structure's engine is already"),  # its bank alone
    (["--budget-macs", "6000"], "already needs 6,912 multiply-adds per image, so no structure fits"),
    (["--budget-ms", "1e-6"], "already needs an estimated"),
    (["--cost", "latency", "--board", "ncs2:usb-fp32"], "expected a board and mode of devices/profiles.toml"),
    (["--budget-ms", "2", "--board", "nano"], "expected a board and mode of devices/profiles.toml"),
    (["--board", "nano"], "expected a board and mode of devices/profiles.toml"),  # read by no cost, still checked
    (["--cluster", "127.0.0.1:1"], "the Ray cluster at '127.0.0.1:1' does not answer"),  # before the state
    (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto"),
    (["--paper", "--population", "8"], "--paper sets --stages 2 --nodes 3 5 --population 20 --generations 50: "
                                       "drop --population"),
    (["--nodes", "1", "3"], "--nodes must be at least 2 per stage"),
    (["--stages", "0"], "--stages must be at least 1"),
    (["--mutation-bits", "1.5"], "is a probability"),
    (["--rank-check", "2"], "--rank-check needs at least 3 structures"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),  # checked before the search's state is written
    (["--dataset", "digits@4", "--stages", "3", "--nodes", "3", "3", "3", "--filters", "2", "2", "2"],
     "use fewer --stages or larger images"),
])
def test_bad_nodes_or_stages_are_one_line(tmp_path, flags, match, run_main):
    status, err = run_main(["arch-search", "--dataset", "digits", *flags, "--out", str(tmp_path / "a")])
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err and not (tmp_path / "a").exists()


def test_a_graph_engine_exports_and_verifies(tmp_path):
    out = tmp_path / "g"
    assert main(["optimise", "--dataset", "digits", "--preset", "genetic:3,4:1-11/1-01", "--generations", "1",
                 "--population-size", "4", "--quiet", "--out", str(out)]) == 0
    for target in ("onnx", "jetson", "ncs2"):
        assert main(["export", str(out), "--target", target, "--out", str(tmp_path / "e")]) == 0
        manifest = json.loads(next((tmp_path / "e").glob(f"*/{target}/manifest.json")).read_text())
        assert all(v["agreement"] == 1.0 for v in manifest["verification"] if v["precision"] == "fp32")
