"""The inference engine: trunk weights, input normalisation, feature post-processing, prototype bank.

Saved as one safetensors file (tensors plus a JSON header; loading executes no code). The engine's
size, ``engine_bytes``, is the size of that file: every byte inference needs, bank included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .knn import knn_vote, postprocess
from .trunk import TrunkSpec, Weights, features

FORMAT = "slicenet-engine/1"


def normalise_images(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 images [N, H, W] -> float32 [N, 1, H, W], scaled to [0, 1] then standardised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


@dataclass
class Engine:
    spec: TrunkSpec
    weights: Weights
    input_mean: float
    input_std: float
    postprocessing: str
    feature_mean: torch.Tensor  # [D], subtracted before L2 normalisation (centre_l2)
    bank: torch.Tensor  # [B, D] post-processed features of the prototypes
    bank_labels: torch.Tensor  # int64 [B]
    n_neighbors: int
    metric: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    info: dict  # provenance: method, dataset, run name, ...
    head: str = "knn"  # "knn": vote of the bank; "dense": the fully connected layers below
    dense: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (W [out, in], b)

    @classmethod
    def build(cls, spec: TrunkSpec, weights: Weights, images: np.ndarray, labels: np.ndarray,
              input_mean: float, input_std: float, postprocessing: str, n_neighbors: int, metric: str,
              class_names: tuple[str, ...], info: dict | None = None) -> Engine:
        """An engine whose bank is every image given (each image one prototype)."""
        raw = features(normalise_images(images, input_mean, input_std), spec, weights)
        mean = raw.mean(0)
        return cls(spec, [(w.clone(), b.clone()) for w, b in weights], input_mean, input_std,
                   postprocessing, mean, postprocess(raw, mean, postprocessing),
                   torch.as_tensor(labels, dtype=torch.int64), n_neighbors, metric, tuple(class_names),
                   (int(images.shape[1]), int(images.shape[2])), dict(info or {}))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def build_dense(cls, spec: TrunkSpec, weights: Weights, dense: list[tuple[torch.Tensor, torch.Tensor]],
                    input_mean: float, input_std: float, class_names: tuple[str, ...],
                    image_size: tuple[int, int], info: dict | None = None) -> Engine:
        """An engine whose head is a trained fully connected classifier (the backprop baseline)."""
        empty = torch.zeros(0)
        return cls(spec, [(w.clone(), b.clone()) for w, b in weights], input_mean, input_std, "none", empty,
                   torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64), 0, "euclidean", tuple(class_names),
                   image_size, dict(info or {}), "dense", [(w.clone(), b.clone()) for w, b in dense])

    @property
    def parameters(self) -> int:
        return self.spec.parameters + sum(w.numel() + b.numel() for w, b in self.dense)

    def check_images(self, images: np.ndarray) -> None:
        if images.ndim != 3 or tuple(images.shape[1:]) != self.image_size:
            raise InputError(f"expected images of shape [N, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(images.shape)}")

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Post-processed features [N, D] of uint8 images [N, H, W]."""
        self.check_images(images)
        raw = features(normalise_images(images, self.input_mean, self.input_std), self.spec, self.weights)
        return postprocess(raw, self.feature_mean, self.postprocessing)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class index [N], votes [N, n_classes], neighbour indices into the bank [N, k]).

        A dense head returns its softmax probabilities as the votes and no neighbours.
        """
        if self.head == "dense":
            h = self.embed(images)
            for index, (weight, bias) in enumerate(self.dense):
                h = torch.nn.functional.linear(h, weight, bias)
                if index < len(self.dense) - 1:
                    h = torch.relu(h)
            return h.argmax(-1).numpy(), torch.softmax(h, -1).numpy(), np.zeros((len(h), 0), dtype=np.int64)
        votes, _, indices = knn_vote(self.embed(images), self.bank, self.bank_labels, self.n_classes,
                                     self.n_neighbors, self.metric)
        return votes.argmax(-1).numpy(), votes.numpy(), indices.numpy()

    # -- storage -------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for index, (weight, bias) in enumerate(self.weights):
            tensors[f"trunk.{index}.weight"] = weight.contiguous()
            tensors[f"trunk.{index}.bias"] = bias.contiguous()
        if self.head == "dense":
            for index, (weight, bias) in enumerate(self.dense):
                tensors[f"dense.{index}.weight"] = weight.contiguous()
                tensors[f"dense.{index}.bias"] = bias.contiguous()
            return tensors
        tensors["feature_mean"] = self.feature_mean.contiguous()
        tensors["bank"] = self.bank.contiguous()
        tensors["bank_labels"] = self.bank_labels.to(torch.int32)  # 4 bytes a label is plenty
        return tensors

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "slicenet_version": __version__,
            "spec": json.dumps(self.spec.to_dict()),
            "input": json.dumps({"mean": self.input_mean, "std": self.input_std,
                                 "height": self.image_size[0], "width": self.image_size[1],
                                 "dtype": "uint8", "scale": 1.0 / 255.0}),
            "head": json.dumps({"kind": self.head, "n_neighbors": self.n_neighbors, "metric": self.metric,
                                "postprocessing": self.postprocessing, "dense_layers": len(self.dense)}),
            "class_names": json.dumps(list(self.class_names)),
            "info": json.dumps(self.info),
        }

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(self._tensors(), self._metadata())

    @property
    def engine_bytes(self) -> int:
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "engine") -> Engine:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
            header_len = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
        except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{source} is not a slicenet engine file ({exc}); expected the "
                             "engine.safetensors written by 'slicenet optimise'") from None
        if metadata.get("format") != FORMAT:
            raise InputError(f"{source} is not a slicenet engine (format {metadata.get('format')!r}, "
                             f"expected {FORMAT!r})")
        try:
            spec = TrunkSpec.from_dict(json.loads(metadata["spec"]))
            image = json.loads(metadata["input"])
            head = json.loads(metadata["head"])
            weights = [(tensors[f"trunk.{i}.weight"], tensors[f"trunk.{i}.bias"]) for i in range(len(spec.layers))]
            common = dict(class_names=tuple(json.loads(metadata["class_names"])),
                          image_size=(int(image["height"]), int(image["width"])),
                          info=json.loads(metadata.get("info", "{}")))
            if head["kind"] == "dense":
                dense = [(tensors[f"dense.{i}.weight"], tensors[f"dense.{i}.bias"])
                         for i in range(int(head["dense_layers"]))]
                return cls.build_dense(spec, weights, dense, float(image["mean"]), float(image["std"]), **common)
            return cls(spec, weights, float(image["mean"]), float(image["std"]), head["postprocessing"],
                       tensors["feature_mean"], tensors["bank"], tensors["bank_labels"].to(torch.int64),
                       int(head["n_neighbors"]), head["metric"], **common)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source} is a damaged slicenet engine (missing or bad {exc}); "
                             "re-run 'slicenet optimise' to rebuild it") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Engine:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise InputError(f"cannot read engine {path}: {exc.strerror}") from None
        return cls.from_bytes(data, str(path))
