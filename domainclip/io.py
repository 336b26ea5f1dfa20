"""The one home for durable writes and strict YAML reads.

Atomic write: the data goes to a temporary sibling (same folder, so the rename is atomic on one
file system), the file is fsynced, renamed over the target, and the folder is fsynced so the
rename itself survives a power cut. A reader therefore sees the old file or the new one, never
half a file; an error (disk full) removes only the temporary file.

YAML: PyYAML keeps the last of two equal keys silently, which would hide "a framing named twice"
or "lr set twice"; `load_yaml` refuses them, naming both lines.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from domainclip.errors import ConfigError


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directory fsync makes renames durable; skipped where unsupported)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp sibling + fsync + rename + folder fsync).

    The file gets the usual umask permissions (mkstemp alone would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text written atomically; newlines are written exactly as given (no translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """JSON written atomically. NaN/inf become null (JSON has no NaN); numpy scalars and arrays,
    paths and sets are converted; anything else not serialisable raises TypeError."""
    text = json.dumps(finite_json(data), indent=indent, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; unreadable or invalid JSON is a ConfigError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: this {what} cannot be read ({exc})") from exc


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """`Path(path).resolve()`, with a symlink loop as OSError(ELOOP) on every Python version
    (3.11 raises RuntimeError, which callers that expect file errors would not catch)."""
    import errno

    try:
        return Path(path).resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, f"symlink loop ({exc})", str(path)) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def finite_json(x: Any) -> Any:
    """`x` as strict-JSON values: NaN/inf -> None recursively, numpy scalars -> Python numbers.

    What `atomic_write_json` writes, so a result returned in memory can equal the file read back.
    """
    import numpy as np

    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        v = o.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    if isinstance(o, np.ndarray):
        return finite_json(o.tolist())
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------------------
# YAML


class DuplicateKeyError(ConfigError):
    """A YAML mapping names the same key twice."""

    def __init__(self, source: str, key: Any, first: int, second: int) -> None:
        super().__init__(
            f"{source}: key {key!r} appears twice (lines {first} and {second}); "
            "each key must be given once"
        )
        self.key, self.first, self.second = key, first, second


def _strict_loader(source: str):
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(source, key, seen[key], line)
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return _StrictLoader


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Safe-load YAML text, refusing duplicate keys.

    Raises:
        DuplicateKeyError: a key appears twice in one mapping (both lines named).
        ConfigError: not valid YAML (the parser's position is in the message).
    """
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader(source))  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc


def load_yaml(path: str | Path) -> Any:
    """`parse_yaml` of a UTF-8 file; an unreadable file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read {path}: it is not UTF-8 text (byte {exc.start}"
            + (", a UTF-16 byte-order mark" if exc.object[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
            + "); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return parse_yaml(text, str(path))
