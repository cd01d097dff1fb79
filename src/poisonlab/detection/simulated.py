"""The simulated detector of Mendata (Huang 2023, sec. 5.2): a reference set of given precision and recall.

An *evaluation-only oracle*: it reads the true poison mask, which no real curator has. Given precision P and
recall R (recall over the clean rows: the share of the unmanipulated rows that land in the reference set),
it draws, uniformly and without replacement,

    n_clean  = round(R * N_clean)                  clean rows
    n_poison = round(n_clean * (1 - P) / P)        poisoned rows

and returns them as the reference set, so its precision n_clean / (n_clean + n_poison) is P and its recall
n_clean / N_clean is R up to rounding. (Huang 2023 writes the sizes as R * 0.99 * |D| and
R * 0.99 * |D| * (1 - P) / P for its 1% poison budget; ``N_clean`` is the general form.)

Use :meth:`SimulatedDetector.select` (or :func:`poisonlab.purification.select_reference`) with the mask;
``scores`` works only when the mask is passed as ``truth=`` and gives 0 to reference rows, 1 to the rest.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.errors import ConfigError
from poisonlab.registry import register
from poisonlab.training import TrainRun


def simulated_counts(num_clean: int, num_poison: int, precision: float, recall: float) -> tuple[int, int]:
    """(clean rows, poisoned rows) of a reference set with the given precision and recall."""
    n_clean = round(recall * num_clean)
    if n_clean < 1:
        raise ConfigError(f"simulated: recall {recall} of {num_clean} clean rows selects no row")
    n_poison = round(n_clean * (1.0 - precision) / precision)
    if n_poison > num_poison:
        raise ConfigError(
            f"simulated: precision {precision} at recall {recall} needs {n_poison} poisoned rows, "
            f"but only {num_poison} are poisoned"
        )
    return n_clean, n_poison


@register("detector", "simulated")
class SimulatedDetector(Detector):
    """Simulated detector (Huang 2023, sec. 5.2; evaluation-only oracle): reference set of given P and R."""

    precision: float = Field(1.0, gt=0, le=1, description="share of the reference set that is clean")
    recall: float = Field(0.5, gt=0, le=1, description="share of the clean rows put in the reference set")

    def oracle(self) -> str:
        return "the simulated detector draws its reference set from the true poison mask"

    def select(self, is_poisoned: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean reference mask over the rows, drawn with ``generator`` from the true poison mask."""
        is_poisoned = torch.as_tensor(is_poisoned, dtype=torch.bool)
        if is_poisoned.ndim != 1:
            raise ConfigError("simulated: the poison mask must be 1-D (one flag per row)")
        generator = generator or torch.Generator().manual_seed(0)
        clean_rows = (~is_poisoned).nonzero().flatten()
        poison_rows = is_poisoned.nonzero().flatten()
        n_clean, n_poison = simulated_counts(len(clean_rows), len(poison_rows), self.precision, self.recall)
        pick_clean = clean_rows[torch.randperm(len(clean_rows), generator=generator)[:n_clean]]
        pick_poison = poison_rows[torch.randperm(len(poison_rows), generator=generator)[:n_poison]]
        mask = torch.zeros(len(is_poisoned), dtype=torch.bool)
        mask[pick_clean] = True
        mask[pick_poison] = True
        return mask

    needs_run: ClassVar[bool] = False

    def reference_mask(self, data, *, run, features, is_poisoned, test, generator, keep_fraction=0.5):
        """The rows its precision and recall call for, drawn from the true poison mask (an oracle)."""
        if is_poisoned is None:
            raise ConfigError("simulated: an evaluation-only oracle; pass is_poisoned (the true poison mask)")
        if len(is_poisoned) != len(data):
            raise ConfigError(f"simulated: the poison mask has {len(is_poisoned)} rows, the data {len(data)}")
        return self.select(is_poisoned, generator)

    def _scores(
        self,
        data: Dataset,
        run: TrainRun | None = None,
        *,
        test=None,
        generator=None,
        truth: torch.Tensor | None = None,
    ) -> np.ndarray:
        """0 for the rows of the simulated reference set, 1 for the rest (needs ``truth``, the mask)."""
        if truth is None:
            raise ConfigError(
                "simulated: an evaluation-only oracle that needs the true poison mask; use it as a "
                "purifier's reference (purifiers[].reference) or call select(is_poisoned)"
            )
        if len(truth) != len(data):
            raise ConfigError(f"simulated: the poison mask has {len(truth)} rows, the data {len(data)}")
        return (~self.select(truth, generator)).double().numpy()
