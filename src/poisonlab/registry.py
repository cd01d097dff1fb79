"""Every method (attack, detector, ...) registered by name with typed, documented parameters.

A method is a frozen pydantic model whose fields are its parameters, so configs, ``poisonlab list`` and
the report all read the same source, and a bad parameter is rejected with a message naming it.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from poisonlab.errors import ConfigError

REGISTRY: dict[str, dict[str, type[Method]]] = {}
_PACKAGES = ("poisonlab.attacks", "poisonlab.detection", "poisonlab.defenses", "poisonlab.purification")


class Method(BaseModel):
    """Base of every registered method; its fields are its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def oracle(self) -> str | None:
        """Why this method, as configured, reads ground truth beyond scoring (an evaluation-only oracle whose
        metrics are marked as such), or None for a method a real defender or attacker can run."""
        return None

    def spec(self) -> dict[str, Any]:
        """The resolved parameters with the method's name, as written in a config."""
        return {"name": self.name, **self.model_dump(mode="json")}

    def figures(self, ident: str, record: dict[str, Any]) -> dict[str, bytes]:
        """The report's figures (title -> PNG) of ``record``, what this method left in the first trial
        (configured as ``ident``); none by default. Rendered only when a report is written."""
        return {}


def register(kind: str, name: str):
    """Class decorator: register ``cls`` as method ``name`` of ``kind``."""

    def decorate(cls: type[Method]) -> type[Method]:
        cls.kind, cls.name = kind, name
        REGISTRY.setdefault(kind, {})[name] = cls
        return cls

    return decorate


def _load_all() -> None:
    for package in _PACKAGES:
        importlib.import_module(package)


def methods(kind: str) -> dict[str, type[Method]]:
    """All registered methods of ``kind`` by name."""
    _load_all()
    return dict(REGISTRY.get(kind, {}))


_UNION_TAG = re.compile(r"^(float|int|str|bool|none|function-\w+)$|\[")


def format_validation_error(err: ValidationError, where: str = "") -> str:
    """One line naming each offending key and what is wrong with it (the alternatives of a union joined)."""
    found: dict[str, tuple[list[str], str]] = {}
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif not _UNION_TAG.search(str(part)):
                loc += f".{part}" if loc else str(part)
        msg = e["msg"].removeprefix("Value error, ")
        got = ""
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], dict | list) and repr(e["input"]) not in msg:
            got = f" (got {e['input']!r})"
        key = f"{where}{'.' if where and loc else ''}{loc}"
        msgs, _ = found.setdefault(key, ([], got))
        msgs.append(msg.removeprefix("Input should be ") if msgs else msg)
    parts = []
    for key, (msgs, got) in found.items():
        parts.append((f"{key}: " if key else "") + " or ".join(dict.fromkeys(msgs)) + got)
    return "; ".join(parts)


def create(kind: str, spec: dict[str, Any] | str, where: str = "") -> Method:
    """Build the method a config names: ``{"name": ..., **params}`` or just the name."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where or kind}: expected a mapping with a 'name' key, got {spec!r}")
    params = dict(spec)
    name = params.pop("name")
    known = methods(kind)
    if name not in known:
        raise ConfigError(f"{where or kind}: unknown {kind} {name!r}; known: {', '.join(sorted(known))}")
    try:
        return known[name].model_validate(params)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where or name)) from None


def describe() -> list[tuple[str, str, str, dict[str, str]]]:
    """(kind, name, summary, {parameter: "type = default  description"}) for every method."""
    _load_all()
    rows = []
    for kind in sorted(REGISTRY):
        for name, cls in sorted(REGISTRY[kind].items()):
            params = {}
            for field, info in cls.model_fields.items():
                ann = info.annotation
                ann = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
                text = f"{ann} = {info.default!r}"
                params[field] = text + (f"  {info.description}" if info.description else "")
            rows.append((kind, name, cls.summary(), params))
    return rows
