"""Typed configuration sections: one pattern for every YAML-backed setting.

A section is a dataclass whose fields are declared with `option` (help text, allowed `choices`,
numeric `range`) or `section` (a nested section). `build` turns a parsed mapping into the
dataclass, checking everything generically, so every error names the source (file) and the full
dotted key, and says what is allowed:

* unknown keys, with a did-you-mean suggestion (difflib) and the valid keys of that section;
* types (bool, int, float, str, lists of them, `X | None`, nested and optional sections);
* choices and ranges, also for defaults and list items.

`apply_overrides` applies `a.b=value` strings (the value parsed as YAML), `leaf_keys` and
`describe` list the keys with their defaults and help (for `--list-keys` and docs).

Layer 0: imports only the standard library and `domainclip.errors` / `domainclip.io`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

from domainclip.errors import ConfigError
from domainclip.io import parse_yaml

Range = tuple[float | None, float | None, str]
"""(low, high, kind): kind is "[]", "(]", "[)" or "()"; None = unbounded on that side."""

# YAML 1.1 (PyYAML) reads an exponent without a dot ("5e-4") as a string; these are numbers.
_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def option(
    default: Any = None,
    help: str = "",  # noqa: A002 - the peft/HF name for a field's description
    *,
    choices: Iterable[Any] | None = None,
    range: Range | None = None,  # noqa: A002 - reads as the constraint it is
    factory: Any = None,
) -> Any:
    """A dataclass field with help text and the constraints `build` enforces.

    Args:
        default: the default value (ignored when `factory` is given).
        help: one line shown by `describe` (`--list-keys`).
        choices: the allowed values.
        range: (low, high, kind) for numbers, e.g. (0, 1, "(]") for 0 < x <= 1.
        factory: default factory for mutable defaults (lists).
    """
    md: dict[str, Any] = {"help": help}
    if choices is not None:
        md["choices"] = tuple(choices)
    if range is not None:
        md["range"] = range
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def section(cls: type, *, optional: bool = False, help: str | None = None) -> Any:  # noqa: A002
    """A nested section field; its help is the first docstring line of `cls` unless given.

    optional=True: the default is None (the section is present only when given or filled in by
    the owner, e.g. the settings of the chosen method).
    """
    md = {"help": help or (cls.__doc__ or "").strip().splitlines()[0]}
    if optional:
        return field(default=None, metadata=md)
    return field(default_factory=cls, metadata=md)


# ------------------------------------------------------------------------------------------------
# Types


def _optional_of(typ: Any) -> Any | None:
    """X for `X | None` / `Optional[X]`, else None."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0]
    return None


def section_type(typ: Any) -> type | None:
    """The dataclass of a (possibly optional) nested section field type, else None."""
    inner = _optional_of(typ)
    typ = inner if inner is not None else typ
    return typ if dataclasses.is_dataclass(typ) else None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ------------------------------------------------------------------------------------------------
# Checks


def check_keys(data: Mapping[Any, Any], names: Iterable[str], where: str, prefix: str = "") -> None:
    """Refuse keys of `data` not in `names`, suggesting the closest valid key for each.

    Args:
        data: the mapping as read.
        names: the valid keys of this section.
        where: the source (file path or "config") named first in the message.
        prefix: the dotted path of this section ("method.lora."), "" at the top.

    Raises:
        ConfigError: "<where>: unknown key(s) alpah ('method.lora.alpah'; did you mean 'alpha'?).
            Valid keys here: method.lora.r, ...".
    """
    names = list(names)
    bad = [k for k in data if k not in names]
    if not bad:
        return
    described = []
    for key in sorted(bad, key=str):
        notes = [repr(f"{prefix}{key}")] if prefix else []
        close = difflib.get_close_matches(str(key), names, n=1)
        if close:
            notes.append(f"did you mean {close[0]!r}?")
        described.append(f"{key} ({'; '.join(notes)})" if notes else str(key))
    raise ConfigError(
        f"{where}: unknown key(s) {', '.join(described)}. Valid keys here: "
        + ", ".join(prefix + n for n in names)
    )


def _interval(spec: Range) -> str:
    low, high, kind = spec
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    return f"{kind[0]}{lo}, {hi}{kind[1]}"


