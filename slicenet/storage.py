"""How an engine's numbers are stored: fp32, fp16, or int8 with one fp32 scale per tensor (symmetric).

An engine stored at a precision computes with the stored values decoded (``round_trip``), so every
runtime, torch or exported, computes with exactly what the file holds.
"""

from __future__ import annotations

import torch

from .errors import InputError

PRECISIONS = ("fp32", "fp16", "int8")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def encode(name: str, tensor: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    """The tensors to store for ``name``: ``name`` (fp32, fp16), or ``name.q`` and ``name.scale`` (int8)."""
    tensor = tensor.detach().float().contiguous()
    if precision == "fp32":
        return {name: tensor}
    if precision == "fp16":
        return {name: tensor.half()}
    scale = tensor.abs().max().clamp_min(1e-12) / 127.0
    return {f"{name}.q": torch.round(tensor / scale).clamp(-127, 127).to(torch.int8),
            f"{name}.scale": scale.reshape(1)}


def decode(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if f"{name}.q" in tensors:
        return tensors[f"{name}.q"].float() * tensors[f"{name}.scale"]
    return tensors[name].float()


def stored(tensors: dict[str, torch.Tensor], name: str) -> bool:
    return name in tensors or f"{name}.q" in tensors


def round_trip(tensor: torch.Tensor, precision: str) -> torch.Tensor:
    """The values ``tensor`` takes once stored at ``precision`` (fp32 in memory)."""
    return decode(encode("t", tensor, precision), "t")
