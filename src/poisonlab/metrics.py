"""Metrics: detection quality against the known poisoned rows, flag thresholds, spreads over trials."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from poisonlab.errors import ConfigError


def mad_threshold(scores: np.ndarray, k: float = 3.0) -> float:
    """Robust outlier rule: median + k * 1.4826 * MAD (a z-score of k for normal data).

    Seed 000 flags rows above a fixed gamma (300 for its ResNet-18), but that scale depends on the model,
    the learning rates and the checkpoints; this rule adapts to the scores and needs no poison labels.
    """
    scores = np.asarray(scores, dtype=np.float64)
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))
    return float(median + k * mad)


FLAG_FRACTIONS = (0.01, 0.05)  # recall and precision are also reported with these shares of rows flagged


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * N)`` highest scores (ties broken by row order)."""
    n = len(scores)
    k = min(n, math.ceil(fraction * n - 1e-9))
    mask = np.zeros(n, dtype=bool)
    mask[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]] = True
    return mask


def detection_metrics(scores: np.ndarray, is_poison: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, average precision, and precision/recall at ``threshold``, at fixed flagged shares and at the
    poison budget.

    ``recall`` is the detected fraction of seed 000's tables (poisons with score >= threshold), always shown
    beside ``flagged_fraction`` and ``precision``. ``recall_at_1pct`` / ``precision_at_1pct`` (and 5%)
    flag the top 1% (5%) of rows. ``recall_at_budget`` flags the top-k rows with k the true number of
    poisons (precision equals recall there): it reads the ground truth, so it is an oracle metric
    (:func:`is_oracle_metric`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_poison = np.asarray(is_poison, dtype=bool)
    if scores.shape != is_poison.shape:
        raise ConfigError(f"scores {scores.shape} and poison mask {is_poison.shape} differ in shape")
    if not np.isfinite(scores).all():
        raise ConfigError("detector returned non-finite scores")
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
    return math.sqrt(p * (1 - p) / n) if n > 0 else float("nan")


def aggregate(trials: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (ddof=1, 0 for one trial) of each metric over trials."""
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
    out = {}
    for key in mean:
        values = [t[key] for t in trials if key in t and math.isfinite(t[key])]
        n = len(values)
        if n and is_binary(values):
            out[key] = binomial_se(mean[key], n)
        else:
            out[key] = std[key] / math.sqrt(n) if n > 0 else float("nan")
    return out
