"""The inference engine: input normalisation + trunk + post-processing + head, and its test-time views.

    uint8 image -> (pixel / 255 - mean) / std -> trunk -> post-processing -> head -> scores -> class

The head (``heads/``: majority vote, local-mean vote, dense layers) is the only part that differs
between kinds of engine; nothing here asks which one it is. Saved as one safetensors file (tensors
plus a JSON header; loading executes no code), whose header carries a format version: files of
every earlier version keep loading. The engine's size, ``engine_bytes``, is the size of that file:
every byte inference needs, bank included.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .graph import Graph
from .heads import BANK_HEADS, BankHead, Head, bank_head, head_class
from .knn import POSTPROCESSING, postprocess
from .storage import PRECISIONS, check_precision, decode, encode, round_trip, stored
from .trunk import TrunkSpec, Weights, features
from .views import Views

FORMAT = "slicenet-engine/2"  # what this release writes
FORMATS = ("slicenet-engine/1", "slicenet-engine/2")  # what it reads; /1: slicenet <= 0.1's files
EPSILON = 1e-12  # guards the graph's L2 normalisation against an all-zero feature vector
quantise_round_trip = round_trip  # the name earlier releases exported


def normalise_images(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 images [N, H, W] -> float32 [N, 1, H, W], scaled to [0, 1] then standardised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


def _check_postprocessing(method: str) -> None:
    if method not in POSTPROCESSING:
        raise InputError(f"unknown post-processing {method!r}: expected one of {', '.join(POSTPROCESSING)}")


@dataclass(eq=False)
class PostProcessing:
    """Raw trunk features -> the head's space: centre on the bank's mean feature, project, L2 normalise.

    ``centre_l2`` subtracts the mean and scales to unit length: ReLU features all share a large positive
    component, and removing it makes Euclidean neighbours follow the direction of the activation
    pattern rather than its overall strength. A projection (PCA, ``slicenet condense --dims``) acts on
    the centred features and is followed by L2 normalisation unless the method is ``none``.
    """

    method: str = "none"  # centre_l2 | l2 | none
    mean: torch.Tensor | None = None  # [D] the raw features' mean (stored for every k-NN engine)
    projection: torch.Tensor | None = None  # [D, d]

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return postprocess(raw, self.mean, self.method)
        assert self.mean is not None
        projected = (raw - self.mean) @ self.projection
        return postprocess(projected, None, "l2" if self.method != "none" else "none")

    @property
    def centres(self) -> bool:
        return self.method == "centre_l2" or self.projection is not None

    @property
    def normalises(self) -> bool:
        return self.method in ("centre_l2", "l2")

    @property
    def multiply_adds(self) -> int:
        return 0 if self.projection is None else int(self.projection.numel())

    def tensors(self, storage: dict[str, str]) -> dict[str, torch.Tensor]:
        tensors = {} if self.mean is None else {"feature_mean": self.mean.contiguous()}
        if self.projection is not None:
            tensors.update(encode("projection", self.projection, storage["weights"]))
        return tensors

    def to(self, device: torch.device) -> PostProcessing:
        return PostProcessing(self.method, None if self.mean is None else self.mean.to(device),
                              None if self.projection is None else self.projection.to(device))

    def with_storage(self, storage: dict[str, str]) -> PostProcessing:
        if self.projection is None:
            return self
        return dataclasses.replace(self, projection=round_trip(self.projection, storage["weights"]))

    def describe(self, g: Graph, x: str) -> str:
        """Its operations on raw features [rows, D]: Sub the mean, MatMul the projection, L2 normalise."""
        if self.centres:
            assert self.mean is not None
            x = g.sub(x, g.constant("feature_mean", self.mean.numpy()[None]), name="centred")
        if self.projection is not None:
            x = g.matmul(x, g.constant("projection", self.projection.numpy()), name="projected")
        if self.normalises:
            square = g.mul(x, x, name="square")
            norm = g.sqrt(g.reduce_sum(square, axes=(1,), keepdims=True, name="sum_square"), name="norm")
            norm = g.maximum(norm, g.constant("epsilon", np.array(EPSILON, dtype=np.float32)), name="norm_safe")
            x = g.div(x, norm, name="query")
        return x

    def describe_linear(self, g: Graph, x: str, *, then: str, then_value: np.ndarray) -> str:
        """The post-processed features times ``then`` [d, n], without the L2 normalisation, for a head
        that the query's own length cannot change (cosine ranking): the centring folds into the first
        product's bias, (x - m) W = x W - m W, one Gemm instead of a Sub and a MatMul."""
        if self.projection is None:
            first, first_value = then, then_value
        else:
            first_value = self.projection.numpy()
            first = g.constant("first_weight", first_value)
        if self.centres:
            assert self.mean is not None
            folded = (-(self.mean.numpy().astype(np.float64)[None] @ first_value.astype(np.float64))).astype(
                np.float32)
            y = g.gemm(x, first, g.constant("first_bias", folded), name="first_product")
        else:
            y = g.matmul(x, first, name="first_product")
        return y if self.projection is None else g.matmul(y, then, name="dot")


