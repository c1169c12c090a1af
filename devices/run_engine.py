#!/usr/bin/env python3
"""Run an exported slicenet bundle on a board and time it.

Runs on a Jetson Nano (JetPack 4.6, Python 3.6, onnxruntime-gpu 1.11 from the Jetson Zoo, or CPU
onnxruntime) and on a host with only OpenVINO 2022.3 and numpy (NCS2: --device MYRIAD). It imports
neither torch nor slicenet, and keeps to Python 3.6 syntax (the tests check that with a tool).

    python3 run_engine.py --runtime onnxruntime [--providers CUDAExecutionProvider]
    python3 run_engine.py --runtime tensorrt [--precision fp16]     # Jetson: onnxruntime-gpu's TensorRT provider
    python3 run_engine.py --runtime openvino --device MYRIAD [--model engine.blob]
    python3 run_engine.py enrol BUNDLE NEW_CLASSES_DIR [--per-class N]   # --enrollable bundles: add classes

It checks the sha256 of every file against manifest.json, runs the shipped sample images, checks
their predictions against the expected ones, times warm-up then timed single-image inferences, and
writes result.json for `slicenet bench --ingest result.json`.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def fail(message):
    sys.stderr.write("run_engine: error: " + message + "\n")
    sys.exit(2)


def check_files(folder, manifest):
    for name, digest in sorted(manifest["sha256"].items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            fail(f"{name} is missing from the bundle; copy the whole folder")
        with open(path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != digest:
            fail(f"{name} has sha256 {actual} but the manifest says {digest}: the copy is damaged")


# The image input's type in each bundle: uint8, or float32 holding the pixels 0-255 in a Jetson bundle
# (TensorRT 8.2 has no uint8 type). The samples and images are uint8; they are fed as the model asks.
ONNX_INPUT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


def input_type(session):
    """The numpy type of an ONNX Runtime session's image input."""
    kind = session.get_inputs()[0].type
    if kind not in ONNX_INPUT_TYPES:
        fail("the model's image input is " + kind + ", not uint8 or float32: export the bundle again with slicenet")
    return ONNX_INPUT_TYPES[kind]


