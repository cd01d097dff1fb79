"""Tests for poisonlab.data: loaders on the real files, error paths on damaged copies, splits and Dataset."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.data import (
    CIFAR10_CLASSES,
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist,
    load_npz,
    save_cifar_batches,
    save_idx,
    save_image_folder,
    save_npz,
    stratified_subset,
    train_test_split,
)
from poisonlab.errors import DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_TRAIN_COUNTS = [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
CIFAR_TEST_COUNTS = [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
RECORD = 3073


@pytest.fixture(scope="module")
def mnist_raw(data_root) -> Path:
    return data_root / "MNIST" / "raw"


@pytest.fixture(scope="module")
def cifar_dir(data_root) -> Path:
    return data_root / "cifar-10-subset-batches-bin"


@pytest.fixture(scope="module")
def mnist_test_bytes(mnist_raw) -> tuple[bytes, bytes]:
    """Uncompressed (images, labels) bytes of the MNIST test set."""
    images = gzip.decompress((mnist_raw / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist_raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return images, labels


@pytest.fixture(scope="module")
def mnist_test(mnist_raw) -> Dataset:
    return load_mnist(mnist_raw, "test")


def raises_data_error(fn, *args, match: str, **kwargs) -> str:
    """Call fn, assert it raises a DataError whose one-line message contains ``match``; return the message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


def write_mnist(
    folder: Path, images: bytes, labels: bytes, *, gz: bool, stem: str = "t10k"
) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    img = folder / f"{stem}-images-idx3-ubyte{suffix}"
    lab = folder / f"{stem}-labels-idx1-ubyte{suffix}"
    img.write_bytes(gzip.compress(images, compresslevel=1) if gz else images)
    lab.write_bytes(gzip.compress(labels, compresslevel=1) if gz else labels)
    return img, lab


# ----------------------------------------------------------------------------------------------------------
# Real data


def test_digits():
    d = load_digits()
    assert len(d) == 1797
    assert d.input_shape == (1, 8, 8)
    assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
    assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
    assert d.num_classes == 10 and d.classes == tuple(str(i) for i in range(10))
    assert d.class_counts().sum() == 1797


def test_mnist_train(mnist_raw):
    d = load_mnist(mnist_raw, "train")
    assert len(d) == 60000 and d.x.shape == (60000, 1, 28, 28)
    assert d.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert d.x.dtype == torch.float32 and float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0


def test_mnist_test(mnist_test):
    assert len(mnist_test) == 10000 and mnist_test.input_shape == (1, 28, 28)
    assert mnist_test.class_counts().tolist() == MNIST_TEST_COUNTS
    assert mnist_test.classes == tuple(str(i) for i in range(10))


@pytest.mark.parametrize("sub", ["", "MNIST", "MNIST/raw"])
def test_mnist_root_layouts(data_root, mnist_test, sub):
    d = load_mnist(data_root / sub if sub else data_root, split="test")
    assert torch.equal(d.y, mnist_test.y)


def test_mnist_uncompressed_equals_gz(tmp_path, mnist_test, mnist_test_bytes):
    write_mnist(tmp_path, *mnist_test_bytes, gz=False)
    d = load_mnist(tmp_path, "test")
    assert torch.equal(d.x, mnist_test.x) and torch.equal(d.y, mnist_test.y)


def test_cifar_subset(cifar_dir, data_root):
    train = load_cifar10(cifar_dir, "train")
    assert len(train) == 4000 and train.x.shape == (4000, 3, 32, 32)
    assert train.class_counts().tolist() == CIFAR_TRAIN_COUNTS
    assert train.classes[0] == "airplane" and train.classes == CIFAR10_CLASSES
    test = load_cifar10(data_root, "test")  # parent folder holding cifar-10-subset-batches-bin/
    assert len(test) == 1000 and test.input_shape == (3, 32, 32)
    assert test.class_counts().tolist() == CIFAR_TEST_COUNTS
    # planar RGB decoding: pixel (c, h, w) of record 0 is byte 1 + c*1024 + h*32 + w
    raw = np.frombuffer((cifar_dir / "test_batch.bin").read_bytes()[:RECORD], dtype=np.uint8)
    assert int(test.y[0]) == raw[0]
    assert round(float(test.x[0, 2, 5, 7]) * 255) == raw[1 + 2 * 1024 + 5 * 32 + 7]


