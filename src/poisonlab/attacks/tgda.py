"""TGDA: total-gradient descent-ascent poisoning (Lu, Kamath & Yu 2022).

The bilevel problem ``max_nu L(D_v; w*) s.t. w* = argmin_w F(D_c + eps_d nu; w)``, as a
Stackelberg game: a poison generator ``G_theta`` (the leader) turns ``eps_d * N`` clean rows into poisons
``G_theta(x_j)`` (labels kept) to *raise* the victim's loss ``L`` on validation rows, while the victim ``w``
(the follower) takes gradient steps on its training loss ``F`` over the clean rows plus the poisons. The
leader climbs the total gradient

    D_theta L = d_theta L - d_theta,w F . (d_w,w F)^-1 d_w L = -d_theta <d_w F(w, theta), v>,
    v = (H + delta I)^-1 d_w L

(``L`` does not depend on ``theta`` directly), ``v`` by conjugate gradient with Hessian-vector products
(``torch.func``: ``jvp`` of ``grad``, forward over reverse), ``d_theta <d_w F, v>`` by ``grad`` of a ``jvp``.
``F`` and ``L`` are estimated on random batches; a non-convex victim's negative curvature stops CG early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad, jvp

from poisonlab.attacks.base import HeldOutValidationAttack
from poisonlab.attacks.gradient_canceling import draw_sources
from poisonlab.attacks.gradients import conjugate_gradient, parameters_of, summed_loss
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register

__all__ = ["PoisonGenerator", "TGDA", "TGDAResult", "tgda"]


class PoisonGenerator(nn.Module):
    """``x -> sigmoid(logit(x) + MLP(x))``: poisons stay in the image box; a zero last layer starts at x."""

    def __init__(self, input_shape, hidden: int = 256, margin: float = 0.01):
        super().__init__()
        dim = math.prod(input_shape)
        self.margin = margin
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.logit(x.clamp(self.margin, 1.0 - self.margin))
        return torch.sigmoid(base + self.net(x).view_as(x))


@dataclass
class TGDAResult:
    """The poisons, the trained generator, the follower and the validation loss before each leader step."""

    poisons: Dataset
    generator: PoisonGenerator = field(repr=False)
    follower: dict[str, torch.Tensor] = field(repr=False)
    val_loss: np.ndarray = field(repr=False)


def tgda(
    victim: nn.Module,
    train: Dataset,
    sources: torch.Tensor,
    *,
    val: Dataset,
    steps: int = 100,
    follower_steps: int = 2,
    leader_lr: float = 0.01,
    follower_lr: float = 0.05,
    cg_iters: int = 10,
    damping: float = 0.01,
    weight_decay: float = 0.0,
    batch_size: int = 500,
    hidden: int = 256,
    generator: torch.Generator | None = None,
) -> TGDAResult:
    """TGDA (Lu et al. 2022): train a poison generator against ``victim`` (the follower starts as a copy of
    it) and return the poisons ``G(train.x[sources])`` with the labels ``train.y[sources]``.

    Each of ``steps`` rounds takes one Adam step of size ``leader_lr`` along the total gradient of the mean
    cross-entropy on ``val`` (``cg_iters`` CG iterations, ``damping`` on the Hessian), then
    ``follower_steps`` SGD steps of size ``follower_lr`` on
    ``F = (sum_clean l + sum_poison l) / (N + n_p) + weight_decay/2 ||w||^2``, each sum estimated from
    ``batch_size`` random rows.
    """
    if len(sources) == 0 or len(val) == 0:
        raise ConfigError("tgda needs at least one poison and one validation row")
    if steps < 1 or follower_steps < 0 or cg_iters < 1:
        raise ConfigError("tgda needs steps >= 1, follower_steps >= 0 and cg_iters >= 1")
    device = next(victim.parameters()).device
    model = victim
    was_training = model.training
    model.eval()
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the generator's initial weights come from ``generator``
        gen = PoisonGenerator(train.input_shape, hidden).to(device)
    theta = {n: p.detach().clone() for n, p in gen.named_parameters()}
    w = parameters_of(model)
    x_c, y_c = train.x.to(device), train.y.to(device)
    x_s, y_s = train.x[sources].to(device), train.y[sources].to(device)
    x_v, y_v = val.x.to(device), val.y.to(device)
    n_c, n_p = len(train), len(sources)
    scale = 1.0 / (n_c + n_p)
    leader = torch.optim.Adam(list(theta.values()), lr=leader_lr)
    for t in theta.values():
        t.requires_grad_(True)

    def batch(n, size):
        return torch.randperm(n, generator=generator)[: min(n, size)].to(device)

    def poison_loss(w_, th, xb, yb):  # the poisons' share of F (weighted sum)
        xp = functional_call(gen, th, (xb,))
        return summed_loss(model, w_, xp, yb) * (n_p / len(xb)) * scale

    def train_loss(w_, th, xc, yc, xb, yb):
        clean = summed_loss(model, w_, xc, yc) * (n_c / len(xc)) * scale
        reg = 0.5 * weight_decay * sum((p * p).sum() for p in w_.values())
        return clean + poison_loss(w_, th, xb, yb) + reg

    def val_loss(w_, xb, yb):
        return F.cross_entropy(functional_call(model, w_, (xb,)), yb)

    history = []
    for _ in range(steps):
        th = {n: t.detach() for n, t in theta.items()}
        ic, ip, iv = batch(n_c, batch_size), batch(n_p, batch_size), batch(len(val), batch_size)
        xc, yc, xb, yb = x_c[ic], y_c[ic], x_s[ip], y_s[ip]
        history.append(float(val_loss(w, x_v[iv], y_v[iv])))
        g_v = grad(val_loss)(w, x_v[iv], y_v[iv])

        def hvp(vec, w=w, th=th, rows=(xc, yc, xb, yb)):
            return jvp(lambda w_: grad(train_loss)(w_, th, *rows), (w,), (vec,))[1]

        v = conjugate_gradient(hvp, g_v, iters=cg_iters, damping=damping)

        def coupling(th_, w=w, v=v, rows=(xb, yb)):  # <d_w F(w, theta), v>: its theta-gradient is -D_theta L
            return jvp(lambda w_: poison_loss(w_, th_, *rows), (w,), (v,))[1]

        g_theta = grad(coupling)(th)
        for n, t in theta.items():
            t.grad = g_theta[n]
        leader.step()  # Adam descends <d_w F, v>, i.e. climbs the total gradient of L
        th = {n: t.detach() for n, t in theta.items()}
        for _ in range(follower_steps):
            ic, ip = batch(n_c, batch_size), batch(n_p, batch_size)
            g_w = grad(train_loss)(w, th, x_c[ic], y_c[ic], x_s[ip], y_s[ip])
            w = {n: w[n] - follower_lr * g_w[n] for n in w}
    with torch.no_grad():
        for n, p in gen.named_parameters():
            p.copy_(theta[n].detach())
        poisons = torch.cat([gen(xb) for xb in x_s.split(batch_size)]).clamp_(0.0, 1.0).cpu()
        poisons[poisons < 1e-6] = 0.0  # no denormal floats from a saturated sigmoid
    model.train(was_training)
    out = Dataset(poisons, y_s.cpu(), train.classes, train.name)
    return TGDAResult(out, gen.eval(), w, np.asarray(history))


@register("attack", "tgda")
class TGDA(HeldOutValidationAttack):
    """TGDA (Lu 2022): poisons from a generator trained by total-gradient descent-ascent against the victim.

    The attacker splits its clean training set: `val_size` random rows are the validation rows whose loss
    the leader raises, and the rest is what the follower trains on and the poisons start from (so the
    validation rows are never training rows of the game; Lu et al. keep a separate validation set). Without
    a victim it trains `model` on that rest with `train` and the trial's seed. Poisons are appended to the
    whole clean set (labels kept).
    """

    fraction: float = Field(0.03, gt=0, le=1, description="eps_d: poisons per clean row")
    steps: int = Field(100, ge=1, description="leader (generator) steps")
    follower_steps: int = Field(2, ge=0, description="victim SGD steps after each leader step")
    leader_lr: float = Field(0.01, gt=0, description="Adam step size of the generator")
    follower_lr: float | None = Field(None, gt=0, description="SGD step size of the follower (train.lr)")
    cg_iters: int = Field(10, ge=1, description="conjugate-gradient iterations for the Hessian-inverse term")
    damping: float = Field(0.01, ge=0, description="added to the Hessian's diagonal in CG")
    batch_size: int = Field(500, ge=1, description="rows per estimate of the training and validation losses")
    hidden: int = Field(256, ge=1, description="hidden units of the generator MLP")

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        val, rest = self.split_validation(train, generator)
        fit_rows = train.subset(rest)
        clean_model = self._clean_model(fit_rows, victim, generator)
        count = max(1, round(self.fraction * len(train)))
        sources = draw_sources(len(rest), count, generator)
        result = tgda(
            clean_model, fit_rows, sources, val=val, steps=self.steps, follower_steps=self.follower_steps,
            leader_lr=self.leader_lr, follower_lr=self.follower_lr or self.train.lr, cg_iters=self.cg_iters,
            damping=self.damping, weight_decay=self.train.weight_decay, batch_size=self.batch_size,
            hidden=self.hidden, generator=generator,
        )  # fmt: skip
        goal = AttackGoal(self.name, {**self.model_dump(mode="json"), "val_loss": result.val_loss.tolist()})
        return PoisonedDataset.from_added(train, result.poisons, goal, rest[sources])
