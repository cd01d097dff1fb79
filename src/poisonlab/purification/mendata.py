"""Mendata (Huang, Gong & Reiter 2023, section 4, Algorithm 1): purify untrusted rows by matching a
reference set's features.

With R the reference rows, U the untrusted rows and h the curator's frozen feature extractor, Mendata
looks for perturbations delta_x (eq. 1-2)

    min_delta  W(P_{h(U + delta)}, P_{h(R)}) + lambda * sum_x ||delta_x||_2^2     s.t. x + delta_x in [0, 1]^d

with W the Wasserstein-1 distance, written through the Kantorovich-Rubinstein duality (eq. 4) as a
maximum over 1-Lipschitz functions g of the feature space, approximated by a two-layer network (eq. 5-6):

    min_delta max_g  mean_{x in U} g(h(x + delta_x)) - mean_{z in R} g(h(z)) + lambda * sum ||delta_x||^2

Algorithm 1 alternates, for at most ``max_rounds`` (30) rounds:

- **Step I** (inner max): train the critic g by Adam on mini-batches of h(U + delta) and h(R) to maximise
  mean g(U + delta) - mean g(R) - ``gp_weight`` * E[(||grad g(x_hat)|| - 1)^2], the gradient penalty of
  Gulrajani et al. (x_hat uniform on segments between the two batches) that keeps g about 1-Lipschitz.
  Every ``check_every`` steps the estimate W_hat = mean g(h(U + delta)) - mean g(h(R)) is computed on the
  whole sets; the step stops when it differs from the mean of the previous ``window`` checkpoints by less
  than ``tol`` (relative), or after ``max_critic_steps``. g is warm-started from the previous round.
- **Step II** (outer min): the ``fraction`` of untrusted rows with the largest g(h(x + delta)) take one
  gradient-descent step on g(h(x + delta_x)) + lambda ||delta_x||^2.
- **Stop** when the objective W_hat + lambda * mean ||delta||^2 of the last ``patience`` (5) rounds is
  larger than the smallest seen so far, or after ``max_rounds``.

Then every perturbation is multiplied by ``amplify`` and x + delta is clipped to the image box.
Reference rows are never modified.

Choices where the paper gives no value (its numbers are not in our copy of the text), documented and tested:
the critic is Linear(d, 256) - LeakyReLU(0.2) - Linear(256, 1); Adam lr 1e-3 with WGAN-GP's betas
(0.5, 0.9) and gp_weight 10; alpha 0.2, amplification 2; lambda = 0 with early stopping (the paper's
own setting); the step-II step is normalised per row (``normalize``:
delta_x -= lr * sqrt(d) * grad / ||grad||_2, so ``lr`` is the RMS pixel change of one step whatever the
extractor's scale; ``normalize=False`` takes the raw gradient step).

**Feature extractor.** The paper uses an ImageNet-pretrained ResNet-18, which cannot be downloaded here.
Pass any frozen ``torch.nn.Module`` as ``extractor=`` (a :class:`~poisonlab.models.Classifier`'s
``features`` is used when it has one), or give ``extractor_weights`` (a state dict of ``extractor_model``
saved with ``torch.save``; loaded with ``weights_only=True``). Otherwise the offline default trains an
``extractor_model`` for ``extractor_epochs`` on the data the curator holds: ``extractor_source="released"``
(default) the whole manipulated set, as Friendly noise's model is trained (Mendata's app. C);
``"reference"`` the reference rows only. A generic extractor responds to what a poisoner planted; one
trained on the clean reference rows alone hardly does, and Mendata then has nothing to match: on MNIST
with BadNets 3%, P = 1, R = 0.5 we measured attack success 1.6% with the released-data extractor and 87%
with the reference-data one (same purification settings; benchmarks/results/purification.md).
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from poisonlab.data import Dataset
from poisonlab.models import MODELS
from poisonlab.purification.base import (
    Purification,
    Purifier,
    build_extractor,
    check_reference,
    feature_function,
    freeze,
    replace_rows,
    seed_from,
)
from poisonlab.purification.reference import extract_features
from poisonlab.registry import register


@contextlib.contextmanager
def _one_thread():
    """Run the block on one intra-op thread and restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def critic_network(dim: int, hidden: int, generator: torch.Generator) -> nn.Sequential:
    """The two-layer critic g, initialised from ``generator`` (PyTorch's default uniform ranges)."""
    net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
    return net


