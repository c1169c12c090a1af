"""New classes without a search or a gradient (``slicenet enrol``): images become prototypes.

A k-NN sliced engine's trunk is a fixed feature transformer; its classes live in the bank. Enrolling
a class is therefore: its images through the trunk and the engine's own post-processing (the stored
centring mean and projection, unchanged, so old prototypes keep their meaning), appended to the bank
under the class's name. A folder named as an existing class adds prototypes to it (``new_only``
refuses that). A compact engine (``slicenet condense``) enrols through its reduction's per-class
step: each enrolled class is k-means-reduced to the compact bank's prototypes per class (LVQ2.1, the
refinement after it, moves every class's prototypes against the others' training images, which the
engine no longer holds). The enrolled run keeps that record, so an enrolment into it reduces the same
way. The same arithmetic, in numpy, is ``devices/run_engine.py enrol`` on the board (see ``export
--enrollable``), which has no k-means: into a compact bank it adds up to that many images per class and
refuses more.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from .data import class_folders, load_dataset, shift_check, shifted_copies, split_modifiers
from .engine import Engine
from .errors import InputError


def dataset_classes(spec: str, size: tuple[int, int], *, per_class: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A dataset spec's training images (the first ``per_class`` of each class in split order)."""
    if spec.startswith("folder:"):
        return class_folders(Path(spec.partition(":")[2]), size, per_class=per_class)
    if split_modifiers(spec)[2] is None:
        spec = f"{spec}@{size[0]}"
    dataset = load_dataset(spec, size[0])
    if dataset.image_size != size:
        raise InputError(f"dataset {spec!r} has {dataset.image_size[0]}x{dataset.image_size[1]} images; the engine "
                         f"takes {size[0]}x{size[1]}")
    keep = np.concatenate([np.flatnonzero(dataset.y_train == c)[: per_class or None]
                           for c in range(dataset.n_classes)])
    keep.sort()
    return dataset.x_train[keep], dataset.y_train[keep], dataset.class_names


def enrol(engine: Engine, images: np.ndarray, labels: np.ndarray, names: tuple[str, ...], *,
          new_only: bool = False, prototypes_per_class: int = 0, n_neighbors: int = 0, bank_shifts: int = 0,
          seed: int = 0) -> tuple[Engine, dict[str, int]]:
    """``engine`` with ``images`` (labels indexing ``names``) added to its bank; returns it and the
    prototypes added per class. ``prototypes_per_class`` > 0: each class's images k-means-reduced to
    that many first (a compact engine's). ``n_neighbors`` > 0 sets the vote's k (few images of a new
    class cannot win a majority of the source's k). ``bank_shifts``: each image's shifted copies
    (``data.shifted_copies``) join it, as they did when the bank was built; ``added`` counts prototypes."""
    head = engine.bank_head  # a dense engine: one line, nothing written
    if n_neighbors:
        head = dataclasses.replace(head, n_neighbors=n_neighbors)
    existing = [n for n in names if n in engine.class_names]
    if new_only and existing:
        raise InputError(f"class {existing[0]} already exists in the engine ({', '.join(engine.class_names)}); "
                         "rename the folder, or drop --new-only to add prototypes to it")
    class_names = tuple(engine.class_names) + tuple(n for n in names if n not in engine.class_names)
    images, labels = shifted_copies(images, labels, bank_shifts)  # as the bank was built: its shifted copies too
    with torch.no_grad():
        points = engine.embed(images).cpu().numpy()
    new_bank, new_labels, added = [], [], {}
    for label, name in enumerate(names):
        members = points[labels == label]
        if prototypes_per_class:
            from .condense import kmeans_centres

            members = kmeans_centres(members, prototypes_per_class, seed=seed)
        new_bank.append(members.astype(np.float32))
        new_labels.append(np.full(len(members), class_names.index(name), dtype=np.int64))
        added[name] = int(len(members))
    bank = torch.cat([head.bank, torch.from_numpy(np.concatenate(new_bank))])
    bank_labels = torch.cat([head.bank_labels, torch.from_numpy(np.concatenate(new_labels))])
    fitted = head.fit(bank, bank_labels, len(class_names))
    smallest = int(torch.bincount(bank_labels, minlength=len(class_names)).min())
    if fitted.kind == "local-mean" and smallest < fitted.n_neighbors:
        raise InputError(f"the local-mean vote needs k={fitted.n_neighbors} prototypes of every class; a class would "
                         f"have {smallest}: enrol at least {fitted.n_neighbors} images per class")
    fitted.check(class_names)
    enrolled = dataclasses.replace(engine, head=fitted, class_names=class_names)
    return enrolled.with_storage(engine.storage["weights"], engine.storage["bank"]), added


