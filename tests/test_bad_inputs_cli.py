"""Bad inputs to the CLI (run, bench, report, list), its files and its outputs, table-driven.

Every case asserts the exit status (2) or the exception type, ONE line naming the problem (no traceback),
and that nothing was written or changed: the working folder's listing and every file's bytes are compared
before and after. Data comes from the bundled digits or from tiny files made here; nothing trains.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from poisonlab.cli import main
from poisonlab.errors import ConfigError, DataError, PoisonlabError

ROOT = Path(__file__).resolve().parents[1]

# A valid config that fails on nothing but what a case changes (it would train a logreg for one epoch).
BASE = {
    "name": "bad",
    "seed": 1,
    "data": {"name": "digits", "train_size": 300, "test_size": 100},
    "model": "logreg",
    "train": {"epochs": 1, "batch_size": 64},
    "baseline": False,
    "attacks": [{"name": "label_flip_targeted", "source": 3, "target": 9, "count": 5}],
    "detectors": [{"name": "spectral"}],
}
MATRIX = {
    "name": "badm",
    "base": BASE,
    "trials": 1,
    "axes": {"fraction": {"key": "attacks[0].count", "values": [5, 6]}},
}


# ---------------------------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, object]:
    """Every path under ``folder`` with its bytes (folders: None), to prove nothing was written."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        out[str(path.relative_to(folder))] = None if path.is_dir() else path.read_bytes()
    return out


