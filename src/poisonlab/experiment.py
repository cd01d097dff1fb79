"""Experiments: a validated config -> data -> attacks -> victim -> detectors -> metrics and report views.

One ``seed`` fixes every random choice: trial ``t`` uses ``seed + t`` for the attack's choices, the
model's initial weights, the training order and the detectors' draws, so a config repeats exactly on
the CPU. Metrics are flat dotted names (``victim.clean_accuracy``, ``detection.tracin_self.auroc``),
averaged over trials with their standard deviation.

Model defenses (``defenses:``, e.g. fine-pruning) and input-time detectors (``input_detectors:``, STRIP)
get a seeded share ``defender_fraction`` of the test set as the defender's clean data and are measured on
the rest, against the first backdoor attack of the config: ``defense.<id>.clean_accuracy`` and
``defense.<id>.attack_success`` (with ``_before``), ``<id>.far`` / ``<id>.frr`` (e.g. ``strip.far``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from poisonlab import data as datalib
from poisonlab.attacks import Attack, BackdoorAttack
from poisonlab.defenses import Defense
from poisonlab.detection import Detector
from poisonlab.detection.strip import InputDetector
from poisonlab.errors import ConfigError, PoisonlabError
from poisonlab.metrics import aggregate, detection_metrics, is_oracle_metric, mad_threshold, standard_errors
from poisonlab.models import MODELS, build_model
from poisonlab.poison import PoisonedDataset
from poisonlab.purification import Purifier
from poisonlab.registry import create, format_validation_error
from poisonlab.results import environment
from poisonlab.training import TrainConfig, TrainRun, accuracy, train, train_head

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


SEED_LIMIT = 2**63  # seed + trial must stay below it: torch generators and SQLite store 64-bit integers


def check_name(value: str, what: str = "name") -> str:
    """A plain file name (no folder, no '..'): configs and matrices name their output folders with it."""
    text = str(value)
    if not text.strip() or text == "." or ".." in text or any(c in text for c in "/\\\0"):
        raise ValueError(f"{what} {text!r} must be a plain file name (no path separator, no '..')")
    return text


class DataConfig(BaseModel):
    """Which data set, where, and how much of it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Literal["digits", "mnist", "cifar10", "folder", "npz"] = "digits"
    root: str | None = Field(None, description="folder or file; default: $POISONLAB_DATA")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="held-out share for sets without a test split")
    train_size: int | None = Field(None, ge=2, description="stratified subset of the training set")
    test_size: int | None = Field(None, ge=1, description="stratified subset of the test set")
    holdout_size: int | None = Field(
        None,
        ge=2,
        description="clean rows held out of the training split before any subset (stratified, disjoint "
        "from the training rows): the data of the independent model of `detect_with: holdout`",
    )


