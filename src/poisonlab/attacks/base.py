"""The attack interface: ``craft(train, generator=...) -> PoisonedDataset``, never changing its input."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import Method


class Attack(Method):
    """Base of every attack."""

    kind = "attack"

    def craft(
        self, train: Dataset, *, generator: torch.Generator, victim: nn.Module | None = None
    ) -> PoisonedDataset:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """Attack-specific success metrics of a trained ``model`` on ``test`` (empty by default)."""
        return {}


class BudgetedAttack(Attack):
    """An attack whose budget is a fraction or a count of rows (exactly one of them)."""

    fraction: float | None = Field(None, gt=0, le=1, description="fraction of the eligible rows to poison")
    count: int | None = Field(None, ge=1, description="number of rows to poison (instead of a fraction)")

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of fraction and count")
        return self


def poison_count(available: int, fraction: float | None, count: int | None, what: str) -> int:
    """Number of rows to poison out of ``available`` from a fraction or a count (exactly one is set)."""
    n = count if count is not None else round((fraction or 0.0) * available)
    if n < 1:
        raise ConfigError(f"{what}: the budget selects no row (fraction {fraction} of {available} rows)")
    if n > available:
        raise ConfigError(f"{what}: asked for {n} rows but only {available} are available")
    return n