def test_cifar_batches_sorted_by_number_and_meta_fallback(tmp_path, cifar_dir):
    """Train reads every data_batch_N.bin in numeric order (as the 5-batch official release needs)."""
    records = (cifar_dir / "data_batch_1.bin").read_bytes()
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    chunks = {
        1: records[: 3 * RECORD],
        2: records[3 * RECORD : 5 * RECORD],
        10: records[5 * RECORD : 6 * RECORD],
    }
    for number, chunk in chunks.items():
        (folder / f"data_batch_{number}.bin").write_bytes(chunk)
    d = load_cifar10(tmp_path, "train")  # no batches.meta.txt: the official names
    assert len(d) == 6 and d.classes == CIFAR10_CLASSES
    expected = np.frombuffer(records[: 6 * RECORD], dtype=np.uint8).reshape(6, RECORD)[:, 0]
    assert d.y.tolist() == expected.tolist()


# ----------------------------------------------------------------------------------------------------------
# Damaged files


def test_mnist_truncated_gz(tmp_path, mnist_raw):
    shutil.copy(mnist_raw / "t10k-labels-idx1-ubyte.gz", tmp_path)
    src = (mnist_raw / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(src[: len(src) // 2])
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte.gz")


def test_mnist_truncated_content(tmp_path, mnist_test_bytes):
    images, labels = mnist_test_bytes
    write_mnist(tmp_path, images[: 16 + 784 * 100 + 5], labels, gz=True)
    msg = raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte.gz")
    assert "truncated: expected 7840000 bytes, found 78405" in msg
    write_mnist(tmp_path, images, labels[:-1], gz=False)
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-labels-idx1-ubyte: truncated")


def test_mnist_corrupt_gzip(tmp_path, mnist_raw):
    shutil.copy(mnist_raw / "t10k-labels-idx1-ubyte.gz", tmp_path)
    src = bytearray((mnist_raw / "t10k-images-idx3-ubyte.gz").read_bytes())
    src[1000:1200] = bytes(200)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(src))
    msg = raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte.gz")
    assert "corrupt gzip" in msg
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte.gz: corrupt gzip")


def test_mnist_bad_magic(tmp_path, mnist_test_bytes):
    images, labels = mnist_test_bytes
    write_mnist(tmp_path, (2049).to_bytes(4, "big") + images[4:], labels, gz=False)
    msg = raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte")
    assert "bad magic number 2049" in msg
    write_mnist(tmp_path, images, images, gz=False)  # an images file where the labels belong
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-labels-idx1-ubyte: bad magic number 2051")


def test_mnist_missing_files(tmp_path, mnist_raw):
    raises_data_error(load_mnist, tmp_path / "nowhere", match="nowhere")
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte")
    shutil.copy(mnist_raw / "t10k-images-idx3-ubyte.gz", tmp_path)
    raises_data_error(load_mnist, tmp_path, "test", match="t10k-labels-idx1-ubyte.gz: file not found")
    raises_data_error(load_mnist, tmp_path, "validation", match="unknown split")


def test_mnist_label_out_of_range_and_count_mismatch(tmp_path, mnist_test_bytes):
    images, labels = mnist_test_bytes
    bad = bytearray(labels)
    bad[8 + 17] = 12
    write_mnist(tmp_path, images, bytes(bad), gz=False)
    msg = raises_data_error(load_mnist, tmp_path, "test", match="t10k-labels-idx1-ubyte")
    assert "label 12 at index 17" in msg
    few = (2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + labels[8:13]
    write_mnist(tmp_path, images, few, gz=False)
    msg = raises_data_error(load_mnist, tmp_path, "test", match="t10k-images-idx3-ubyte")
    assert "10000 images" in msg and "5 labels" in msg


def test_cifar_truncated_and_bad_label(tmp_path, cifar_dir):
    src = (cifar_dir / "test_batch.bin").read_bytes()
    shutil.copy(cifar_dir / "batches.meta.txt", tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(src[: 5 * RECORD + 100])
    msg = raises_data_error(load_cifar10, tmp_path, "test", match="test_batch.bin")
    assert "truncated" in msg
    bad = bytearray(src[: 4 * RECORD])
    bad[2 * RECORD] = 10
    (tmp_path / "test_batch.bin").write_bytes(bytes(bad))
    msg = raises_data_error(load_cifar10, tmp_path, "test", match="test_batch.bin")
    assert "label 10 in record 2" in msg
    raises_data_error(load_cifar10, tmp_path, "train", match="data_batch_*.bin")


# ----------------------------------------------------------------------------------------------------------
# Image folders and .npz


def make_folder(
    root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "L"
) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays: dict[str, list[np.ndarray]] = {}
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        arrays[cls] = []
        for i, (h, w) in enumerate(shapes):
            shape = (h, w) if mode == "L" else (h, w, 3)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / cls / f"img{i}.png")
            arrays[cls].append(arr)
    return arrays


def test_image_folder_round_trip(tmp_path):
    arrays = make_folder(tmp_path / "set", {"cat": [(6, 5)] * 2, "ant": [(6, 5)] * 3})
    (tmp_path / "set" / "ant" / "notes.txt").write_text("ignored")
    d = load_image_folder(tmp_path / "set")
    assert d.classes == ("ant", "cat") and len(d) == 5 and d.input_shape == (1, 6, 5)
    assert d.class_counts().tolist() == [3, 2]
    expected = torch.from_numpy(np.stack(arrays["ant"] + arrays["cat"]).astype(np.float32) / 255).unsqueeze(1)
    assert torch.allclose(d.x, expected) and d.y.tolist() == [0, 0, 0, 1, 1]
    rgb = load_image_folder(tmp_path / "set", grayscale=False)
    assert rgb.input_shape == (3, 6, 5) and torch.allclose(rgb.x[:, :1], expected)


def test_image_folder_rgb_size_and_errors(tmp_path):
    make_folder(tmp_path / "rgb", {"a": [(4, 4), (4, 4)], "b": [(4, 4)]}, mode="RGB")
    d = load_image_folder(tmp_path / "rgb")
    assert d.input_shape == (3, 4, 4)
    assert load_image_folder(tmp_path / "rgb", grayscale=True).input_shape == (1, 4, 4)

    make_folder(tmp_path / "mixed", {"a": [(6, 5), (6, 5)], "b": [(7, 5)]})
    raises_data_error(load_image_folder, tmp_path / "mixed", match=str(Path("b") / "img0.png"))
    resized = load_image_folder(tmp_path / "mixed", size=(8, 9))
    assert resized.input_shape == (1, 8, 9) and len(resized) == 3

    (tmp_path / "mixed" / "b" / "broken.png").write_bytes(b"not a png")
    msg = raises_data_error(load_image_folder, tmp_path / "mixed", size=(8, 9), match="broken.png")
    assert "cannot decode" in msg
    (tmp_path / "empty").mkdir()
    raises_data_error(load_image_folder, tmp_path / "empty", match="empty")


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)  # (N, H, W, C)
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    np.savez(tmp_path / "a.npz", x=x, y=y, classes=np.array(["red", "green", "blue"]))
    d = load_npz(tmp_path / "a.npz")
    assert d.input_shape == (3, 5, 4) and d.classes == ("red", "green", "blue") and d.name == "a"
    assert torch.allclose(d.x, torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255))
    assert d.y.tolist() == y.tolist()

    xf = rng.random((4, 1, 6, 6)).astype(np.float64)  # (N, C, H, W) float
    np.savez_compressed(tmp_path / "b.npz", x=xf, y=np.array([0, 3, 1, 3], dtype=np.int32))
    d = load_npz(tmp_path / "b.npz")
    assert d.input_shape == (1, 6, 6) and d.x.dtype == torch.float32 and d.num_classes == 4
    assert torch.allclose(d.x, torch.from_numpy(xf).float())
    np.savez(tmp_path / "c.npz", x=x[..., 0], y=y)  # (N, H, W)
    assert load_npz(tmp_path / "c.npz").input_shape == (1, 5, 4)
    assert len(load_dataset("npz", tmp_path / "c.npz")) == 7


def test_npz_rejects_bad_arrays(tmp_path):
    x = np.zeros((3, 4, 4), dtype=np.float32)
    y = np.array([0, 1, 1])
    nan = x.copy()
    nan[1, 2, 3] = np.nan
    cases = {
        "nan": (dict(x=nan, y=y), "NaN"),
        "ndim": (dict(x=np.zeros((3, 16), dtype=np.float32), y=y), "2-D"),
        "rows": (dict(x=x, y=y[:2]), "3 rows but y has 2"),
        "neg": (dict(x=x, y=np.array([0, -1, 1])), "negative label -1"),
        "range": (dict(x=x + 2, y=y), "[0, 1]"),
        "nokey": (dict(x=x), "missing array 'y'"),
        "classes": (dict(x=x, y=y, classes=np.array(["only"])), "out of range"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        msg = raises_data_error(load_npz, tmp_path / f"{name}.npz", match=f"{name}.npz")
        assert match in msg, (name, msg)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    raises_data_error(load_npz, tmp_path / "junk.npz", match="junk.npz: not an .npz archive")
    np.save(tmp_path / "plain.npy", x)
    raises_data_error(load_npz, tmp_path / "plain.npy", match="plain.npy: not an .npz archive")
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 3, dtype=object), y=y)
    raises_data_error(load_npz, tmp_path / "obj.npz", match="obj.npz: cannot read")
    raises_data_error(load_npz, tmp_path / "absent.npz", match="absent.npz: file not found")


# ----------------------------------------------------------------------------------------------------------
# Dataset, dispatch and splits


def test_dataset_validation():
    x = torch.rand(4, 1, 2, 2)
    y = torch.tensor([0, 1, 1, 0])
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    for kwargs, match in [
        (dict(x=bad_x, y=y), "NaN"),
        (dict(x=x * 3, y=y), "[0, 1]"),
        (dict(x=x[0], y=y), "4-D"),
        (dict(x=x, y=y[:3]), "rows"),
        (dict(x=x, y=y + 1), "label 2 out of range"),
        (dict(x=x, y=y.float()), "integer"),
    ]:
        raises_data_error(Dataset, **kwargs, classes=("a", "b"), name="toy", match="toy")
        raises_data_error(Dataset, **kwargs, classes=("a", "b"), name="toy", match=match)


def test_subset_copies_and_helpers():
    d = load_digits()
    s = d.subset([3, 1, 4])
    assert len(s) == 3 and torch.equal(s.x[1], d.x[1]) and s.y.tolist() == d.y[[3, 1, 4]].tolist()
    before_x, before_y = d.x[3].clone(), int(d.y[3])
    s.x.zero_()
    s.y.fill_(9 if before_y != 9 else 0)
    assert torch.equal(d.x[3], before_x) and int(d.y[3]) == before_y
    mask = d.y == 0
    zeros = d.subset(mask)
    assert len(zeros) == int(mask.sum()) and set(zeros.y.tolist()) == {0}
    assert len(d.subset(np.arange(10))) == 10 and len(d.subset([])) == 0
    raises_data_error(d.subset, [len(d)], match="out of range")
    raises_data_error(d.subset, torch.ones(5, dtype=torch.bool), match="bool mask")

    relabelled = d.with_labels(torch.zeros(len(d), dtype=torch.int64))
    assert relabelled.class_counts().tolist() == [len(d)] + [0] * 9
    assert relabelled.x.data_ptr() != d.x.data_ptr() and torch.equal(relabelled.x, d.x)
    raises_data_error(d.with_labels, np.full(len(d), 10), match="label 10 out of range")
    assert d.to("cpu").input_shape == (1, 8, 8)


def test_load_dataset_dispatch(monkeypatch, data_root):
    assert len(load_dataset("digits")) == 1797
    msg = raises_data_error(load_dataset, "imagenet", match="unknown dataset")
    assert all(name in msg for name in ("digits", "mnist", "cifar10", "folder", "npz"))
    raises_data_error(load_dataset, "digits", split="test", match="train_test_split")
    monkeypatch.setenv("POISONLAB_DATA", str(data_root))
    assert len(load_dataset("cifar10", split="test")) == 1000
    monkeypatch.delenv("POISONLAB_DATA")
    raises_data_error(load_dataset, "mnist", match="POISONLAB_DATA")


def test_train_test_split_stratified_and_seeded():
    d = load_digits()
    train, test = train_test_split(d, 0.25, seed=0)
    assert len(train) + len(test) == len(d) and len(test) == round(0.25 * len(d))
    assert np.all(np.abs(test.class_counts() - 0.25 * d.class_counts()) <= 1)
    assert np.array_equal(train.class_counts() + test.class_counts(), d.class_counts())
    # disjoint and covering: tag each row with its index in x and recover it from both parts
    n = len(d)
    tagged = Dataset(torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1), d.y, d.classes)
    parts = train_test_split(tagged, 0.25, seed=0)
    rows = [torch.round(part.x.flatten() * n).long() for part in parts]
    assert sorted(torch.cat(rows).tolist()) == list(range(n))
    assert torch.equal(d.y[rows[1]], test.y)
    again_train, again_test = train_test_split(d, 0.25, seed=0)
    assert torch.equal(again_test.x, test.x) and torch.equal(again_train.y, train.y)
    _, other = train_test_split(d, 0.25, seed=1)
    assert not torch.equal(other.x, test.x)
    raises_data_error(train_test_split, d, 1.5, match="test_fraction")


