"""Parameter-gradient maths shared by the gradient attacks (gradient canceling, TGDA, gradient matching,
Sleeper Agent): parameters as name -> tensor dicts, summed losses and gradients through ``torch.func``,
inner products, and the cosine matching loss of Geiping et al. 2021."""

from __future__ import annotations

from contextlib import contextmanager

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


@contextmanager
def frozen_eval(model: nn.Module):
    """``model`` in eval mode with its trainable parameters frozen for the block (an input-space search),
    then restored as it was."""
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


def linf_sign_steps(model: nn.Module, x, y, delta, *, eps: float, step_size: float, steps: int):
    """``steps`` signed input-gradient steps of the noise ``delta`` on ``x``'s cross-entropy (ascent for a
    positive ``step_size``, descent for a negative one), each projected onto the image box and the L_inf ball
    of radius ``eps``: the PGD of Madry et al. and of error-minimising noise."""
    for _ in range(steps):
        xp = (x + delta).clamp(0, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xp), y, reduction="sum"), xp)
        delta = ((xp.detach() + step_size * g.sign()).clamp(0, 1) - x).clamp(-eps, eps)
    return delta
