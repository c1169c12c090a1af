"""Heads behind one interface, and the one registry that the engine file, the CLI and the tests use.

A new head is one class (``base.Head``'s methods) and one line here; see the README's layout section.
"""

from __future__ import annotations

from ..errors import InputError
from .base import TIE_TOLERANCE, BankHead, Head
from .dense import DenseHead
from .local_mean import LocalMeanHead
from .majority import MajorityHead

HEADS: dict[str, type[Head]] = {"majority": MajorityHead, "local-mean": LocalMeanHead, "dense": DenseHead}
BANK_HEADS: dict[str, type[BankHead]] = {"majority": MajorityHead, "local-mean": LocalMeanHead}  # --vote


def bank_head(vote: str, *, n_neighbors: int, metric: str) -> BankHead:
    """The k-NN head a ``--vote`` names, with its settings and an empty bank (``fit`` fills it)."""
    if vote not in BANK_HEADS:
        raise InputError(f"unknown vote {vote!r}: expected one of {', '.join(BANK_HEADS)}")
    return BANK_HEADS[vote](n_neighbors=n_neighbors, metric=metric)


def head_class(kind: str) -> type[Head]:
    if kind not in HEADS:
        raise InputError(f"unknown head {kind!r}: expected one of {', '.join(HEADS)}")
    return HEADS[kind]


__all__ = ["HEADS", "BANK_HEADS", "Head", "BankHead", "MajorityHead", "LocalMeanHead", "DenseHead", "bank_head",
           "head_class", "TIE_TOLERANCE"]
