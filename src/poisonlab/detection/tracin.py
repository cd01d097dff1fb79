"""TracInCP influence (Pruthi et al. 2020; seed 000, section 3.2 and Algorithm 1).

    TracInCP(z, z') = sum_i eta_i * grad_w l(w_i, z) . grad_w l(w_i, z')

over the recorded checkpoints w_i with the learning rate eta_i in force when each was taken. Gradients
are per-sample gradients by ``torch.func`` (vmap over grad) of the cross-entropy loss, the model in eval
mode (batch norm uses its running statistics), restricted to the parameters of chosen layers or all.

Sign: a training point whose gradient agrees with a test point's lowers that test loss (positive
influence, a *proponent*); a mislabeled point is an *opponent* of test points of its true class.
Seed 000's published code did not reset gradients between the training and the test backward pass, so
its "test gradient" held the training point's own gradient and its score was dominated by
self-influence; we implement the equation, and offer self-influence as a separate detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad, vmap

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import Checkpoint, TrainRun


def parameter_names(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters of ``layers`` (module-name prefixes such as ``"head"``), or all."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if layers is None:
        return names
    chosen = [n for n in names if any(n == layer or n.startswith(layer + ".") for layer in layers)]
    unknown = [layer for layer in layers if not any(n == layer or n.startswith(layer + ".") for n in names)]
    if unknown:
        modules = sorted({n.rsplit(".", 1)[0] for n in names})
        raise ConfigError(f"unknown layer(s) {unknown}; layers with parameters: {', '.join(modules)}")
    return chosen


def per_sample_grads(
    model: nn.Module, state: dict[str, torch.Tensor], names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Flattened per-sample loss gradients w.r.t. parameters ``names``, shape (len(x), P)."""
    params = {n: state[n] for n in names}
    rest = {k: v for k, v in state.items() if k not in params}

    def loss(p, xi, yi):
        out = functional_call(model, {**rest, **p}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[n].reshape(len(x), -1) for n in names], dim=1)


def _prepare(model: nn.Module, checkpoints: Sequence[Checkpoint], layers):
    if not checkpoints:
        raise ConfigError("TracInCP needs at least one checkpoint (train with checkpoint_every)")
    device = next(model.parameters()).device
    names = parameter_names(model, layers)
    model.eval()
    for ck in checkpoints:
        state = {k: v.to(device) for k, v in ck.state.items()}
        yield ck.lr, state, names, device


def influence(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    train: Dataset,
    test: Dataset,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 128,
) -> torch.Tensor:
    """The (len(train), len(test)) TracInCP influence matrix."""
    out = torch.zeros(len(train), len(test))
    for lr, state, names, device in _prepare(model, checkpoints, layers):
        g_test = torch.cat([
            per_sample_grads(model, state, names, xb.to(device), yb.to(device))
            for xb, yb in zip(test.x.split(batch_size), test.y.split(batch_size))
        ])  # fmt: skip
        for start in range(0, len(train), batch_size):
            xb, yb = train.x[start : start + batch_size], train.y[start : start + batch_size]
            g = per_sample_grads(model, state, names, xb.to(device), yb.to(device))
            out[start : start + len(xb)] += lr * (g @ g_test.T).cpu()
    return out


def self_and_summed_influence(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    train: Dataset,
    test: Dataset | None = None,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-influence of every training row and, given ``test``, its influence summed over ``test``.

    The sum is seed 000's Algorithm 1 score; sum_j g_i . g_j = g_i . (sum_j g_j), so both come from
    one pass of per-sample gradients over the training set per checkpoint.
    """
    self_scores = torch.zeros(len(train))
    summed = torch.zeros(len(train)) if test is not None else None
    for lr, state, names, device in _prepare(model, checkpoints, layers):
        if test is not None:
            g_sum = sum(
                per_sample_grads(model, state, names, xb.to(device), yb.to(device)).sum(0)
                for xb, yb in zip(test.x.split(batch_size), test.y.split(batch_size))
            )
        for start in range(0, len(train), batch_size):
            xb, yb = train.x[start : start + batch_size], train.y[start : start + batch_size]
            g = per_sample_grads(model, state, names, xb.to(device), yb.to(device))
            self_scores[start : start + len(xb)] += lr * g.pow(2).sum(1).cpu()
            if summed is not None:
                summed[start : start + len(xb)] += lr * (g @ g_sum).cpu()
    return self_scores, summed


def summed_influence(model, checkpoints, train, test, *, layers=None, batch_size=128) -> torch.Tensor:
    """Seed 000's Algorithm 1 score: each training row's influence summed over the ``test`` rows."""
    return self_and_summed_influence(model, checkpoints, train, test, layers=layers, batch_size=batch_size)[1]


def self_influence(model, checkpoints, data, *, layers=None, batch_size=128) -> torch.Tensor:
    """TracInCP(z, z) = sum_i eta_i ||grad l(w_i, z)||^2 for every row: high for mislabeled points."""
    return self_and_summed_influence(model, checkpoints, data, layers=layers, batch_size=batch_size)[0]


def _cached_pass(run: TrainRun, data: Dataset, test: Dataset | None, pick, layers, batch_size):
    """Detectors on the same run share one gradient pass (kept in ``run.cache`` for the run's life)."""
    key = ("tracin", id(data), None if pick is None else tuple(pick.tolist()), tuple(layers or ()))
    hit = run.cache.get(key)
    if hit is None or (pick is not None and hit[1] is None):
        sub = test.subset(pick) if pick is not None else None
        hit = self_and_summed_influence(
            run.model, run.checkpoints, data, sub, layers=layers, batch_size=batch_size
        )
        run.cache[key] = hit
        if pick is not None:  # the pass with test points also gives the self-influence
            run.cache[key[:2] + (None,) + key[3:]] = hit
    return hit


@register("detector", "tracin_self")
class TracInSelf(Detector):
    """TracInCP self-influence: sum over checkpoints of lr * ||grad loss(z)||^2 (needs no test set)."""

    layers: list[str] | None = Field(None, description="module names whose parameters count; all if unset")
    batch_size: int = Field(128, ge=1)

    def scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        return _cached_pass(run, data, None, None, self.layers, self.batch_size)[0].numpy()


@register("detector", "tracin_test")
class TracInTest(Detector):
    """Seed 000's Algorithm 1: TracInCP summed over `num_test` random test points, with a chosen sign."""

    num_test: int = Field(20, ge=1, description="test points drawn at random (seeded) from the test set")
    sign: Literal["negative", "positive", "absolute"] = Field(
        "negative",
        description="negative: opponents are suspicious (flipped labels); positive: Algorithm 1 as written",
    )
    layers: list[str] | None = Field(None, description="module names whose parameters count; all if unset")
    batch_size: int = Field(128, ge=1)

    def scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        if test is None or len(test) == 0:
            raise ConfigError("tracin_test needs a test set")
        # every tracin_test detector of a trial draws the same test points (from the trial's seed)
        seed = generator.initial_seed() if generator is not None else 0
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[: self.num_test]
        s = _cached_pass(run, data, test, pick, self.layers, self.batch_size)[1]
        return {"negative": -s, "positive": s, "absolute": s.abs()}[self.sign].numpy()
