"""TracInIdeal (Pruthi et al. 2020, section 2; seed 000's ideal influence), recorded during training.

    TracInIdeal(z, z') = sum over the steps t whose batch held z of  l(w_t, z') - l(w_{t+1}, z')

the loss reduction on z' of every step that trained on z. Self-influence takes z' = z: how much z's own
steps lowered its loss (a mislabelled row needs the most). TracInCP approximates both from a few checkpoints
by first-order terms (``tracin.py``); TracInIdeal needs the training itself, so it is an opt-in training
hook (:class:`TracInIdealRecorder`) that evaluates, around each optimiser step, the batch's rows and the
given test points in eval mode (one extra forward of the batch and of the test points per step; the
training's own forward and backward are untouched).

With ``first_order=True`` the recorder also keeps the per-step first-order TracIn of mini-batch SGD
(Pruthi et al., eq. 3: the 1/b factor of a batch of b rows),

    TracIn(z, z) = sum over the steps t whose batch held z of  (eta_t / b) ||grad l(w_t, z)||^2

with per-sample gradients at w_t (plain SGD: momentum and weight decay are outside the expansion), the
ideal's first-order counterpart without the other rows of the batch.

Choices: with mini-batches the whole loss change of a step is credited to every row of its batch (Pruthi et
al. write the ideal for batch size 1); the losses are measured on the batch as the model saw it (after
augmentation); batch-norm models are evaluated with their running statistics. Memory: a float64 per row
(self) and per row and test point (test influence), refused above ``max_bytes``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import TrainHook, TrainRun

SELF, TEST, FIRST_ORDER = "tracin_ideal.self", "tracin_ideal.test", "tracin.per_step_self"


@torch.no_grad()
def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = F.cross_entropy(model(x), y, reduction="none").double().cpu()
    model.train(was_training)
    return out


class TracInIdealRecorder(TrainHook):
    """A training hook that accumulates TracInIdeal self-influence of the ``n_rows`` training rows and,
    given test points (inputs as the model sees them), their test influence (rows x test points)."""

    def __init__(
        self, n_rows: int, test_x=None, test_y=None, max_bytes: int = 1 << 30, first_order: bool = False
    ):
        m = 0 if test_x is None else len(test_x)
        if 8 * n_rows * (1 + m) > max_bytes:
            raise ConfigError(
                f"tracin_ideal: {n_rows} rows x {m} test points need {8 * n_rows * (1 + m) / 2**30:.1f} GiB "
                f"(limit {max_bytes / 2**30:.1f}): use fewer test points"
            )
        self.self_influence = torch.zeros(n_rows, dtype=torch.float64)
        self.test_x, self.test_y = test_x, test_y
        self.test_influence = None if test_x is None else torch.zeros(n_rows, m, dtype=torch.float64)
        self._before = self._test_before = None
        self.first_order = torch.zeros(n_rows, dtype=torch.float64) if first_order else None
        self._config, self._epoch = None, 1

    def begin(self, config) -> None:
        self._config = config

    def rows(self, epoch, model, x, y):
        self._epoch = epoch  # the step's learning rate is the epoch's
        return None

    def _per_step_tracin(self, model: nn.Module, xb, yb, rows) -> None:
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        was_training = model.training
        model.eval()

        def loss_one(p, x, y):
            logits = functional_call(model, (p, buffers), (x[None],))
            return F.cross_entropy(logits, y[None])

        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, xb, yb)
        model.train(was_training)
        squared = sum(g.flatten(1).pow(2).sum(1) for g in grads.values()).double().cpu()
        lr = self._config.lr_at(self._epoch) if self._config is not None else 1.0
        self.first_order.index_add_(0, rows.cpu(), lr / len(xb) * squared)

    def before_step(self, model, xb, yb, rows) -> None:
        self._before = _losses(model, xb, yb)
        if self.first_order is not None:
            self._per_step_tracin(model, xb, yb, rows)
        if self.test_x is not None and self._test_before is None:
            self._test_before = _losses(model, self.test_x.to(xb.device), self.test_y.to(xb.device))

    def after_step(self, model, xb, yb, rows) -> None:
        rows = rows.cpu()
        self.self_influence.index_add_(0, rows, self._before - _losses(model, xb, yb))
        if self.test_x is not None:
            after = _losses(model, self.test_x.to(xb.device), self.test_y.to(xb.device))
            self.test_influence[rows] += (self._test_before - after)[None, :]
            self._test_before = after  # the next step starts where this one ended

    def records(self) -> dict:
        out = {SELF: self.self_influence}
        if self.test_influence is not None:
            out[TEST] = self.test_influence
        if self.first_order is not None:
            out[FIRST_ORDER] = self.first_order
        return out


@register("detector", "tracin_ideal")
class TracInIdeal(Detector):
    """TracInIdeal self-influence (Pruthi 2020): the loss reduction of each row by its own training steps,
    recorded while the victim trains (higher = more suspicious)."""

    records_training: ClassVar[bool] = True

    def recorder(self, n_rows: int) -> TracInIdealRecorder:
        """The hook the victim's training runs with so that :meth:`scores` can read its record."""
        return TracInIdealRecorder(n_rows)

    def _scores(self, data: Dataset, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        record = run.records.get(SELF)
        if record is None or len(record) != len(data):
            raise ConfigError(
                "tracin_ideal: the run holds no training record of these rows (it reads the victim's own "
                "training: detect_with victim, an attack that leaves the training to the runner)"
            )
        return record.numpy().copy()
