"""`poisonlab scan` on the command line: its three files, --truth for evaluation, one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonlab.cli import main
from poisonlab.data import image_folder_files, load_digits, save_image_folder, save_npz
from poisonlab.models import build_model


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """600 digits rows saved as an image folder, 30 of them with another label (the --truth file)."""
    tmp = tmp_path_factory.mktemp("scan")
    data = load_digits().subset(torch.arange(600))
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(data), generator=g)[:30]
    y = data.y.clone()
    y[rows] = (y[rows] + torch.randint(1, 10, (len(rows),), generator=g)) % 10
    planted = (
        data.replace_labels(y) if hasattr(data, "replace_labels") else type(data)(data.x, y, data.classes)
    )
    save_image_folder(tmp / "images", planted)
    # the folder is read class by class: --truth names rows in that order (each file is named by its row)
    loaded = [int(p.stem) for p in image_folder_files(tmp / "images")[0]]
    planted_rows = set(rows.tolist())
    (tmp / "truth.json").write_text(json.dumps([j for j, i in enumerate(loaded) if i in planted_rows]))
    return tmp, planted, rows


def test_scan_writes_csv_json_and_report_and_evaluates_against_truth(flipped, capsys):
    tmp, planted, rows = flipped
    out = tmp / "out"
    argv = ["scan", str(tmp / "images"), "--out", str(out), "--epochs", "6", "--folds", "2", "--quiet",
            "--truth", str(tmp / "truth.json")]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json", "scan.csv"]
    with open(out / "scan.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(planted)
    # the folder's rows keep their files: the path column names each image and its class folder
    assert all(Path(r["path"]).parent.name == r["label"] for r in table)
    record = json.loads((out / "results.json").read_text())
    evaluation = record["evaluation"]["combined"]
    assert evaluation["auroc"] > 0.9 and evaluation["recall_at_5pct"] > 0.5  # 5% of the rows are flipped
    assert "Against the ground truth" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "rows flagged by at least one detector" in printed


def _call(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _weights(tmp: Path, model: str = "cnn", shape=(1, 8, 8), classes: int = 10) -> str:
    torch.save(build_model(model, shape, classes, seed=0).state_dict(), tmp / "w.pt")
    return str(tmp / "w.pt")


CASES = [
    ("data-missing", lambda t: ["nope"], r"DATA nope: data not found"),
    ("model-unknown", lambda t: ["digits", "--model", "vgg"], r"--model: unknown model 'vgg'"),
    ("folds-one", lambda t: ["digits", "--folds", "1"], r"--folds must be at least 2, got 1"),
    ("epochs-zero", lambda t: ["digits", "--epochs", "0"], r"--epochs must be at least 1"),
    (
        "truth-missing",
        lambda t: ["digits", "--truth", str(t / "no.json")],
        r"--truth .*no\.json: file not found",
    ),
    (
        "truth-out-of-range",
        lambda t: ["digits", "--truth", _text(t, "[5, 99999]")],
        r"row id 99999 is outside the 1797 rows of DATA",
    ),
    ("truth-not-ids", lambda t: ["digits", "--truth", _text(t, '{"a": 1}')], r"expected a list of integer"),
    (
        "weights-other-classes",
        lambda t: ["digits", "--weights", _weights(t, classes=5)],
        r"the model has 5 classes but DATA 10",
    ),
    (
        "weights-other-model",
        lambda t: ["digits", "--weights", _weights(t, model="mlp")],
        r"weights of another model than 'cnn'",
    ),
    ("out-is-a-file", lambda t: ["digits", "--out", _text(t, "x")], r"--out .*: exists and is not a folder"),
]


def _text(tmp: Path, content: str) -> str:
    (tmp / "t.json").write_text(content)
    return str(tmp / "t.json")


@pytest.mark.parametrize(("setup", "pattern"), [pytest.param(s, p, id=i) for i, s, p in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, setup, pattern):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines = _call(
        ["scan", *argv, "--epochs", "1"] if "--epochs" not in argv else ["scan", *argv], capsys
    )
    assert code == 2 and len(lines) == 1 and re.search(pattern, lines[0]), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/scan, nothing half-written


def test_npz_round_trip_is_scanned_as_given(tmp_path):
    """An .npz written by poisonlab is scanned with its own labels (the CSV's label column)."""
    data = load_digits().subset(torch.arange(300))
    save_npz(tmp_path / "d.npz", data)
    assert main(["scan", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o"), "--epochs", "1", "--quiet",
                 "--folds", "2"]) == 0  # fmt: skip
    with open(tmp_path / "o" / "scan.csv", newline="") as f:
        labels = [r["label"] for r in csv.DictReader(f)]
    assert labels == [data.classes[i] for i in data.y.tolist()]
    assert np.isfinite([float(v) for v in _column(tmp_path / "o" / "scan.csv", "combined")]).all()


def _column(path: Path, name: str) -> list[str]:
    with open(path, newline="") as f:
        return [r[name] for r in csv.DictReader(f)]
