"""Spectral signatures (Tran, Li & Madry 2018): backdoor poisons leave a trace in the top singular direction.

Per given label c, with R_c the penultimate features of the rows labelled c centred on a location m_c and
v_c the top right singular vector of R_c, each row's score is its squared projection

    s_i = ((f_i - m_c) . v_c)^2

(Tran et al. remove the 1.5 eps rows of each class with the highest s). Features, not logits.

Tran et al. centre on the class mean (``centre="mean"``). When the poisons are a large share of a class
(all-to-one at 10% puts them at half of the target class), the mean sits between the clean and the poison
clusters and both sides score high. Our default centres on the coordinate-wise median (``"median"``), a
robust location a poisoned minority cannot drag. MNIST all-to-one, 6,000 rows, AUROC mean / median / ART's
uncentred projection (``"none"``): BadNets 1% 0.69 / 0.73 / 0.24, 3% 0.82 / 0.94 / 0.61, 10% 0.80 / 0.92 /
0.98, 20% 0.61 / 0.59 / 0.90; blend 1% 0.995 / 0.998 / 0.002 (benchmarks/results/spectral_centre.md). No
centre wins everywhere: the uncentred projection wins once the poisons are half or more of the class and
fails when they are few; the median loses to the mean once they are the majority.

:func:`residual_spectral_scores` applies the same score to the *inputs'* high-pass residual instead of a
model's features (ours, not Tran et al.'s): a stamped patch or a blended pattern is the same high-frequency
signal in every poisoned row, while natural images' fine detail varies from row to row, so the poisons
share the top singular direction of their label's residuals even when no model has learned the trigger.
The score is a robust z within the label (median / 1.4826 MAD of the log squared projection): the rows of a
clean label spread along their top direction, a stamped group stands apart from the rest of its label.
4,000-row subsets, 5% all-to-one poisons, AUROC: CIFAR-10 blend 1.000 (raw pixels instead of the residual:
0.485), BadNets 1.000 (0.539); MNIST BadNets 0.998, blend 0.82 (the model-based trigger check sees it);
10% random label flips 0.48 (CIFAR), 0.27 (MNIST): it does not see them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.registry import register
from poisonlab.training import TrainRun


@torch.no_grad()
def penultimate(run: TrainRun, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features ``run.model.features(x)`` of every row (float64, CPU), shared within the run."""

    def compute() -> torch.Tensor:
        model = run.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        feats = [model.features(xb.to(device)).flatten(1).cpu() for xb in data.x.split(batch_size)]
        model.train(was_training)
        return torch.cat(feats).double() if feats else torch.zeros(0, 0, dtype=torch.float64)

    return run.shared(("features",), data, compute)


Centre = Literal["median", "mean", "none"]


def spectral_scores(
    features: torch.Tensor, labels: torch.Tensor, *, normalize: bool = False, centre: Centre = "median"
) -> np.ndarray:
    """Squared projection of each row's class-centred features on its class's top singular direction."""
    out = torch.zeros(len(labels), dtype=torch.float64)
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        if len(rows) < 2:
            continue
        x = features[rows]
        if centre == "mean":
            centred = x - x.mean(0)
        elif centre == "median":
            centred = x - x.median(0).values
        else:
            centred = x
        top = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        s = (centred @ top).pow(2).double()
        out[rows] = s / s.median().clamp_min(1e-12) if normalize else s
    return out.numpy()


def highpass_residual(x: torch.Tensor) -> torch.Tensor:
    """Each (N, C, H, W) image minus its 3x3 box blur per channel (edges replicated): its fine detail."""
    kernel = x.new_full((x.shape[1], 1, 3, 3), 1 / 9)
    return x - F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


def residual_spectral_scores(x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per label, the spectral signature score (median-centred) of each image's high-pass residual (see the
    module docstring), as a robust z-score of its log within the label; no model is read."""
    out = np.zeros(len(labels))
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        residual = highpass_residual(x[rows].float()).flatten(1)
        log_score = np.log(spectral_scores(residual, labels[rows]) + 1e-12)
        centre = np.median(log_score)
        spread = 1.4826 * np.median(np.abs(log_score - centre))
        out[rows.numpy()] = (log_score - centre) / max(spread, 1e-12)
    return out


@register("detector", "spectral")
class SpectralSignature(Detector):
    """Spectral signatures (Tran 2018): squared projection on the class's top singular feature direction."""

    normalize: bool = Field(
        False, description="divide each class's scores by their median so classes compare"
    )
    centre: Centre = Field(
        "median",
        description="the class location the features are centred on: median (robust, our default), mean "
        "(Tran 2018) or none (ART's uncentred projection)",
    )

    def _scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        return spectral_scores(penultimate(run, data), data.y, normalize=self.normalize, centre=self.centre)
