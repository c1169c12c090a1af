"""Ray, the distributed engine: populations scored by actors across a cluster, and whole runs fanned out.

``RayEvaluator`` is an ``evaluators.Evaluator``: the search does not know it is there. The driver
keeps the optimiser, the checkpoint and the progress bar; each generation's population is cut into
contiguous row shards, one per live actor, and each actor scores its shard with its own in-process
``TorchEvaluator`` on its own device. The problem (the training images, a few MB to a few hundred)
goes into Ray's object store once (``ray.put``); a block's frozen weights once per block. A
candidate's fitness does not depend on which shard it is scored in (the tests check it against the
in-process evaluator, bit for bit), so a seed gives the same engine with or without a cluster. An
actor that dies mid-generation costs its shard only: it is scored again on a live actor.

``fan_out`` runs whole runs (one per seed, say) as Ray tasks, each its own checkpointed run
directory: the building block of the architecture search.

Clusters: ``local`` or ``local:N`` starts a Ray instance on this machine with N CPUs; ``auto``
joins the cluster this machine belongs to (``ray start --head`` ran here, or RAY_ADDRESS); any other
value is the head's address, ``HOST:6379``. Ray is the ``slicenet[ray]`` extra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import InputError
from .evaluators import Evaluator, ScoredProblem
from .fitness import Scores, Split
from .trunk import Block, Weights

SHUTDOWN_OWN = True  # a local Ray instance this process started is stopped with the evaluator


def parse_cluster(spec: str) -> tuple[str, int | None]:
    """("local", N) | ("auto", None) | (address, None); a bad spec is a one-line error."""
    if spec == "auto":
        return "auto", None
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if count and (not count.isdigit() or int(count) < 1):
            raise InputError(f"--cluster {spec!r}: expected local or local:N with N CPUs (a positive integer)")
        return "local", int(count) if count else None
    host, _, port = spec.rpartition(":")
    if spec.startswith("ray://") or (host and port.isdigit()):
        return spec, None
    raise InputError(f"--cluster {spec!r}: expected auto, local[:N] or the head's address HOST:PORT "
                     "(as 'ray start --head' prints, e.g. 10.0.0.5:6379)")


def check_cluster(spec: str) -> None:
    """A bad spec, or a head address where nothing listens, as a one-line error: the CLI calls this before
    it writes anything, so the corrected command is the same command, not a ``--resume``."""
    kind, _ = parse_cluster(spec)
    if kind not in ("local", "auto"):
        _probe(spec)


def connect(spec: str) -> tuple[Any, bool]:
    """(the ray module, whether this call started the instance), connected as ``spec`` says."""
    from .extras import require

    require("ray", purpose=f"--cluster {spec}")
    import ray

    kind, count = parse_cluster(spec)
    if ray.is_initialized():
        return ray, False
    check_cluster(spec)
    try:
        if kind == "local":
            # address="local": a fresh instance on this machine even where RAY_ADDRESS or a running
            # cluster would otherwise be joined (Ray's default for address=None).
            ray.init(address="local", num_cpus=count or os.cpu_count(), include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(address=kind, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if kind.startswith("ray://") and "ray[client]" in first:
            raise InputError(f"--cluster {spec}: a ray:// address is Ray Client, which needs pip install "
                             "'ray[client]' here; or give the head's HOST:PORT (as 'ray start --head' prints) from a "
                             "machine that joined the cluster") from None
        if _token_auth_likely(kind):
            raise InputError(f"the Ray cluster at {spec!r} refused this driver ({first}); a cluster started where "
                             "~/.ray/auth_token exists uses token authentication: run with RAY_AUTH_MODE=token and "
                             "the head's token (~/.ray/auth_token or RAY_AUTH_TOKEN) on this machine") from None
        raise InputError(f"the Ray cluster at {spec!r} does not answer ({first}); start one with 'ray start --head' "
                         "on the head node (and 'ray start --address=HEAD:6379' on the others), or use --cluster "
                         "local:N") from None
    return ray, True


def _token_auth_likely(kind: str) -> bool:
    """An explicit address, RAY_AUTH_MODE unset, and a token here: Ray then connects without the token."""
    from pathlib import Path

    if kind in ("local", "auto") or os.environ.get("RAY_AUTH_MODE"):
        return False
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").exists())


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, at once, if nothing listens at HOST:PORT or ray://HOST:PORT (Ray itself retries
    for minutes); a ray:// address without a port is left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise InputError(f"the Ray cluster at {address!r} does not answer ({exc.strerror or exc}); start one with "
                         "'ray start --head' on the head node (and 'ray start --address=HEAD:6379' on the others), "
                         "or use --cluster local:N") from None


def gpus_for_device(ray: Any, device: str, cluster: str) -> int:
    """GPUs an actor or task takes for ``device``: one for cuda (a cluster without any is a one-line
    error, not workers waiting forever for one), none otherwise."""
    from .device import kind

    if kind(device) != "cuda":
        return 0
    if int(ray.cluster_resources().get("GPU", 0)) < 1:
        raise InputError(f"--device {device} with --cluster {cluster}: the cluster has no GPU; use --device cpu, "
                         "or add nodes that have GPUs")
    return 1


def _scorer(ray: Any) -> Any:
    """The actor class, defined where ray is imported (it is an optional dependency)."""

    @ray.remote
    class ShardScorer:
        def __init__(self, problem: ScoredProblem, device: str):
            from .evaluators import TorchEvaluator

            self.evaluator = TorchEvaluator(problem, device=device)
            self.bound = -1

        def score(self, version: int, weights: Weights, block: Block, population: np.ndarray,
                  split: Split | None) -> Scores:
            if version != self.bound:
                self.evaluator.bind(weights, block)
                self.bound = version
            return self.evaluator(population, split)

        def pid(self) -> int:
            return os.getpid()

    return ShardScorer


class RayEvaluator(Evaluator):
    """Populations scored in row shards by Ray actors that each hold the problem once."""

    def __init__(self, problem: ScoredProblem, *, cluster: str = "local", workers: int = 0, device: str = "cpu"):
        super().__init__(problem)
        self.ray, self._started = connect(cluster)
        self.actors: list[Any] = []
        ray = self.ray
        try:
            gpus = gpus_for_device(ray, device, cluster)
        except InputError:
            self.close()
            raise
        if workers <= 0:  # one actor per CPU (or GPU) the cluster has
            resources = ray.cluster_resources()
            workers = max(1, int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1)))
        self._problem = ray.put(problem)  # into the object store once: no copy per call
        scorer = _scorer(ray)
        # An actor given one GPU sees only that one, as cuda: the driver's cuda:N names none of its devices.
        self.actors = [scorer.options(num_cpus=1, num_gpus=gpus).remote(self._problem, "cuda" if gpus else device)
                       for _ in range(workers)]
        self.device = device
        self._version = 0
        self._weights: Any = None
        self.rescored = 0  # shards scored again after their actor died

    def bind(self, weights: Weights, block: Block) -> RayEvaluator:
        super().bind(weights, block)
        self._version += 1
        self._weights = self.ray.put(weights)
        return self

    def __call__(self, population: np.ndarray, split: Split | None = None) -> Scores:
        ray = self.ray
        if not self.actors:
            raise InputError("every Ray worker of this search has died; restart it with --resume")
        shards = [rows for rows in np.array_split(np.arange(len(population)), len(self.actors)) if len(rows)]
        pending = {}
        for index, rows in enumerate(shards):
            actor = self.actors[index % len(self.actors)]
            pending[index] = (actor, self._submit(actor, population[rows], split))
        results: dict[int, Scores] = {}
        while pending:
            index, (actor, future) = pending.popitem()
            try:
                results[index] = ray.get(future)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                if actor in self.actors:  # it died: its shard goes to a live actor
                    self.actors.remove(actor)
                if not self.actors:
                    raise InputError("every Ray worker of this search has died; restart it with --resume") from None
                self.rescored += 1
                replacement = self.actors[index % len(self.actors)]
                pending[index] = (replacement, self._submit(replacement, population[shards[index]], split))
        return Scores.concat([results[i] for i in range(len(shards))])

    def _submit(self, actor: Any, rows: np.ndarray, split: Split | None) -> Any:
        return actor.score.remote(self._version, self._weights, self.block, rows, split)

    def worker_pids(self) -> list[int]:
        return list(self.ray.get([actor.pid.remote() for actor in self.actors]))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started and SHUTDOWN_OWN:
            self.ray.shutdown()


def fan_out(function: Callable[..., Any], jobs: list[dict], *, cluster: str, cpus_per_job: int = 1,
            device: str = "cpu") -> list[Any]:
    """``function(**job)`` for every job, as Ray tasks on ``cluster``, results in the jobs' order. With a
    CUDA ``device`` each task holds one GPU of the cluster (and its job's ``device``, if it has one, is
    that GPU, as the task sees it: cuda)."""
    ray, started = connect(cluster)
    try:
        gpus = gpus_for_device(ray, device, cluster)
        if gpus:
            jobs = [{**job, "device": "cuda"} if "device" in job else job for job in jobs]
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus)(function)
        return list(ray.get([task.remote(**job) for job in jobs]))
    finally:
        if started and SHUTDOWN_OWN:
            ray.shutdown()
