"""The convolutional trunk: a small spec, presets, and forward passes for one network or a population.

A trunk is a stack of ``conv -> max-pool -> activation`` layers. Max-pooling commutes with any
non-decreasing activation (ReLU, tanh), so pooling first gives the same output as the textbook
``conv -> activation -> pool`` order on a quarter of the activations.

``population_features`` is the hot path of the search: it evaluates a whole population of candidate
kernels for one layer (or one filter) in one grouped convolution per layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


@dataclass(frozen=True)
class LayerSpec:
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1  # max-pool window and stride; 1 = no pooling
    activation: str = "relu"
    # The layers whose outputs are summed into this one's input (-1: the trunk's input); () = the layer
    # before it, as in a chain. Genetic-CNN trunks (``genetic``) are such graphs.
    inputs: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrunkSpec:
    layers: tuple[LayerSpec, ...]
    in_channels: int = 1

    def to_dict(self) -> dict:
        layers = [{k: list(v) if k == "inputs" else v for k, v in vars(layer).items() if k != "inputs" or v}
                  for layer in self.layers]
        return {"in_channels": self.in_channels, "layers": layers}

    @classmethod
    def from_dict(cls, data: dict) -> TrunkSpec:
        return cls(tuple(LayerSpec(**{**layer, "inputs": tuple(layer.get("inputs", ()))}) for layer in data["layers"]),
                   int(data["in_channels"]))

    @property
    def is_chain(self) -> bool:
        return all(not layer.inputs for layer in self.layers)

    def sources(self, index: int) -> tuple[int, ...]:
        """The layers summed into layer ``index``'s input (-1: the trunk's input)."""
        return self.layers[index].inputs or (index - 1,)

    def needed_before(self, index: int) -> list[int]:
        """The outputs of layers before ``index`` (-1: the trunk's input) that layers from ``index`` on read."""
        return sorted({s for i in range(index, len(self.layers)) for s in self.sources(i) if s < index})

    def in_channels_of(self, index: int) -> int:
        source = self.sources(index)[0]
        return self.in_channels if source < 0 else self.layers[source].out_channels

    def layer_parameters(self, index: int) -> int:
        layer = self.layers[index]
        return layer.out_channels * (self.in_channels_of(index) * layer.kernel**2 + 1)

    @property
    def parameters(self) -> int:
        return sum(self.layer_parameters(i) for i in range(len(self.layers)))

    def conv_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(height, width) of each layer's convolution output, before its pooling."""
        outputs: dict[int, tuple[int, int]] = {-1: image_size}
        sizes = []
        for index, layer in enumerate(self.layers):
            height, width = outputs[self.sources(index)[0]]
            height = (height + 2 * layer.padding - layer.kernel) // layer.stride + 1
            width = (width + 2 * layer.padding - layer.kernel) // layer.stride + 1
            sizes.append((height, width))
            outputs[index] = (height // layer.pool, width // layer.pool)
        return sizes

    def shapes(self, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(channels, height, width) after each layer; raises InputError if the image is too small."""
        shapes = []
        for index, (layer, (height, width)) in enumerate(zip(self.layers, self.conv_sizes(image_size), strict=True)):
            height, width = height // layer.pool, width // layer.pool
            if height < 1 or width < 1:
                raise InputError(f"the trunk does not fit {image_size[0]}x{image_size[1]} images: layer "
                                 f"{index + 1} leaves no output; use a preset for small images "
                                 "(--preset tiny) or larger images")
            shapes.append((layer.out_channels, height, width))
        return shapes

    def multiply_adds(self, image_size: tuple[int, int]) -> int:
        """Multiply-adds of the convolutions for one image (pooling and activations not counted)."""
        return sum(layer.out_channels * height * width * self.in_channels_of(index) * layer.kernel**2
                   for index, (layer, (height, width)) in enumerate(zip(self.layers, self.conv_sizes(image_size),
                                                                        strict=True)))

    def n_features(self, image_size: tuple[int, int]) -> int:
        shapes = self.shapes(image_size)
        channels, height, width = shapes[-1] if shapes else (self.in_channels, *image_size)
        return channels * height * width


PRESETS: dict[str, TrunkSpec] = {
    # The reference's trunk (Radu et al.): conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, max-pool 2.
    # 18,816 parameters and 9,216 features on 28x28 inputs.
    "radu": TrunkSpec((LayerSpec(32, 3), LayerSpec(64, 3, pool=2))),
    # The default serves k-NN and the search: pooling after each layer gives 128 features on 28x28
    # (72x fewer than radu: cheaper distances, a smaller bank), and 912 parameters keep the search
    # space small (104 + 808 dimensions). Chosen over "lenet" below by measurement on MNIST-5k, 3 seeds:
    # the same median test accuracy, a gain over the random-init trunk of 5.4-5.7 points instead of
    # 1.7-4.3, half the bank, and faster generations.
    "default": TrunkSpec((LayerSpec(4, 5, pool=2), LayerSpec(8, 5, pool=2))),
    # LeNet-like, twice as wide: 3,424 parameters, 256 features (slicenet 0.1's default).
    "lenet": TrunkSpec((LayerSpec(8, 5, pool=2), LayerSpec(16, 5, pool=2))),
    # A wider second layer: 512 features, 6,640 parameters.
    "wide": TrunkSpec((LayerSpec(8, 5, pool=2), LayerSpec(32, 5, pool=2))),
    # No convolution at all: k-NN on the raw (standardised) pixels, the classic baseline.
    "pixels": TrunkSpec(()),
    # For small images such as scikit-learn's 8x8 digits: padded 3x3 convolutions.
    "tiny": TrunkSpec((LayerSpec(8, 3, padding=1, pool=2), LayerSpec(16, 3, padding=1, pool=2))),
}


def resolve_preset(name: str, image_size: tuple[int, int]) -> tuple[str, TrunkSpec]:
    """(name, spec) of a preset; ``auto`` picks ``default`` for images of 16 pixels or more, else ``tiny``."""
    if name == "auto":
        name = "default" if min(image_size) >= 16 else "tiny"
    if name.startswith("genetic:"):  # a Genetic-CNN structure (slicenet arch-search's individuals)
        from .genetic import parse_preset, trunk

        genome, filters = parse_preset(name)
        spec = trunk(genome, filters)
        spec.shapes(image_size)
        return name, spec
    if name not in PRESETS:
        raise InputError(f"unknown trunk preset {name!r}: expected auto or one of {', '.join(PRESETS)}")
    spec = PRESETS[name]
    spec.shapes(image_size)  # fail early, with a clear message, if the images are too small
    return name, spec


Weights = list[tuple[torch.Tensor, torch.Tensor]]


def init_weights(spec: TrunkSpec, seed: int) -> Weights:
    """He-normal kernels and zero biases, from a seeded generator (independent of global RNG state)."""
    generator = torch.Generator().manual_seed(seed)
    weights = []
    for index, layer in enumerate(spec.layers):
        fan_in = spec.in_channels_of(index) * layer.kernel**2
        shape = (layer.out_channels, spec.in_channels_of(index), layer.kernel, layer.kernel)
        weights.append((torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5,
                        torch.zeros(layer.out_channels)))
    return weights


@dataclass(frozen=True)
class Block:
    """The parameters a serial search optimises at once: a whole layer, or one filter of it."""

    layer: int
    filter: int | None  # None: the whole layer

    def label(self) -> str:
        return f"layer {self.layer + 1}" + ("" if self.filter is None else f" filter {self.filter + 1}")

    def vector(self, weights: Weights) -> np.ndarray:
        """The block's current parameters, flattened: the kernel(s), then the bias(es)."""
        weight, bias = weights[self.layer]
        if self.filter is None:
            return flatten_layer(weight, bias)
        return flatten_layer(weight[self.filter : self.filter + 1], bias[self.filter : self.filter + 1])

    def set(self, weights: list[tuple[np.ndarray, np.ndarray]], vector: np.ndarray) -> None:
        """Write ``vector`` (as ``vector`` returns it) into numpy ``weights``, in place."""
        weight, bias = weights[self.layer]
        target = weight if self.filter is None else weight[self.filter : self.filter + 1]
        n = target.size
        target[...] = vector[:n].reshape(target.shape)
        if self.filter is None:
            bias[...] = vector[n:]
        else:
            bias[self.filter] = vector[n]


def flatten_layer(weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    return torch.cat([weight.reshape(-1), bias]).double().numpy()


def unflatten_layer(flat: np.ndarray | torch.Tensor, spec: TrunkSpec, index: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    layer = spec.layers[index]
    flat = torch.as_tensor(flat, dtype=torch.float32)
    n_kernel = layer.out_channels * spec.in_channels_of(index) * layer.kernel**2
    weight = flat[:n_kernel].reshape(layer.out_channels, spec.in_channels_of(index), layer.kernel, layer.kernel)
    return weight, flat[n_kernel:].clone()


def max_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.max_pool2d(x, size)`` (floor mode), as element-wise maxima of strided views.

    Exactly the same values, about 3x faster on CPU: torch's CPU max-pool also computes the
    argmax indices for backprop, which a gradient-free search never needs.
    """
    x = x[..., : x.shape[-2] // size * size, : x.shape[-1] // size * size]
    rows = x[..., 0::size]
    for offset in range(1, size):
        rows = torch.maximum(rows, x[..., offset::size])
    out = rows[..., 0::size, :]
    for offset in range(1, size):
        out = torch.maximum(out, rows[..., offset::size, :])
    return out


def layer_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, layer: LayerSpec,
                  groups: int = 1) -> torch.Tensor:
    y = F.conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding, groups=groups)
    if layer.pool > 1:
        y = max_pool(y, layer.pool)
    return ACTIVATIONS[layer.activation](y)


def forward(x: torch.Tensor, spec: TrunkSpec, weights: Weights, *, start: int = 0, stop: int | None = None
            ) -> torch.Tensor:
    """Run layers ``start:stop`` of one trunk on ``x`` [N, C, H, W] (a graph trunk: from its input)."""
    stop = len(spec.layers) if stop is None else stop
    if not spec.is_chain:
        assert start == 0, "a graph trunk runs from its input"
        return forward_outputs(x, spec, weights, stop=stop)[stop - 1 if stop else -1]
    for index in range(start, stop):
        x = layer_forward(x, *weights[index], layer=spec.layers[index])
    return x


def forward_outputs(x: torch.Tensor, spec: TrunkSpec, weights: Weights, *, stop: int) -> dict[int, torch.Tensor]:
    """Every layer's output before ``stop`` (-1: the input), each layer's input the sum of its sources'."""
    outputs = {-1: x}
    for index in range(stop):
        outputs[index] = layer_forward(sum_of(outputs[s] for s in spec.sources(index)), *weights[index],
                                       layer=spec.layers[index])
    return outputs


def sum_of(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The element-wise sum (one tensor: itself, so a chain computes nothing extra)."""
    total: torch.Tensor | None = None
    for tensor in tensors:
        total = tensor if total is None else total + tensor
    assert total is not None
    return total


LayerInput = torch.Tensor | dict[int, torch.Tensor]  # a chain's layer input, or a graph's outputs still read


def layer_input(x: torch.Tensor, spec: TrunkSpec, weights: Weights, *, index: int) -> LayerInput:
    """What the search of layer ``index`` reads, computed once: the layer's input for a chain; for a graph
    trunk the outputs of the earlier layers that it or the later layers read."""
    if spec.is_chain:
        return forward(x, spec, weights, stop=index)
    outputs = forward_outputs(x, spec, weights, stop=index)
    return {j: outputs[j] for j in spec.needed_before(index)}


def take(cached: LayerInput, rows: torch.Tensor | slice) -> LayerInput:
    """Rows (images) of a cached layer input."""
    return {j: t[rows] for j, t in cached.items()} if isinstance(cached, dict) else cached[rows]


def length(cached: LayerInput) -> int:
    return len(next(iter(cached.values()))) if isinstance(cached, dict) else len(cached)


@torch.no_grad()
def features(x: torch.Tensor, spec: TrunkSpec, weights: Weights, *, batch_size: int = 1024) -> torch.Tensor:
    """Flattened trunk output [N, D] for normalised inputs [N, C, H, W], in batches."""
    return torch.cat([forward(chunk, spec, weights).flatten(1) for chunk in x.split(batch_size)])


@torch.no_grad()
def population_features(x: LayerInput, spec: TrunkSpec, weights: Weights, *, index: int,
                        population: torch.Tensor, filter_index: int | None = None,
                        held_output: torch.Tensor | None = None) -> torch.Tensor:
    """Features [P, N, D] of P candidate trunks that differ only in layer ``index``.

    ``x`` is the (shared) input of layer ``index``, i.e. the frozen earlier layers already applied.
    ``population`` [P, n] holds each candidate's flattened parameters for the whole layer, or for one
    filter (its kernel then its bias) when ``filter_index`` is given; ``held_output`` is then the
    layer's output [N, C_out, h, w] with its current weights, whose other filters are held.
    Candidate p's channels sit at ``p*C : (p+1)*C`` and later layers run as grouped convolutions,
    so the whole population costs one convolution call per layer.
    """
    if isinstance(x, dict):
        return _graph_population_features(x, spec, weights, index=index, population=population,
                                          filter_index=filter_index, held_output=held_output)
    layer = spec.layers[index]
    size = population.shape[0]
    in_channels = spec.in_channels_of(index)
    kernel_size = in_channels * layer.kernel**2
    if filter_index is None:
        kernels = population[:, : layer.out_channels * kernel_size]
        weight = kernels.reshape(size * layer.out_channels, in_channels, layer.kernel, layer.kernel)
        bias = population[:, layer.out_channels * kernel_size:].reshape(-1)
        # The input is shared by every candidate: one ordinary convolution with P*C_out filters.
        h = layer_forward(x, weight, bias, layer=layer)
    else:
        assert held_output is not None, "filter granularity needs the layer's held output"
        weight = population[:, :kernel_size].reshape(size, in_channels, layer.kernel, layer.kernel)
        candidate = layer_forward(x, weight, population[:, kernel_size], layer=layer)  # [N, P, h, w]
        h = held_output.unsqueeze(1).repeat(1, size, 1, 1, 1)  # [N, P, C_out, h, w]
        h[:, :, filter_index] = candidate
        h = h.flatten(1, 2)
    for later in range(index + 1, len(spec.layers)):
        later_weight, later_bias = weights[later]
        h = layer_forward(h, later_weight.repeat(size, 1, 1, 1), later_bias.repeat(size), layer=spec.layers[later],
                          groups=size)
    return h.reshape(h.shape[0], size, -1).transpose(0, 1)


def _candidate_layer(x: torch.Tensor, spec: TrunkSpec, index: int, population: torch.Tensor,
                     filter_index: int | None, held_output: torch.Tensor | None) -> torch.Tensor:
    """Layer ``index``'s output [N, P * C_out, h, w] for P candidates of it (or of one of its filters)."""
    layer, size, in_channels = spec.layers[index], population.shape[0], spec.in_channels_of(index)
    kernel_size = in_channels * layer.kernel**2
    if filter_index is None:
        weight = population[:, : layer.out_channels * kernel_size].reshape(
            size * layer.out_channels, in_channels, layer.kernel, layer.kernel)
        return layer_forward(x, weight, population[:, layer.out_channels * kernel_size:].reshape(-1), layer=layer)
    assert held_output is not None, "filter granularity needs the layer's held output"
    weight = population[:, :kernel_size].reshape(size, in_channels, layer.kernel, layer.kernel)
    candidate = layer_forward(x, weight, population[:, kernel_size], layer=layer)  # [N, P, h, w]
    h = held_output.unsqueeze(1).repeat(1, size, 1, 1, 1)  # [N, P, C_out, h, w]
    h[:, :, filter_index] = candidate
    return h.flatten(1, 2)


def _graph_population_features(cached: dict[int, torch.Tensor], spec: TrunkSpec, weights: Weights, *, index: int,
                               population: torch.Tensor, filter_index: int | None,
                               held_output: torch.Tensor | None) -> torch.Tensor:
    """``population_features`` of a graph trunk: the earlier layers' outputs are shared by every candidate
    ([N, C, h, w]), the candidate layer's and every layer it reaches are per candidate ([N, P * C, h, w],
    grouped convolutions); a sum of both repeats the shared term for each candidate."""
    size = population.shape[0]
    shared = dict(cached)
    per = {index: _candidate_layer(sum_of(shared[s] for s in spec.sources(index)), spec, index, population,
                                   filter_index, held_output)}
    for later in range(index + 1, len(spec.layers)):
        sources = spec.sources(later)
        weight, bias = weights[later]
        if any(s in per for s in sources):
            x = sum_of(per[s] if s in per else shared[s].repeat(1, size, 1, 1) for s in sources)
            per[later] = layer_forward(x, weight.repeat(size, 1, 1, 1), bias.repeat(size), layer=spec.layers[later],
                                       groups=size)
        else:
            shared[later] = layer_forward(sum_of(shared[s] for s in sources), weight, bias, layer=spec.layers[later])
    last = len(spec.layers) - 1
    h = per[last] if last in per else shared[last].repeat(1, size, 1, 1)
    return h.reshape(h.shape[0], size, -1).transpose(0, 1)
