"""Export an engine as one graph (image -> class, votes) for ONNX Runtime, OpenVINO, the Jetson Nano and
the NCS2, check it against the target's rules, and verify it before declaring success.

The graph is described once by the engine (``Engine.describe``: views, trunk, post-processing and
head each describe their own part) and written by two writers: ``onnx_writer`` (opset 13 or 17, as
the target says) and ``ir_writer`` (OpenVINO opset1 / opset3 operations, IR v11, FP16 for the NCS2).
The targets (``targets``: one class each) choose writers, opset and rules; each bundle is written
into a staging folder, verified over the test split, and moved into place whole.

The graph: uint8 image [batch, 1, H, W] (float32 pixels for the Jetson: ``Target.prepare``) -> Cast ->
(test-time views: one Gather and one Mul) -> (Conv -> Relu/Tanh -> MaxPool) per layer, with the
normalisation folded into the first Conv (or a Mul and an Add before it when that layer pads) -> Reshape
-> the head: for a k-NN head the post-processing (Sub mean, L2 normalise), distances to the bank as
``2 q.B^T - ||B||^2`` (bank norms precomputed), TopK of them (largest=1: TensorRT 8.2 ignores largest=0), a
Gather of one-hot label rows and a ReduceSum (the votes); for the local-mean head one TopK per class
over the regrouped scores; for a dense head MatMul/Add/Relu, Softmax -> (views summed) -> ArgMax (the
class). No OneHot, static shapes, constant K.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..engine import Engine
from ..enrol import enrolment_rules
from ..errors import InputError
from .ir_writer import write_ir
from .onnx_writer import write_onnx
from .targets import TARGETS, TENSORRT_MAX_K, Target, check_ir_opsets, check_onnx, target
from .verify import OPENVINO_EXACT_CPU, Verification, near_ties, run_onnxruntime, run_openvino, verify

MAX_BATCH = 4096


def build_onnx(engine: Engine, opset: int, batch: int = 1):  # noqa: ANN201 -- an onnx.ModelProto
    """The engine's graph as an ONNX model of ``opset``."""
    return write_onnx(engine.describe(batch=batch), opset=opset)


def build_ir(engine: Engine, batch: int = 1, *, fold_constants: bool = False):  # noqa: ANN201 -- an openvino.Model
    """The engine's graph as an OpenVINO model of opset1 / opset3 operations (readable by 2022.3)."""
    graph = engine.describe(batch=batch)
    return write_ir(graph.fold_constants() if fold_constants else graph)


build_ncs2_ir = build_ir  # the name earlier releases exported


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_name(run_dir: Path) -> str:
    """The run's folder name, prefixed by its parent's for runs nested in a group (baseline widths)."""
    path = Path(run_dir).resolve()
    return path.name if path.parent.name in ("runs", "") else f"{path.parent.name}-{path.name}"


def bundle_folder(run_dir: Path, *, target_name: str, out_root: Path, batch: int = 1) -> Path:
    return Path(out_root) / bundle_name(run_dir) / (target_name if batch == 1 else f"{target_name}-b{batch}")


def board_file(name: str) -> Path:
    """A file of ``devices/`` (the runner every bundle carries, the board profiles): shipped inside the
    package as ``slicenet.boards``, so a wheel install has them too."""
    from importlib import resources

    path = Path(str(resources.files("slicenet.boards") / name))
    if not path.is_file():
        raise InputError(f"devices/{name} is missing from this installation of slicenet; reinstall it "
                         "(pip install slicenet, or pip install -e . in a checkout)")
    return path


def board_runner() -> Path:
    return board_file("run_engine.py")