def onnxruntime_runner(model_path, providers, tensorrt=False, fp16=False, cache=None, output="class"):
    try:
        import onnxruntime as ort
    except ImportError:
        fail("onnxruntime is not installed: pip3 install onnxruntime (on the Jetson Nano: onnxruntime-gpu 1.11.0 "
             "for JetPack 4.6, see the bundle's README)")
    available = ort.get_available_providers()
    if tensorrt:
        if "TensorrtExecutionProvider" not in available:
            fail("onnxruntime here has no TensorRT execution provider (it has " + ", ".join(available) + "): on the "
                 "Jetson Nano install onnxruntime-gpu 1.11.0 for JetPack 4.6 (see the bundle's README)")
        options = {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": cache or "."}
        chosen = [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]
        chosen = [p for p in chosen if (p[0] if isinstance(p, tuple) else p) in available]
    else:
        unknown = [p for p in providers if p not in ort.get_all_providers()]
        if unknown:  # a misspelt name would otherwise be dropped and the run timed on the CPU
            fail("--providers " + " ".join(unknown) + ": onnxruntime knows no such execution provider; this one "
                 "has " + ", ".join(available))
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    started = time.perf_counter()
    session = ort.InferenceSession(model_path, providers=chosen)
    created = time.perf_counter() - started
    dtype = input_type(session)

    def infer(image):
        image = np.asarray(image, dtype=dtype)
        if output != "class":  # an enrollable bundle's trunk: its embedding [batch, D]
            return np.asarray(session.run([output], {"image": image})[0], dtype=np.float32)
        outputs = session.run(["class", "votes"], {"image": image})
        return [int(c) for c in np.asarray(outputs[0]).reshape(-1)]

    return infer, created, "onnxruntime", ort.__version__, ",".join(session.get_providers())


def openvino_runner(model_path, device, output_name="class"):
    try:
        try:
            from openvino.runtime import Core  # 2022.3
        except ImportError:
            from openvino import Core  # newer releases
        import openvino
    except ImportError:
        fail("openvino is not installed: for the NCS2 install OpenVINO 2022.3 from its archive and source its "
             "setupvars.sh (see the bundle's README)")

    core = Core()
    if device != "CPU" and device not in core.available_devices:
        fail("OpenVINO sees no " + device + " device (it sees " + (", ".join(core.available_devices) or "none") +
             "): plug the stick in, install its USB rules (install_NCS_udev_rules.sh, see the bundle's README) and "
             "run setupvars.sh of OpenVINO 2022.3, or use --device CPU")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        # Compute what the graph says: no bf16 (the default on AMX CPUs) and, where the release has
        # it (2024 and later), no on-the-fly int8 quantisation of activations beside int8 weights.
        config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            if "DYNAMIC_QUANTIZATION_GROUP_SIZE" in core.get_property("CPU", "SUPPORTED_PROPERTIES"):
                config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        except Exception:  # a release without the property list: nothing to turn off
            pass
    started = time.perf_counter()
    if model_path.endswith(".blob"):  # compiled for the stick by compile_tool
        import io

        with open(model_path, "rb") as handle:
            compiled = core.import_model(io.BytesIO(handle.read()), device, config)
    else:
        compiled = core.compile_model(model_path, device, config)
    created = time.perf_counter() - started
    request = compiled.create_infer_request()
    output = compiled.output(output_name)

    def infer(image):
        result = request.infer({"image": image})
        if output_name == "nearest":  # the stick's ranking graph: slot indices [batch, k]
            return np.asarray(result[output], dtype=np.int64)
        if output_name != "class":
            return np.asarray(result[output], dtype=np.float32)
        return [int(c) for c in np.asarray(result[output]).reshape(-1)]

    version = getattr(openvino, "__version__", None) or openvino.runtime.get_version()
    return infer, created, "openvino", version, device


def power_mode():
    """The Jetson power mode (nvpmodel -q), or None elsewhere."""
    try:
        output = subprocess.check_output(["nvpmodel", "-q"], stderr=subprocess.STDOUT, timeout=5)
        return output.decode("utf-8", "replace").strip().splitlines()[0]
    except Exception:  # noqa: BLE001 -- no nvpmodel: not a Jetson
        return None


def device_name():
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8", "replace").strip("\x00 \n")
    return platform.node() + " (" + platform.machine() + ")"


# -- enrollable bundles: the trunk's embedding in the runtime, the k-NN vote here in numpy ---------------

class HostBank:
    """A bank ready for the host's k-NN step, prepared once: float64 prototypes (unit rows for cosine)
    and their squared norms, so an inference costs one matrix product and a partial sort."""

    def __init__(self, bank, labels, metric):
        self.original = np.asarray(bank, dtype=np.float64)  # the local-mean vote averages these
        self.metric = metric
        self.labels = np.asarray(labels, dtype=np.int64)
        rows = self.original
        if metric == "cosine":
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        self.rows = rows
        self.norm2 = np.einsum("ij,ij->i", rows, rows)

    def distances(self, queries):
        """[Q, B] distances, in float64, as the engine ranks them."""
        if self.metric == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
            return 1.0 - queries.dot(self.rows.T)
        if self.metric == "manhattan":
            return np.abs(queries[:, None, :] - self.rows[None, :, :]).sum(-1)
        squared = np.maximum(np.einsum("ij,ij->i", queries, queries)[:, None] - 2.0 * queries.dot(self.rows.T) +
                             self.norm2[None, :], 0.0)
        return np.sqrt(squared) if self.metric == "euclidean" else squared


def nearest(d, k):
    """Indices [Q, k] of each row's k smallest distances, nearest first, ties to the smaller index (a
    stable sort's order) -- through a partition, so only the candidates are sorted."""
    if k >= d.shape[1]:
        return np.argsort(d, axis=1, kind="stable")
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    rows = []
    for row, bound in zip(d, kth):
        candidates = np.flatnonzero(row <= bound[0])
        rows.append(candidates[np.argsort(row[candidates], kind="stable")[:k]])
    return np.array(rows, dtype=np.int64).reshape(len(d), k)


def classify(embedding, bank, labels, n_classes, k, metric, vote):
    """Classes [N] of embedded queries: the majority of the k nearest prototypes (ties to the smallest
    class index), or the local-mean vote (the class whose k nearest prototypes' mean is nearest).
    ``bank``: the prototypes [B, D], or a HostBank of them (prepared once for many calls)."""
    prepared = bank if isinstance(bank, HostBank) else HostBank(bank, labels, metric)
    queries = np.asarray(embedding, dtype=np.float64)
    classes = []
    for start in range(0, len(queries), 256):
        chunk = queries[start:start + 256]
        d = prepared.distances(chunk)
        if vote != "local-mean":
            classes.extend(majority(prepared.labels[nearest(d, k)], n_classes))
            continue
        scores = np.full((len(chunk), n_classes), -np.inf)
        for c in range(n_classes):
            members = np.flatnonzero(prepared.labels == c)
            if len(members) == 0:
                continue
            near = members[np.argsort(d[:, members], axis=1, kind="stable")[:, :k]]
            scores[:, c] = -np.linalg.norm(chunk - prepared.original[near].mean(1), axis=1)
        classes.extend(int(c) for c in scores.argmax(1))
    return classes


def majority(neighbour_labels, n_classes):
    """Classes [N] from the labels [N, k] of each query's k nearest prototypes: the most frequent, ties
    to the smallest class index."""
    neighbour_labels = np.asarray(neighbour_labels, dtype=np.int64)
    counts = np.zeros((len(neighbour_labels), n_classes))
    np.add.at(counts, (np.arange(len(neighbour_labels))[:, None], neighbour_labels), 1.0)
    return [int(c) for c in counts.argmax(1)]


# -- the distance step on the stick: the bank as the constants of a ranking graph ------------------------
#
# An NCS2 enrollable bundle also carries ranked-G.xml/.bin: trunk, post-processing and the ranking of a
# bank of CAPACITY slots (scores q . bank_t - bank_norm2, larger is nearer, then TopK k), so the stick
# returns the k nearest slots and the host only looks up their labels. Enrolment rewrites the two
# constants inside the .bin (their offsets are in the manifest); empty slots score -EMPTY_NORM2, below
# every real prototype, and are never among the k nearest while the bank holds at least k prototypes.

EMPTY_NORM2 = 60000.0  # within FP16's range (65504): the stick stores the constants in FP16


def slot_constants(bank, metric, capacity):
    """(bank_t [D, capacity], bank_norm2 [capacity]) of a bank [B, D] of post-processed prototypes.
    Euclidean: -||q - b||^2 + ||q||^2 = q . 2b - ||b||^2 (the 2 folded in, exact); cosine: q . b / |b|."""
    bank = np.asarray(bank, dtype=np.float64)  # at most ``capacity`` rows: enrol and export check that first
    bank_t = np.zeros((bank.shape[1], capacity), dtype=np.float32)
    norm2 = np.full(capacity, EMPTY_NORM2, dtype=np.float32)
    if metric == "cosine":
        bank_t[:, :len(bank)] = (bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)).T
        norm2[:len(bank)] = 0.0
    else:
        bank_t[:, :len(bank)] = 2.0 * bank.T
        norm2[:len(bank)] = (bank ** 2).sum(1)
    return bank_t, norm2


