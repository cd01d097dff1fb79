"""The shared-patch check finds rows stamped with a trigger a model has not learned, and nothing else."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from poisonlab.attacks import BadNets, RandomLabelFlip
from poisonlab.data import load_dataset, load_digits, stratified_subset
from poisonlab.detection.shared_patch import shared_patch_scores
from poisonlab.scan.core import evidence


@pytest.fixture(scope="module")
def digits_and_reader():
    """Digits, and the predictions of a logistic regression trained on the clean rows: a model that has
    not learned any trigger (the scan's out-of-fold models on CIFAR, where a 3x3 patch is not learned)."""
    data = load_digits()
    model = LogisticRegression(max_iter=300).fit(data.x.flatten(1).numpy(), data.y.numpy())
    return data, lambda d: model.predict(d.x.flatten(1).numpy())


def flagged(scores: np.ndarray) -> np.ndarray:
    return evidence("shared_patch", scores) > 3.5


def test_rows_stamped_with_an_unlearned_patch_are_found_and_clean_rows_are_not(digits_and_reader):
    data, predict = digits_and_reader
    poisoned = BadNets(fraction=0.05, target=0).craft(data, generator=torch.Generator().manual_seed(0))
    truth = np.zeros(len(poisoned.data), bool)
    truth[poisoned.poison_idx.numpy()] = True
    labels = poisoned.data.y.numpy()
    scores, where, size = shared_patch_scores(poisoned.data.x, labels, predict(poisoned.data) != labels)
    flags = flagged(scores)
    assert truth[flags].mean() > 0.9 and flags[truth].mean() > 0.8  # precision and recall
    assert size[truth].max() >= truth.sum() * 0.8  # they share one window: the patch's
    # the same images in another value range (here [-2, 0], as a pipeline's normalisation may give) are
    # quantised over their own range: the same flags
    shifted = (poisoned.data.x - 1.0) * 2.0
    normalised, _, _ = shared_patch_scores(shifted, labels, predict(poisoned.data) != labels)
    assert (flagged(normalised) == flags).all()
    # the same rows without the model's reading (as if every row were predicted right) are not suspicious:
    # a label shared by the rows of a window is not enough (digits' strokes share windows and labels)
    blind, _, _ = shared_patch_scores(poisoned.data.x, labels, np.zeros(len(labels), bool))
    assert not flagged(blind).any()
    clean, _, _ = shared_patch_scores(data.x, data.y.numpy(), predict(data) != data.y.numpy())
    assert flagged(clean).mean() < 0.005


def test_label_flips_do_not_pass_for_a_shared_patch(data_root):
    """Flipped rows are misread and share windows (strokes) with the rows of their true class, but their
    label is a minority of the rows sharing each window: not a stamped trigger. (Without that rule, 22% of
    these MNIST rows would be flagged.)"""
    data = stratified_subset(load_dataset("mnist", data_root, split="train"), 2000, seed=0)
    model = LogisticRegression(max_iter=200).fit(data.x.flatten(1).numpy(), data.y.numpy())
    poisoned = RandomLabelFlip(fraction=0.3).craft(data, generator=torch.Generator().manual_seed(0))
    labels = poisoned.data.y.numpy()
    misread = model.predict(poisoned.data.x.flatten(1).numpy()) != labels
    scores, _, _ = shared_patch_scores(poisoned.data.x, labels, misread)
    assert flagged(scores).mean() < 0.005
