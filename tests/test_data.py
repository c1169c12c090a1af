import numpy as np
import pytest
from PIL import Image

from slicenet.data import load_dataset, load_image, read_idx
from slicenet.errors import InputError
from slicenet.fitness import stratified_split

from .conftest import write_idx


def test_mnist_5k_is_the_reference_split():
    data = load_dataset("mnist")
    assert data.x_train.shape == (4000, 28, 28) and data.x_test.shape == (1000, 28, 28)
    assert data.x_train.dtype == np.uint8
    assert np.bincount(data.y_train).tolist() == [400] * 10  # stratified
    assert np.bincount(data.y_test).tolist() == [100] * 10
    again = load_dataset("mnist")
    assert np.array_equal(again.x_test, data.x_test)  # fixed split


def test_digits():
    data = load_dataset("digits")
    assert data.image_size == (8, 8) and data.n_classes == 10
    assert len(data.y_train) + len(data.y_test) == 1797 and data.x_train.max() == 255


def test_idx_directory_gz_and_raw(idx_dir):
    data = load_dataset(f"mnist:{idx_dir}")
    assert data.x_train.shape == (60, 28, 28) and data.y_test.shape == (20,)
    assert data.name == "mnist-full"


def test_truncated_idx_is_rejected(idx_dir):
    path = idx_dir / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_dataset(f"mnist:{idx_dir}")


def test_corrupt_gzip_and_bad_magic(tmp_path):
    bad_gz = tmp_path / "x.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="cannot read IDX"):
        read_idx(bad_gz)
    bad_magic = tmp_path / "y"
    bad_magic.write_bytes(b"\x12\x34\x56\x78" + bytes(10))
    with pytest.raises(InputError, match="bad magic"):
        read_idx(bad_magic)


def test_missing_idx_file_names_it(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte"):
        load_dataset(f"mnist:{idx_dir}")


def test_fashion_mnist_missing_dir_says_how_to_install(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}")


def test_mismatched_counts(idx_dir):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(InputError, match="do not match"):
        load_dataset(f"mnist:{idx_dir}")


def _folder(tmp_path, counts):
    for name, count in counts.items():
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(np.full((40, 30, 3), 20 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_folder_dataset(tmp_path):
    data = load_dataset(f"folder:{_folder(tmp_path, {'cat': 5, 'dog': 5})}", image_size=16)
    assert data.class_names == ("cat", "dog") and data.image_size == (16, 16)
    assert len(data.y_train) == 8 and len(data.y_test) == 2


def test_a_folder_of_two_images_a_class_holds_one_of_each_out(tmp_path):
    # 20 % of 6 images is 2 test images for 3 classes: a stratified split needs one a class (it raised)
    data = load_dataset(f"folder:{_folder(tmp_path, {'a': 2, 'b': 2, 'c': 2})}", image_size=8)
    assert sorted(data.y_test) == [0, 1, 2] and sorted(data.y_train) == [0, 1, 2]


def test_empty_class_folder(tmp_path):
    with pytest.raises(InputError, match="has 0 PNG/JPEG image"):
        load_dataset(f"folder:{_folder(tmp_path, {'cat': 5, 'dog': 0})}")


def test_undecodable_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(path, (28, 28))


def test_images_in_any_depth_or_transparency_decode_to_what_they_show(tmp_path):
    stroke = np.zeros((8, 8), bool)
    stroke[2:6, 3:5] = True
    cases = {}
    deep = np.where(stroke, 65535, 0).astype(np.uint16)  # 16-bit: Pillow's convert("L") would clip it to white
    cases["deep.png"] = (Image.fromarray(deep), np.where(stroke, 255, 0))
    mid = np.full((8, 8), 32896, np.uint16)  # 128 x 257
    cases["mid.png"] = (Image.fromarray(mid), np.full((8, 8), 128))
    clear = np.zeros((8, 8, 4), np.uint8)
    clear[stroke] = (0, 0, 0, 255)  # a dark drawing on a transparent canvas: dark on white paper
    cases["dark.png"] = (Image.fromarray(clear, "RGBA"), np.where(stroke, 0, 255))
    clear = np.zeros((8, 8, 4), np.uint8)
    clear[stroke] = (255, 255, 255, 255)  # a light one: light on black
    cases["light.png"] = (Image.fromarray(clear, "RGBA"), np.where(stroke, 255, 0))
    opaque = np.dstack([np.where(stroke, 200, 10).astype(np.uint8)] * 3 + [np.full((8, 8), 255, np.uint8)])
    cases["opaque.png"] = (Image.fromarray(opaque, "RGBA"), np.where(stroke, 200, 10))  # opaque: as before
    from slicenet.boards.run_engine import read_image as read_on_board  # devices/run_engine.py's reader
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name)
        np.testing.assert_array_equal(load_image(tmp_path / name, (8, 8)), expected, err_msg=name)
        np.testing.assert_array_equal(read_on_board(str(tmp_path / name), (8, 8)), expected, err_msg=name)
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(InputError, match="32-bit float pixels have no fixed range"):
        load_image(tmp_path / "float.tiff", (8, 8))


def test_unknown_dataset():
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("cifar")


def test_stratified_split_keeps_every_class():
    labels = np.repeat(np.arange(5), 20)
    fit, val = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [5] * 5


def test_shifted_copies():
    from slicenet.data import shifted_copies

    images = np.zeros((2, 5, 5), dtype=np.uint8)
    images[:, 2, 2] = 255
    out, labels = shifted_copies(images, np.array([3, 4]), 1)
    assert out.shape == (10, 5, 5) and labels.tolist() == [3, 4] * 5
    assert out[2, 3, 2] == 255 and out[4, 1, 2] == 255 and out[6, 2, 3] == 255 and out[8, 2, 1] == 255
    assert shifted_copies(images, np.array([3, 4]), 0)[0] is images
