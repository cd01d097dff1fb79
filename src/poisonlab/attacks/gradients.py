"""Parameter-gradient maths shared by the gradient attacks (gradient canceling, TGDA, gradient matching,
Sleeper Agent): parameters as name -> tensor dicts, summed losses and gradients through ``torch.func``,
inner products, the cosine matching loss of Geiping et al. 2021, and a damped conjugate-gradient solver."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad


def parameters_of(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters, by name."""
    named = model.named_parameters()
    return {n: p.detach().to(dtype or p.dtype).clone() for n, p in named if p.requires_grad}


def summed_loss(model: nn.Module, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cross-entropy summed over the rows, with ``params`` in place of the model's parameters."""
    return F.cross_entropy(functional_call(model, params, (x,)), y, reduction="sum")


def summed_gradient(model: nn.Module, params: dict, x, y, batch_size: int) -> dict[str, torch.Tensor]:
    """sum_i grad_w l(x_i, y_i; w), accumulated over chunks of ``batch_size`` rows."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        for n, g in grad(summed_loss, argnums=1)(model, params, xb, yb).items():
            total[n] += g
    return total


def dot(a: dict, b: dict) -> torch.Tensor:
    """The inner product of two parameter dicts."""
    return sum((a[n] * b[n]).sum() for n in a)


def matching_loss(
    grads: tuple[torch.Tensor, ...], target: tuple[torch.Tensor, ...], target_norm
) -> torch.Tensor:
    """1 - cos(grads, target), the cosine over all parameters at once (Geiping et al. 2021)."""
    inner = sum((g * t).sum() for g, t in zip(grads, target))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    return 1 - inner / (norm * target_norm + 1e-12)


def conjugate_gradient(hvp, b: dict, *, iters: int = 10, damping: float = 0.01, tol: float = 1e-6) -> dict:
    """Solve ``(H + damping I) v = b`` for parameter dicts by CG.

    Stops at negative curvature, returning ``b`` (the plain gradient-descent-ascent direction) if at once.
    """
    v = {n: torch.zeros_like(t) for n, t in b.items()}
    r = {n: t.clone() for n, t in b.items()}
    p = {n: t.clone() for n, t in b.items()}
    rs = float(dot(r, r))
    b_norm = math.sqrt(rs)
    for it in range(iters):
        hp = hvp(p)
        ap = {n: hp[n] + damping * p[n] for n in p}
        curvature = float(dot(p, ap))
        if curvature <= 0:
            return v if it else {n: t.clone() for n, t in b.items()}
        alpha = rs / curvature
        for n in v:
            v[n] += alpha * p[n]
            r[n] -= alpha * ap[n]
        rs_new = float(dot(r, r))
        if math.sqrt(rs_new) <= tol * b_norm:
            break
        p = {n: r[n] + (rs_new / rs) * p[n] for n in p}
        rs = rs_new
    return v
