"""GradPC, gradient canceling and the reachability threshold (Lu, Kamath & Yu 2023).

GradPC (parameter corruption): ``max_{||w - w_c|| <= eps_w} F(mu; w)`` by normalised gradient
*ascent* on the clean training loss from the clean parameters ``w_c``, projected back onto the L2 (or L_inf)
ball after every step. It gives a bad *target* model ``w*`` close to the clean one.

Gradient canceling (GC): ``eps_d * N`` poisons, initialised from clean rows with their labels,
minimise

    1/2 || G(D_c; w*) + G(D_p; w*) + (N + n_p) * lambda * w* ||^2

with ``G`` the *sum*-reduced loss gradient (the reference's choice: ``N^2 / 2 ||g(mu) + eps_d g(nu)||^2`` of
the paper in mean gradients) and ``lambda`` the victim's weight decay (0 in the paper), by gradient descent on
the poison inputs, clipped to the image box [0, 1]. At 0, ``w*`` is a stationary point of training on
``D_c + D_p`` and, for a convex victim (logistic regression), its minimiser: retraining lands on ``w*``.

Reachability: ``g(mu; w) + eps_d g(nu; w) = 0`` forces ``<w, g(mu)> + eps_d <w, g(nu)> = 0``.
For a softmax cross-entropy layer with logits ``z``, ``<w, g(z)> = sum_k (p_k - y_k) z_k >= -W((K - 1) / e)``
(Lambert W; ``W(1/e) = 0.2785`` for K = 2 is the 0.28 of Yu 2024's lecture), so no poison set reaches
``w`` when ``eps_d < tau = max(<w, g(mu)>, 0) / W((K - 1) / e)``. For networks we apply it to the last
(linear) layer, whose gradient must vanish too, which keeps ``tau`` a valid necessary threshold.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import grad, jvp

from poisonlab.attacks.base import SurrogateAttack, train_clean_model
from poisonlab.attacks.gradients import dot, parameters_of, summed_gradient, summed_loss
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import accuracy

__all__ = [
    "CancelingResult",
    "GradientCanceling",
    "draw_sources",
    "gradient_canceling",
    "gradpc",
    "head_alignment",
    "parameter_distance",
    "poison_term_bound",
    "reachability_threshold",
    "train_clean_model",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_FRACTION = 10.0  # poisons per clean row, the largest eps_d the attack accepts (numeric or tau)


# ----------------------------------------------------------------------------------------------------
# shared helpers


def parameter_distance(a: nn.Module, b: nn.Module) -> float:
    """L2 distance between the flattened parameters of two models of the same architecture (nan otherwise)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[n].shape != pb[n].shape for n in pa):
        return float("nan")
    return math.sqrt(sum(float((pa[n].detach().cpu().double() - pb[n].detach().cpu().double()).pow(2).sum())
                         for n in pa))  # fmt: skip


