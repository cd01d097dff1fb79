"""Adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018) as a training-time defense.

Every batch is replaced by its projected-gradient-ascent adversarial examples before the step:
``steps`` signed steps of size ``step_size`` on the cross-entropy from a Gaussian start of scale
``step_size``, projected onto the L_inf ball of radius ``eps`` and the image box, with the model in eval mode
and its parameters frozen while searching; the step trains on those examples only. Defaults: the
``MadrysLoss`` of Huang et al.'s unlearnable-examples code (eps 8/255, step 2/255, 10 steps), the defense
their paper (ICLR 2021, section 5) finds to recover part of the accuracy that error-minimising noise takes:
noise within ``eps`` cannot be a shortcut once every input is moved adversarially within the same ball.
It removes no row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.defenses.training import Defended, TrainingDefense
from poisonlab.input_gradients import frozen_eval, linf_sign_steps
from poisonlab.registry import register
from poisonlab.training import TrainHook


def pgd_linf(model, x, y, *, eps: float, step_size: float, steps: int, generator: torch.Generator):
    """Madry's L_inf PGD: adversarial examples of ``x`` for ``model`` (eval mode, parameters frozen)."""
    with frozen_eval(model):
        start = ((x + step_size * torch.randn(x.shape, generator=generator).to(x)).clamp(0, 1) - x).clamp(
            -eps, eps
        )
        delta = linf_sign_steps(model, x, y, start, eps=eps, step_size=step_size, steps=steps)
    return (x + delta).clamp(0, 1).detach()


class AdversarialLoss(TrainHook):
    """The cross-entropy of the batch's PGD adversarial examples (Madry 2018)."""

    reads_images = True

    def __init__(self, eps: float, step_size: float, steps: int, generator: torch.Generator):
        self.eps, self.step_size, self.steps, self.generator = eps, step_size, steps, generator

    def loss(self, logits, xb, yb, model):
        x_adv = pgd_linf(model, xb, yb, eps=self.eps, step_size=self.step_size, steps=self.steps,
                         generator=self.generator)  # fmt: skip
        return F.cross_entropy(model(x_adv), yb)


@register("training_defense", "adversarial_training")
class AdversarialTraining(TrainingDefense):
    """Adversarial training (Madry 2018): every batch replaced by its L_inf PGD adversarial examples."""

    eps: float = Field(8 / 255, gt=0, le=1, description="L_inf radius of the adversarial examples")
    step_size: float = Field(2 / 255, gt=0, description="signed PGD step (and scale of the random start)")
    steps: int = Field(10, ge=1, description="PGD steps per batch")

    def _train(self, data, fit, *, victim, generator) -> Defended:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        hook = AdversarialLoss(self.eps, self.step_size, self.steps, torch.Generator().manual_seed(seed))
        run = fit(data, hook=hook, desc="adversarial training")
        return Defended(run, torch.zeros(len(data), dtype=torch.bool))