@register("purifier", "mendata")
class Mendata(Purifier):
    """Mendata (Huang 2023, Alg. 1): perturb untrusted rows to match the reference set's features (W1)."""

    fraction: float = Field(
        0.2, gt=0, le=1, description="alpha: share of the untrusted rows (largest critic values) stepped"
    )
    lr: float = Field(0.02, gt=0, description="step-II step size (RMS pixel change per step if normalize)")
    normalize: bool = Field(True, description="normalise each row's step-II gradient (else raw gradient)")
    lam: float = Field(0.0, ge=0, description="lambda, weight of ||delta||^2 (Huang 2023: 0, early stopping)")
    amplify: float = Field(2.0, ge=1, description="factor the final perturbations are multiplied by")
    max_rounds: int = Field(30, ge=1, description="maximum alternations of steps I and II")
    patience: int = Field(5, ge=1, description="stop when this many last rounds are all worse than the best")
    critic_hidden: int = Field(256, ge=1, description="hidden units of the two-layer critic")
    critic_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the critic")
    gp_weight: float = Field(10.0, ge=0, description="gradient-penalty coefficient")
    batch_size: int = Field(128, ge=2, description="critic mini-batch size (from each of U and R)")
    check_every: int = Field(20, ge=1, description="n: critic steps between checkpoints of W_hat")
    window: int = Field(5, ge=1, description="m: checkpoints averaged by the convergence test")
    tol: float = Field(0.01, gt=0, description="relative change of W_hat below which step I stops")
    max_critic_steps: int = Field(2000, ge=1, description="cap on the critic steps of one round")
    extractor_source: Literal["released", "reference"] = Field(
        "released", description="default extractor trained on all released rows or the reference rows"
    )
    extractor_model: str = Field("cnn", description="architecture of the default extractor")
    extractor_weights: str | None = Field(
        None, description="state dict of extractor_model to load (torch.save) instead of training one"
    )
    extractor_epochs: int = Field(5, ge=1, description="epochs of the default extractor")
    extractor_lr: float = Field(0.05, gt=0)
    step_batch: int = Field(256, ge=1, description="rows per batch of the step-II gradient")

    def accepts_victim_extractor(self) -> bool:
        """Only as the default 'released' extractor; loaded weights or the reference rows' own model win."""
        return self.extractor_source == "released" and not self.extractor_weights

    @field_validator("extractor_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(MODELS)}")
        return value

    # ------------------------------------------------------------------ step I

    def _fit_critic(self, critic, opt, fu, fr, generator) -> tuple[float, int]:
        """Step I: Adam on the critic until W_hat stabilises; (W_hat on the whole sets, steps taken)."""
        checks: list[float] = []
        w_hat, step = float("nan"), 0
        for step in range(1, self.max_critic_steps + 1):
            bu = fu[torch.randint(len(fu), (self.batch_size,), generator=generator)]
            br = fr[torch.randint(len(fr), (self.batch_size,), generator=generator)]
            t = torch.rand(self.batch_size, 1, generator=generator)
            mix = (t * bu + (1 - t) * br).requires_grad_()
            out = critic(torch.cat([bu, br, mix])).squeeze(1)  # one pass for the three batches
            gu, gr, gm = out.split(self.batch_size)
            grad = torch.autograd.grad(gm.sum(), mix, create_graph=True)[0]
            penalty = (grad.norm(dim=1) - 1).pow(2).mean()
            loss = gr.mean() - gu.mean() + self.gp_weight * penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % self.check_every == 0 or step == self.max_critic_steps:
                with torch.no_grad():
                    w_hat = float(critic(fu).mean() - critic(fr).mean())
                if len(checks) >= self.window:
                    ref = sum(checks[-self.window :]) / self.window
                    if abs(w_hat - ref) <= self.tol * max(abs(ref), 1e-8):
                        break
                checks.append(w_hat)
        return w_hat, step

    # ------------------------------------------------------------------ step II

    def _step_perturbations(self, critic, feats, xu, delta, rows) -> None:
        """Step II: one gradient-descent step on delta for ``rows`` (in place), batched."""
        dim = xu[0].numel()
        for batch in rows.split(self.step_batch):
            d = delta[batch].clone().requires_grad_()
            objective = critic(feats(xu[batch] + d)).sum() + self.lam * d.pow(2).sum()
            (grad,) = torch.autograd.grad(objective, d)
            if self.normalize:
                norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
                grad = grad / norms * math.sqrt(dim)
            delta[batch] = d.detach() - self.lr * grad

    # ------------------------------------------------------------------ Algorithm 1

    def _purify(
        self,
        data: Dataset,
        reference_mask,
        *,
        generator: torch.Generator,
        extractor: nn.Module | None = None,
        model: nn.Module | None = None,
    ) -> Purification:
        """Purify the untrusted rows of ``data``; ``extractor``: the curator's frozen feature extractor."""
        reference, untrusted = check_reference(data, reference_mask, self.name)
        info: dict = {"untrusted": len(untrusted), "reference": len(reference)}
        if len(untrusted) == 0:
            return Purification(data, torch.arange(len(data)), {**info, "rounds": 0, "critic_values": []})
        if extractor is None:
            extractor = build_extractor(
                self.extractor_model, data, weights=self.extractor_weights,
                train_on=data if self.extractor_source == "released" else data.subset(reference),
                epochs=self.extractor_epochs, lr=self.extractor_lr, seed=seed_from(generator), who=self.name,
            )  # fmt: skip
            info["extractor"] = (
                "loaded weights" if self.extractor_weights else f"trained on the {self.extractor_source} rows"
            )
        else:
            info["extractor"] = "given"
        extractor = freeze(extractor)
        feats = feature_function(extractor)
        xu = data.x[untrusted]
        fr = extract_features(extractor, data.x[reference])
        delta = torch.zeros_like(xu)
        critic = critic_network(fr.shape[1], self.critic_hidden, generator)
        opt = torch.optim.Adam(critic.parameters(), lr=self.critic_lr, betas=(0.5, 0.9))
        n_step = max(1, round(self.fraction * len(untrusted)))
        values, objectives, steps = [], [], []
        best, best_round, stop = math.inf, 0, "max_rounds"
        for rnd in range(self.max_rounds):
            fu = extract_features(extractor, xu + delta)
            with _one_thread():  # tiny ops: extra threads only add synchronisation (x20 slower when busy)
                w_hat, taken = self._fit_critic(critic, opt, fu, fr, generator)
            objective = w_hat + self.lam * float(delta.flatten(1).pow(2).sum(1).mean())
            values.append(w_hat)
            objectives.append(objective)
            steps.append(taken)
            if objective < best:
                best, best_round = objective, rnd
            elif rnd - best_round >= self.patience:
                stop = "patience"
                break
            with torch.no_grad():
                scores = critic(fu).squeeze(1)
            rows = scores.topk(n_step).indices
            self._step_perturbations(critic, feats, xu, delta, rows)
        delta = self.amplify * delta
        purified = (xu + delta).clamp(0.0, 1.0)
        change = purified - xu
        info.update(
            rounds=len(values),
            stopped=stop,
            critic_values=values,
            objectives=objectives,
            critic_steps=steps,
            rows_stepped_per_round=n_step,
            mean_abs_change=float(change.abs().mean()),
            max_abs_change=float(change.abs().max()),
            rms_change=float(change.pow(2).mean().sqrt()),
            untrusted_rows=untrusted,
        )
        return Purification(replace_rows(data, untrusted, purified), torch.arange(len(data)), info)