def test_stratified_subset_counts():
    d = load_digits()
    counts = d.class_counts()
    s = stratified_subset(d, 100, seed=3)
    assert len(s) == 100 and s.class_counts().tolist() == [10] * 10
    s = stratified_subset(d, 53, seed=3)
    assert len(s) == 53 and np.all(np.abs(s.class_counts() - 53 * counts / counts.sum()) < 1)
    assert torch.equal(stratified_subset(d, 53, seed=3).x, s.x)
    assert not torch.equal(stratified_subset(d, 53, seed=4).x, s.x)
    assert len(stratified_subset(d, len(d))) == len(d)
    raises_data_error(stratified_subset, d, len(d) + 1, match="cannot take")


def test_replace_rows_returns_a_copy_with_only_those_rows_changed():
    data = load_digits()
    idx = torch.tensor([3, 10, 42])
    new = torch.full((3, *data.input_shape), 0.5)
    before = data.x.clone(), data.y.clone()
    out = data.replace_rows(idx, new, 7)
    assert torch.equal(data.x, before[0]) and torch.equal(data.y, before[1])  # the input is kept
    assert torch.equal(out.x[idx], new) and (out.y[idx] == 7).all()
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(out.x[keep], data.x[keep]) and torch.equal(out.y[keep], data.y[keep])
    assert torch.equal(data.replace_rows(idx, new).y, data.y)  # labels kept without y


