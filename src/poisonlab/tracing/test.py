"""The radioactive-data test (Sablayrolles et al. 2020, section 4; seed 003, section 6.1).

A data owner drew one random unit carrier u_c per class in the feature space of her marking network phi and
moved the features of some training images of class c toward u_c. A classifier trained on them learns a
last-layer row W_c tilted toward u_c. For a suspect model with features psi and last layer W:

1. align the two feature spaces on clean images by least squares, psi(x) ~ phi(x) M (M: d_phi x d_psi);
   the suspect's rows in phi's space are W M^T (the original's ``W = W @ X.T``);
2. cos_c = cos(W_c M^T, u_c); under H0 (u_c uniform on the unit sphere of R^d, independent of the model)
   P(cos >= c) = 1/2 I_{1-c^2}((d-1)/2, 1/2) for c >= 0 (regularised incomplete beta), 1 - P(cos >= -c)
   below 0;
3. the classes' p-values combine by Fisher's method (-2 sum log p ~ chi^2 with 2K degrees of freedom), as the
   original's ``scipy.stats.combine_pvalues``; the model is flagged when the combined p < ``alpha`` (0.05).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import betainc
from scipy.stats import chi2
from torch import nn

from poisonlab.errors import ConfigError
from poisonlab.training import predict_features


def cosine_pvalue(c, d: int) -> np.ndarray:
    """P(cos(u, w) >= c) for u uniform on the unit sphere of R^d and any fixed w (vectorised over c)."""
    if d < 2:
        raise ConfigError(f"cosine_pvalue: the dimension must be at least 2, got {d}")
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    upper = 0.5 * betainc((d - 1) / 2.0, 0.5, 1.0 - np.abs(c) ** 2)
    return np.where(c >= 0, upper, 1.0 - upper)


def combined_pvalue(pvalues) -> float:
    """Fisher's combination of independent p-values: P(chi^2_2K >= -2 sum log p)."""
    p = np.clip(np.asarray(pvalues, dtype=np.float64).ravel(), 1e-300, 1.0)
    return float(chi2.sf(-2.0 * np.log(p).sum(), 2 * len(p)))


def align(marker_features: torch.Tensor, tested_features: torch.Tensor) -> torch.Tensor:
    """M (d_marker x d_tested) minimising ||marker_features M - tested_features||_F (least squares; with
    fewer images than features, the minimum-norm solution: the test stays valid, with less power)."""
    a, b = marker_features.double(), tested_features.double()
    if len(a) < 2:
        raise ConfigError(f"trace: aligning the feature spaces needs at least 2 clean images, got {len(a)}")
    return torch.linalg.lstsq(a, b, driver="gelsd").solution  # SVD: dead (all-zero) features are common


@dataclass(frozen=True)
class TraceResult:
    """The test's outcome: combined p-value, the decision at ``alpha``, and per class cosine and p-value."""

    p_value: float
    detected: bool
    cosines: np.ndarray
    class_pvalues: np.ndarray
    alignment_residual: float  # relative squared error of the least-squares alignment

    @property
    def log10_p(self) -> float:
        return float(np.log10(max(self.p_value, 1e-300)))

    def explain(self, classes) -> str:
        """Which classes carry the signal (the smallest p-values), in one line."""
        order = np.argsort(self.class_pvalues)[:3]
        parts = [f"{classes[i]} (cos {self.cosines[i]:+.3f}, p {self.class_pvalues[i]:.2g})" for i in order]
        return "strongest classes: " + ", ".join(parts)


def class_rows(model: nn.Module) -> torch.Tensor:
    """The suspect's last linear layer, one row per class (a poisonlab Classifier's ``head``)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError("trace: the model needs a linear `head` (its last layer) and a `features` method")
    return head.weight.detach().double().cpu()


@torch.no_grad()
def trace(
    model: nn.Module, marker: nn.Module, carriers: torch.Tensor, clean: torch.Tensor, alpha: float = 0.05
) -> TraceResult:
    """Test ``model`` for the ``carriers`` (K x d, unit rows) of the ``marker`` network, aligning the two
    feature spaces on the ``clean`` images."""
    u = carriers.double().cpu()
    w = class_rows(model)
    if w.shape[0] != u.shape[0]:
        raise ConfigError(f"trace: the model has {w.shape[0]} classes but there are {u.shape[0]} carriers")
    phi = predict_features(marker, clean).double().cpu()
    if phi.shape[1] != u.shape[1]:
        raise ConfigError(
            f"trace: the carriers have {u.shape[1]} dimensions but the marker's features {phi.shape[1]}"
        )
    psi = predict_features(model, clean).double().cpu()
    m = align(phi, psi)
    residual = float(((phi @ m - psi) ** 2).sum() / (psi**2).sum().clamp_min(1e-300))
    rows = w @ m.T
    cos = (rows * u).sum(1) / (rows.norm(dim=1) * u.norm(dim=1)).clamp_min(1e-300)
    cos = cos.numpy()
    pvals = cosine_pvalue(cos, u.shape[1])
    p = combined_pvalue(pvals)
    return TraceResult(p, bool(p < alpha), cos, pvals, residual)
