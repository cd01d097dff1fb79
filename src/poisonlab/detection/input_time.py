"""Input-time detectors: fitted on a defender's clean inputs, they score inputs at test time (lower = more
suspicious). The protocol is written once here: a share ``fit_fraction`` of the clean rows fits the boundary
for a false-rejection rate ``frr``; FRR is measured on the other clean rows, FAR (triggered inputs accepted)
on triggered ones, with the AUROC of the scores. A detector gives only :meth:`InputDetector.input_scores`.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from poisonlab.checks import check_dataset, check_generator, check_images, check_model_fits, check_number
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.registry import Method


def boundary_for_frr(scores: np.ndarray, frr: float, where: str = "input detector") -> float:
    """The value below which exactly floor(frr * n) of ``scores`` lie (midway between neighbours)."""
    e = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if len(e) == 0:
        raise ConfigError(f"{where}: no clean inputs to fit the boundary on")
    if not np.isfinite(e).all():
        raise ConfigError(f"{where}: the scores to fit the boundary on contain NaN or inf")
    frr = check_number(frr, f"{where}: frr", minimum=0.0)
    if frr >= 1:
        raise ConfigError(f"{where}: frr must be below 1, got {frr}")
    k = int(np.floor(frr * len(e) + 1e-9))
    if k == 0:
        return float(e[0])
    if k >= len(e):
        return float(np.nextafter(e[-1], np.inf))
    return float((e[k - 1] + e[k]) / 2)


class InputDetector(Method):
    """Base of the input-time detectors: fit on clean inputs, then score inputs (lower = more suspicious)."""

    kind = "input_detector"

    frr: float = Field(0.01, ge=0, lt=1, description="false-rejection rate the boundary is fitted for")
    fit_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the defender's clean rows used to fit "
        "the boundary (the rest measure the FRR on unseen inputs)",
    )

    def input_scores(
        self, model: nn.Module, x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator
    ) -> np.ndarray:
        """One score per input of ``x`` (lower = more suspicious); ``pool``: the defender's clean images."""
        raise NotImplementedError

    def fit(self, model: nn.Module, clean: torch.Tensor, pool: torch.Tensor, generator: torch.Generator):
        """(boundary, scores of ``clean``): the boundary rejects a share ``frr`` of ``clean``."""
        scores = self.input_scores(model, clean, pool, generator)
        return boundary_for_frr(scores, self.frr, self.name or type(self).__name__), scores

    def screen(
        self, model: nn.Module, clean: Dataset, inputs: list[torch.Tensor], generator: torch.Generator
    ) -> list[np.ndarray]:
        """Accept (True) or reject each row of each tensor in ``inputs``: the boundary is fitted on the same
        share ``fit_fraction`` of the defender's ``clean`` rows as :meth:`evaluate` uses (all are the pool).
        The guard in front of a model: a rejected input gets no prediction."""
        fit_x, _ = self._split(clean, generator)
        boundary, _ = self.fit(model, fit_x, clean.x, generator)
        return [self.input_scores(model, x, clean.x, generator) >= boundary for x in inputs]

    def _split(self, clean: Dataset, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ``fit_fraction`` of the defender's clean inputs the boundary is fitted on, the rest)."""
        order = torch.randperm(len(clean), generator=generator)
        n_fit = max(1, round(self.fit_fraction * len(clean)))
        return clean.x[order[:n_fit]], clean.x[order[n_fit:]]

    def evaluate(
        self, model: nn.Module, clean: Dataset, triggered: torch.Tensor, generator: torch.Generator
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Fit on part of the defender's ``clean`` rows (all of them are the pool); measure FRR on the rest
        and FAR on ``triggered`` inputs. Returns (metrics, scores by group: 'clean', 'triggered')."""
        from sklearn.metrics import roc_auc_score

        where = f"{self.name or type(self).__name__}.evaluate"
        check_dataset(clean, where, "clean")
        check_model_fits(model, clean, where, "model", "clean")
        check_images(triggered, where, "triggered", clean.input_shape)
        check_generator(generator, where)
        fit_x, held_x = self._split(clean, generator)
        boundary, fit_s = self.fit(model, fit_x, clean.x, generator)
        held_s = self.input_scores(model, held_x, clean.x, generator)
        trig_s = self.input_scores(model, triggered, clean.x, generator)
        metrics = {
            "boundary": boundary,
            "frr_fit": float((fit_s < boundary).mean()),
            "frr": float((held_s < boundary).mean()) if len(held_s) else float("nan"),
            "far": float((trig_s >= boundary).mean()) if len(trig_s) else float("nan"),
        }
        clean_s = np.concatenate([fit_s, held_s])
        if len(trig_s):
            labels = np.r_[np.zeros(len(clean_s)), np.ones(len(trig_s))]
            metrics["auroc"] = float(roc_auc_score(labels, -np.r_[clean_s, trig_s]))
        return metrics, {"clean": clean_s, "triggered": trig_s}