def check_range(path: str, value: float, spec: Range, where: str = "config") -> None:
    """Raise ConfigError unless `value` lies in `spec` = (low, high, kind)."""
    low, high, kind = spec
    ok_low = low is None or (value >= low if kind[0] == "[" else value > low)
    ok_high = high is None or (value <= high if kind[1] == "]" else value < high)
    if ok_low and ok_high:
        return
    if high is None and low is not None:
        bound = f"must be {'at least' if kind[0] == '[' else 'greater than'} {low}"
    else:
        bound = f"outside {_interval(spec)}"
    raise ConfigError(f"{where}: {path} = {value!r} is out of range ({bound})")


def _scalar(path: str, value: Any, typ: Any, where: str) -> Any:
    """Type check / coercion of one scalar value."""
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {path} must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{where}: {path} must be an integer, got {value!r} ({type(value).__name__})"
            )
    elif typ is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.match(value.strip()):
            value = float(value)
        # bool is an int subclass in Python: `true` must not pass as 1.0.
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and math.isnan(value))
        ):
            raise ConfigError(
                f"{where}: {path} must be a number, got {value!r} ({type(value).__name__})"
            )
        value = float(value)
    elif typ is str:
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {path} must be a string, got {value!r}")
        value = str(value)
    return value


def coerce(path: str, value: Any, typ: Any, f: dataclasses.Field, where: str = "config") -> Any:
    """Check `value` against the field's type, choices and range; returns the coerced value.

    A scalar given for a list field is a one-element list (`--set data.classes=scratch`).
    """
    inner = _optional_of(typ)
    if inner is not None:
        return None if value is None else coerce(path, value, inner, f, where)
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if value is None:
            value = []
        if not isinstance(value, list):
            value = [value]
        return [coerce(f"{path}[{i}]", v, item, f, where) for i, v in enumerate(value)]
    value = _scalar(path, value, typ, where)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{where}: {path} = {value!r} is not allowed; choose one of "
            + ", ".join(map(repr, choices))
        )
    if "range" in f.metadata and typ in (int, float):
        check_range(path, value, f.metadata["range"], where)
    return value


# ------------------------------------------------------------------------------------------------
# Building


def build(cls: type, data: Any, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from nested `data`, checking keys, types, choices and ranges.

    Args:
        cls: a dataclass declared with `option` / `section` fields.
        data: the parsed mapping (None = all defaults).
        where: the source named in errors (a file path, "config", "--set").
        prefix: the dotted path of this section ("" at the top).

    Raises:
        ConfigError: naming `where` and the dotted key, and what is allowed.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the config'} must be a mapping, got {data!r}"
        )
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, fields, where, prefix)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = section_type(hints[name])
        if sub is not None:
            optional = _optional_of(hints[name]) is not None
            value = data[name]
            kwargs[name] = (
                None if optional and value is None else build(sub, value, where, f"{prefix}{name}.")
            )
        else:
            kwargs[name] = coerce(f"{prefix}{name}", data[name], hints[name], f, where)
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults must pass the same checks (ranges of list items)
        if name not in data and section_type(hints[name]) is None:
            coerce(f"{prefix}{name}", copy.deepcopy(getattr(obj, name)), hints[name], f, where)
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of a nested mapping."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key path of a section class (optional sections included)."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        sub = section_type(hints[f.name])
        if sub is not None:
            out += leaf_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every leaf, optional sections with their own defaults."""
    hints = _hints(cls)
    out = []
    inst = cls()
    for f in dataclasses.fields(cls):
        sub = section_type(hints[f.name])
        if sub is not None:
            out += describe(sub, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", getattr(inst, f.name), f.metadata.get("help", "")))
    return out


def apply_overrides(
    data: Mapping[str, Any], overrides: Iterable[str], valid: Iterable[str], flag: str = "--set"
) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a copy of nested `data`.

    Args:
        data: the nested mapping as read.
        overrides: "KEY=VALUE" strings.
        valid: the allowed dotted keys (`leaf_keys`).
        flag: how the overrides were given, for messages.

    Raises:
        ConfigError: malformed item, unknown key (with suggestions and the valid keys), or a
            value that is not YAML (or names a key twice).
    """
    data = copy.deepcopy(dict(data))
    valid = sorted(set(valid))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} optim.lr=5e-4")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            raise ConfigError(
                f"{flag} {key}: unknown key"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
                + ". Valid keys: "
                + ", ".join(valid)
            )
        # Strict too: `--set data.classes="{a: 1, a: 2}"` must not keep the last `a` silently.
        value = parse_yaml(raw, f"{flag} {key}={raw}") if raw.strip() else ""
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data