def write_slots(folder, stick, bank, metric, generation):
    """The stick's ranking graph of generation ``generation``: its .xml copied and its .bin with the
    bank's slot constants rewritten in place (each written atomically). Returns their file names."""
    stem = "ranked-" + str(generation)
    with open(os.path.join(folder, stick["weights"]), "rb") as handle:
        weights = bytearray(handle.read())
    bank_t, norm2 = slot_constants(bank, metric, int(stick["capacity"]))
    for name, values in (("bank_t", bank_t), ("bank_norm2", norm2)):
        slot = stick["constants"][name]
        data = values.astype(np.float16).tobytes()
        if len(data) != slot["size"]:
            fail(stick["weights"] + ": the constant " + name + " holds " + str(slot["size"]) + " bytes, not " +
                 str(len(data)) + ": the bundle is damaged; export it again")
        weights[slot["offset"]:slot["offset"] + slot["size"]] = data
    with open(os.path.join(folder, stick["model"]), "rb") as handle:
        xml = handle.read()

    def writer(content):
        def write(path):
            with open(path, "wb") as handle:
                handle.write(content)
        return write

    write_atomically(os.path.join(folder, stem + ".bin"), writer(bytes(weights)))
    write_atomically(os.path.join(folder, stem + ".xml"), writer(xml))
    return {"model": stem + ".xml", "weights": stem + ".bin"}


