"""The min-max attack (Steinhardt, Koh & Liang 2017) and its improved variant (Koh, Steinhardt & Liang 2022),
two of the baselines of seed 001's comparison table ("Some Comparisons: eps_d = 3%", after Lu et al. 2022).

Min-max plays the attacker's game ``max_{D_p in F} min_theta L(theta; D_c u D_p)`` online (Steinhardt et
al.'s Algorithm 1; the authors' code, ``generateAttackTar.m`` of data-poisoning-journal-release): starting
from the clean model, each round adds the feasible point of largest loss under the current parameters,

    (x_t, y_t) = argmax_{(x, y) in F} l(theta_t; x, y)        (every class y tried, the best kept)

then takes one gradient step on ``L(D_c) + eps_d l(x_t, y_t) + decay/2 ||theta||^2``; after ``burn_frac``
of burn-in rounds the next ``eps_d N`` points are the poisons. The feasible set F is the image box and the
sphere defense the authors attack: ``||x - mu_y||_2 <= rho_y``, ``mu_y`` the class mean and ``rho_y`` the
``radius_quantile`` of the class's distances to it (points a sphere filter at that quantile keeps).

The improved min-max (Koh et al. 2022, the same code with decoy parameters ``theta_fake``) also requires a
small loss under a *decoy*: ``l(theta_decoy; x, y) <= rho_max``, which steers the online model toward the
decoy instead of toward wherever the loss is largest. Here the decoy is the GradPC target of seed 001 (the
worst model within ``decoy_eps_w`` of the clean one, :func:`~poisonlab.attacks.gradient_canceling.gradpc`),
and ``rho_max`` the decoy's mean loss on the clean rows. Radius 5 by default: on digits (logistic
regression, 10% poisons) a decoy at radius 1 barely moves the victim (1.3 points, the criterion inverted
1.4), at 5 it does (3.9, inverted 0.7).

Adapted to networks as Lu et al. 2022 do for their NN/CNN rows: the inner maximisation (a linear program for
the authors' linear models and hinge loss) is projected signed-gradient ascent on the cross-entropy, all
classes in one batch, from a random clean row of each class (``inner_steps`` steps of ``inner_lr``); the
decoy constraint enters as a penalty ``penalty * relu(l(theta_decoy) - rho_max)``; the online step is SGD
at the victim's learning rate on a random clean batch (the authors: AdaGrad on the full clean gradient).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field

from poisonlab.attacks.base import SurrogateAttack
from poisonlab.attacks.gradient_canceling import gradpc
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.input_gradients import frozen_eval
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register


def sphere_defense(train: Dataset, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, its mean image and the ``quantile`` of its rows' L2 distances to it."""
    flat = train.x.flatten(1)
    means, radii = [], []
    for c in range(train.num_classes):
        rows = flat[train.y == c]
        mu = rows.mean(0)
        means.append(mu)
        radii.append(torch.quantile((rows - mu).norm(dim=1), quantile))
    return torch.stack(means).view(-1, *train.x.shape[1:]), torch.stack(radii)


