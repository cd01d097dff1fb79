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


def detection_metrics(scores: np.ndarray, is_poison: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC, average precision, and precision/recall at ``threshold`` and at the poison budget.

    ``recall`` is the detected fraction of seed 000's tables (poisons with score >= threshold);
    ``recall_at_budget`` flags the top-k rows with k the number of poisons (precision equals recall there).
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
    return out


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


def standard_errors(
    trials: list[dict[str, float]], mean: dict[str, float], std: dict[str, float]
) -> dict[str, float]:
    """Standard error of each mean: binomial for 0/1 success metrics (``*.success``), else std / sqrt(n)."""
    out = {}
    for key, value in mean.items():
        n = sum(1 for t in trials if key in t and math.isfinite(t[key]))
        if key.endswith("success") and math.isfinite(value):
            out[key] = binomial_se(value, n)
        else:
            out[key] = std[key] / math.sqrt(n) if n > 0 else float("nan")
    return out
