"""Reading JSON result files back: schema versions, checked fields, clear errors.

An evaluation's metrics.json, an audit.json and an explain index.json are written by one command
and read by others (the dashboard, the model card, later commands). Their types
(`EvaluationResult`, `AuditReport`, `ExplainIndex`, each beside its producer) parse them through
`Fields`: a missing or mistyped key becomes a `ResultFileError` that names the file, the key and
the command that writes the file again, instead of a KeyError deep inside a dashboard page.

Schema versions are "<family>/<n>" strings (e.g. "domainclip.audit/1"). `check_schema` accepts
the current version, migrates older ones it knows, and refuses anything else with a message that
says which domainclip wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from domainclip.errors import ResultFileError
from domainclip.io import atomic_write_json

# A migration turns the JSON of version n into that of version n + 1.
Migration = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ResultKind:
    """One kind of result file.

    Attributes:
        what: its name in messages, with its article, e.g. "an audit report (audit.json)".
        schema: the version this domainclip writes, e.g. "domainclip.evaluation/2".
        command: the command that writes it (again), e.g. "domainclip evaluate RUN".
        key: the JSON key holding the schema version.
        unversioned: the version a file without that key is taken to be (None: such a file is
            not of this kind).
        migrations: version n -> function turning its JSON into version n + 1.
    """

    what: str
    schema: str
    command: str
    key: str = "schema"
    unversioned: int | None = None
    migrations: Mapping[int, Migration] | None = None

    @property
    def family(self) -> str:
        return self.schema.rsplit("/", 1)[0]

    @property
    def version(self) -> int:
        return int(self.schema.rsplit("/", 1)[1])


def utc_now() -> str:
    """The time a result is created, ISO 8601 in UTC ("2025-01-31T12:00:00Z")."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ResultFile:
    """Base of the typed result files (`EvaluationResult`, `AuditReport`, `ExplainIndex`).

    A subclass sets `KIND` and implements `to_json()` and `_parse(fields)`; reading, checking
    and writing are shared.
    """

    KIND: ClassVar[ResultKind]

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _parse(cls, f: Fields) -> Any:
        raise NotImplementedError

    def write(self, path: str | Path) -> Path:
        """Write the file atomically (NaN becomes null)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path, command: str | None = None) -> Any:
        """Read and check a result file (`command`: what to suggest re-running).

        Raises:
            ResultFileError: unreadable, malformed, or of a schema this version cannot read.
        """
        return cls._parse(read_result_json(path, cls.KIND, command))

    @classmethod
    def from_json(cls, data: Any, source: str = "<memory>", command: str | None = None) -> Any:
        """Inverse of `to_json` (older schema versions are migrated); see `read`."""
        return cls._parse(parse_result(data, cls.KIND, source, command))


def read_result_json(path: str | Path, kind: ResultKind, command: str | None = None) -> Fields:
    """Parse a result file and check its schema; returns its top-level `Fields`.

    Args:
        command: the command to suggest for writing it again (default: `kind.command`).

    Raises:
        ResultFileError: unreadable, not JSON, not an object, or of a schema this version
            cannot read (`outdated` set for a known family of another version).
    """
    path = Path(path)
    command = command or kind.command
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFileError(
            f"{path}: cannot be read as {kind.what} ({exc}); re-run `{command}` to write it again"
        ) from exc
    return parse_result(data, kind, str(path), command)


def parse_result(
    data: Any, kind: ResultKind, source: str = "<memory>", command: str | None = None
) -> Fields:
    """`Fields` of an already parsed result (schema checked and migrated), see `read_result_json`."""
    command = command or kind.command
    if not isinstance(data, dict):
        raise ResultFileError(
            f"{source}: not {kind.what} (it holds a JSON {type(data).__name__}, not an object); "
            f"re-run `{command}`"
        )
    return Fields(check_schema(data, kind, source, command), source, command)


def check_schema(
    data: dict[str, Any], kind: ResultKind, source: str, command: str | None = None
) -> dict[str, Any]:
    """`data` at the current schema version (migrated from an older one when a migration exists).

    Raises:
        ResultFileError: another family, or a version with no migration (outdated=True).
    """
    command = command or kind.command
    value = data.get(kind.key)
    if value is None and kind.unversioned is None:
        raise ResultFileError(
            f"{source}: not {kind.what} (no '{kind.key}' key; expected {kind.schema}); "
            f"re-run `{command}`"
        )
    if value is None:
        version = kind.unversioned
    else:
        family, _, number = str(value).rpartition("/")
        if family != kind.family or not number.isdigit():
            raise ResultFileError(
                f"{source}: not {kind.what} ('{kind.key}' is {value!r}, expected "
                f"{kind.schema}); re-run `{command}`"
            )
        version = int(number)
    migrations = kind.migrations or {}
    while version < kind.version and version in migrations:
        data = migrations[version](dict(data))
        version += 1
    if version == kind.version:
        return data
    written = repr(value) if value is not None else "a file without a schema version"
    age = "an older" if version < kind.version else "a newer"
    raise ResultFileError(
        f"{source}: written by {age} domainclip ({written}; this version reads {kind.schema}). "
        f"Re-run `{command}` to write it again",
        outdated=True,
    )


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON types a field annotation allows: `float | None` -> (float, NoneType),
    `list[str]` -> (list,), `Any` -> () (anything)."""
    if hint is Any:
        return ()
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _json_types(arg))
    if origin is not None:
        return (origin,)
    if hint in (str, int, float, bool, list, dict, type(None)):
        return (hint,)
    raise TypeError(f"{hint!r} is not a plain JSON type; read it with its own parser")


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _matches(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a number
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


class Fields:
    """Checked reads from one JSON object of a result file.

    Every getter names the key path ("calibration.before.ece") and the file in its error, so a
    damaged file says what is wrong and which command writes it again.
    """

    def __init__(self, data: Any, source: str, command: str, where: str = "") -> None:
        self.source, self.command, self.where = source, command, where
        if not isinstance(data, dict):
            raise self.error(f"'{where or '(top level)'}' is not a JSON object")
        self.data: dict[str, Any] = data

    def error(self, problem: str) -> ResultFileError:
        """A ResultFileError about this file (the caller raises it)."""
        return ResultFileError(
            f"{self.source}: {problem}. The file is damaged or incomplete: re-run "
            f"`{self.command}` to write it again"
        )

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, *types: type, optional: bool = False) -> Any:
        """The value of `key`, checked against `types` (`float` accepts integers; include
        `type(None)` to allow null). `optional`: an absent key gives None."""
        if key not in self.data:
            if optional:
                return None
            raise self.error(f"'{self.path(key)}' is missing")
        value = self.data[key]
        if types and not _matches(value, types):
            raise self.error(
                f"'{self.path(key)}' is {json.dumps(value)[:40]}, expected {_type_name(types)}"
            )
        return value

    def values_for(
        self, cls: type, *, skip: Collection[str] = (), require_all: bool = False
    ) -> dict[str, Any]:
        """Checked values of the dataclass `cls`'s fields, by their annotations (plain JSON types
        only: str, int, float, bool, list, dict, Any, `X | None`); `skip` the others. A field
        with a default may be absent (the default applies) unless `require_all`."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default and not require_all and f.name not in self.data:
                continue
            out[f.name] = self.get(f.name, *_json_types(hints[f.name]))
        return out

    def build(self, cls: type, *, require_all: bool = False, **parsed: Any) -> Any:
        """An instance of the dataclass `cls`: its plain fields read with `values_for`, the
        others given already parsed (`parsed`, by field name)."""
        return cls(**self.values_for(cls, skip=parsed, require_all=require_all), **parsed)

    def obj(self, key: str, *, optional: bool = False, nullable: bool = False) -> Fields | None:
        """The object under `key` as Fields (None when absent and optional, or null and nullable)."""
        value = self.get(key, dict, *((type(None),) if nullable else ()), optional=optional)
        return None if value is None else self.child(value, key)

    def child(self, value: Any, key: str) -> Fields:
        return Fields(value, self.source, self.command, self.path(key))

    def mapping(self, key: str, *, optional: bool = False) -> dict[str, Fields]:
        """An object of objects (name -> Fields), e.g. framing name -> its summary."""
        value = self.get(key, dict, optional=optional) or {}
        return {str(k): self.child(v, f"{key}.{k}") for k, v in value.items()}

    def objects(self, key: str, *, optional: bool = False) -> list[Fields]:
        """A list of objects."""
        value = self.get(key, list, optional=optional) or []
        return [self.child(v, f"{key}[{i}]") for i, v in enumerate(value)]

    def groups(self, key: str) -> dict[str, list[Fields]]:
        """An object of lists of objects (name -> [Fields]), e.g. framing -> flip examples."""
        value = self.get(key, dict)
        out = {}
        for name, items in value.items():
            if not isinstance(items, list):
                raise self.error(f"'{self.path(key)}.{name}' is not a list")
            out[str(name)] = [self.child(v, f"{key}.{name}[{i}]") for i, v in enumerate(items)]
        return out

    def numbers(self, key: str, *, nullable_items: bool = True) -> list[float | None]:
        """A list of numbers (null items allowed unless `nullable_items` is False)."""
        value = self.get(key, list)
        allowed = (float, type(None)) if nullable_items else (float,)
        for i, v in enumerate(value):
            if not _matches(v, allowed):
                raise self.error(f"'{self.path(key)}[{i}]' is {v!r}, expected a number")
        return value

    def estimate(self, key: str, *, optional: bool = False, nullable: bool = False) -> dict | None:
        """An Estimate dict {"value": number|null, "ci95": [lo, hi]|null, "reason"?} under `key`."""
        f = self.obj(key, optional=optional, nullable=nullable)
        return None if f is None else f.as_estimate()

    def as_estimate(self) -> dict:
        """This object checked as an Estimate dict."""
        self.get("value", float, type(None))
        ci = self.get("ci95", list, type(None), optional=True)
        if ci is not None:
            if len(ci) != 2:
                raise self.error(f"'{self.path('ci95')}' has {len(ci)} bounds, expected 2")
            self.numbers("ci95")
        self.get("reason", str, type(None), optional=True)
        return self.data

    def estimates(self, *keys: str) -> dict[str, dict]:
        """Several required Estimate dicts, by key."""
        return {k: self.estimate(k) for k in keys}
