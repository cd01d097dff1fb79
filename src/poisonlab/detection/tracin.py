"""TracInCP detectors (Pruthi et al. 2020; Yacoubou 2024, section 3.2 and Algorithm 1).

    TracInCP(z, z') = sum_i eta_i * grad_w l(w_i, z) . grad_w l(w_i, z')

over the recorded checkpoints w_i with the learning rate eta_i in force when each was taken, computed
by :class:`poisonlab.detection.influence.TracInCP` (exact, batched, memory-bounded).

Sign: a training point whose gradient agrees with a test point's lowers that test loss (positive
influence, a *proponent*); a mislabeled point is an *opponent* of test points of its true class.
Yacoubou 2024's published code did not reset gradients between the training and the test backward pass,
so its "test gradient" held the training point's own gradient and its score was dominated by
self-influence; we implement the equation, and offer self-influence as a separate detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.detection.influence import TracInCP, parse_bytes
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import Checkpoint, TrainRun


def influence(model: nn.Module, checkpoints: Sequence[Checkpoint], train: Dataset, test: Dataset, **options):
    """The (len(train), len(test)) TracInCP influence matrix (options: see :class:`TracInCP`)."""
    return TracInCP(model, checkpoints, **options).influence(train, test)


def summed_influence(
    model: nn.Module, checkpoints: Sequence[Checkpoint], train: Dataset, test: Dataset, **options
):
    """Yacoubou 2024's Algorithm 1 score: each training row's influence summed over the ``test`` rows."""
    return TracInCP(model, checkpoints, **options).summed_influence(train, test)


def self_influence(model: nn.Module, checkpoints: Sequence[Checkpoint], data: Dataset, **options):
    """TracInCP(z, z) = sum_i eta_i ||grad l(w_i, z)||^2 for every row: high for mislabeled points."""
    return TracInCP(model, checkpoints, **options).self_influence(data)


class _TracInDetector(Detector):
    layers: list[str] | None = Field(None, description="module names whose parameters count; all if unset")
    memory_budget: str = Field("2GB", description="working-memory bound of the gradient tiles")

    @field_validator("memory_budget")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_bytes(value)  # a size such as '2GB' (rejected with the other parameters, before any work)
        return value

    def _influence(self, run: TrainRun, data: Dataset, test: Dataset | None, pick: torch.Tensor | None):
        """Self and summed scores; detectors of one run share one gradient pass (``run.shared``)."""
        key = ("tracin", tuple(self.layers or ()), self.memory_budget)
        picked = None if pick is None else tuple(pick.tolist())

        def compute():
            engine = TracInCP(
                run.model, run.checkpoints, layers=self.layers, memory_budget=self.memory_budget
            )
            if pick is None:
                return (engine.self_influence(data), None, None)
            return (*engine.self_and_summed_influence(data, test.subset(pick)), picked)

        # self-influence serves every call; the summed scores only a call with the same test rows
        return run.shared(key, data, compute, fits=lambda hit: picked is None or hit[2] == picked)


@register("detector", "tracin_self")
class TracInSelf(_TracInDetector):
    """TracInCP self-influence (Pruthi 2020): sum over checkpoints of lr * ||grad l(z)||^2 (no test set)."""

    def _scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        return self._influence(run, data, None, None)[0].numpy()


@register("detector", "tracin_test")
class TracInTest(_TracInDetector):
    """Yacoubou 2024's Algorithm 1: TracInCP summed over `num_test` random test points, with a chosen sign."""

    num_test: int = Field(20, ge=1, description="test points drawn at random (seeded) from the test set")
    sign: Literal["negative", "positive", "absolute"] = Field(
        "negative",
        description="negative: opponents are suspicious (flipped labels); positive: Algorithm 1 as written",
    )

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        if test is None or len(test) == 0:
            raise ConfigError("tracin_test.scores: test is missing or empty (it draws num_test test points)")
        if self.num_test > len(test):  # it would silently draw fewer
            raise ConfigError(f"num_test {self.num_test} exceeds the {len(test)} rows of the test split")

    def _scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        # every tracin_test detector of a trial draws the same test points (from the trial's seed)
        seed = generator.initial_seed() if generator is not None else 0
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[: self.num_test]
        s = self._influence(run, data, test, pick)[1]
        return {"negative": -s, "positive": s, "absolute": s.abs()}[self.sign].numpy()