def export_bundle(engine: Engine, *, run_dir: Path, target_name: str, out_root: Path, images: np.ndarray,
                  labels: np.ndarray, n_samples: int = 32, batch: int = 1, check_2022: bool = True,
                  enrollable: bool = False, enrolment: dict | None = None, capacity: int = 0) -> dict:
    """Write ``out_root/<run>/<target>[-b<batch>]/`` and return its manifest (verified before it is written).

    With ``check_2022``, the files the target lists in ``ov2022_models`` (the NCS2's IR and its ONNX
    fallback) must be read and compiled by OpenVINO 2022.3.2's own runtime (``ov2022``); where that
    check cannot run, the manifest says "not checked" and why. ``enrollable`` adds the trunk graph alone
    (image -> embedding) and the bank as files, so ``run_engine.py enrol`` can add classes on the board;
    its trunk + numpy vote is verified against the torch engine like the whole graph; ``enrolment``
    (``enrol.enrolment_rules``): the shifted copies the board makes of each enrolled image (as the run's
    bank was built) and a compact bank's prototypes per class, which the board keeps to. A target
    that runs the distance step on the device (the NCS2) also gets the ranking graph of ``capacity`` bank
    slots (0: twice the bank) for a majority vote; both steps are verified."""
    from ..extras import require

    chosen = target(target_name)
    if not 1 <= batch <= MAX_BATCH:
        raise InputError(f"--batch must be between 1 and {MAX_BATCH}, got {batch}")
    require("onnx", "onnxruntime", "openvino", purpose=f"export --target {target_name}")
    if capacity < 0:
        raise InputError(f"--capacity must be 0 (twice the bank) or a number of prototypes, got {capacity}")
    if enrollable:
        bank_head = engine.bank_head  # a dense engine: one line, before anything is written
        engine.describe_features(batch=batch)  # test-time views: likewise
        if capacity and capacity < len(bank_head.bank):
            raise InputError(f"--capacity {capacity} is below the bank's {len(bank_head.bank)} prototypes: "
                             "give at least that many slots (default 0: twice the bank)")
    elif capacity:
        raise InputError("--capacity sizes an enrollable bundle's bank on the stick: add --enrollable")
    if capacity and not chosen.ranks_on_device:
        raise InputError(f"--capacity sizes the bank of the stick's ranking graph: target {target_name} runs the "
                         "distance step on its host (use --target ncs2, or drop --capacity)")
    runner = board_runner()
    name = bundle_name(run_dir)
    bundle = bundle_folder(run_dir, target_name=target_name, out_root=out_root, batch=batch)
    staging = bundle.with_name(f".{bundle.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        checks, verifications = chosen.write(engine, engine.describe(batch=batch), folder=staging, images=images,
                                             labels=labels, batch=batch)
        for v in verifications:
            if v.precision == "fp32" and v.disagreements > v.near_ties:
                raise InputError(f"target {target_name}: {v.runtime} disagrees with the torch engine on "
                                 f"{v.disagreements} of {v.images} test images ({v.near_ties} of them numerical "
                                 "near-ties); not exported")
        enrollable_spec, stick_models = None, []
        if enrollable:
            expected, _, _ = engine.predict(images)  # the torch engine's classes, which each split step must give
            enrollable_spec, check, verification = _write_enrollable(engine, chosen, staging, images=images,
                                                                     labels=labels, batch=batch, expected=expected)
            enrollable_spec.update(enrolment or enrolment_rules({}))  # a plain bank, unshifted
            checks["enrollable"] = check
            verifications.append(verification)
            if verification.disagreements > verification.near_ties:
                raise InputError(f"target {target_name}: the enrollable trunk and numpy vote disagree with the torch "
                                 f"engine on {verification.disagreements} of {verification.images} test images; "
                                 "not exported")
            if chosen.ranks_on_device and engine.ranking_refusal:
                checks["enrollable"]["ranking"] = {"status": "not written", "reason": engine.ranking_refusal}
            elif chosen.ranks_on_device:
                stick, ranking = _write_ranking(engine, chosen, staging, images=images, labels=labels, batch=batch,
                                                capacity=capacity or 2 * len(bank_head.bank), expected=expected)
                checks["enrollable"]["ranking"] = stick.pop("checks")
                enrollable_spec["stick"] = stick
                stick_models.append(stick["model"])
                enrollable_spec["distance_step"] += f"; or on the stick: {stick['model']}, run --distance stick"
                verifications.append(ranking)
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(images), size=min(max(n_samples, batch), len(images)), replace=False))
        samples = np.ascontiguousarray(images[pick][:, None])
        if chosen.ov2022_models:
            checks["openvino_2022"] = _check_2022(engine, staging, chosen, samples, check_2022)
            if enrollable and check_2022:  # the stick's trunk graph too: read and compiled by 2022.3.2
                from . import ov2022

                trunk = ov2022.check([staging / m for m in ("trunk.xml", "trunk.onnx", *stick_models)])
                if trunk["status"] == "failed":
                    raise InputError(f"target {target_name}: the enrollable trunk: {ov2022.describe(trunk)}; "
                                     "not exported")
                checks["enrollable"]["openvino_2022"] = trunk
        manifest = _finish(engine, staging, chosen, checks, verifications, name=name, run_dir=run_dir,
                           samples=samples, batch=batch, runner=runner, enrollable=enrollable_spec)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if bundle.exists():
        shutil.rmtree(bundle)
    staging.rename(bundle)  # the bundle appears whole or not at all
    return manifest


