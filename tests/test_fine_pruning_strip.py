"""Seed 004's own pieces beside Liu et al.'s fine-pruning: its weight-threshold pruning rule, and STRIP in
front of the repaired model (the combination the seed sets as its goal), on 8x8 digits."""

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from poisonlab.attacks import PruningAware
from poisonlab.defenses import FinePruning, channel_activations, mask_last_conv
from poisonlab.defenses.fine_pruning import WeightThresholdPruner
from poisonlab.experiment import ExperimentConfig, run_experiment
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, accuracy, predict, train

FP = {"name": "fine_pruning", "step": 0.1, "finetune_epochs": 5, "lr": 0.02, "batch_size": 16,
      "max_accuracy_drop": 0.04}  # fmt: skip


def test_weight_threshold_step_zeroes_each_conv_layers_weights_below_min_plus_step_of_its_range():
    """threshold = min + (max - min) x step over a layer's signed weights (Kashyap & Maheshwari 2024): the
    zeroed weights are exactly those below it, the most negative ones, layer by layer; a second call
    recomputes the threshold from the weights left."""
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.weight.detach().clone() for c in convs]
    pruner = WeightThresholdPruner(
        model, torch.zeros(1, 1, 8, 8), FinePruning(step=0.1, rule="weight_threshold")
    )
    zeros, fraction = pruner.prune()
    for conv, w in zip(convs, before):
        below = w < w.min() + 0.1 * (w.max() - w.min())
        assert below.any() and torch.equal(conv.weight == 0, below | (w == 0))
        assert torch.equal(conv.weight[~below], w[~below])  # the rest untouched
        assert (w[below] < 0).all()  # signed weights: the most negative go, not the smallest magnitudes
    assert zeros == sum(int(b.numel() - (c.weight != 0).sum()) for c, b in zip(convs, before))
    assert 0 < fraction < 0.2
    again, _ = pruner.prune()
    assert again > zeros  # the next step cuts into the remaining tail
    assert pruner.limit == 9  # max_pruned 0.95 / step 0.1 steps at most


def test_weight_threshold_rule_runs_the_loop_and_records_its_zeros(digits_split):
    """The rule plugs into the same loop: each step's record holds the conv weights at zero and their share,
    and the defender's cutoff stops it."""
    train_set, test_set = digits_split
    run = train(build_model("cnn", train_set.input_shape, 10, seed=0), train_set, TrainConfig(epochs=5))
    repair = FinePruning(step=0.2, finetune_epochs=1, rule="weight_threshold", max_accuracy_drop=0.04).repair(
        run.model, test_set
    )
    fractions = [s["pruned_fraction"] for s in repair.steps]
    assert fractions[0] == 0 and all(f > 0 for f in fractions[1:]) and len(fractions) > 1
    assert repair.info["weights"] == sum(
        m.weight.numel() for m in repair.model.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert "channels" not in repair.info


@pytest.fixture(scope="module")
def guarded():
    """Digits, BadNets 5% to class 0 on a `cnn`; fine-pruning (Liu's rule and seed 004's weight threshold)
    with the defender's stop rule, and STRIP (20 overlays, FRR 1%) in front of each repaired model."""
    config = ExperimentConfig.model_validate({
        "name": "fp-strip", "trials": 1, "model": "cnn", "baseline": True, "defender_fraction": 0.5,
        "train": {"epochs": 20, "batch_size": 32, "lr": 0.05, "milestones": [14]},
        "attacks": [{"id": "bd", "name": "badnets", "target": 0, "fraction": 0.05, "patch_size": 3,
                     "margin": 0}],
        "defenses": [{"id": "fp", **FP}, {"id": "wt", **FP, "rule": "weight_threshold"}],
        "input_detectors": [{"id": "strip", "name": "strip", "num_overlays": 20}],
    })  # fmt: skip
    return run_experiment(config).results["metrics"]


@pytest.mark.parametrize("defense", ["fp", "wt"])
def test_strip_in_front_of_the_fine_pruned_model_stops_what_the_repair_left(guarded, defense):
    """Measured: fine-pruning alone leaves the trigger at 99% (both rules: the backdoor of this small CNN
    lives in its active channels); with STRIP in front 4.5% (Liu's rule) and 7.9% (weight threshold), at
    0.4-1.8% of the clean inputs rejected. A guard that accepted everything would leave the 99%; one with
    its boundary the wrong way round would reject the clean inputs and lose the accuracy."""
    m = {k.removeprefix(f"defense.{defense}."): v for k, v in guarded.items()}
    alone = m["attack_success"]
    assert alone > 0.5 and m["attack_success_with_strip"] < 0.25 * alone
    assert m["attack_success_with_strip"] <= m["guard_far_with_strip"] + 1e-9
    assert m["guard_frr_with_strip"] < 0.05
    assert m["clean_accuracy_with_strip"] > m["clean_accuracy"] - 0.05
    twin = guarded["attack.bd.twin_success_rate"]
    assert np.isclose(m["net_attack_success_with_strip"], m["attack_success_with_strip"] - twin)
    # seed 004's code: STRIP reads the unrepaired victim, the repaired model classifies
    assert m["attack_success_with_strip_on_victim"] < 0.25 * alone


@pytest.fixture(scope="module")
def pruning_aware(digits_split):
    """Liu 2018's pruning-aware BadNets (5% to class 0, half of the last conv layer's 64 channels as decoys)
    trained by the attacker from the clean model; the clean model; and the poisoned set."""
    train_set, _ = digits_split
    schedule = TrainConfig(epochs=20, batch_size=32, lr=0.05, milestones=(14,))
    clean = train(build_model("cnn", train_set.input_shape, 10, seed=0), train_set, schedule, seed=0).model
    attack = PruningAware(target=0, fraction=0.05, patch_size=3, margin=0)
    poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(0))
    victim = attack.train_victim(poisoned.data, train_set.x, clean, schedule, seed=0)
    return attack, poisoned, clean, victim


def test_pruning_aware_victim_hides_its_backdoor_behind_dormant_decoys(digits_split, pruning_aware):
    """The attacker's victim carries the backdoor (ASR 100% against the clean model's 0%) at the clean
    model's accuracy, and exactly the 32 decoy channels are dormant on clean and triggered inputs, so a
    pruning defender removes them first, at no cost to the backdoor: pruning every decoy leaves the
    predictions unchanged. Without the lowered biases the decoys would be active; a backdoor trained into
    the decoys would go with them."""
    _, test_set = digits_split
    attack, poisoned, clean, victim = pruning_aware
    goal = poisoned.goals[0]
    assert attack.evaluate(victim.model, test_set, goal)["success_rate"] > 0.9
    assert attack.evaluate(clean, test_set, goal)["success_rate"] < 0.1
    assert accuracy(victim.model, test_set) > accuracy(clean, test_set) - 0.02
    model = copy.deepcopy(victim.model)
    mask = mask_last_conv(model)
    triggered = attack.triggered(test_set, goal).x
    dormant = (channel_activations(model, mask, test_set.x) == 0) & (
        channel_activations(model, mask, triggered) == 0
    )
    assert int(dormant.sum()) == 32  # prune_fraction 0.5 of 64, and no other channel
    before = predict(model, triggered).argmax(1)
    with torch.no_grad():
        mask.mask[dormant] = 0.0
    assert torch.equal(predict(model, triggered).argmax(1), before)
    with pytest.raises(ValidationError, match="setting from_scratch"):
        ExperimentConfig.model_validate(
            {"setting": "transfer", "attacks": [{"name": "pruning_aware", "target": 0}]}
        )
