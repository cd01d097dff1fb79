"""The model-defense interface: ``repair(model, clean, ...)`` returns a repaired copy; the input is kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from poisonlab.data import Dataset
from poisonlab.registry import Method


@dataclass
class Repair:
    """A repaired model with the per-step record of the repair (what the report plots)."""

    model: nn.Module
    steps: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Defense(Method):
    """Base of every model defense."""

    kind = "defense"

    def repair(
        self,
        model: nn.Module,
        clean: Dataset,
        *,
        triggered: torch.Tensor | None = None,
        target: int | None = None,
        seed: int = 0,
    ) -> Repair:
        """Repair a copy of ``model`` with the defender's ``clean`` rows; ``triggered`` inputs and the
        attack's ``target``, when given, let the repair track the attack success as it goes."""
        raise NotImplementedError
