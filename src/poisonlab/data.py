"""Datasets: an immutable image/label container, loaders for standard files, and seeded stratified splits.

Every loader validates what it reads and raises :class:`~poisonlab.errors.DataError` with a one-line message
naming the file and the problem; nothing is ever loaded with pickle.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from poisonlab.errors import DataError
from poisonlab.results import write_atomic

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_NAMES",
    "DATA_FORMATS",
    "Dataset",
    "guess_format",
    "has_split",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_format",
    "load_npz",
    "npz_stores_uint8",
    "open_image",
    "save_cifar_batches",
    "save_idx",
    "save_image_folder",
    "save_npz",
    "stratified_subset",
    "train_test_split",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))
DATASET_NAMES = ("digits", "mnist", "cifar10", "folder", "npz")
DATA_FORMATS = ("folder", "npz", "idx", "cifar")  # file formats of the owner's commands (mark, trace)
SPLITS = ("train", "test")

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_CIFAR_RECORD = 1 + 3 * 32 * 32
_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg"})


def _one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so an error message stays on one line."""
    return " ".join(str(text).split())


def _fail(where: object, what: str) -> DataError:
    return DataError(_one_line(f"{where}: {what}"))


# ----------------------------------------------------------------------------------------------------
# Dataset


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images ``x`` (float32, (N, C, H, W), values in [0, 1]) with labels ``y`` (int64, (N,)) and class names.

    Validated on construction; operations return new datasets whose tensors never alias the parent's.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        self._check(check_x=True)

    def _check(self, *, check_x: bool) -> None:
        where = f"dataset {self.name!r}" if self.name else "dataset"
        x, y, classes = self.x, self.y, self.classes
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(np.ascontiguousarray(y))
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise _fail(where, f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.ndim != 4 or not x.is_floating_point():
            raise _fail(where, f"x must be a 4-D float tensor (N, C, H, W), got {x.ndim}-D {x.dtype}")
        if y.ndim != 1 or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise _fail(where, f"y must be a 1-D integer tensor, got {y.ndim}-D {y.dtype}")
        if x.shape[0] != y.shape[0]:
            raise _fail(where, f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise _fail(where, f"classes must be a sequence of names, got {type(classes).__name__}")
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise _fail(where, "classes is empty")
        if len(set(classes)) != len(classes):
            raise _fail(where, f"duplicate class names in {list(classes)}")
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if y.dtype != torch.int64:
            y = y.to(torch.int64)
        if check_x and x.numel():
            if not bool(torch.isfinite(x).all()):
                raise _fail(where, "x contains NaN or inf")
            lo, hi = torch.aminmax(x)
            if lo.item() < 0.0 or hi.item() > 1.0:
                raise _fail(
                    where, f"x values must be in [0, 1], found min {lo.item():.4g}, max {hi.item():.4g}"
                )
        if y.numel():
            lo, hi = torch.aminmax(y)
            if lo.item() < 0 or hi.item() >= len(classes):
                bad = int(lo.item()) if lo.item() < 0 else int(hi.item())
                raise _fail(where, f"label {bad} out of range for {len(classes)} classes")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "name", str(self.name))

    @classmethod
    def _trusted(cls, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...], name: str) -> Dataset:
        """Build from parts known to be valid (e.g. rows of a valid dataset), skipping the pixel scan."""
        obj = object.__new__(cls)
        for key, value in (("x", x), ("y", y), ("classes", classes), ("name", name)):
            object.__setattr__(obj, key, value)
        return obj

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, device={self.x.device})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def _index(self, idx) -> torch.Tensor:
        """Normalise ``idx`` (ints or a bool mask) to an int64 index tensor on the data's device."""
        where = f"dataset {self.name!r}" if self.name else "dataset"
        if isinstance(idx, torch.Tensor):
            t = idx.detach().to("cpu")
        else:
            arr = np.asarray(idx)
            if arr.size == 0:
                arr = arr.astype(np.int64)
            if arr.dtype.kind not in "iub":
                raise _fail(where, f"subset index must be integers or a bool mask, got dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr))
        if t.ndim != 1:
            raise _fail(where, f"subset index must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype == torch.bool:
            if t.shape[0] != len(self):
                raise _fail(where, f"bool mask has length {t.shape[0]}, dataset has {len(self)} rows")
            t = torch.nonzero(t).flatten()
        elif t.is_floating_point() or t.is_complex():
            raise _fail(where, f"subset index must be integers or a bool mask, got dtype {t.dtype}")
        t = t.to(torch.int64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= len(self)):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise _fail(where, f"subset index {bad} out of range for {len(self)} rows")
        return t.to(self.x.device)

    def subset(self, idx) -> Dataset:
        """Rows ``idx`` (tensor/array/list of ints, or a bool mask) as a new dataset holding copies."""
        t = self._index(idx)
        x = self.x.index_select(0, t)
        y = self.y.index_select(0, t.to(self.y.device))
        return Dataset._trusted(x, y, self.classes, self.name)

    def with_labels(self, y) -> Dataset:
        """The same images (cloned) with new labels ``y`` (validated: 1-D ints, length N, in range)."""
        if not isinstance(y, torch.Tensor):
            arr = np.asarray(y)
            if arr.dtype.kind not in "iu":
                where = f"dataset {self.name!r}" if self.name else "dataset"
                raise _fail(where, f"labels must be integers, got dtype {arr.dtype}")
            y = torch.from_numpy(np.ascontiguousarray(arr))
        out = Dataset._trusted(self.x.clone(), y.detach().clone().to(self.y.device), self.classes, self.name)
        out._check(check_x=False)
        return out

    def replace_rows(self, idx, x: torch.Tensor, y: torch.Tensor | None = None) -> Dataset:
        """A copy whose rows ``idx`` hold the images ``x`` (and labels ``y``; kept when None). Only the new
        rows are validated (finite, in [0, 1], labels in range), so replacing a few rows stays cheap."""
        t = self._index(idx)
        where = f"dataset {self.name!r}" if self.name else "dataset"
        x = x.detach().to(self.x.device, self.x.dtype)
        if x.shape != (len(t), *self.x.shape[1:]):
            expected = (len(t), *self.input_shape)
            raise _fail(where, f"replacement rows have shape {tuple(x.shape)}, expected {expected}")
        xs, ys = self.x.clone(), self.y.clone()
        xs[t] = x
        if y is not None:
            ys[t] = torch.as_tensor(y).to(ys.device, ys.dtype).expand(len(t))
        Dataset._trusted(x, ys[t], self.classes, self.name)._check(check_x=True)
        return Dataset._trusted(xs, ys, self.classes, self.name)

    def class_counts(self) -> np.ndarray:
        """Number of rows per class, an int64 array of length ``num_classes``."""
        return np.bincount(self.y.cpu().numpy(), minlength=self.num_classes).astype(np.int64)

    def to(self, device) -> Dataset:
        """The dataset with both tensors on ``device`` (shared, as in torch, when already there)."""
        return Dataset._trusted(self.x.to(device), self.y.to(device), self.classes, self.name)


def _from_uint8(x: np.ndarray) -> torch.Tensor:
    """uint8 array -> float32 tensor scaled to [0, 1] (one copy)."""
    return torch.from_numpy(x.astype(np.float32)).div_(255.0)


# ----------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits(name: str = "digits") -> Dataset:
    """scikit-learn's 8x8 digits: 1,797 images (1, 8, 8), pixel values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    if images.ndim != 3 or images.min() < 0 or images.max() > 16:
        raise _fail("sklearn load_digits", f"unexpected images: shape {images.shape}")
    x = torch.from_numpy(images / np.float32(16.0)).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(x, y, DIGIT_CLASSES, name)


# ----------------------------------------------------------------------------------------------------
# MNIST (IDX files)


GZ_MAX_BYTES = 2**32  # never more than this is decompressed from one .gz data file
MAX_IMAGE_PIXELS = 2**26  # larger images (about 8000 x 8000) are refused before they are decoded
_CHUNK = 2**20


def _open(path: Path):
    """The file opened for binary reading: gunzipped (streaming) when its name ends in .gz."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_at_most(f, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``f``, read in chunks (a gzip stream never inflates past the limit)."""
    out = bytearray()
    while len(out) < limit:
        chunk = f.read(min(_CHUNK, limit - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _reading(path: Path, read):
    """``read(file)`` on the opened file; any failure is a DataError naming the file."""
    path = Path(path)
    gz = path.suffix == ".gz"
    try:
        with _open(path) as f:
            return read(f)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise _fail(path, "file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        if gz and not isinstance(exc, (IsADirectoryError, PermissionError)):
            raise _fail(path, f"corrupt gzip file ({type(exc).__name__}: {exc})") from exc
        raise _fail(path, f"cannot read file ({type(exc).__name__}: {exc})") from exc


def _read_bytes(path: Path, limit: int = GZ_MAX_BYTES) -> bytearray:
    """The file's bytes, gunzipped when its name ends in .gz; more than ``limit`` of them is a DataError."""
    path = Path(path)

    def read(f):
        if path.suffix != ".gz":  # the size is known: refuse before reading
            size = os.fstat(f.fileno()).st_size
            available = _available_memory()
            if size > limit:
                raise _fail(path, f"{size} bytes: too large to load (at most {limit} are read from one file)")
            if available is not None and 5 * size > available:
                raise _fail(path, f"{size} bytes: too large to load in the {available} bytes of free memory")
        buf = _read_at_most(f, limit + 1)
        if len(buf) > limit:
            raise _fail(path, f"holds more than {limit} bytes, the most poisonlab reads from one data file")
        return buf

    return _reading(path, read)


def _available_memory() -> int | None:
    """Bytes of memory available to this process (Linux MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_idx(path: Path, magic: int, ndims: int) -> tuple[tuple[int, ...], bytearray]:
    """(dims, data bytes) of an IDX file; the header is checked against the file and the memory before the
    data is read, and a .gz file is never inflated past the size its header announces."""
    path = Path(path)
    header = 4 + 4 * ndims
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"

    def read(f):
        head = _read_at_most(f, header)
        if len(head) < header:
            raise _fail(path, f"truncated: expected at least {header} header bytes, found {len(head)}")
        found = int.from_bytes(head[:4], "big")
        if found != magic:
            raise _fail(path, f"bad magic number {found} (expected {magic} for an IDX {kind} file)")
        dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndims))
        expected = math.prod(dims)  # Python ints: no overflow
        if path.suffix != ".gz":
            present = os.fstat(f.fileno()).st_size - header
            if present < expected:
                raise _fail(path, f"truncated: expected {expected} bytes, found {present}")
            if present > expected:
                extra = present - expected
                raise _fail(path, f"{extra} unexpected trailing bytes after {expected} bytes of data")
        elif expected > GZ_MAX_BYTES:
            shape = " x ".join(str(d) for d in dims)
            cap = GZ_MAX_BYTES
            raise _fail(path, f"header announces {shape} = {expected} bytes; at most {cap} are read from .gz")
        need = expected * (5 if magic == _IDX_IMAGES_MAGIC else 9)  # the bytes, then float32 / int64 tensors
        available = _available_memory()
        if available is not None and need > available:
            raise _fail(path, f"loading {expected} bytes of data needs ~{need / 2**30:.1f} GiB of memory, "
                        f"{available / 2**30:.1f} GiB available")  # fmt: skip
        body = _read_at_most(f, expected + 1)
        if len(body) < expected:
            raise _fail(path, f"truncated: expected {expected} bytes, found {len(body)}")
        if len(body) > expected:
            raise _fail(path, f"unexpected trailing bytes after {expected} bytes of data")
        return dims, body

    return _reading(path, read)


def _read_idx_images(path: Path) -> torch.Tensor:
    (n, rows, cols), buf = _read_idx(path, _IDX_IMAGES_MAGIC, 3)
    if n == 0 or rows == 0 or cols == 0:
        raise _fail(path, f"empty IDX images file ({n} images of {rows}x{cols})")
    arr = np.frombuffer(buf, dtype=np.uint8, count=n * rows * cols)
    return _from_uint8(arr.reshape(n, 1, rows, cols))


def _read_idx_labels(path: Path, num_classes: int) -> torch.Tensor:
    (n,), buf = _read_idx(path, _IDX_LABELS_MAGIC, 1)
    labels = np.frombuffer(buf, dtype=np.uint8, count=n)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise _fail(path, f"label {int(labels[i])} at index {i} out of range 0..{num_classes - 1}")
    return torch.from_numpy(labels.astype(np.int64))


def _find_idx(folder: Path, stem: str, kind: str) -> Path | None:
    """``stem``-idxN-ubyte (or the dotted ``stem.idxN-ubyte`` variant), uncompressed or .gz, in ``folder``."""
    for base in (f"{stem}-{kind}", f"{stem}.{kind}"):
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _check_split(split: str, where: object) -> str:
    if split not in SPLITS:
        raise _fail(where, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return split


def _check_root(root) -> Path:
    if root is None:
        raise DataError("no data root given: pass root or set POISONLAB_DATA")
    root = Path(root).expanduser()
    if not root.exists():
        raise _fail(root, "data folder not found")
    if not root.is_dir():
        raise _fail(root, "not a folder")
    return root


def load_mnist(root, split: str = "train") -> Dataset:
    """MNIST from the standard IDX files (gzip or uncompressed): (N, 1, 28, 28), classes "0".."9".

    ``root`` is the folder holding the files, or a parent holding ``raw/`` or ``MNIST/raw/``.
    """
    root = _check_root(root)
    _check_split(split, root)
    stem = "train" if split == "train" else "t10k"
    candidates = [root, root / "raw", root / "MNIST" / "raw"]
    for folder in candidates:
        images_path = _find_idx(folder, f"{stem}-images", "idx3-ubyte")
        if images_path is not None:
            break
    else:
        raise _fail(
            root,
            f"no MNIST {split} images ({stem}-images-idx3-ubyte or .gz) found in "
            + ", ".join(str(c) for c in candidates),
        )
    labels_path = _find_idx(images_path.parent, f"{stem}-labels", "idx1-ubyte")
    if labels_path is None:
        raise _fail(images_path.parent / f"{stem}-labels-idx1-ubyte.gz", "file not found")
    x = _read_idx_images(images_path)
    y = _read_idx_labels(labels_path, 10)
    if x.shape[0] != y.shape[0]:
        raise _fail(images_path, f"holds {x.shape[0]} images but {labels_path} holds {y.shape[0]} labels")
    return Dataset(x, y, DIGIT_CLASSES, "mnist")


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 (binary version)


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return CIFAR10_CLASSES
    try:
        text = meta.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(meta, f"cannot read class names ({type(exc).__name__}: {exc})") from exc
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise _fail(meta, "holds no class names")
    if len(set(names)) != len(names):
        raise _fail(meta, "duplicate class names")
    return names


def _cifar_batches(folder: Path, split: str) -> list[Path]:
    if split == "test":
        path = folder / "test_batch.bin"
        return [path] if path.is_file() else []
    found = []
    for path in folder.glob("data_batch_*.bin"):
        m = re.fullmatch(r"data_batch_(\d+)\.bin", path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return [path for _, path in sorted(found)]


def _read_cifar_batch(path: Path, num_classes: int) -> np.ndarray:
    """The records of one batch file as a uint8 array (n, 3073)."""
    buf = _read_bytes(path)
    if len(buf) == 0:
        raise _fail(path, "empty file")
    if len(buf) % _CIFAR_RECORD:
        whole = len(buf) // _CIFAR_RECORD
        raise _fail(
            path,
            f"truncated: {len(buf)} bytes is not a multiple of the {_CIFAR_RECORD}-byte record "
            f"(expected {(whole + 1) * _CIFAR_RECORD} bytes for {whole + 1} records, found {len(buf)})",
        )
    records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    bad = np.flatnonzero(records[:, 0] >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise _fail(path, f"label {int(records[i, 0])} in record {i} out of range for {num_classes} classes")
    return records


def load_cifar10(root, split: str = "train") -> Dataset:
    """CIFAR-10 from the binary batches: train = every data_batch_*.bin (by number), test = test_batch.bin.

    ``root`` is the batches folder or a parent holding ``cifar-10-batches-bin/`` or
    ``cifar-10-subset-batches-bin/``. Class names come from batches.meta.txt (else the official ten).
    """
    root = _check_root(root)
    _check_split(split, root)
    candidates = [root, root / "cifar-10-batches-bin", root / "cifar-10-subset-batches-bin"]
    for folder in candidates:
        paths = _cifar_batches(folder, split)
        if paths:
            break
    else:
        wanted = "test_batch.bin" if split == "test" else "data_batch_*.bin"
        raise _fail(root, f"no CIFAR-10 {wanted} found in " + ", ".join(str(c) for c in candidates))
    classes = _cifar_classes(folder)
    records = [_read_cifar_batch(p, len(classes)) for p in paths]
    data = records[0] if len(records) == 1 else np.concatenate(records)
    del records
    y = torch.from_numpy(data[:, 0].astype(np.int64))
    x = _from_uint8(data[:, 1:].reshape(-1, 3, 32, 32))
    return Dataset(x, y, classes, "cifar10")


# ----------------------------------------------------------------------------------------------------
# Image folder


@contextmanager
def open_image(path, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS):
    """The image at ``path``, opened and decoded by PIL (``with open_image(p) as img``): every image poisonlab
    reads goes through here. A missing, corrupt or undecodable file, or one larger than ``max_pixels``
    (checked from its header, before decoding), is a one-line DataError naming the file."""
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():  # PIL's own bomb check is replaced by the size check below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise _fail(path, f"{what} is {width}x{height} pixels, more than the {max_pixels} allowed")
            img.load()
            yield img
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise _fail(path, f"{what} file not found") from exc
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on a corrupt, hostile or huge file
        raise _fail(path, f"cannot decode {what} ({type(exc).__name__}: {exc})") from exc


def _decode_image(path: Path, grayscale: bool | None, size: tuple[int, int] | None) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1]; C is 1 for grey sources when ``grayscale`` is None."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    with open_image(path) as img:
        mode = img.mode
        sixteen = mode.startswith("I")
        if sixteen:
            img = img.convert("F")
            scale = 65535.0
        else:
            grey_src = mode in ("1", "L", "LA", "I", "F")
            grey = grayscale if grayscale is not None else grey_src
            img = img.convert("L" if grey else "RGB")
            scale = 255.0
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), bilinear)
        arr = np.asarray(img, dtype=np.float32)
    if sixteen:
        if arr.size and (arr.min() < 0 or arr.max() > scale):
            raise _fail(path, f"{mode} pixel values outside 0..65535")
        arr = arr[:, :, None]
        if grayscale is False:
            arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 2:
        arr = arr[:, :, None]
    return arr / np.float32(scale)


def image_folder_files(root) -> tuple[list[Path], list[int], list[Path]]:
    """(image files, their labels, class folders) of an image folder, in the order its rows are loaded."""
    root = _check_root(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise _fail(root, "no class sub-folders (expected root/<class>/<image>.png)")
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in _IMAGE_EXTS and not path.name.startswith(".") and path.is_file():
                files.append(path)
                labels.append(label)
    if not files:
        raise _fail(root, "no .png/.jpg/.jpeg images in its class sub-folders")
    return files, labels, class_dirs


def load_image_folder(root, *, size: tuple[int, int] | None = None, grayscale: bool | None = None) -> Dataset:
    """Images in ``root/<class>/<image>.png|jpg|jpeg``; classes are the sorted sub-folder names.

    All images must share one size unless ``size=(H, W)`` is given (then each is resized). ``grayscale``
    None keeps one channel when every image is grey and three otherwise; True/False force L/RGB.
    Hidden files and folders (names starting with ".") and other extensions are ignored.
    """
    root = _check_root(root)
    if size is not None:
        if (
            not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size)
        ):
            raise _fail(root, f"size must be (height, width) of positive ints, got {size!r}")
        size = (int(size[0]), int(size[1]))
    files, labels, class_dirs = image_folder_files(root)
    arrays: list[np.ndarray] = []
    for path in files:
        arr = _decode_image(path, grayscale, size)
        if arrays and arr.shape[:2] != arrays[0].shape[:2]:
            h, w = arr.shape[:2]
            h0, w0 = arrays[0].shape[:2]
            raise _fail(
                path, f"image is {w}x{h} (WxH) but {files[0]} is {w0}x{h0}; pass size=(H, W) to resize"
            )
        arrays.append(arr)
    if grayscale is None and len({a.shape[2] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    x = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    y = torch.tensor(labels, dtype=torch.int64)
    return Dataset(x, y, tuple(p.name for p in class_dirs), root.name)


# ----------------------------------------------------------------------------------------------------
# .npz arrays


def _npz_images(x: np.ndarray, path: Path) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.shape[1] > 4:
        if x.shape[3] > 4:
            raise _fail(
                path, f"x has shape {x.shape}: cannot tell the channel axis (1 to 4 channels first or last)"
            )
        # (N, H, W, C) -> (N, C, H, W); (N, C, H, W) is kept as is, and wins when both axes are <= 4
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x)
    if x.dtype == np.uint8:
        return _from_uint8(x)
    if x.dtype.kind != "f":
        raise _fail(path, f"x has dtype {x.dtype}: expected uint8 (0..255) or float in [0, 1]")
    if not np.isfinite(x).all():
        raise _fail(path, "x contains NaN or inf")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise _fail(path, f"float x must be in [0, 1], found min {x.min():.4g}, max {x.max():.4g}")
    return torch.from_numpy(x.astype(np.float32, copy=False))


def _check_npz_member(npz, key: str, path: Path) -> None:
    """The array ``key`` of an open .npz fits what its archive holds and the memory, from its header alone
    (a forged shape would otherwise be allocated before a byte is read)."""
    name = key + ".npy" if key + ".npy" in npz.zip.namelist() else key
    info = npz.zip.getinfo(name)
    fmt = np.lib.format
    with npz.zip.open(info) as f:
        version = fmt.read_magic(f)
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size:
        raise _fail(path, f"array {key!r} declares shape {shape} ({nbytes} bytes) but holds {info.file_size}")
    available = _available_memory()
    if available is not None and 5 * nbytes > available:
        raise _fail(path, f"array {key!r} of {nbytes} bytes needs more memory than the {available} available")


def load_npz(path) -> Dataset:
    """Arrays ``x`` ((N,H,W), (N,H,W,C) or (N,C,H,W); uint8 or float in [0, 1]) and ``y`` from an .npz file.

    An optional ``classes`` array of strings names the classes; otherwise they are "0".."max(y)".
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _fail(path, "file not found" if not path.exists() else "not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise _fail(path, f"cannot read file ({type(exc).__name__}: {exc})") from exc
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise _fail(path, "not an .npz archive (expected a zip of named arrays x and y)")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise _fail(path, f"cannot read .npz ({type(exc).__name__}: {exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _fail(path, "not an .npz archive (expected named arrays x and y)")
    with npz:
        keys = set(npz.files)
        for key in ("x", "y"):
            if key not in keys:
                raise _fail(path, f"missing array {key!r} (arrays present: {sorted(keys)})")
        try:
            for key in keys & {"x", "y", "classes"}:
                _check_npz_member(npz, key, path)
            x, y = npz["x"], npz["y"]
            names = npz["classes"] if "classes" in keys else None
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, MemoryError) as exc:
            if isinstance(exc, DataError):
                raise
            raise _fail(path, f"cannot read .npz ({type(exc).__name__}: {exc})") from exc
    if x.ndim not in (3, 4):
        raise _fail(
            path, f"x must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {x.ndim}-D shape {x.shape}"
        )
    if y.ndim != 1:
        raise _fail(path, f"y must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise _fail(path, f"y must hold integers, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise _fail(path, f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if y.shape[0] == 0:
        raise _fail(path, "holds no samples")
    if (y < 0).any():
        i = int(np.flatnonzero(y < 0)[0])
        raise _fail(path, f"negative label {int(y[i])} at index {i}")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US" or names.size == 0:
            raise _fail(
                path, f"classes must be a non-empty 1-D array of strings, got {names.dtype} {names.shape}"
            )
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        if int(y.max()) >= len(classes):
            raise _fail(path, f"label {int(y.max())} out of range for {len(classes)} classes")
    else:
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    xt = _npz_images(x, path)
    yt = torch.from_numpy(y.astype(np.int64))
    try:
        return Dataset(xt, yt, classes, path.stem)
    except DataError as exc:
        raise _fail(path, str(exc)) from exc


# ----------------------------------------------------------------------------------------------------
# Dispatch


def load_dataset(name: str, root=None, split: str = "train") -> Dataset:
    """Load ``name`` (digits, mnist, cifar10, folder, npz); ``root`` defaults to $POISONLAB_DATA.

    digits and folder have a single split: asking for split="test" is an error (use train_test_split).
    For npz, ``root`` is the file, or a folder holding ``<split>.npz``.
    """
    key = str(name).strip().lower()
    if key not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASET_NAMES)})")
    if split not in SPLITS:
        raise DataError(f"dataset {key}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if key == "digits":
        if split != "train":
            raise DataError("dataset digits has no separate test split: use train_test_split")
        return load_digits()
    if root is None:
        root = os.environ.get("POISONLAB_DATA") or None
        if root is None:
            raise DataError(f"dataset {key}: no data root given: pass root or set POISONLAB_DATA")
    if key == "mnist":
        return load_mnist(root, split)
    if key == "cifar10":
        return load_cifar10(root, split)
    if key == "folder":
        if split != "train":
            raise _fail(root, "an image folder has no separate test split: use train_test_split")
        return load_image_folder(root)
    path = Path(root).expanduser()
    return load_npz(path / f"{split}.npz" if path.is_dir() else path)


# ----------------------------------------------------------------------------------------------------
# Stratified, seeded splits


def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes in proportion to ``counts`` by largest remainder (ties: lower class first)."""
    total = int(counts.sum())
    exact = counts.astype(np.int64) * n
    base = exact // total
    remainder = exact - base * total
    extra = n - int(base.sum())
    order = np.argsort(-remainder, kind="stable")
    base[order[:extra]] += 1
    return base


def _stratified_pick(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` rows drawn per class in proportion to the class counts."""
    counts = np.bincount(y, minlength=num_classes)
    quota = _allocate(counts, n)
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        if quota[c]:
            members = np.flatnonzero(y == c)
            picked.append(rng.permutation(members)[: quota[c]])
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked))


def train_test_split(data: Dataset, test_fraction: float = 0.25, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Stratified, seeded split into (train, test); each class's test share is within one row of exact."""
    where = f"dataset {data.name!r}" if data.name else "dataset"
    if not 0.0 < float(test_fraction) < 1.0:
        raise _fail(where, f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(len(data) * float(test_fraction)))
    if n_test == 0 or n_test == len(data):
        raise _fail(where, f"{len(data)} rows are too few to split with test_fraction={test_fraction}")
    y = data.y.cpu().numpy()
    test_idx = _stratified_pick(y, n_test, data.num_classes, seed)
    mask = np.ones(len(data), dtype=bool)
    mask[test_idx] = False
    return data.subset(np.flatnonzero(mask)), data.subset(test_idx)


def stratified_subset(data: Dataset, n: int, *, seed: int = 0) -> Dataset:
    """``n`` rows, seeded, with class proportions preserved by largest-remainder rounding (original order)."""
    where = f"dataset {data.name!r}" if data.name else "dataset"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise _fail(where, f"n must be an integer, got {n!r}")
    if n < 0 or n > len(data):
        raise _fail(where, f"cannot take {n} rows from {len(data)}")
    if n == 0:
        return data.subset([])
    return data.subset(_stratified_pick(data.y.cpu().numpy(), int(n), data.num_classes, seed))


# ----------------------------------------------------------------------------------------------------
# Formats by path (the owner's commands) and writers


def _idx_folder(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        if _find_idx(folder, f"{stem}-images", "idx3-ubyte") is not None:
            return folder
    return None


def _cifar_folder(root: Path, split: str) -> Path | None:
    for folder in (root, root / "cifar-10-batches-bin", root / "cifar-10-subset-batches-bin"):
        if _cifar_batches(folder, split):
            return folder
    return None


def guess_format(path) -> str:
    """The format of the data at ``path`` (one of DATA_FORMATS): an .npz file, or a folder holding train.npz
    (or test.npz), MNIST IDX files, CIFAR-10 binary batches or class sub-folders (checked in that order)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise _fail(path, "data not found")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise _fail(path, "cannot tell the data format of this file (an .npz, or a folder): pass --format")
    try:
        if (path / "train.npz").is_file() or (path / "test.npz").is_file():
            return "npz"
        if _idx_folder(path, "train") or _idx_folder(path, "t10k"):
            return "idx"
        if _cifar_folder(path, "train") or _cifar_folder(path, "test"):
            return "cifar"
        if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
            return "folder"
    except OSError as exc:
        raise _fail(path, f"cannot read folder ({type(exc).__name__}: {exc.strerror or exc})") from exc
    raise _fail(
        path, "cannot tell the data format (no train.npz, MNIST IDX files, CIFAR-10 batches or class "
        "sub-folders): pass --format"
    )  # fmt: skip


def load_format(fmt: str, path, split: str = "train") -> Dataset:
    """The data at ``path`` in format ``fmt`` (DATA_FORMATS); ``split`` picks MNIST's or CIFAR-10's files."""
    if fmt not in DATA_FORMATS:
        raise DataError(f"unknown data format {fmt!r} (known: {', '.join(DATA_FORMATS)})")
    if fmt == "idx":
        return load_mnist(path, split)
    if fmt == "cifar":
        return load_cifar10(path, split)
    if fmt == "folder":
        return load_image_folder(path)
    path = Path(path).expanduser()
    return load_npz(path / f"{split}.npz" if path.is_dir() else path)


def has_split(fmt: str, path, split: str) -> bool:
    """Whether ``path`` holds ``split``'s files: MNIST or CIFAR-10 files, ``<split>.npz`` in a folder; an .npz
    file or an image folder is one "train" split."""
    path = Path(path).expanduser()
    if fmt == "npz" and path.is_dir():
        return (path / f"{split}.npz").is_file()
    if fmt == "idx":
        return path.is_dir() and _idx_folder(path, "train" if split == "train" else "t10k") is not None
    if fmt == "cifar":
        return path.is_dir() and _cifar_folder(path, split) is not None
    return split == "train"


def npz_stores_uint8(path) -> bool:
    """Whether the .npz file's ``x`` array is uint8 (read from its header only)."""
    path = Path(path).expanduser()
    fmt = np.lib.format
    try:
        with np.load(path, allow_pickle=False) as npz:
            name = "x.npy" if "x.npy" in npz.zip.namelist() else "x"
            with npz.zip.open(name) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                return read(f)[2] == np.uint8
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise _fail(path, f"cannot read .npz ({type(exc).__name__}: {exc})") from exc


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[0, 1] floats to 0..255 (rounded to the nearest level: exact for images read from uint8 files)."""
    return (x.detach().cpu().double() * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def save_npz(path, data: Dataset, *, uint8: bool = False) -> Path:
    """Write ``data`` as an .npz that :func:`load_npz` reads back exactly: ``x`` (N, C, H, W) as float32, or
    as uint8 (rounded to the nearest 1/255) with ``uint8``; ``y``; the ``classes`` names."""
    path = Path(path).expanduser()
    if data.x.shape[1] > 4:
        raise _fail(path, f"images with {data.x.shape[1]} channels: an .npz holds 1 to 4")
    x = _to_uint8(data.x) if uint8 else data.x.detach().cpu().numpy().astype(np.float32)
    y, classes = data.y.cpu().numpy().astype(np.int64), np.array(data.classes, dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y, classes=classes)
    write_atomic(path, buf.getvalue())
    return path


def save_idx(folder, data: Dataset, split: str = "train") -> list[Path]:
    """Write ``data`` as MNIST IDX files (``train-`` or ``t10k-images-idx3-ubyte`` and ``-labels-idx1-ubyte``,
    uncompressed) in ``folder``; pixels rounded to 1/255. MNIST's format: one channel, classes "0".."9"."""
    folder = Path(folder).expanduser()
    _check_split(split, folder)
    n, c, h, w = data.x.shape
    if c != 1:
        raise _fail(folder, f"IDX files hold one-channel images, got {c} channels")
    if data.classes != DIGIT_CLASSES:
        raise _fail(folder, f"IDX (MNIST) files hold the classes 0..9, got {list(data.classes)}")
    stem = "train" if split == "train" else "t10k"
    images = folder / f"{stem}-images-idx3-ubyte"
    labels = folder / f"{stem}-labels-idx1-ubyte"
    head = b"".join(int(v).to_bytes(4, "big") for v in (_IDX_IMAGES_MAGIC, n, h, w))
    pixels = _to_uint8(data.x).tobytes()
    write_atomic(images, head + pixels)
    ys = data.y.cpu().numpy().astype(np.uint8).tobytes()
    write_atomic(labels, _IDX_LABELS_MAGIC.to_bytes(4, "big") + n.to_bytes(4, "big") + ys)
    return [images, labels]


def _check_names(where: Path, classes: tuple[str, ...], what: str) -> None:
    for name in classes:
        if not name or name != name.strip() or any(ch in name for ch in "\n\r\0/\\") or name.startswith("."):
            raise _fail(where, f"class name {name!r} cannot be written as {what}")


def save_cifar_batches(folder, data: Dataset, split: str = "train", batch_rows: int = 10_000) -> list[Path]:
    """Write ``data`` as CIFAR-10 binary batches in ``folder`` (train: ``data_batch_1.bin``, ... of
    ``batch_rows`` records; test: ``test_batch.bin``) with ``batches.meta.txt`` naming the classes; pixels
    rounded to 1/255. CIFAR's format: 3 x 32 x 32 images, at most 256 classes."""
    folder = Path(folder).expanduser()
    _check_split(split, folder)
    if data.input_shape != (3, 32, 32):
        raise _fail(folder, f"CIFAR-10 batches hold 3x32x32 images, got {data.input_shape}")
    if data.num_classes > 256:
        raise _fail(folder, f"CIFAR-10 batches hold at most 256 classes, got {data.num_classes}")
    _check_names(folder, data.classes, "a line of batches.meta.txt")
    records = np.concatenate(
        [data.y.cpu().numpy().astype(np.uint8)[:, None], _to_uint8(data.x).reshape(len(data), -1)], axis=1
    )
    chunks = [records] if split == "test" else np.split(records, range(batch_rows, len(records), batch_rows))
    names = ["test_batch.bin"] if split == "test" else [f"data_batch_{i + 1}.bin" for i in range(len(chunks))]
    paths = []
    for name, chunk in zip(names, chunks):
        write_atomic(folder / name, chunk.tobytes())
        paths.append(folder / name)
    meta = folder / "batches.meta.txt"
    write_atomic(meta, "\n".join(data.classes) + "\n")
    return [*paths, meta]


def save_image_folder(root, data: Dataset) -> list[Path]:
    """Write ``data`` as ``root/<class>/<row>.png`` (8-bit grey or RGB, pixels rounded to 1/255), one
    sub-folder per class, empty ones included. :func:`load_image_folder` reads the classes in sorted order
    and each class's rows together, so the round trip is exact when the class names are sorted (checked)
    and the rows grouped by class in order (as that loader returns them); otherwise rows come back grouped."""
    from PIL import Image

    root = Path(root).expanduser()
    if data.x.shape[1] not in (1, 3):
        raise _fail(root, f"PNG images have 1 or 3 channels, got {data.x.shape[1]}")
    _check_names(root, data.classes, "a folder name")
    if list(data.classes) != sorted(data.classes):
        raise _fail(root, f"class names {list(data.classes)} are not sorted: the loader would renumber them")
    pixels = _to_uint8(data.x).transpose(0, 2, 3, 1)
    width = max(6, len(str(len(data) - 1)))
    paths = []
    for name in data.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (arr, label) in enumerate(zip(pixels, data.y.tolist())):
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
        path = root / data.classes[label] / f"{i:0{width}d}.png"
        img.save(path, format="PNG")  # many small files: no temporary file and fsync each
        paths.append(path)
    return paths
