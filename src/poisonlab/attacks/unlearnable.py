"""Unlearnable examples: error-minimising noise (Huang, Ma, Erfani, Bailey & Wang, ICLR 2021).

The eps_d = infinity end of seed 001's poisoning fraction: every training row carries noise that makes it
*easy*, so a model trained on them learns the noise instead of the images and fails on clean test data.
The noise solves the min-min problem

    min_theta  1/n sum_i  min_{||delta_i||_inf <= eps}  L(f_theta(x_i + delta_i), y_i)

by alternating (the authors' ``perturbation.py``): ``train_steps`` SGD steps of a fresh model on the
perturbed rows, then ``pgd_steps`` signed-gradient *descent* steps of size ``step_size`` on every row's
noise (projected onto the eps ball and the image box), until the model's error on the perturbed rows falls
below ``stop_error`` (their 0.01). ``objective="max"`` is their min-max ablation (error-*maximising*,
i.e. adversarial, noise; stopped, our choice, when the error rises above ``1 - stop_error``), the
comparison the paper draws. ``noise="classwise"``: one noise per class; as the authors' class-wise script,
one step per batch over a random 20% of the rows each round, after which each class's noise is the mean
of its rows' noise in the batch.

Defaults are the authors' CIFAR-10 sample-wise script: eps 8/255, step 0.8/255, 20 PGD steps, 10 training
steps of batch 512 per round, stop error 0.01. Our choice: ``max_rounds`` bounds the loop (the authors run
until the stop error) and the crafting model is ``model`` trained with ``train``'s optimiser settings.
With ``fraction < 1`` the noise is crafted on every row (as the authors do) and released on a random share.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.attacks.base import SurrogateAttack
from poisonlab.data import Dataset
from poisonlab.input_gradients import frozen_eval, linf_sign_steps
from poisonlab.models import build_model, resolve_device
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import make_optimizer, predict

__all__ = ["UnlearnableExamples", "error_minimizing_noise"]


def _noise_pass(model, x, y, delta, rows, eps, step_size, steps, sign, batch_size, classwise):
    """One pass over ``rows`` in batches: ``steps`` signed steps of each batch's noise (descent for
    ``sign=-1``), projected onto the eps ball and the image box; class-wise, after each batch every class
    present takes the mean of its rows' noise (the authors' update)."""
    for batch in rows.split(batch_size):
        xb, yb = x[batch], y[batch]
        eta = delta[yb] if classwise else delta[batch]
        eta = linf_sign_steps(model, xb, yb, eta, eps=eps, step_size=sign * step_size, steps=steps)
        if classwise:
            total = torch.zeros_like(delta).index_add_(0, yb, eta)
            count = torch.bincount(yb, minlength=len(delta))
            present = count > 0
            delta[present] = (total[present] / count[present].view(-1, *[1] * (x.ndim - 1))).clamp(-eps, eps)
        else:
            delta[batch] = eta
    return delta


def error_minimizing_noise(
    model: torch.nn.Module,
    data: Dataset,
    *,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    eps: float = 8 / 255,
    step_size: float = 0.8 / 255,
    pgd_steps: int = 20,
    search_share: float = 1.0,
    train_steps: int = 10,
    batch_size: int = 512,
    stop_error: float = 0.01,
    max_rounds: int = 50,
    objective: Literal["min", "max"] = "min",
    classwise: bool = False,
) -> tuple[torch.Tensor, dict]:
    """The noise of every row of ``data`` (or of every class, ``classwise``) and what the loop measured
    (rounds, the final error on the perturbed rows); ``model`` is trained in place. Each round's noise
    search reads a random ``search_share`` of the rows."""
    device = next(model.parameters()).device
    x, y = data.x.to(device), data.y.to(device)
    shape = (data.num_classes, *x.shape[1:]) if classwise else x.shape
    delta = ((torch.rand(shape, generator=generator) * 2 - 1) * eps).to(device)
    sign = -1.0 if objective == "min" else 1.0
    order, cursor, error, rounds = torch.randperm(len(x), generator=generator).to(device), 0, 1.0, 0
    n_search = max(1, round(search_share * len(x)))
    while rounds < max_rounds:
        rounds += 1
        model.train()
        for _ in range(train_steps):  # the model trains on the perturbed rows, batches in a fixed order
            idx = order[cursor : cursor + batch_size]
            cursor = cursor + batch_size if cursor + batch_size < len(x) else 0
            xb = (x[idx] + (delta[y[idx]] if classwise else delta[idx])).clamp(0, 1)
            optimizer.zero_grad()
            F.cross_entropy(model(xb), y[idx]).backward()
            optimizer.step()
        rows = order if search_share >= 1 else order[torch.randperm(len(x), generator=generator)[:n_search]]
        with frozen_eval(model):
            delta = _noise_pass(
                model, x, y, delta, rows, eps, step_size, pgd_steps, sign, batch_size, classwise
            )
        perturbed = (x + (delta[y] if classwise else delta)).clamp(0, 1)
        error = float((predict(model, perturbed, batch_size).argmax(1) != y.cpu()).float().mean())
        if (error < stop_error) if objective == "min" else (error > 1 - stop_error):
            break
    noise = (x + (delta[y] if classwise else delta)).clamp(0, 1) - x
    return noise.cpu(), {"rounds": rounds, "perturbed_error": error}


@register("attack", "unlearnable")
class UnlearnableExamples(SurrogateAttack):
    """Unlearnable examples (Huang 2021): error-minimising noise on every training row (``fraction`` 1).

    Labels stay; the effect is the victim's clean accuracy drop against its twin (an indiscriminate
    attack). ``model`` / ``train``: the crafting model, trained from scratch alongside the noise with
    ``train``'s optimiser (its epochs are not used: ``max_rounds`` bounds the loop).
    """

    goal_metrics = ("rounds", "perturbed_error")

    fraction: float = Field(1.0, gt=0, le=1, description="share of the rows released with their noise")
    eps: float = Field(8 / 255, gt=0, le=1, description="L_inf bound of each row's noise")
    step_size: float = Field(0.8 / 255, gt=0, description="signed step of the noise")
    pgd_steps: int | None = Field(
        None, ge=1, description="noise steps per batch (20 sample-wise, 1 class-wise)"
    )
    search_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of the rows each noise search reads (1 sample-wise, 0.2 class-wise)",
    )
    train_steps: int = Field(10, ge=0, description="model steps per round")
    batch_size: int = Field(512, ge=1, description="rows per model step and per noise batch")
    stop_error: float = Field(0.01, gt=0, lt=1, description="stop when the error on perturbed rows is below")
    max_rounds: int = Field(50, ge=1, description="bound on the rounds (ours)")
    objective: Literal["min", "max"] = Field("min", description="min: error-minimising; max: the ablation")
    noise: Literal["samplewise", "classwise"] = Field("samplewise", description="one noise per row or class")

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        self._check_model()
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        device = resolve_device(self.train.device)
        model = build_model(self.model, train.input_shape, train.num_classes, seed=seed).to(device)
        classwise = self.noise == "classwise"
        noise, info = error_minimizing_noise(
            model, train, optimizer=make_optimizer(model, self.train), generator=generator, eps=self.eps,
            step_size=self.step_size, pgd_steps=self.pgd_steps or (1 if classwise else 20),
            search_share=self.search_share or (0.2 if classwise else 1.0), train_steps=self.train_steps,
            batch_size=self.batch_size, stop_error=self.stop_error, max_rounds=self.max_rounds,
            objective=self.objective, classwise=classwise,
        )  # fmt: skip
        count = max(1, round(self.fraction * len(train)))
        rows = torch.randperm(len(train), generator=generator)[:count].sort().values
        x = train.x.clone()
        x[rows] = (x[rows] + noise[rows]).clamp(0, 1)
        released = Dataset(x, train.y.clone(), train.classes, train.name)
        goal = AttackGoal(self.name, {**self.model_dump(mode="json"), **info})
        return PoisonedDataset.from_rows(train, released, rows, goal)
