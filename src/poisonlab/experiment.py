"""Experiments: a validated config -> data -> attacks -> victim -> detectors -> metrics and report views.

One ``seed`` fixes every random choice: trial ``t`` uses ``seed + t`` for the attack's choices, the
model's initial weights, the training order and the detectors' draws, so a config repeats exactly on
the CPU. Metrics are flat dotted names (``victim.clean_accuracy``, ``detection.tracin_self.auroc``),
averaged over trials with their standard deviation.

Model defenses (``defenses:``, e.g. fine-pruning) and input-time detectors (``input_detectors:``, STRIP)
get a seeded share ``defender_fraction`` of the test set as the defender's clean data and are measured on
the rest, against the first backdoor attack of the config: ``defense.<id>.clean_accuracy`` and
``defense.<id>.attack_success`` (with ``_before``), ``<id>.far`` / ``<id>.frr`` (e.g. ``strip.far``).
Training-time defenses (``training_defenses:``, e.g. k-NN removal, EPIC) each train a defended victim on the
released set: ``training_defense.<id>.clean_accuracy``, ``training_defense.<id>.<attack id>.<key>`` (with
the net value) and the rows they removed scored against the poison mask (``removal_precision`` / ``_recall``;
``downweighting_*`` for the rows a reweighting defense weighs below 1/2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from poisonlab import data as datalib
from poisonlab.attacks import Attack
from poisonlab.defenses import Defense, TrainingDefense
from poisonlab.detection import Detector
from poisonlab.detection.input_time import InputDetector
from poisonlab.errors import ConfigError, PoisonlabError
from poisonlab.metrics import aggregate, is_oracle_metric, standard_errors
from poisonlab.models import MODELS, build_model
from poisonlab.purification import Purifier
from poisonlab.registry import create, format_validation_error
from poisonlab.results import environment
from poisonlab.training import TrainConfig
from poisonlab.trial import TrialArtifacts, run_trial, without_targets  # noqa: F401  (the runner's API)

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
    training_defenses: list[dict[str, Any]] = Field(
        default_factory=list,
        description="training-time defenses (knn_removal, epic, ...): each trains a defended victim on the "
        "released set beside the undefended one",
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
        recording = [d.name for _, d in self.build_detectors() if d.records_training]
        if recording and self.detect_with != "victim":
            raise ValueError(f"detector {recording[0]} reads the victim's own training: detect_with victim")
        trainers = [a.name for _, a in self.build_attacks() if a.trains_victim]
        if trainers and (self.setting == "transfer" or len(trainers) > 1):
            raise ValueError(
                f"attack {trainers[0]} trains the whole victim itself: one such attack, setting from_scratch"
            )
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
            ("training_defenses", self.build_training_defenses()),
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

    def build_training_defenses(self) -> list[tuple[str, TrainingDefense]]:
        """(id, defense) for each configured training-time defense, validated."""
        return _build("training_defense", self.training_defenses)

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
        out["training_defenses"] = [{"id": i, **m.spec()} for i, m in self.build_training_defenses()]
        out["input_detectors"] = [{"id": i, **m.spec()} for i, m in self.build_input_detectors()]
        out["purifiers"] = [{"id": i, **m.spec()} for i, m in self.build_purifiers()]
        reference = self.build_reference()
        out["reference"] = reference.spec() if reference is not None else None
        return out


_METRIC_GROUPS = {
    "victim", "twin", "extractor", "attack", "detection", "defense", "training_defense", "purification"
}  # fmt: skip


def _build(kind: str, specs: list[dict[str, Any]]):
    built, seen = [], set()
    for i, spec in enumerate(specs):
        spec = dict(spec) if isinstance(spec, dict) else {"name": spec}
        ident = str(spec.pop("id", spec.get("name")))
        if "." in ident or not ident:
            raise ValueError(
                f"{kind}s[{i}]: id {ident!r} must be non-empty without '.' (metric names are dotted)"
            )
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
        try:
            if where.startswith(("attacks", "detectors", "training_defenses", "reference")):
                method.check_data(train_set, test_set)
        except PoisonlabError as err:
            raise type(err)(f"{where}: {err}") from None
    if config.detect_with == "weights":  # the file fits the model built for this data
        from poisonlab.purification.base import load_weights

        model = build_model(config.model, train_set.input_shape, train_set.num_classes, seed=0)
        load_weights(model, config.detect_weights, "detect_weights")


@dataclass
class ExperimentResult:
    """Everything ``poisonlab run`` writes: ``results`` is results.json; ``first`` feeds the report."""

    results: dict[str, Any]
    first: TrialArtifacts


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
    for ident, defense in config.build_training_defenses():
        if defense.oracle():
            out[f"training_defense.{ident}"] = defense.oracle()
    return out


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
        "success_keys": {i: a.success_key for i, a in config.build_attacks() if a.success_key},
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
    """The report's extra figures of the first trial, each drawn by the method that left the record
    (triggers, targets and poisons, STRIP entropies, fine-pruning curves, purified examples)."""
    return result.first.figures()
