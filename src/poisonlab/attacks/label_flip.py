"""Label flipping: the simplest dirty-label poisoning (Yacoubou 2024, section 2.1; the baseline row of the
tables of Yu 2024, lecture)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from poisonlab.attacks.base import BudgetedAttack, poison_count
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import predict


class _Budget(BudgetedAttack):
    fraction: float | None = Field(
        None, gt=0, le=1, description="fraction of the eligible rows to flip (default_fraction if no count)"
    )
    count: int | None = Field(None, ge=1, description="number of rows to flip (instead of a fraction)")


@register("attack", "label_flip_targeted")
class TargetedLabelFlip(_Budget):
    """Relabel a fraction or a count of class `source` as class `target` (Yacoubou 2024 flips MNIST 3 -> 9).

    Without fraction or count it flips 10% of the source class (``default_fraction``). Yacoubou 2024 fixes
    a count (100 MNIST rows, ~1.6% of the 3s) rather than a share; 10% is our choice: a share that scales
    with the data, matches the backdoors' 10% default, and moves the source class measurably on small sets
    (14 of the 137 3s of the digits train split) without flipping its majority.
    """

    default_fraction: ClassVar[float] = 0.1

    source: int = Field(3, ge=0, description="class whose rows are relabelled")
    target: int = Field(9, ge=0, description="label they are given")

    @model_validator(mode="after")
    def _distinct(self):
        if self.source == self.target:
            raise ValueError("source and target must differ")
        return self

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        self._count(train)

    def _count(self, train: Dataset) -> tuple[torch.Tensor, int]:
        """(the rows of class ``source``, how many to flip), checked against the data."""
        for cls in (self.source, self.target):
            if cls >= train.num_classes:
                raise ConfigError(f"label_flip_targeted: class {cls} is not in {train.name or 'the data'}")
        eligible = (train.y == self.source).nonzero().flatten()
        n = poison_count(
            len(eligible), self.budget_fraction, self.count, f"label_flip_targeted on class {self.source}"
        )
        return eligible, n

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        eligible, n = self._count(train)
        idx = eligible[torch.randperm(len(eligible), generator=generator)[:n]]
        y = train.y.clone()
        y[idx] = self.target
        goal = AttackGoal(self.name, self.model_dump(), adversarial_label=self.target)
        return PoisonedDataset.from_rows(train, train.with_labels(y), idx, goal)

    success_key: ClassVar[str | None] = "success_rate"

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """success_rate: fraction of test rows of `source` classified as `target`."""
        rows = test.y == self.source
        if not rows.any():
            return {}
        pred = predict(model, test.x[rows]).argmax(1)
        return {"success_rate": (pred == self.target).float().mean().item()}


@register("attack", "label_flip_random")
class RandomLabelFlip(_Budget):
    """Relabel random rows, each to a label drawn uniformly among the other classes.

    Without fraction or count it flips 3% of the rows (``default_fraction``): the label-flip
    baseline of Yu 2024 (lecture) at eps_d = 0.03.
    """

    default_fraction: ClassVar[float] = 0.03

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        poison_count(len(train), self.budget_fraction, self.count, "label_flip_random")

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        n = poison_count(len(train), self.budget_fraction, self.count, "label_flip_random")
        idx = torch.randperm(len(train), generator=generator)[:n]
        shift = torch.randint(1, train.num_classes, (n,), generator=generator)
        y = train.y.clone()
        y[idx] = (y[idx] + shift) % train.num_classes
        goal = AttackGoal(self.name, self.model_dump())
        return PoisonedDataset.from_rows(train, train.with_labels(y), idx, goal)
