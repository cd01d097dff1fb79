"""The spectral signature of the inputs' high-pass residual finds blended and stamped triggers that no model
has learned (the CIFAR subset's blend, which every model-based column of the scan missed), and its tail on
flipped labels spreads over the labels, so the scan's gate leaves it out there."""

import numpy as np
import pytest
import torch

from poisonlab.attacks import BadNets, Blend, RandomLabelFlip
from poisonlab.data import load_dataset, stratified_subset
from poisonlab.detection.spectral import residual_spectral_scores, spectral_scores
from poisonlab.scan.core import backdoor_gate


@pytest.fixture(scope="module")
def cifar(data_root):
    return stratified_subset(load_dataset("cifar10", data_root, split="train"), 2000, seed=0)


def plant(data, attack):
    poisoned = attack.craft(data, generator=torch.Generator().manual_seed(0))
    truth = np.zeros(len(poisoned.data), bool)
    truth[poisoned.poison_idx.numpy()] = True
    return poisoned.data, truth


def precision_at_count(scores: np.ndarray, truth: np.ndarray) -> float:
    """Share of poisons among as many top-scored rows as there are poisons."""
    return float(truth[np.argsort(-scores, kind="stable")[: truth.sum()]].mean())


@pytest.mark.parametrize("attack", [Blend(fraction=0.05, target=0), BadNets(fraction=0.05, target=0)])
def test_triggered_cifar_rows_stand_out_in_their_residual_not_in_their_pixels(cifar, attack):
    data, truth = plant(cifar, attack)
    found = precision_at_count(residual_spectral_scores(data.x, data.y), truth)
    # the same spectral signature on the raw pixels: natural images' coarse content hides the trigger
    raw = precision_at_count(spectral_scores(data.x.flatten(1).double(), data.y, normalize=True), truth)
    assert found > 0.9 and raw < 0.3, (found, raw)


def test_the_gate_takes_the_residual_for_a_backdoor_only_when_one_is_there(cifar):
    data, _ = plant(cifar, Blend(fraction=0.05, target=0))
    blended = {"residual_spectral": residual_spectral_scores(data.x, data.y)}
    assert backdoor_gate(blended, data.y.numpy()) == []
    data, _ = plant(cifar, RandomLabelFlip(fraction=0.1))
    flipped = {"residual_spectral": residual_spectral_scores(data.x, data.y)}
    assert backdoor_gate(flipped, data.y.numpy()) == ["residual_spectral"]
