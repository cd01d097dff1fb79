"""Experiment matrices: a base experiment plus axes to sweep, expanded into validated cells.

A matrix file (YAML)::

    name: digits_label_flip
    base: {data: {name: digits}, model: mlp, attacks: [{name: label_flip_random, fraction: 0.1}], ...}
    trials: 5                       # per cell; trial t is seeded by seed + t
    axes:
      fraction: {key: attacks[0].fraction, values: [0.05, 0.1, 0.2]}
      victim:                       # named levels, each a set of overrides
        levels:
          logreg: {model: logreg}
          mlp: {model: mlp, train.epochs: 10}
    tables:
      - {metric: "detection.{detector}.auroc", rows: detector, columns: fraction}
    reference: {source: "Smith et al. 2020, Table 1", setting: "ResNet-18, 50 epochs"}  # optional

A table may hold the paper's numbers in ``paper``: row label (its row labels joined by " / ") -> a value
in the table's shown units, or -> {column label: value}; they are shown beside ours ("ours | paper").

Every cell (one level of every axis) is validated as an :class:`ExperimentConfig` before anything runs.
A cell's identity is a hash of its resolved config (without ``name`` and ``trials``), so a rerun finds
the trials it already stored and a changed parameter makes a new cell.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from poisonlab.errors import ConfigError
from poisonlab.experiment import ExperimentConfig, check_name, read_yaml
from poisonlab.registry import format_validation_error

# Config keys that do not change what a trial computes: left out of a cell's identity.
IDENTITY_EXCLUDED = ("name", "trials", "report_top_k")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_SEPARATORS = re.compile(r"[/\\\x00]|\.\.")  # not in a cell's name (a plain file name)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class AxisSpec(BaseModel):
    """One axis: ``key`` + ``values`` (one config key swept) or ``levels`` (label -> overrides)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(None, description="config key swept, dotted: attacks[0].fraction or train.lr")
    values: list[Any] | None = Field(None, description="the values of `key`, one level each")
    labels: list[str] | None = Field(None, description="names of the values in tables (default: the value)")
    levels: dict[str, dict[str, Any]] | None = Field(None, description="label -> {config key: value, ...}")

    @model_validator(mode="after")
    def _one_form(self):
        if self.levels is not None:
            if self.key is not None or self.values is not None or self.labels is not None:
                raise ValueError("give either key and values, or levels, not both")
            if not self.levels:
                raise ValueError("levels is empty")
            return self
        if self.key is None or self.values is None:
            raise ValueError("an axis needs key and values, or levels")
        if not self.values:
            raise ValueError("values is empty")
        if self.labels is not None and len(self.labels) != len(self.values):
            raise ValueError(f"labels has {len(self.labels)} entries for {len(self.values)} values")
        labels = self.level_labels()
        if len(set(labels)) != len(labels):
            raise ValueError(f"two values share a label: {labels}")
        return self

    def level_labels(self) -> list[str]:
        """The label of each level, in order."""
        if self.levels is not None:
            return list(self.levels)
        if self.labels is not None:
            return [str(v) for v in self.labels]
        return [_label_of(v) for v in self.values]

    def expand(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, {config key: value}) for each level."""
        if self.levels is not None:
            return [(label, dict(overrides or {})) for label, overrides in self.levels.items()]
        return [(label, {self.key: value}) for label, value in zip(self.level_labels(), self.values)]


def _label_of(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:
        return str(value.get("id", value["name"]))
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return "+".join(str(v.get("id", v["name"])) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


class MatchedSpec(BaseModel):
    """A column (or row) that takes, for each setting of the other dimensions, the candidate level closest to
    a reference level on another metric: seed 003's Rand* and Frien*, the noise "searched such that their
    accuracy is as close as possible to Mendata's". The choice reads the mean of ``by`` over the trials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(description="name of the new level, e.g. Rand*")
    dimension: str = Field(description="the placeholder or axis whose levels are the candidates")
    among: list[str] = Field(min_length=1, description="candidate levels, e.g. Rand(1/10), Rand(3/10)")
    to: str = Field(description="the level matched, e.g. Mendata")
    by: str = Field(description="the metric compared, with the same placeholders, e.g. {purifier} accuracy")


