"""Stage configs: frozen dataclasses built from files and `key=value` overrides.

Every stage defines its own frozen dataclass and validates values in `__post_init__`
(raise `ConfigError`). This module only moves data in and out of such classes: unknown
keys are rejected with the list of valid keys, nested dataclasses are built from nested
mappings, lists become tuples, and values are type-checked against the annotations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from trashseg.errors import ConfigError
from trashseg.fileio import os_error_fix, write_text
from trashseg.secrets import redact_values

T = TypeVar("T")


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build the dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(unknown)}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}{name}" if not where else f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a (nested) config dataclass; tuples become lists. URI
    passwords are redacted: this is what config files, checkpoints and MLflow params hold."""
    return redact_values(json.loads(json.dumps(dataclasses.asdict(config), default=list)))


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Read a YAML/JSON config file (optional) and apply `key=value` overrides.

    Dotted keys reach nested sections (`augment.scale_min=256`); values are parsed as
    YAML, so `lr=1e-4`, `classes=[9,10]` and `amp=off` all work.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            state = "is not a regular file" if path.exists() else "does not exist"
            raise ConfigError(f"config file {path} {state}; pass an existing YAML or JSON file")
        loaded = _parse_yaml(_read_text(path), f"config file {path}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    for key, raw in parse_assignments(overrides).items():
        target = data
        *parents, leaf = key.split(".")
        for depth, part in enumerate(parents):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"override {key}={raw}: {section} is the value {target!r}, not a section with keys; "
                    f"set either {section}=VALUE or {section}.KEY=VALUE"
                )
        shown = raw if len(raw) <= 80 else f"{raw[:60]}... ({len(raw)} characters)"
        target[leaf] = _parse_yaml(raw, f"override {key}={shown}") if raw else ""
    return from_mapping(cls, data)


MAX_CONFIG_BYTES = 16 * 2**20  # a config is a few KiB; a bigger file is a wrong path


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {os_error_fix(error)}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 2**20} MiB; pass a YAML or JSON config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error}); pass a YAML or JSON file") from None


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except ValueError as error:  # e.g. an integer longer than Python converts (4300 digits)
        raise ConfigError(f"{what} holds a value that cannot be read: {error}") from None
    except yaml.YAMLError as error:
        # The parser's message names line and column; one line of it is enough.
        detail = " ".join(str(error).split())
        raise ConfigError(f"{what} is not valid YAML: {detail}") from None


def parse_assignments(items: Iterable[str], *, what: str = "override", example: str = "lr=1e-4") -> dict[str, str]:
    """`key=value` strings -> {key: raw value} (a value may itself hold '='; the last key wins)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} must look like key=value (e.g. {example})")
        pairs[key] = value
    return pairs


def shown_number(value: Any) -> str:
    """`value` for a message; an integer too long to print (over 4300 digits) is described."""
    try:
        return str(value)
    except ValueError:
        return f"<an integer of about {int(value.bit_length() * math.log10(2))} digits>"


def check_range(name: str, value: Any, low: float, high: float, *, unit: str = "", fix: str = "") -> None:
    """Raise ConfigError unless low <= value <= high (NaN fails too), naming the valid range.

    Every value a config or an option takes has an upper bound: an unbounded one turns a typo
    into a run of 10^18 hours, a terabyte allocation or a full disk."""
    if not low <= value <= high:
        kind = "an integer" if isinstance(value, int) else "a value"
        suffix = f" {unit}" if unit else ""
        raise ConfigError(f"{name}={shown_number(value)}: expected {kind} in [{low}, {high}]{suffix}{fix}")


def save_config(config: Any, path: str | Path) -> None:
    write_text(path, json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {hint}")
    if origin is typing.Literal:
        if isinstance(value, bool) and value not in args:
            # YAML 1.1 reads off/on/no/yes as booleans: map back to the word the Literal lists.
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((word for word in words if word in args), value)
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_mapping(hint, value, where=where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        return tuple(_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        return _finite_float(value, where)
    if hint in (int, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _finite_float(value: Any, where: str) -> float:
    """A float field's value. NaN and infinity are refused for every field: each compares
    False with any bound, so they would slip past range checks and surface much later
    (as a NaN loss, or a schedule that never decays)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        _not_a_number(value, where)
    try:
        # YAML 1.1 reads exponents without a dot (1e-4) as strings.
        number = float(value)
    except (ValueError, OverflowError):
        _not_a_number(value, where)
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number; give a real value (e.g. 0.01)")
    return number


def _not_a_number(value: Any, where: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: expected a number, got {value!r}")
