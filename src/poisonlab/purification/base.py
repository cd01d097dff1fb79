"""The purifier interface (Mendata, Huang 2023): keep a reference set as it is, change or drop the
untrusted rest.

A purifier is a registered method (kind ``purifier``) with

    purify(data, reference_mask, *, generator, extractor=None, model=None) -> Purification

``reference_mask`` marks the rows a detector (or the simulated oracle) selected as the reference set; they
are never modified. ``extractor`` is the curator's feature extractor (Mendata), ``model`` a model trained on
the manipulated data (Friendly noise); each purifier documents what it does without them.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from poisonlab.checks import check_dataset, check_extractor, check_generator, check_model_fits
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError, DataError
from poisonlab.models import MODELS, build_model
from poisonlab.registry import Method
from poisonlab.training import TrainConfig, train


@dataclass(frozen=True, eq=False)
class Purification:
    """The purified training set, which input rows it holds (``kept``, in order) and diagnostics."""

    data: Dataset
    kept: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Purifier(Method):
    """Base of every purifier: :meth:`purify` validates its arguments, then calls ``_purify``."""

    kind = "purifier"
    needs_generator: ClassVar[bool] = True  # a purifier that draws nothing at random sets it False

    def purify(
        self,
        data: Dataset,
        reference_mask: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        extractor: nn.Module | None = None,
        model: nn.Module | None = None,
    ) -> Purification:
        """Purify ``data`` keeping its ``reference_mask`` rows; bad arguments fail here, before any work."""
        where = f"{self.name or type(self).__name__}.purify"
        check_dataset(data, where, "data", min_classes=1)  # a model it trains checks the classes
        check_reference(data, reference_mask, where)
        if self.needs_generator or generator is not None:
            check_generator(generator, where)
        if model is not None:
            check_model_fits(model, data, where, "model", "data")
        if extractor is not None:
            check_extractor(extractor, data, where)
        return self._purify(data, reference_mask, generator=generator, extractor=extractor, model=model)

    def _purify(
        self,
        data: Dataset,
        reference_mask: torch.Tensor,
        *,
        generator: torch.Generator | None,
        extractor: nn.Module | None,
        model: nn.Module | None,
    ) -> Purification:
        raise NotImplementedError

    def accepts_victim_extractor(self) -> bool:
        """Whether a runner may pass the model trained on the released rows as ``extractor`` (a purifier
        configured to build or load its own says no)."""
        return True

    def figures(self, ident: str, record: dict) -> dict[str, bytes]:
        """A few untrusted rows before and after purification (and the critic's values, when recorded)."""
        from poisonlab.report import purification_png

        before = record.get("before")
        if before is None or (len(before) == 0 and not record.get("critic_values")):
            return {}
        return {
            f"Purifier {ident}: untrusted rows before and after": purification_png(
                ident,
                before,
                record.get("after"),
                list(record.get("captions", [])),
                record.get("critic_values"),
            )
        }


def check_reference(data: Dataset, reference_mask, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference rows, untrusted rows) of ``data``; one-line ConfigError for a bad mask."""
    try:
        mask = torch.as_tensor(reference_mask)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"{who}: reference_mask must be a 1-D bool tensor with one flag per row ({len(data)}), "
            f"got {type(reference_mask).__name__}"
        ) from None
    if mask.dtype != torch.bool or mask.ndim != 1 or len(mask) != len(data):
        raise ConfigError(
            f"{who}: reference_mask must be a 1-D bool tensor with one flag per row ({len(data)}), "
            f"got {tuple(mask.shape)} {mask.dtype}"
        )
    if not bool(mask.any()):
        raise ConfigError(f"{who}: the reference set is empty")
    return mask.nonzero().flatten(), (~mask).nonzero().flatten()


def seed_from(generator: torch.Generator) -> int:
    """A 31-bit seed drawn from ``generator`` (for model initialisation and training order)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def replace_rows(data: Dataset, rows: torch.Tensor, x: torch.Tensor) -> Dataset:
    """``data`` with the images of ``rows`` replaced by ``x`` (clipped to [0, 1]); labels unchanged."""
    return data.replace_rows(rows, x.clamp(0.0, 1.0))


def feature_function(extractor: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> features``: the extractor's ``features`` method if it has one (a Classifier), else itself."""
    fn = extractor.features if hasattr(extractor, "features") else extractor
    return lambda x: fn(x).flatten(1)


def freeze(module: nn.Module) -> nn.Module:
    """A copy in eval mode without parameter gradients (the caller's module is left as it was)."""
    module = copy.deepcopy(module)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def torch_load_error(err: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words (torch's own message is long)."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if isinstance(err, pickle.UnpicklingError) and refused:
        return f"it holds a pickled object ({refused.group(1)}) that safe loading (weights_only) refuses"
    if isinstance(err, pickle.UnpicklingError):
        return "not written by torch.save"
    return f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"


def read_weights(path: str | Path, who: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (bare or ``{"state_dict": ...}``), read with ``weights_only`` on the CPU;
    a one-line DataError for a missing or unreadable file or one that holds no state dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {who}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a corrupt file
        raise DataError(f"{path}: {who}: not a torch weights file ({torch_load_error(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path}: {who}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_weights(module: nn.Module, path: str | Path, who: str) -> nn.Module:
    """Load a state dict saved with ``torch.save(model.state_dict(), path)`` (weights_only, on the CPU).

    Accepts the bare state dict or ``{"state_dict": ...}``; raises a one-line DataError for a missing or
    unreadable file and for weights that do not fit the architecture.
    """
    state = read_weights(path, who)
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise DataError(f"{path}: {who}: weights do not fit the architecture ({first})") from None
    return module


def build_extractor(
    arch: str,
    data: Dataset,
    *,
    weights: str | None,
    train_on: Dataset | None,
    epochs: int,
    lr: float,
    seed: int,
    who: str,
) -> nn.Module:
    """The default feature extractor: ``arch`` loaded from ``weights``, or trained on ``train_on``."""
    if arch not in MODELS:
        raise ConfigError(f"{who}: unknown extractor model {arch!r}; known: {', '.join(MODELS)}")
    model = build_model(arch, data.input_shape, data.num_classes, seed=seed)
    if weights is not None:
        return freeze(load_weights(model, weights, who))
    if train_on is None or len(train_on) == 0:
        raise ConfigError(f"{who}: no data to train the feature extractor on")
    milestones = (max(1, (3 * epochs) // 4),) if epochs > 1 else ()
    config = TrainConfig(epochs=epochs, lr=lr, milestones=milestones)
    return freeze(train(model, train_on, config, seed=seed).model)
