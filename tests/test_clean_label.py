"""Targeted clean-label attacks: feature collision (transfer), gradient matching (from scratch), first-order
poisoning and MetaPoison (one simulated training step; a retrained victim in transfer), budgets, and the
runner's two settings."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from poisonlab.attacks import FeatureCollision, FirstOrder, GradientMatching, MetaPoison
from poisonlab.attacks.targeted import recolor
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.errors import ConfigError
from poisonlab.experiment import ExperimentConfig, report_figures, run_experiment
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, accuracy, predict, train, train_head

FAST = TrainConfig(epochs=10, lr=0.05, batch_size=32)


@pytest.fixture(scope="module")
def mnist(data_root):
    train_set = stratified_subset(load_dataset("mnist", data_root, split="train"), 2000, seed=0)
    test_set = stratified_subset(load_dataset("mnist", data_root, split="test"), 500, seed=0)
    return train_set, test_set


@pytest.fixture(scope="module")
def digits_model(digits_split):
    train_set, _ = digits_split
    return train(build_model("cnn", train_set.input_shape, 10, seed=0), train_set, FAST, seed=0).model


def test_feature_collision_unbounded_flips_targets_in_transfer_and_the_default_stays_in_its_budget(
    digits_split, digits_model
):
    """Transfer (frozen digits cnn, retrained head), 13 poisons (1%). The paper's unbounded variant
    (``eps: unbounded``, beta without the 255^2 of [0, 255] pixels) flips 4 of 6 targets (log10 of the
    adversarial probability over the clean twin's: 4-15); the default bound of 16/255 around the clean
    originals (watermark included) keeps every poison within it, and there, on these small models, the
    collision adds nothing measurable to the watermark (benchmarks/results/clean_label.md)."""
    train_set, test_set = digits_split
    head = TrainConfig(epochs=20, weight_decay=0)
    hits, clean_hits, ratios = 0, 0, []
    for seed in range(5):
        attack = FeatureCollision(count=13, steps=150, eps="unbounded", beta_scale="unit")
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed), victim=digits_model,
                                test=test_set)  # fmt: skip
        goal = poisoned.goals[0]
        assert (poisoned.data.y == train_set.y).all()
        assert (poisoned.original.y == goal.adversarial_label).all()
        victim = train_head(digits_model, poisoned.data, head, seed=seed).model
        twin = train_head(digits_model, train_set, head, seed=seed).model
        on_victim, on_twin = attack.evaluate(victim, test_set, goal), attack.evaluate(twin, test_set, goal)
        hits += on_victim["success"]
        clean_hits += on_twin["success"]
        ratios.append(math.log10(on_victim["adversarial_probability"] / on_twin["adversarial_probability"]))
        assert accuracy(victim, test_set) > 0.9
    assert hits >= 3 and clean_hits == 0, (hits, clean_hits, ratios)
    assert min(ratios) > 1, ratios
    bounded = FeatureCollision(count=13, steps=20).craft(
        train_set, generator=torch.Generator().manual_seed(0), victim=digits_model, test=test_set
    )
    linf, _ = bounded.perturbation()
    assert linf.max() <= 16 / 255 + 1e-6 and linf.max() > 8 / 255  # measured from the clean originals


def test_gradient_matching_lowers_its_loss_and_fools_from_scratch_victims_more_often(digits_split):
    """Digits, cnn from scratch, 120 poisons at eps 128/255 toward the surrogate's runner-up class, the
    surrogate retrained on the poisons every 30 steps: victims misclassify targets that clean training never
    does (2 of these 3; 2 of 6 in benchmarks/results/gradient_matching_digits.md, 0 at smaller budgets) and
    give the adversarial class far more probability."""
    train_set, test_set = digits_split
    ratios, hits, clean_hits = [], 0, 0
    for seed in range(3):
        attack = GradientMatching(
            count=120, eps=128 / 255, steps=120, restarts=1, augment=False, train=FAST,
            adversarial_choice="runner_up", retrain_every=30,
        )  # fmt: skip
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed), test=test_set)
        goal = poisoned.goals[0]
        loss = goal.params["loss"]
        assert loss["last"] < 0.8 * loss["first"]
        delta = poisoned.data.x[poisoned.poison_idx] - poisoned.original.x
        assert delta.abs().max() <= 128 / 255 + 1e-6 and (poisoned.data.y == train_set.y).all()
        victim = train(build_model("cnn", (1, 8, 8), 10, seed=50 + seed), poisoned.data, FAST, seed=50 + seed)
        clean = train(build_model("cnn", (1, 8, 8), 10, seed=50 + seed), train_set, FAST, seed=50 + seed)
        on_victim = attack.evaluate(victim.model, test_set, goal)
        on_clean = attack.evaluate(clean.model, test_set, goal)
        hits += on_victim["success"]
        clean_hits += on_clean["success"]
        ratios.append(math.log10(on_victim["adversarial_probability"] / on_clean["adversarial_probability"]))
    assert hits > clean_hits, (hits, clean_hits, ratios)
    assert min(ratios) > 0 and sum(ratios) / len(ratios) > 2, ratios


def test_runner_up_is_the_surrogates_most_likely_wrong_class(digits_split, digits_model):
    train_set, test_set = digits_split
    attack = GradientMatching(count=5, steps=2, augment=False, adversarial_choice="runner_up")
    for seed in range(3):
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed), victim=digits_model,
                                test=test_set)  # fmt: skip
        goal = poisoned.goals[0]
        probs = predict(digits_model, goal.target_x).softmax(1)[0]
        assert int(probs.argmax()) == int(goal.target_y[0])  # a target the attacker's model gets right
        probs[int(goal.target_y[0])] = -1
        assert goal.adversarial_label == int(probs.argmax())
        assert (train_set.y[poisoned.poison_idx] == goal.adversarial_label).all()


def _one_step_adversarial_probability(model, poisons, labels, x_t, y_adv, lr=0.05):
    """Target's adversarial probability after one SGD step of ``model`` on ``poisons``."""
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    loss = F.cross_entropy(functional_call(model, params, (poisons,)), labels)
    grads = torch.autograd.grad(loss, list(params.values()))
    stepped = {n: p.detach() - lr * g for (n, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        return functional_call(model, stepped, (x_t,)).softmax(1)[0, y_adv].item()


@pytest.mark.parametrize("attack_cls", [FirstOrder, MetaPoison])
def test_first_order_and_metapoison_raise_the_target_probability_after_one_step(
    digits_split, digits_model, attack_cls
):
    train_set, test_set = digits_split
    gains = []
    for seed in range(3):
        attack = attack_cls(count=20, eps=32 / 255, steps=30, opacity=0.0, color_eps=0.02, train=FAST)
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed), victim=digits_model,
                                test=test_set)  # fmt: skip
        goal = poisoned.goals[0]
        crafted = poisoned.data.x[poisoned.poison_idx]
        labels = poisoned.data.y[poisoned.poison_idx]
        assert (crafted - poisoned.original.x).abs().max() <= 32 / 255 + 0.02 + 1e-6
        before = _one_step_adversarial_probability(
            digits_model, poisoned.original.x, labels, goal.target_x, goal.adversarial_label
        )
        after = _one_step_adversarial_probability(
            digits_model, crafted, labels, goal.target_x, goal.adversarial_label
        )
        gains.append(after / before)
    assert all(g > 1 for g in gains), gains


TRANSFER_HEAD = TrainConfig(epochs=20, weight_decay=0)  # the README's transfer setting: head retrained


@pytest.fixture(scope="module")
def frozen_extractor(digits_model):
    """The transfer setting's pretrained model: a copy of the clean digits cnn whose head alone is trainable
    (what the attacks may move), as experiment.run_trial passes it."""
    extractor = copy.deepcopy(digits_model)
    for name, p in extractor.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return extractor


@pytest.fixture(scope="module")
def head_twins(digits_split, frozen_extractor):
    """The clean twin of each trial: the same head retraining (seed, schedule) on the clean rows."""
    train_set, _ = digits_split
    return {s: train_head(frozen_extractor, train_set, TRANSFER_HEAD, seed=s).model for s in range(5)}


@pytest.mark.parametrize("attack_cls", [FirstOrder, MetaPoison])
def test_first_order_and_metapoison_raise_the_target_probability_on_a_retrained_victim(
    digits_split, frozen_extractor, head_twins, attack_cls
):
    """Transfer on digits: the attacks craft on the frozen clean cnn (white-box), the victim retrains its head
    for 20 epochs on the released set, its twin on the clean rows (same seed and schedule). 40 poisons (3%)
    at eps 32/255, no watermark and no color shift (delta is the whole perturbation), toward the runner-up
    class of a correctly classified target. The retrained victim gives every target more adversarial
    probability than its twin does.

    log10(p_adv victim / p_adv twin) over targets 0-4 (mean; 8 targets min): first-order 0.90 / 1.22 / 0.79
    / 1.29 / 1.54 (1.15; min 0.25), MetaPoison 0.95 / 1.51 / 1.06 / 1.51 / 1.62 (1.33; min 0.72). With the
    objective reversed (before - after, +alpha, MetaPoison's loss negated) or constant (delta left at its
    random start): mean -0.11 to +0.07, each with negative targets. No target flips at this budget (1 of 6
    flips, none for the twin, with 120 poisons; not asserted)."""
    train_set, test_set = digits_split
    ratios = []
    for seed, twin in head_twins.items():
        attack = attack_cls(
            count=40, eps=32 / 255, steps=60, opacity=0.0, color_eps=0.0, train=FAST,
            adversarial_choice="runner_up",
        )  # fmt: skip
        poisoned = attack.craft(
            train_set, generator=torch.Generator().manual_seed(seed), victim=frozen_extractor, test=test_set
        )
        goal = poisoned.goals[0]
        assert (poisoned.data.y == train_set.y).all()
        assert (poisoned.data.x[poisoned.poison_idx] - poisoned.original.x).abs().max() <= 32 / 255 + 1e-6
        victim = train_head(frozen_extractor, poisoned.data, TRANSFER_HEAD, seed=seed).model
        on_victim, on_twin = attack.evaluate(victim, test_set, goal), attack.evaluate(twin, test_set, goal)
        ratios.append(math.log10(on_victim["adversarial_probability"] / on_twin["adversarial_probability"]))
        assert accuracy(victim, test_set) > accuracy(twin, test_set) - 0.03
    assert min(ratios) > 0 and sum(ratios) / len(ratios) > 0.6, ratios


def test_recolor_is_bounded_smooth_and_identity_at_zero():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(recolor(x, torch.zeros(4, 3, 5)), x)
    shift = torch.full((4, 3, 5), 0.04)
    assert torch.allclose(recolor(x, shift), x + 0.04)
    shift = torch.rand(4, 3, 5) * 0.08 - 0.04
    assert (recolor(x, shift) - x).abs().max() <= 0.04 + 1e-6


def test_targeted_attacks_reject_bad_input(digits_split):
    train_set, test_set = digits_split
    with pytest.raises(ConfigError, match="test data"):
        GradientMatching(count=2, steps=1).craft(train_set, generator=torch.Generator())
    with pytest.raises(ConfigError, match="poisons asked"):
        GradientMatching(count=10_000, steps=1).craft(train_set, generator=torch.Generator(), test=test_set)
    with pytest.raises(ConfigError, match="class 12"):
        FeatureCollision(adversarial_class=12).craft(train_set, generator=torch.Generator(), test=test_set)
    with pytest.raises(ValueError, match="must differ"):
        FirstOrder(target_class=3, adversarial_class=3)


def test_runner_transfer_setting_reports_success_with_binomial_error(digits_split):
    config = ExperimentConfig.model_validate({
        "name": "fc-transfer", "trials": 2, "model": "cnn", "setting": "transfer",
        "train": {"epochs": 5, "batch_size": 32}, "head_train": {"epochs": 10, "weight_decay": 0},
        "attacks": [{"name": "feature_collision", "id": "fc", "count": 10, "steps": 50}],
        "detectors": [{"name": "tracin_self"}],
    })  # fmt: skip
    experiment = run_experiment(config)
    result = experiment.results
    metrics = result["metrics"]
    figures = report_figures(experiment)
    assert any(key.startswith("fc: the target") for key in figures)  # target + poisons in the report
    assert "extractor.clean_accuracy" in metrics and metrics["victim.clean_accuracy"] > 0.8
    p = metrics["attack.fc.success"]
    assert result["metrics_se"]["attack.fc.success"] == pytest.approx(math.sqrt(p * (1 - p) / 2))
    assert "attack.fc.twin_success" in metrics and "detection.tracin_self.auroc" in metrics
    # the victim's checkpoints hold the frozen extractor: only the head differs between them
    run = run_experiment(config.model_copy(update={"trials": 1})).first.run
    first, last = run.checkpoints[0].state, run.checkpoints[-1].state
    assert torch.equal(first["body.0.weight"], last["body.0.weight"])
    assert not torch.equal(first["head.weight"], last["head.weight"])


def test_every_bundled_experiment_config_validates():
    from pathlib import Path

    from poisonlab.experiment import load_config

    paths = [p for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
             if not p.name.startswith("matrix_")]  # fmt: skip
    assert len(paths) >= 7
    settings = {load_config(p).setting for p in paths}
    assert settings == {"transfer", "from_scratch"}
