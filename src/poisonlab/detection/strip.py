"""STRIP (Gao et al. 2019): an input-time trojan detector.

Each input x is superimposed with N clean images x_j drawn from a held-out clean pool (x + x_j clipped to
[0, 1] as in Gao's code, or their average), and its score is the mean Shannon entropy of the predictions

    H(x) = -1/N sum_j sum_c p_c(x (+) x_j) log p_c(x (+) x_j).

A trigger keeps dictating the target class whatever it is mixed with, so trojaned inputs have a *low*
entropy. The boundary is fitted on clean inputs for a chosen false-rejection rate (FRR): inputs with
H below it are rejected. FAR is the share of trojaned inputs accepted (H >= boundary); the protocol is
:class:`~poisonlab.detection.input_time.InputDetector`'s.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from poisonlab.checks import check_generator, check_images, check_model_accepts
from poisonlab.detection.input_time import InputDetector, boundary_for_frr
from poisonlab.errors import ConfigError
from poisonlab.registry import register

__all__ = ["InputDetector", "Strip", "boundary_for_frr"]


@register("input_detector", "strip")
class Strip(InputDetector):
    """STRIP (Gao 2019): mean prediction entropy of the input superimposed with N clean images."""

    num_overlays: int = Field(100, ge=1, description="clean images superimposed on each input (Gao: 100)")
    blend: Literal["add", "average"] = Field("add", description="add: clip(x + x_j) as Gao; average")
    batch_size: int = Field(
        256,
        ge=1,
        description="superimposed images per forward pass (on this 2-core CPU the cnn's forward ran ~2x "
        "faster at 64-256 than at 4096, whose activations leave the cache; raise it on a GPU)",
    )

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

    def input_scores(self, model, x, pool, generator) -> np.ndarray:
        """STRIP's score: the mean prediction entropy (low for a trojaned input)."""
        return self.entropy(model, x, pool, generator)