def merged(base: dict, change: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in change.items():
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return out


def config_file(tmp: Path, change: dict | None = None, text: str | None = None, name: str = "c.yaml") -> str:
    path = tmp / name
    path.write_text(text if text is not None else yaml.safe_dump(merged(BASE, change or {})))
    return str(path)


def run(change: dict | None = None, *extra: str, text: str | None = None):
    """A `poisonlab run` case: the base config with ``change`` (dotted keys) or a raw YAML ``text``."""
    return lambda tmp: ["run", config_file(tmp, change, text), "--out", str(tmp / "out"), "--quiet", *extra]


def matrix_file(tmp: Path, raw: dict | None = None, text: str | None = None) -> str:
    path = tmp / "m.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw if raw is not None else MATRIX))
    return str(path)


def bench(raw: dict | None = None, *extra: str, text: str | None = None, db: bool = True):
    def setup(tmp):
        where = ["--db", str(tmp / "b" / "results.db")] if db else []
        return ["bench", matrix_file(tmp, raw, text), *where, "--executor", "inline", "--quiet", *extra]

    return setup


def with_axes(**axes) -> dict:
    return {**MATRIX, "axes": axes}


def idx_bytes(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + body


def mnist_folder(tmp: Path, images: bytes, labels: bytes, gz: bool = False) -> Path:
    folder = tmp / "mnist"
    folder.mkdir(exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem in ("train", "t10k"):
        img = images if stem == "t10k" else idx_bytes(2051, (20, 4, 4), bytes(320))
        lab = labels if stem == "t10k" else idx_bytes(2049, (20,), bytes(i % 2 for i in range(20)))
        (folder / f"{stem}-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(img, 1) if gz else img)
        (folder / f"{stem}-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(lab, 1) if gz else lab)
    return folder


GOOD_IMAGES = idx_bytes(2051, (10, 4, 4), bytes(160))
GOOD_LABELS = idx_bytes(2049, (10,), bytes(i % 2 for i in range(10)))


def mnist_run(images: bytes, labels: bytes = GOOD_LABELS, gz: bool = False):
    def setup(tmp):
        root = mnist_folder(tmp, images, labels, gz)
        return run({"data": {"name": "mnist", "root": str(root)}})(tmp)

    return setup


def gzip_bomb(tmp: Path) -> bytes:
    """A .gz IDX file whose 10-image header is followed by 64 MiB of zeros (~64 KiB compressed)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(GOOD_IMAGES)]
    zeros = bytes(2**20)
    out += [z.compress(zeros) for _ in range(64)]
    return b"".join(out) + z.flush()


def mnist_bomb_run(tmp):
    root = mnist_folder(tmp, GOOD_IMAGES, GOOD_LABELS, gz=True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip_bomb(tmp))
    return run({"data": {"name": "mnist", "root": str(root)}})(tmp)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (grey) with no pixel data: only the header is ever read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def small_png() -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(np.full((6, 6), 128, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def blend_run(content: bytes):
    def setup(tmp):
        (tmp / "trigger.png").write_bytes(content)
        attack = {"name": "blend", "pattern": "image", "image_path": str(tmp / "trigger.png"), "target": 0}
        return run({"attacks": [attack]})(tmp)

    return setup


def folder_run(files: dict[str, bytes]):
    def setup(tmp):
        for rel, content in files.items():
            (tmp / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "imgs" / rel).write_bytes(content)
        return run({"data": {"name": "folder", "root": str(tmp / "imgs")}})(tmp)

    return setup


def npz_run(**arrays):
    def setup(tmp):
        np.savez(tmp / "d.npz", **arrays)
        return run({"data": {"name": "npz", "root": str(tmp / "d.npz")}})(tmp)

    return setup


def file_run(name: str, content: bytes, data: str = "npz"):
    def setup(tmp):
        (tmp / name).write_bytes(content)
        return run({"data": {"name": data, "root": str(tmp / name)}})(tmp)

    return setup


def cifar_run(content: bytes):
    def setup(tmp):
        folder = tmp / "cifar"
        folder.mkdir()
        (folder / "data_batch_1.bin").write_bytes(bytes(3073 * 4))
        (folder / "test_batch.bin").write_bytes(content)
        return run({"data": {"name": "cifar10", "root": str(folder)}})(tmp)

    return setup


def foreign_db(tmp: Path, app_id: int = 0, wal: bool = False) -> Path:
    path = tmp / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    if app_id:
        conn.execute(f"PRAGMA application_id = {app_id}")
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.commit()
    conn.close()
    return path


def poisonlab_db(tmp: Path, sql: str | None = None) -> Path:
    """A results database holding MATRIX's cells (nothing run), optionally changed by ``sql``."""
    from poisonlab.bench import build_matrix
    from poisonlab.bench.store import ResultStore

    path = tmp / "r.db"
    with ResultStore(path) as store:
        store.register(build_matrix(MATRIX))
    if sql:
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(sql)
        conn.close()
    return path


def bench_db(make):
    return lambda tmp: ["bench", matrix_file(tmp), "--db", str(make(tmp)), "--executor", "inline", "--quiet"]


def report(make, *extra: str):
    return lambda tmp: ["report", str(make(tmp)), "--quiet", *extra]


def below_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "sub"


def a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def a_dir(tmp: Path) -> Path:
    (tmp / "adir").mkdir()
    return tmp / "adir"


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)  # 10^9 values once expanded


def forged_npz(tmp: Path) -> Path:
    """An .npz whose x header declares 10^13 bytes but holds 100 (np.load would allocate them first)."""
    import io
    import zipfile

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 1000, 1000)}
    )
    labels = io.BytesIO()
    np.save(labels, np.arange(3))
    with zipfile.ZipFile(tmp / "d.npz", "w") as archive:
        archive.writestr("x.npy", head.getvalue() + bytes(100))
        archive.writestr("y.npy", labels.getvalue())
    return tmp / "d.npz"


READ_ONLY = "/proc/poisonlab-bad-input"  # a place no process can write (not even root)
CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"  # a device this machine does not have


# ------------------------------------------------------------------------------------------------ cases

# (id, setup: tmp -> argv, message regex); every case exits 2 with one line and writes nothing.
CLI_CASES = [
    # ---- config files: YAML
    ("yaml-syntax", run(text="name: [unclosed\n"), r"c\.yaml: not valid YAML at line \d"),
    ("yaml-tab-indent", run(text="name: x\n\tseed: 1\n"), r"not valid YAML at line 2"),
    ("yaml-duplicate-top-key", run(text=yaml.safe_dump(BASE) + "seed: 2\n"), r"key 'seed' given twice"),
    (
        "yaml-duplicate-nested-key",
        run(text="name: x\ntrain:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n"),
        r"at line 5: key 'lr' given twice \(lines 3 and 5\)",
    ),
    (
        "yaml-duplicate-flow-key",
        run(text="name: x\ndata: {name: digits, name: mnist}\n"),
        r"'name' given twice",
    ),
    ("yaml-list-not-mapping", run(text="- a\n- b\n"), r"a config is a mapping of keys, got list"),
    ("yaml-scalar-not-mapping", run(text="just words\n"), r"a config is a mapping of keys, got str"),
    (
        "yaml-not-utf8",
        lambda t: ["run", str(_write(t, "c.yaml", b"\xff\xfe\x00bad")), "--quiet"],
        r"cannot read",
    ),
    ("yaml-missing-file", lambda t: ["run", str(t / "nope.yaml"), "--quiet"], r"nope\.yaml: config file not"),
    ("yaml-is-a-folder", lambda t: ["run", str(a_dir(t)), "--quiet"], r"adir: config is a folder"),
    ("yaml-too-large", lambda t: ["run", str(_write(t, "big.yaml", b"#" * (9 * 2**20))), "--quiet"], r"MiB"),
    ("yaml-billion-laughs", run(text=LAUGHS), r"not valid YAML at line 1: its aliases expand to more than"),
    (
        "yaml-recursive-alias",
        run(text="name: &n [x, *n]\n"),
        r"not valid YAML at line 1: an alias refers to itself",
    ),
    # ---- config files: values
    ("unknown-key", run({"epochs_total": 3}), r"epochs_total: unknown key"),
    ("seed-above-2^63", run({"seed": 2**63}), r"seed: Input should be less than 9223372036854775808"),
    ("seed-2^64", run({"seed": 2**64}), r"seed: .*less than"),
    ("seed-negative", run({"seed": -1}), r"seed: Input should be greater than or equal to 0"),
    ("seed-plus-trials", run({"seed": 2**63 - 1, "trials": 2}), r"seed \+ trials must stay below 2\^63"),
    ("seed-string", run({"seed": "abc"}), r"seed: Input should be a valid integer"),
    ("seed-flag-negative", run(None, "--seed", "-5"), r"seed: Input should be greater than or equal to 0"),
    ("seed-flag-overflow", run(None, "--seed", str(2**70)), r"seed: .*less than"),
    ("trials-zero", run({"trials": 0}), r"trials: Input should be greater than or equal to 1"),
    ("trials-flag-zero", run(None, "--trials", "0"), r"trials: .*greater than or equal to 1"),
    ("device-cuda-missing", run({"train.device": CUDA}), rf"train\.device: device '{CUDA}': "),
    ("device-unknown", run({"train.device": "tpu9"}), r"train\.device: unknown device 'tpu9'"),
    (
        "threshold-nan",
        run({"threshold": float("nan")}),
        r"threshold: Input should be a finite number or 'mad'",
    ),
    ("threshold-inf", run({"threshold": float("inf")}), r"threshold: .*finite number"),
    ("threshold-word", run({"threshold": "high"}), r"threshold: .*'mad' \(got 'high'\)"),
    ("threshold-k-inf", run({"threshold_k": float("inf")}), r"threshold_k: Input should be a finite number"),
    ("threshold-k-nan", run({"threshold_k": float("nan")}), r"threshold_k: .*finite"),
    ("threshold-k-zero", run({"threshold_k": 0}), r"threshold_k: Input should be greater than 0"),
    ("lr-inf", run({"train.lr": float("inf")}), r"train\.lr: Input should be a finite number"),
    (
        "attack-fraction-nan",
        run({"attacks": [{"name": "label_flip_random", "fraction": float("nan")}]}),
        r"attacks\[0\]\.fraction: .*finite",
    ),
    ("name-absolute", run({"name": "/tmp/elsewhere"}), r"name '/tmp/elsewhere' must be a plain file name"),
    ("name-dotdot", run({"name": "../escape"}), r"name '\.\./escape' must be a plain file name"),
    ("name-separator", run({"name": "a/b"}), r"name 'a/b' must be a plain file name"),
    ("name-only-dots", run({"name": ".."}), r"name '\.\.' must be a plain file name"),
    ("name-empty", run({"name": "  "}), r"name '  ' must be a plain file name"),
    ("model-unknown", run({"model": "vgg"}), r"model: unknown model 'vgg'"),
    ("model-not-a-string", run({"model": ["cnn"]}), r"model: Input should be a valid string"),
    (
        "attack-not-a-mapping",
        run({"attacks": [5]}),
        r"attacks\[0\]: Input should be a valid dictionary \(got 5\)",
    ),
    ("attack-unknown", run({"attacks": [{"name": "nope"}]}), r"unknown attack 'nope'"),
    (
        "memory-budget-unparseable",
        run({"detectors": [{"name": "tracin_self", "memory_budget": "lots"}]}),
        r"detectors\[0\]\.memory_budget: .*'lots' is not a size",
    ),
    (
        "pattern-seed-2^64",
        run({"attacks": [{"name": "badnets", "pattern_seed": 2**64}]}),
        r"attacks\[0\]\.pattern_seed: a seed must be in \[0, 2\^63\)",
    ),
    ("report-top-k", run({"report_top_k": 1000}), r"report_top_k: Input should be less than or equal to 200"),
    ("data-unknown", run({"data": {"name": "imagenet"}}), r"data\.name: Input should be"),
    ("test-fraction-nan", run({"data": {"name": "digits", "test_fraction": float("nan")}}), r"test_fraction"),
    (
        "purifiers-without-reference",
        run({"purifiers": [{"name": "random_noise"}]}),
        r"purifiers need a 'reference",
    ),
    ("weights-without-detect-with", run({"detect_weights": "w.pt"}), r"detect_weights goes with detect_with"),
    # ---- config files: values impossible for the data (checked after loading, before training)
    ("source-class-12", run({"attacks.0.source": 12}), r"attacks\[0\]: .*class 12 is not in"),
    ("target-class-10", run({"attacks.0.target": 10}), r"attacks\[0\]: .*class 10 is not in"),
    ("budget-above-class", run({"attacks.0.count": 5000}), r"attacks\[0\]: .*5000 .*only \d+ are available"),
    ("badnets-target-11", run({"attacks": [{"name": "badnets", "target": 11}]}), r"attacks\[0\]: .*class 11"),
    ("patch-larger-than-image", run({"attacks": [{"name": "badnets", "patch_size": 9}]}), r"patch_size 9"),
    ("train-size-above-data", run({"data.train_size": 100000}), r"data\.train_size 100000 exceeds"),
    (
        "knn-removal-k-above-rows",
        run({"training_defenses": [{"name": "knn_removal", "k": 100000}]}),
        r"training_defenses\[0\]: knn_removal: k = 100000 is larger than the \d+ rows",
    ),
    (
        "dotted-method-id",
        run({"training_defenses": [{"name": "epic", "id": "EPIC-0.1"}]}),
        r"training_defenses\[0\]: id 'EPIC-0.1' must be non-empty without '\.'",
    ),
    (
        "training-defense-unknown",
        run({"training_defenses": [{"name": "abl"}]}),
        r"training_defenses\[0\]: unknown training_defense 'abl'; "
        r"known: adversarial_training, asd, cbd, epic, frienb, knn_removal",
    ),
    ("test-size-above-data", run({"data.test_size": 100000}), r"data\.test_size 100000 exceeds"),
    ("holdout-too-large", run({"data.holdout_size": 100000, "detect_with": "holdout"}), r"holdout_size"),
    (
        "num-test-above-test-set",
        run({"detectors": [{"name": "tracin_test", "num_test": 500}]}),
        r"detectors\[0\]: num_test 500 exceeds the 100 rows of the test split",
    ),
    ("knn-k-above-rows", run({"detectors": [{"name": "knn", "k": 5000}]}), r"detectors\[0\]: .*k = 5000"),
    (
        "detect-weights-missing",
        run({"detect_with": "weights", "detect_weights": "/nonexistent/w.pt"}),
        r"w\.pt: detect_weights: weights file not found",
    ),
    (
        "detect-weights-garbage",
        lambda t: run({"detect_with": "weights", "detect_weights": str(_write(t, "w.pt", b"junk"))})(t),
        r"w\.pt: detect_weights: not a torch weights file",
    ),
    (
        "blend-image-missing",
        run({"attacks": [{"name": "blend", "pattern": "image", "image_path": "/no/such.png"}]}),
        r"such\.png: blend image file not found",
    ),
    (
        "blend-image-20000px",
        blend_run(png_header(20000, 20000)),
        r"trigger\.png: blend image is 20000x20000 pixels",
    ),
    (
        "blend-image-not-an-image",
        blend_run(b"plain text, no image"),
        r"trigger\.png: cannot decode blend image",
    ),
    ("blend-image-truncated", blend_run(small_png()[:40]), r"trigger\.png: cannot decode blend image"),
    # ---- output locations of run
    (
        "out-is-a-file",
        lambda t: run()(t)[:2] + ["--out", str(a_file(t))],
        r"--out .*afile: exists and is not a folder",
    ),
    (
        "out-below-a-file",
        lambda t: run()(t)[:2] + ["--out", str(below_a_file(t))],
        r"afile is a file, not a folder",
    ),
    (
        "out-read-only",
        lambda t: run()(t)[:2] + ["--out", READ_ONLY],
        r"--out /proc/poisonlab-bad-input: cannot write",
    ),
    (
        "out-results-json-is-a-folder",
        lambda t: run()(t)[:2] + ["--out", str(_mkdirs(t, "o/results.json").parent)],
        r"--out .*o: results\.json is a folder, where a file is written",
    ),
    ("run-threads-zero", run(None, "--threads", "0"), r"--threads must be at least 1 and at most 256, got 0"),
    ("run-threads-huge", run(None, "--threads", "100000"), r"--threads must be .* at most 256, got 100000"),
    ("run-threads-word", run(None, "--threads", "two"), r"argument --threads: invalid int value: 'two'"),
    ("run-unknown-flag", run(None, "--fast"), r"unrecognized arguments: --fast"),
    # ---- data files
    (
        "data-root-missing",
        run({"data": {"name": "mnist", "root": "/no/such/folder"}}),
        r"data folder not found",
    ),
    (
        "mnist-no-files",
        lambda t: run({"data": {"name": "mnist", "root": str(a_dir(t))}})(t),
        r"no MNIST train",
    ),
    ("idx-truncated", mnist_run(GOOD_IMAGES[:100]), r"t10k-images-idx3-ubyte: truncated: expected 160 bytes"),
    ("idx-trailing", mnist_run(GOOD_IMAGES + b"xx"), r"2 unexpected trailing bytes after 160 bytes"),
    ("idx-bad-magic", mnist_run(idx_bytes(2049, (10, 4, 4), bytes(160))), r"bad magic number 2049"),
    ("idx-short-header", mnist_run(GOOD_IMAGES[:10]), r"truncated: expected at least 16 header bytes"),
    (
        "idx-huge-header",
        mnist_run(idx_bytes(2051, (2**32 - 1, 65535, 65535), bytes(16))),
        r"truncated: expected 18446181123756261375 bytes, found 16",
    ),
    (
        "idx-gz-huge-header",
        mnist_run(idx_bytes(2051, (2**32 - 1, 65535, 65535), bytes(16)), gz=True),
        r"header announces 4294967295 x 65535 x 65535 = 18446181123756261375 bytes",
    ),
    ("idx-gz-bomb", mnist_bomb_run, r"images-idx3-ubyte\.gz: unexpected trailing bytes after 160 bytes"),
    ("idx-gz-truncated", lambda t: _truncate_gz(t), r"t10k-images-idx3-ubyte\.gz: corrupt gzip file"),
    ("idx-gz-not-gzip", lambda t: _not_gzip(t), r"t10k-images-idx3-ubyte\.gz: corrupt gzip file"),
    ("idx-label-out-of-range", mnist_run(GOOD_IMAGES, idx_bytes(2049, (10,), bytes([12] * 10))), r"label 12"),
    (
        "idx-count-mismatch",
        mnist_run(GOOD_IMAGES, idx_bytes(2049, (9,), bytes(9))),
        r"holds 10 images but .* 9",
    ),
    (
        "npz-single-class",
        npz_run(x=np.zeros((20, 4, 4), np.uint8), y=np.zeros(20, np.int64)),
        r"d\.npz: holds a single class \(20 rows of '0'\)",
    ),
    (
        "npz-forged-shape",
        lambda t: run({"data": {"name": "npz", "root": str(forged_npz(t))}})(t),
        r"d\.npz: array 'x' declares shape \(10000000, 1000, 1000\) \(10000000000000 bytes\) but holds",
    ),
    ("npz-not-a-zip", file_run("d.npz", b"not a zip"), r"d\.npz: not an \.npz archive"),
    ("npz-missing-y", npz_run(x=np.zeros((4, 4, 4), np.uint8)), r"missing array 'y'"),
    ("npz-nan", npz_run(x=np.full((4, 4, 4), np.nan, np.float32), y=np.arange(4)), r"x contains NaN or inf"),
    (
        "npz-pickled",
        npz_run(x=np.array([{"a": 1}], dtype=object), y=np.arange(1)),
        r"d\.npz: cannot read \.npz",
    ),
    ("npz-float-labels", npz_run(x=np.zeros((4, 4, 4), np.uint8), y=np.zeros(4)), r"y must hold integers"),
    ("cifar-truncated", cifar_run(bytes(3073 + 10)), r"test_batch\.bin: truncated"),
    ("cifar-bad-label", cifar_run(bytes([11]) + bytes(3072)), r"label 11 in record 0 out of range"),
    (
        "folder-huge-image",
        folder_run({"a/1.png": png_header(20000, 20000), "b/1.png": small_png()}),
        r"1\.png: image is 20000x20000 pixels",
    ),
    (
        "folder-corrupt-image",
        folder_run({"a/1.png": b"\x89PNG\r\n\x1a\nbroken", "b/1.png": small_png()}),
        r"1\.png: cannot decode image",
    ),
    ("folder-single-class", folder_run({"a/1.png": small_png(), "a/2.png": small_png()}), r"single class"),
    # ---- matrices
    ("matrix-yaml-syntax", bench(text="name: [x\n"), r"m\.yaml: not valid YAML at line"),
    ("matrix-duplicate-key", bench(text=yaml.safe_dump(MATRIX) + "trials: 3\n"), r"key 'trials' given twice"),
    ("matrix-billion-laughs", bench(text=LAUGHS), r"m\.yaml: not valid YAML at line 1: its aliases expand"),
    ("matrix-not-mapping", bench(text="[1, 2]\n"), r"a matrix is a mapping of keys, got list"),
    ("matrix-name-dotdot", bench({**MATRIX, "name": ".."}), r"name '\.\.' must be a plain file name"),
    ("matrix-name-slash", bench({**MATRIX, "name": "a/b"}), r"name: String should match pattern"),
    ("matrix-unknown-key", bench({**MATRIX, "oops": 1}), r"oops: unknown key"),
    (
        "matrix-base-missing",
        bench({**MATRIX, "base": "nope.yaml"}),
        r"nope\.yaml: base config file not found",
    ),
    (
        "matrix-bad-cell",
        bench(with_axes(f={"key": "attacks[0].count", "values": [5, -1]})),
        r"cell f=-1: attacks\[0\]\.count",
    ),
    (
        "matrix-cell-source-12",
        bench(with_axes(s={"key": "attacks[0].source", "values": [3, 12]})),
        r"cell s=12: attacks\[0\]: .*class 12",
    ),
    (
        "matrix-cells-budget",
        bench(with_axes(c={"key": "attacks[0].count", "values": [5000, 6000, 5]})),
        r"cell c=5000: attacks\[0\]: .*5000.* \(and 1 more invalid cell\(s\)\)",
    ),
    (
        "matrix-cell-memory-budget",
        bench(
            with_axes(
                m={
                    "key": "detectors[0]",
                    "labels": ["ok", "bad"],
                    "values": [{"name": "tracin_self"}, {"name": "tracin_self", "memory_budget": "huge"}],
                }
            )
        ),
        r"cell m=bad: detectors\[0\]\.memory_budget: .*'huge' is not a size",
    ),
    (
        "matrix-cell-num-test",
        bench(with_axes(d={"key": "detectors[0]", "values": [{"name": "tracin_test", "num_test": 900}]})),
        r"cell d=tracin_test: detectors\[0\]: num_test 900",
    ),
    (
        "matrix-cell-data-missing",
        bench(with_axes(d={"key": "data", "values": [{"name": "mnist", "root": "/no/data"}]})),
        r"cell d=.*data folder not found",
    ),
    (
        "matrix-cell-device",
        bench(with_axes(d={"key": "train.device", "values": ["cpu", CUDA]})),
        rf"cell d={CUDA}: train\.device: device '{CUDA}': ",
    ),
    (
        "matrix-table-dim",
        bench({**MATRIX, "tables": [{"metric": "victim.clean_accuracy", "rows": ["nope"]}]}),
        r"tables\[0\]\.rows: 'nope'",
    ),
    ("matrix-missing", lambda t: ["bench", str(t / "none.yaml")], r"none\.yaml: matrix file not found"),
    # ---- bench flags (rejected before results.db exists)
    ("bench-workers-zero", bench(None, "--workers", "0"), r"--workers must be at least 1, got 0"),
    ("bench-workers-negative", bench(None, "--workers", "-3"), r"--workers must be at least 1, got -3"),
    ("bench-workers-word", bench(None, "--workers", "many"), r"argument --workers: invalid int value"),
    ("bench-threads-zero", bench(None, "--threads", "0"), r"--threads must be at least 1 and at most 256"),
    ("bench-threads-huge", bench(None, "--threads", "5000"), r"--threads must be .* at most 256, got 5000"),
    (
        "bench-cpus-negative",
        bench(None, "--cpus-per-trial", "-1"),
        r"--cpus-per-trial must be a finite number",
    ),
    ("bench-gpus-nan", bench(None, "--gpus-per-trial", "nan"), r"--gpus-per-trial must be a finite number"),
    ("bench-trials-zero", bench(None, "--trials", "0"), r"--trials must be at least 1, got 0"),
    ("bench-executor-unknown", bench(None, "--executor", "slurm"), r"argument --executor: invalid choice"),
    # ---- bench output locations and databases
    ("bench-db-is-a-folder", lambda t: bench(db=False)(t) + ["--db", str(a_dir(t))], r"adir: is a folder"),
    (
        "bench-db-below-a-file",
        lambda t: bench(db=False)(t) + ["--db", str(below_a_file(t) / "r.db")],
        r"afile is a file, not a folder",
    ),
    ("bench-db-read-only", lambda t: bench(db=False)(t) + ["--db", READ_ONLY + "/r.db"], r"cannot write"),
    (
        "bench-db-text-file",
        bench_db(lambda t: _write(t, "notes.db", b"hello")),
        r"notes\.db: not a SQLite results",
    ),
    (
        "bench-db-foreign",
        bench_db(foreign_db),
        r"other\.db: a SQLite database without poisonlab's schema marker",
    ),
    (
        "bench-db-foreign-wal",
        bench_db(lambda t: foreign_db(t, wal=True)),
        r"without poisonlab's schema marker",
    ),
    (
        "bench-db-other-app-id",
        bench_db(lambda t: foreign_db(t, app_id=0x1234)),
        r"another application \(application_id 0x00001234\)",
    ),
    (
        "bench-out-is-a-file",
        lambda t: bench()(t) + ["--out", str(a_file(t))],
        r"--out .*afile: exists and is not",
    ),
    ("bench-out-read-only", lambda t: bench()(t) + ["--out", READ_ONLY], r"--out /proc/poisonlab-bad-input"),
    (
        "bench-out-tables-is-a-file",
        lambda t: bench()(t) + ["--out", str(_write(_mkdirs(t, "o"), "tables", b"x").parent)],
        r"--out .*o: tables is a file, where a folder is written",
    ),
    # ---- report
    ("report-missing-db", lambda t: ["report", str(t / "none.db")], r"none\.db: results database not found"),
    (
        "report-text-file",
        report(lambda t: _write(t, "x.db", b"text")),
        r"x\.db: not a SQLite results database",
    ),
    ("report-empty-file", report(lambda t: _write(t, "x.db", b"")), r"x\.db: empty file"),
    ("report-foreign-db", report(foreign_db), r"without poisonlab's schema marker"),
    ("report-folder", report(a_dir), r"adir: is a folder"),
    (
        "report-unknown-matrix",
        report(poisonlab_db, "--matrix", "nope"),
        r"no matrix named 'nope' \(stored: badm\)",
    ),
    ("report-out-is-a-file", lambda t: report(poisonlab_db)(t) + ["--out", str(a_file(t))], r"--out .*afile"),
    (
        "report-corrupt-spec",
        report(lambda t: poisonlab_db(t, "UPDATE matrices SET spec = '{oops'")),
        r"matrix 'badm': its stored spec is not a JSON object",
    ),
    ("report-empty-db", report(lambda t: poisonlab_db(t, "DELETE FROM matrices")), r"holds no matrix yet"),
    # ---- list and the command line itself
    ("list-unknown-flag", lambda t: ["list", "--bogus"], r"unrecognized arguments: --bogus"),
    ("list-extra-argument", lambda t: ["list", "models"], r"unrecognized arguments: models"),
    ("no-command", lambda t: [], r"the following arguments are required"),
    ("unknown-command", lambda t: ["train"], r"argument command: invalid choice: 'train'"),
]


def _write(tmp: Path, name: str, content: bytes) -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _mkdirs(tmp: Path, rel: str) -> Path:
    (tmp / rel).mkdir(parents=True)
    return tmp / rel


def _truncate_gz(tmp: Path) -> list[str]:
    argv = mnist_run(GOOD_IMAGES, gz=True)(tmp)
    path = tmp / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:25])
    return argv


