"""The training-set detector interface: one suspicion score per row, higher = more suspicious."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from poisonlab.checks import check_dataset, check_generator, check_model_fits, check_same_space
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.registry import Method
from poisonlab.training import TrainRun


def check_run(run, data: Dataset, where: str) -> TrainRun:
    """A :class:`~poisonlab.training.TrainRun` whose model fits ``data`` (input shape, outputs)."""
    if not isinstance(run, TrainRun):
        raise ConfigError(
            f"{where}: run must be a TrainRun (what training.train returns), got {type(run).__name__}"
        )
    check_model_fits(run.model, data, where, "run.model", "data")
    return run


class Detector(Method):
    """Base of every training-set detector: :meth:`scores` validates its arguments, then calls ``_scores``."""

    kind = "detector"
    needs_run: ClassVar[bool] = True  # scores read the trained run (the simulated oracle does not)

    def scores(
        self,
        data: Dataset,
        run: TrainRun | None = None,
        *,
        test: Dataset | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> np.ndarray:
        """One float per row of ``data`` (the training set as released); ``run`` trained on it."""
        where = f"{self.name or type(self).__name__}.scores"
        check_dataset(data, where, "data", min_classes=1)  # the run's model is checked against the classes
        if self.needs_run:
            check_run(run, data, where)
        if test is not None:
            check_dataset(test, where, "test", min_rows=0)
            check_same_space(data, test, where, "data", "test")
        if generator is not None:
            check_generator(generator, where)
        self.check_data(data, test)
        return self._scores(data, run, test=test, generator=generator, **options)

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        """Reject parameters ``data`` / ``test`` cannot satisfy with a one-line ConfigError, before scoring
        (e.g. more neighbours than rows); :meth:`scores` calls it first."""

    def _scores(
        self, data: Dataset, run: TrainRun | None, *, test: Dataset | None, generator: torch.Generator | None
    ) -> np.ndarray:
        raise NotImplementedError
