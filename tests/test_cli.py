import json
import math

import pytest
import yaml

from poisonlab.cli import main
from poisonlab.experiment import load_config, run_experiment

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"name": "digits", "train_size": 400, "test_size": 200},
    "model": "mlp",
    "train": {"epochs": 4, "batch_size": 32, "checkpoint_every": 2, "lr": 0.05},
    "attacks": [{"name": "label_flip_targeted", "source": 3, "target": 9, "count": 10}],
    "detectors": [{"name": "tracin_self"}, {"id": "opp", "name": "tracin_test", "num_test": 10}],
    "report_top_k": 6,
}


def write(tmp_path, config, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, TINY)), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    assert results["config"]["attacks"][0] == {
        "id": "label_flip_targeted", "name": "label_flip_targeted", "source": 3, "target": 9,
        "fraction": None, "count": 10,
    }  # fmt: skip
    assert results["config"]["train"]["momentum"] == 0.9  # defaults resolved
    assert metrics["attack.poison_count"] == 10
    assert 0.5 < metrics["victim.clean_accuracy"] <= 1
    for key in (
        "detection.tracin_self.auroc",
        "detection.opp.auroc",
        "detection.tracin_self.recall_at_budget",
    ):
        assert 0 <= metrics[key] <= 1
    assert results["versions"]["torch"] and results["timings"]["total"] > 0
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "detection.tracin_self.auroc" in html
    assert html.count("data:image/png;base64,") >= 4
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]


def test_same_config_gives_the_same_numbers(tmp_path):
    config = load_config(write(tmp_path, TINY))
    a = run_experiment(config).results["metrics"]
    b = run_experiment(config).results["metrics"]
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs_total": 3}, "epochs_total: unknown key"),
        ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"attacks": [{"name": "label_flip_targeted", "fraction": 2}]}, "attacks[0]"),
        ({"detectors": [{"name": "tracin_self"}, {"name": "tracin_self"}]}, "share the id"),
        ({"detectors": [{"name": "no_such_detector"}]}, "unknown detector 'no_such_detector'"),
        ({"data": {"name": "imagenet"}}, "data.name"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    out = tmp_path / "out"
    code = main(["run", str(write(tmp_path, {**TINY, **change})), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("poisonlab: error:") and message in err[0]
    assert not out.exists()


def test_unreadable_config_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_list_names_every_method(capsys):
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for name in ("label_flip_targeted", "label_flip_random", "tracin_self", "tracin_test", "cnn", "resnet18"):
        assert name in out
    assert "sign:" in out  # parameters are documented