def project_sphere(x: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` pulled onto the ball ``||x - centre|| <= radius`` (row-wise), then into [0, 1]."""
    d = (x - centre).flatten(1)
    scale = (radius / d.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (centre + (d * scale[:, None]).view_as(x)).clamp(0.0, 1.0)


@register("attack", "min_max")
class MinMax(SurrogateAttack):
    """Min-max attack (Steinhardt, Koh & Liang 2017): online max-loss points inside a sphere defense."""

    fraction: float = Field(0.03, gt=0, le=1, description="eps_d: poisons per clean row")
    burn_frac: float = Field(0.1, ge=0, description="burn-in rounds, as a share of the poisons, discarded")
    radius_quantile: float = Field(0.95, gt=0, le=1, description="sphere defense: quantile of the radii")
    inner_steps: int = Field(20, ge=1, description="signed-ascent steps of the inner maximisation")
    inner_lr: float = Field(0.05, gt=0, description="signed-ascent step, in pixel units")
    lr: float | None = Field(None, gt=0, description="online SGD step (default: train.lr)")
    batch_size: int = Field(500, ge=1, description="clean rows per online step")

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        if round(self.fraction * len(train)) < 1:
            raise ConfigError(f"{self.name}: fraction {self.fraction} of {len(train)} rows is no poison")

    def decoy_penalty(self, model, train: Dataset):
        """``(x, y) -> penalty`` subtracted from the inner objective; none for plain min-max."""
        return None

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        clean = self._clean_model(train, victim, generator)
        device = next(clean.parameters()).device
        model = copy.deepcopy(clean).eval()
        penalty = self.decoy_penalty(clean, train)
        means, radii = (t.to(device) for t in sphere_defense(train, self.radius_quantile))
        count = round(self.fraction * len(train))
        burn = round(self.burn_frac * count)
        classes = torch.arange(train.num_classes, device=device)
        x_c, y_c = train.x.to(device), train.y.to(device)
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=self.lr or self.train.lr,
            weight_decay=self.train.weight_decay,
        )  # fmt: skip
        by_class = [(train.y == c).nonzero().flatten() for c in range(train.num_classes)]
        if any(len(rows) == 0 for rows in by_class):
            raise ConfigError(f"{self.name}: every class needs a training row to start its points from")
        xs, ys, sources = [], [], []
        for _ in range(burn + count):
            starts = torch.cat(
                [rows[torch.randint(len(rows), (1,), generator=generator)] for rows in by_class]
            )
            x, losses = self._inner_max(model, x_c[starts.to(device)], classes, means, radii, penalty)
            best = int(losses.argmax())
            xs.append(x[best].detach())
            ys.append(int(classes[best]))
            sources.append(int(starts[best]))
            rows = torch.randperm(len(train), generator=generator)[: self.batch_size].to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(x_c[rows]), y_c[rows])
            loss = loss + self.fraction * F.cross_entropy(model(xs[-1][None]), classes[best : best + 1])
            loss.backward()
            opt.step()
        poisons = Dataset(
            torch.stack(xs[burn:]).cpu(), torch.tensor(ys[burn:]), train.classes, train.name
        )  # fmt: skip
        goal = AttackGoal(self.name, self.model_dump(mode="json"))
        return PoisonedDataset.from_added(train, poisons, goal, torch.tensor(sources[burn:]))

    def _inner_max(self, model, x, y, means, radii, penalty):
        """Projected signed ascent of each row's loss (minus the decoy penalty) inside box and sphere."""

        def objective(x):
            loss = F.cross_entropy(model(x), y, reduction="none")
            return loss if penalty is None else loss - penalty(x, y)

        with frozen_eval(model):
            x = project_sphere(x, means, radii)
            for _ in range(self.inner_steps):
                x.requires_grad_(True)
                (g,) = torch.autograd.grad(objective(x).sum(), x)
                x = project_sphere(x.detach() + self.inner_lr * g.sign(), means, radii)
            with torch.no_grad():
                return x, objective(x)


@register("attack", "i_min_max")
class ImprovedMinMax(MinMax):
    """Improved min-max (Koh, Steinhardt & Liang 2022): min-max points that a decoy model fits well."""

    decoy_eps_w: float = Field(5.0, gt=0, description="GradPC radius of the decoy around the clean model")
    decoy_steps: int = Field(100, ge=1, description="GradPC ascent steps for the decoy")
    penalty: float = Field(10.0, gt=0, description="weight of relu(decoy loss - rho_max) in the objective")

    def decoy_penalty(self, model, train: Dataset):
        decoy = gradpc(model, train, eps_w=self.decoy_eps_w, steps=self.decoy_steps).eval()
        for p in decoy.parameters():
            p.requires_grad_(False)
        device = next(decoy.parameters()).device
        with torch.no_grad():
            rho_max = float(
                sum(F.cross_entropy(decoy(xb.to(device)), yb.to(device), reduction="sum")
                    for xb, yb in zip(train.x.split(1000), train.y.split(1000))) / len(train)
            )  # fmt: skip

        def penalty(x, y):
            return self.penalty * F.relu(F.cross_entropy(decoy(x), y, reduction="none") - rho_max)

        return penalty
