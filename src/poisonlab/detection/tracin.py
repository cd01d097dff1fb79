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

    def _key(self) -> tuple:
        return ("tracin", tuple(self.layers or ()), self.memory_budget)

    def _planned(self, run: TrainRun, data: Dataset, test: Dataset | None) -> list:
        """The test-row picks of ``test`` announced for ``data`` by the run's TracIn detectors of these
        settings (a plan made for another test set is dropped)."""
        if test is None:
            return []
        plan = run.shared(("plan", *self._key()), data, lambda: {"test": test, "picks": []})
        if plan["test"] is not test:
            plan["test"], plan["picks"] = test, []
        return plan["picks"]

    def _influence(self, run: TrainRun, data: Dataset, test: Dataset | None, pick: torch.Tensor | None):
        """(self scores, summed scores of ``pick`` or None): every TracIn detector of a run with the same
        layers and budget shares one gradient pass, which covers every test-row pick announced by
        :meth:`plan` (each pick adds one summed gradient per checkpoint, not a pass)."""
        picked = None if pick is None else tuple(pick.tolist())
        picks = list(dict.fromkeys(self._planned(run, data, test) + ([picked] if picked else [])))

        def compute():
            engine = TracInCP(
                run.model, run.checkpoints, layers=self.layers, memory_budget=self.memory_budget
            )
            if not picks:
                return engine.self_influence(data), {}
            tests = [test.subset(torch.tensor(p, dtype=torch.int64)) for p in picks]
            self_scores, summed = engine.self_and_summed_influences(data, tests)
            return self_scores, dict(zip(picks, summed))

        hit = run.shared(self._key(), data, compute, fits=lambda hit: picked is None or picked in hit[1])
        return hit[0], (hit[1][picked] if picked is not None else None)


@register("detector", "tracin_self")
class TracInSelf(_TracInDetector):
    """TracInCP self-influence (Pruthi 2020): sum over checkpoints of lr * ||grad l(z)||^2 (no test set)."""

    def _scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        return self._influence(run, data, test, None)[0].numpy()


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

    def _pick(self, test: Dataset, generator: torch.Generator | None) -> torch.Tensor:
        """The ``num_test`` test rows, drawn from the generator's seed (not its state: plan and scores
        draw the same rows)."""
        seed = generator.initial_seed() if generator is not None else 0
        return torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[: self.num_test]

    def plan(self, data, run, *, test=None, generator=None) -> None:
        if run is not None and test is not None and len(test) >= self.num_test:
            self._planned(run, data, test).append(tuple(self._pick(test, generator).tolist()))

    def _scores(self, data, run: TrainRun, *, test=None, generator=None) -> np.ndarray:
        s = self._influence(run, data, test, self._pick(test, generator))[1]
        return {"negative": -s, "positive": s, "absolute": s.abs()}[self.sign].numpy()
