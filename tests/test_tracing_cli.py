"""`poisonlab mark` and `poisonlab trace`: a data owner's radioactive marking (Sablayrolles 2020) from the
command line, its files in every format, the test of suspect models, and every bad input (exit 2, one line,
nothing written).

The settings are tiny (a few marking steps, a few epochs): the tests check the files, the eps bound, the
untouched rows and the printed decision, not the test's power (measured in tests/test_tracing.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonlab.cli import main
from poisonlab.data import (
    Dataset,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_mnist,
    load_npz,
    save_cifar_batches,
    save_idx,
    save_image_folder,
    save_npz,
)
from poisonlab.models import build_model
from poisonlab.tracing import trace as trace_api
from poisonlab.training import TrainConfig, train

TINY = ["--steps", "20", "--epochs", "2", "--threads", "1", "--quiet"]
FAST = ["--steps", "3", "--epochs", "1", "--threads", "1", "--quiet"]
READ_ONLY = "/proc/poisonlab-bad-input"  # a place no process can write (not even root)


def call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse
        return int(exit_.code)


def snapshot(folder: Path) -> dict[str, object]:
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """The bundled digits, a fifth of the rows marked at 16/255 (npz out)."""
    out = tmp_path_factory.mktemp("mark") / "out"
    assert call(["mark", "digits", "--out", str(out), "--fraction", "0.2", "--eps", "16", *TINY]) == 0
    return out


def test_mark_writes_the_marked_npz_the_carriers_and_the_rows(marked):
    assert sorted(p.name for p in marked.iterdir()) == ["carriers.pt", "marked.json", "train.npz"]
    info = json.loads((marked / "marked.json").read_text())
    clean, released = load_digits(), load_npz(marked / "train.npz")
    rows = torch.tensor(info["rows"])
    assert info["count"] == len(rows) == round(0.2 * len(clean)) and info["format"] == "npz"
    assert info["eps_levels"] == 16 and info["seed"] == 0 and info["model"] == "cnn"
    assert torch.equal(released.y, clean.y) and released.classes == clean.classes
    others = torch.ones(len(clean), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(released.x[others], clean.x[others])  # the unmarked rows are untouched, bit for bit
    change = (released.x[rows] - clean.x[rows]).abs().flatten(1).amax(1)
    assert float(change.max()) <= 16 / 255 + 1e-6 and float((change > 0).float().mean()) > 0.9
    assert info["max_change_levels"] == pytest.approx(float(change.max()) * 255, abs=1e-3)
    per_class = torch.bincount(clean.y[rows], minlength=10).double()  # stratified:
    assert torch.allclose(per_class, torch.bincount(clean.y, minlength=10).double() * 0.2, atol=1)


def test_the_carriers_file_loads_with_weights_only(marked):
    record = torch.load(marked / "carriers.pt", weights_only=True)
    assert record["model"] == "cnn" and record["input_shape"] == [1, 8, 8] and len(record["classes"]) == 10
    assert record["eps"] == pytest.approx(16 / 255) and record["fraction"] == 0.2 and record["seed"] == 0
    u = record["carriers"]
    assert u.shape == (10, 128) and torch.allclose(u.norm(dim=1), torch.ones(10), atol=1e-5)
    marker = build_model("cnn", (1, 8, 8), 10)
    marker.load_state_dict(record["marker_state"])


def _suspect(tmp_path: Path, data: Dataset, seed: int = 1) -> Path:
    model = build_model("cnn", data.input_shape, data.num_classes, seed=seed)
    train(model, data, TrainConfig(epochs=4), seed=seed)
    torch.save(model.state_dict(), tmp_path / "suspect.pt")
    return tmp_path / "suspect.pt"


def _trace(capsys, carriers: Path, weights: Path, data: str = "digits", *extra: str) -> list[str]:
    capsys.readouterr()
    argv = ["trace", "--carriers", str(carriers), "--weights", str(weights), "--model", "cnn", "--data", data]
    assert call([*argv, "--threads", "1", *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()


@pytest.mark.parametrize("trained_on", ["marked", "clean"])
def test_trace_prints_the_p_value_and_the_decision_and_exits_0(tmp_path, capsys, marked, trained_on):
    data = load_npz(marked / "train.npz") if trained_on == "marked" else load_digits()
    weights = _suspect(tmp_path, data)
    lines = _trace(capsys, marked / "carriers.pt", weights)
    p = re.match(r"^p-value: (\S+) \(Fisher's combination over 10 classes, 1797 clean images\)$", lines[0])
    assert p, lines
    # the same test run through the Python API on the same files: the CLI prints its p-value, not another
    record = torch.load(marked / "carriers.pt", weights_only=True)
    marker = build_model("cnn", (1, 8, 8), 10)
    marker.load_state_dict(record["marker_state"])
    suspect = build_model("cnn", (1, 8, 8), 10)
    suspect.load_state_dict(torch.load(weights, weights_only=True))
    expected = trace_api(suspect, marker, record["carriers"], load_digits().x).p_value
    assert p.group(1) == f"{expected:.4g}", (lines[0], expected)
    assert lines[1] == ("traced: p < 0.05" if float(p.group(1)) < 0.05 else "not traced: p >= 0.05")
    assert lines[2].startswith("strongest classes: ") and len(lines) == 3
    again = _trace(capsys, marked / "carriers.pt", weights, "digits", "--alpha", "0.999")
    assert again[0] == lines[0]
    assert again[1] == ("traced: p < 0.999" if float(p.group(1)) < 0.999 else "not traced: p >= 0.999")


def _uint8(shape, classes, n=40, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, len(classes), n))  # grouped by class, as an image folder loads
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return Dataset(torch.from_numpy(x.astype(np.float32) / 255), torch.from_numpy(y), classes)


DIGITS = tuple(str(i) for i in range(10))
FORMATS = {  # format: (dataset, writer into a folder -> the DATA argument, loader of the output folder)
    "npz": (_uint8((3, 8, 8), ("a", "b", "c")), lambda d, p: save_npz(p / "d.npz", d, uint8=True), None),
    "idx": (_uint8((1, 12, 12), DIGITS), lambda d, p: save_idx(p, d), load_mnist),
    "cifar": (_uint8((3, 32, 32), ("cat", "dog")), lambda d, p: save_cifar_batches(p, d), load_cifar10),
    "folder": (
        _uint8((1, 8, 8), ("ant", "bee", "cow")),
        lambda d, p: save_image_folder(p, d),
        load_image_folder,
    ),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_mark_writes_each_format_back_in_it_within_eps_on_the_uint8_grid(tmp_path, capsys, fmt):
    data, write, load = FORMATS[fmt]
    (tmp_path / "in").mkdir()
    write(data, tmp_path / "in")
    source = tmp_path / "in" / "d.npz" if fmt == "npz" else tmp_path / "in"
    out = tmp_path / "out"
    assert call(["mark", str(source), "--out", str(out), "--fraction", "0.25", "--eps", "8", *FAST]) == 0
    info = json.loads((out / "marked.json").read_text())
    assert info["format"] == fmt  # guessed from the path
    released = load_npz(out / "train.npz") if fmt == "npz" else load(out)
    rows = torch.tensor(info["rows"])
    assert len(rows) == 10 and torch.equal(released.y, data.y) and released.classes == data.classes
    others = torch.ones(len(data), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(released.x[others], data.x[others])
    levels = released.x[rows] * 255 - data.x[rows] * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3) and float(levels.abs().max()) <= 8 + 1e-3
    assert float(levels.abs().max()) > 0
    assert torch.load(out / "carriers.pt", weights_only=True)["input_shape"] == list(data.input_shape)
    if fmt == "npz":  # the same seed marks the same way
        again = tmp_path / "again"
        assert (
            call(["mark", str(source), "--out", str(again), "--fraction", "0.25", "--eps", "8", *FAST]) == 0
        )
        assert torch.equal(load_npz(again / "train.npz").x, released.x)
        assert json.loads((again / "marked.json").read_text())["rows"] == info["rows"]


def test_trace_reads_clean_data_of_any_format(tmp_path, capsys):
    data, write, _ = FORMATS["folder"]
    write(data, tmp_path / "clean")
    out = tmp_path / "out"
    assert call(["mark", str(tmp_path / "clean"), "--out", str(out), *FAST]) == 0
    weights = _suspect(tmp_path, data)
    lines = _trace(capsys, out / "carriers.pt", weights, str(tmp_path / "clean"))
    assert lines[0].startswith("p-value: ") and "over 3 classes, 40 clean images" in lines[0]


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, capsys):
    import poisonlab.tracing.owner as owner

    data, write, _ = FORMATS["npz"]
    (tmp_path / "in").mkdir()
    write(data, tmp_path / "in")
    (tmp_path / "empty").mkdir()

    def fail(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(owner, "save_carriers", fail)
    before = snapshot(tmp_path)
    for out in (tmp_path / "new" / "out", tmp_path / "empty"):
        capsys.readouterr()
        assert main(["mark", str(tmp_path / "in" / "d.npz"), "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            err[-1]
            == f"poisonlab: error: --out {out}: cannot write the marked data (No space left on device)"
        )
        assert snapshot(tmp_path) == before  # no data file, no stage folder, no parent created


# ------------------------------------------------------------------------------------------ bad inputs


def _npz(tmp: Path, x: np.ndarray, y: np.ndarray, name: str = "d.npz") -> str:
    np.savez(tmp / name, x=x, y=y)
    return str(tmp / name)


def _digits_npz(tmp: Path) -> str:
    d = load_digits()
    return _npz(tmp, d.x.numpy()[:60], d.y.numpy()[:60])


def _folder(tmp: Path) -> str:
    save_image_folder(tmp / "imgs", FORMATS["folder"][0])
    return str(tmp / "imgs")


def mark(data, *extra: str, out=None):
    def setup(tmp: Path, marked: Path) -> list[str]:
        source = data(tmp) if callable(data) else data
        target = out(tmp) if callable(out) else out or str(tmp / "out")
        return ["mark", source, "--out", target, *FAST, *extra]

    return setup


def _text_file(tmp: Path) -> str:
    (tmp / "x.txt").write_text("x")
    return str(tmp / "x.txt")


def _empty_folder(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _nonempty(tmp: Path) -> str:
    (tmp / "full").mkdir()
    (tmp / "full" / "train.npz").write_bytes(b"old")
    return str(tmp / "full")


def _file(tmp: Path) -> str:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile")


MARK_CASES = [
    ("missing-data", mark("nope.npz"), r"nope\.npz: data not found"),
    ("missing-folder", mark(lambda t: str(t / "gone")), r"gone: data not found"),
    ("fraction-zero", mark("digits", "--fraction", "0"), r"--fraction must be in \(0, 1\], got 0"),
    ("fraction-above-1", mark("digits", "--fraction", "1.5"), r"--fraction must be in \(0, 1\]"),
    ("fraction-nan", mark("digits", "--fraction", "nan"), r"--fraction must be in \(0, 1\]"),
    (
        "fraction-no-row",
        mark("digits", "--fraction", "0.0001"),
        r"--fraction 0\.0001 marks no row of the 1797",
    ),
    (
        "eps-zero",
        mark("digits", "--eps", "0"),
        r"--eps \(in levels /255: 10 = 10/255\) must be in \(0, 255\]",
    ),
    ("eps-above-255", mark("digits", "--eps", "300"), r"--eps .* must be in \(0, 255\], got 300"),
    ("eps-inf", mark("digits", "--eps", "inf"), r"--eps .* must be in \(0, 255\]"),
    (
        "eps-below-a-level",
        mark(_folder, "--eps", "0.5"),
        r"--eps 0\.5: below one pixel level, too small for folder",
    ),
    ("eps-not-a-number", mark("digits", "--eps", "ten"), r"argument --eps: invalid float value: 'ten'"),
    ("steps-zero", mark("digits", "--steps", "0"), r"--steps must be at least 1, got 0"),
    ("epochs-zero", mark("digits", "--epochs", "0"), r"--epochs must be at least 1, got 0"),
    ("seed-negative", mark("digits", "--seed", "-1"), r"--seed must be at least 0"),
    ("threads-zero", mark("digits", "--threads", "0"), r"--threads must be at least 1"),
    ("model-unknown", mark("digits", "--model", "vgg"), r"--model: unknown model 'vgg'"),
    (
        "model-too-small-images",
        mark(lambda t: _npz(t, np.zeros((6, 3, 3)), np.arange(6) % 2)),
        r"--model cnn for DATA .*d\.npz: model 'cnn' needs images of at least 4x4",
    ),
    ("one-class", mark(lambda t: _npz(t, np.zeros((6, 8, 8)), np.zeros(6, int))), r"DATA has 1 class\(es\)"),
    (
        "one-class-present",
        mark(lambda t: _npz(t, np.zeros((6, 8, 8)), np.ones(6, int))),
        r"d\.npz: holds a single class",
    ),
    ("format-unknown", mark("digits", "--format", "tiff"), r"argument --format: invalid choice: 'tiff'"),
    ("format-wrong", mark(_digits_npz, "--format", "idx"), r"d\.npz: not a folder"),
    ("format-unguessable", mark(_text_file), r"x\.txt: cannot tell the data format of this file"),
    ("format-empty-folder", mark(_empty_folder), r"empty: cannot tell the data format \(no train\.npz"),
    ("out-missing", lambda t, m: ["mark", "digits", *FAST], r"the following arguments are required: --out"),
    ("out-read-only", mark("digits", out=READ_ONLY), r"--out /proc/poisonlab-bad-input: cannot write there"),
    ("out-below-a-file", mark("digits", out=lambda t: _file(t) + "/out"), r"afile is a file, not a folder"),
    ("out-not-empty", mark("digits", out=_nonempty), r"full: not empty \(holds 'train\.npz'\); mark writes"),
    ("out-is-a-file", mark("digits", out=_file), r"afile: exists and is not a folder"),
]


def _carriers(marked: Path):
    return str(marked / "carriers.pt")


def _torch_file(tmp: Path, obj, name: str = "c.pt") -> str:
    torch.save(obj, tmp / name)
    return str(tmp / name)


def _weights(tmp: Path, model: str = "cnn", shape=(1, 8, 8), classes: int = 10, name: str = "w.pt") -> str:
    return _torch_file(tmp, build_model(model, shape, classes, seed=0).state_dict(), name)


class Pickled:
    """Not a tensor or a plain value: weights_only loading refuses it."""


def trace(carriers=None, weights=None, data="digits", *extra: str, model: str = "cnn"):
    def setup(tmp: Path, marked: Path) -> list[str]:
        c = carriers(tmp, marked) if carriers else _carriers(marked)
        w = weights(tmp) if weights else _weights(tmp)
        d = data(tmp) if callable(data) else data
        return ["trace", "--carriers", c, "--weights", w, "--model", model, "--data", d, *extra]

    return setup


def _record(marked: Path, **change) -> dict:
    record = torch.load(marked / "carriers.pt", weights_only=True)
    return {k: v for k, v in {**record, **change}.items() if v is not None}


TRACE_CASES = [
    (
        "carriers-missing",
        trace(lambda t, m: str(t / "none.pt")),
        r"--carriers .*none\.pt: carriers file not found",
    ),
    (
        "carriers-text",
        trace(lambda t, m: _file(t)),
        r"afile: not a carriers file \(not written by torch\.save\)",
    ),
    (
        "carriers-pickled-object",
        trace(lambda t, m: _torch_file(t, {"format": "x", "obj": Pickled()})),
        r"not a carriers file \(it holds a pickled object \(test_tracing_cli\.Pickled\) that safe loading "
        r"\(weights_only\) refuses",
    ),
    (
        "carriers-a-model",
        trace(lambda t, m: _torch_file(t, build_model("logreg", (1, 8, 8), 10))),
        r"pickled object \(poisonlab\.models\.Classifier\) that safe loading",
    ),
    (
        "carriers-other-keys",
        trace(lambda t, m: _torch_file(t, {"carriers": torch.zeros(10, 128)})),
        r"not a carriers file written by `poisonlab mark` \(got keys \['carriers'\]\)",
    ),
    (
        "carriers-weights-file",
        trace(lambda t, m: _weights(t, name="c.pt")),
        r"not a carriers file written by `poisonlab mark`",
    ),
    (
        "carriers-missing-key",
        trace(lambda t, m: _torch_file(t, _record(m, classes=None))),
        r"not a complete carriers file \(missing 'classes'\)",
    ),
    (
        "carriers-wrong-count",
        trace(lambda t, m: _torch_file(t, _record(m, carriers=torch.zeros(9, 128)))),
        r"9 carriers of 128 dimensions, 10 classes",
    ),
    (
        "carriers-marker-mismatch",
        trace(lambda t, m: _torch_file(t, _record(m, input_shape=[1, 16, 16]))),
        r"its marking network's weights do not fit a cnn for \(1, 16, 16\) images",
    ),
    (
        "weights-missing",
        trace(weights=lambda t: str(t / "none.pt")),
        r"none\.pt: --weights: weights file not found",
    ),
    (
        "weights-text",
        trace(weights=_file),
        r"afile: --weights: not a torch weights file \(not written by torch\.save\)$",
    ),
    (
        "model-other-class-count",
        trace(weights=lambda t: _weights(t, classes=5)),
        r"--weights .*w\.pt: the model has 5 classes but the carriers 10",
    ),
    (
        "model-other-input-shape",
        trace(weights=lambda t: _weights(t, shape=(1, 16, 16))),
        r"a cnn for inputs of another shape than the carriers: \(1, 8, 8\) \('body\.7\.weight' has shape",
    ),
    (
        "weights-of-another-model",
        trace(weights=lambda t: _weights(t, model="mlp")),
        r"w\.pt: weights of another model than 'cnn' \(missing 'body\.0\.weight'\)",
    ),
    ("model-unknown", trace(model="vgg"), r"--model: unknown model 'vgg'"),
    (
        "data-other-shape",
        trace(data=lambda t: _npz(t, np.zeros((4, 3, 32, 32), np.uint8), np.arange(4) % 2)),
        r"--data .*d\.npz: images of shape \(3, 32, 32\), but the carriers were drawn for \(1, 8, 8\)",
    ),
    (
        "data-one-row",
        trace(data=lambda t: _npz(t, np.zeros((1, 8, 8)), np.zeros(1, int))),
        r"1 image; aligning",
    ),
    ("data-missing", trace(data="nope"), r"--data nope: data not found"),
    ("alpha-zero", trace(None, None, "digits", "--alpha", "0"), r"--alpha must be in \(0, 1\), got 0"),
    ("alpha-one", trace(None, None, "digits", "--alpha", "1"), r"--alpha must be in \(0, 1\)"),
    (
        "carriers-flag-missing",
        lambda t, m: ["trace", "--model", "cnn"],
        r"arguments are required: --carriers",
    ),
]


@pytest.mark.parametrize(
    ("setup", "pattern"), [pytest.param(s, p, id=i) for i, s, p in MARK_CASES + TRACE_CASES]
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys, marked, setup, pattern
):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path, marked)
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = call(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and not out, err
    assert re.match(r"^poisonlab( \w+)?: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(tmp_path) == before