# ----------------------------------------------------------------------------------------------------------
# Writers: each one read back by its loader, exactly (uint8 images)


def uint8_dataset(shape, classes, n=23, seed=0, grouped=False) -> Dataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    y = np.sort(y) if grouped else y
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return Dataset(torch.from_numpy(x.astype(np.float32) / 255), torch.from_numpy(y), classes)


def same(a: Dataset, b: Dataset) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.classes == b.classes


@pytest.mark.parametrize("uint8", [True, False])
def test_save_npz_round_trips(tmp_path, uint8):
    d = uint8_dataset((3, 5, 4), ("red", "green", "blue"))
    save_npz(tmp_path / "d.npz", d, uint8=uint8)
    assert same(load_npz(tmp_path / "d.npz"), d)
    digits = load_digits()  # k/16 pixels: exact as float32 only
    save_npz(tmp_path / "train.npz", digits)
    assert same(load_dataset("npz", tmp_path), digits) and sorted(p.name for p in tmp_path.iterdir()) == [
        "d.npz", "train.npz"
    ]  # fmt: skip


@pytest.mark.parametrize("split", ["train", "test"])
def test_save_idx_round_trips_and_refuses_what_mnist_cannot_hold(tmp_path, split):
    d = uint8_dataset((1, 28, 28), tuple(str(i) for i in range(10)))
    save_idx(tmp_path, d, split)
    assert same(load_mnist(tmp_path, split), d)
    raises_data_error(save_idx, tmp_path / "rgb", uint8_dataset((3, 8, 8), d.classes), match="one-channel")
    raises_data_error(save_idx, tmp_path / "ab", uint8_dataset((1, 8, 8), ("a", "b")), match="classes 0..9")