def stick_infer(folder, manifest, ranking):
    """``infer`` for the distance step on the stick: the graph's k nearest slots, their labels' majority."""
    labels = np.load(os.path.join(folder, manifest["enrollable"]["bank_labels"]))  # the bank itself is in the graph
    n_classes = len(manifest["class_names"])

    def infer(image):
        return majority(labels[np.asarray(ranking(image), dtype=np.int64)], n_classes)

    return infer


def load_bank(folder, manifest):
    spec = manifest["enrollable"]
    bank = np.load(os.path.join(folder, spec["bank"]))
    labels = np.load(os.path.join(folder, spec["bank_labels"]))
    return bank, labels


def enrollable_infer(folder, manifest, embed):
    """``infer`` for an enrollable bundle: the runtime's embedding, then the vote over the bundle's bank."""
    spec = manifest["enrollable"]
    bank = HostBank(*load_bank(folder, manifest), metric=spec["metric"])
    n_classes = len(manifest["class_names"])

    def infer(image):
        return classify(embed(image), bank, None, n_classes, spec["k"], spec["metric"], spec["vote"])

    return infer


def grayscale(image):
    """A decoded PIL image as 8-bit grayscale, by slicenet's rules (slicenet.data.grayscale): 16-bit
    pixels (a PNG's "I" mode in older Pillow) scaled by 255/65535, 32-bit integer or float pixels refused,
    and a transparent image laid over a background that contrasts with its opaque pixels."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N") or (image.mode == "I" and image.format == "PNG"):
        pixels = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        raise ValueError(image.mode + " mode: 32-bit " + ("float" if image.mode == "F" else "integer")
                         + " pixels have no fixed range; save it as an 8- or 16-bit image")
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.float64)[..., 3] / 255.0
        if alpha.min() < 1.0:
            gray = np.asarray(rgba.convert("L"), dtype=np.float64)
            opaque = alpha > 0.5
            background = 255.0 if not opaque.any() or gray[opaque].mean() < 128 else 0.0
            laid = gray * alpha + background * (1.0 - alpha)
            return Image.fromarray(np.clip(np.round(laid), 0, 255).astype(np.uint8), "L")
    return image.convert("L")


def read_image(path, size):
    """A grayscale uint8 image of ``size`` (H, W), decoded and resized as slicenet does (PIL, bilinear)."""
    try:
        from PIL import Image
    except ImportError:
        fail("enrolling images needs Pillow: pip3 install pillow")
    try:
        with Image.open(path) as image:
            gray = grayscale(image)
            if gray.size != (size[1], size[0]):
                gray = gray.resize((size[1], size[0]), getattr(Image, "Resampling", Image).BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        fail("cannot decode image " + path + " (" + str(exc) + "); expected a PNG or JPEG file")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def folder_images(directory, size, per_class):
    if not os.path.isdir(directory):
        fail(directory + " is not a directory; expected one sub-folder of PNG/JPEG images per class")
    names = sorted(n for n in os.listdir(directory) if os.path.isdir(os.path.join(directory, n))
                   and not n.startswith("."))
    if not names:
        fail(directory + " has no class folders; expected one sub-folder of images per class, named as the class")
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(f for f in os.listdir(os.path.join(directory, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            fail("class folder " + os.path.join(directory, name) + " has no PNG/JPEG images; add some or remove it")
        for f in files[:per_class or None]:
            images.append(read_image(os.path.join(directory, name, f), size))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def shifted_copies(images, labels, pixels):
    """The images plus copies shifted by 1..pixels up, down, left and right (zero fill): the bank's
    "virtual samples". slicenet.data.shifted_copies calls this one, so the board's copies are slicenet's."""
    if pixels <= 0:
        return images, labels
    out, height, width = [images], images.shape[1], images.shape[2]
    for step in range(1, pixels + 1):
        for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step)):
            moved = np.zeros_like(images)
            moved[:, max(0, dy): height + min(0, dy), max(0, dx): width + min(0, dx)] = \
                images[:, max(0, -dy): height - max(0, dy), max(0, -dx): width - max(0, dx)]
            out.append(moved)
    return np.concatenate(out), np.tile(labels, len(out))


def embed_all(embed, images, batch):
    rows = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        rows.append(embed(np.ascontiguousarray(chunk[:, None]))[:real])
    return np.concatenate(rows)


def save_array(array):
    def write(path):
        with open(path, "wb") as handle:
            np.save(handle, array)
    return write


def write_atomically(path, write):
    temporary = path + ".tmp"
    write(temporary)
    os.replace(temporary, path)


def enrol_main(argv):
    """``run_engine.py enrol BUNDLE DIR``: the images of DIR's class folders become prototypes of the
    bundle's bank (new classes, or more of existing ones). The new bank is written under a new name and the
    manifest, which names it, is replaced last: the bundle is the old one or the new one, never half."""
    parser = argparse.ArgumentParser(prog="run_engine.py enrol", description=enrol_main.__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images", help="a folder of class sub-folders (named as the classes) of PNG/JPEG images")
    parser.add_argument("--per-class", type=int, default=0, help="images per class (default 0: all)")
    parser.add_argument("--new-only", action="store_true", help="a folder named as an existing class is an error")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                        help="what runs the trunk (default: openvino for an IR, onnxruntime for ONNX)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU or MYRIAD")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.bundle)
    if "enrollable" not in manifest:
        fail(args.bundle + " was not exported with --enrollable: its bank is inside the graph; re-export it with "
             "slicenet export RUN --target T --enrollable")
    if args.per_class < 0:
        fail("--per-class must be 0 (all) or positive")
    check_files(args.bundle, manifest)
    spec = manifest["enrollable"]
    size = tuple(manifest["input"]["shape"][2:])
    images, labels, names = folder_images(args.images, size, args.per_class)
    existing = [n for n in names if n in manifest["class_names"]]
    if args.new_only and existing:
        fail("class " + existing[0] + " already exists in the bundle; rename the folder or drop --new-only")
    n_images = len(labels)
    images, labels = shifted_copies(images, labels, int(spec.get("bank_shifts", 0)))
    keep = int(spec.get("prototypes_per_class", 0))  # a compact bank: slicenet enrol k-means-reduces to this many
    copies = len(labels) // n_images  # each image and its shifted copies
    most = int(np.bincount(labels).max())
    if keep and most > keep:
        fewer = ("enrol at most " + str(keep // copies) + " images per class (--per-class), or "
                 if keep >= copies else "")
        fail("this compact engine keeps " + str(keep) + " prototypes per class and a class here would bring " +
             str(most) + " (each image with its " + str(copies - 1) + " shifted copies): " + fewer +
             "enrol on the host with slicenet enrol, which k-means-reduces each class to " + str(keep))
    order = np.argsort(labels, kind="stable")  # class by class, as slicenet enrol appends them
    images, labels = images[order], labels[order]
    bank, bank_labels = load_bank(args.bundle, manifest)
    stick = spec.get("stick")
    if stick and len(bank) + len(images) > int(stick["capacity"]):
        fail("the enrolled bank would hold " + str(len(bank) + len(images)) + " prototypes but the stick's graph "
             "has " + str(stick["capacity"]) + " slots: enrol fewer images (--per-class) or re-export with a larger "
             "--capacity")
    runtime = args.runtime or ("openvino" if spec["model"].endswith(".xml") else "onnxruntime")
    embed = make_embed(args.bundle, manifest, runtime, args.device)
    points = embed_all(embed, images, int(manifest["input"]["shape"][0]))
    class_names = list(manifest["class_names"]) + [n for n in names if n not in manifest["class_names"]]
    new_labels = np.array([class_names.index(names[i]) for i in labels], dtype=np.int64)
    bank = np.concatenate([bank, points.astype(bank.dtype)])
    bank_labels = np.concatenate([bank_labels, new_labels])
    counts = np.bincount(bank_labels, minlength=len(class_names))
    if spec["vote"] == "local-mean" and counts.min() < spec["k"]:
        fail("the local-mean vote needs k=" + str(spec["k"]) + " prototypes of every class; enrol at least that many "
             "images per class")
    generation = int(spec.get("generation", 0)) + 1
    files = {"bank": "bank-" + str(generation) + ".npy", "bank_labels": "bank_labels-" + str(generation) + ".npy"}
    old = [spec["bank"], spec["bank_labels"]]
    if stick:  # the stick's ranking graph holds the bank too: its constants rewritten under a new name
        old += [stick["model"], stick["weights"]]
        stick.update(write_slots(args.bundle, stick, bank, spec["metric"], generation))
        files.update(stick_model=stick["model"], stick_weights=stick["weights"])
    write_atomically(os.path.join(args.bundle, files["bank"]), save_array(bank))
    write_atomically(os.path.join(args.bundle, files["bank_labels"]), save_array(bank_labels))
    samples = np.load(os.path.join(args.bundle, manifest["samples"]["file"]))
    expected = classify(embed_all(embed, samples[:, 0], int(manifest["input"]["shape"][0])), bank, bank_labels,
                        len(class_names), spec["k"], spec["metric"], spec["vote"])
    spec.update(bank=files["bank"], bank_labels=files["bank_labels"], generation=generation)
    manifest["class_names"] = class_names
    manifest["samples"]["expected_classes"] = expected
    manifest["samples"].pop("expected_votes", None)
    manifest.setdefault("enrolled", []).append({"folder": os.path.abspath(args.images), "per_class": args.per_class,
                                                "classes": {n: int((labels == i).sum()) for i, n in enumerate(names)}})
    for name in old:
        manifest["sha256"].pop(name, None)
    for name in files.values():
        with open(os.path.join(args.bundle, name), "rb") as handle:
            manifest["sha256"][name] = hashlib.sha256(handle.read()).hexdigest()

    def write_manifest(path):
        with open(path, "w") as handle:
            json.dump(manifest, handle, indent=2)

    write_atomically(os.path.join(args.bundle, "manifest.json"), write_manifest)
    for name in old:
        if name not in files.values() and os.path.exists(os.path.join(args.bundle, name)):
            os.remove(os.path.join(args.bundle, name))
    print("enrolled " + ", ".join(n + " (" + str(int((labels == i).sum())) + ")" for i, n in enumerate(names)) +
          "; " + str(len(bank)) + " prototypes, " + str(len(class_names)) + " classes -> " + args.bundle)
    return 0


def read_manifest(bundle):
    manifest_path = os.path.join(bundle, "manifest.json")
    if not os.path.isfile(manifest_path):
        fail("no manifest.json in " + bundle + ": pass the exported bundle folder")
    with open(manifest_path) as handle:
        return json.load(handle)


def make_embed(bundle, manifest, runtime, device):
    """The runtime's embedding function of an enrollable bundle's trunk model."""
    spec = manifest["enrollable"]
    path = os.path.join(bundle, spec["model"])
    if runtime == "openvino":
        return openvino_runner(path, device, output_name=spec["output"])[0]
    return onnxruntime_runner(path, ["CPUExecutionProvider"], output=spec["output"])[0]


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["enrol"]:
        return enrol_main(argv[1:])
    if argv[:1] == ["run"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--runtime", choices=["onnxruntime", "tensorrt", "openvino"], required=True,
                        help="tensorrt: onnxruntime-gpu's TensorRT execution provider (the Jetson Nano)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16",
                        help="tensorrt: the precision TensorRT builds the engine in (default fp16, as trtexec --fp16)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU or MYRIAD")
    parser.add_argument("--providers", nargs="+", default=["CUDAExecutionProvider", "CPUExecutionProvider"])
    parser.add_argument("--model", help="model file inside the bundle (default: the manifest's)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--out", default="result.json")
    parser.add_argument("--board", help="name of the board for the result (default: read from the system)")
    parser.add_argument("--distance", choices=["host", "stick"], default="host",
                        help="--enrollable NCS2 bundles: the k-NN distances in numpy on this host (default), or on "
                             "the stick (its ranking graph, the bank as its constants; only the label vote here)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        fail(f"--iterations must be at least 1 and --warmup at least 0, got {args.iterations} and {args.warmup}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        fail("--out " + args.out + ": its folder does not exist; create it or choose another path")

    manifest = read_manifest(args.bundle)
    check_files(args.bundle, manifest)
    enrollable = "enrollable" in manifest and not args.model
    stick = manifest["enrollable"].get("stick") if enrollable and args.distance == "stick" else None
    if args.distance == "stick" and not stick:
        fail("--distance stick needs an NCS2 bundle exported with --enrollable and a majority vote (its "
             "ranked-G.xml); this one has " + ("none" if enrollable else "no bank outside the graph"))
    if stick and args.runtime != "openvino":
        fail("--distance stick runs the stick's ranking graph: use --runtime openvino")
    model_path = os.path.join(args.bundle, stick["model"] if stick else manifest["enrollable"]["model"] if enrollable
                              else args.model or manifest["model"])
    samples = np.load(os.path.join(args.bundle, manifest["samples"]["file"]))
    expected = manifest["samples"]["expected_classes"]
    if samples.ndim != 4 or len(samples) != len(expected):
        fail("samples.npy does not match the manifest's expected classes")
    batch = int(manifest["input"]["shape"][0])

    def chunk(start):
        """``batch`` samples from ``start``, wrapping around the shipped samples."""
        return samples[[(start + i) % len(samples) for i in range(batch)]]

    if not os.path.isfile(model_path):
        fail(args.model + " is not in the bundle: compile it first (see the bundle's README)" if args.model
             else manifest["model"] + " is missing from the bundle; copy the whole folder")
    output = stick["output"] if stick else manifest["enrollable"]["output"] if enrollable else "class"
    if args.runtime in ("onnxruntime", "tensorrt"):
        infer, created, runtime, version, where = onnxruntime_runner(
            model_path, args.providers, tensorrt=args.runtime == "tensorrt", fp16=args.precision == "fp16",
            cache=args.bundle, output=output)
        if args.runtime == "tensorrt":
            runtime = "onnxruntime-tensorrt"
    else:
        infer, created, runtime, version, where = openvino_runner(model_path, args.device, output_name=output)
    if stick:  # trunk and distances in the runtime, the k nearest slots' labels counted here
        infer = stick_infer(args.bundle, manifest, infer)
        runtime += "+numpy-vote"
    elif enrollable:  # the trunk in the runtime, the vote over the (enrolled) bank in numpy on this host
        infer = enrollable_infer(args.bundle, manifest, infer)
        runtime += "+numpy-knn"
    if args.runtime == "tensorrt":
        precision = args.precision
    elif where == "MYRIAD" or manifest["target"] == "ncs2":
        precision = "fp16"
    else:
        precision = "fp32"
    board = "MYRIAD" in where or ("Jetson" in device_name() and ("CUDA" in where or "Tensorrt" in where))

    started = time.perf_counter()
    predicted = infer(chunk(0))
    first = time.perf_counter() - started
    for start in range(batch, len(samples), batch):
        predicted += infer(chunk(start))
    matches = sum(int(p == e) for p, e in zip(predicted[:len(expected)], expected))
    for i in range(args.warmup):
        infer(chunk(i * batch))
    latencies = []
    timed_start = time.perf_counter()
    for i in range(args.iterations):
        image = chunk(i * batch)
        t0 = time.perf_counter()
        infer(image)
        latencies.append((time.perf_counter() - t0) * 1000.0)
    duration = time.perf_counter() - timed_start
    result = {
        "format": "slicenet-board-result/2",
        "bundle": os.path.basename(manifest["run"].rstrip("/")) + "/" + os.path.basename(os.path.abspath(args.bundle)),
        "target": manifest["target"],
        "model": os.path.basename(model_path),
        "board": args.board or ("Intel Neural Compute Stick 2 (MYRIAD) on " + device_name() if "MYRIAD" in where
                                else device_name()),
        "measured_on": "board" if board else "host",
        "runtime": runtime,
        "runtime_version": str(version),
        "device": where,
        "precision": precision,
        "distance_step": ("stick" if stick else "host") if enrollable else "graph",
        "power_mode": power_mode(),
        "python": platform.python_version(),
        "batch": batch,
        "count": args.iterations,
        "duration_s": duration,
        "session_creation_ms": created * 1000.0,
        "first_inference_ms": first * 1000.0,
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": float(np.mean(latencies)),
        "min_ms": float(np.min(latencies)),
        "max_ms": float(np.max(latencies)),
        "throughput_fps": args.iterations * batch / duration,
        "samples": len(expected),
        "samples_matching_expected": matches,
    }
    with open(args.out + ".tmp", "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print("{}: p50 {:.3f} ms, p99 {:.3f} ms, {:.0f} inferences/s; {}/{} samples match -> {}".format(
        result["bundle"], result["p50_ms"], result["p99_ms"], result["throughput_fps"], matches, len(expected),
        args.out))
    if matches != len(expected):
        message = f"{len(expected) - matches} of {len(expected)} sample predictions differ from the expected ones"
        if result["precision"] == "fp32":
            fail(message)
        sys.stderr.write("run_engine: warning: " + message + " (FP16: see the manifest's verification for the "
                         "accuracy change FP16 weights bring)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
