"""The model-defense interface: ``repair(model, clean, ...)`` returns a repaired copy; the input is kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from poisonlab.checks import check_dataset, check_images, check_int, check_model_fits, check_seed
from poisonlab.data import Dataset
from poisonlab.registry import Method


@dataclass
class Repair:
    """A repaired model with the per-step record of the repair (what the report plots)."""

    model: nn.Module
    steps: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Defense(Method):
    """Base of every model defense: :meth:`repair` validates its arguments, then calls the defense's
    ``_repair``."""

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
        where = f"{self.name or type(self).__name__}.repair"
        check_dataset(clean, where, "clean")
        check_model_fits(model, clean, where, "model", "clean")
        if triggered is not None:
            check_images(triggered, where, "triggered", clean.input_shape)
        if target is not None:
            check_int(target, f"{where}: target", minimum=0, maximum=clean.num_classes - 1)
        check_seed(seed, f"{where}: seed")
        return self._repair(model, clean, triggered=triggered, target=target, seed=seed)

    def _repair(
        self,
        model: nn.Module,
        clean: Dataset,
        *,
        triggered: torch.Tensor | None,
        target: int | None,
        seed: int,
    ) -> Repair:
        raise NotImplementedError
