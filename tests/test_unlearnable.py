"""Unlearnable examples (Huang 2021) collapse a victim's clean accuracy; adversarial training (Madry 2018)
recovers it. Real CIFAR-10 rows, an `mlp` victim (crafting and training in seconds)."""

from __future__ import annotations

import pytest
import torch

from poisonlab.attacks.unlearnable import error_minimizing_noise
from poisonlab.data import Dataset
from poisonlab.defenses.adversarial_training import pgd_linf
from poisonlab.experiment import ExperimentConfig, run_experiment
from poisonlab.models import build_model
from poisonlab.training import TrainConfig, make_optimizer, train

TRAIN = {"epochs": 15, "lr": 0.02, "batch_size": 64}


@pytest.fixture(scope="module")
def unlearnable_cifar(data_root):
    """1,000 CIFAR-10 rows, every one with class-wise error-minimising noise at 8/255 (the authors'
    class-wise script: one step per batch on 20% of the rows per round, stop at 1% error, here at most 50
    rounds), crafted on an `mlp` trained alongside; the victim `mlp` trains 15 epochs; adversarial training
    with 3 PGD steps beside it."""
    config = ExperimentConfig.model_validate({
        "name": "unlearnable", "seed": 0, "model": "mlp", "train": TRAIN,
        "data": {"name": "cifar10", "root": str(data_root), "train_size": 1000, "test_size": 1000},
        "attacks": [{"name": "unlearnable", "model": "mlp", "train": TRAIN, "noise": "classwise",
                     "batch_size": 256}],
        "training_defenses": [{"name": "adversarial_training", "steps": 3}],
    })  # fmt: skip
    return run_experiment(config).results["metrics"]


def test_unlearnable_examples_collapse_accuracy_and_adversarial_training_recovers_it(unlearnable_cifar):
    """Measured: the twin trained on the clean rows 30.5%, the victim on the unlearnable rows 23.2% (16
    rounds; crafting seeds 0 / 1 outside the runner: 29.7% -> 17.8% / 21.3%); with the noise *maximising* the
    error (the paper's min-max comparison) 27.1%, a 3.4-point drop. Adversarial training (3 PGD
    steps) on the unlearnable rows: 29.2%; without its perturbation it is the victim (0 recovered). Its
    PGD reversed into descent still recovers 27.2% (a perturbation of any sign breaks a class-wise pattern):
    the ascent itself is tested below. Not robust here: with 10 PGD steps 24.4% (see the README)."""
    m = unlearnable_cifar
    assert m["attack.poison_fraction"] == 1.0  # every row carries noise
    assert m["attack.accuracy_drop"] > 0.05  # the twin minus the victim
    recovered = m["training_defense.adversarial_training.clean_accuracy"] - m["victim.clean_accuracy"]
    assert recovered > 0.03


def test_class_wise_noise_is_one_pattern_per_class_within_eps():
    """Inputs away from the image box's edges, so no clipping: every row of a class carries its pattern."""
    gen = torch.Generator().manual_seed(0)
    data = Dataset(
        0.25 + 0.5 * torch.rand(300, 1, 8, 8, generator=gen), torch.arange(300) % 3, ("a", "b", "c")
    )
    model = build_model("mlp", data.input_shape, 3, seed=0)
    noise, info = error_minimizing_noise(
        model, data, optimizer=make_optimizer(model, TrainConfig(lr=0.05)), generator=gen, eps=16 / 255,
        step_size=4 / 255, pgd_steps=1, search_share=0.2, classwise=True, max_rounds=3, batch_size=32,
    )  # fmt: skip
    assert info["rounds"] == 3 and noise.abs().max() <= 16 / 255 + 1e-6
    for c in range(3):
        rows = noise[data.y == c]
        assert torch.allclose(rows, rows[:1].expand_as(rows), atol=1e-6) and rows.abs().max() > 4 / 255


def test_pgd_raises_the_loss_within_its_ball(digits_split):
    train_set, _ = digits_split
    model = build_model("mlp", train_set.input_shape, 10, seed=0)
    train(model, train_set, TrainConfig(epochs=5))
    x, y = train_set.x[:200], train_set.y[:200]
    x_adv = pgd_linf(model, x, y, eps=8 / 255, step_size=2 / 255, steps=5, generator=torch.Generator())
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(model(x_adv), y) > loss(model(x), y) * 1.2
    assert all(p.requires_grad for p in model.parameters()) and not model.training  # its mode restored
