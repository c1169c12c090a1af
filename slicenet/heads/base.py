"""What every head owns, and the bank heads' shared part.

A head maps post-processed features [N, D] to scores [N, n_classes] (larger is likelier) and owns
everything that depends on how it does so: its tensors in the engine file, its part of the
exported graph, its multiply-adds, its label, how ``predict`` shows its scores, which answers
float rounding can change (``near_ties``), and, for heads the search can score, its batched
fitness over a population of candidate trunks. The engine around it (input normalisation, trunk,
post-processing, test-time views) never asks which head it holds.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..errors import InputError
from ..storage import decode, encode, round_trip

if TYPE_CHECKING:
    from ..engine import PostProcessing
    from ..graph import Graph
    from ..views import Views

TIE_TOLERANCE = 1e-5  # distance gap below which float32 summation order may swap two neighbours
SCORE_CHUNK = 2**25  # score entries (candidates x queries x bank) per chunk of a population's distances


class Head(ABC):
    kind: ClassVar[str]  # registry key: in the engine file, metrics.json and the report's CSV
    family: ClassVar[str]  # "knn" (a bank of prototypes) or "dense" (fully connected layers)

    # -- inference -----------------------------------------------------------------------------

    @abstractmethod
    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [N, n_classes], larger is likelier; per-row neighbour indices, or an empty tensor)."""

    def predict(self, features: torch.Tensor, views: Views, n_images: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class [N], scores summed over the views [N, C], neighbours of each image's own view)."""
        scores, neighbours = self.scores(features)
        votes = views.combine(scores, n_images)
        classes = votes.argmax(-1)
        return classes.cpu().numpy(), votes.cpu().numpy(), self.winners(neighbours[:n_images], classes)

    def winners(self, neighbours: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        """The neighbours shown for each prediction (by default all of them)."""
        return neighbours.cpu().numpy()

    @abstractmethod
    def near_ties(self, features: torch.Tensor, views: Views, n_images: int) -> np.ndarray:
        """[N] bool: images whose answer float32 rounding in another runtime may legitimately change."""

    @abstractmethod
    def details(self, votes: np.ndarray, class_names: tuple[str, ...], views: Views
                ) -> tuple[str, str, list[dict[str, Any]]]:
        """How ``predict`` shows a row of scores: (JSON key, title, one {class: value} per image)."""

    # -- cost, storage, description ------------------------------------------------------------

    @property
    @abstractmethod
    def parameters(self) -> int:
        """Learned weights (a bank's prototypes are data, not parameters)."""

    @property
    @abstractmethod
    def multiply_adds(self) -> int:
        """Multiply-adds per feature vector, as MCU and edge tools count them."""

    @property
    @abstractmethod
    def n_classes(self) -> int: ...

    @abstractmethod
    def label(self, views: Views | None = None) -> str:
        """The head (with its engine's test-time views) as the report's tables name it."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Its settings (not its tensors): the engine file's and metrics.json's description of it."""

    @abstractmethod
    def tensors(self, storage: dict[str, str]) -> dict[str, torch.Tensor]:
        """The tensors it stores, encoded at ``storage``'s precisions."""

    @classmethod
    @abstractmethod
    def from_file(cls, settings: dict[str, Any], tensors: dict[str, torch.Tensor], n_classes: int) -> Head: ...

    @abstractmethod
    def to(self, device: torch.device) -> Head:
        """A copy whose tensors are on ``device``."""

    @abstractmethod
    def with_storage(self, storage: dict[str, str]) -> Head:
        """A copy whose tensors hold the values stored at ``storage``'s precisions."""

    @abstractmethod
    def describe(self, g: Graph, features: str, post: PostProcessing, *, rows: int, single_view: bool,
                 storage: dict[str, str]) -> tuple[str, str | None]:
        """Its part of the graph, from raw trunk features [rows, D]: (votes [rows, C], and the class
        [rows] where the head gives it directly on a single view; else None: the engine's ArgMax)."""

    def check(self, class_names: tuple[str, ...]) -> None:
        """Fail with a one-line InputError if this head cannot work as stored (a damaged file)."""
        return None

    # -- the search's fitness ------------------------------------------------------------------

    def population_scores(self, bank: torch.Tensor, queries: torch.Tensor, *, y_fit: torch.Tensor,
                          y_val: torch.Tensor, n_classes: int, leave_one_out: bool, soft_score: str,
                          temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(hits [P, Q] bool, smooth score [P, Q] in [0, 1]) of P candidate feature sets: post-processed
        ``bank`` [P, B, D] and ``queries`` [P, Q, D] (the same rows under ``leave_one_out``)."""
        raise InputError(f"the {self.kind} head cannot score a gradient-free search: use a k-NN vote")


@dataclass(eq=False)
class BankHead(Head):
    """A k-NN head: a bank of prototypes (post-processed features) and their labels."""

    METRICS: ClassVar[tuple[str, ...]] = ("euclidean", "sqeuclidean", "cosine", "manhattan")
    METRICS_NAME: ClassVar[str] = "any metric"
    family: ClassVar[str] = "knn"

    n_neighbors: int = 9  # k
    metric: str = "euclidean"  # the distance the bank is ranked by
    bank: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))  # [B, D] prototypes
    bank_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # [B]
    classes: int = 0  # how many classes the labels index

    def fit(self, bank: torch.Tensor, labels: torch.Tensor, n_classes: int) -> BankHead:
        """This head's settings over a bank."""
        return dataclasses.replace(self, bank=bank, bank_labels=torch.as_tensor(labels, dtype=torch.int64),
                                   classes=n_classes)

    @property
    def n_classes(self) -> int:
        return self.classes

    @property
    def parameters(self) -> int:
        return 0

    @property
    def multiply_adds(self) -> int:
        return int(self.bank.numel())  # one product per prototype and feature

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_neighbors": self.n_neighbors, "metric": self.metric}

    RULE: ClassVar[str] = ""  # how the label names the vote ("" for the reference's majority)

    def label(self, views: Views | None = None) -> str:
        """"k-NN (k=9)", "k-NN (k=9, local mean)", "k-NN (k=9, 5 views)" (test-time views)."""
        details = [self.RULE] if self.RULE else []
        if views is not None and views.count > 1:
            details.append(f"{views.count} views")
        return f"k-NN (k={self.n_neighbors}{''.join(', ' + d for d in details)})"

    def tensors(self, storage: dict[str, str]) -> dict[str, torch.Tensor]:
        # Labels in the smallest integer type that holds them.
        labels = self.bank_labels.to(torch.uint8 if self.n_classes <= 256 else torch.int32)
        return {**encode("bank", self.bank, storage["bank"]), "bank_labels": labels}

    @classmethod
    def from_file(cls, settings: dict[str, Any], tensors: dict[str, torch.Tensor], n_classes: int) -> BankHead:
        return cls(n_neighbors=int(settings["n_neighbors"]), metric=str(settings["metric"]),
                   bank=decode(tensors, "bank"), bank_labels=tensors["bank_labels"].to(torch.int64),
                   classes=n_classes)

    def with_storage(self, storage: dict[str, str]) -> BankHead:
        return dataclasses.replace(self, bank=round_trip(self.bank, storage["bank"]))

    def to(self, device: torch.device) -> BankHead:
        return dataclasses.replace(self, bank=self.bank.to(device), bank_labels=self.bank_labels.to(device))

    def check(self, class_names: tuple[str, ...]) -> None:
        if self.metric not in self.METRICS:
            raise InputError(f"the {self.kind} vote is {self.METRICS_NAME}; use --metric {self.METRICS[0]}, "
                             f"not {self.metric}")
        if self.n_neighbors < 1:
            raise InputError(f"n_neighbors={self.n_neighbors}: expected at least 1")

    def details(self, votes: np.ndarray, class_names: tuple[str, ...], views: Views
                ) -> tuple[str, str, list[dict[str, Any]]]:
        title = "votes" + (f" over {views.count} test-time views" if views.count > 1 else "")
        return "votes", title, [{class_names[c]: int(v) for c, v in enumerate(row) if v} for row in votes]

    def bank_constant(self, g: Graph, storage: dict[str, str], factor: float = 1.0) -> tuple[str, np.ndarray]:
        """``factor`` x the transposed bank, as stored: an fp32 constant, or the stored fp16 / int8
        (times its scale) cast to fp32 in the graph, which reproduces the engine's decoded values
        exactly (``factor`` is a power of two, so scaling is exact too). Returns (its name, its values)."""
        bank_t = self.bank.numpy().T.copy()
        values = (factor * bank_t).astype(np.float32)
        precision = storage.get("bank", "fp32")
        if precision == "fp32":
            return g.constant("bank_t", values), values
        stored = encode("bank", torch.from_numpy(np.ascontiguousarray(bank_t, dtype=np.float32)), precision)
        if precision == "fp16":
            return g.cast(g.constant("bank_t_fp16", (stored["bank"] * factor).numpy()), name="bank_t"), values
        decoded = g.cast(g.constant("bank_t_int8", stored["bank.q"].numpy()), name="bank_t_q")
        return g.mul(decoded, g.constant("bank_scale", (stored["bank.scale"] * factor).numpy()), name="bank_t"), values

    def ranking_scores(self, g: Graph, features: str, *, post: PostProcessing, storage: dict[str, str]
                       ) -> tuple[str, str, str, str]:
        """The graph's ranking of the bank for each row, larger is nearer: (scores [rows, B], the
        post-processed query, the bank constant, the constant ||b||^2 [B]).

        Euclidean: -||q - b||^2 = 2 q.b - ||b||^2 - ||q||^2, and TopK ranks the bank for one query at a
        time, so ||q||^2 is dropped and the 2 is folded into the stored bank (exact: a power of two):
        one MatMul and one Sub. Cosine ranks by q.b/|b|, which the query's own length cannot change:
        its L2 normalisation is left out and the centring folds into the product (``post.describe_linear``).
        """
        if self.metric not in ("euclidean", "sqeuclidean", "cosine"):
            raise InputError(f"metric {self.metric!r} cannot be exported; retrain with --metric euclidean")
        bank = self.bank.numpy()
        if self.metric == "cosine":
            unit = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
            bank_t = unit.T.astype(np.float32).copy()
            name = g.constant("bank_t", bank_t)
            return post.describe_linear(g, features, then=name, then_value=bank_t), features, name, ""
        query = post.describe(g, features)
        bank_t, _ = self.bank_constant(g, storage, 2.0)
        norm2 = g.constant("bank_norm2", (bank.astype(np.float64) ** 2).sum(1).astype(np.float32))
        scores = g.sub(g.matmul(query, bank_t, name="dot"), norm2, name="neg_distance")  # [rows, B] - [B]
        return scores, query, bank_t, norm2
