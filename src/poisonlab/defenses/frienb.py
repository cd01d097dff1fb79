"""FrienB (Liu, Yang & Mirzasoleiman 2022, "Friendly Noise against Adversarial Noise: A Powerful Defense
against Data Poisoning Attacks"; one of Mendata's prevention baselines, Huang 2023, Table 6 and appendix):
friendly noise on every training row before training, and fresh Bernoulli noise on every batch while
training.

Friendly noise is :func:`~poisonlab.purification.noise.friendly_noise` (the largest L_inf noise within
``friendly_eps`` that keeps the outputs of a model trained on the manipulated data) applied to all rows, with
the undefended victim as that model, as Mendata describes FrienB ("adds friendly noises to all the training
data before model training"; the authors' code computes it once, after 5 epochs of its own training). The
Bernoulli noise adds ``bernoulli_eps * r`` with r = +1 or -1 with probability 1/2 to every pixel of every
batch, drawn anew each time, after augmentation and not clipped, as the authors' code does; the paper's
magnitude is 16/255 (their code's default 8/255).
"""

from __future__ import annotations

import torch
from pydantic import Field

from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.purification.noise import friendly_noise
from poisonlab.registry import register
from poisonlab.training import TrainHook


class BernoulliNoise(TrainHook):
    """Adds +-eps (probability 1/2 each) to every input value of every training batch."""

    reads_images = True

    def __init__(self, eps: float):
        self.eps = eps

    def inputs(self, xb, generator):
        signs = (torch.rand(xb.shape, generator=generator) < 0.5).to(xb) * 2 - 1
        return xb + self.eps * signs.to(xb.device)


@register("training_defense", "frienb")
class FrienB(TrainingDefense):
    """FrienB (Liu 2022): friendly noise on every row, then Bernoulli noise on every batch while training."""

    friendly_eps: float = Field(16 / 255, ge=0, le=1, description="L_inf radius of the friendly noise (zeta)")
    mu: float = Field(1.0, ge=0, description="weight of the friendly noise's size reward against the KL term")
    steps: int = Field(30, ge=1, description="friendly-noise optimisation steps per batch")
    lr: float = Field(100.0, gt=0, description="friendly-noise SGD (Nesterov, momentum 0.9) step size")
    batch_size: int = Field(128, ge=1, description="rows optimised together (sets the gradient scale)")
    bernoulli_eps: float = Field(
        16 / 255, ge=0, le=1, description="magnitude of the per-batch Bernoulli noise"
    )

    def _train(self, data, fit, *, victim, generator) -> Defended:
        if victim is None:
            victim = fit(data, desc="frienb: model for the friendly noise")
        x = data.x
        if self.friendly_eps > 0:
            x, _ = friendly_noise(
                victim.model, data.x, eps=self.friendly_eps, mu=self.mu, steps=self.steps, lr=self.lr,
                generator=generator, batch_size=self.batch_size,
            )  # fmt: skip
        noisy = data.replace_rows(torch.arange(len(data)), x)
        run = fit(noisy, hook=BernoulliNoise(self.bernoulli_eps), desc="frienb")
        change = (x - data.x).abs()
        info = {
            "friendly_mean_abs_change": float(change.mean()),
            "friendly_max_abs_change": float(change.max()),
        }
        return Defended(run, torch.zeros(len(data), dtype=torch.bool), info)
