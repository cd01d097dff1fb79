"""A backdoor experiment with a detector, STRIP and fine-pruning, end to end through the CLI."""

import json

import pytest
import torch
import yaml

from poisonlab.cli import main
from poisonlab.experiment import load_config

CONFIG = {
    "name": "backdoor_tiny",
    "seed": 0,
    "data": {"name": "digits", "test_fraction": 0.4},
    "model": "cnn",
    "train": {"epochs": 12, "batch_size": 32, "lr": 0.05, "milestones": [9]},
    "attacks": [{"name": "badnets", "target": 0, "fraction": 0.05, "margin": 0}],
    "detectors": [{"name": "spectral"}],
    "input_detectors": [{"name": "strip", "num_overlays": 16, "frr": 0.05}],
    "defenses": [{"name": "fine_pruning", "step": 0.25, "finetune_epochs": 1}],
    "baseline": False,
    "report_top_k": 4,
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_backdoor_config_runs_end_to_end(tmp_path):
    path, out = tmp_path / "c.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(CONFIG))
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert m["attack.badnets.success_rate"] > 0.8 and m["victim.clean_accuracy"] > 0.9
    assert 0 <= m["detection.spectral.auroc"] <= 1
    assert m["strip.far"] < 0.5 and m["strip.frr_fit"] <= 0.05 and m["strip.auroc"] > 0.8
    for key in ("clean_accuracy", "clean_accuracy_before", "attack_success", "attack_success_before"):
        assert 0 <= m[f"defense.fine_pruning.{key}"] <= 1
    assert m["defense.fine_pruning.attack_success_before"] > 0.8
    steps = results["defenses"]["fine_pruning"]["steps"]
    assert steps[0]["pruned"] == 0 and len(steps) == m["defense.fine_pruning.steps"] + 1
    assert results["config"]["defenses"][0]["name"] == "fine_pruning"
    assert results["config"]["input_detectors"][0]["num_overlays"] == 16
    html = (out / "report.html").read_text()
    for title in (
        "Backdoor badnets: trigger",
        "Input detector strip: entropy",
        "Defense fine_pruning: accuracy",
    ):
        assert title in html
    assert html.count("data:image/png;base64,") >= 3 + 3 + 1  # detector, history + the three new figures


def test_bundled_backdoor_configs_validate(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    for name in ("seed004_mnist.yaml", "backdoor_digits.yaml"):
        config = load_config(root / name)
        assert config.defenses and config.input_detectors


def test_bad_defense_configs_are_one_line_errors(tmp_path, capsys):
    for change, message in (
        ({"defenses": [{"name": "fine_pruning", "step": 0}]}, "defenses[0]"),
        ({"defenses": [{"name": "no_such_defense"}]}, "unknown defense 'no_such_defense'"),
        ({"input_detectors": [{"name": "strip", "frr": 1.5}]}, "input_detectors[0]"),
        ({"input_detectors": [{"id": "victim", "name": "strip"}]}, "clashes"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**CONFIG, **change}))
        assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "o").exists()
