"""Noise purifiers, the baselines of Mendata (Huang 2023; section 5.3, appendix C).

**Random noise** ``Rand(sigma)``: every untrusted row gets i.i.d. Gaussian noise of standard deviation sigma
on each pixel, then is clipped to [0, 1].

**Friendly noise** ``Frien(eps)`` (Liu, Yang & Mirzasoleiman 2022): with f a model trained on the whole
manipulated data set, each untrusted input x gets the largest noise within the L_inf ball of radius eps
that leaves f's output nearly unchanged,

    max_{||delta||_inf <= eps}  mu * mean(delta^2) - KL(softmax f(x) || softmax f(x + delta))

solved per batch by SGD with Nesterov momentum (lr / 10 at 1/2 and 3/4 of the steps) from a uniform
start in [-eps, eps], projecting delta to the ball and x + delta to the image box after every step.
Mendata (Huang 2023) sets mu = 1 and searches eps. The per-row KL is averaged over the batch and
mean(delta^2) over its pixels, so the step size is large (Liu et al.'s lr 100 at batch 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from poisonlab.data import Dataset
from poisonlab.models import MODELS
from poisonlab.purification.base import (
    Purification,
    Purifier,
    build_extractor,
    check_reference,
    freeze,
    replace_rows,
    seed_from,
)
from poisonlab.registry import register


@register("purifier", "random_noise")
class RandomNoise(Purifier):
    """Random noise Rand(sigma) (Huang 2023, sec. 5.3): Gaussian noise on every untrusted row, clipped."""

    sigma: float = Field(
        0.1, ge=0, description="standard deviation of the per-pixel noise (pixels in [0, 1])"
    )

    def _purify(self, data, reference_mask, *, generator, extractor=None, model=None) -> Purification:
        _, untrusted = check_reference(data, reference_mask, self.name)
        x = data.x[untrusted]
        noise = torch.randn(x.shape, generator=generator) * self.sigma
        out = replace_rows(data, untrusted, x + noise)
        change = (out.x[untrusted] - x).abs()
        info = {"untrusted": len(untrusted), "mean_abs_change": float(change.mean()) if len(x) else 0.0}
        return Purification(out, torch.arange(len(data)), info)


def friendly_noise(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    mu: float,
    steps: int,
    lr: float,
    generator: torch.Generator,
    batch_size: int = 128,
) -> tuple[torch.Tensor, dict]:
    """Friendly noise for the rows ``x`` under the frozen ``model``: (noisy images, diagnostics)."""
    model = freeze(model)
    out, kls = [], []
    for xb in x.split(batch_size):
        with torch.no_grad():
            target = F.softmax(model(xb), dim=1)
        delta = ((torch.rand(xb.shape, generator=generator) * 2 - 1) * eps).requires_grad_()
        opt = torch.optim.SGD([delta], lr=lr, momentum=0.9, nesterov=True)
        for step in range(steps):
            for group in opt.param_groups:  # Liu et al.'s schedule: lr / 10 at 1/2 and 3/4 of the steps
                group["lr"] = lr * 0.1 ** ((step >= steps // 2) + (step >= (3 * steps) // 4))
            logp = F.log_softmax(model((xb + delta).clamp(0, 1)), dim=1)
            kl = F.kl_div(logp, target, reduction="batchmean")
            loss = kl - mu * delta.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                delta.clamp_(-eps, eps)
                delta.copy_((xb + delta).clamp(0, 1) - xb)
        with torch.no_grad():
            noisy = (xb + delta).clamp(0, 1)
            logp = F.log_softmax(model(noisy), dim=1)
            kls.append(F.kl_div(logp, target, reduction="none").sum(1))
        out.append(noisy.detach())
    noisy = torch.cat(out) if out else x.clone()
    kl = torch.cat(kls) if kls else torch.zeros(0)
    return noisy, {"mean_kl": float(kl.mean()) if len(kl) else 0.0}


@register("purifier", "friendly_noise")
class FriendlyNoise(Purifier):
    """Friendly noise Frien(eps) (Liu 2022): largest L_inf noise keeping the outputs."""

    eps: float = Field(16 / 255, gt=0, le=1, description="L_inf radius of the noise")
    mu: float = Field(1.0, ge=0, description="weight of the noise-size reward against the KL term")
    steps: int = Field(30, ge=1, description="optimisation steps per batch")
    lr: float = Field(100.0, gt=0, description="SGD (Nesterov, momentum 0.9) step size")
    batch_size: int = Field(128, ge=1, description="rows optimised together (sets the gradient scale)")
    surrogate: str = Field(
        "cnn", description="architecture trained on the manipulated data when no model is passed"
    )
    surrogate_epochs: int = Field(5, ge=1, description="epochs of that model")
    surrogate_lr: float = Field(0.05, gt=0)

    @field_validator("surrogate")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(MODELS)}")
        return value

    def _purify(
        self, data: Dataset, reference_mask, *, generator, extractor=None, model=None
    ) -> Purification:
        """``model``: trained on the whole manipulated data (the victim); trained here when omitted."""
        _, untrusted = check_reference(data, reference_mask, self.name)
        if model is None:
            model = build_extractor(
                self.surrogate, data, weights=None, train_on=data, epochs=self.surrogate_epochs,
                lr=self.surrogate_lr, seed=seed_from(generator), who=self.name,
            )  # fmt: skip
        x = data.x[untrusted]
        noisy, info = friendly_noise(
            model, x, eps=self.eps, mu=self.mu, steps=self.steps, lr=self.lr, generator=generator,
            batch_size=self.batch_size,
        )  # fmt: skip
        info["untrusted"] = len(untrusted)
        info["mean_abs_change"] = float((noisy - x).abs().mean()) if len(x) else 0.0
        return Purification(replace_rows(data, untrusted, noisy), torch.arange(len(data)), info)
