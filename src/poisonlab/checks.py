"""One validation layer: data, models, checkpoints, generators and plain arguments checked before any work.

Every public entry point (training, prediction, attacks, detectors, TracInCP, purifiers, defenses, STRIP,
``build_model``) calls these first, so a bad argument is answered by one line naming the function and the
argument (``where`` and ``arg``) instead of an error deep inside torch or a silently wrong number.
:class:`~poisonlab.errors.ConfigError`: an argument of the wrong kind or value, or a model that does not fit
the data; :class:`~poisonlab.errors.DataError`: the contents of data or checkpoints (no rows, one class,
labels out of range, non-finite values, weights of another architecture).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from poisonlab.data import Dataset
from poisonlab.errors import ConfigError, DataError

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed accepts 0 .. 2^64 - 1


def one_line(text: object, limit: int = 200) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def all_finite(t: torch.Tensor, chunk: int = 2**22) -> bool:
    """No NaN or inf in ``t``, scanned in chunks (no full-size temporary for a large data set)."""
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(chunk))


def _kind(value: object) -> str:
    return type(value).__name__


# ----------------------------------------------------------------------------------------------------
# plain arguments


def check_int(value, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (Python or NumPy integer, not a bool) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{where} must be an integer, got {value!r} ({_kind(value)})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where} must be at most {maximum}, got {value}")
    return value


def check_number(value, where: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (not a bool), at least ``minimum`` or strictly positive."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{where} must be a number, got {value!r} ({_kind(value)})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{where} must be positive, got {value}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {value}")
    return value


def check_seed(seed, where: str) -> int:
    """A seed torch accepts: an integer in [0, 2^64 - 1]."""
    return check_int(seed, where, minimum=0, maximum=SEED_MAX)


def check_generator(generator, where: str) -> torch.Generator:
    """A ``torch.Generator`` (never None: the global random state would make a run unrepeatable)."""
    if not isinstance(generator, torch.Generator):
        raise ConfigError(
            f"{where}: generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), "
            f"got {_kind(generator)}"
        )
    return generator


# ----------------------------------------------------------------------------------------------------
# data


def check_dataset(data, where: str, arg: str = "data", *, min_rows: int = 1, min_classes: int = 2) -> Dataset:
    """A :class:`~poisonlab.data.Dataset` with at least ``min_rows`` rows and ``min_classes`` classes whose
    labels are in range and whose images are finite."""
    if not isinstance(data, Dataset):
        hint = " (wrap tensors as Dataset(x, y, classes))" if isinstance(data, torch.Tensor) else ""
        raise ConfigError(f"{where}: {arg} must be a poisonlab Dataset, got {_kind(data)}{hint}")
    x, y = data.x, data.y
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise DataError(f"{where}: {arg}.x must be a 4-D float tensor (N, C, H, W)")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{where}: {arg}.y must be a 1-D integer tensor")
    if len(x) != len(y):
        raise DataError(f"{where}: {arg} has {len(x)} images but {len(y)} labels")
    if len(y) < min_rows:
        rows = f"{len(y)} row" + ("" if len(y) == 1 else "s")
        raise DataError(f"{where}: {arg} has {rows}; at least {min_rows} needed")
    if data.num_classes < min_classes:
        raise DataError(
            f"{where}: {arg} has {data.num_classes} class(es) {list(data.classes)}; "
            f"at least {min_classes} are needed"
        )
    if len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= data.num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(f"{where}: {arg} holds label {bad}, out of range for {data.num_classes} classes")
        if not all_finite(x):
            raise DataError(f"{where}: {arg}.x contains NaN or inf")
    return data


def check_same_space(reference: Dataset, other: Dataset, where: str, ref_arg: str, arg: str) -> None:
    """``other`` holds images of the same shape and the same number of classes as ``reference``."""
    if other.input_shape != reference.input_shape:
        raise ConfigError(
            f"{where}: {arg} has images of shape {other.input_shape}, {ref_arg} has {reference.input_shape}"
        )
    if other.num_classes != reference.num_classes:
        raise ConfigError(
            f"{where}: {arg} has {other.num_classes} classes, {ref_arg} has {reference.num_classes}"
        )


def check_images(x, where: str, arg: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A 4-D float tensor of finite images (N, C, H, W), of per-image ``shape`` when given."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{where}: {arg} must be a tensor of images (N, C, H, W), got {_kind(x)}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ConfigError(f"{where}: {arg} must be a 4-D float tensor (N, C, H, W), got {x.ndim}-D {x.dtype}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ConfigError(f"{where}: {arg} has images of shape {tuple(x.shape[1:])}, expected {tuple(shape)}")
    if not all_finite(x):
        raise DataError(f"{where}: {arg} contains NaN or inf")
    return x


# ----------------------------------------------------------------------------------------------------
# models


def check_model(model, where: str, arg: str = "model") -> nn.Module:
    """An ``nn.Module`` with parameters, all of them (and its float buffers) finite."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: {arg} must be a torch nn.Module, got {_kind(model)}")
    if next(model.parameters(), None) is None:
        raise ConfigError(f"{where}: {arg} has no parameters")
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            if t.is_floating_point() and not all_finite(t):
                raise DataError(f"{where}: {arg} has non-finite values in {name!r}")
    return model


