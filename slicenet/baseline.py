"""The backprop baseline: the same trunk with a fully connected head, trained with Adam or SGD.

``head="knn"`` then cuts the dense layers off and puts the k-NN head on the trained trunk (the
reference's "k-NN slicing" of a trained network), so that the effect of the k-NN head and the
effect of the gradient-free search can be told apart. Pure: no printing, no files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import BaselineConfig
from .data import Dataset
from .engine import Engine, PostProcessing, normalise_images
from .errors import InputError
from .fitness import stratified_split
from .heads import DenseHead, bank_head
from .trunk import TrunkSpec, Weights, forward, init_weights


class Network(nn.Module):
    """Trunk (as in ``trunk.py``, same init) + dense hidden layer (ReLU) + dense output layer."""

    def __init__(self, spec: TrunkSpec, image_size: tuple[int, int], *, hidden: int, n_classes: int, seed: int,
                 start: Weights | None = None, frozen: tuple[int, ...] = ()):
        super().__init__()
        self.spec = spec
        self.trunk = nn.ParameterList()
        for index, (weight, bias) in enumerate(init_weights(spec, seed) if start is None else start):
            self.trunk.append(nn.Parameter(weight.clone(), requires_grad=index not in frozen))
            self.trunk.append(nn.Parameter(bias.clone(), requires_grad=index not in frozen))
        torch.manual_seed(seed)
        self.hidden = nn.Linear(spec.n_features(image_size), hidden)
        self.output = nn.Linear(hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        weights = [(self.trunk[2 * i], self.trunk[2 * i + 1]) for i in range(len(self.spec.layers))]
        return forward(x, self.spec, weights).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(self.features(x))))

    def trunk_weights(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.trunk[2 * i].detach().cpu().clone(), self.trunk[2 * i + 1].detach().cpu().clone())
                for i in range(len(self.spec.layers))]


def augment(x: torch.Tensor, generator: torch.Generator, *, shift: float = 2.0, degrees: float = 10.0) -> torch.Tensor:
    """Random shifts (up to ``shift`` pixels) and rotations (up to ``degrees``), one per image."""
    n, _, height, width = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    dx = (torch.rand(n, generator=generator) * 2 - 1) * shift * 2 / width
    dy = (torch.rand(n, generator=generator) * 2 - 1) * shift * 2 / height
    theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), dx], 1),
                         torch.stack([angle.sin(), angle.cos(), dy], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)  # pad with the image's own background value
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


@torch.no_grad()
def accuracy(model: Network, x: torch.Tensor, y: torch.Tensor, *, batch: int = 1024) -> float:
    model.eval()
    hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch), strict=True))
    return hits / max(1, len(y))


def frozen_layers(freeze: str, spec: TrunkSpec) -> tuple[int, ...]:
    """``--freeze``: "" or none (train every layer), all, or 0-based layers "0,1"; a bad one is one line."""
    if freeze in ("", "none"):
        return ()
    if freeze == "all":
        return tuple(range(len(spec.layers)))
    try:
        layers = tuple(int(p) for p in freeze.split(",") if p.strip())
    except ValueError:
        raise InputError(f"--freeze {freeze!r}: expected none, all or layers like 0,1") from None
    bad = [layer for layer in layers if not 0 <= layer < len(spec.layers)]
    if bad:
        raise InputError(f"--freeze {freeze!r}: layer {bad[0]} does not exist; the trunk has layers 0.."
                         f"{len(spec.layers) - 1}")
    return layers


def train(dataset: Dataset, spec: TrunkSpec, *, hidden: int, config: BaselineConfig, input_mean: float,
          input_std: float, on_epoch: Callable[[dict], None] | None = None,
          device: torch.device | None = None, start: Weights | None = None,
          on_checkpoint: Callable[[dict], None] | None = None,
          resume: dict | None = None) -> tuple[Network, list[dict], dict]:
    """Train with early stopping on a validation split; returns the best network, history, summary.
    ``start``: the trunk's initial weights (a source run's, ``--init-from``), its ``--freeze`` layers fixed.
    ``on_checkpoint(state)`` gets the whole training state after each epoch (tensors and numbers only:
    the model, optimiser, schedule, random generators, history and best state so far); ``resume``, such
    a state, continues from the epoch after it to what the uninterrupted training gives."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    fit, val = stratified_split(dataset.y_train, config.validation_fraction, rng)
    device = device or torch.device("cpu")
    x = normalise_images(dataset.x_train, input_mean, input_std).to(device)
    y = torch.from_numpy(dataset.y_train).to(device)
    x_fit, y_fit, x_val, y_val = x[fit], y[fit], x[val], y[val]
    model = Network(spec, dataset.image_size, hidden=hidden, n_classes=dataset.n_classes, seed=config.seed,
                    start=start, frozen=frozen_layers(config.freeze, spec)).to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        optimiser: torch.optim.Optimizer = torch.optim.Adam(trained, lr=config.learning_rate)
        schedule = None
    else:
        optimiser = torch.optim.SGD(trained, lr=config.learning_rate, momentum=0.9)
        schedule = torch.optim.lr_scheduler.StepLR(optimiser, config.lr_step, config.lr_gamma)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    best_accuracy, best_state, since_best, steps = -1.0, None, 0, 0
    started, first = time.perf_counter(), 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        if schedule is not None:
            schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        history, best_state = list(resume["history"]), resume["best_state"]
        best_accuracy, since_best, steps = resume["best_accuracy"], resume["since_best"], resume["steps"]
        started, first = started - resume["seconds"], resume["epoch"] + 1
    for epoch in range(first, config.epochs + 1):
        if since_best >= config.patience:  # a resumed state that had already stopped early
            break
        model.train()
        order = torch.randperm(len(y_fit), generator=generator).to(device)
        total_loss = 0.0
        for batch in order.split(config.batch_size):
            xb = x_fit[batch]
            if config.augment:
                xb = augment(xb, generator)
            loss = F.cross_entropy(model(xb), y_fit[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total_loss += loss.item() * len(batch)
            steps += 1
        if schedule is not None:
            schedule.step()
        val_accuracy = accuracy(model, x_val, y_val)
        row = {"epoch": epoch, "train_loss": total_loss / len(y_fit), "validation_accuracy": val_accuracy,
               "seconds": time.perf_counter() - started}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val_accuracy > best_accuracy:
            best_accuracy, since_best = val_accuracy, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if on_checkpoint is not None:
            on_checkpoint({"epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                           "schedule": schedule.state_dict() if schedule is not None else None,
                           "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                           "history": history, "best_state": best_state, "best_accuracy": best_accuracy,
                           "since_best": since_best, "steps": steps, "seconds": time.perf_counter() - started})
        if since_best >= config.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    summary = {"epochs": len(history), "best_epoch": int(np.argmax([h["validation_accuracy"] for h in history])) + 1,
               "validation_accuracy": best_accuracy, "gradient_steps": steps,
               "stopped_early": len(history) < config.epochs, "train_seconds": time.perf_counter() - started}
    return model, history, summary


def to_engine(model: Network, dataset: Dataset, *, config: BaselineConfig, input_mean: float, input_std: float,
              info: dict) -> Engine:
    """The trained network as an engine: dense head as trained, or the trunk with a k-NN head."""
    weights = model.trunk_weights()
    if config.head == "knn":
        return Engine.build(model.spec, weights, dataset.x_train, dataset.y_train, input_mean=input_mean,
                            input_std=input_std, class_names=dataset.class_names, info=info,
                            head=bank_head(config.vote, n_neighbors=config.n_neighbors, metric=config.metric),
                            postprocessing=config.postprocessing)
    dense = [(layer.weight.detach().cpu().clone(), layer.bias.detach().cpu().clone())
             for layer in (model.hidden, model.output)]
    return Engine(model.spec, weights, input_mean, input_std, PostProcessing("none"), DenseHead(dense),
                  dataset.class_names, dataset.image_size, dict(info))


def run(dataset: Dataset, spec: TrunkSpec, *, preset: str, hidden: int, config: BaselineConfig, input_mean: float,
        input_std: float, on_epoch: Callable[[dict], None] | None = None,
        device: torch.device | None = None, start: Weights | None = None,
        on_checkpoint: Callable[[dict], None] | None = None,
        resume: dict | None = None) -> tuple[Engine, dict, list[dict]]:
    """Train one width and return (its engine, its metrics, its history): the whole baseline run but
    its files. ``start``: a source trunk to fine-tune (its "random init" is then the source as it was).
    ``on_checkpoint`` and ``resume``: as ``train`` takes them."""
    from .pipeline import engine_metrics, evaluate

    started = time.perf_counter() - (resume["seconds"] if resume is not None else 0.0)
    model, history, summary = train(dataset, spec, hidden=hidden, config=config, input_mean=input_mean,
                                    input_std=input_std, on_epoch=on_epoch, device=device, start=start,
                                    on_checkpoint=on_checkpoint, resume=resume)
    info = {"method": f"backprop-{config.optimizer}", "dataset": dataset.name}
    engine = to_engine(model, dataset, config=config, input_mean=input_mean, input_std=input_std, info=info)
    untrained = Network(spec, dataset.image_size, hidden=hidden, n_classes=dataset.n_classes, seed=config.seed,
                        start=start)
    untrained_engine = to_engine(untrained, dataset, config=config, input_mean=input_mean, input_std=input_std,
                                 info=info)
    metrics = {
        **engine_metrics(engine, dataset, kind="backprop-knn" if config.head == "knn" else "backprop-dense"),
        "method": f"backprop-{config.optimizer}", "hidden": hidden, "preset": preset, "granularity": "",
        "random_init_test_accuracy": evaluate(untrained_engine, dataset.x_test, dataset.y_test)["accuracy"],
        **summary,
        "evaluations": summary["gradient_steps"] * config.batch_size,
        "wall_seconds": round(time.perf_counter() - started, 3), "seed": config.seed, "augment": config.augment,
        "device": str(device or "cpu"),
        **({"transfer": {"source": config.init_from, "tune": "backprop, frozen: " + (config.freeze or "none"),
                         "keep": 0, "granularity": "layer"}} if config.init_from else {}),
    }
    return engine, metrics, history
