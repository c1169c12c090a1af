import gzip
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write a uint8 array in the IDX format (the MNIST file format)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def idx_dir(tmp_path):
    """A tiny MNIST-format dataset: 60 train and 20 test images of 28x28, 10 classes."""
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress=True)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


@pytest.fixture
def run_main(capsys):
    """``run_main(args)``: (exit status, stderr) of ``slicenet ARGS`` run in-process, as a shell would see
    them (argparse's own errors exit). A table of bad inputs then costs no interpreter start per row; an
    uncaught exception fails the test all the same."""
    from slicenet.cli import main

    def run(args):
        capsys.readouterr()  # what earlier calls printed is not this one's
        try:
            status = main(args)
        except SystemExit as stop:
            status = stop.code
        return status, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One quick digits run (1 generation, population 4), shared read-only by the test modules."""
    from slicenet.cli import main

    out = tmp_path_factory.mktemp("shared") / "tiny"
    assert main(["optimise", "--dataset", "digits", "--generations", "1", "--population-size", "4", "--quiet",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    """One fresh local Ray instance (2 CPUs, no dashboard) for the whole test session, as CI has 2 cores.

    address="local": never join a cluster the machine already runs (CI may have one, or RAY_ADDRESS).
    """
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'slicenet[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
