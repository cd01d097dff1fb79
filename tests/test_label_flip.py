import pytest
import torch

from poisonlab.attacks import RandomLabelFlip, TargetedLabelFlip
from poisonlab.errors import ConfigError
from poisonlab.models import build_model
from poisonlab.registry import create
from poisonlab.training import TrainConfig, accuracy, predict, train


def test_targeted_flip_changes_exactly_the_requested_rows(digits_split):
    train_set, _ = digits_split
    y_before = train_set.y.clone()
    gen = torch.Generator().manual_seed(0)
    poisoned = TargetedLabelFlip(source=3, target=9, count=25).craft(train_set, generator=gen)
    changed = (poisoned.data.y != train_set.y).nonzero().flatten()
    assert torch.equal(changed, poisoned.poison_idx)
    assert len(changed) == 25
    assert (train_set.y[changed] == 3).all() and (poisoned.data.y[changed] == 9).all()
    assert torch.equal(poisoned.original.y, train_set.y[changed])
    assert torch.equal(poisoned.original.x, train_set.x[changed])
    assert torch.equal(poisoned.data.x, train_set.x)
    assert torch.equal(train_set.y, y_before)  # the input is never modified


def test_targeted_flip_fraction_counts_the_source_class(digits_split):
    train_set, _ = digits_split
    n3 = int((train_set.y == 3).sum())
    poisoned = TargetedLabelFlip(fraction=0.2).craft(train_set, generator=torch.Generator().manual_seed(1))
    assert len(poisoned.poison_idx) == round(0.2 * n3)


def test_random_flip_gives_every_row_a_different_label(digits_split):
    train_set, _ = digits_split
    poisoned = RandomLabelFlip(count=300).craft(train_set, generator=torch.Generator().manual_seed(0))
    idx = poisoned.poison_idx
    assert len(idx) == 300
    assert (poisoned.data.y[idx] != train_set.y[idx]).all()
    untouched = torch.ones(len(train_set), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(poisoned.data.y[untouched], train_set.y[untouched])
    # new labels spread over the other classes, not one fixed shift
    shifts = (poisoned.data.y[idx] - train_set.y[idx]) % 10
    assert len(shifts.unique()) == 9


def test_flips_are_seeded(digits_split):
    train_set, _ = digits_split
    a = RandomLabelFlip(fraction=0.05).craft(train_set, generator=torch.Generator().manual_seed(3))
    b = RandomLabelFlip(fraction=0.05).craft(train_set, generator=torch.Generator().manual_seed(3))
    c = RandomLabelFlip(fraction=0.05).craft(train_set, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.data.y, b.data.y) and not torch.equal(a.data.y, c.data.y)


def test_composed_attacks_keep_clean_originals(digits_split):
    train_set, _ = digits_split
    gen = torch.Generator().manual_seed(0)
    first = TargetedLabelFlip(fraction=0.5).craft(train_set, generator=gen)
    both = first.then(RandomLabelFlip(fraction=0.3).craft(first.data, generator=gen))
    assert torch.equal(both.clean_data().y, train_set.y)
    assert torch.equal(both.original.y, train_set.y[both.poison_idx])
    assert set(both.poison_goal.tolist()) == {0, 1}


def test_bad_flip_parameters_are_rejected_by_name(digits_split):
    with pytest.raises(ConfigError, match="source"):
        create("attack", {"name": "label_flip_targeted", "source": 3, "target": 3, "fraction": 0.1})
    with pytest.raises(ConfigError, match="at most one of fraction and count"):
        create("attack", {"name": "label_flip_random", "fraction": 0.1, "count": 3})
    with pytest.raises(ConfigError, match="colour: unknown key"):
        create("attack", {"name": "label_flip_random", "count": 3, "colour": 1})
    with pytest.raises(ConfigError, match="unknown attack"):
        create("attack", {"name": "flip_everything"})
    train_set, _ = digits_split
    one_three = train_set.subset((train_set.y == 3).nonzero().flatten()[:1])
    with pytest.raises(ConfigError, match="only 1 are available"):
        TargetedLabelFlip(count=5).craft(one_three, generator=torch.Generator())


def test_appended_poisons_compose_and_are_dropped_from_the_clean_data(digits_split):
    from poisonlab.poison import AttackGoal, PoisonedDataset

    train_set, _ = digits_split
    gen = torch.Generator().manual_seed(0)
    flipped = TargetedLabelFlip(count=5).craft(train_set, generator=gen)
    sources = torch.tensor([0, 1, 2])
    extra = flipped.data.subset(sources)
    added = PoisonedDataset.from_added(flipped.data, extra, AttackGoal("copy"), sources)
    both = flipped.then(added)
    assert len(both.data) == len(train_set) + 3 and both.num_clean == len(train_set)
    assert set(both.poison_idx[-3:].tolist()) == {len(train_set), len(train_set) + 1, len(train_set) + 2}
    assert torch.equal(both.clean_data().y, train_set.y) and torch.equal(both.clean_data().x, train_set.x)
    assert both.mask_of(1).sum() == 3 and both.mask_of(0).sum() == 5


# -- measured effects on a retrained victim against its clean twin ------------------------------------------
# The victim and its twin share architecture, seed and schedule; the twin trains on the clean rows.

VICTIM = TrainConfig(epochs=10, lr=0.05, batch_size=32)


@pytest.fixture(scope="module")
def twins(digits_split):
    """The clean twin of each victim seed: an MLP trained on the clean digits."""
    train_set, _ = digits_split
    return {seed: _fit(train_set, seed) for seed in (0, 1)}


def _fit(data, seed):
    return train(build_model("mlp", data.input_shape, 10, seed=seed), data, VICTIM, seed=seed).model


def test_targeted_flip_makes_the_victim_call_source_images_the_target(digits_split, twins):
    """100 of the 137 training 3s relabelled 9: the victim calls most test 3s a 9, its twin almost none.

    Measured (MLP, seeds 0-2): success rate 0.96 / 0.67 / 0.93 against 0.00 / 0.02 / 0.02 for the twin;
    the other classes are barely touched (accuracy on non-3 rows within a point or two of the twin's)."""
    train_set, test_set = digits_split
    others = test_set.subset((test_set.y != 3).nonzero().flatten())
    gains = []
    for seed, twin in twins.items():
        attack = TargetedLabelFlip(source=3, target=9, count=100)
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed))
        victim = _fit(poisoned.data, seed)
        on_victim = attack.evaluate(victim, test_set, poisoned.goals[0])["success_rate"]
        on_twin = attack.evaluate(twin, test_set, poisoned.goals[0])["success_rate"]
        gains.append(on_victim - on_twin)
        assert on_twin < 0.1
        assert accuracy(victim, others) > accuracy(twin, others) - 0.05  # targeted, not indiscriminate
    assert min(gains) > 0.4 and sum(gains) / len(gains) > 0.55, gains


