"""What results.json promises a reader: net effects against the clean twin, budgets measured from the clean
original, accuracies without the targets, oracles marked, independent detection models, provenance."""

from __future__ import annotations

import math
import os

import pytest
import torch

from poisonlab.experiment import ExperimentConfig, load_splits, run_experiment, without_targets
from poisonlab.models import build_model
from poisonlab.report import render_report
from poisonlab.training import accuracy

FAST = {"epochs": 6, "batch_size": 32, "lr": 0.05}


def _run(**config):
    return run_experiment(ExperimentConfig.model_validate({"model": "mlp", "train": FAST, **config}))


@pytest.fixture(scope="module")
def flipped():
    """Digits, 60% of the 3s relabelled 9, two trials, detectors on the victim and an oracle reference."""
    return _run(
        trials=2,
        attacks=[{"name": "label_flip_targeted", "id": "flip", "source": 3, "target": 9, "fraction": 0.6}],
        detectors=[{"name": "tracin_self"}],
        reference={"name": "simulated", "precision": 1.0, "recall": 0.5},
        purifiers=[{"name": "ref"}],
    )


def test_net_success_is_the_victim_minus_its_twin_with_a_paired_standard_error(flipped):
    res = flipped.results
    trials = res["per_trial"]
    for t in trials:
        net = t["attack.flip.success_rate"] - t["attack.flip.twin_success_rate"]
        assert t["attack.flip.net_success_rate"] == pytest.approx(net)
        purified = t["purification.ref.flip.success_rate"] - t["attack.flip.twin_success_rate"]
        assert t["purification.ref.flip.net_success_rate"] == pytest.approx(purified)
    nets = [t["attack.flip.net_success_rate"] for t in trials]
    assert res["metrics"]["attack.flip.net_success_rate"] > 0.3  # the flips work: far above the twin
    spread = math.sqrt(sum((v - sum(nets) / 2) ** 2 for v in nets))  # std with ddof 1 over 2 trials
    assert res["metrics_se"]["attack.flip.net_success_rate"] == pytest.approx(spread / math.sqrt(2))


def test_oracle_metrics_are_listed_and_marked_in_the_report(flipped):
    res = flipped.results
    assert "purification" in res["oracles"] and "simulated" in res["oracles"]["purification"]
    oracle = set(res["oracle_metrics"])
    assert "detection.tracin_self.recall_at_budget" in oracle  # reads the true poison count
    assert "purification.ref.clean_accuracy" in oracle
    assert "detection.tracin_self.auroc" not in oracle and "attack.flip.success_rate" not in oracle
    html = render_report(res, [])
    assert html.count("class='oracle'") >= len(oracle)
    # recall at a threshold always comes with its flagged share and precision, and at fixed shares
    for key in ("flagged_fraction", "precision", "recall_at_1pct", "precision_at_5pct"):
        assert f"detection.tracin_self.{key}" in res["metrics"]


def test_detect_with_oracle_clean_marks_detection_and_fine_pruning_oracle_marks_its_defense():
    config = ExperimentConfig.model_validate({
        "detect_with": "oracle_clean", "attacks": [{"name": "badnets", "fraction": 0.05}],
        "defenses": [{"name": "fine_pruning", "id": "fp", "stop": "oracle_success"},
                     {"name": "fine_pruning", "id": "fp_defender"}],
    })  # fmt: skip
    from poisonlab.experiment import oracle_prefixes

    prefixes = oracle_prefixes(config)
    assert "detection" in prefixes and "defense.fp" in prefixes and "defense.fp_defender" not in prefixes
    with pytest.raises(ValueError, match="oracle_clean"):
        ExperimentConfig.model_validate({"detect_with": "clean"})


def test_accuracy_excludes_the_target_and_budgets_are_measured_from_the_clean_original():
    res = _run(
        setting="transfer",
        head_train={"epochs": 5, "weight_decay": 0},
        attacks=[{"name": "feature_collision", "id": "fc", "count": 10, "steps": 20}],
    )
    art = res.first
    goal = art.poisoned.goals[0]
    train_set, test_set, _ = load_splits(ExperimentConfig().data, 0)
    rest = without_targets(test_set, art.poisoned.goals)
    assert len(rest) == len(test_set) - 1 and goal.target_index is not None
    assert not any(torch.equal(row, goal.target_x[0]) for row in rest.x)
    assert res.results["metrics"]["victim.clean_accuracy"] == pytest.approx(accuracy(art.run.model, rest))
    linf, _ = art.poisoned.perturbation()
    m = res.results["metrics"]
    assert m["attack.fc.perturbation_linf"] == pytest.approx(float(linf.max()))
    assert 0 < m["attack.fc.perturbation_linf"] <= 16 / 255 + 1e-6  # the default bound, watermark included
    assert m["attack.fc.perturbation_l2"] > 0


def test_holdout_is_disjoint_from_the_training_rows_and_feeds_the_detectors():
    config = ExperimentConfig.model_validate({
        "data": {"name": "digits", "holdout_size": 300}, "detect_with": "holdout", "model": "mlp",
        "train": FAST, "attacks": [{"name": "label_flip_random", "fraction": 0.05}],
        "detectors": [{"name": "knn", "k": 20}],
    })  # fmt: skip
    train_set, test_set, holdout = load_splits(config.data, config.seed)
    assert len(holdout) == 300 and len(train_set) + len(holdout) + len(test_set) == 1797
    train_rows = {bytes(r.numpy().tobytes()) for r in train_set.x}
    shared = sum(bytes(r.numpy().tobytes()) in train_rows for r in holdout.x)
    assert shared <= 2  # digits has a few exact duplicate images; the split itself shares no row
    res = run_experiment(config)
    assert res.first.run is not None and res.first.run.model is not None
    assert res.results["oracle_metrics"] == ["detection.knn.recall_at_budget"]
    with pytest.raises(ValueError, match="holdout_size"):
        ExperimentConfig.model_validate({"detect_with": "holdout"})


def test_detect_with_weights_loads_a_state_dict_safely(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, seed=3)
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    res = _run(detect_with="weights", detect_weights=str(path), detectors=[{"name": "spectral"}],
               attacks=[{"name": "badnets", "fraction": 0.05}])  # fmt: skip
    loaded = res.first.run.model
    assert torch.equal(loaded.head.weight, model.head.weight)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="not a torch weights file"):
        _run(detect_with="weights", detect_weights=str(bad), detectors=[{"name": "spectral"}])


def test_results_record_threads_and_device():
    res = _run(trials=1, train={**FAST, "epochs": 1})
    env = res.results["versions"]
    assert env["torch_threads"] == torch.get_num_threads() and env["device"] in ("cpu", "cuda")
    assert env["torch"] == torch.__version__
    assert env["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")


def test_importing_poisonlab_sets_a_passive_openmp_wait_unless_one_is_set():
    """Spinning OpenMP threads stall each other on shared cores (benchmarks/results/threads.md): poisonlab
    sets OMP_WAIT_POLICY=PASSIVE before torch loads, and keeps a value the user set."""
    import subprocess
    import sys

    code = "import os, poisonlab, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
