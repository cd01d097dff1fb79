"""Shared-patch check: rows that carry the same small pixel window at the same place, share a label, and are
misread by a model that never trained on them: the trace a stamped trigger (BadNets) leaves in the data.

Not from a paper: a data-level complement to STRIP for the case where the model has not learned the
trigger (the scan's CIFAR models learn a 3x3 patch from 5% of 4,000 rows too weakly for STRIP to see it).
For every position of a ``window`` x ``window`` window (stride 1, every channel), the rows are grouped by
the window's content, quantised to ``levels`` grey levels. A stamped trigger puts its poisons in one group
at its position, all with the target label. Natural groups exist too (a background, a digit's stroke where
that digit is drawn), and their rows can share a label as well, so the test is not the label but the model:
among the k rows of a group with label y, d are predicted as another class by a model that did not train on
them (out of fold); under no attack d ~ Binomial(k, e_y), with e_y the out-of-fold error rate over all rows
labelled y. Rows stamped with an unlearned trigger keep looking like their source classes, so d is near k.
Only groups where the label holds at least ``min_share`` of the rows sharing the window are tested: flipped
rows share their true class's strokes with many correctly labelled rows (on 2,000 MNIST rows with 30% flips,
22% of the rows were flagged without this rule, none with it). Each row's score is the largest, over
positions, of -log10 of its group's binomial tail probability, Bonferroni-corrected by the number of groups
tested (k >= ``min_rows``).

Limits: a trigger the out-of-fold models learn (MNIST's patch) makes d small (STRIP sees those); blended or
per-row triggers share no window; a trigger saved through lossy compression shares it only up to the
quantisation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binom
from tqdm.auto import tqdm


def _window_keys(x: torch.Tensor, row: int, col: int, window: int, levels: int) -> torch.Tensor:
    """(N, parts) int64 exact keys of the window at (row, col) of ``x`` scaled to [0, 1], quantised to
    ``levels``: as many values as fit in 60 bits per part."""
    patch = x[:, :, row : row + window, col : col + window].reshape(len(x), -1)
    q = (patch * (levels - 1)).round().long()
    bits = max(1, int(levels - 1).bit_length())
    per = 60 // bits
    pad = (-q.shape[1]) % per
    if pad:
        q = torch.cat([q, q.new_zeros(len(q), pad)], 1)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return (q.reshape(len(q), -1, per) << shifts).sum(2)


def shared_patch_scores(
    x: torch.Tensor,
    labels: np.ndarray,
    mispredicted: np.ndarray,
    *,
    window: int = 3,
    levels: int = 32,
    min_rows: int = 5,
    min_share: float = 0.5,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score = -log10 of the corrected tail probability, clipped at 0; the window's (row, col) per row; the
    size of its group) for images ``x`` (N, C, H, W), given ``labels`` and whether a model that
    did not train on the row predicts another class (``mispredicted``); groups of fewer than ``min_rows``
    rows with the label, or where the label holds less than ``min_share`` of the rows sharing the window
    (flipped rows sharing their true class's strokes), are not tested."""
    n, _, height, width = x.shape
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / max(hi - lo, 1e-12)  # the data's own range: a normalised set quantises as a [0, 1] one
    labels = np.asarray(labels, dtype=np.int64)
    wrong = np.asarray(mispredicted, dtype=bool)
    classes = int(labels.max()) + 1
    error = np.bincount(labels, weights=wrong, minlength=classes) / np.maximum(
        np.bincount(labels, minlength=classes), 1
    )
    best = np.zeros(n)  # largest -log10 p (uncorrected) per row
    where = np.zeros((n, 2), dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    tested = 0
    for r in tqdm(range(height - window + 1), desc="scan: shared patch", disable=not progress):
        for c in range(width - window + 1):
            keys = _window_keys(x, r, c, window, levels)
            _, group = torch.unique(keys, dim=0, return_inverse=True)
            group = group.numpy()
            pair = group * classes + labels  # (group, label) of each row
            _, first, pair_id, k = np.unique(pair, return_index=True, return_inverse=True, return_counts=True)
            d = np.bincount(pair_id, weights=wrong)
            group_size = np.bincount(group)[group[first]]  # rows sharing the window, whatever their label
            big = (k >= min_rows) & (k >= min_share * group_size)
            tested += int(big.sum())
            if not big.any():
                continue
            e = np.clip(error[labels[first[big]]], 1e-6, 1 - 1e-6)
            p = binom.sf(d[big] - 1, k[big], e)  # P(D >= d)
            score = np.zeros(len(k))
            score[big] = -np.log10(np.maximum(p, 1e-300))
            per_row = score[pair_id]
            better = per_row > best
            best[better] = per_row[better]
            where[better] = (r, c)
            size[better] = k[pair_id[better]]
    corrected = np.maximum(best - np.log10(max(tested, 1)), 0.0)
    return corrected, where, size
