"""Where torch computes: ``--device cpu|cuda[:N]|auto`` (auto: CUDA when torch sees one).

A device is a field of what computes (the population evaluator, an engine copy for evaluation, the
baseline's training), never a global. The population's activations are cut into chunks sized for
the device: on a CPU they stay within its last-level cache, on a GPU they fill a share of its free
memory.
"""

from __future__ import annotations

import torch

from .errors import InputError
from .fitness import ACTIVATION_BUDGET

GPU_MEMORY_SHARE = 0.25  # of the free GPU memory, for one chunk of a population's activations (float32)


def kind(spec: str) -> str:
    """What ``spec`` asks for, "cpu", "cuda" or "auto", without looking for a GPU (a Ray cluster's workers
    look on their own machines); a bad spelling is a one-line error."""
    if spec in ("cpu", "auto"):
        return spec
    if spec == "cuda" or (spec.startswith("cuda:") and spec[len("cuda:"):].isdigit()):
        return "cuda"
    raise InputError(f"--device {spec!r}: expected cpu, cuda, cuda:N or auto")


def resolve(spec: str) -> torch.device:
    """The torch device ``spec`` names; a CUDA device torch cannot see is a one-line error."""
    if kind(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise InputError(f"--device {spec}: torch {torch.__version__} ({build}) sees no CUDA GPU here; use "
                         "--device cpu, or auto (CUDA where there is one)")
    index = spec.partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"--device {spec}: torch sees {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return torch.device(spec)


def activation_budget(device: torch.device) -> int:
    """float32 elements of a population's intermediate activations per chunk of images on ``device``."""
    if device.type != "cuda":
        return ACTIVATION_BUDGET
    free, _ = torch.cuda.mem_get_info(device)
    return max(ACTIVATION_BUDGET, int(free * GPU_MEMORY_SHARE) // 4 // 2)
