"""`poisonlab scan` finds planted poisons with no ground truth passed in, and flags little on clean data."""

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from poisonlab.data import Dataset, load_digits
from poisonlab.scan import combine, confident_learning, scan
from poisonlab.scan.core import backdoor_gate, evidence, stratified_folds
from poisonlab.training import TrainConfig

CONFIG = TrainConfig(epochs=6, checkpoint_every=2)


def recall_at(truth: np.ndarray, rank: np.ndarray, fraction: float) -> float:
    """Share of the planted rows among the first ``fraction`` of the rows by rank."""
    return float(truth[rank <= round(fraction * len(truth))].sum() / truth.sum())


@pytest.fixture(scope="module")
def planted():
    """Digits with 5% of the rows label-flipped and another 5% carrying a BadNets patch relabelled 0."""
    data = load_digits()
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(data), generator=g)
    count = len(data) // 20
    flipped, patched = rows[:count], rows[count : 2 * count]
    patched = patched[data.y[patched] != 0]
    x, y = data.x.clone(), data.y.clone()
    y[flipped] = (y[flipped] + torch.randint(1, 10, (len(flipped),), generator=g)) % 10
    x[patched, :, -3:, -3:] = 1.0
    y[patched] = 0
    truth = {"flip": np.zeros(len(data), bool), "badnets": np.zeros(len(data), bool)}
    truth["flip"][flipped.numpy()] = True
    truth["badnets"][patched.numpy()] = True
    return Dataset(x, y, data.classes), truth, scan(Dataset(x, y, data.classes), train_config=CONFIG, seed=0)


def test_scan_finds_label_flips_and_badnets_without_ground_truth(planted):
    data, truth, result = planted
    for family, floor in (("flip", 0.7), ("badnets", 0.5)):
        # within the first 10% of the rows (the poisons are 5% each; chance would find 10% of them)
        assert recall_at(truth[family], result.rank, 0.10) > floor, family
    assert roc_auc_score(truth["flip"], result.scores["label_quality"]) > 0.95
    assert roc_auc_score(truth["badnets"], result.scores["trigger"]) > 0.95
    # the trained model's own loss, the trivial baseline, misses the backdoor that the scan finds
    assert recall_at(truth["badnets"], result.rank, 0.10) > 3 * recall_at(
        truth["badnets"], np.argsort(np.argsort(-result.baseline["loss"])) + 1, 0.10
    )
    clean = ~(truth["flip"] | truth["badnets"])
    flagged = np.any(np.stack(list(result.flags.values())), 0)
    assert flagged[clean].mean() < 0.08 and flagged[~clean].mean() > 0.6
    top = result.order()[0]
    assert result.reasons[top] and (truth["flip"] | truth["badnets"])[top]


def test_clean_digits_yield_few_flags():
    """Every detector flags under 3% of the clean digits (a few of which are truly ambiguous digits), and all
    of them together under 7%: against 60-90% of the planted rows above."""
    detectors = ("label_quality", "knn_label", "trigger")
    result = scan(load_digits(), train_config=CONFIG, seed=1, detectors=detectors)
    assert all(flag.mean() < 0.03 for flag in result.flags.values())
    assert np.any(np.stack(list(result.flags.values())), 0).mean() < 0.07


def test_confident_learning_flags_the_off_diagonal_and_combination_puts_one_strong_detector_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.95, 0.05], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])  # row 2 labelled 1 but confidently 0
    score, flag, points_to = confident_learning(probs, labels, 2)
    assert flag.tolist() == [False, False, True, False] and points_to[2] == 0
    assert score[2] == pytest.approx(0.95)  # 1 - p[i, y_i]
    rng = np.random.default_rng(0)
    noise = {f"d{i}": rng.normal(size=500) for i in range(6)}
    strong = rng.normal(size=500)
    strong[:10] += 20  # one detector sees rows 0-9 clearly, six others see nothing
    _, rank = combine({**noise, "trigger": strong})
    assert set(np.flatnonzero(rank <= 10)) == set(range(10))
    # heavy-tailed positive scores are compared on a log scale: a lognormal bulk has no z beyond ~4.5
    assert evidence("self_influence", np.exp(rng.normal(size=500))).max() < 4.5


