"""Deep k-NN (Peri et al. 2020; Mendata, Huang 2023, appendix B): a row whose label loses the plurality
vote of its k nearest neighbours in penultimate-feature space is suspicious. Each point counts among its own
neighbours.

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
from poisonlab.detection.base import Detector, per_class_top  # noqa: F401  (per_class_top: re-export)
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


def features_for(detector: Detector, data: Dataset, run: TrainRun | None, features) -> torch.Tensor:
    """``features`` when given (e.g. a separate extractor's), else ``run``'s penultimate features."""
    if features is not None:
        return features
    if run is None:
        raise ConfigError(f"{detector.name}: pass run= or features= for the k-NN")
    return penultimate(run, data)


def vote_margin(votes: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(best other label's votes - own label's votes) / k per row, from (N, classes) neighbour votes."""
    votes = votes.double()
    own = votes.gather(1, labels[:, None]).squeeze(1)
    other = votes.scatter(1, labels[:, None], -1.0).max(1).values
    return (other - own) / k


def knn_scores(features: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> np.ndarray:
    """Margin by which the best other label beats the row's own label among its k neighbours, over k."""
    return vote_margin(neighbour_votes(features, labels, k, num_classes), labels, k).numpy()


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

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        if self.k > len(data):
            raise ConfigError(f"knn: k = {self.k} is larger than the {len(data)} rows")

    def _scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        feats = penultimate(run, data)
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        return knn_scores(feats, data.y, self.k, data.num_classes)

    def reference_mask(self, data, *, run, features, is_poisoned, test, generator, keep_fraction=0.5):
        """The rows whose label wins the plurality vote of their neighbours (a tie: a disagreement)."""
        feats = features_for(self, data, run, features).double()
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        return torch.from_numpy(knn_scores(feats, data.y, self.k, data.num_classes) < 0)


@register("detector", "knn_k")
class KNNK(Detector):
    """k-NN(K) (Huang 2023, app. B): per class, the K rows whose k-NN vote most agrees with their label."""

    k: int | None = Field(
        None,
        ge=1,
        description="neighbours, the row itself included; unset: the rows per class, N / classes "
        "(Mendata, Huang 2023, section 5.2, after Peri et al.)",
    )
    per_class: int = Field(
        100, ge=1, description="K: rows kept per class as the reference set (the most confident)"
    )
    normalize: bool = Field(False, description="L2-normalise the features first (cosine neighbours)")

    def confidence(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Share of each row's k nearest neighbours (self included) that carry its label."""
        if self.normalize:
            features = F.normalize(features, dim=1)
        k = self.neighbours(len(labels), num_classes)
        votes = neighbour_votes(features, labels, k, num_classes).double()
        return votes.gather(1, labels[:, None]).squeeze(1) / k

    def neighbours(self, rows: int, num_classes: int) -> int:
        """k: as set, or the rows per class (at least 1)."""
        return self.k if self.k is not None else max(1, round(rows / num_classes))

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        k = self.neighbours(len(data), data.num_classes)
        if k > len(data):
            raise ConfigError(f"knn_k: k = {k} is larger than the {len(data)} rows")

    def _scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        """1 - confidence: high when the neighbours disagree with the row's label."""
        return (1.0 - self.confidence(penultimate(run, data), data.y, data.num_classes)).numpy()

    def reference_mask(self, data, *, run, features, is_poisoned, test, generator, keep_fraction=0.5):
        """The ``per_class`` most confident rows of each class (``run``'s features unless ``features``)."""
        return self.select(data, features_for(self, data, run, features), generator)

    def select(self, data: Dataset, features: torch.Tensor, generator=None) -> torch.Tensor:
        """Boolean reference mask: the ``per_class`` most confident rows of each class under ``features``."""
        conf = self.confidence(features.double(), data.y, data.num_classes)
        return per_class_top(conf, data.y, self.per_class, generator)
