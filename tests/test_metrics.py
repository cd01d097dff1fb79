"""metrics.py against values computed by hand on small arrays (the arithmetic is in the comments).

No expected number here comes from sklearn: AUROC is counted over (poison, clean) pairs (a tie counts 1/2),
average precision is the mean over the poisons of the precision at each poison's rank.
"""

import math

import numpy as np
import pytest

from poisonlab.errors import ConfigError
from poisonlab.metrics import (
    aggregate,
    binomial_se,
    detection_metrics,
    is_binary,
    is_oracle_metric,
    mad_threshold,
    standard_errors,
    top_fraction,
)

# 50 rows, row i scores 50 - i (row 0 is the most suspicious); 5 poisons at rows 0, 2, 3, 10 and 40.
SCORES_50 = 50.0 - np.arange(50)
POISONS_50 = np.zeros(50, dtype=bool)
POISONS_50[[0, 2, 3, 10, 40]] = True


def test_detection_metrics_on_fifty_ranked_rows():
    m = detection_metrics(SCORES_50, POISONS_50, threshold=43.0)
    # AUROC: 5 poisons x 45 clean = 225 pairs; clean rows below each poison (rows below minus poisons below):
    # row 0: 49 - 4 = 45, row 2: 47 - 3 = 44, row 3: 46 - 2 = 44, row 10: 39 - 1 = 38, row 40: 9 - 0 = 9
    # -> (45 + 44 + 44 + 38 + 9) / 225 = 180 / 225 = 0.8
    assert m["auroc"] == pytest.approx(0.8)
    # AP: poisons at ranks 1, 3, 4, 11, 41 -> precisions 1/1, 2/3, 3/4, 4/11, 5/41, averaged over the 5
    assert m["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 11 + 5 / 41) / 5)
    # threshold 43 (a score itself: >= flags it): rows 0..7 (scores 50..43) flagged = 8 of 50 rows
    assert m["threshold"] == 43.0
    assert m["flagged_fraction"] == pytest.approx(8 / 50)
    assert m["recall"] == pytest.approx(3 / 5)  # poisons 0, 2, 3 of the 5 are flagged
    assert m["precision"] == pytest.approx(3 / 8)  # 3 of the 8 flagged rows are poisons
    # at the budget: the top 5 rows (0..4) hold poisons 0, 2, 3 -> 3 / 5
    assert m["recall_at_budget"] == pytest.approx(3 / 5)
    # 1%: ceil(0.01 * 50) = ceil(0.5) = 1 row (round and floor would give 0): row 0, a poison
    assert m["recall_at_1pct"] == pytest.approx(1 / 5)
    assert m["precision_at_1pct"] == pytest.approx(1 / 1)
    # 5%: ceil(0.05 * 50) = ceil(2.5) = 3 rows (round gives 2): rows 0, 1, 2 hold poisons 0 and 2
    assert m["recall_at_5pct"] == pytest.approx(2 / 5)
    assert m["precision_at_5pct"] == pytest.approx(2 / 3)


def test_detection_metrics_reward_the_high_side_only():
    """The same rows with the scores negated: the poisons are now among the least suspicious rows."""
    m = detection_metrics(-SCORES_50, POISONS_50, threshold=-7.0)
    # AUROC: each pair reverses -> (225 - 180) / 225 = 0.2
    assert m["auroc"] == pytest.approx(0.2)
    # ranking now runs from row 49 up: poisons at ranks 10 (row 40), 40 (row 10), 47, 48, 50 (rows 3, 2, 0)
    assert m["average_precision"] == pytest.approx((1 / 10 + 2 / 40 + 3 / 47 + 4 / 48 + 5 / 50) / 5)
    # row i scores i - 50: scores >= -7 are rows 43..49 (-7..-1) -> 7 of 50 rows flagged
    assert m["flagged_fraction"] == pytest.approx(7 / 50)
    assert m["recall"] == 0.0 and m["precision"] == 0.0  # no poison among rows 43..49
    assert m["recall_at_budget"] == 0.0  # top 5 = rows 45..49
    assert m["recall_at_1pct"] == 0.0 and m["recall_at_5pct"] == 0.0  # row 49; rows 47..49


def test_auroc_and_average_precision_with_ties():
    scores = np.array([0.8, 0.5, 0.5, 0.5, 0.2])
    is_poison = np.array([True, True, False, False, False])
    m = detection_metrics(scores, is_poison, threshold=0.5)
    # AUROC: 2 x 3 = 6 pairs; 0.8 beats the 3 clean rows (3); 0.5 ties two clean 0.5s (1/2 + 1/2) and
    # beats 0.2 (1) -> (3 + 2) / 6
    assert m["auroc"] == pytest.approx(5 / 6)
    # AP with a tied block as one threshold: at 0.8, precision 1/1 and recall 1/2; at 0.5, 4 rows flagged,
    # 2 poisons -> precision 2/4 and recall 1 -> 1/2 * 1 + (1 - 1/2) * 2/4 = 0.75
    assert m["average_precision"] == pytest.approx(0.75)
    # threshold 0.5: 4 of 5 flagged, both poisons among them
    assert m["flagged_fraction"] == pytest.approx(4 / 5)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 4)


