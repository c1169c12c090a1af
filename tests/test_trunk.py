import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slicenet.errors import InputError
from slicenet.trunk import (
    PRESETS,
    features,
    flatten_layer,
    init_weights,
    population_features,
    resolve_preset,
    unflatten_layer,
)


def reference_forward(x, spec, weights):
    """The textbook order, conv -> activation -> pool, with F.conv2d: the reference answer."""
    for (weight, bias), layer in zip(weights, spec.layers[: len(weights)], strict=True):
        x = F.conv2d(x, weight, bias, stride=layer.stride, padding=layer.padding)
        x = torch.relu(x) if layer.activation == "relu" else torch.tanh(x)
        if layer.pool > 1:
            x = F.max_pool2d(x, layer.pool)
    return x.flatten(1)


@pytest.mark.parametrize("name,size", [("default", 28), ("radu", 28), ("tiny", 8)])
def test_features_match_the_textbook_order(name, size):
    spec = PRESETS[name]
    weights = init_weights(spec, 0)
    x = torch.randn(5, 1, size, size)
    torch.testing.assert_close(features(x, spec, weights), reference_forward(x, spec, weights))
    assert features(x, spec, weights).shape[1] == spec.n_features((size, size))


def test_radu_preset_is_the_reference_trunk():
    spec = PRESETS["radu"]
    assert spec.parameters == 18816 and spec.n_features((28, 28)) == 9216


@pytest.mark.parametrize("filter_index", [None, 3])
@pytest.mark.parametrize("layer", [0, 1])
def test_population_features_equal_one_trunk_each(layer, filter_index):
    spec = PRESETS["default"]
    weights = init_weights(spec, 1)
    x = torch.randn(6, 1, 28, 28)
    rng = np.random.default_rng(0)
    base = flatten_layer(*weights[layer])
    candidates = []
    for _ in range(4):
        trial = [(w.clone(), b.clone()) for w, b in weights]
        if filter_index is None:
            vector = base + 0.1 * rng.standard_normal(base.shape)
            trial[layer] = unflatten_layer(vector, spec, layer)
        else:
            w, b = trial[layer]
            vector = np.concatenate([w[filter_index].flatten().numpy(), b[filter_index:filter_index + 1].numpy()])
            vector = vector + 0.1 * rng.standard_normal(vector.shape)
            w[filter_index] = torch.as_tensor(vector[:-1], dtype=torch.float32).reshape(w[filter_index].shape)
            b[filter_index] = float(vector[-1])
        candidates.append((vector, reference_forward(x, spec, trial)))
    layer_input = x if layer == 0 else reference_forward(x, spec, weights[:1]).reshape(6, -1, 12, 12)
    held = None
    if filter_index is not None:
        from slicenet.trunk import layer_forward
        held = layer_forward(layer_input, *weights[layer], layer=spec.layers[layer])
    population = torch.tensor(np.stack([v for v, _ in candidates]), dtype=torch.float32)
    batched = population_features(layer_input, spec, weights, index=layer, population=population,
                                  filter_index=filter_index, held_output=held)
    for p, (_, expected) in enumerate(candidates):
        torch.testing.assert_close(batched[p], expected, rtol=1e-4, atol=1e-5)


def test_presets_and_small_images():
    assert resolve_preset("auto", (28, 28))[0] == "default"
    assert resolve_preset("auto", (8, 8))[0] == "tiny"
    with pytest.raises(InputError, match="unknown trunk preset"):
        resolve_preset("resnet", (28, 28))
    with pytest.raises(InputError, match="does not fit"):
        resolve_preset("default", (8, 8))


def test_init_is_seeded():
    a, b = init_weights(PRESETS["default"], 3), init_weights(PRESETS["default"], 3)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("size", [2, 3])
def test_max_pool_equals_torch(size):
    from slicenet.trunk import max_pool

    x = torch.randn(3, 4, 13, 11)
    assert torch.equal(max_pool(x, size), F.max_pool2d(x, size))
