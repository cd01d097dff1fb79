import pytest
import torch

from poisonlab.attacks import RandomLabelFlip, TargetedLabelFlip
from poisonlab.errors import ConfigError
from poisonlab.registry import create


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
    with pytest.raises(ConfigError, match="exactly one of fraction and count"):
        create("attack", {"name": "label_flip_random"})
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
