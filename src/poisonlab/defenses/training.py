"""The training-time defense interface: a defense that changes how the victim is trained (drop, reweight,
split or add noise while training), as opposed to a repair of a trained model (:class:`Defense`).

    train(data, fit, *, victim, generator, truth=None) -> Defended

``fit(data, hook=None, desc="", epochs=None)`` trains a model exactly as the experiment trains its victim
(from scratch, or the last layer over a frozen extractor in the transfer setting), with an optional
:class:`~poisonlab.training.TrainHook` that chooses each epoch's rows, transforms the batches and weighs
their loss, and optionally only the schedule's first ``epochs``. ``victim`` is the undefended victim (a
defense that filters before training may read its features, as Deep k-NN does); ``truth``, the poison mask,
reaches only a defense that declares itself an oracle (ASD's seeds).
A defense reports which rows it left out of the final training (``removed``), so the runner can score its
removals against the poison mask (evaluation only, never shown to the defense).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from poisonlab.checks import check_dataset, check_generator
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.registry import Method
from poisonlab.training import TrainRun


@dataclass
class Defended:
    """The defended model's run, the rows the defense left out of its final epoch (bool, one per input
    row), a per-step record for the report (e.g. rows dropped per round) and, for a reweighting defense,
    each row's final weight (mean 1)."""

    run: TrainRun
    removed: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    weights: torch.Tensor | None = None


class TrainingDefense(Method):
    """Base of every training-time defense: :meth:`train` validates its arguments, then calls ``_train``."""

    kind = "training_defense"

    def check_data(self, data: Dataset, test: Dataset | None = None) -> None:
        """Refuse data this defense cannot run on (checked before any training); nothing by default."""

    def train(
        self,
        data: Dataset,
        fit: Callable[..., TrainRun],
        *,
        victim: TrainRun | None = None,
        generator: torch.Generator | None = None,
        truth: torch.Tensor | None = None,
    ) -> Defended:
        """Train a defended model on ``data`` through ``fit``; ``victim``: the undefended run, if any;
        ``truth``: the poison mask, read only by a defense that is an evaluation-only oracle (``oracle``)."""
        where = f"{self.name or type(self).__name__}.train"
        check_dataset(data, where, "data")
        if not callable(fit):
            raise ConfigError(
                f"{where}: fit must be callable (data, hook=None, desc='', epochs=None) -> TrainRun"
            )
        if victim is not None and not isinstance(victim, TrainRun):
            raise ConfigError(f"{where}: victim must be a TrainRun, got {type(victim).__name__}")
        if generator is not None:
            check_generator(generator, where)
        self.check_data(data)
        extra = {}
        if self.oracle():
            if truth is None or torch.as_tensor(truth).shape != (len(data),):
                raise ConfigError(
                    f"{where}: an oracle ({self.oracle()}): pass truth=, the poison mask of the rows"
                )
            extra["truth"] = torch.as_tensor(truth, dtype=torch.bool)
        gen = generator or torch.Generator().manual_seed(0)
        out = self._train(data, fit, victim=victim, generator=gen, **extra)
        if out.removed.dtype != torch.bool or out.removed.shape != (len(data),):
            raise AssertionError(f"{where}: removed must be a bool mask over the {len(data)} rows")
        return out

    def figures(self, ident: str, record: dict[str, Any]) -> dict[str, bytes]:
        """The defended victim's training history (loss, accuracy, rows trained on per epoch)."""
        from poisonlab.report.figures import history_png

        png = history_png(record.get("history") or [])
        return {f"Training-time defense {ident}: the defended victim's training": png} if png else {}

    def _train(
        self,
        data: Dataset,
        fit: Callable[..., TrainRun],
        *,
        victim: TrainRun | None,
        generator: torch.Generator,
    ) -> Defended:
        raise NotImplementedError