def test_random_flip_lowers_the_victims_accuracy(digits_split, twins):
    """Half the rows relabelled at random: the victim loses accuracy against its twin.

    Measured (MLP, seeds 0-2): 95.3 -> 87.1, 96.9 -> 90.6, 96.0 -> 80.8 (drops of 6 to 15 points)."""
    train_set, test_set = digits_split
    drops = []
    for seed, twin in twins.items():
        attack = RandomLabelFlip(fraction=0.5)
        poisoned = attack.craft(train_set, generator=torch.Generator().manual_seed(seed))
        drops.append(accuracy(twin, test_set) - accuracy(_fit(poisoned.data, seed), test_set))
    assert min(drops) > 0.03, drops


def test_random_flip_of_every_row_teaches_the_victim_to_avoid_the_true_class(digits_split, twins):
    """Every row relabelled to one of the *other* classes: an image's true class is the one label its kind
    never carries, so the victim ranks it low: accuracy ~0 and mean probability of the true class below
    chance (1/10). A flip that could keep the label (uniform over all 10 classes) leaves chance instead.

    Measured (MLP, seeds 0-2): accuracy 0.000 / 0.000 / 0.000, p(true) 0.045 / 0.046 / 0.048 (twin 95-97%);
    with labels uniform over all classes: accuracy 0.04 / 0.10 / 0.21, p(true) 0.094 / 0.107 / 0.111."""
    train_set, test_set = digits_split
    poisoned = RandomLabelFlip(fraction=1.0).craft(train_set, generator=torch.Generator().manual_seed(0))
    victim = _fit(poisoned.data, 0)
    p_true = predict(victim, test_set.x).softmax(1)[torch.arange(len(test_set)), test_set.y]
    assert accuracy(twins[0], test_set) > 0.9
    assert accuracy(victim, test_set) < 0.02
    assert p_true.mean() < 0.07, p_true.mean()