class ExperimentConfig(BaseModel):
    """A whole experiment; unknown keys and bad values are rejected with the key named."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field("experiment", description="a plain file name: results go to runs/NAME")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    trials: int = Field(1, ge=1)
    data: DataConfig = DataConfig()
    model: str = "cnn"
    train: TrainConfig = TrainConfig()
    setting: Literal["from_scratch", "transfer"] = Field(
        "from_scratch",
        description="from_scratch: the victim trains from random weights on the released set; transfer: a "
        "model trained on the clean set is frozen and the victim retrains only its last layer",
    )
    head_train: TrainConfig | None = Field(
        None, description="schedule of the last-layer retraining in the transfer setting (default: train)"
    )
    attacks: list[dict[str, Any]] = Field(default_factory=list)
    detectors: list[dict[str, Any]] = Field(default_factory=list)
    detect_with: Literal["victim", "holdout", "weights", "oracle_clean"] = Field(
        "victim",
        description="the model whose checkpoints and features the detectors and the reference selection "
        "read: victim (trained on the released data), holdout (trained on data.holdout_size disjoint "
        "clean rows), weights (detect_weights, e.g. a model of your own), or oracle_clean (trained on the "
        "released rows restored to their originals: reads the true poison mask, an oracle)",
    )
    detect_weights: str | None = Field(
        None, description="state dict of `model` (torch.save, loaded weights_only) for detect_with: weights"
    )
    baseline: bool = Field(True, description="also train a model on the clean data (accuracy drop)")
    threshold: float | Literal["mad"] = Field("mad", description="flag rows with score >= threshold")
    threshold_k: float = Field(3.0, gt=0, description="k of the median + k * MAD rule")
    report_top_k: int = Field(24, ge=0, le=200)
    defenses: list[dict[str, Any]] = Field(
        default_factory=list, description="model defenses applied to the victim (fine_pruning)"
    )
    input_detectors: list[dict[str, Any]] = Field(
        default_factory=list, description="input-time detectors run on the victim (strip)"
    )
    defender_fraction: float = Field(
        0.5, gt=0, lt=1, description="test-set share given to defenses as clean data; the rest scores them"
    )
    reference: dict[str, Any] | None = Field(
        None,
        description="detector choosing the purifiers' reference set: simulated (precision, recall; an "
        "evaluation-only oracle), knn_k, knn, or any detector (its least suspicious half per class)",
    )
    purifiers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="purifiers (mendata, random_noise, friendly_noise, ref, remove); each retrains the "
        "victim on the reference rows plus the purified rest",
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; known: {', '.join(MODELS)}")
        return value

    @field_validator("detect_with", mode="before")
    @classmethod
    def _renamed_clean(cls, value):
        if value == "clean":
            raise ValueError(
                "'clean' is now 'oracle_clean' (a model trained on the true clean rows reads the poison "
                "mask); an independent model is 'holdout' (with data.holdout_size) or 'weights'"
            )
        return value

    @model_validator(mode="after")
    def _methods(self):
        if self.detect_with == "holdout" and self.data.holdout_size is None:
            raise ValueError("detect_with: holdout needs data.holdout_size (clean rows held out for it)")
        if (self.detect_with == "weights") != (self.detect_weights is not None):
            raise ValueError("detect_weights goes with detect_with: weights, and only with it")
        if self.seed + self.trials > SEED_LIMIT:
            raise ValueError(f"seed + trials must stay below 2^63 (seed {self.seed}, {self.trials} trial(s))")
        if self.build_purifiers() and self.build_reference() is None:
            raise ValueError("purifiers need a 'reference:' detector (e.g. {name: simulated, recall: 0.5})")
        for ident, _ in self.build_input_detectors():
            if ident.split(".")[0] in _METRIC_GROUPS:
                raise ValueError(f"input detector id {ident!r} clashes with the metric group of that name")
        for where, method in self.methods():
            _check_seeds(where, method)
        for where, schedule in self.schedules():
            if schedule.device != "auto":
                try:
                    torch.device(schedule.device)
                except (RuntimeError, TypeError) as err:
                    raise ValueError(f"{where}.device: unknown device {schedule.device!r} ({err})") from None
        return self

    def schedules(self) -> list[tuple[str, TrainConfig]]:
        """(config location, training schedule) of the victim and of every method that trains a model."""
        out = [("train", self.train)] + ([("head_train", self.head_train)] if self.head_train else [])
        for where, method in self.methods():
            for key in type(method).model_fields:
                if isinstance(getattr(method, key), TrainConfig):
                    out.append((f"{where}.{key}", getattr(method, key)))
        return out

    def methods(self) -> list[tuple[str, Any]]:
        """(config location, built method) of every configured attack, detector, defense, input detector,
        purifier and the reference detector, e.g. ('attacks[0]', TargetedLabelFlip(...))."""
        out = []
        for kind, built in (
            ("attacks", self.build_attacks()),
            ("detectors", self.build_detectors()),
            ("defenses", self.build_defenses()),
            ("input_detectors", self.build_input_detectors()),
            ("purifiers", self.build_purifiers()),
        ):
            out += [(f"{kind}[{i}]", method) for i, (_, method) in enumerate(built)]
        reference = self.build_reference()
        if reference is not None:
            out.append(("reference", reference))
        return out

    def build_attacks(self) -> list[tuple[str, Attack]]:
        """(id, attack) for each configured attack, validated."""
        return _build("attack", self.attacks)

    def build_detectors(self) -> list[tuple[str, Detector]]:
        """(id, detector) for each configured detector, validated; ``id`` defaults to the name."""
        return _build("detector", self.detectors)

    def build_defenses(self) -> list[tuple[str, Defense]]:
        """(id, defense) for each configured model defense, validated."""
        return _build("defense", self.defenses)

    def build_input_detectors(self) -> list[tuple[str, InputDetector]]:
        """(id, input detector) for each configured input-time detector, validated."""
        return _build("input_detector", self.input_detectors)

    def build_purifiers(self) -> list[tuple[str, Purifier]]:
        """(id, purifier) for each configured purifier, validated."""
        return _build("purifier", self.purifiers)

    def build_reference(self) -> Detector | None:
        """The detector that selects the purifiers' reference set, validated (None when unset)."""
        if self.reference is None:
            return None
        try:
            return create("detector", self.reference, where="reference")
        except ConfigError as err:
            raise ValueError(str(err)) from None

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in, as saved in results.json."""
        out = self.model_dump(mode="json")
        out["attacks"] = [{"id": i, **m.spec()} for i, m in self.build_attacks()]
        out["detectors"] = [{"id": i, **m.spec()} for i, m in self.build_detectors()]
        out["defenses"] = [{"id": i, **m.spec()} for i, m in self.build_defenses()]
        out["input_detectors"] = [{"id": i, **m.spec()} for i, m in self.build_input_detectors()]
        out["purifiers"] = [{"id": i, **m.spec()} for i, m in self.build_purifiers()]
        reference = self.build_reference()
        out["reference"] = reference.spec() if reference is not None else None
        return out


_METRIC_GROUPS = {"victim", "twin", "extractor", "attack", "detection", "defense", "purification"}


def _build(kind: str, specs: list[dict[str, Any]]):
    built, seen = [], set()
    for i, spec in enumerate(specs):
        spec = dict(spec) if isinstance(spec, dict) else {"name": spec}
        ident = str(spec.pop("id", spec.get("name")))
        if ident in seen:
            raise ValueError(f"two {kind}s share the id {ident!r}: give one an 'id'")
        seen.add(ident)
        try:
            built.append((ident, create(kind, spec, where=f"{kind}s[{i}]")))
        except ConfigError as err:
            raise ValueError(str(err)) from None
    return built


def _check_seeds(where: str, method) -> None:
    """A method's seeds fit the 64 bits torch and the results database store."""
    for name in type(method).model_fields:
        value = getattr(method, name)
        if name.endswith("seed") and isinstance(value, int) and not 0 <= value < SEED_LIMIT:
            raise ValueError(f"{where}.{name}: a seed must be in [0, 2^63), got {value}")


