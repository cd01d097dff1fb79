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
    target_index: int | None = None  # row of the test set the target came from (excluded from accuracy)


@dataclass(frozen=True, eq=False)
class PoisonedDataset:
    """The released training set, the indices of the poisoned rows, their original rows and the goals.

    ``poison_goal[i]`` says which of ``goals`` poisoned row ``poison_idx[i]`` (several attacks compose).
    Attacks that add rows (gradient canceling) append them after the ``num_clean`` rows of the clean set;
    the original of an added row is the clean row it was initialised from.
    """

    data: Dataset
    poison_idx: torch.Tensor
    original: Dataset
    goals: tuple[AttackGoal, ...]
    poison_goal: torch.Tensor
    num_clean: int | None = None  # set when rows were appended: rows >= num_clean are all poisons

    def __post_init__(self):
        idx = self.poison_idx
        n = len(self.data)
        if idx.dtype != torch.int64 or idx.ndim != 1:
            raise ConfigError("poison_idx must be a 1-D int64 tensor")
        if len(idx) and (idx.min() < 0 or idx.max() >= n or len(idx.unique()) != len(idx)):
            raise ConfigError(f"poison_idx must hold distinct row indices in [0, {n})")
        if len(self.original) != len(idx) or len(self.poison_goal) != len(idx):
            raise ConfigError("original rows and poison_goal must match poison_idx in length")
        if self.num_clean is not None:
            appended = torch.arange(self.num_clean, n)
            if not torch.isin(appended, idx).all():
                raise ConfigError("every appended row must be listed in poison_idx")

    @classmethod
    def from_rows(
        cls, clean: Dataset, released: Dataset, idx: torch.Tensor, goal: AttackGoal
    ) -> PoisonedDataset:
        """Record of one attack that changed rows ``idx`` of ``clean`` into ``released``."""
        idx = torch.as_tensor(idx, dtype=torch.int64).sort().values
        zeros = torch.zeros(len(idx), dtype=torch.int64)
        return cls(released, idx, clean.subset(idx), (goal,), zeros)

    @classmethod
    def from_added(
        cls, clean: Dataset, poisons: Dataset, goal: AttackGoal, sources: torch.Tensor | None = None
    ) -> PoisonedDataset:
        """Record of an attack that appended ``poisons`` to ``clean`` (``sources``: their initial rows)."""
        released = Dataset(
            torch.cat([clean.x, poisons.x]), torch.cat([clean.y, poisons.y]), clean.classes, clean.name
        )
        idx = torch.arange(len(clean), len(released))
        original = clean.subset(sources) if sources is not None else poisons
        zeros = torch.zeros(len(idx), dtype=torch.int64)
        return cls(released, idx, original, (goal,), zeros, num_clean=len(clean))

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

    def originals(self, rows: torch.Tensor) -> Dataset:
        """The clean originals of the poisoned released ``rows`` (each must be in ``poison_idx``)."""
        position = {int(i): j for j, i in enumerate(self.poison_idx.tolist())}
        return self.original.subset([position[int(r)] for r in rows])

    def perturbation(self, goal_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per poisoned row (of ``goals[goal_index]``, or all), the L_inf and L2 norms of the released image
        minus its clean original (for an appended row, the clean row it was initialised from)."""
        rows = slice(None) if goal_index is None else self.poison_goal == goal_index
        diff = (self.data.x[self.poison_idx[rows]] - self.original.x[rows]).flatten(1).double()
        if len(diff) == 0:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        return diff.abs().amax(1), diff.norm(dim=1)

    def clean_data(self) -> Dataset:
        """The clean training set: poisoned rows restored to their originals, appended rows dropped."""
        x, y = self.data.x.clone(), self.data.y.clone()
        x[self.poison_idx], y[self.poison_idx] = self.original.x, self.original.y
        keep = slice(None) if self.num_clean is None else slice(0, self.num_clean)
        return Dataset(x[keep], y[keep], self.data.classes, self.data.name)

    def then(self, later: PoisonedDataset) -> PoisonedDataset:
        """Compose: ``later`` was crafted on ``self.data``; originals stay those of the clean set."""
        n_before = len(self.data)
        if (later.num_clean or len(later.data)) != n_before:
            raise ConfigError("a composed attack must be crafted on the data the previous one released")
        owner = torch.full((len(later.data),), -1, dtype=torch.int64)
        owner[self.poison_idx] = self.poison_goal
        owner[later.poison_idx] = later.poison_goal + len(self.goals)
        ox, oy = later.data.x.clone(), later.data.y.clone()
        ox[later.poison_idx], oy[later.poison_idx] = later.original.x, later.original.y
        ox[self.poison_idx], oy[self.poison_idx] = self.original.x, self.original.y
        idx = (owner >= 0).nonzero().flatten()
        original = Dataset(ox[idx], oy[idx], self.data.classes, self.data.name)
        num_clean = self.num_clean if self.num_clean is not None else later.num_clean
        return PoisonedDataset(later.data, idx, original, self.goals + later.goals, owner[idx], num_clean)
