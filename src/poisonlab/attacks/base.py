"""The attack interface: ``craft(train, generator=...) -> PoisonedDataset``, never changing its input."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from poisonlab.checks import check_dataset, check_generator, check_model_fits, check_same_space
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.models import MODELS, build_model
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import Method
from poisonlab.training import TrainConfig, train


class Attack(Method):
    """Base of every attack: :meth:`craft` validates its arguments, then calls the attack's ``_craft``."""

    kind = "attack"
    triggers_inputs: ClassVar[bool] = False  # a backdoor: ``triggered(data, goal)`` stamps its trigger
    goal_metrics: ClassVar[tuple[str, ...]] = ()  # numeric goal params reported as attack.<id>.<name>
    # the key of ``evaluate`` that measures success (reported net of the clean twin); None: indiscriminate
    # attacks, whose effect is the accuracy drop
    success_key: ClassVar[str | None] = None
    # the attacker trains the victim itself (outsourced training): ``train_victim`` replaces the runner's
    # training of the victim on the released set
    trains_victim: ClassVar[bool] = False

    def craft(
        self,
        train: Dataset,
        *,
        generator: torch.Generator | None = None,
        victim: nn.Module | None = None,
        test: Dataset | None = None,
    ) -> PoisonedDataset:
        """Poison ``train`` with randomness drawn from ``generator`` (required). ``victim``: a clean model the
        attacker knows (white-box; frozen layers are not trained by the victim, as in the transfer setting);
        ``test``: where targeted attacks draw targets. Bad arguments fail here, before any work."""
        where = f"{self.name or type(self).__name__}.craft"
        check_dataset(train, where, "train")
        check_generator(generator, where)
        if test is not None:
            check_dataset(test, where, "test", min_rows=0)
            check_same_space(train, test, where, "train", "test")
        if victim is not None:
            check_model_fits(victim, train, where, "victim", "train")
        self.check_data(train, test)
        return self._craft(train, generator=generator, victim=victim, test=test)

    def clean_model_spec(self) -> tuple[str, TrainConfig] | None:
        """(model, schedule) of the clean model a white-box attack crafts against when given no victim, or
        None. When it matches the experiment's, the runner hands over the victim's clean twin (same seed),
        so the attack targets exactly the model the victim would train without poisons."""
        return None

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        """Reject parameters ``train`` / ``test`` cannot satisfy (classes, budgets against class sizes) with a
        one-line ConfigError, without crafting; :meth:`craft` calls it first, a runner may call it before
        any training."""

    def _craft(
        self, train: Dataset, *, generator: torch.Generator, victim: nn.Module | None, test: Dataset | None
    ) -> PoisonedDataset:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """Attack-specific success metrics of a trained ``model`` on ``test`` (empty by default)."""
        return {}

    def craft_metrics(self, goal: AttackGoal) -> dict[str, float]:
        """What crafting measured (the ``goal_metrics`` params of ``goal``; a dict of numbers gives
        ``name.key``), reported as ``attack.<id>.<name>``."""
        out: dict[str, float] = {}
        for name in self.goal_metrics:
            value = goal.params.get(name)
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for key, v in items:
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[name if key is None else f"{name}_{key}"] = float(v)
        return out

    def report_record(self, poisoned: PoisonedDataset, goal_index: int, test: Dataset) -> dict | None:
        """What the report shows of this attack's poisons (goal ``goal_index`` of ``poisoned``), rendered by
        :meth:`figures`; None by default."""
        return None


class BudgetedAttack(Attack):
    """An attack whose budget is a fraction or a count of rows: at most one of them; with neither, the
    attack's documented ``default_fraction`` (so every registered attack builds from its defaults)."""

    fraction: float | None = Field(None, gt=0, le=1, description="fraction of the eligible rows to poison")
    count: int | None = Field(None, ge=1, description="number of rows to poison (instead of a fraction)")

    default_fraction: ClassVar[float]  # each attack sets and documents its own

    @model_validator(mode="after")
    def _one_budget(self):
        if self.fraction is not None and self.count is not None:
            raise ValueError("give at most one of fraction and count")
        return self

    @property
    def budget_fraction(self) -> float:
        """``fraction``, or the attack's ``default_fraction`` when neither fraction nor count is set."""
        return self.fraction if self.fraction is not None else self.default_fraction


def poison_count(available: int, fraction: float | None, count: int | None, what: str) -> int:
    """Rows to poison out of ``available``: ``count`` if set, else ``round(fraction * available)``."""
    n = count if count is not None else round((fraction or 0.0) * available)
    if n < 1:
        raise ConfigError(f"{what}: the budget selects no row (fraction {fraction} of {available} rows)")
    if n > available:
        raise ConfigError(f"{what}: asked for {n} rows but only {available} are available")
    return n


def train_clean_model(name: str, data: Dataset, config: TrainConfig, seed: int) -> nn.Module:
    """The model an attack targets when given no victim: ``name`` trained on ``data`` as the runner would."""
    model = build_model(name, data.input_shape, data.num_classes, seed=seed)
    return train(model, data, config, seed=seed).model


class SurrogateAttack(Attack):
    """Fields shared by the attacks that train their own clean model when the caller gives no victim."""

    model: str = Field("logreg", description="victim architecture (trained on the clean data if no victim)")
    train: TrainConfig = Field(
        TrainConfig(),  # frozen, so one shared default is safe
        description="schedule of that clean model (match the experiment's `train` to attack its baseline)",
    )

    def _check_model(self):
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; known: {', '.join(MODELS)}")

    def _clean_model(self, train_set: Dataset, victim: nn.Module | None, generator: torch.Generator):
        self._check_model()
        if victim is not None:
            return victim
        return train_clean_model(self.model, train_set, self.train, generator.initial_seed())


class HeldOutValidationAttack(SurrogateAttack):
    """A surrogate attack that raises the loss on ``val_size`` random rows held out of the rows its clean
    model trains on and its poisons start from (Lu et al. 2022 keep a separate validation set)."""

    val_size: int = Field(1000, ge=1, description="validation rows held out of the attacker's training rows")

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        if self.val_size >= len(train):
            raise ConfigError(f"{self.name}: val_size {self.val_size} leaves no training row of {len(train)}")

    def split_validation(self, train: Dataset, generator: torch.Generator) -> tuple[Dataset, torch.Tensor]:
        """(the validation rows, the sorted indices of the rest)."""
        order = torch.randperm(len(train), generator=generator)
        return train.subset(order[: self.val_size]), order[self.val_size :].sort().values
