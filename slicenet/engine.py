"""The inference engine: trunk weights, input normalisation, feature post-processing, prototype bank.

Saved as one safetensors file (tensors plus a JSON header; loading executes no code). The engine's
size, ``engine_bytes``, is the size of that file: every byte inference needs, bank included.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__
from .data import MAX_SHIFTS, copies_per_image, shifted_copies
from .errors import InputError
from .knn import VOTES, knn_vote, local_mean_vote, postprocess
from .trunk import TrunkSpec, Weights, features

FORMAT = "slicenet-engine/1"
PRECISIONS = ("fp32", "fp16", "int8")


def quantise_round_trip(tensor: torch.Tensor, precision: str) -> torch.Tensor:
    """The values ``tensor`` takes once stored at ``precision`` (fp32 in memory)."""
    stored = encode("t", tensor, precision)
    return decode(stored, "t")


def encode(name: str, tensor: torch.Tensor, precision: str) -> dict[str, torch.Tensor]:
    """Tensors to store for ``name``: fp32, fp16, or int8 with one fp32 scale per tensor (symmetric)."""
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
    projection: torch.Tensor | None = None  # [D, d]: centred features are projected before L2 normalising
    storage: dict[str, str] = field(default_factory=lambda: {"weights": "fp32", "bank": "fp32"})
    vote: str = "majority"  # head = knn: majority of the k nearest, or local-mean (knn.local_mean_vote)
    query_shifts: int = 0  # head = knn: test-time views, the query and its copies shifted 1..n px; votes summed

    @classmethod
    def build(cls, spec: TrunkSpec, weights: Weights, images: np.ndarray, labels: np.ndarray,
              input_mean: float, input_std: float, postprocessing: str, n_neighbors: int, metric: str,
              class_names: tuple[str, ...], info: dict | None = None, vote: str = "majority",
              query_shifts: int = 0) -> Engine:
        """An engine whose bank is every image given (each image one prototype)."""
        raw = features(normalise_images(images, input_mean, input_std), spec, weights)
        mean = raw.mean(0)
        engine = cls(spec, [(w.clone(), b.clone()) for w, b in weights], input_mean, input_std,
                     postprocessing, mean, postprocess(raw, mean, postprocessing),
                     torch.as_tensor(labels, dtype=torch.int64), n_neighbors, metric, tuple(class_names),
                     (int(images.shape[1]), int(images.shape[2])), dict(info or {}), vote=vote,
                     query_shifts=query_shifts)
        engine.check_vote()
        return engine

    def check_vote(self) -> None:
        """Fail with a clear message if the head's vote cannot work on this bank."""
        if self.vote not in VOTES:
            raise InputError(f"unknown vote {self.vote!r}: expected one of {', '.join(VOTES)}")
        if not 0 <= self.query_shifts <= MAX_SHIFTS:
            raise InputError(f"query_shifts={self.query_shifts}: expected 0 to {MAX_SHIFTS} pixels")
        if self.vote != "local-mean":
            return
        if self.metric not in ("euclidean", "sqeuclidean"):
            raise InputError(f"the local-mean vote is Euclidean; use --metric euclidean, not {self.metric}")
        counts = torch.bincount(self.bank_labels, minlength=self.n_classes)
        if int(counts.min()) < self.n_neighbors:
            name = self.class_names[int(counts.argmin())]
            raise InputError(f"the local-mean vote needs k={self.n_neighbors} prototypes of every class; class "
                             f"{name!r} has {int(counts.min())}: lower --n-neighbors or use --vote majority")

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

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds per image: the convolutions, then the dense layers or the projection and the
        distances to every prototype (one product per prototype and dimension), for each test-time
        view. The cost of an engine's arithmetic, as MCU and edge tools count it; element-wise steps
        are left out."""
        total = self.spec.multiply_adds(self.image_size)
        if self.head == "dense":
            return total + sum(w.numel() for w, _ in self.dense)
        if self.projection is not None:
            total += self.projection.numel()
        return self.n_views * (total + self.bank.numel())

    def check_images(self, images: np.ndarray) -> None:
        if images.ndim != 3 or tuple(images.shape[1:]) != self.image_size:
            raise InputError(f"expected images of shape [N, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(images.shape)}")

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Post-processed features [N, D] of uint8 images [N, H, W]."""
        self.check_images(images)
        raw = features(normalise_images(images, self.input_mean, self.input_std), self.spec, self.weights)
        return self.postprocess(raw)

    def postprocess(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw trunk features -> the space of the bank (centre, project, L2 normalise)."""
        if self.projection is None:
            return postprocess(raw, self.feature_mean, self.postprocessing)
        projected = (raw - self.feature_mean) @ self.projection
        return postprocess(projected, None, "l2" if self.postprocessing != "none" else "none")

    def with_storage(self, weights: str | None = None, bank: str | None = None) -> Engine:
        """A copy stored at the given precisions (fp32, fp16, int8); its in-memory tensors are the
        stored values decoded, so every runtime computes with exactly what the file holds."""
        storage = {"weights": weights or self.storage["weights"], "bank": bank or self.storage["bank"]}
        for value in storage.values():
            if value not in PRECISIONS:
                raise InputError(f"unknown precision {value!r}: expected one of {', '.join(PRECISIONS)}")
        copy = dataclasses.replace(self, storage=storage)
        copy.weights = [(quantise_round_trip(w, storage["weights"]), quantise_round_trip(b, storage["weights"]))
                        for w, b in self.weights]
        copy.dense = [(quantise_round_trip(w, storage["weights"]), quantise_round_trip(b, storage["weights"]))
                      for w, b in self.dense]
        if self.projection is not None:
            copy.projection = quantise_round_trip(self.projection, storage["weights"])
        copy.bank = quantise_round_trip(self.bank, storage["bank"])
        return copy

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
        n = len(images)
        # With test-time views the votes of every view are summed; the neighbours are the query's own.
        queries = self.embed(self.views(images))
        if self.vote == "local-mean":
            # The votes are minus each class's local-mean distance; the neighbours those of the winner.
            scores, per_class = local_mean_vote(queries, self.bank, self.bank_labels, self.n_classes,
                                                self.n_neighbors)
            scores = scores.reshape(-1, n, self.n_classes).sum(0)
            predicted = scores.argmax(-1)
            return predicted.numpy(), scores.numpy(), per_class[torch.arange(n), predicted].numpy()
        votes, _, indices = knn_vote(queries, self.bank, self.bank_labels, self.n_classes,
                                     self.n_neighbors, self.metric)
        votes = votes.reshape(-1, n, self.n_classes).sum(0)
        return votes.argmax(-1).numpy(), votes.numpy(), indices[:n].numpy()

    def views(self, images: np.ndarray) -> np.ndarray:
        """The test-time views of uint8 images [N, H, W], view-major [V * N, H, W]: the images, then
        their copies shifted by 1..``query_shifts`` pixels (``data.shifted_copies``, as the bank's)."""
        return shifted_copies(images, np.zeros(len(images), dtype=np.int64), self.query_shifts)[0]

    @property
    def n_views(self) -> int:
        return copies_per_image(self.query_shifts)

    # -- storage -------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        precision = self.storage["weights"]
        for index, (weight, bias) in enumerate(self.weights):
            tensors.update(encode(f"trunk.{index}.weight", weight, precision))
            tensors.update(encode(f"trunk.{index}.bias", bias, precision))
        if self.head == "dense":
            for index, (weight, bias) in enumerate(self.dense):
                tensors.update(encode(f"dense.{index}.weight", weight, precision))
                tensors.update(encode(f"dense.{index}.bias", bias, precision))
            return tensors
        tensors["feature_mean"] = self.feature_mean.contiguous()
        if self.projection is not None:
            tensors.update(encode("projection", self.projection, precision))
        tensors.update(encode("bank", self.bank, self.storage["bank"]))
        # Labels in the smallest integer type that holds them.
        tensors["bank_labels"] = self.bank_labels.to(torch.uint8 if self.n_classes <= 256 else torch.int32)
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
                                "postprocessing": self.postprocessing, "dense_layers": len(self.dense),
                                "vote": self.vote, "query_shifts": self.query_shifts}),
            "class_names": json.dumps(list(self.class_names)),
            "storage": json.dumps(self.storage),
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
            storage = json.loads(metadata.get("storage", '{"weights": "fp32", "bank": "fp32"}'))
            weights = [(decode(tensors, f"trunk.{i}.weight"), decode(tensors, f"trunk.{i}.bias"))
                       for i in range(len(spec.layers))]
            common = dict(class_names=tuple(json.loads(metadata["class_names"])),
                          image_size=(int(image["height"]), int(image["width"])),
                          info=json.loads(metadata.get("info", "{}")))
            if head["kind"] == "dense":
                dense = [(decode(tensors, f"dense.{i}.weight"), decode(tensors, f"dense.{i}.bias"))
                         for i in range(int(head["dense_layers"]))]
                engine = cls.build_dense(spec, weights, dense, float(image["mean"]), float(image["std"]), **common)
                engine.storage = storage
                return engine
            projection = decode(tensors, "projection") if "projection" in tensors or "projection.q" in tensors else None
            engine = cls(spec, weights, float(image["mean"]), float(image["std"]), head["postprocessing"],
                       tensors["feature_mean"], decode(tensors, "bank"), tensors["bank_labels"].to(torch.int64),
                       int(head["n_neighbors"]), head["metric"], **common, projection=projection, storage=storage,
                       vote=head.get("vote", "majority"), query_shifts=int(head.get("query_shifts", 0)))
            engine.check_vote()
            return engine
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
