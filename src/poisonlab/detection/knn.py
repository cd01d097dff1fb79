"""Deep k-NN (Peri et al. 2020; seed 003 appendix B): a row whose label loses the plurality vote of its k
nearest neighbours in penultimate-feature space is suspicious. Each point counts among its own neighbours.

    score_i = (max_{c != y_i} n_i(c) - n_i(y_i)) / k

with n_i(c) the number of the k neighbours (self included) labelled c: positive exactly when another
label wins the plurality (Peri's removal rule), and graded so the rows can be ranked.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.detection.spectral import penultimate
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import TrainRun


def neighbour_votes(
    features: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int, *, chunk: int = 1024
) -> torch.Tensor:
    """(N, num_classes) label counts among each row's k nearest rows (Euclidean, self included)."""
    if k > len(features):
        raise ConfigError(f"knn: k = {k} is larger than the {len(features)} rows")
    votes = []
    for start in range(0, len(features), chunk):
        block = features[start : start + chunk]
        dist = torch.cdist(block, features)
        dist[torch.arange(len(block)), torch.arange(start, start + len(block))] = -1.0  # self first
        nearest = dist.topk(k, largest=False).indices
        votes.append(F.one_hot(labels[nearest], num_classes).sum(1))
    return torch.cat(votes)


def knn_scores(features: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> np.ndarray:
    """Margin by which the best other label beats the row's own label among its k neighbours, over k."""
    votes = neighbour_votes(features, labels, k, num_classes).double()
    own = votes.gather(1, labels[:, None]).squeeze(1)
    other = votes.scatter(1, labels[:, None], -1.0).max(1).values
    return ((other - own) / k).numpy()


@register("detector", "knn")
class DeepKNN(Detector):
    """Deep k-NN (Peri 2020): plurality label of the k nearest penultimate features vs the row's own label."""

    k: int = Field(
        50,
        ge=1,
        description="neighbours, the row itself included (Peri: about twice the "
        "poisons per class works best)",
    )
    normalize: bool = Field(False, description="L2-normalise the features first (cosine neighbours)")

    def scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        feats = penultimate(run, data)
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        return knn_scores(feats, data.y, self.k, data.num_classes)
