"""Feature collision / Poison Frogs (Shafahi et al. 2018; Yacoubou 2024, section 2.2, crafted there with ART).

Each poison starts from a base image b of the adversarial class (watermarked with the target) and solves

    p = argmin_x ||f(x) - f(t)||^2 + beta ||x - b||^2                (Yacoubou 2024, section 2.2)

with f the surrogate's penultimate features, by forward-backward splitting (Poison Frogs, Algorithm 1):
forward x^ = x - lr grad_x ||f(x) - f(t)||^2, backward x = (x^ + lr beta b) / (1 + lr beta), then project
onto ||x - c||_inf <= eps around the *clean* original c and the image box. A step whose objective is not
below the mean of the poison's last 40 objectives is undone and that poison's lr multiplied by ``decay``.

Budget: ``eps`` is 16/255 by default (the clean-label literature's 8/255 or 16/255; Poison Frogs itself is
unbounded). The watermark counts inside it. ``eps: unbounded`` is the paper's unconstrained variant, kept
as an explicit, labelled setting (its poisons visibly carry the target): every result records the measured
L_inf and L2 of poison minus clean original.
beta: the paper's beta = beta0 * 2048^2 / dim(b)^2 (2048 = its feature dimension) for pixels in [0, 255];
with our features of dimension d and pixels in [0, 1], beta = beta0 (d / dim(b))^2 * 255^2 (``beta_scale:
paper``); ``beta_scale: unit`` drops the 255^2 (the former default, the penalty of [0, 1] pixels as if they
were [0, 255] ones); ``beta`` overrides both. lr 0.1 per [0, 1] pixel.
Watermark (``opacity``): b <- (1 - o) c + o t, 0.3 by default. Every poison of a trial moves together
(per-poison step sizes), on the surrogate's ``features`` (a :class:`~poisonlab.models.Classifier`, or any
module with a ``features`` method). Built for the transfer setting (frozen extractor, retrained head),
where one poison can suffice; from scratch it needs many poisons and is much weaker (METHODS.md).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from poisonlab.attacks.targeted import TargetedAttack, assert_budget, project, watermark
from poisonlab.errors import ConfigError
from poisonlab.registry import register


@register("attack", "feature_collision")
class FeatureCollision(TargetedAttack):
    """Poison Frogs (Shafahi 2018): poisons whose penultimate features collide with the target's."""

    goal_metrics: ClassVar[tuple[str, ...]] = ("beta", "feature_distance", "objective")

    steps: int = Field(500, ge=1, description="forward-backward splitting iterations")
    lr: float = Field(0.1, gt=0, description="initial forward step size (per poison, decayed on failure)")
    decay: float = Field(0.5, gt=0, lt=1, description="step-size factor after an undone step")
    window: int = Field(40, ge=1, description="a step must beat the mean of the last `window` objectives")
    beta0: float = Field(0.25, gt=0, description="beta = beta0 (feature_dim / input_dim)^2 (x 255^2: paper)")
    beta_scale: Literal["paper", "unit"] = Field(
        "paper", description="paper: the paper's beta for [0, 255] pixels carried to [0, 1] ones; unit: not"
    )
    beta: float | None = Field(None, gt=0, description="the penalty weight in [0, 1] pixel units (overrides)")
    opacity: float = Field(0.3, ge=0, lt=1, description="watermark opacity of the target on the bases")
    eps: float | Literal["unbounded"] = Field(
        16 / 255, description="L_inf bound around the clean base (watermark included), or 'unbounded'"
    )

    @field_validator("eps")
    @classmethod
    def _eps_range(cls, value):
        if value != "unbounded" and not 0 < value <= 1:
            raise ValueError("eps must be in (0, 1] or 'unbounded'")
        return value

    @property
    def bound(self) -> float | None:
        """The L_inf budget, None when unbounded."""
        return None if self.eps == "unbounded" else float(self.eps)

    def penalty(self, feature_dim: int, input_dim: int) -> float:
        """beta in [0, 1] pixel units."""
        if self.beta is not None:
            return self.beta
        scale = 255.0**2 if self.beta_scale == "paper" else 1.0
        return self.beta0 * (feature_dim / input_dim) ** 2 * scale

    def _craft(self, train, *, generator, victim=None, test=None):
        setup = self.setup(train, test, victim, generator)
        model, idx = setup.models[0], setup.idx
        features = getattr(model, "features", None)
        if not callable(features):
            raise ConfigError(f"{self.name}: the surrogate has no `features` method (penultimate layer)")
        device = next(model.parameters()).device  # craft where the surrogate lives (CPU or CUDA)
        x_t, clean = setup.x_t.to(device), train.x[idx].to(device)
        base = project(watermark(clean, x_t, self.opacity), clean, self.bound)
        with torch.no_grad():
            f_t = features(x_t)
        beta = self.penalty(f_t.shape[1], math.prod(x_t.shape[1:]))
        view = (-1,) + (1,) * (base.dim() - 1)

        def objective(x):
            with torch.no_grad():
                return (features(x) - f_t).pow(2).sum(1) + beta * (x - base).pow(2).flatten(1).sum(1)

        x = base.clone()
        lr = torch.full((len(base),), self.lr, device=device)
        history = objective(x)[:, None]
        for _ in range(self.steps):
            x.requires_grad_(True)
            collision = (features(x) - f_t).pow(2).sum()
            (grad,) = torch.autograd.grad(collision, x)
            x = x.detach()
            step = lr.view(view)
            new = ((x - step * grad) + step * beta * base) / (1 + step * beta)
            new = project(new, clean, self.bound)
            value = objective(new)
            accept = value < history[:, -self.window :].mean(1)
            x = torch.where(accept.view(view), new, x)
            lr = torch.where(accept, lr, lr * self.decay)
            history = torch.cat([history, torch.where(accept, value, history[:, -1])[:, None]], 1)
        if self.bound is not None:
            assert_budget(x, clean, self.bound)
        final = history[:, -1]
        with torch.no_grad():
            distance = (features(x) - f_t).norm(dim=1) / f_t.norm()
        goal = self.goal(
            setup, objective={"first": float(history[:, 0].mean()), "last": float(final.mean())},
            feature_distance=float(distance.mean()), beta=beta,
        )  # fmt: skip
        return self.released(train, idx, x, goal)