def _not_gzip(tmp: Path) -> list[str]:
    argv = mnist_run(GOOD_IMAGES, gz=True)(tmp)
    (tmp / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data")
    return argv


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder (outputs default to runs/ here) with the environment restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POISONLAB_DATA", os.environ.get("POISONLAB_DATA", ""))
    return tmp_path


def call_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse
        return int(exit_.code)


@pytest.mark.parametrize(("setup", "pattern"), [pytest.param(s, p, id=i) for i, s, p in CLI_CASES])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(workdir, capsys, setup, pattern):
    argv = setup(workdir)
    capsys.readouterr()
    before = snapshot(workdir)
    code = call_main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.match(r"^poisonlab( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(workdir) == before  # nothing written, nothing changed (no results.db, no lock, no WAL)


def test_cases_cover_every_surface():
    ids = [i for i, _, _ in CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) + len(API_CASES) >= 150
    for prefix in ("yaml", "seed", "threshold", "name", "idx", "npz", "folder", "matrix", "bench", "report"):
        assert any(i.startswith(prefix) for i in ids), prefix


# --------------------------------------------------------------------------------------------- the API


def _load_config(text: str):
    def call(tmp):
        from poisonlab.experiment import load_config

        return load_config(config_file(tmp, text=text))

    return call


def _devices(text: str):
    def call(tmp):
        from poisonlab.experiment import check_devices, load_config

        check_devices(load_config(config_file(tmp, text=text)))

    return call


def _loader(name: str, make):
    def call(tmp):
        from poisonlab import data

        return getattr(data, name)(make(tmp))

    return call


def _store(make):
    def call(tmp):
        from poisonlab.bench.store import ResultStore

        ResultStore(make(tmp))

    return call


def _run_bench(make_db, **options):
    def call(tmp):
        from poisonlab.bench import build_matrix, run_bench

        run_bench(build_matrix(MATRIX), make_db(tmp), executor="inline", quiet=True, **options)

    return call


def _splits(make_root, name):
    def call(tmp):
        from poisonlab.experiment import DataConfig, load_splits

        load_splits(DataConfig(name=name, root=str(make_root(tmp))))

    return call


def _matrix_data(axes):
    def call(tmp):
        from poisonlab.bench import build_matrix, check_matrix_data

        check_matrix_data(build_matrix({**MATRIX, "axes": axes}))

    return call


def _blend(content: bytes):
    def call(tmp):
        from poisonlab.attacks.backdoor import blend_pattern

        blend_pattern("image", (1, 8, 8), image_path=str(_write(tmp, "t.png", content)))

    return call


def _check_out(make):
    def call(tmp):
        from poisonlab.results import check_output_dir

        check_output_dir(make(tmp))

    return call


def _write_outputs(make_out):
    def call(tmp):
        from poisonlab.bench import write_outputs

        write_outputs(poisonlab_db(tmp), make_out(tmp))

    return call


def _mnist(images: bytes, gz: bool = False):
    def call(tmp):
        from poisonlab.data import load_mnist

        load_mnist(mnist_folder(tmp, images, GOOD_LABELS, gz), "test")

    return call


def _mnist_bomb(tmp):
    from poisonlab.data import load_mnist

    root = mnist_folder(tmp, GOOD_IMAGES, GOOD_LABELS, gz=True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip_bomb(tmp))
    load_mnist(root, "test")


def _build_matrix(raw):
    def call(tmp):
        from poisonlab.bench import build_matrix

        build_matrix(raw)

    return call


def _sparse_cifar(tmp: Path) -> Path:
    """A CIFAR folder whose training batch is a 5 GiB sparse file (nothing of it may be read)."""
    (tmp / "c").mkdir()
    with open(tmp / "c" / "data_batch_1.bin", "wb") as f:
        f.truncate(5 * 2**30)
    return tmp / "c"


# (id, call: tmp -> None, exception type, message regex); the working folder must be unchanged afterwards
# except for what the case's own setup made (compared after setup where setup and call are separate).
API_CASES = [
    ("api-config-duplicate-key", _load_config("seed: 1\nseed: 2\n"), ConfigError, r"key 'seed' given twice"),
    ("api-config-unknown-key", _load_config("a: &a {x: 1}\n"), ConfigError, r"a: unknown key"),
    ("api-config-nan-threshold", _load_config("threshold: .nan\n"), ConfigError, r"threshold: .*finite"),
    (
        "api-config-inf-threshold-k",
        _load_config("threshold_k: .inf\n"),
        ConfigError,
        r"threshold_k: .*finite",
    ),
    ("api-config-name-absolute", _load_config("name: /etc/x\n"), ConfigError, r"plain file name"),
    ("api-config-seed", _load_config(f"seed: {2**64}\n"), ConfigError, r"seed"),
    ("api-config-cuda", _devices(f"train: {{device: '{CUDA}'}}\n"), ConfigError, r"train\.device: device"),
    (
        "api-surrogate-cuda",
        _devices(f"attacks: [{{name: gradient_matching, train: {{device: '{CUDA}'}}}}]\n"),
        ConfigError,
        r"attacks\[0\]\.train\.device: device",
    ),
    ("api-mnist-gzip-bomb", _mnist_bomb, DataError, r"unexpected trailing bytes after 160 bytes"),
    (
        "api-mnist-huge-header",
        _mnist(idx_bytes(2051, (2**32 - 1, 65535, 65535), b"")),
        DataError,
        r"expected 18446181123756261375 bytes",
    ),
    (
        "api-mnist-gz-huge-header",
        _mnist(idx_bytes(2051, (2**32 - 1, 65535, 65535), b""), gz=True),
        DataError,
        r"header announces",
    ),
    (
        "api-npz-single-class",
        _splits(lambda t: _npz(t, np.zeros(8, np.int64)), "npz"),
        DataError,
        r"single class",
    ),
    (
        "api-folder-huge-image",
        _loader("load_image_folder", lambda t: _folder(t, png_header(30000, 3000))),
        DataError,
        r"30000x3000 pixels",
    ),
    ("api-blend-huge-image", _blend(png_header(20000, 20000)), DataError, r"blend image is 20000x20000"),
    ("api-blend-corrupt-image", _blend(b"GIF89a broken"), DataError, r"cannot decode blend image"),
    ("api-npz-forged-shape", _loader("load_npz", forged_npz), DataError, r"declares shape"),
    ("api-cifar-sparse-huge", _loader("load_cifar10", _sparse_cifar), DataError, r"too large to load"),
    ("api-store-foreign", _store(foreign_db), PoisonlabError, r"schema marker"),
    ("api-store-other-app", _store(lambda t: foreign_db(t, 7)), PoisonlabError, r"another application"),
    ("api-store-folder", _store(a_dir), PoisonlabError, r"is a folder"),
    ("api-run-bench-foreign", _run_bench(foreign_db), PoisonlabError, r"schema marker"),
    (
        "api-run-bench-workers-0",
        _run_bench(lambda t: t / "n" / "r.db", workers=0),
        PoisonlabError,
        r"--workers",
    ),
    (
        "api-run-bench-threads-0",
        _run_bench(lambda t: t / "n" / "r.db", threads=0),
        PoisonlabError,
        r"--threads",
    ),
    ("api-check-out-file", _check_out(a_file), PoisonlabError, r"exists and is not a folder"),
    ("api-check-out-below-file", _check_out(below_a_file), PoisonlabError, r"is a file, not a folder"),
    ("api-write-outputs-out-file", _write_outputs(a_file), PoisonlabError, r"--out .*afile"),
    (
        "api-matrix-data-source",
        _matrix_data({"s": {"key": "attacks[0].source", "values": [12, 3]}}),
        ConfigError,
        r"cell s=12",
    ),
    ("api-matrix-name-dotdot", _build_matrix({**MATRIX, "name": ".."}), ConfigError, r"plain file name"),
]


def _npz(tmp: Path, y) -> Path:
    np.savez(tmp / "d.npz", x=np.zeros((len(y), 4, 4), np.uint8), y=y)
    return tmp / "d.npz"


def _folder(tmp: Path, content: bytes) -> Path:
    for cls in ("a", "b"):
        (tmp / "f" / cls).mkdir(parents=True)
        (tmp / "f" / cls / "1.png").write_bytes(content if cls == "a" else small_png())
    return tmp / "f"


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [pytest.param(c, e, p, id=i) for i, c, e, p in API_CASES]
)
def test_bad_input_to_the_api_raises_one_typed_line(workdir, call, error, pattern):
    with pytest.raises(error) as info:
        call(workdir)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and re.search(pattern, message), message
    for leftover in ("results.db", "results.db.lock", "runs"):
        assert not list(workdir.rglob(leftover)), leftover
    for path in workdir.rglob("*.db"):  # a refused database is left as it was: no WAL switch, no tables
        assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
        if path.name == "other.db":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                assert tables == ["users"]


# ------------------------------------------------------------------- what must keep working beside them


def test_a_foreign_database_keeps_its_bytes_and_journal_mode(workdir):
    path = foreign_db(workdir)
    before = path.read_bytes()
    assert call_main(["bench", matrix_file(workdir), "--db", str(path), "--executor", "inline"]) == 2
    assert path.read_bytes() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_an_older_poisonlab_database_without_the_application_id_is_still_read(workdir):
    path = poisonlab_db(workdir)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id = 0")
    assert call_main(["report", str(path), "--quiet", "--out", str(workdir / "rep")]) == 0
    assert (workdir / "rep" / "tables.md").is_file()


def test_the_lock_is_keyed_on_the_resolved_database_path(workdir):
    fcntl = pytest.importorskip("fcntl")
    from poisonlab.bench import build_matrix, run_bench

    (workdir / "real").mkdir()
    (workdir / "alias").symlink_to(workdir / "real")
    with open(workdir / "real" / "results.db.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PoisonlabError, match="another `poisonlab bench` is running"):
            run_bench(build_matrix(MATRIX), workdir / "alias" / "results.db", executor="inline", quiet=True)
    assert not (workdir / "real" / "results.db").exists()


def test_duplicate_keys_are_refused_but_yaml_merges_may_be_overridden(workdir):
    from poisonlab.experiment import load_config

    text = "name: merged\ndefaults: &d {epochs: 1, lr: 0.1}\n"
    path = config_file(workdir, text=text)
    with pytest.raises(ConfigError, match="defaults: unknown key"):  # parsed fine: only the key is unknown
        load_config(path)
    ok = config_file(workdir, text="name: merged\ntrain:\n  <<: {epochs: 2, lr: 0.1}\n  lr: 0.2\n")
    config = load_config(ok)
    assert config.train.lr == 0.2 and config.train.epochs == 2


def _stored_trials(tmp: Path) -> Path:
    """A database with MATRIX's two cells: one ok trial, one failed trial, one corrupt metrics row (of a
    third cell stored under the matrix's name before it was edited: an orphan)."""
    from poisonlab.bench import build_matrix
    from poisonlab.bench.store import ResultStore

    path = tmp / "r.db"
    matrix = build_matrix(MATRIX)
    (ok, bad) = matrix.cells
    row = {"seed": 1, "config": {"name": "badm[fraction=5]"}, "duration": 1.0}
    with ResultStore(path) as store:
        store.register(matrix)
        store.record({**row, "cell_id": ok.cell_id, "trial": 0, "status": "ok",
                      "metrics": {"victim.clean_accuracy": 0.9}})  # fmt: skip
        store.record({**row, "cell_id": bad.cell_id, "trial": 0, "status": "failed", "error": "Boom: no"})
        store.record({**row, "cell_id": "0ld0ld0ld0ld0ld0", "trial": 0, "status": "ok", "metrics": {},
                      "config": {"name": "badm[fraction=7]"}})  # fmt: skip
    return path


def test_report_lists_failed_cells_orphans_and_skips_a_corrupt_row_with_a_warning(workdir, capsys):
    db = _stored_trials(workdir)
    assert call_main(["report", str(db), "--quiet", "--out", str(workdir / "rep")]) == 0
    md = (workdir / "rep" / "tables.md").read_text()
    assert "| victim.clean_accuracy | 0.900 | failed |" in md  # the failed cell keeps its column
    assert "failed cell fraction=6" in md and "Boom: no" in md
    assert "1 stored trial(s) of 1 cell(s) no longer in matrix 'badm'" in md and "badm[fraction=7]" in md
    html = (workdir / "rep" / "report.html").read_text()
    assert "failed cell fraction=6" in html and "no longer in matrix" in html
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE trials SET metrics = '{not json' WHERE status = 'ok' AND cell_id != '0ld0ld0ld0ld0ld0'"
        )
    capsys.readouterr()
    assert call_main(["report", str(db), "--quiet", "--out", str(workdir / "rep2")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warning = [line for line in err.splitlines() if "unreadable row" in line]
    assert len(warning) == 1 and "trial 0 of cell fraction=5" in warning[0] and "not valid JSON" in warning[0]
    assert "unreadable row: trial 0 of cell fraction=5" in (workdir / "rep2" / "tables.md").read_text()


def test_results_are_written_with_the_umask_mode(workdir):
    from poisonlab.results import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(workdir / "o" / "results.json", "{}\n")
        assert (workdir / "o" / "results.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        write_atomic(workdir / "o" / "results.json", "{}\n")
        assert (workdir / "o" / "results.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert [p.name for p in (workdir / "o").iterdir()] == ["results.json"]  # no temporary file left


def test_a_real_process_exits_2_with_one_line(workdir):
    path = config_file(workdir, {"seed": 2**64})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "poisonlab.cli", "run", path, "--out", str(workdir / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "seed" in proc.stderr
    assert not (workdir / "o").exists()