def _forward_one(fn, module: nn.Module, x: torch.Tensor, where: str, arg: str, what: str) -> torch.Tensor:
    """``fn(x)`` for one row in eval mode without gradients (the module's mode is restored)."""
    param = next(module.parameters())
    x = x.to(param.device, param.dtype if param.is_floating_point() else x.dtype)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            return fn(x)
    except Exception as err:  # noqa: BLE001 - any failure of the forward pass means the inputs do not fit
        raise ConfigError(
            f"{where}: {arg} does not accept {what} of shape {tuple(x.shape[1:])} "
            f"({type(err).__name__}: {one_line(err, 160)})"
        ) from None
    finally:
        for m, training in modes:  # each submodule's own mode (a frozen extractor may stay in eval)
            m.training = training


def check_model_accepts(model, x: torch.Tensor, where: str, arg: str = "model", what: str = "inputs") -> int:
    """``model`` runs on a row of ``x`` and returns (1, K) logits; returns K. Nothing is changed."""
    check_model(model, where, arg)
    if len(x) == 0:
        return -1
    out = _forward_one(model, model, x[:1], where, arg, what)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else _kind(out)
        raise ConfigError(f"{where}: {arg} must return logits of shape (N, classes), got {got} for one row")
    return int(out.shape[1])


def check_model_fits(
    model, data: Dataset, where: str, arg: str = "model", data_arg: str = "data"
) -> nn.Module:
    """``model`` accepts ``data``'s images (a forward pass on one row) and has one output per class."""
    outputs = check_model_accepts(model, data.x, where, arg, f"{data_arg}'s images")
    if outputs not in (-1, data.num_classes):
        raise ConfigError(
            f"{where}: {arg} has {outputs} outputs but {data_arg} has {data.num_classes} classes"
        )
    return model


def check_extractor(extractor, data: Dataset, where: str, arg: str = "extractor") -> nn.Module:
    """A feature extractor (``features(x)`` if it has it, else the module itself) that accepts ``data``."""
    check_model(extractor, where, arg)
    fn = extractor.features if callable(getattr(extractor, "features", None)) else extractor
    out = _forward_one(fn, extractor, data.x[:1], where, arg, "data's images")
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        raise ConfigError(f"{where}: {arg} must return a (N, ...) feature tensor, got {_kind(out)}")
    return extractor


def check_checkpoints(model: nn.Module, checkpoints, where: str, arg: str = "checkpoints") -> list:
    """Checkpoints of ``model``'s architecture (same state-dict keys and shapes) holding finite tensors,
    each with a finite positive learning rate."""
    if isinstance(checkpoints, str | bytes) or not isinstance(checkpoints, Sequence):
        raise ConfigError(f"{where}: {arg} must be a list of training checkpoints, got {_kind(checkpoints)}")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for i, ck in enumerate(checkpoints):
        label = f"{arg}[{i}]"
        state, lr = getattr(ck, "state", None), getattr(ck, "lr", None)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(
                f"{where}: {label} must be a Checkpoint (a state dict of tensors), got {_kind(ck)}"
            )
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing or extra:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            more = len(missing) + len(extra) - 1
            raise DataError(
                f"{where}: {label} is not of the model's architecture ({what}"
                + (f" and {more} more key difference(s))" if more else ")")
            )
        for k, shape in expected.items():
            if tuple(state[k].shape) != shape:
                raise DataError(
                    f"{where}: {label} is not of the model's architecture ({k!r} has shape "
                    f"{tuple(state[k].shape)}, the model {shape})"
                )
            if state[k].is_floating_point() and not all_finite(state[k]):
                raise DataError(f"{where}: {label} has non-finite values in {k!r}")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
            raise DataError(f"{where}: {label}.lr must be a finite positive learning rate, got {lr!r}")
    return list(checkpoints)