def _check_2022(engine: Engine, staging: Path, chosen: Target, samples: np.ndarray, wanted: bool) -> dict:
    """OpenVINO 2022.3.2 reads, compiles and runs the target's files; a refusal fails the export."""
    from . import ov2022

    if not wanted:
        return {"release": ov2022.RELEASE, "status": "not checked", "reason": "--no-check-2022 was given"}
    result = ov2022.check([staging / m for m in chosen.ov2022_models], samples=samples,
                          expected=engine.predict(samples[:, 0])[0].tolist())
    if result["status"] == "failed":
        raise InputError(f"target {chosen.name}: {ov2022.describe(result)}; not exported")
    return result


def _split_verification(engine: Engine, predicted: np.ndarray, *, images: np.ndarray, labels: np.ndarray,
                        expected: np.ndarray, runtime: str, precision: str) -> Verification:
    """An enrollable bundle's split step (a graph in the runtime, the vote in the board runner's numpy)
    against the torch engine's classes ``expected``, on every test image, as ``verify`` checks a graph."""
    differ = predicted != expected
    return Verification(len(images), float((~differ).mean()), float((expected == labels).mean()),
                        float((predicted == labels).mean()), runtime, precision, engine.near_ties(images[differ]))


def _write_enrollable(engine: Engine, chosen: Target, staging: Path, *, images: np.ndarray, labels: np.ndarray,
                      batch: int, expected: np.ndarray) -> tuple[dict, dict, Verification]:
    """The trunk graph, ``bank-0.npy`` and ``bank_labels-0.npy``; the board runner's own numpy vote over
    the runtime's embeddings is checked against the torch engine on every test image."""
    from ..boards import run_engine

    head = engine.bank_head
    model, runtime, check = chosen.write_trunk(engine.describe_features(batch=batch), staging)
    bank = head.bank.numpy().astype(np.float32)
    bank_labels = head.bank_labels.numpy().astype(np.int64)
    np.save(staging / "bank-0.npy", bank)
    np.save(staging / "bank_labels-0.npy", bank_labels)
    spec = {"model": model, "output": "embedding", "bank": "bank-0.npy", "bank_labels": "bank_labels-0.npy",
            "vote": head.kind, "k": head.n_neighbors, "metric": head.metric, "generation": 0,
            "distance_step": "host (numpy, in run_engine.py)"}
    path = str(staging / model)
    embed = (run_engine.openvino_runner(path, "CPU", output_name="embedding") if runtime == "openvino"
             else run_engine.onnxruntime_runner(path, ["CPUExecutionProvider"], output="embedding"))[0]
    predicted = np.array(run_engine.classify(run_engine.embed_all(embed, images, batch), bank, bank_labels,
                                             engine.n_classes, head.n_neighbors, head.metric, head.kind))
    return spec, check, _split_verification(engine, predicted, images=images, labels=labels, expected=expected,
                                            runtime=f"{runtime}+numpy-knn",
                                            precision="fp16-weights" if chosen.name == "ncs2" else "fp32")


