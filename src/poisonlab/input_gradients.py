"""Input-space gradient steps shared by attacks and defenses (Madry's PGD, error-minimising noise): a model
frozen in eval mode for the search, and signed L_inf steps on the inputs. Imports only torch, so both
``attacks`` and ``defenses`` can use it."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


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