def check_devices(config: ExperimentConfig) -> None:
    """Every training schedule's device exists on this machine (``device: cuda`` without CUDA is refused
    here, not as an assertion inside torch). Not for configs run elsewhere (Ray workers)."""
    from poisonlab.models import resolve_device

    for where, schedule in config.schedules():
        try:
            resolve_device(schedule.device)
        except ConfigError as err:
            raise ConfigError(f"{where}.device: {err}") from None


YAML_MAX_BYTES = 8 * 2**20
YAML_MAX_NODES = 10**6  # values of a document with its aliases expanded (a "billion laughs" has 10^9)


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """Values under ``node`` with every alias expanded (shared nodes counted where they are used);
    a node that contains itself is a ComposerError."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise yaml.composer.ComposerError(None, None, "an alias refers to itself", node.start_mark)
        return sizes[key]
    sizes[key] = -1
    children = node.value if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > YAML_MAX_NODES:
            break
    sizes[key] = total
    return total


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently), an
    alias that refers to itself and a document whose aliases expand to more than ``YAML_MAX_NODES`` values."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > YAML_MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand to more than {YAML_MAX_NODES} values", node.start_mark
            )
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (lines {first} and {line})", key_node.start_mark
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str = "config") -> Any:
    """Parse a YAML file safely (a key given twice is an error); a missing, unreadable or malformed file is a
    one-line ConfigError naming the line."""
    try:
        with open(path, "rb") as f:
            raw = f.read(YAML_MAX_BYTES + 1)
        if len(raw) > YAML_MAX_BYTES:
            raise ConfigError(f"{path}: larger than {YAML_MAX_BYTES // 2**20} MiB: not a {what} file")
        return yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: {what} is a folder, not a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read {what}: {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        problem = " ".join(str(getattr(err, "problem", None) or "").split())
        raise ConfigError(f"{path}: not valid YAML{line}" + (f": {problem}" if problem else "")) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def load_config(path: str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """Read and validate a YAML config (the bundled default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from None


def load_data(config: DataConfig):
    """(train, test or None): the data set as stored, before any split or subset; one with a single class
    is a DataError (a classifier needs two)."""
    if config.name in ("mnist", "cifar10"):
        loaded = (
            datalib.load_dataset(config.name, config.root, split="train"),
            datalib.load_dataset(config.name, config.root, split="test"),
        )
    else:
        loaded = (datalib.load_dataset(config.name, config.root), None)
    for part in loaded:
        if part is not None and len(np.unique(part.y.numpy())) < 2:
            where = config.root or config.name
            raise datalib.DataError(
                f"{where}: holds a single class ({len(part)} rows of {part.classes[int(part.y[0])]!r}); "
                "a classifier needs at least 2"
            )
    return loaded


def split_data(config: DataConfig, loaded, seed: int = 0):
    """(train, test, holdout) of data loaded by :func:`load_data` (see :func:`load_splits`)."""
    train_set, test_set = loaded
    if test_set is None:
        train_set, test_set = datalib.train_test_split(train_set, config.test_fraction, seed=seed)
    holdout = None
    if config.holdout_size is not None:
        if config.holdout_size >= len(train_set) - 1:
            raise ConfigError(
                f"data.holdout_size {config.holdout_size} leaves too few of {len(train_set)} training rows"
            )
        train_set, holdout = datalib.train_test_split(
            train_set, config.holdout_size / len(train_set), seed=seed + 1
        )
    if config.train_size is not None:
        if config.train_size > len(train_set):
            raise ConfigError(f"data.train_size {config.train_size} exceeds {len(train_set)} training rows")
        train_set = datalib.stratified_subset(train_set, config.train_size, seed=seed)
    if config.test_size is not None:
        if config.test_size > len(test_set):
            raise ConfigError(f"data.test_size {config.test_size} exceeds {len(test_set)} test rows")
        test_set = datalib.stratified_subset(test_set, config.test_size, seed=seed)
    return train_set, test_set, holdout


def load_splits(config: DataConfig, seed: int = 0):
    """(train, test, holdout) for a data config; sets without a test split are split stratified by ``seed``;
    ``holdout`` (None unless ``holdout_size``) is drawn from the training split before its subset, so it
    shares no row with ``train``."""
    return split_data(config, load_data(config), seed)


def check_data(config: ExperimentConfig, train_set, test_set, holdout=None, *, devices: bool = True) -> None:
    """Every data- and machine-dependent value of ``config`` against its loaded splits, before any training:
    the training split holds two classes, each attack and detector accepts the data (its ``check_data``:
    classes, budgets against class sizes, test rows), ``detect_weights`` fits the model, the devices exist
    (when ``devices``). A ConfigError / DataError names the key (``attacks[0]: ...``)."""
    if devices:
        check_devices(config)
    present = len(np.unique(train_set.y.numpy()))
    if present < 2:
        raise ConfigError(f"data: the training split holds {present} class(es); a classifier needs 2")
    for where, method in config.methods():
        check = getattr(method, "check_data", None)
        try:
            if check is not None and where.startswith(("attacks", "detectors", "reference")):
                check(train_set, test_set)
            num_test = getattr(method, "num_test", None)  # tracin_test would silently draw fewer
            if isinstance(num_test, int) and num_test > len(test_set):
                raise ConfigError(f"num_test {num_test} exceeds the {len(test_set)} rows of the test split")
        except PoisonlabError as err:
            raise type(err)(f"{where}: {err}") from None
    if config.detect_with == "weights":  # the file fits the model built for this data
        from poisonlab.purification.base import load_weights

        model = build_model(config.model, train_set.input_shape, train_set.num_classes, seed=0)
        load_weights(model, config.detect_weights, "detect_weights")


@dataclass
class TrialArtifacts:
    """What one trial leaves for the report: the poisoned set, the detection run and the scores."""

    poisoned: PoisonedDataset
    goal_ids: list[str]
    run: TrainRun  # the model the detectors read (detect_with)
    history: list[dict] = field(default_factory=list)  # the victim's training history
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    backdoors: dict[str, dict[str, Any]] = field(default_factory=dict)  # trigger and triggered examples
    input_detection: dict[str, dict[str, Any]] = field(default_factory=dict)  # STRIP entropies, boundary
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-step tables of the repairs
    purification: dict[str, dict[str, Any]] = field(default_factory=dict)  # examples, critic values
    targeted: dict[str, dict[str, Any]] = field(default_factory=dict)  # target, poisons before / after


@dataclass
class ExperimentResult:
    """Everything ``poisonlab run`` writes: ``results`` is results.json; ``first`` feeds the report."""

    results: dict[str, Any]
    first: TrialArtifacts


def _apply_attacks(train_set, attacks, generator, victim=None, test=None):
    """Craft every attack in turn on the released set so far; (poisoned set, attack ids)."""
    poisoned = PoisonedDataset(
        train_set,
        torch.zeros(0, dtype=torch.int64),
        train_set.subset([]),
        (),
        torch.zeros(0, dtype=torch.int64),
    )
    for _, attack in attacks:
        poisoned = poisoned.then(attack.craft(poisoned.data, generator=generator, victim=victim, test=test))
    return poisoned, [ident for ident, _ in attacks]


NET_KEYS = ("success", "success_rate")  # attack metrics also reported net of the clean twin


def _evaluate_attacks(prefix, attacks, goals, model, test_set, twin, metrics) -> None:
    """Each attack's metrics on ``model`` under ``prefix.<id>.``, with ``twin_<key>`` (the same target or
    trigger on the twin trained without poisons) and, for the success keys, ``net_<key>`` (model minus twin)
    when there is a twin."""
    for (ident, attack), goal in zip(attacks, goals):
        values = attack.evaluate(model, test_set, goal)
        for key, value in values.items():
            metrics[f"{prefix}.{ident}.{key}"] = value
        if twin is None:
            continue
        base = twin.get(ident)
        if base is None:
            base = twin[ident] = attack.evaluate(twin["model"], test_set, goal)
        for key, value in base.items():
            if prefix == "attack":  # once; the purifiers' net values subtract the same numbers
                metrics[f"{prefix}.{ident}.twin_{key}"] = value
            if key in NET_KEYS and key in values:
                metrics[f"{prefix}.{ident}.net_{key}"] = values[key] - value


def without_targets(test_set, goals):
    """The test set without the targets of targeted attacks (seed 003: accuracy excludes the target)."""
    rows = sorted({g.target_index for g in goals if g.target_index is not None})
    if not rows:
        return test_set
    keep = torch.ones(len(test_set), dtype=torch.bool)
    keep[rows] = False
    return test_set.subset(keep)


def _detection_run(config, data, victim, twin, fit, holdout, seed) -> TrainRun:
    """The model whose checkpoints and features the detectors read (``detect_with``)."""
    if config.detect_with == "victim":
        return victim
    if config.detect_with == "oracle_clean":
        return twin["run"]
    if config.detect_with == "holdout":
        return fit(holdout, "holdout model")
    from poisonlab.purification.base import load_weights
    from poisonlab.training import Checkpoint

    model = build_model(config.model, data.input_shape, data.num_classes, seed=seed)
    model = load_weights(model, config.detect_weights, "detect_weights").eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainRun(model, [Checkpoint(epoch=0, lr=1.0, state=state)])  # one checkpoint, unit step


def oracle_prefixes(config: ExperimentConfig) -> dict[str, str]:
    """Metric prefixes whose numbers read ground truth beyond scoring, with the reason for each."""
    out: dict[str, str] = {}
    if config.detect_with == "oracle_clean":
        reason = "detectors read a model trained on the true clean rows (detect_with: oracle_clean)"
        out["detection"] = reason
        if config.purifiers and config.reference and config.reference.get("name") != "simulated":
            out["purification"] = reason
    reference = config.build_reference()
    if config.purifiers and reference is not None and reference.oracle():
        out["purification"] = reference.oracle()
    for ident, defense in config.build_defenses():
        if defense.oracle():
            out[f"defense.{ident}"] = defense.oracle()
    return out


def run_trial(
    config: ExperimentConfig, train_set, test_set, trial: int, *, holdout=None, progress: bool = False
) -> tuple[dict[str, float], dict[str, float], TrialArtifacts]:
    """One trial: attack, train the victim and its clean twin, evaluate, detect, defend, purify.

    Returns (metrics, timings, artifacts). Accuracies are measured on the test set without the targets of
    targeted attacks; attack metrics come with the twin's and the net (victim minus twin) values.
    """
    seed = config.seed + trial
    generator = torch.Generator().manual_seed(seed)
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    attacks, detectors = config.build_attacks(), config.build_detectors()
    if config.detect_with == "holdout" and holdout is None:
        raise ConfigError("detect_with: holdout needs the held-out rows (data.holdout_size)")

    extractor = None
    if config.setting == "transfer":  # the clean pretrained model; only its head is retrained
        t0 = time.perf_counter()
        model = build_model(config.model, train_set.input_shape, train_set.num_classes, seed=seed)
        extractor = train(model, train_set, config.train, seed=seed, progress=progress, desc="extractor")
        extractor = extractor.model
        for name, p in extractor.named_parameters():
            p.requires_grad_(name.startswith("head."))
        timings["train_extractor"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    poisoned, goal_ids = _apply_attacks(train_set, attacks, generator, extractor, test_set)
    timings["attack"] = time.perf_counter() - t0
    eval_set = without_targets(test_set, poisoned.goals)
    if extractor is not None:
        metrics["extractor.clean_accuracy"] = accuracy(extractor, eval_set)
    metrics["attack.poison_count"] = float(len(poisoned.poison_idx))
    metrics["attack.poison_fraction"] = len(poisoned.poison_idx) / len(train_set)
    for gi, ident in enumerate(goal_ids):
        metrics[f"attack.{ident}.poison_count"] = float(poisoned.mask_of(gi).sum())
        linf, l2 = poisoned.perturbation(gi)
        if len(linf):  # measured from the clean originals
            metrics[f"attack.{ident}.perturbation_linf"] = float(linf.max())
            metrics[f"attack.{ident}.perturbation_l2"] = float(l2.mean())

    def fit(data, desc):
        if extractor is not None:
            head = config.head_train or config.train
            return train_head(
                extractor, data, head, seed=seed, eval_data=test_set, progress=progress, desc=desc
            )
        model = build_model(config.model, data.input_shape, data.num_classes, seed=seed)
        return train(model, data, config.train, seed=seed, eval_data=test_set, progress=progress, desc=desc)

    t0 = time.perf_counter()
    victim = fit(poisoned.data, f"trial {trial + 1}: victim")
    timings["train_victim"] = time.perf_counter() - t0
    metrics["victim.clean_accuracy"] = accuracy(victim.model, eval_set)
    metrics["victim.train_accuracy_released"] = accuracy(victim.model, poisoned.data)
    twin = None  # the victim's twin: trained identically on the clean rows, for net effects
    if config.baseline or config.detect_with == "oracle_clean":
        t0 = time.perf_counter()
        run = fit(poisoned.clean_data(), f"trial {trial + 1}: twin without poisons")
        twin = {"run": run, "model": run.model}
        timings["train_twin"] = time.perf_counter() - t0
        metrics["twin.clean_accuracy"] = accuracy(run.model, eval_set)
        metrics["attack.accuracy_drop"] = metrics["twin.clean_accuracy"] - metrics["victim.clean_accuracy"]
    _evaluate_attacks("attack", attacks, poisoned.goals, victim.model, test_set, twin, metrics)

    t0 = time.perf_counter()
    run = _detection_run(config, poisoned.data, victim, twin, fit, holdout, seed)
    timings["detection_model"] = time.perf_counter() - t0
    artifacts = TrialArtifacts(poisoned, goal_ids, run, history=victim.history)
    is_poison = poisoned.is_poisoned.numpy()
    for ident, detector in detectors:
        t0 = time.perf_counter()
        scores = detector.scores(poisoned.data, run, test=test_set, generator=generator)
        timings[f"detect.{ident}"] = time.perf_counter() - t0
        scores = np.asarray(scores, dtype=np.float64)
        thr = (
            mad_threshold(scores, config.threshold_k)
            if config.threshold == "mad"
            else float(config.threshold)
        )
        artifacts.scores[ident], artifacts.thresholds[ident] = scores, thr
        for key, value in detection_metrics(scores, is_poison, thr).items():
            metrics[f"detection.{ident}.{key}"] = value
        if len(poisoned.goals) > 1:  # each attack's poisons against the clean rows
            for gi, gid in enumerate(goal_ids):
                keep = ~is_poison | poisoned.mask_of(gi).numpy()
                per_attack = detection_metrics(scores[keep], is_poison[keep], thr)
                for key in ("auroc", "recall", "recall_at_1pct", "recall_at_5pct", "recall_at_budget"):
                    if key in per_attack:
                        metrics[f"detection.{ident}.{gid}.{key}"] = per_attack[key]
    _backdoor_examples(artifacts, attacks, test_set)
    _targeted_examples(artifacts, attacks)
    _defend(config, victim, twin, attacks, poisoned, eval_set, seed, metrics, timings, artifacts)
    _purify(config, fit, victim, run, twin, attacks, poisoned, eval_set, test_set, generator, metrics,
            timings, artifacts)  # fmt: skip
    return metrics, timings, artifacts


def _first_backdoor(attacks, poisoned: PoisonedDataset):
    """(attack, goal) of the first backdoor attack of the config, or (None, None)."""
    for (_, attack), goal in zip(attacks, poisoned.goals):
        if isinstance(attack, BackdoorAttack):
            return attack, goal
    return None, None


def _targeted_examples(artifacts: TrialArtifacts, attacks, count: int = 5) -> None:
    """The report's view of each targeted attack: the target, then a few poisons before and after crafting."""
    poisoned = artifacts.poisoned
    classes = poisoned.data.classes
    for gi, ((ident, attack), goal) in enumerate(zip(attacks, poisoned.goals)):
        if goal.target_x is None:
            continue
        rows = poisoned.mask_of(gi).nonzero().flatten()[:count]
        orig = {int(i): j for j, i in enumerate(poisoned.poison_idx.tolist())}
        target = goal.target_x.cpu()
        before = torch.cat([target, poisoned.original.x[[orig[int(i)] for i in rows]]])
        after = torch.cat([target, poisoned.data.x[rows]])
        captions = [f"target {classes[int(goal.target_y[0])]} -> {classes[goal.adversarial_label]}"]
        captions += [f"#{int(i)} {classes[poisoned.data.y[i]]}" for i in rows]
        artifacts.targeted[ident] = {"name": attack.name, "before": before.numpy(), "after": after.numpy(),
                                     "captions": captions}  # fmt: skip


def _backdoor_examples(artifacts: TrialArtifacts, attacks, test_set, count: int = 6) -> None:
    """The report's trigger picture, a few poisoned rows and a few triggered test images per backdoor."""
    poisoned = artifacts.poisoned
    for gi, ((ident, attack), goal) in enumerate(zip(attacks, poisoned.goals)):
        if not isinstance(attack, BackdoorAttack) or goal.trigger is None:
            continue
        rows = poisoned.mask_of(gi).nonzero().flatten()[:count]
        orig = {int(i): j for j, i in enumerate(poisoned.poison_idx.tolist())}
        classes = poisoned.data.classes
        captions = [
            f"#{int(i)} given {classes[poisoned.data.y[i]]} / orig "
            f"{classes[poisoned.original.y[orig[int(i)]]]}"
            for i in rows
        ]
        trig = attack.triggered(test_set.subset(torch.arange(min(len(test_set), 200))), goal)
        artifacts.backdoors[ident] = {
            "trigger": goal.trigger.numpy(),
            "poisons": poisoned.data.x[rows].numpy(),
            "originals": poisoned.original.x[[orig[int(i)] for i in rows]].numpy(),
            "captions": captions,
            "triggered": trig.x[:count].numpy(),
            "triggered_captions": [f"test {classes[c]} + trigger" for c in trig.y[:count].tolist()],
        }


def _defend(config, victim, twin, attacks, poisoned, test_set, seed, metrics, timings, artifacts) -> None:
    """Input detectors and model defenses on the victim, with a seeded defender's share of the test set.

    ``defense.<id>.net_attack_success`` is the repaired model's success minus the twin's on the same rows.
    """
    defenses, input_detectors = config.build_defenses(), config.build_input_detectors()
    if not defenses and not input_detectors:
        return
    if len(test_set) < 4:
        raise ConfigError(f"defenses need a test set of at least 4 rows, got {len(test_set)}")
    perm = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed))
    n_def = min(len(test_set) - 2, max(2, round(config.defender_fraction * len(test_set))))
    defender, held = test_set.subset(perm[:n_def]), test_set.subset(perm[n_def:])
    attack, goal = _first_backdoor(attacks, poisoned)
    trig_held = attack.triggered(held, goal).x if attack is not None else held.x[:0]
    for ident, detector in input_detectors:
        t0 = time.perf_counter()
        values, entropies = detector.evaluate(
            victim.model, defender, trig_held, torch.Generator().manual_seed(seed)
        )
        timings[f"input_detect.{ident}"] = time.perf_counter() - t0
        for key, value in values.items():
            metrics[f"{ident}.{key}"] = value
        artifacts.input_detection[ident] = {**entropies, "boundary": values["boundary"], "frr": detector.frr}
    for ident, defense in defenses:
        t0 = time.perf_counter()
        target = attack.target if attack is not None else None
        trig_def = attack.triggered(defender, goal).x if attack is not None else None
        repair = defense.repair(victim.model, defender, triggered=trig_def, target=target, seed=seed)
        timings[f"defense.{ident}"] = time.perf_counter() - t0
        prefix = f"defense.{ident}"
        for when, model in (("_before", victim.model), ("", repair.model)):
            metrics[f"{prefix}.clean_accuracy{when}"] = accuracy(model, held)
            if attack is not None:
                success = attack.evaluate(model, held, goal).get("success_rate", float("nan"))
                metrics[f"{prefix}.attack_success{when}"] = success
        if attack is not None and twin is not None:
            on_twin = attack.evaluate(twin["model"], held, goal).get("success_rate", float("nan"))
            metrics[f"{prefix}.twin_attack_success"] = on_twin
            metrics[f"{prefix}.net_attack_success"] = metrics[f"{prefix}.attack_success"] - on_twin
        kept = repair.steps[repair.info.get("kept_step", len(repair.steps) - 1)] if repair.steps else {}
        if "pruned_fraction" in kept:
            metrics[f"{prefix}.pruned_fraction"] = kept["pruned_fraction"]
        metrics[f"{prefix}.steps"] = float(max(0, len(repair.steps) - 1))
        artifacts.defenses[ident] = {"name": defense.name, "steps": repair.steps, **repair.info,
                                     "max_accuracy_drop": getattr(defense, "max_accuracy_drop", None),
                                     "target_success": getattr(defense, "target_success", None)}  # fmt: skip


