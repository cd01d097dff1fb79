"""Back-gradient poisoning, BackGrad (Munoz-Gonzalez et al. 2017), a baseline of seed 001's comparison table.

The bilevel problem ``max_{D_p} L(D_val; theta*)``, ``theta* = argmin L(D_c u D_p)``, with the inner
argmin replaced by T steps of gradient descent, theta_{t+1} = theta_t - eta grad L_train(theta_t), and the
poisons' gradient of the validation loss taken *through* those steps (reverse-mode differentiation of the
learning algorithm: the paper's back-gradient, which reverses the steps to save memory; here autograd
keeps the T steps in memory, which is exact and affordable for small T). The poisons start as clean rows
with flipped labels (the paper: copies of validation points with a random other label), keep their
labels, and climb the validation loss by signed-gradient steps projected onto the image box.

Chosen here (Lu et al. 2022 give no setting for their BackGrad rows): the unrolled training starts from
the clean model (a warm start, as the attacker's best guess of the victim) and takes ``unroll_steps``
SGD steps of the victim's learning rate on a random clean batch plus all poisons each; the validation rows
are held out of the attacker's rows as for TGDA; all poisons move together (the paper updates one point
at a time with a line search).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from poisonlab.attacks.base import HeldOutValidationAttack
from poisonlab.attacks.gradient_canceling import draw_sources
from poisonlab.attacks.gradients import parameters_of
from poisonlab.data import Dataset
from poisonlab.models import build_model, resolve_device
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register


@register("attack", "back_gradient")
class BackGradient(HeldOutValidationAttack):
    """BackGrad (Munoz-Gonzalez 2017): poisons that raise the validation loss through unrolled training."""

    fraction: float = Field(0.03, gt=0, le=1, description="eps_d: poisons per clean row")
    steps: int = Field(100, ge=1, description="outer (poison) steps")
    unroll_steps: int = Field(10, ge=1, description="T, the training steps differentiated through")
    step_size: float = Field(0.01, gt=0, description="signed-ascent step of the poison pixels")
    lr: float | None = Field(None, gt=0, description="rate of the unrolled steps (default: train.lr)")
    batch_size: int = Field(500, ge=1, description="clean rows per unrolled step and per validation batch")
    warm_start: bool = Field(False, description="unroll from the clean model (else a fresh initialisation)")

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        val, rest = self.split_validation(train, generator)
        fit_rows = train.subset(rest)
        # a clean model only for a warm start: the fresh initialisation below needs no training run
        model = self._clean_model(fit_rows, victim, generator).eval() if self.warm_start else None
        device = next(model.parameters()).device if model is not None else resolve_device(self.train.device)
        count = max(1, round(self.fraction * len(train)))
        sources = draw_sources(len(rest), count, generator)
        x_p = fit_rows.x[sources].to(device).clone()
        flip = torch.randint(1, train.num_classes, (count,), generator=generator)
        y_p = ((fit_rows.y[sources] + flip) % train.num_classes).to(device)
        x_c, y_c = fit_rows.x.to(device), fit_rows.y.to(device)
        x_v, y_v = val.x.to(device), val.y.to(device)
        if not self.warm_start:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            fresh = build_model(self.model, train.input_shape, train.num_classes, seed=seed).to(device)
            model = fresh.eval()
        theta0 = parameters_of(model)
        lr, n_c = self.lr or self.train.lr, len(fit_rows)
        history = []
        for _ in range(self.steps):
            x = x_p.clone().requires_grad_(True)
            theta = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
            for _ in range(self.unroll_steps):
                rows = torch.randperm(n_c, generator=generator)[: self.batch_size].to(device)
                logits = functional_call(model, theta, (x_c[rows],))
                clean = F.cross_entropy(logits, y_c[rows], reduction="sum")
                poison = F.cross_entropy(functional_call(model, theta, (x,)), y_p, reduction="sum")
                loss = (clean * n_c / len(rows) + poison) / (n_c + count)
                loss = loss + 0.5 * self.train.weight_decay * sum(t.pow(2).sum() for t in theta.values())
                grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
                theta = {n: t - lr * g for (n, t), g in zip(theta.items(), grads)}
            rows = torch.randperm(len(val), generator=generator)[: self.batch_size].to(device)
            val_loss = F.cross_entropy(functional_call(model, theta, (x_v[rows],)), y_v[rows])
            (g,) = torch.autograd.grad(val_loss, x)
            history.append(float(val_loss.detach()))
            x_p = (x_p + self.step_size * g.sign()).clamp_(0.0, 1.0)
        poisons = Dataset(x_p.cpu(), y_p.cpu(), train.classes, train.name)
        goal = AttackGoal(self.name, {**self.model_dump(mode="json"), "val_loss": history})
        return PoisonedDataset.from_added(train, poisons, goal, rest[sources])
