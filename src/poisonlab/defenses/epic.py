"""EPIC (Yang, Liu & Mirzasoleiman 2022, "Not All Poisons are Created Equal: Robust Training against Data
Poisoning"; one of Mendata's prevention baselines, Huang 2023, Table 6): effective poisons end up isolated in
gradient space, so during training, every ``every`` epochs after a warm-up, EPIC clusters each class's
gradients around medoids and permanently drops the rows that sit alone in their cluster.

At a drop epoch, with the model as it stands (eval mode, no augmentation), every training row i (dropped
rows included, as in the reference code) gets the last-layer gradient proxy

    g_i = softmax(f(x_i)) - onehot(y_i)                               (EPIC eq. 5, CRAIG's proxy)

Per class c, ``k_c = ceil(n_c / N * floor(subset_size * N))`` medoids are chosen by greedy facility location
on the similarity ``s_ij = exp(-||g_i - g_j|| / C)`` (C classes: the reference code's submodlib kernel),
each row joins its most similar medoid of its class, and the rows of clusters of size <= ``cluster_threshold``
(1: singleton medoids) leave the training set for good.

Defaults follow the authors' 40-epoch CIFAR-10 gradient-matching recipe (``subset_size`` 0.1, a drop every 2
epochs after a 10-epoch warm-up, i.e. from a quarter of training on), scaled to this project's ~20-epoch CPU
schedules: a drop every epoch from epoch 5 (set ``drop_after`` / ``every`` to the recipe for longer
schedules). The reference code also stops dropping after the last learning-rate milestone; here
``stop_after`` sets that epoch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.registry import register
from poisonlab.training import TrainHook


def facility_location(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy maximiser of f(S) = sum_i max_{j in S} s_ij: indices of ``k`` medoids, in the order picked."""
    n = len(similarity)
    best = torch.zeros(n, dtype=similarity.dtype)
    chosen: list[int] = []
    for _ in range(min(k, n)):
        gains = (similarity - best[:, None]).clamp_min(0).sum(0)
        if chosen:
            gains[chosen] = -1.0
        j = int(gains.argmax())
        chosen.append(j)
        best = torch.maximum(best, similarity[:, j])
    return torch.tensor(chosen, dtype=torch.int64)


def isolated_rows(
    grads: torch.Tensor, labels: torch.Tensor, subset_size: float, threshold: int
) -> torch.Tensor:
    """Boolean mask of the rows whose medoid's cluster (per class, facility location) has <= ``threshold``
    members."""
    n, dims = grads.shape
    budget = math.floor(subset_size * n)
    isolated = torch.zeros(n, dtype=torch.bool)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        k = max(1, math.ceil(len(rows) / n * budget))
        sim = torch.exp(-torch.cdist(grads[rows], grads[rows]) / dims)
        medoids = facility_location(sim, k)
        nearest = sim[:, medoids].argmax(1)
        size = torch.bincount(nearest, minlength=len(medoids))
        isolated[rows] = size[nearest] <= threshold
    return isolated


class _EpicHook(TrainHook):
    def __init__(self, defense: EPIC, n: int):
        self.defense, self.active, self.rounds = defense, torch.ones(n, dtype=torch.bool), []

    def rows(self, epoch, model, x, y):
        d, done = self.defense, epoch - 1  # epochs trained so far (the reference code's 0-based epoch)
        stop = d.stop_after if d.stop_after is not None else math.inf
        if done >= d.drop_after and done < stop and (done - d.drop_after) % d.every == 0:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(xb) for xb in x.split(1024)]).flatten(1).double().cpu()
            model.train(was_training)
            grads = logits.softmax(1) - F.one_hot(y.cpu(), logits.shape[1]).double()
            drop = isolated_rows(grads, y.cpu(), d.subset_size, d.cluster_threshold) & self.active
            self.active &= ~drop
            self.rounds.append({"epoch": epoch, "dropped": int(drop.sum()), "rows": int(self.active.sum())})
        return self.active.nonzero().flatten() if not self.active.all() else None


@register("training_defense", "epic")
class EPIC(TrainingDefense):
    """EPIC (Yang 2022): while training, drop the rows isolated in gradient space (singleton medoids)."""

    subset_size: float = Field(0.1, gt=0, lt=1, description="medoids as a share of the rows (EPIC-0.1)")
    every: int = Field(1, ge=1, description="epochs between drop rounds (the recipe's 2 of 40 epochs: T)")
    drop_after: int = Field(
        5, ge=0, description="epochs trained before the first round (the recipe's 10 of 40)"
    )
    stop_after: int | None = Field(None, ge=1, description="no round after this many epochs (None: none)")
    cluster_threshold: int = Field(1, ge=0, description="drop the rows of clusters of at most this size")

    def _train(self, data, fit, *, victim, generator) -> Defended:
        hook = _EpicHook(self, len(data))
        run = fit(data, hook=hook, desc="epic")
        return Defended(run, ~hook.active, {"rounds": hook.rounds})
