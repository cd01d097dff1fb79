"""Metrics: detection quality against the known poisoned rows, flag thresholds, spreads over trials."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from poisonlab.checks import check_int, check_number
from poisonlab.errors import ConfigError


def _scores(scores, where: str) -> np.ndarray:
    """``scores`` as a 1-D float64 array of finite numbers."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: scores must be numbers, got {type(scores).__name__}") from None
    if arr.ndim != 1:
        raise ConfigError(f"{where}: scores must be 1-D (one score per row), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{where}: scores contain NaN or inf (the detector returned non-finite scores)")
    return arr


def mad_threshold(scores: np.ndarray, k: float = 3.0) -> float:
    """Robust outlier rule: median + k * 1.4826 * MAD (a z-score of k for normal data).

    Yacoubou 2024 flags rows above a fixed gamma (300 for its ResNet-18), but that scale depends on the
    model, the learning rates and the checkpoints; this rule adapts to the scores and needs no poison labels.
    """
    scores = _scores(scores, "mad_threshold")
    if len(scores) == 0:
        raise ConfigError("mad_threshold: scores is empty (no rows to take a median of)")
    k = check_number(k, "mad_threshold: k", minimum=0.0)
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))
    return float(median + k * mad)


FLAG_FRACTIONS = (0.01, 0.05)  # recall and precision are also reported with these shares of rows flagged


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * N)`` highest scores (ties broken by row order)."""
    scores = _scores(scores, "top_fraction")
    fraction = check_number(fraction, "top_fraction: fraction", minimum=0.0)
    if fraction > 1:
        raise ConfigError(f"top_fraction: fraction must be in [0, 1], got {fraction}")
    n = len(scores)
    k = min(n, math.ceil(fraction * n - 1e-9))
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def detection_metrics(scores: np.ndarray, is_poison: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, average precision, and precision/recall at ``threshold``, at fixed flagged shares and at the
    poison budget.

    ``recall`` is the detected fraction of Yacoubou 2024's tables (poisons with score >= threshold), always
    shown beside ``flagged_fraction`` and ``precision``. ``recall_at_1pct`` / ``precision_at_1pct`` (and 5%)
    flag the top 1% (5%) of rows. ``recall_at_budget`` flags the top-k rows with k the true number of
    poisons (precision equals recall there): it reads the ground truth, so it is an oracle metric
    (:func:`is_oracle_metric`).
    """
    where = "detection_metrics"
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: scores must be numbers, got {type(scores).__name__}") from None
    is_poison = np.asarray(is_poison)
    if is_poison.dtype != bool and not (is_poison.dtype.kind in "iu" and np.isin(is_poison, (0, 1)).all()):
        raise ConfigError(
            f"{where}: is_poison must be a boolean mask, one flag per row, got {is_poison.dtype}"
        )
    is_poison = is_poison.astype(bool)
    if scores.shape != is_poison.shape:
        raise ConfigError(f"scores {scores.shape} and poison mask {is_poison.shape} differ in shape")
    if scores.ndim != 1:
        raise ConfigError(f"{where}: scores must be 1-D (one score per row), got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ConfigError("detector returned non-finite scores")
    threshold = check_number(threshold, f"{where}: threshold")
    n_poison = int(is_poison.sum())
    flagged = scores >= threshold
    out = {
        "threshold": float(threshold),
        "flagged_fraction": float(flagged.mean()) if len(scores) else float("nan"),
        "recall": float(flagged[is_poison].mean()) if n_poison else float("nan"),
        "precision": float(is_poison[flagged].mean()) if flagged.any() else float("nan"),
    }
    if 0 < n_poison < len(scores):
        out["auroc"] = float(roc_auc_score(is_poison, scores))
        out["average_precision"] = float(average_precision_score(is_poison, scores))
        top = np.argsort(-scores, kind="stable")[:n_poison]
        out["recall_at_budget"] = float(is_poison[top].mean())
        for fraction in FLAG_FRACTIONS:
            flagged = top_fraction(scores, fraction)
            tag = f"{round(100 * fraction)}pct"
            out[f"recall_at_{tag}"] = float(flagged[is_poison].mean())
            out[f"precision_at_{tag}"] = float(is_poison[flagged].mean())
    return out


ORACLE_SUFFIXES = ("recall_at_budget",)  # metrics whose definition reads the true poison count


def is_oracle_metric(key: str, oracle_prefixes=()) -> bool:
    """True when the metric ``key`` reads ground truth beyond scoring: a name in ``ORACLE_SUFFIXES``, or a
    metric under one of ``oracle_prefixes`` (a simulated detector's purification, a clean-data extractor's
    detections, a trigger-aware stop rule: see ``experiment.oracle_prefixes``)."""
    return key.rsplit(".", 1)[-1] in ORACLE_SUFFIXES or any(
        key == p or key.startswith(p + ".") for p in oracle_prefixes
    )


def binomial_se(p: float, n: int) -> float:
    """Standard error of a success rate p measured over n independent trials."""
    p = check_number(p, "binomial_se: p", minimum=0.0)
    if p > 1:
        raise ConfigError(f"binomial_se: p must be a rate in [0, 1], got {p}")
    n = check_int(n, "binomial_se: n", minimum=0)
    return math.sqrt(p * (1 - p) / n) if n > 0 else float("nan")


def _check_trials(trials, where: str) -> None:
    """A list of {metric name: number} mappings (NaN allowed: a metric undefined in that trial)."""
    if isinstance(trials, str | bytes | Mapping) or not isinstance(trials, Sequence):
        raise ConfigError(f"{where}: trials must be a list of metric mappings, got {type(trials).__name__}")
    for i, trial in enumerate(trials):
        if not isinstance(trial, Mapping):
            raise ConfigError(f"{where}: trials[{i}] must be a metric mapping, got {type(trial).__name__}")
        for key, value in trial.items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{where}: trials[{i}][{key!r}] must be a number, got {value!r}")


def aggregate(trials: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (ddof=1, 0 for one trial) of each metric over trials."""
    _check_trials(trials, "aggregate")
    keys = sorted({k for t in trials for k in t})
    mean, std = {}, {}
    for key in keys:
        values = np.array([t[key] for t in trials if key in t], dtype=np.float64)
        finite = values[np.isfinite(values)]
        mean[key] = float(finite.mean()) if len(finite) else float("nan")
        std[key] = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return mean, std


def is_binary(values) -> bool:
    """True when every value is 0 or 1 (one success or failure per trial): the binomial standard error
    applies. The one rule for results.json and the bench tables."""
    arr = np.asarray(values, dtype=np.float64)
    return len(arr) > 0 and bool(np.all((arr == 0) | (arr == 1)))


def standard_errors(
    trials: list[dict[str, float]], mean: dict[str, float], std: dict[str, float]
) -> dict[str, float]:
    """Standard error of each mean: binomial when every trial's value is 0 or 1 (:func:`is_binary`), else
    std / sqrt(n) (e.g. a net success, poisoned minus twin, in {-1, 0, 1})."""
    _check_trials(trials, "standard_errors")
    out = {}
    for key in mean:
        values = [t[key] for t in trials if key in t and math.isfinite(t[key])]
        n = len(values)
        if n and is_binary(values):
            out[key] = binomial_se(mean[key], n)
        else:
            out[key] = std[key] / math.sqrt(n) if n > 0 else float("nan")
    return out
