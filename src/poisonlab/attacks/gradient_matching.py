"""Gradient matching / Witches' Brew (Geiping et al. 2021; the attack purified in Mendata, Huang 2023).

The poisons' training gradient is made to point where the adversarial target gradient points:

    g_adv = grad_theta L(F(x_t), y_adv)
    min_delta  1 - cos(grad_theta sum_p L(F(aug(x_p + delta_p)), y_p), g_adv),   ||delta||_inf <= eps

over all trainable parameters at once (one cosine; averaged over the surrogates of an ensemble), by
signed Adam (lr 0.1 in units of eps, /10 at 3/8, 5/8, 7/8 of the steps), with ``restarts`` keeping the
lowest loss and differentiable augmentation while crafting. Defaults follow METHODS.md (eps 16/255, 1% of
the training set, 250 steps, 8 restarts); the victim is retrained from scratch on the released set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.attacks.gradients import matching_loss
from poisonlab.attacks.targeted import PerturbationAttack, adversarial_loss, trainable
from poisonlab.registry import register


@register("attack", "gradient_matching")
class GradientMatching(PerturbationAttack):
    """Witches' Brew (Geiping 2021): poisons whose gradient aligns with the adversarial one."""

    restarts: int = Field(8, ge=1, description="random restarts; the lowest final loss wins")
    augment: bool = Field(True, description="random crop (+ flip) of the poisons while crafting")

    def objective(self, models, x_t, y_adv, base, labels, train, generator):
        """1 - cos(poison gradient, adversarial target gradient), averaged over the surrogates."""
        targets = []
        for model in models:
            params = trainable(model)
            g = tuple(t.detach() for t in torch.autograd.grad(adversarial_loss(model, x_t, y_adv), params))
            targets.append((model, params, g, torch.sqrt(sum(t.pow(2).sum() for t in g))))

        def loss(x):
            total = 0.0
            for model, params, g_adv, norm in targets:
                ce = F.cross_entropy(model(x), labels, reduction="sum")
                grads = torch.autograd.grad(ce, params, create_graph=True)
                total = total + matching_loss(grads, g_adv, norm)
            return total / len(targets)

        return loss