def test_a_backdoor_detector_joins_the_combined_rank_only_when_its_tail_sits_in_one_label():
    """The gate: a trigger check whose extreme rows are spread over the labels (a weak model's confident
    rows) is left out, so the label-noise detector's rows come first; the same tail all in one label (an
    all-to-one backdoor) takes part and comes first."""
    rng = np.random.default_rng(0)
    n = 1000
    labels = np.arange(n) % 10
    quality = rng.uniform(0.0, 0.5, n)
    quality[:50] = rng.uniform(0.7, 0.9, 50)  # 50 rows whose label the model doubts
    trigger = rng.normal(size=n)
    tail = rng.choice(np.arange(50, n), 50, replace=False)
    trigger[tail] += 30  # 50 rows with a huge trigger score, labels spread
    spread = {"label_quality": quality, "trigger": trigger}
    assert backdoor_gate(spread, labels) == ["trigger"]
    _, rank = combine(spread, labels=labels)
    assert (rank[:50] <= 50).mean() > 0.9
    _, ungated = combine(spread)  # without labels every detector takes part: the trigger's tail comes first
    assert (ungated[tail] <= 50).mean() > 0.9
    one_label = labels.copy()
    one_label[tail] = 3  # the same rows, all labelled with one target class
    assert backdoor_gate(spread, one_label) == []
    _, rank = combine(spread, labels=one_label)
    assert (rank[tail] <= 50).mean() > 0.9


def test_a_class_the_detector_favours_as_a_whole_is_not_taken_for_a_backdoor():
    """STRIP keeps MNIST's 8s confident under blending: its tail sits in label 8, but so do the rest of the
    8s, with no separate group at the top. Stamped rows form one (also in a favoured label, as digits' 0s
    targeted by BadNets), and join the combined rank."""
    rng = np.random.default_rng(1)
    n = 2000
    labels = np.arange(n) % 10
    quality = rng.uniform(0.0, 0.5, n)
    favoured = rng.normal(size=n) + np.where(labels == 8, 3.0, 0.0)  # every 8 scores high
    top = np.argsort(-favoured)[: n // 20]
    assert (labels[top] == 8).mean() > 0.4  # 4x the 8s' share: the concentration alone would let it in
    assert backdoor_gate({"label_quality": quality, "trigger": favoured}, labels) == ["trigger"]
    eights = np.flatnonzero(labels == 8)
    stamped = favoured.copy()
    stamped[eights[: len(eights) // 2]] += 30.0  # and half of the 8s carry a trigger: a group at the top
    assert backdoor_gate({"label_quality": quality, "trigger": stamped}, labels) == []


def test_folds_are_stratified_and_seeded():
    y = torch.arange(36) % 3
    fold = stratified_folds(y, 3, seed=0)
    assert torch.equal(fold, stratified_folds(y, 3, seed=0))
    for f in range(3):
        assert torch.bincount(y[fold == f], minlength=3).tolist() == [4, 4, 4]


def test_scan_table_round_trips_through_csv(planted, tmp_path):
    from poisonlab.scan.output import write_csv

    _, _, result = planted
    path = write_csv(result, tmp_path / "scan.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result)
    assert [int(r["rank"]) for r in rows] == result.rank.tolist()
    assert rows[5]["label"] == result.classes[result.labels[5]]
    assert float(rows[5]["label_quality_score"]) == pytest.approx(result.scores["label_quality"][5])


def test_a_duplicate_carrying_another_label_comes_first_whatever_the_similarity_spread():
    """A near duplicate with a different label is a finding of its own: its robust z among natural
    similarities (digits: ~2 at an exact copy) would rank it below every doubtful label."""
    rng = np.random.default_rng(2)
    n = 1000
    quality = rng.uniform(0.0, 0.6, n)
    quality[10:60] = rng.uniform(0.9, 0.99, 50)  # 50 rows whose label the model doubts
    similarity = np.clip(rng.normal(0.93, 0.03, n), 0, 0.985)
    similarity[:5] = 1.0  # five exact copies of rows with another label
    _, rank = combine({"label_quality": quality, "duplicate": similarity})
    assert (rank[:5] <= 5).all()
    _, rank = combine({"label_quality": quality, "duplicate": similarity}, near_duplicate=1.01)
    assert (rank[:5] > 50).all()  # no longer near enough: no evidence
