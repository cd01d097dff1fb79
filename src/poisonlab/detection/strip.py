"""STRIP (Gao et al. 2019): an input-time trojan detector.

Each input x is superimposed with N clean images x_j drawn from a held-out clean pool (x + x_j clipped to
[0, 1] as in Gao's code, or their average), and its score is the mean Shannon entropy of the predictions

    H(x) = -1/N sum_j sum_c p_c(x (+) x_j) log p_c(x (+) x_j).

A trigger keeps dictating the target class whatever it is mixed with, so trojaned inputs have a *low*
entropy. The boundary is fitted on clean inputs for a chosen false-rejection rate (FRR): inputs with
H below it are rejected. FAR is the share of trojaned inputs accepted (H >= boundary).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from poisonlab.checks import (
    check_dataset,
    check_generator,
    check_images,
    check_model_accepts,
    check_model_fits,
    check_number,
)
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.registry import Method, register


class InputDetector(Method):
    """Base of the input-time detectors: fit on clean inputs, then score inputs (lower = more suspicious)."""

    kind = "input_detector"


def boundary_for_frr(entropies: np.ndarray, frr: float) -> float:
    """The value below which exactly floor(frr * n) of ``entropies`` lie (midway between neighbours)."""
    e = np.sort(np.asarray(entropies, dtype=np.float64).ravel())
    if len(e) == 0:
        raise ConfigError("strip: no clean inputs to fit the boundary on")
    if not np.isfinite(e).all():
        raise ConfigError("strip: the entropies to fit the boundary on contain NaN or inf")
    frr = check_number(frr, "strip: frr", minimum=0.0)
    if frr >= 1:
        raise ConfigError(f"strip: frr must be below 1, got {frr}")
    k = int(np.floor(frr * len(e) + 1e-9))
    if k == 0:
        return float(e[0])
    if k >= len(e):
        return float(np.nextafter(e[-1], np.inf))
    return float((e[k - 1] + e[k]) / 2)


@register("input_detector", "strip")
class Strip(InputDetector):
    """STRIP (Gao 2019): mean prediction entropy of the input superimposed with N clean images."""

    num_overlays: int = Field(100, ge=1, description="clean images superimposed on each input (Gao: 100)")
    frr: float = Field(0.01, ge=0, lt=1, description="false-rejection rate the boundary is fitted for")
    blend: Literal["add", "average"] = Field("add", description="add: clip(x + x_j) as Gao; average")
    fit_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="share of the defender's clean rows used to fit "
        "the boundary (the rest measure the FRR on unseen inputs)",
    )
    batch_size: int = Field(4096, ge=1, description="superimposed images per forward pass")

    def figures(self, ident: str, record: dict) -> dict[str, bytes]:
        """Entropy histograms of clean and triggered inputs with the fitted boundary."""
        from poisonlab.report import strip_histogram_png

        return {
            f"Input detector {ident}: entropy histograms": strip_histogram_png(
                ident, record["clean"], record["triggered"], float(record["boundary"]), self.frr
            )
        }

    @torch.no_grad()
    def entropy(
        self, model: nn.Module, x: torch.Tensor, pool: torch.Tensor, generator: torch.Generator
    ) -> np.ndarray:
        """Mean prediction entropy of each input superimposed with ``num_overlays`` images of ``pool``."""
        where = "strip.entropy"
        check_images(pool, where, "pool")
        if len(pool) == 0:
            raise ConfigError("strip: the clean overlay pool is empty")
        check_images(x, where, "x", tuple(pool.shape[1:]))
        check_model_accepts(model, pool, where, "model", "pool's images")
        check_generator(generator, where)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        n = self.num_overlays
        chunk = max(1, self.batch_size // n)
        out = []
        for xb in x.split(chunk):
            pick = torch.randint(0, len(pool), (len(xb), n), generator=generator)
            mixed = xb[:, None] + pool[pick] if self.blend == "add" else (xb[:, None] + pool[pick]) / 2
            logits = model(mixed.clamp(0, 1).flatten(0, 1).to(device)).double()
            logp = torch.log_softmax(logits, dim=1)
            ent = -(logp.exp() * logp).sum(1).view(len(xb), n).mean(1)
            out.append(ent.cpu())
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros(0)

    def fit(self, model: nn.Module, clean: torch.Tensor, pool: torch.Tensor, generator: torch.Generator):
        """(boundary, entropies of ``clean``): the boundary rejects a share ``frr`` of ``clean``."""
        entropies = self.entropy(model, clean, pool, generator)
        return boundary_for_frr(entropies, self.frr), entropies

    def evaluate(
        self,
        model: nn.Module,
        clean: Dataset,
        triggered: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Fit on part of the defender's ``clean`` rows (all of them are the overlay pool); measure FRR on
        the rest and FAR on ``triggered`` inputs. Returns (metrics, entropies by group)."""
        from sklearn.metrics import roc_auc_score

        where = "strip.evaluate"
        check_dataset(clean, where, "clean")
        check_model_fits(model, clean, where, "model", "clean")
        check_images(triggered, where, "triggered", clean.input_shape)
        check_generator(generator, where)
        order = torch.randperm(len(clean), generator=generator)
        n_fit = max(1, round(self.fit_fraction * len(clean)))
        fit_x, held_x = clean.x[order[:n_fit]], clean.x[order[n_fit:]]
        boundary, fit_e = self.fit(model, fit_x, clean.x, generator)
        held_e = self.entropy(model, held_x, clean.x, generator)
        trig_e = self.entropy(model, triggered, clean.x, generator)
        metrics = {
            "boundary": boundary,
            "frr_fit": float((fit_e < boundary).mean()),
            "frr": float((held_e < boundary).mean()) if len(held_e) else float("nan"),
            "far": float((trig_e >= boundary).mean()) if len(trig_e) else float("nan"),
        }
        clean_e = np.concatenate([fit_e, held_e])
        if len(trig_e):
            labels = np.r_[np.zeros(len(clean_e)), np.ones(len(trig_e))]
            metrics["auroc"] = float(roc_auc_score(labels, -np.r_[clean_e, trig_e]))
        return metrics, {"clean": clean_e, "triggered": trig_e}