def compact_record(metrics: dict) -> dict:
    """How a compact run's bank was reduced (its metrics.json's ``compact``: prototypes per class, bank
    shifts, ...), which every enrolment into it repeats and passes on; {} for any other run."""
    return dict(metrics.get("compact") or {}) if metrics.get("kind") == "compact" else {}


def built_shifts(metrics: dict) -> int:
    """The shifted copies per image a run's bank was built with (a compact engine's: its own), which an
    enrolment repeats; ``metrics``: the run's metrics.json."""
    return int((compact_record(metrics) or metrics).get("bank_shifts", 0) or 0)


def enrolment_rules(metrics: dict) -> dict:
    """What an enrolment into a run repeats, as an enrollable bundle's manifest records it for the
    board: ``bank_shifts`` (``built_shifts``) and ``prototypes_per_class`` (a compact bank's, else 0)."""
    return {"bank_shifts": built_shifts(metrics),
            "prototypes_per_class": int(compact_record(metrics).get("prototypes") or 0)}


def enrol_run(run: Path, dataset: str, *, out: Path, per_class: int = 0, new_only: bool = False,
              n_neighbors: int = 0, evaluate_on: str = "", bank_shifts: int = -1, command: str = "") -> dict:
    """``slicenet enrol``: a new run directory with the enrolled engine; returns its metrics. Everything
    is checked and computed before ``out`` is created. The metrics' test split is ``evaluate_on``'s
    (default: the source run's dataset), its classes matched to the engine's by name."""
    from . import runs
    from .pipeline import engine_metrics

    started = time.perf_counter()
    if per_class < 0:
        raise InputError(f"--per-class must be 0 (all) or positive, got {per_class}")
    if n_neighbors < 0:
        raise InputError(f"--n-neighbors must be 0 (the engine's k) or positive, got {n_neighbors}")
    ok, message = shift_check("--bank-shifts", bank_shifts, minus_one="as the engine's bank was built")
    if not ok:
        raise InputError(message)
    engine = runs.load_engine(run)
    source = runs.load_metrics(run)
    config = runs.load_config(run)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not empty; choose another")
    images, labels, names = dataset_classes(dataset, engine.image_size, per_class=per_class)
    rules = enrolment_rules(source)
    shifts = rules["bank_shifts"] if bank_shifts < 0 else bank_shifts
    enrolled, added = enrol(engine, images, labels, names, new_only=new_only,
                            prototypes_per_class=rules["prototypes_per_class"], n_neighbors=n_neighbors,
                            bank_shifts=shifts, seed=int(source.get("seed", 0)))
    test_set = load_dataset(evaluate_on or config.dataset, engine.image_size[0])
    if test_set.image_size != engine.image_size:
        raise InputError(f"--evaluate-on {evaluate_on!r} has {test_set.image_size[0]}x{test_set.image_size[1]} images; "
                         f"add @{engine.image_size[0]}")
    from .pipeline import class_index

    index = class_index(test_set.class_names, enrolled.class_names)
    test_set = dataclasses.replace(test_set, y_test=index[test_set.y_test], y_train=index[test_set.y_train],
                                   class_names=enrolled.class_names)
    metrics = {**engine_metrics(enrolled, test_set, kind=source.get("kind", "search")),
               **{k: source[k] for k in ("method", "preset", "granularity", "seed", "n_features") if k in source},
               "enrolled_from": str(run), "enrolled": added, "enrolled_dataset": dataset,
               "per_class": per_class, "enrol_bank_shifts": shifts, "class_names": list(enrolled.class_names),
               "validation_accuracy": source.get("validation_accuracy", 0.0), "command": command,
               "evaluated_on": f"{evaluate_on or config.dataset}: its test split"}
    if compact := compact_record(source):  # an enrolment into this run reduces its classes as this one did
        metrics["compact"] = compact
    metrics.update(evaluations=0, wall_seconds=round(time.perf_counter() - started, 3),
                   random_init_test_accuracy=source.get("random_init_test_accuracy", 0.0))
    runs.create_run_dir(out, config, command)
    runs.write_results(out, enrolled, metrics=metrics, history=[])
    return json.loads(json.dumps(metrics))
