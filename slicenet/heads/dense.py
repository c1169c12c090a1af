"""A fully connected head (hidden layers with ReLU, then the class logits): the backprop baseline's.

Its scores are the softmax probabilities; the class is the largest logit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..storage import decode, encode, round_trip
from .base import Head

if TYPE_CHECKING:
    from ..engine import PostProcessing
    from ..graph import Graph
    from ..views import Views

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class DenseHead(Head):
    kind: ClassVar[str] = "dense"
    family: ClassVar[str] = "dense"

    layers: Layers = field(default_factory=list)  # (weight [out, in], bias [out]) per layer, ReLU between

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        h = features
        for index, (weight, bias) in enumerate(self.layers):
            h = torch.nn.functional.linear(h, weight, bias)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.softmax(self.logits(features), -1), torch.zeros((len(features), 0), dtype=torch.int64,
                                                                      device=features.device)

    def predict(self, features: torch.Tensor, views: Views, n_images: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if views.count > 1:
            return super().predict(features, views, n_images)
        logits = self.logits(features)  # the class is the largest logit, not the largest rounded probability
        return (logits.argmax(-1).cpu().numpy(), torch.softmax(logits, -1).cpu().numpy(),
                np.zeros((len(logits), 0), dtype=np.int64))

    def near_ties(self, features: torch.Tensor, views: Views, n_images: int) -> np.ndarray:
        return np.zeros(n_images, dtype=bool)

    def details(self, votes: np.ndarray, class_names: tuple[str, ...], views: Views
                ) -> tuple[str, str, list[dict[str, Any]]]:
        # Softmax probabilities, likeliest first, the negligible left out.
        rows = [{class_names[c]: round(float(row[c]), 4) for c in np.argsort(-row, kind="stable") if row[c] >= 0.001}
                for row in votes]
        return "probabilities", "probabilities", rows

    @property
    def parameters(self) -> int:
        return sum(w.numel() + b.numel() for w, b in self.layers)

    @property
    def multiply_adds(self) -> int:
        return sum(w.numel() for w, _ in self.layers)

    @property
    def n_classes(self) -> int:
        return int(self.layers[-1][0].shape[0])

    def label(self, views: Views | None = None) -> str:
        return "dense " + " ".join(str(w.shape[0]) for w, _ in self.layers[:-1])

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "layers": len(self.layers)}

    def tensors(self, storage: dict[str, str]) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for index, (weight, bias) in enumerate(self.layers):
            tensors.update(encode(f"dense.{index}.weight", weight, storage["weights"]))
            tensors.update(encode(f"dense.{index}.bias", bias, storage["weights"]))
        return tensors

    @classmethod
    def from_file(cls, settings: dict[str, Any], tensors: dict[str, torch.Tensor], n_classes: int) -> DenseHead:
        return cls([(decode(tensors, f"dense.{i}.weight"), decode(tensors, f"dense.{i}.bias"))
                    for i in range(int(settings["layers"]))])

    def to(self, device: torch.device) -> DenseHead:
        return dataclasses.replace(self, layers=[(w.to(device), b.to(device)) for w, b in self.layers])

    def with_storage(self, storage: dict[str, str]) -> DenseHead:
        precision = storage["weights"]
        return dataclasses.replace(self, layers=[(round_trip(w, precision), round_trip(b, precision))
                                                 for w, b in self.layers])

    def describe(self, g: Graph, features: str, post: PostProcessing, *, rows: int, single_view: bool,
                 storage: dict[str, str]) -> tuple[str, str | None]:
        x = post.describe(g, features)
        for index, (weight, bias) in enumerate(self.layers):
            x = g.matmul(x, g.constant(f"dense{index}.weight_t", weight.numpy().T.copy()), name=f"dense{index}.mm")
            x = g.add(x, g.constant(f"dense{index}.bias", bias.numpy()), name=f"dense{index}")
            if index < len(self.layers) - 1:
                x = g.relu(x, name=f"dense{index}.relu")
        votes = g.softmax(x, axis=1, name="votes")
        return votes, (g.argmax(x, axis=1, name="class") if single_view else None)
