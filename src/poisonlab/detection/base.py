"""The training-set detector interface: one suspicion score per row, higher = more suspicious."""

from __future__ import annotations

import numpy as np
import torch

from poisonlab.data import Dataset
from poisonlab.registry import Method
from poisonlab.training import TrainRun


class Detector(Method):
    """Base of every training-set detector."""

    kind = "detector"

    def scores(
        self,
        data: Dataset,
        run: TrainRun,
        *,
        test: Dataset | None = None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """One float per row of ``data`` (the training set as released); ``run`` trained on it."""
        raise NotImplementedError
