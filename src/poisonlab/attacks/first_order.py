"""First-order clean-label poisoning (Zheng & Li 2021), and MetaPoison (Huang et al. 2020), its baseline.

First-order poisoning (Zheng & Li 2021, "Desired Model Update" and "Necessary Condition"): the
adversary-desired model update moves the surrogate toward the adversarial label of the target,

    delta_theta = -alpha * grad_theta L(F_theta(X_t), Y_adv)                                   (eq. 1)

and the poisons should have a *lower* loss after that update than before, at first order in delta_p:

    delta_p . (grad_X L(F_{theta+delta_theta}(X_p), Y_p) - grad_X L(F_theta(X_p), Y_p)) << 0   (eq. 2)

so we minimise L(F_{theta+delta_theta}(X_p), Y_p) - L(F_theta(X_p), Y_p) over the poisons: its gradient is
exactly the bracket of eq. 2 (two forward/backward passes per step, no second-order term in theta), and
Zheng & Li show it approximates the influence update -gamma d2L/dtheta dX . delta_p . grad_theta L(X_t)
("Theoretically Guaranteed Performance"). With the watermark trick (base <- 0.9 base + 0.1 target in
their visual setting) and the smooth color perturbation (eps_c 0.02), both defaults here.

MetaPoison (Huang et al. 2020; Zheng & Li 2021, "Related Work: Meta Poison"): unroll K SGD steps of the
surrogate on the poisons plus a clean batch, theta_{k+1} = theta_k - gamma grad L(F_{theta_k}(X_p u X_c),
Y_p u Y_c), and descend the target's adversarial loss L(F_{theta_K}(X_t), Y_adv) through the unrolled steps
(second order). K = 2, eps 8/255, color eps 0.04, 60 steps, a staggered ensemble of surrogates
(``ensemble``). Left out: MetaPoison also advances each surrogate by one training step per crafting step
and resets it at the end of its schedule; our ensemble is fixed.

Both use the one optimiser of :func:`~poisonlab.attacks.targeted.craft_perturbations` (signed Adam),
so a time per crafting step compares the objectives only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from poisonlab.attacks.targeted import PerturbationAttack, adversarial_loss
from poisonlab.registry import register


def _trainable_named(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@register("attack", "first_order")
class FirstOrder(PerturbationAttack):
    """First-order poisoning (Zheng & Li 2021): poisons whose loss the adversary-desired update lowers."""

    eps: float = Field(8 / 255, gt=0, le=1, description="L_inf bound of delta around the (watermarked) base")
    steps: int = Field(100, ge=1, description="signed-Adam steps per restart")
    alpha: float = Field(0.1, gt=0, description="size of the desired update (eq. 1)")
    color_eps: float = Field(0.02, ge=0, le=1, description="bound of the smooth color shift (0: none)")
    opacity: float = Field(0.1, ge=0, lt=1, description="watermark: base <- (1-o) base + o target (0: none)")

    def objective(self, models, x_t, y_adv, base, labels, train, generator):
        """L(F_{theta + delta_theta}(X_p), Y_p) - L(F_theta(X_p), Y_p), averaged over the surrogates."""
        updated = []
        for model in models:
            params = _trainable_named(model)
            g = torch.autograd.grad(adversarial_loss(model, x_t, y_adv), list(params.values()))
            updated.append(
                (model, {n: p.detach() - self.alpha * gi for (n, p), gi in zip(params.items(), g)})
            )

        def loss(x):
            total = 0.0
            for model, shifted in updated:
                after = F.cross_entropy(functional_call(model, shifted, (x,)), labels, reduction="sum")
                total = total + after - F.cross_entropy(model(x), labels, reduction="sum")
            return total / len(updated)

        return loss


@register("attack", "metapoison")
class MetaPoison(PerturbationAttack):
    """MetaPoison (Huang 2020): adversarial loss through K unrolled training steps."""

    eps: float = Field(8 / 255, gt=0, le=1, description="L_inf bound of delta around the (watermarked) base")
    steps: int = Field(60, ge=1, description="signed-Adam steps per restart")
    color_eps: float = Field(0.04, ge=0, le=1, description="bound of the smooth color shift (0: none)")
    unroll_steps: int = Field(2, ge=1, description="K, the unrolled SGD steps")
    unroll_lr: float | None = Field(None, gt=0, description="gamma of the unrolled steps (default: train.lr)")
    clean_batch: int = Field(64, ge=0, description="clean rows drawn for each unrolled batch")

    def objective(self, models, x_t, y_adv, base, labels, train, generator):
        """L(F_{theta_K}(X_t), Y_adv) after K differentiable SGD steps on poisons + a clean batch."""
        gamma = self.unroll_lr if self.unroll_lr is not None else self.train.lr
        y_t = torch.tensor([y_adv])

        def loss(x):
            total = 0.0
            for model in models:
                theta = {n: p.detach().requires_grad_(True) for n, p in _trainable_named(model).items()}
                rows = torch.randint(len(train), (self.clean_batch,), generator=generator)
                xb, yb = torch.cat([x, train.x[rows].to(x)]), torch.cat([labels, train.y[rows].to(labels)])
                for _ in range(self.unroll_steps):
                    step = F.cross_entropy(functional_call(model, theta, (xb,)), yb)
                    grads = torch.autograd.grad(step, list(theta.values()), create_graph=True)
                    theta = {n: w - gamma * g for (n, w), g in zip(theta.items(), grads)}
                total = total + F.cross_entropy(functional_call(model, theta, (x_t,)), y_t.to(x_t.device))
            return total / len(models)

        return loss