def test_threshold_metrics_distinguish_recall_from_precision():
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.0, 0.5, 0.4])
    is_poison = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=bool)  # poisons score 0.9, 0.8, 0.6
    m = detection_metrics(scores, is_poison, threshold=0.55)
    # flagged: 0.9, 0.8, 0.7, 0.6 -> 4 of 10; recall 3/3; precision 3/4
    assert (m["flagged_fraction"], m["recall"], m["precision"]) == pytest.approx((0.4, 1.0, 0.75))
    m = detection_metrics(scores, is_poison, threshold=0.75)
    # flagged: 0.9, 0.8 -> 2 of 10; recall 2/3; precision 2/2
    assert (m["flagged_fraction"], m["recall"], m["precision"]) == pytest.approx((0.2, 2 / 3, 1.0))
    # AUROC: 3 x 7 = 21 pairs; 0.9 and 0.8 beat all 7, 0.6 beats all but 0.7 -> (7 + 7 + 6) / 21
    assert m["auroc"] == pytest.approx(20 / 21)
    # AP: poisons at ranks 1, 2, 4 -> (1/1 + 2/2 + 3/4) / 3
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    # budget 3: top rows score 0.9, 0.8, 0.7 -> 2 poisons of 3
    assert m["recall_at_budget"] == pytest.approx(2 / 3)


def test_degenerate_masks_and_bad_input():
    scores = np.array([3.0, 2.0, 1.0])
    none = detection_metrics(scores, np.zeros(3, dtype=bool), threshold=2.0)
    assert math.isnan(none["recall"]) and none["precision"] == 0.0  # 2 flagged, neither a poison
    assert "auroc" not in none and "recall_at_budget" not in none  # undefined without both groups
    everything = detection_metrics(scores, np.ones(3, dtype=bool), threshold=10.0)
    assert everything["recall"] == 0.0 and math.isnan(everything["precision"])  # nothing flagged
    assert everything["flagged_fraction"] == 0.0 and "auroc" not in everything
    with pytest.raises(ConfigError, match="differ in shape"):
        detection_metrics(scores, np.ones(4, dtype=bool), threshold=0.0)
    with pytest.raises(ConfigError, match="non-finite"):
        detection_metrics(np.array([1.0, np.nan, 0.0]), np.array([True, False, False]), threshold=0.0)


def test_top_fraction_takes_the_ceiling_of_the_highest_scores():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])
    # ceil(0.25 * 10) = ceil(2.5) = 3: the two 0.9s (rows 1, 3) and 0.8 (row 7)
    assert top_fraction(scores, 0.25).nonzero()[0].tolist() == [1, 3, 7]
    # ceil(0.1 * 10) = 1: a tie between rows 1 and 3 goes to the earlier row
    assert top_fraction(scores, 0.1).nonzero()[0].tolist() == [1]
    # 0.07 * 100 is 7.000000000000001 in floating point: still exactly 7 rows (93..99), not 8
    assert top_fraction(np.arange(100.0), 0.07).nonzero()[0].tolist() == list(range(93, 100))
    assert top_fraction(np.arange(100.0), 0.05).nonzero()[0].tolist() == [95, 96, 97, 98, 99]
    assert top_fraction(np.arange(100.0), 0.01).nonzero()[0].tolist() == [99]
    assert top_fraction(scores, 1.0).all()


