"""The record every attack returns: the training set as released and what was done to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from poisonlab.data import Dataset
from poisonlab.errors import ConfigError


@dataclass(frozen=True, eq=False)
class AttackGoal:
    """What an attack wants: its name and parameters, and for targeted attacks the target and trigger."""

    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    target_x: torch.Tensor | None = None  # target inputs (targeted clean-label attacks)
    target_y: torch.Tensor | None = None  # their true labels
    adversarial_label: int | None = None  # the label the attacker wants (flip target, backdoor target)
    trigger: torch.Tensor | None = None  # backdoor trigger pattern


@dataclass(frozen=True, eq=False)
class PoisonedDataset:
    """The released training set, the indices of the poisoned rows, their original rows and the goals.

    ``poison_goal[i]`` says which of ``goals`` poisoned row ``poison_idx[i]`` (several attacks compose).
    """

    data: Dataset
    poison_idx: torch.Tensor
    original: Dataset
    goals: tuple[AttackGoal, ...]
    poison_goal: torch.Tensor

    def __post_init__(self):
        idx = self.poison_idx
        n = len(self.data)
        if idx.dtype != torch.int64 or idx.ndim != 1:
            raise ConfigError("poison_idx must be a 1-D int64 tensor")
        if len(idx) and (idx.min() < 0 or idx.max() >= n or len(idx.unique()) != len(idx)):
            raise ConfigError(f"poison_idx must hold distinct row indices in [0, {n})")
        if len(self.original) != len(idx) or len(self.poison_goal) != len(idx):
            raise ConfigError("original rows and poison_goal must match poison_idx in length")

    @classmethod
    def from_rows(
        cls, clean: Dataset, released: Dataset, idx: torch.Tensor, goal: AttackGoal
    ) -> PoisonedDataset:
        """Record of one attack that changed rows ``idx`` of ``clean`` into ``released``."""
        idx = torch.as_tensor(idx, dtype=torch.int64).sort().values
        zeros = torch.zeros(len(idx), dtype=torch.int64)
        return cls(released, idx, clean.subset(idx), (goal,), zeros)

    @property
    def is_poisoned(self) -> torch.Tensor:
        """Boolean mask over the released rows."""
        mask = torch.zeros(len(self.data), dtype=torch.bool)
        mask[self.poison_idx] = True
        return mask

    def mask_of(self, goal_index: int) -> torch.Tensor:
        """Boolean mask of the rows poisoned by ``goals[goal_index]``."""
        mask = torch.zeros(len(self.data), dtype=torch.bool)
        mask[self.poison_idx[self.poison_goal == goal_index]] = True
        return mask

    def clean_data(self) -> Dataset:
        """The training set with every poisoned row restored to its original."""
        x, y = self.data.x.clone(), self.data.y.clone()
        x[self.poison_idx], y[self.poison_idx] = self.original.x, self.original.y
        return Dataset(x, y, self.data.classes, self.data.name)

    def then(self, later: PoisonedDataset) -> PoisonedDataset:
        """Compose: ``later`` was crafted on ``self.data``; originals stay those of the clean set."""
        if len(later.data) != len(self.data):
            raise ConfigError("attacks that add or remove rows cannot be composed")
        clean = self.clean_data()
        owner = torch.full((len(self.data),), -1, dtype=torch.int64)
        owner[self.poison_idx] = self.poison_goal
        owner[later.poison_idx] = later.poison_goal + len(self.goals)
        idx = (owner >= 0).nonzero().flatten()
        return PoisonedDataset(later.data, idx, clean.subset(idx), self.goals + later.goals, owner[idx])