@pytest.mark.parametrize("split", ["train", "test"])
def test_save_cifar_batches_round_trip_in_batches(tmp_path, split):
    d = uint8_dataset((3, 32, 32), ("cat", "dog", "eel"), n=25)
    paths = save_cifar_batches(tmp_path, d, split, batch_rows=10)
    batches = [f"data_batch_{i}.bin" for i in (1, 2, 3)] if split == "train" else ["test_batch.bin"]
    assert [p.name for p in paths] == [*batches, "batches.meta.txt"]
    assert same(load_cifar10(tmp_path, split), d)
    small = uint8_dataset((3, 8, 8), d.classes)
    raises_data_error(save_cifar_batches, tmp_path / "s", small, match="3x32x32")


@pytest.mark.parametrize("shape", [(1, 6, 5), (3, 4, 4)])
def test_save_image_folder_round_trips_rows_grouped_by_class(tmp_path, shape):
    d = uint8_dataset(shape, ("ant", "bee", "cat", "dog"), grouped=True)
    d = d.subset(torch.nonzero(d.y != 2).flatten())  # an empty class keeps its folder
    save_image_folder(tmp_path / "set", d)
    assert same(load_image_folder(tmp_path / "set"), d) and (tmp_path / "set" / "cat").is_dir()
    shuffled = uint8_dataset(shape, ("ant", "bee"), seed=1)
    save_image_folder(tmp_path / "shuffled", shuffled)  # rows come back grouped by class, in order
    back = load_image_folder(tmp_path / "shuffled")
    order = torch.argsort(shuffled.y, stable=True)
    assert torch.equal(back.x, shuffled.x[order]) and torch.equal(back.y, shuffled.y[order])
    unsorted = uint8_dataset(shape, ("b", "a"))
    raises_data_error(save_image_folder, tmp_path / "u", unsorted, match="not sorted")
    raises_data_error(save_image_folder, tmp_path / "h", uint8_dataset(shape, (".a", "b")), match="'.a'")