def _purify(
    config, fit, victim, run, twin, attacks, poisoned, eval_set, test_set, generator, metrics, timings,
    artifacts,
):
    """Seed 003: select a reference set, purify the rest with each purifier, retrain, measure.

    The reference detector reads ``run``'s features (k-NN detectors) or, for the simulated oracle, the true
    poison mask. Friendly noise keeps the victim's outputs and Mendata's extractor is the victim (the model
    trained on the released rows, Mendata's ``extractor_source: released``) unless it loads
    ``extractor_weights`` or asks for ``extractor_source: reference``. Metrics: ``purification.reference.*``
    (size, poisons, precision, recall), ``purification.<id>.clean_accuracy`` and
    ``purification.<id>.<attack id>.<key>`` (e.g. ``success_rate``).
    """
    from poisonlab.purification import reference_quality, select_reference

    purifiers = config.build_purifiers()
    if not purifiers:
        return
    t0 = time.perf_counter()
    ref = select_reference(
        config.build_reference(), poisoned.data, run=run, is_poisoned=poisoned.is_poisoned, test=test_set,
        generator=generator,
    )  # fmt: skip
    timings["purify.reference"] = time.perf_counter() - t0
    for key, value in reference_quality(ref, poisoned.is_poisoned).items():
        metrics[f"purification.reference.{key}"] = value
    untrusted = (~ref).nonzero().flatten()
    flagged = poisoned.is_poisoned[untrusted]
    shown = torch.cat([untrusted[flagged], untrusted[~flagged]])[:6]  # poisoned untrusted rows first
    for ident, purifier in purifiers:
        t0 = time.perf_counter()
        own = getattr(purifier, "extractor_source", None) == "reference" or getattr(
            purifier, "extractor_weights", None
        )
        extractor = None if own else victim.model
        data = poisoned.data
        out = purifier.purify(data, ref, generator=generator, model=victim.model, extractor=extractor)
        timings[f"purify.{ident}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = fit(out.data, f"purified: {ident}").model
        timings[f"purify.{ident}.retrain"] = time.perf_counter() - t0
        metrics[f"purification.{ident}.clean_accuracy"] = accuracy(model, eval_set)
        metrics[f"purification.{ident}.rows"] = float(len(out.data))
        _evaluate_attacks(f"purification.{ident}", attacks, poisoned.goals, model, test_set, twin, metrics)
        where = {int(r): i for i, r in enumerate(out.kept.tolist())}
        rows = [int(r) for r in shown if int(r) in where]
        classes = poisoned.data.classes
        artifacts.purification[ident] = {
            "name": purifier.name,
            "before": poisoned.data.x[rows].numpy(),
            "after": out.data.x[[where[r] for r in rows]].numpy() if rows else None,
            "captions": [
                f"#{r} {classes[poisoned.data.y[r]]}" + (" (poison)" if poisoned.is_poisoned[r] else "")
                for r in rows
            ],
            "critic_values": out.info.get("critic_values"),
        }


def run_experiment(config: ExperimentConfig, *, progress: bool = False, splits=None) -> ExperimentResult:
    """Run every trial of ``config`` and gather the results; ``splits``: (train, test, holdout) already
    loaded by :func:`load_splits` and checked by :func:`check_data` (else both are done here first)."""
    start = time.perf_counter()
    t0 = time.perf_counter()
    if splits is None:
        splits = load_splits(config.data, config.seed)
        check_data(config, *splits)
    train_set, test_set, holdout = splits
    timings = {"load_data": time.perf_counter() - t0}
    per_trial, first = [], None
    for trial in range(config.trials):
        metrics, trial_timings, artifacts = run_trial(
            config, train_set, test_set, trial, holdout=holdout, progress=progress
        )
        per_trial.append(metrics)
        for key, value in trial_timings.items():
            timings[key] = timings.get(key, 0.0) + value
        first = first or artifacts
    mean, std = aggregate(per_trial)
    oracles = oracle_prefixes(config)
    se = standard_errors(per_trial, mean, std)
    timings["total"] = time.perf_counter() - start
    results = {
        "name": config.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.resolved(),
        "trials": config.trials,
        "data": {
            "train_rows": len(train_set),
            "test_rows": len(test_set),
            "input_shape": list(train_set.input_shape),
        },
        "metrics": mean,
        "metrics_std": std,
        "metrics_se": se,
        "per_trial": per_trial,
        "history": first.history,
        **({"defenses": first.defenses} if first.defenses else {}),
        "timings": timings,
        "oracles": oracles,
        "oracle_metrics": sorted(k for k in mean if is_oracle_metric(k, oracles)),
        "versions": environment(),
    }
    return ExperimentResult(results, first)


def report_views(result: ExperimentResult, top_k: int):
    """The report's view of each detector in the first trial."""
    from poisonlab.report import DetectorView

    art = result.first
    poisoned = art.poisoned
    data, classes = poisoned.data, poisoned.data.classes
    original_y = data.y.clone()
    original_y[poisoned.poison_idx] = poisoned.original.y
    is_poison = poisoned.is_poisoned.numpy()
    groups = {"clean": ~is_poison}
    for gi, gid in enumerate(art.goal_ids):
        groups[gid] = poisoned.mask_of(gi).numpy()
    views = []
    for ident, scores in art.scores.items():
        top = np.argsort(-scores, kind="stable")[:top_k]
        captions = [
            f"#{i} given {classes[data.y[i]]} / orig {classes[original_y[i]]}"
            + (" (poison)" if is_poison[i] else "")
            for i in top
        ]
        views.append(
            DetectorView(
                name=ident,
                scores=scores,
                groups=groups,
                threshold=art.thresholds[ident],
                top_images=data.x[torch.as_tensor(top, dtype=torch.int64)].numpy(),
                top_captions=captions,
                top_poisoned=is_poison[top],
            )
        )
    return views


def report_figures(result: ExperimentResult) -> dict[str, bytes]:
    """The report's extra figures of the first trial (triggers, STRIP entropies, fine-pruning curves,
    purified examples and Mendata's critic values)."""
    from poisonlab.report import backdoor_figures, purification_figures, purification_png

    art = result.first
    figures = backdoor_figures(art.backdoors, art.input_detection, art.defenses)
    figures.update(purification_figures(art.purification))
    for ident, t in art.targeted.items():
        figures[f"{ident}: the target and poisons before / after crafting"] = purification_png(
            t["name"], t["before"], t["after"], t["captions"]
        )
    return figures