@dataclass(eq=False)
class Engine:
    spec: TrunkSpec
    weights: Weights
    input_mean: float  # the training images' mean and std, of pixels scaled to [0, 1]
    input_std: float
    post: PostProcessing
    head: Head
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    info: dict = field(default_factory=dict)  # provenance: method, dataset; never a path (the bytes would follow it)
    views: Views = field(default_factory=Views)
    storage: dict[str, str] = field(default_factory=lambda: {"weights": "fp32", "bank": "fp32"})

    @classmethod
    def build(cls, spec: TrunkSpec, weights: Weights, images: np.ndarray, labels: np.ndarray, *,
              input_mean: float, input_std: float, head: BankHead, class_names: tuple[str, ...],
              postprocessing: str = "centre_l2", query_shifts: int = 0, info: dict | None = None) -> Engine:
        """A k-NN engine whose bank is every image given (each image one prototype), ``head`` its
        settings (``heads.bank_head``)."""
        _check_postprocessing(postprocessing)  # before the trunk runs over every image
        raw = features(normalise_images(images, input_mean, input_std), spec, weights)
        return cls.from_features(spec, weights, raw, labels, image_size=(int(images.shape[1]), int(images.shape[2])),
                                 input_mean=input_mean, input_std=input_std, head=head, class_names=class_names,
                                 postprocessing=postprocessing, query_shifts=query_shifts, info=info)

    @classmethod
    def from_features(cls, spec: TrunkSpec, weights: Weights, raw: torch.Tensor, labels: np.ndarray, *,
                      image_size: tuple[int, int], input_mean: float, input_std: float, head: BankHead,
                      class_names: tuple[str, ...], postprocessing: str = "centre_l2", query_shifts: int = 0,
                      info: dict | None = None) -> Engine:
        """``build``'s engine from its bank's raw trunk features [N, D] (one row per image of
        ``image_size``), already computed."""
        _check_postprocessing(postprocessing)
        post = PostProcessing(postprocessing, raw.mean(0))
        fitted = head.fit(post(raw), torch.as_tensor(labels, dtype=torch.int64), len(class_names))
        fitted.check(tuple(class_names))
        return cls(spec, [(w.clone(), b.clone()) for w, b in weights], input_mean, input_std, post, fitted,
                   tuple(class_names), (int(image_size[0]), int(image_size[1])), dict(info or {}),
                   Views(query_shifts))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_views(self) -> int:
        return self.views.count

    @property
    def bank_head(self) -> BankHead:
        """The head as a k-NN bank; a one-line error for engines with another head."""
        if not isinstance(self.head, BankHead):
            raise InputError(f"this engine has a {self.head.kind} head, not a k-NN bank; use a run of "
                             "'slicenet optimise' or 'slicenet baseline --head knn'")
        return self.head

    def with_head(self, head: Head) -> Engine:
        return dataclasses.replace(self, head=head)

    @property
    def device(self) -> torch.device:
        return self.weights[0][0].device if self.weights else self.post.mean.device if self.post.mean is not None \
            else torch.device("cpu")

    def to(self, device: torch.device | str) -> Engine:
        """A copy computing on ``device`` (prediction and evaluation; files and exports read the CPU engine)."""
        device = torch.device(device)
        return dataclasses.replace(self, weights=[(w.to(device), b.to(device)) for w, b in self.weights],
                                   post=self.post.to(device), head=self.head.to(device))

    @property
    def parameters(self) -> int:
        return self.spec.parameters + self.head.parameters

    @property
    def multiply_adds(self) -> int:
        """Multiply-adds per image: the convolutions, the projection and the head (for a k-NN head one
        product per prototype and dimension), for each test-time view. The cost of an engine's
        arithmetic, as MCU and edge tools count it; element-wise steps are left out."""
        return self.n_views * (self.spec.multiply_adds(self.image_size) + self.post.multiply_adds
                               + self.head.multiply_adds)

    def check_images(self, images: np.ndarray) -> None:
        if images.ndim != 3 or tuple(images.shape[1:]) != self.image_size:
            raise InputError(f"expected images of shape [N, {self.image_size[0]}, {self.image_size[1]}], "
                             f"got {list(images.shape)}")

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Post-processed features [N, D] of uint8 images [N, H, W] (no views)."""
        self.check_images(images)
        x = normalise_images(images, self.input_mean, self.input_std).to(self.device)
        return self.post(features(x, self.spec, self.weights))

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class index [N], scores [N, n_classes] summed over the views, neighbour indices into the
        bank [N, k] of each image's own view; none for a dense head). Scores are the head's: votes,
        minus local-mean distances, or softmax probabilities."""
        self.check_images(images)
        return self.head.predict(self.embed(self.views.expand(images)), self.views, len(images))

    @torch.no_grad()
    def near_ties(self, images: np.ndarray) -> int:
        """How many of ``images`` have an answer that float32 rounding can change (``Head.near_ties``)."""
        if len(images) == 0:
            return 0
        return int(self.head.near_ties(self.embed(self.views.expand(images)), self.views, len(images)).sum())

    def with_storage(self, weights: str | None = None, bank: str | None = None) -> Engine:
        """A copy stored at the given precisions (fp32, fp16, int8); its in-memory tensors are the
        stored values decoded, so every runtime computes with exactly what the file holds."""
        storage = {"weights": check_precision(weights or self.storage["weights"]),
                   "bank": check_precision(bank or self.storage["bank"])}
        return dataclasses.replace(
            self, storage=storage, post=self.post.with_storage(storage), head=self.head.with_storage(storage),
            weights=[(round_trip(w, storage["weights"]), round_trip(b, storage["weights"])) for w, b in self.weights])

    # -- the graph -----------------------------------------------------------------------------

    def input_scale_shift(self) -> tuple[float, float]:
        """The normalisation as ``pixel * scale + shift`` on uint8 pixels: (p / 255 - mean) / std."""
        return 1.0 / (255.0 * self.input_std), -self.input_mean / self.input_std

    def graph_convolutions(self) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """The convolutions' (kernel, bias) as float32 arrays, and whether the input normalisation is
        folded into the first of them.

        conv(s x + t, W) + b = conv(x, s W) + (b + t sum(W)) wherever the kernel covers no padding, so a
        first layer without padding takes the raw pixels: two graph operations fewer (~1 us, ~5 % of a
        default engine at batch 1 on ONNX Runtime). With padding, the zeros padded around the normalised
        image are not zeros of the raw one, so the normalisation stays a Mul and an Add."""
        weights = [(w.numpy().astype(np.float64), b.numpy().astype(np.float64)) for w, b in self.weights]
        # (only where the image feeds the first layer alone: in a graph trunk it may feed others too)
        folded = bool(weights) and self.spec.layers[0].padding == 0 and self.spec.needed_before(1) in ([0], [])
        if folded:
            scale, shift = self.input_scale_shift()
            kernel, bias = weights[0]
            weights[0] = (kernel * scale, bias + shift * kernel.sum(axis=(1, 2, 3)))
        return [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights], folded

    def describe(self, *, batch: int = 1) -> Graph:
        """The whole engine as one graph: uint8 image [batch, 1, H, W] -> class [batch] and votes
        [batch, C]. Every test-time view of every image runs as one row of one batch."""
        g = Graph()
        x, rows = self._describe_trunk(g, batch)
        votes, class_index = self.head.describe(g, x, self.post, rows=rows, single_view=self.n_views == 1,
                                                storage=self.storage)
        votes = self.views.describe_sum(g, votes, batch=batch)
        if class_index is None:
            class_index = g.argmax(votes, axis=1, name="class")
        g.output("class", class_index, "int64", (batch,))
        g.output("votes", votes, "float32", (batch, self.n_classes))
        return g

    def describe_features(self, *, batch: int = 1) -> Graph:
        """The trunk and post-processing alone: uint8 image [batch, 1, H, W] -> embedding [batch, D], the
        bank's own space (an enrollable bundle's graph: the vote then runs beside it, over a bank that
        can grow). One view per query."""
        self._check_one_view()
        g = Graph()
        x, _ = self._describe_trunk(g, batch)
        g.output("embedding", self.post.describe(g, x), "float32", (batch, int(self.bank_head.bank.shape[1])))
        return g

    def describe_ranking(self, *, bank_t: np.ndarray, bank_norm2: np.ndarray, batch: int = 1) -> Graph:
        """The trunk, post-processing and the ranking of a bank held as two constants of C slots: uint8
        image [batch, 1, H, W] -> nearest [batch, k], the indices of the k slots with the largest
        q . bank_t - bank_norm2 (the layout of ``boards.run_engine.slot_constants``). The distance step of
        an enrollable bundle on the NCS2; its host counts the labels of the k nearest (a majority vote)."""
        head = self.bank_head
        if self.ranking_refusal:
            raise InputError(self.ranking_refusal)
        self._check_one_view()
        g = Graph()
        x, _ = self._describe_trunk(g, batch)
        dot = g.matmul(self.post.describe(g, x), g.constant("bank_t", bank_t), name="dot")
        scores = g.sub(dot, g.constant("bank_norm2", bank_norm2), name="neg_distance")
        _, nearest = g.topk(scores, head.n_neighbors, axis=1, name="nearest")
        g.output("nearest", nearest, "int64", (batch, head.n_neighbors))
        return g

    @property
    def ranking_refusal(self) -> str:
        """Why ``describe_ranking`` cannot hold this engine's vote ("" where it can): the ranking graph
        gives the k nearest for a majority vote; a local-mean vote needs every prototype's distance."""
        head = self.bank_head
        if head.kind == "majority" and head.metric in ("euclidean", "sqeuclidean", "cosine"):
            return ""
        return (f"the {head.kind} vote over {head.metric} distances needs every prototype's distance, not the k "
                "nearest of a ranking graph: it runs on the host")

    def _check_one_view(self) -> None:
        if self.n_views != 1:
            raise InputError("an enrollable bundle takes one view per query: export an engine without "
                             "--query-shifts")

    def _describe_trunk(self, g: Graph, batch: int) -> tuple[str, int]:
        """Image input, views, normalisation and convolutions: (the raw features [rows, D], rows)."""
        height, width = self.image_size
        x = g.cast(g.input("image", "uint8", (batch, 1, height, width)), name="image_f32")
        x = self.views.describe(g, x, batch=batch, image_size=self.image_size)
        rows = batch * self.n_views
        convolutions, folded = self.graph_convolutions()
        if not folded:
            scale, shift = self.input_scale_shift()
            x = g.mul(x, g.constant("input_scale", np.array(scale, dtype=np.float32)), name="scaled")
            x = g.add(x, g.constant("input_shift", np.array(shift, dtype=np.float32)), name="normalised")
        outputs = {-1: x}
        for index, ((kernel, bias), layer) in enumerate(zip(convolutions, self.spec.layers, strict=True)):
            x = outputs[self.spec.sources(index)[0]]
            for extra in self.spec.sources(index)[1:]:  # a graph trunk's layer sums its inputs
                x = g.add(x, outputs[extra], name=f"sum{index}")
            x = g.conv(x, kernel, bias, stride=layer.stride, padding=layer.padding, name=f"conv{index}")
            # The activation before the pooling: both are monotone, so max(act(x)) = act(max(x)) exactly,
            # and ONNX Runtime fuses a Conv with the activation that follows it (one kernel fewer per
            # layer: ~4 % of a default engine's latency at batch 1).
            x = (g.relu if layer.activation == "relu" else g.tanh)(x, name=f"act{index}")
            if layer.pool > 1:
                x = g.max_pool(x, layer.pool, name=f"pool{index}")
            outputs[index] = x
        return g.reshape(x, (rows, -1), name="features"), rows

    # -- storage -------------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        precision = self.storage["weights"]
        for index, (weight, bias) in enumerate(self.weights):
            tensors.update(encode(f"trunk.{index}.weight", weight, precision))
            tensors.update(encode(f"trunk.{index}.bias", bias, precision))
        tensors.update(self.post.tensors(self.storage))
        tensors.update(self.head.tensors(self.storage))
        return tensors

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "slicenet_version": __version__,
            "spec": json.dumps(self.spec.to_dict()),
            "input": json.dumps({"mean": self.input_mean, "std": self.input_std,
                                 "height": self.image_size[0], "width": self.image_size[1],
                                 "dtype": "uint8", "scale": 1.0 / 255.0}),
            "postprocessing": json.dumps({"method": self.post.method}),
            "head": json.dumps(self.head.settings()),
            "views": json.dumps({"query_shifts": self.views.shifts}),
            "class_names": json.dumps(list(self.class_names)),
            "storage": json.dumps(self.storage),
            "info": json.dumps(self.info),
        }

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return _canonical_header(save(self._tensors(), self._metadata()))

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
            raise _not_an_engine(source, exc) from None
        _check_format(metadata, source)
        try:
            spec, weights, image_size, _ = _trunk(metadata, tensors)
            image = json.loads(metadata["input"])
            post_settings, head_settings, shifts = _sections(metadata)
            storage = json.loads(metadata.get("storage", '{"weights": "fp32", "bank": "fp32"}'))
            for precision in storage.values():
                if precision not in PRECISIONS:
                    raise ValueError(f"storage precision {precision!r}")
            class_names = tuple(json.loads(metadata["class_names"]))
            post = PostProcessing(post_settings["method"], tensors.get("feature_mean"),
                                  decode(tensors, "projection") if stored(tensors, "projection") else None)
            head = head_class(head_settings["kind"]).from_file(head_settings, tensors, len(class_names))
            head.check(class_names)
            return cls(spec, weights, float(image["mean"]), float(image["std"]), post, head, class_names,
                       image_size, _info(metadata), Views(int(shifts)), storage)
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(source, exc) from None

    @staticmethod
    def load_trunk(path: str | os.PathLike[str]) -> SourceTrunk:
        """An engine file's trunk alone (structure, weights, input size) and its head's vote, its bank left
        unread: what a transfer starts from (a radu engine is 737 MB, its trunk 75 KB)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys() if name.startswith("trunk.")}
        except OSError as exc:
            raise _unreadable(path, exc) from None
        except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
            raise _not_an_engine(str(path), exc) from None
        _check_format(metadata, str(path))
        try:
            return _trunk(metadata, tensors)
        except (KeyError, TypeError, ValueError) as exc:
            raise _damaged(str(path), exc) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Engine:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise _unreadable(path, exc) from None
        return cls.from_bytes(data, str(path))


class SourceTrunk(NamedTuple):
    """A trunk read from an engine file without its bank (``Engine.load_trunk``)."""

    spec: TrunkSpec
    weights: Weights
    image_size: tuple[int, int]
    vote: str  # the bank's k-NN vote (majority or local-mean); majority for an engine without a bank


def _trunk(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> SourceTrunk:
    """The trunk an engine file's header and tensors describe (KeyError, TypeError, ValueError where
    they are damaged)."""
    spec = TrunkSpec.from_dict(json.loads(metadata["spec"]))
    image = json.loads(metadata["input"])
    weights = [(decode(tensors, f"trunk.{i}.weight"), decode(tensors, f"trunk.{i}.bias"))
               for i in range(len(spec.layers))]
    kind = _sections(metadata)[1]["kind"]
    return SourceTrunk(spec, weights, (int(image["height"]), int(image["width"])),
                       kind if kind in BANK_HEADS else "majority")


def _check_format(metadata: dict[str, str], source: str) -> None:
    if metadata.get("format") not in FORMATS:
        raise InputError(f"{source} is not a slicenet engine (format {metadata.get('format')!r}, "
                         f"expected one of {', '.join(FORMATS)}); a newer slicenet may have written it")


def _unreadable(path: str | os.PathLike[str], exc: OSError) -> InputError:
    return InputError(f"cannot read engine {path}: {exc.strerror}")


# what engines written before 8f265cf kept in their info: their run's path, and a condensed engine its source's
_PATH_KEYS = ("run", "condensed_from")


def _info(metadata: dict[str, str]) -> dict:
    """The engine's provenance without the paths old engines recorded: an engine derived from one (condensed,
    enrolled) is then the same bytes wherever either lives, and a budget counts the bytes that are written."""
    info = json.loads(metadata.get("info", "{}"))
    if not isinstance(info, dict):
        raise ValueError(f"info is {type(info).__name__}, not an object")
    return {key: value for key, value in info.items() if key not in _PATH_KEYS}


def _canonical_header(data: bytes) -> bytes:
    """The safetensors file with its metadata in sorted order: the writer keeps it in a hash map, so its order,
    and with it the file's bytes and hash, changed from one save to the next. The tensors' entries keep the
    writer's order and offsets; the header is still padded with spaces to a multiple of 8 bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def _not_an_engine(source: str, exc: Exception) -> InputError:
    return InputError(f"{source} is not a slicenet engine file ({exc}); expected the engine.safetensors written "
                      "by 'slicenet optimise'")


def _damaged(source: str, exc: Exception) -> InputError:
    return InputError(f"{source} is a damaged slicenet engine (missing or bad {exc}); re-run 'slicenet optimise' to "
                      "rebuild it")


def _sections(metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(post-processing, head settings, query shifts) of an engine header, of either format.

    Format 1 kept them in one "head" entry: kind knn (then its vote named the head) or dense."""
    head = json.loads(metadata["head"])
    if metadata["format"] == "slicenet-engine/2":
        return json.loads(metadata["postprocessing"]), head, int(json.loads(metadata["views"])["query_shifts"])
    if head["kind"] == "dense":
        return {"method": "none"}, {"kind": "dense", "layers": int(head["dense_layers"])}, 0
    settings = {"kind": head.get("vote", "majority"), "n_neighbors": int(head["n_neighbors"]),
                "metric": head["metric"]}
    return {"method": head["postprocessing"]}, settings, int(head.get("query_shifts", 0))


__all__ = ["Engine", "PostProcessing", "FORMAT", "FORMATS", "normalise_images", "quantise_round_trip", "bank_head"]
