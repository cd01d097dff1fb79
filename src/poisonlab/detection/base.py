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


def per_class_top(confidence: torch.Tensor, labels: torch.Tensor, per_class, generator=None) -> torch.Tensor:
    """Boolean mask of the ``per_class`` rows of each class with the highest confidence (ties: seeded random).

    ``per_class`` is one count for every class or a tensor of counts indexed by class; a class with fewer
    rows keeps all of them. Sorting is done once over all rows (by class, then confidence,
    then a random key), so there is no per-class Python loop.
    """
    n = len(labels)
    generator = generator or torch.Generator().manual_seed(0)
    tie = torch.rand(n, generator=generator, dtype=torch.float64)
    conf = confidence.double()
    # lexicographic order: label ascending, confidence descending, random key ascending
    order = torch.argsort(tie, stable=True)
    order = order[torch.argsort(-conf[order], stable=True)]
    order = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(n) - first
    mask = torch.zeros(n, dtype=torch.bool)
    limit = per_class[sorted_labels] if isinstance(per_class, torch.Tensor) else per_class
    mask[order[rank < limit]] = True
    return mask


class Detector(Method):
    """Base of every training-set detector: :meth:`scores` validates its arguments, then calls ``_scores``."""

    kind = "detector"
    needs_run: ClassVar[bool] = True  # scores read the trained run (the simulated oracle does not)
    # scores read what the victim's training recorded: the runner trains the victim with ``recorder(n_rows)``
    records_training: ClassVar[bool] = False

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

    def plan(
        self,
        data: Dataset,
        run: TrainRun | None,
        *,
        test: Dataset | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Announce, before any detector of a run scores, the work this one will ask of the run's shared
        passes (``TrainRun.shared``), so that one pass serves every detector whatever their order (the
        runner calls it with the arguments it will give :meth:`scores`). Default: nothing to announce."""

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        """Reject parameters ``data`` / ``test`` cannot satisfy with a one-line ConfigError, before scoring
        (e.g. more neighbours than rows); :meth:`scores` calls it first."""

    def reference_mask(
        self,
        data: Dataset,
        *,
        run: TrainRun | None,
        features: torch.Tensor | None,
        is_poisoned: torch.Tensor | None,
        test: Dataset | None,
        generator: torch.Generator,
        keep_fraction: float = 0.5,
    ) -> torch.Tensor:
        """The rows this detector trusts as a purifier's reference set (True = reference): by default the
        ``keep_fraction`` least suspicious rows of each class. ``purification.select_reference`` validates
        the arguments and calls it; a detector with its own rule (k-NN(K), the simulated oracle) overrides it.
        """
        if not 0 < keep_fraction <= 1:
            raise ConfigError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        scores = np.asarray(self.scores(data, run, test=test, generator=generator), dtype=np.float64)
        counts = torch.bincount(data.y, minlength=data.num_classes).double()
        keep = torch.ceil(keep_fraction * counts).long()
        return per_class_top(torch.from_numpy(-scores), data.y, keep, generator)

    def _scores(
        self, data: Dataset, run: TrainRun | None, *, test: Dataset | None, generator: torch.Generator | None
    ) -> np.ndarray:
        raise NotImplementedError