class TableSpec(BaseModel):
    """A table: a metric (``{name}`` placeholders become dimensions) laid out by rows and columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="metric name, e.g. detection.{detector}.auroc")
    title: str | None = None
    rows: list[str] = Field(default_factory=list, description="axes / placeholders along the rows")
    columns: list[str] = Field(default_factory=list, description="axes / placeholders along the columns")
    pool: list[str] = Field(default_factory=list, description="axes whose levels are pooled into one cell")
    scale: float = Field(1.0, description="multiply values (100 for percentages)")
    digits: int = Field(3, ge=0, le=10, description="decimals shown")
    count: bool = Field(False, description="show a 0/1 metric as 'successes / trials' (e.g. detected 4 / 5)")
    plot: bool = True
    paper: dict[str, float | str | dict[str, float | str]] = Field(
        default_factory=dict,
        description="the paper's numbers: row label -> value, or row label -> {column label: value}",
    )

    matched: list[MatchedSpec] = Field(
        default_factory=list, description="levels chosen per setting by the closest value of another metric"
    )

    @field_validator("rows", "columns", "pool", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="after")
    def _check_matched(self):
        for m in self.matched:
            if sorted(_PLACEHOLDER.findall(m.by)) != sorted(self.placeholders()):
                raise ValueError(
                    f"matched {m.label!r}: by {m.by!r} must have the placeholders of {self.metric!r}"
                )
        return self

    def placeholders(self) -> list[str]:
        return _PLACEHOLDER.findall(self.metric)

    def pattern(self) -> re.Pattern:
        """A regex matching the metric names of this table, one named group per placeholder."""
        out, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.metric):
            out.append(re.escape(self.metric[pos : m.start()]))
            out.append(f"(?P<{m.group(1)}>[^.]+)")
            pos = m.end()
        out.append(re.escape(self.metric[pos:]))
        return re.compile("^" + "".join(out) + "$")


class ReferenceSpec(BaseModel):
    """The paper a matrix reproduces: where its numbers come from and the setting they were measured in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, description="the paper and its table, e.g. 'Smith 2020, Table 1'")
    setting: str = Field("", description="the paper's setting in words, where it differs from ours")