def _cosine_lr(lr: float, step: int, steps: int) -> float:
    """Cosine decay from ``lr`` to 0 over ``steps`` (the reference's schedule)."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


# ----------------------------------------------------------------------------------------------------
# GradPC


@torch.no_grad()
def _project(delta: dict[str, torch.Tensor], eps: float, norm: str) -> None:
    if norm == "linf":
        for d in delta.values():
            d.clamp_(-eps, eps)
        return
    length = math.sqrt(sum(float(d.pow(2).sum()) for d in delta.values()))
    if length > eps:
        for d in delta.values():
            d.mul_(eps / length)


def gradpc(
    model: nn.Module,
    data: Dataset,
    eps_w: float,
    *,
    norm: Literal["l2", "linf"] = "l2",
    steps: int = 100,
    lr: float | None = None,
    batch_size: int | None = None,
    chunk: int = 1000,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """GradPC (Lu, Kamath & Yu 2023): a copy of ``model`` moved to maximise its mean training loss on ``data``
    within ``||w - w_c|| <= eps_w``.

    Each of ``steps`` steps adds ``lr_t * g / ||g||_2`` (``sign(g)`` for ``norm="linf"``) to the accumulated
    corruption, ``g`` the loss gradient on all of ``data`` (``batch_size=None``) or on a random batch,
    ``lr_t`` cosine-decayed from ``lr`` (default ``eps_w / 4``), then projects the corruption onto the ball.
    """
    if eps_w <= 0:
        raise ConfigError(f"gradpc: eps_w must be positive, got {eps_w}")
    if norm not in ("l2", "linf"):
        raise ConfigError(f"gradpc: norm must be 'l2' or 'linf', got {norm!r}")
    if steps < 1 or len(data) == 0:
        raise ConfigError("gradpc needs at least one step and a non-empty dataset")
    lr = eps_w / 4 if lr is None else lr
    target = copy.deepcopy(model).eval()
    device = next(target.parameters()).device
    x, y = data.x.to(device), data.y.to(device)
    clean = parameters_of(target)
    delta = {n: torch.zeros_like(p) for n, p in clean.items()}
    for step in range(steps):
        if batch_size is None or batch_size >= len(data):
            xb, yb = x, y
        else:
            pick = torch.randperm(len(data), generator=generator)[:batch_size].to(device)
            xb, yb = x[pick], y[pick]
        params = {n: clean[n] + delta[n] for n in clean}
        g = summed_gradient(target, params, xb, yb, chunk)
        if norm == "l2":
            length = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values())) or 1.0
            g = {n: v / length for n, v in g.items()}
        else:
            g = {n: v.sign() for n, v in g.items()}
        step_lr = _cosine_lr(lr, step, steps)
        for n in delta:
            delta[n] += step_lr * g[n]
        _project(delta, eps_w, norm)
    with torch.no_grad():
        for n, p in target.named_parameters():
            if n in delta:
                p.copy_(clean[n] + delta[n])
    return target


# ----------------------------------------------------------------------------------------------------
# reachability threshold


def _lambert_w(z: float) -> float:
    """Principal branch of Lambert W for z >= 0 (Newton's method on w e^w = z)."""
    w = math.log1p(z)
    for _ in range(100):
        step = (w * math.exp(w) - z) / (math.exp(w) * (w + 1.0))
        w -= step
        if abs(step) < 1e-15:
            break
    return w


def poison_term_bound(num_classes: int) -> float:
    """``W((K - 1) / e) = -inf_z sum_k (softmax(z)_k - y_k) z_k``: how low one poison's ``<w, g>`` can go.

    0.2785 for K = 2 (the lecture's 0.28, Yu 2024: ``-W(1/e) = inf_t -t / (1 + e^t)``), 1.101 for K = 10.
    """
    if num_classes < 2:
        raise ConfigError(f"poison_term_bound needs at least 2 classes, got {num_classes}")
    return _lambert_w((num_classes - 1) / math.e)


@torch.no_grad()
def head_alignment(model: nn.Module, data: Dataset, batch_size: int = 1024) -> float:
    """``<w_head, g_head(mu; w)>`` = mean over rows of ``sum_k (p_k - y_k) z_k``, ``z`` the logits.

    For the last linear layer ``z = W phi + b`` the gradient is ``(p - y) (phi, 1)^T``, so its inner product
    with ``(W, b)`` is ``(p - y) . z``: the whole model for logistic regression, the head for networks.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    logits = torch.cat(
        [model(xb.to(param.device, param.dtype)).double().cpu() for xb in data.x.split(batch_size)]
    )
    model.train(was_training)
    p = logits.softmax(1)
    p[torch.arange(len(data)), data.y] -= 1.0
    return float((p * logits).sum(1).mean())


def reachability_threshold(
    model: nn.Module, data: Dataset, *, weight_decay: float = 0.0, constant: float | None = None
) -> float:
    """The transition threshold tau (Lu, Kamath & Yu 2023) of ``model``: below it no poison set reaches it.

    ``tau = max(<w, g(mu)>, 0) / c`` with ``c = poison_term_bound(K)`` (pass ``constant=0.28`` for the
    lecture's binary value) and ``w`` the last layer's weights and bias. With weight decay ``lambda``
    (stationarity of ``mean loss + lambda/2 ||w||^2`` on ``D_c + D_p``):
    ``tau = (<w, g> + lambda s) / (c - lambda s)``, ``s = ||w_head||^2``, and ``inf`` when ``c <= lambda s``.
    """
    if len(data) == 0:
        raise ConfigError("reachability_threshold needs a non-empty dataset")
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError("reachability_threshold needs a model whose last layer is a linear `head`")
    c = poison_term_bound(data.num_classes) if constant is None else float(constant)
    if c <= 0:
        raise ConfigError(f"reachability_threshold: constant must be positive, got {constant}")
    a = head_alignment(model, data)
    s = sum(float(p.detach().double().pow(2).sum()) for p in head.parameters())
    num, den = a + weight_decay * s, c - weight_decay * s
    if num <= 0:
        return 0.0
    return num / den if den > 0 else math.inf


# ----------------------------------------------------------------------------------------------------
# gradient canceling


@dataclass
class CancelingResult:
    """Optimised poisons; ``objective``: 1/2 ||G(D_c) + G(D_p) + reg||^2 before each step and at the end."""

    poisons: Dataset
    objective: np.ndarray = field(repr=False)

    @property
    def reduction(self) -> float:
        """Final over initial objective."""
        return float(self.objective[-1] / self.objective[0]) if self.objective[0] > 0 else 0.0


def gradient_canceling(
    target: nn.Module,
    clean: Dataset,
    poisons: Dataset,
    *,
    steps: int = 1000,
    lr: float = 0.02,
    optimizer: Literal["adam", "gd"] = "adam",
    weight_decay: float = 0.0,
    dtype: torch.dtype = torch.float64,
    batch_size: int = 1000,
    tol: float = 0.0,
) -> CancelingResult:
    """Gradient canceling (Lu, Kamath & Yu 2023): move ``poisons`` (their labels fixed) so that the ``target``
    model's summed loss gradient over ``clean + poisons`` (plus weight decay) vanishes.

    Minimises ``1/2 ||r||^2``, ``r = G(clean) + G(poisons) + (N + n_p) weight_decay w*``, over the poison
    inputs, the step size cosine-decayed from ``lr``, pixels clipped to [0, 1] after every step.
    ``optimizer="gd"`` is the reference's plain gradient step (its ``lr`` is 10 for LR/MLP, 5 for a CNN on
    normalised MNIST); ``"adam"`` rescales each pixel's step and needs no tuning to the data size.

    The input gradient ``J^T r = grad_x <r, grad_w L(x)>`` is ``grad_x`` of a forward-mode directional
    derivative (torch.func ``jvp`` inside ``grad``), batched over ``batch_size`` poisons; ``r`` itself comes
    from a first pass of summed gradients. Stops early once the objective is below ``tol`` times its start.
    """
    if len(poisons) == 0:
        raise ConfigError("gradient_canceling needs at least one poison")
    if steps < 1 or lr <= 0:
        raise ConfigError(f"gradient_canceling needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
    if optimizer not in ("adam", "gd"):
        raise ConfigError(f"gradient_canceling: optimizer must be 'adam' or 'gd', got {optimizer!r}")
    model = copy.deepcopy(target).to(dtype).eval()
    device = next(model.parameters()).device
    params = parameters_of(model)
    n_total = len(clean) + len(poisons)
    base = summed_gradient(model, params, clean.x.to(device, dtype), clean.y.to(device), batch_size)
    if weight_decay:
        base = {n: base[n] + n_total * weight_decay * params[n] for n in base}
    x = poisons.x.to(device, dtype).clone()
    y = poisons.y.to(device)
    adam = torch.optim.Adam([x], lr=lr) if optimizer == "adam" else None

    def direction(xb, yb, r):
        def along_r(xx):  # <r, grad_w L(xx)>: the derivative of L(w* + h r) at h = 0
            return jvp(lambda p: summed_loss(model, p, xx, yb), (params,), (r,))[1]

        return grad(along_r)(xb)

    history = []
    for step in range(steps + 1):
        g_p = summed_gradient(model, params, x, y, batch_size)
        r = {n: base[n] + g_p[n] for n in base}
        history.append(0.5 * float(dot(r, r)))
        if step == steps or (tol > 0 and history[-1] <= tol * history[0]):
            break
        d = torch.cat([direction(xb, yb, r) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
        step_lr = _cosine_lr(lr, step, steps)
        if adam is not None:
            adam.param_groups[0]["lr"] = step_lr
            x.grad = d
            adam.step()
        else:
            x.sub_(step_lr * d)
        x.clamp_(0.0, 1.0)
    out = Dataset(x.to("cpu", torch.float32), y.cpu(), poisons.classes, poisons.name)
    return CancelingResult(out, np.asarray(history))


def draw_sources(n_rows: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` row indices: a random permutation of the rows, repeated when ``count`` exceeds them."""
    reps = -(-count // n_rows)
    return torch.cat([torch.randperm(n_rows, generator=generator) for _ in range(reps)])[:count]


@register("attack", "gradient_canceling")
class GradientCanceling(SurrogateAttack):
    """Gradient canceling (Lu 2023): added poisons that make a GradPC target a stationary point of training.

    Without a victim it trains `model` on the clean data with `train` (the runner hands it the victim's
    clean twin when `model` and `train` match the experiment's), moves it to a GradPC target within
    `eps_w`, and crafts `fraction * N` poisons (may exceed N) that cancel the target's gradient; the
    victim's weight decay (`train.weight_decay`) is part of the objective.
    """

    fraction: Annotated[float, Field(gt=0, le=MAX_FRACTION)] | Literal["tau"] = Field(
        0.03, description="eps_d: poisons per clean row (above 1 allowed), or 'tau': the target's threshold"
    )

    def clean_model_spec(self):
        return self.model, self.train

    eps_w: float = Field(1.0, gt=0, description="GradPC radius of the target around the clean model")
    norm: Literal["l2", "linf"] = Field("l2", description="GradPC ball")
    gradpc_steps: int = Field(100, ge=1, description="GradPC ascent steps (full batch, step eps_w/4 decayed)")
    steps: int = Field(1000, ge=1, description="gradient-canceling steps on the poison inputs")
    lr: float = Field(0.02, gt=0, description="initial step size, cosine-decayed to 0")
    optimizer: Literal["adam", "gd"] = Field("adam", description="adam, or the reference's plain step")
    dtype: Literal["float64", "float32"] = Field("float64", description="precision of the canceling")
    batch_size: int = Field(1000, ge=1, description="rows per gradient pass (memory only)")
    tol: float = Field(1e-10, ge=0, description="stop when the objective falls below tol times its start")

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        clean_model = self._clean_model(train, victim, generator)
        target = gradpc(
            clean_model, train, self.eps_w, norm=self.norm, steps=self.gradpc_steps, generator=generator
        )
        tau = reachability_threshold(target, train, weight_decay=self.train.weight_decay)
        eps_d = tau if self.fraction == "tau" else self.fraction
        if not eps_d <= MAX_FRACTION:
            raise ConfigError(
                f"gradient_canceling: eps_d = tau = {tau:.3g} of the GradPC target exceeds {MAX_FRACTION:g} "
                "poisons per clean row; give a number as fraction"
            )
        count = max(1, round(eps_d * len(train)))
        sources = draw_sources(len(train), count, generator)
        result = gradient_canceling(
            target, train, train.subset(sources), steps=self.steps, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.train.weight_decay, dtype=DTYPES[self.dtype], batch_size=self.batch_size,
            tol=self.tol,
        )  # fmt: skip
        info = {
            "target": target, "tau": tau, "objective_reduction": result.reduction,
            "tau_binary": reachability_threshold(target, train, constant=0.28),  # the lecture's formula
        }  # fmt: skip
        goal = AttackGoal(self.name, {**self.model_dump(mode="json"), **info})
        return PoisonedDataset.from_added(train, result.poisons, goal, sources)

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """target_accuracy (the GradPC target on test), distance_to_target (L2), tau, tau_binary (seed 001's
        ``<w, g(mu)> / 0.28``, no weight decay), objective_reduction."""
        target = goal.params.get("target")
        if target is None:
            return {}
        return {
            "target_accuracy": accuracy(target, test),
            "distance_to_target": parameter_distance(model, target),
            "tau": goal.params["tau"],
            "tau_binary": goal.params["tau_binary"],
            "objective_reduction": goal.params["objective_reduction"],
        }
