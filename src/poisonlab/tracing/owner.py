"""The data owner's files (radioactive data, Sablayrolles 2020): the carriers file ``poisonlab mark`` writes
and ``poisonlab trace`` reads, and the suspect model that ``trace`` tests.

The carriers file is a ``torch.save`` of plain values and tensors only, so it loads with
``torch.load(path, weights_only=True)``: the carriers (K x d), the marking network's name, state dict, input
shape and class names, and the marking settings (eps in [0, 1] pixel units, fraction, seed, steps, epochs).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from poisonlab.checks import all_finite, one_line
from poisonlab.errors import ConfigError, DataError
from poisonlab.models import MODELS, build_model
from poisonlab.purification.base import read_weights, torch_load_error
from poisonlab.results import write_atomic

CARRIERS_FORMAT = "poisonlab-radioactive-carriers/1"
REQUIRED = (
    "format", "carriers", "model", "marker_state", "input_shape", "classes", "eps", "fraction", "seed",
)  # fmt: skip


@dataclass(frozen=True)
class Carriers:
    """A checked carriers file: the marking network rebuilt (eval mode), its carriers and settings."""

    carriers: torch.Tensor
    marker: nn.Module
    model: str
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    settings: dict


def carriers_record(
    carriers: torch.Tensor, marker: nn.Module, model: str, input_shape, classes, **settings
) -> dict:
    """What ``poisonlab mark`` saves: plain values and tensors only (``settings``: eps, fraction, seed...)."""
    state = {k: v.detach().cpu().clone() for k, v in marker.state_dict().items()}
    return {
        "format": CARRIERS_FORMAT,
        "carriers": carriers.detach().cpu().float().clone(),
        "model": str(model),
        "marker_state": state,
        "input_shape": [int(v) for v in input_shape],
        "classes": [str(c) for c in classes],
        **settings,
    }


def save_carriers(path, record: dict) -> Path:
    """``record`` written with ``torch.save`` through a temporary file (never half a file)."""
    buf = io.BytesIO()
    torch.save(record, buf)
    write_atomic(path, buf.getvalue())
    return Path(path)


def load_carriers(path, who: str = "--carriers") -> Carriers:
    """Read a carriers file with ``weights_only=True`` and rebuild its marking network; a one-line DataError
    for anything else (a file of pickled objects, other keys, carriers that do not fit the network)."""
    path = Path(path)
    where = f"{who} {path}"
    if not path.is_file():
        raise DataError(f"{where}: carriers file not found" if not path.exists() else f"{where}: not a file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a corrupt or foreign file
        raise DataError(f"{where}: not a carriers file ({torch_load_error(err)})") from None
    if not isinstance(record, dict) or record.get("format") != CARRIERS_FORMAT:
        got = f"keys {sorted(map(str, record))[:6]}" if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: not a carriers file written by `poisonlab mark` (got {got})")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise DataError(f"{where}: not a complete carriers file (missing {', '.join(map(repr, missing))})")
    u, classes, shape, model = record["carriers"], record["classes"], record["input_shape"], record["model"]
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{where}: 'classes' must be a list of class names")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise DataError(f"{where}: 'classes' must name at least 2 distinct classes, got {list(classes)[:10]}")
    if not isinstance(u, torch.Tensor) or u.ndim != 2 or not u.is_floating_point() or not all_finite(u):
        raise DataError(f"{where}: 'carriers' must be a finite 2-D float tensor (classes x features)")
    if u.shape[0] != len(classes) or u.shape[1] < 2:
        raise DataError(f"{where}: {u.shape[0]} carriers of {u.shape[1]} dimensions, {len(classes)} classes")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise DataError(f"{where}: 'input_shape' must be 3 positive integers (C, H, W), got {shape!r}")
    if not isinstance(model, str) or model not in MODELS:
        raise DataError(f"{where}: unknown marking network {model!r} (known: {', '.join(MODELS)})")
    state = record["marker_state"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{where}: 'marker_state' must be a state dict of tensors")
    try:
        marker = build_model(model, tuple(shape), len(classes), seed=0)
        marker.load_state_dict(state)
    except (RuntimeError, ConfigError) as err:
        raise DataError(
            f"{where}: its marking network's weights do not fit a {model} for {tuple(shape)} images and "
            f"{len(classes)} classes ({one_line(err, 120)})"
        ) from None
    marker.eval()
    with torch.no_grad():
        dim = marker.features(torch.zeros(1, *shape)).flatten(1).shape[1]
    if dim != u.shape[1]:
        raise DataError(f"{where}: carriers of {u.shape[1]} dimensions, a marking network of {dim} features")
    settings = {k: v for k, v in record.items() if k not in ("carriers", "marker_state", "format")}
    return Carriers(u.float(), marker, model, tuple(shape), tuple(classes), settings)


def load_suspect(
    name: str, path, input_shape: tuple[int, ...], num_classes: int, who: str = "--weights",
    against: str = "the carriers",
):  # fmt: skip
    """The suspect model: ``build_model(name, input_shape, num_classes)`` with the weights in ``path``
    (weights_only). One-line errors name what does not fit: its class count, its input shape, its kind."""
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r}; known models: {', '.join(MODELS)}")
    state = read_weights(path, who)
    where = f"{who} {path}"
    head = state.get("head.weight")
    if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != num_classes:
        raise DataError(f"{where}: the model has {head.shape[0]} classes but {against} {num_classes}")
    model = build_model(name, input_shape, num_classes, seed=0)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise DataError(f"{where}: weights of another model than {name!r} ({what})")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise DataError(
                f"{where}: a {name} for inputs of another shape than {against}: {tuple(input_shape)} "
                f"({key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)})"
            )
        if state[key].is_floating_point() and not all_finite(state[key]):
            raise DataError(f"{where}: non-finite values in {key!r}")
    model.load_state_dict(state)
    return model.eval()


def eps_levels(eps: float) -> int:
    """Whole pixel levels (out of 255) within an L_inf bound ``eps`` given in [0, 1] units."""
    return math.floor(eps * 255 + 1e-6)