def _write_ranking(engine: Engine, chosen: Target, staging: Path, *, images: np.ndarray, labels: np.ndarray,
                   batch: int, capacity: int, expected: np.ndarray) -> tuple[dict, Verification]:
    """``ranked-0.xml``: the distance step on the device, its bank in ``capacity`` slots laid out by the
    board runner's own ``slot_constants`` (which ``enrol`` rewrites), checked against the torch engine's
    classes ``expected`` through the runner's vote. Returns (the manifest's stick entry, its
    Verification); only for an engine without a ``ranking_refusal``."""
    from ..boards import run_engine

    head = engine.bank_head
    bank_t, norm2 = run_engine.slot_constants(head.bank.numpy(), head.metric, capacity)
    written = chosen.write_ranking(engine.describe_ranking(bank_t=bank_t, bank_norm2=norm2, batch=batch), staging,
                                   "ranked-0")
    nearest = run_engine.openvino_runner(str(staging / "ranked-0.xml"), "CPU", output_name="nearest")[0]
    found = run_engine.embed_all(nearest, images, batch)
    predicted = np.array(run_engine.majority(head.bank_labels.numpy()[found], engine.n_classes))
    stick = {"model": "ranked-0.xml", "weights": "ranked-0.bin", "output": "nearest", "capacity": capacity,
             "empty_norm2": run_engine.EMPTY_NORM2, **written}
    return stick, _split_verification(engine, predicted, images=images, labels=labels, expected=expected,
                                      runtime="openvino+numpy-vote", precision="fp16-weights")


def _finish(engine: Engine, staging: Path, chosen: Target, checks: dict, verifications: list[Verification], *,
            name: str, run_dir: Path, samples: np.ndarray, batch: int, runner: Path,
            enrollable: dict | None = None) -> dict:
    """Samples, runner, README and manifest (with every file's sha256) into the staging folder."""
    np.save(staging / "samples.npy", samples)
    expected, expected_votes, _ = engine.predict(samples[:, 0])
    shutil.copy(runner, staging / "run_engine.py")
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    (staging / "README.md").write_text(chosen.readme_text(name=name, engine=engine, checks=checks))
    head = engine.head
    manifest = {
        "format": "slicenet-bundle/1", "target": chosen.name, "slicenet_version": __version__, "run": str(run_dir),
        "model": chosen.model,
        "fallback_model": "engine.onnx" if chosen.model != "engine.onnx" and chosen.name == "ncs2" else None,
        "onnx_model": "engine.onnx",  # every bundle carries the ONNX graph (the IR's source for OpenVINO)
        "batch": batch,
        "input": {"name": "image", "shape": [batch, 1, *engine.image_size], "dtype": chosen.input_dtype,
                  "values": "the pixels 0-255",
                  "normalisation": {"scale": 1.0 / 255.0, "mean": engine.input_mean, "std": engine.input_std,
                                    "formula": "(image / 255 - mean) / std, inside the graph"}},
        "outputs": {"class": f"int64 [{batch}]", "votes": f"float32 [{batch}, {engine.n_classes}]"},
        "class_names": list(engine.class_names), "head": head.kind, "head_settings": head.settings(),
        "k": getattr(head, "n_neighbors", 0), "metric": getattr(head, "metric", None),
        "postprocessing": engine.post.method, "query_shifts": engine.views.shifts,
        "parameters": engine.parameters, "engine_bytes": engine.engine_bytes, "multiply_adds": engine.multiply_adds,
        "bank_size": int(len(getattr(head, "bank", ()))),
        "checks": checks,
        "verification": [v.__dict__ for v in verifications],
        "samples": {"file": "samples.npy", "expected_classes": expected.tolist(),
                    "expected_votes": np.round(expected_votes, 6).tolist()},
        "sha256": {f: sha256(staging / f) for f in files},
        **({"enrollable": enrollable} if enrollable else {}),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


MANIFEST = "manifest.json"
MANIFEST_KEYS = ("target", "model", "onnx_model", "input", "samples", "checks", "verification")


def read_manifest(bundle: str | os.PathLike[str]) -> dict:
    """An exported bundle's manifest; a folder that is not one, or a damaged manifest, is one line."""
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise InputError(f"{bundle} is not an exported bundle (no {MANIFEST}); pass a folder written by "
                         "'slicenet export'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({exc}); export the bundle again") from None
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: not a manifest 'slicenet export' wrote; export the "
                         "bundle again")
    return manifest


__all__ = ["TARGETS", "TENSORRT_MAX_K", "OPENVINO_EXACT_CPU", "Verification", "build_onnx", "build_ir", "build_ncs2_ir",
           "bundle_folder", "bundle_name", "check_ir_opsets", "check_onnx", "export_bundle", "near_ties",
           "read_manifest", "run_onnxruntime", "run_openvino", "target", "verify", "board_runner", "board_file"]
