"""Reference selection and the Ref / remove-and-retrain baseline (Mendata, Huang 2023, sec. 3.1, 5.2, 5.3).

:func:`select_reference` turns a detector into a reference mask (True = trusted reference row) through the
detector's own ``reference_mask``: ``simulated`` (evaluation-only oracle) draws the rows its precision and
recall call for from the true mask; ``knn_k`` (k-NN(K), appendix B) keeps the K most confident rows per class;
``knn`` (Deep k-NN, Peri 2020) the rows whose label wins the plurality vote of their neighbours; any other
detector the ``keep_fraction`` least suspicious rows of each class.

**Ref** trains on the reference rows alone. With the reference set = the rows a detector passes, this is
remove-and-retrain, registered under that name too.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from poisonlab.checks import check_dataset, check_generator
from poisonlab.data import Dataset
from poisonlab.detection.base import Detector
from poisonlab.errors import ConfigError
from poisonlab.purification.base import Purification, Purifier, check_reference, feature_function
from poisonlab.registry import register
from poisonlab.training import TrainRun


@torch.no_grad()
def extract_features(extractor: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Features of ``x`` under a frozen extractor (batched, eval mode), float32 on the CPU."""
    was_training = extractor.training
    extractor.eval()
    fn = feature_function(extractor)
    out = torch.cat([fn(xb).float().cpu() for xb in x.split(batch_size)]) if len(x) else torch.zeros(0, 0)
    extractor.train(was_training)
    return out


def select_reference(
    detector: Detector,
    data: Dataset,
    *,
    run: TrainRun | None = None,
    features: torch.Tensor | None = None,
    is_poisoned: torch.Tensor | None = None,
    test: Dataset | None = None,
    generator: torch.Generator | None = None,
    keep_fraction: float = 0.5,
) -> torch.Tensor:
    """Boolean reference mask over the rows of ``data`` chosen by ``detector``.

    ``is_poisoned`` (the true mask) is read only by the simulated oracle. ``features`` (N, d), when given,
    replace ``run``'s penultimate features for the k-NN detectors (e.g. a separately trained extractor's).
    """
    where = "select_reference"
    if not isinstance(detector, Detector):
        raise ConfigError(f"{where}: detector must be a registered detector, got {type(detector).__name__}")
    check_dataset(data, where, "data", min_classes=1)
    if generator is not None:
        check_generator(generator, where)
    if features is not None and (
        not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) != len(data)
    ):
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ConfigError(f"{where}: features must be a (rows, dims) tensor with {len(data)} rows, got {got}")
    generator = generator or torch.Generator().manual_seed(0)
    return detector.reference_mask(
        data, run=run, features=features, is_poisoned=is_poisoned, test=test, generator=generator,
        keep_fraction=keep_fraction,
    )  # fmt: skip


def reference_quality(reference_mask: torch.Tensor, is_poisoned: torch.Tensor) -> dict[str, float]:
    """Size, precision (clean share) and recall (share of the clean rows) of a reference set."""
    ref = torch.as_tensor(reference_mask, dtype=torch.bool)
    poison = torch.as_tensor(is_poisoned, dtype=torch.bool)
    clean_in = int((ref & ~poison).sum())
    size = int(ref.sum())
    return {
        "size": float(size),
        "poisons": float(int((ref & poison).sum())),
        "precision": clean_in / size if size else float("nan"),
        "recall": clean_in / max(1, int((~poison).sum())),
    }


@register("purifier", "ref")
class Ref(Purifier):
    """Ref (Huang 2023, sec. 5.3): drop the untrusted rows and train on the reference set alone."""

    needs_generator: ClassVar[bool] = False

    def _purify(self, data, reference_mask, *, generator=None, extractor=None, model=None) -> Purification:
        reference, untrusted = check_reference(data, reference_mask, self.name)
        return Purification(data.subset(reference), reference, {"removed": len(untrusted)})


@register("purifier", "remove")
class RemoveAndRetrain(Ref):
    """Remove-and-retrain: drop the rows the detector flags (the non-reference rows) and train on the rest."""
