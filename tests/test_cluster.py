"""Scaling out: the device a population is scored on, and Ray actors sharing it (one Ray instance for the
whole session, 2 CPUs, as CI has)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from slicenet import pipeline
from slicenet.cli import main
from slicenet.config import make_config
from slicenet.engine import Engine
from slicenet.evaluators import TorchEvaluator
from slicenet.trunk import Block, init_weights

from .test_genetic import ARCH


@pytest.fixture(scope="module")
def problem():
    return pipeline.prepare(make_config(dataset="digits", search_images=400)).problem


def population(weights, block, size=10, seed=0):
    x0 = block.vector(weights)
    return x0 + 0.1 * np.random.default_rng(seed).standard_normal((size, x0.size))


def test_the_evaluator_on_cpu_equals_todays_fitness(problem):
    """TorchEvaluator(device='cpu') scores exactly what the fitness of slicenet 0.1 scored (the pins in
    test_compatibility.py check whole searches); here: any split of a population into pieces."""
    weights = init_weights(problem.spec, 0)
    for block in (Block(0, None), Block(1, None), Block(1, 3)):
        evaluator = TorchEvaluator(problem, device="cpu").bind(weights, block)
        pop, split = population(weights, block), problem.split((0, 1, 0))
        whole = evaluator(pop, split)
        pieces = np.concatenate([evaluator(pop[i : i + 3], split).fitness for i in range(0, len(pop), 3)])
        assert np.array_equal(whole.fitness, pieces)


def test_ray_sharded_fitness_equals_in_process_fitness_exactly(problem, ray_cluster):
    from slicenet.cluster import RayEvaluator

    weights = init_weights(problem.spec, 0)
    with RayEvaluator(problem, workers=2) as sharded:
        for block in (Block(0, None), Block(1, None), Block(1, 5)):
            pop, split = population(weights, block, size=7), problem.split((0, 2, 0))
            local = TorchEvaluator(problem).bind(weights, block)(pop, split)
            remote = sharded.bind(weights, block)(pop, split)
            for field in ("fitness", "accuracy", "soft"):
                assert np.array_equal(getattr(local, field), getattr(remote, field))


def test_a_killed_worker_costs_only_its_shard(problem, ray_cluster):
    from slicenet.cluster import RayEvaluator

    weights = init_weights(problem.spec, 0)
    block = Block(1, None)
    pop, split = population(weights, block, size=8), problem.split((3, 0, 0))
    expected = TorchEvaluator(problem).bind(weights, block)(pop, split)
    with RayEvaluator(problem, workers=2) as sharded:
        sharded.bind(weights, block)(pop[:2], split)  # both workers bound and running
        os.kill(sharded.worker_pids()[0], signal.SIGKILL)
        scores = sharded(pop, split)
        assert np.array_equal(scores.fitness, expected.fitness) and sharded.rescored >= 1
        assert len(sharded.actors) == 1


def test_the_same_seed_gives_the_same_engine_with_and_without_a_cluster(tmp_path, ray_cluster):
    args = ["optimise", "--dataset", "digits", "--generations", "2", "--population-size", "6", "--quiet"]
    assert main([*args, "--device", "cpu", "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--cluster", "local:2", "--out", str(tmp_path / "ray")]) == 0
    a, b = (Engine.load(tmp_path / name / "engine.safetensors") for name in ("local", "ray"))
    assert all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a.weights, b.weights, strict=True))
    assert torch.equal(a.head.bank, b.head.bank)
    assert json.loads((tmp_path / "ray" / "metrics.json").read_text())["cluster"] == "local:2"


def test_seeds_fan_out_as_ray_tasks_each_a_complete_run(tmp_path, ray_cluster):
    args = ["optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--quiet",
            "--seeds", "0", "1", "--cluster", "local:2", "--out", str(tmp_path / "fan")]
    assert main(args) == 0
    for seed in (0, 1):
        run = tmp_path / "fan" / f"seed{seed}"
        assert {p.name for p in run.iterdir()} >= {"config.toml", "engine.safetensors", "metrics.json", "history.csv"}
        assert json.loads((run / "metrics.json").read_text())["seed"] == seed
    before = (tmp_path / "fan" / "seed0" / "metrics.json").read_text()
    assert main(args) == 0  # the same command again: finished runs are kept, not redone
    assert (tmp_path / "fan" / "seed0" / "metrics.json").read_text() == before


@pytest.mark.parametrize("fan_out", [[], ["--seeds", "0", "1"]])
def test_cuda_on_a_cluster_without_a_gpu_is_one_line(tmp_path, ray_cluster, run_main, fan_out):
    """The driver needs no GPU of its own with --cluster, but the cluster must have one: no actor or task
    waits forever for a GPU that no node has."""
    status, err = run_main(["optimise", "--dataset", "digits", "--generations", "1", "--device", "cuda",
                            "--cluster", "local:2", *fan_out, "--out", str(tmp_path / "r")])
    errors = [line for line in err.strip().splitlines() if "error" in line]
    assert status == 2 and len(errors) == 1 and "the cluster has no GPU" in errors[0], err
    assert not (tmp_path / "r").exists()


def test_an_arch_search_on_a_cluster_is_the_same_search(tmp_path, ray_cluster):
    """A generation's individuals as Ray tasks: the same fitness, generations and front as one after the other."""
    assert main([*ARCH, "--out", str(tmp_path / "in-process")]) == 0
    assert main([*ARCH, "--cluster", "local:2", "--out", str(tmp_path / "ray")]) == 0
    a, b = (json.loads((tmp_path / name / "arch.json").read_text()) for name in ("in-process", "ray"))

    def results(rows):  # where and how long each ran aside (and a generation's individuals, compared below)
        return [{k: v for k, v in row.items() if k not in ("run", "wall_seconds", "individuals")} for row in rows]

    assert {code: results(r) for code, r in a["evaluations"].items()} == \
        {code: results(r) for code, r in b["evaluations"].items()}
    assert results(a["front"]) == results(b["front"]) and results(a["history"]) == results(b["history"])
    assert [results(r["individuals"]) for r in a["history"]] == [results(r["individuals"]) for r in b["history"]]
    assert all((tmp_path / "ray" / "individuals" / row["run"].rsplit("/", 1)[-1] / "engine.safetensors").is_file()
               for row in b["front"])


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "slicenet.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("flags,match", [
    (["--device", "cuda"], "sees no CUDA GPU" if not torch.cuda.is_available() else None),
    (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto"),
    (["--device", "cuda:x", "--cluster", "local:2"], "expected cpu, cuda, cuda:N or auto"),  # before Ray starts
    (["--cluster", "127.0.0.1:1"], "does not answer"),
    (["--cluster", "ray://127.0.0.1:1"], "does not answer"),  # Ray Client's address: probed too, before anything
    (["--cluster", "nowhere"], "expected auto, local[:N] or the head's address"),
    (["--cluster", "local:0"], "expected local or local:N"),
])
def test_bad_device_or_cluster_is_one_line(tmp_path, flags, match):
    if match is None:
        pytest.skip("a CUDA GPU is present")
    result = cli("optimise", "--dataset", "digits", "--generations", "1", *flags, "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert match in result.stderr and not (tmp_path / "r").exists()


def test_ray_not_installed_is_one_line_naming_the_extra(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from slicenet.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, "optimise", "--dataset", "digits", "--cluster", "local:2",
                             "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "pip install 'slicenet[ray]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the CPU / CUDA comparison runs where "
                    "there is one (results/scale/gpu_bench.sh)")
def test_a_cuda_evaluator_agrees_with_the_cpu_one_to_float_tolerance(problem):
    weights = init_weights(problem.spec, 0)
    block = Block(1, None)
    pop, split = population(weights, block), problem.split((0, 1, 0))
    cpu = TorchEvaluator(problem, device="cpu").bind(weights, block)(pop, split)
    cuda = TorchEvaluator(problem, device="cuda").bind(weights, block)(pop, split)
    np.testing.assert_allclose(cuda.fitness, cpu.fitness, rtol=1e-4, atol=1e-5)
