import pickle

import numpy as np
import pytest

from slicenet.optimisers import REGISTRY, make_optimiser, sanitise_fitness


def sphere(x):
    return ((x - 1.5) ** 2).sum(-1)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_solves_a_small_convex_problem(method):
    opt = make_optimiser(method, np.zeros(2), sigma0=0.5, population_size=8, seed=0, max_generations=60)
    start = sphere(np.zeros(2))
    while not opt.stop():
        X = opt.ask()
        assert X.shape[1] == 2 and len(X) in (8, 16)  # PSO also re-scores its personal bests
        opt.tell(X, sphere(X))
    x, f = opt.best
    assert f < 1e-2 * start and np.allclose(x, 1.5, atol=0.1)
    assert opt.generation == 60


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_nan_and_inf_fitness_are_the_worst_not_a_crash(method):
    opt = make_optimiser(method, np.zeros(3), sigma0=0.3, population_size=6, seed=1, max_generations=5)
    while not opt.stop():
        X = opt.ask()
        f = sphere(X)
        f[0], f[1] = np.nan, np.inf
        opt.tell(X, f)
    assert np.isfinite(opt.best[1])


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_pickled_optimiser_continues_identically(method):
    a = make_optimiser(method, np.zeros(4), sigma0=0.3, population_size=6, seed=2, max_generations=10)
    for _ in range(3):
        X = a.ask()
        a.tell(X, sphere(X))
    b = pickle.loads(pickle.dumps(a))
    for _ in range(3):
        Xa, Xb = a.ask(), b.ask()
        np.testing.assert_array_equal(Xa, Xb)
        a.tell(Xa, sphere(Xa))
        b.tell(Xb, sphere(Xb))


def test_cma_switches_to_separable_for_large_dimensions():
    small = make_optimiser("cma", np.zeros(10), sigma0=0.1, max_generations=1)
    large = make_optimiser("cma", np.zeros(1000), sigma0=0.1, max_generations=1)
    assert not small.separable and large.separable
    assert small.population_size == 2 * (4 + int(3 * np.log(10)))  # twice Hansen's lambda (noisy fitness)


def test_mismatched_tell_is_rejected():
    opt = make_optimiser("ga", np.zeros(2), sigma0=0.1, population_size=4, max_generations=3)
    with pytest.raises(ValueError, match="must equal #solutions"):
        opt.tell(opt.ask(), np.zeros(3))


def test_sanitise():
    assert sanitise_fitness(np.array([1.0, np.nan, 3.0])).tolist() == [1.0, 7.0, 3.0]
    assert sanitise_fitness(np.array([np.nan])).tolist() == [1e30]


def test_pso_writes_no_report_log_into_the_working_directory(tmp_path):
    import subprocess
    import sys

    code = ("import numpy as np; from slicenet.optimisers import make_optimiser; "
            "o = make_optimiser('pso', np.zeros(2), sigma0=0.1, population_size=4, max_generations=2); "
            "X = o.ask(); o.tell(X, (X ** 2).sum(1))")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert not (tmp_path / "report.log").exists()
