"""Activation clustering (Chen et al. 2018): per given label, reduce the penultimate features to a few
dimensions (PCA, or ICA as in the paper), split them in two by k-means (seeded), and suspect the smaller
cluster when the split is clean. A row's score is

    s_i = silhouette_c * m_i,   m_i = (d(i, big) - d(i, small)) / max(d(i, big), d(i, small))

with silhouette_c the class's silhouette score of the 2-means split (clipped at 0; 0 when the smaller
cluster holds more than ``max_size`` of the class) and m_i in [-1, 1] positive for rows in the smaller
cluster. Features, not logits; the same seed gives the same clusters.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from pydantic import Field

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.detection.spectral import penultimate
from poisonlab.registry import register
from poisonlab.training import TrainRun


def cluster_scores(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    dims: int = 10,
    reduce: str = "pca",
    max_size: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Activation-clustering suspicion of every row (see the module docstring).

    Runs sklearn's BLAS/OpenMP pools on one thread: these small per-class problems ran 30x slower with
    more threads on a busy 2-core machine.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _cluster_scores(features, labels, dims, reduce, max_size, seed)


def _cluster_scores(features, labels, dims, reduce, max_size, seed) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    out = np.zeros(len(labels))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 4:
            continue
        f = features[rows] - features[rows].mean(0)
        d = int(min(dims, f.shape[1], len(rows) - 1))
        z = PCA(d, svd_solver="full").fit_transform(f)  # also drops the dead (constant) ReLU units
        if reduce == "ica":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # FastICA's convergence warnings on near-degenerate classes
                z = FastICA(d, random_state=seed, whiten="unit-variance", max_iter=500).fit_transform(z)
        km = KMeans(2, n_init=10, random_state=seed).fit(z)
        sizes = np.bincount(km.labels_, minlength=2)
        if sizes.min() == 0:
            continue
        small = int(np.argmin(sizes))
        dist = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None], axis=2)
        margin = (dist[:, 1 - small] - dist[:, small]) / np.maximum(dist.max(1), 1e-12)
        quality = max(0.0, float(silhouette_score(z, km.labels_, random_state=seed)))
        if sizes[small] / len(rows) > max_size:
            quality = 0.0
        out[rows] = quality * margin
    return out


@register("detector", "activation_clustering")
class ActivationClustering(Detector):
    """Activation clustering (Chen 2018): 2-means of reduced class features; the smaller, cleaner split."""

    dims: int = Field(10, ge=1, description="dimensions kept by the reduction (Chen: 10)")
    reduce: Literal["pca", "ica"] = Field(
        "pca", description="reduction before clustering (Chen: ICA; PCA ranked better in our runs)"
    )
    max_size: float = Field(
        0.5,
        gt=0,
        le=0.5,
        description="a smaller cluster above this share of its "
        "class is not suspected (Chen: 0.35; a class is half poisons at 10% all-to-one)",
    )
    seed: int | None = Field(None, ge=0, description="clustering seed; the trial's seed if unset")

    def _scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        seed = self.seed if self.seed is not None else (generator.initial_seed() if generator else 0)
        feats = penultimate(run, data).numpy()
        return cluster_scores(
            feats,
            data.y.numpy(),
            dims=self.dims,
            reduce=self.reduce,
            max_size=self.max_size,
            seed=seed % 2**32,
        )