def test_mad_threshold_by_hand():
    # odd count: median 3; |x - 3| = 2, 1, 0, 1, 97 -> sorted 0, 1, 1, 2, 97 -> MAD 1
    # k = 2: 3 + 2 * 1.4826 * 1 = 5.9652 (the outlier 100 does not move it)
    assert mad_threshold(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), k=2.0) == pytest.approx(5.9652)
    # even count: median (2 + 4) / 2 = 3; |x - 3| = 3, 2, 1, 1, 5, 7 -> sorted 1, 1, 2, 3, 5, 7 -> MAD 2.5
    # default k = 3: 3 + 3 * 1.4826 * 2.5 = 3 + 11.1195 = 14.1195
    assert mad_threshold(np.array([0.0, 1.0, 2.0, 4.0, 8.0, 10.0])) == pytest.approx(14.1195)
    # constant scores: MAD 0, the threshold is the median itself
    assert mad_threshold(np.full(7, 2.5), k=3.0) == 2.5


def test_binomial_se_by_hand():
    assert binomial_se(0.25, 12) == pytest.approx(0.125)  # sqrt(0.25 * 0.75 / 12) = sqrt(1/64)
    assert binomial_se(0.5, 4) == pytest.approx(0.25)  # sqrt(0.25 / 4)
    assert binomial_se(0.0, 10) == 0.0 and binomial_se(1.0, 10) == 0.0
    assert math.isnan(binomial_se(0.5, 0))


def test_aggregate_by_hand():
    trials = [{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": float("nan")}]
    mean, std = aggregate(trials)
    assert sorted(mean) == ["a", "b"]
    # a: mean (1 + 3 + 5) / 3 = 3; deviations -2, 0, 2 -> var (4 + 0 + 4) / (3 - 1) = 4 -> std 2 (ddof 1)
    assert mean["a"] == pytest.approx(3.0) and std["a"] == pytest.approx(2.0)
    # b: only one finite value (the NaN is left out) -> mean 2, std 0
    assert mean["b"] == 2.0 and std["b"] == 0.0
    mean, std = aggregate([{"c": float("nan")}])
    assert math.isnan(mean["c"]) and std["c"] == 0.0


def test_standard_errors_binomial_for_0_1_values_else_std_over_sqrt_n():
    trials = [
        {"success": 1.0, "net_success": 1.0, "acc": 0.9},
        {"success": 0.0, "net_success": 0.0, "acc": 0.8},
        {"success": 0.0, "net_success": -1.0, "acc": 0.7},
        {"success": 1.0, "net_success": 1.0, "acc": float("nan")},
    ]
    mean, std = aggregate(trials)
    se = standard_errors(trials, mean, std)
    # success in {0, 1}: binomial, sqrt(0.5 * 0.5 / 4) = 0.25 (std / sqrt(n) would be sqrt(1/3) / 2 = 0.2887)
    assert se["success"] == pytest.approx(0.25)
    # net success in {-1, 0, 1}: mean 1/4; squared deviations 9/16, 1/16, 25/16, 9/16 -> sum 44/16 = 2.75
    # -> std sqrt(2.75 / 3), se = std / sqrt(4) = 0.4787 (binomial of 0.25 would be 0.2165)
    assert se["net_success"] == pytest.approx(math.sqrt(2.75 / 3) / 2)
    # acc: 3 finite values 0.9, 0.8, 0.7 -> std 0.1 -> se 0.1 / sqrt(3) (the NaN is not a trial)
    assert se["acc"] == pytest.approx(0.1 / math.sqrt(3))
    assert is_binary([0, 1, 1.0]) and not is_binary([0, 0.5]) and not is_binary([])


def test_is_oracle_metric():
    assert is_oracle_metric("detection.tracin_self.recall_at_budget")  # reads the true poison count
    assert not is_oracle_metric("detection.tracin_self.recall_at_1pct")
    assert not is_oracle_metric("detection.tracin_self.auroc")
    prefixes = {"purification": "simulated detector", "defense.fp": "trigger-aware stop"}
    assert is_oracle_metric("purification.mendata.clean_accuracy", prefixes)
    assert is_oracle_metric("defense.fp", prefixes)  # the prefix itself
    assert is_oracle_metric("defense.fp.attack_success", ("defense.fp",))
    assert not is_oracle_metric("defense.fp2.attack_success", prefixes)  # a prefix ends at a dot
    assert not is_oracle_metric("purification_extra.x", prefixes)
    assert not is_oracle_metric("victim.clean_accuracy", prefixes)