class MatrixSpec(BaseModel):
    """A whole matrix file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = Field("", description="heading of the result file (default: the description)")
    description: str = ""
    notes: str = Field("", description="Markdown for the result file: our settings, differences, caveats")
    reference: ReferenceSpec | None = None
    base: dict[str, Any] | str = Field(default_factory=dict, description="experiment config or its path")
    trials: int | None = Field(None, ge=1, description="trials per cell (default: the base's)")
    axes: dict[str, AxisSpec] = Field(default_factory=dict)
    tables: list[TableSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _tables(self):
        for i, table in enumerate(self.tables):
            holders = table.placeholders()
            if len(set(holders)) != len(holders):
                raise ValueError(f"tables[{i}].metric: a placeholder appears twice in {table.metric!r}")
            clash = set(holders) & set(self.axes)
            if clash:
                raise ValueError(f"tables[{i}].metric: placeholder {sorted(clash)[0]!r} is also an axis name")
            known = set(self.axes) | set(holders)
            seen: set[str] = set()
            for where in ("rows", "columns", "pool"):
                for dim in getattr(table, where):
                    if dim not in known:
                        raise ValueError(
                            f"tables[{i}].{where}: {dim!r} is neither an axis nor a placeholder of the metric"
                            f" (known: {', '.join(sorted(known)) or 'none'})"
                        )
                    if dim in seen:
                        raise ValueError(f"tables[{i}].{where}: {dim!r} is used twice")
                    if where == "pool" and dim in holders:
                        raise ValueError(
                            f"tables[{i}].pool: {dim!r} is a placeholder; only axes can be pooled"
                        )
                    seen.add(dim)
        return self


@dataclass(frozen=True)
class Cell:
    """One cell of a matrix: a level of every axis, its validated config and its identity."""

    position: int
    labels: dict[str, str]
    config: ExperimentConfig
    cell_id: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items()) or "base"


@dataclass(frozen=True)
class Matrix:
    """A matrix spec with its expanded cells; ``source`` is the file it came from (or '<memory>')."""

    spec: MatrixSpec
    cells: list[Cell]
    source: str = "<memory>"

    @property
    def name(self) -> str:
        return self.spec.name

    def trial_count(self) -> int:
        return sum(c.config.trials for c in self.cells)


def parse_key(key: str) -> list[str | int]:
    """``attacks[0].fraction`` or ``attacks.0.fraction`` -> ['attacks', 0, 'fraction']."""
    parts: list[str | int] = []
    for chunk in key.split("."):
        if not chunk:
            raise ValueError(f"empty part in key {key!r}")
        matched = _PATH_PART.findall(chunk)
        if "".join(a or f"[{b}]" for a, b in matched) != chunk:
            raise ValueError(f"cannot read key {key!r}")
        for name, index in matched:
            parts.append(int(index) if index else (int(name) if name.isdigit() else name))
    return parts


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted ``key`` in a nested config (creating mappings on the way); lists must hold the index."""
    parts = parse_key(key)
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = _format_key(parts[:depth]) or "the config"
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ValueError(f"{where} is not a list")
            if not -len(node) <= part < len(node):
                raise ValueError(f"{where} has {len(node)} item(s), no index {part}")
            if not last and isinstance(node[part], str):  # a method given by its name alone
                node[part] = {"name": node[part]}
        elif not isinstance(node, dict):
            raise ValueError(f"{where} is not a mapping")
        elif not last and node.get(part) is None:
            node[part] = [] if isinstance(parts[depth + 1], int) else {}
        if last:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def _format_key(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def cell_identity(config: ExperimentConfig) -> str:
    """Hash of the resolved config without ``name``/``trials``: equal configs share stored trials."""
    resolved = {k: v for k, v in config.resolved().items() if k not in IDENTITY_EXCLUDED}
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_matrix(path: str | Path, *, trials: int | None = None) -> Matrix:
    """Read a matrix YAML file and expand it (``trials`` overrides the file's)."""
    path = Path(path)
    raw = read_yaml(path, "matrix")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a matrix is a mapping of keys, got {type(raw).__name__}")
    return build_matrix(raw, source=path, trials=trials)


def build_matrix(
    raw: dict[str, Any], *, source: str | Path = "<memory>", trials: int | None = None
) -> Matrix:
    """Validate a matrix mapping and expand every cell; the first invalid cell raises a ConfigError."""
    where = str(source)
    raw = dict(raw)
    if trials is not None:
        raw["trials"] = trials
    try:
        spec = MatrixSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{where}: {format_validation_error(err).lstrip(': ')}") from None
    base = spec.base
    if isinstance(base, str):
        base_path = Path(base)
        if not base_path.is_absolute() and where != "<memory>":
            base_path = Path(where).parent / base_path
        base = read_yaml(base_path, "base config")
        if base is None:
            base = {}
        if not isinstance(base, dict):
            raise ConfigError(f"{base_path}: a config is a mapping of keys, got {type(base).__name__}")
    cells, errors = [], []
    axes = [[(name, label, over) for label, over in axis.expand()] for name, axis in spec.axes.items()]
    for position, combo in enumerate(itertools.product(*axes)):
        labels = {name: label for name, label, _ in combo}
        label = ", ".join(f"{k}={v}" for k, v in labels.items()) or "base"
        config = copy.deepcopy(base)
        try:
            for _, _, overrides in combo:
                for key, value in overrides.items():
                    try:
                        set_key(config, key, value)
                    except ValueError as err:
                        raise ConfigError(f"key {key!r}: {err}") from None
            config["name"] = f"{spec.name}[{_SEPARATORS.sub('_', label)}]" if labels else spec.name
            if spec.trials is not None:
                config["trials"] = spec.trials
            try:
                validated = ExperimentConfig.model_validate(config)
            except ValidationError as err:
                raise ConfigError(format_validation_error(err).lstrip(": ")) from None
        except ConfigError as err:
            errors.append(f"cell {label}: {err}")
            continue
        cell = Cell(position, labels, validated, cell_identity(validated))
        twin = next((c for c in cells if c.cell_id == cell.cell_id), None)
        if twin is not None:
            errors.append(f"cell {label}: same experiment as cell {twin.label}; make the levels differ")
            continue
        cells.append(cell)
    if errors:
        more = f" (and {len(errors) - 1} more invalid cell(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{where}: {errors[0]}{more}")
    return Matrix(spec, cells, where)


def check_matrix_data(matrix: Matrix, *, devices: bool = True) -> None:
    """Check every cell's data-dependent values (classes, budgets, test rows, patch sizes) against its data,
    and its devices against this machine (``devices``; not for trials run on other machines), before
    anything runs: each distinct data config is loaded once; every invalid cell is counted in the one
    ConfigError, which names the first."""
    import json

    from poisonlab.errors import PoisonlabError
    from poisonlab.experiment import check_data, load_data, split_data

    loaded: dict[str, Any] = {}
    errors = []
    for cell in matrix.cells:
        config = cell.config
        key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
        try:
            if key not in loaded:
                try:
                    loaded[key] = load_data(config.data)
                except PoisonlabError as err:
                    loaded[key] = err
            if isinstance(loaded[key], PoisonlabError):
                raise loaded[key]
            check_data(config, *split_data(config.data, loaded[key], config.seed), devices=devices)
        except PoisonlabError as err:
            errors.append(f"cell {cell.label}: {err}")
    if errors:
        more = f" (and {len(errors) - 1} more invalid cell(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{matrix.source}: {errors[0]}{more}")
