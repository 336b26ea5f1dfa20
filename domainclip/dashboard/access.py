"""What the dashboard may read: files inside the runs directory and the data roots the person
starting it named (`--data-root DIR`, repeatable; none by default). Nothing else.

Every path the app opens comes through `RunsAccess`. Paths are resolved with symlinks followed
before the check, so ``../`` sequences, absolute paths and symlinks that point out of the allowed
folders are all rejected the same way (`PathAccessError`). Run files must stay inside their run
(`run_file`); everything a run *names* (the manifest and prompt set of its config.yaml, the
manifest of an evaluation or audit, the images and masks a manifest lists) goes through
`RunsAccess.confine`, the one check against the allowed folders, whose message names the
`--data-root` flag (a prompt set may also be one of domainclip's shipped ones). A run directory that is itself a symlink to somewhere outside the runs
directory is not listed either: the dashboard serves exactly the tree it was started on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from domainclip.errors import DomainClipError
from domainclip.io import resolve_path
from domainclip.resources import CONFIGS_DIR
from domainclip.runs.layout import CONFIG_FILE as RUN_CONFIG
from domainclip.runs.layout import is_run

# How deep below the runs directory runs are looked for: DIR/run and DIR/experiment/run.
_MAX_DEPTH = 2
DATA_ROOT_FLAG = "--data-root"


class PathAccessError(DomainClipError):
    """A path outside what the dashboard is allowed to read."""


def resolve_inside(base: Path, path: str | os.PathLike[str]) -> Path:
    """Resolve `path` (relative to `base`, or absolute) and require it to stay inside `base`.

    Symlinks are followed first, so a link inside `base` pointing elsewhere is rejected.

    Raises:
        PathAccessError: the resolved path is not `base` or below it.
    """
    base = base.resolve()
    text = os.fspath(path)
    if "\x00" in text:
        raise PathAccessError(f"refusing path with a NUL byte: {text!r}")
    try:
        target = resolve_path(base / text)
    except OSError as exc:
        raise PathAccessError(f"refusing to read {text!r}: {exc.strerror or exc}") from None
    if target != base and not target.is_relative_to(base):
        raise PathAccessError(f"refusing to read {text!r}: it resolves to {target}, outside {base}")
    return target


def _within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _resolved(path: str | os.PathLike[str]) -> Path:
    """The resolved path, or PathAccessError for what cannot be resolved (a symlink loop)."""
    try:
        return resolve_path(Path(path).expanduser())
    except OSError as exc:
        raise PathAccessError(f"refusing to read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class RunRef:
    """One run found under the runs directory.

    Attributes:
        name: path relative to the runs directory (POSIX), or the folder name for a single run.
        path: resolved absolute run directory (inside the runs directory).
    """

    name: str
    path: Path


class RunsAccess:
    """Read guard for one runs directory and the data roots allowed beside it.

    Args:
        runs: a directory containing run directories (up to two levels deep), or one run
            directory itself.
        data_roots: further folders whose files (manifests, images, prompt sets) runs may name.

    Raises:
        PathAccessError: `runs` or a data root does not exist or is not a directory.
    """

    def __init__(
        self, runs: str | os.PathLike[str], data_roots: Iterable[str | os.PathLike[str]] = ()
    ) -> None:
        root = Path(runs).expanduser()
        if not root.is_dir():
            raise PathAccessError(f"runs directory {root} does not exist or is not a directory")
        self.root = root.resolve()
        roots = []
        for d in data_roots:
            folder = Path(d).expanduser()
            if not folder.is_dir():
                raise PathAccessError(
                    f"{DATA_ROOT_FLAG} {folder} does not exist or is not a directory"
                )
            roots.append(_resolved(folder))
        self.data_roots: tuple[Path, ...] = tuple(dict.fromkeys(roots))

    def confine(
        self, path: str | os.PathLike[str], what: str = "file", *, shipped: bool = False
    ) -> Path:
        """`path` resolved (symlinks followed), if it lies in the runs directory or a data root
        (or, with `shipped`, among domainclip's own shipped configs: prompt sets).

        The one check for every file a run names (manifests, prompt sets, listed images).

        Raises:
            PathAccessError: it lies elsewhere (the message names `--data-root`), or it cannot
                be resolved (a symlink loop).
        """
        resolved = _resolved(path)
        extra = (CONFIGS_DIR.resolve(),) if shipped else ()
        if _within(resolved, (self.root, *self.data_roots, *extra)):
            return resolved
        roots = ", ".join(str(r) for r in self.data_roots) or "none given"
        raise PathAccessError(
            f"refusing to read the {what} {path}: it lies outside the runs directory {self.root} "
            f"and the data roots ({roots}); start the dashboard with `{DATA_ROOT_FLAG} DIR` "
            "naming the folder that holds it"
        )

    # ------------------------------------------------------------------ runs
    def runs(self) -> list[RunRef]:
        """Every run directory, sorted by name; the root itself when it is a run."""
        if is_run(self.root):
            return [RunRef(self.root.name, self.root)]
        found: list[RunRef] = []
        self._scan(self.root, 1, found)
        return sorted(found, key=lambda r: r.name)

    def _scan(self, folder: Path, depth: int, found: list[RunRef]) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            try:
                resolved = resolve_inside(self.root, child)
            except PathAccessError:
                continue  # a symlink out of the runs directory: never listed
            if is_run(resolved):
                found.append(RunRef(child.relative_to(self.root).as_posix(), resolved))
            elif depth < _MAX_DEPTH:
                self._scan(child, depth + 1, found)

    def run(self, name: str) -> RunRef:
        """The run called `name` (as listed by `runs`).

        Raises:
            PathAccessError: no such run, or `name` points outside the runs directory.
        """
        for ref in self.runs():
            if ref.name == name:
                return ref
        resolve_inside(self.root, name)  # a traversal attempt gets the more specific message
        raise PathAccessError(f"no run named {name!r} under {self.root}")

    def run_file(self, run: RunRef, relative: str | os.PathLike[str]) -> Path:
        """A file of a run, e.g. ``run_file(ref, "eval/test/metrics.json")``.

        Raises:
            PathAccessError: `relative` leaves the run directory (``..``, absolute, symlink).
        """
        return resolve_inside(run.path, relative)

    # ------------------------------------------------------------------ manifests
    def referenced_file(self, run: RunRef, key: str) -> Path | None:
        """A file named by the run's config.yaml at `key` (e.g. ``data.manifest``, ``eval.prompts``),
        resolved; None if the config names none.

        A relative path is taken relative to the run directory first, then to the current
        directory (the trainer resolves paths against the directory it was started from).
        """
        from domainclip.runs import Run

        self.run_file(run, RUN_CONFIG)  # config.yaml itself must not be a link out of the run
        value = Run(run.path).setting(key)
        if not value:
            return None
        p = Path(str(value)).expanduser()
        what = f"file {key} of {run.name}/{RUN_CONFIG}:"
        shipped = key == "eval.prompts"  # a shipped prompt set holds no data
        if p.is_absolute():
            return self.confine(p, what, shipped=shipped)
        for base in (run.path, Path.cwd()):
            if (base / p).is_file():
                return self.confine(base / p, what, shipped=shipped)
        return self.confine(run.path / p, what, shipped=shipped)

    def manifest_of(self, run: RunRef) -> Path | None:
        """The manifest the run was trained on (config.yaml ``data.manifest``), or None."""
        return self.referenced_file(run, "data.manifest")

    def prompt_set_of(self, run: RunRef) -> Path | None:
        """The run's prompt-set YAML (config.yaml ``eval.prompts``), or None."""
        return self.referenced_file(run, "eval.prompts")

    def result_manifest(self, run: RunRef, result_file: str) -> Path | None:
        """The manifest a run's result file (an evaluation's metrics.json, an audit.json) says it
        used (``data.manifest``), resolved; None if it names none.

        This is the other way a run references a manifest: `domainclip evaluate/audit --data`.

        Raises:
            PathAccessError: `result_file` leaves the run directory.
        """
        import json

        path = self.run_file(run, result_file)
        data = json.loads(path.read_text(encoding="utf-8"))
        value = (data.get("data") or {}).get("manifest") if isinstance(data, dict) else None
        if not value:
            return None
        return self.confine(Path(str(value)).expanduser(), f"manifest named by {result_file}:")

    def manifests(self) -> dict[Path, list[str]]:
        """Manifest referenced by any run -> names of the runs referencing it."""
        out: dict[Path, list[str]] = {}
        for ref in self.runs():
            try:
                m = self.manifest_of(ref)
            except DomainClipError:
                continue  # an unreadable config is reported by the Runs page
            if m is not None:
                out.setdefault(m, []).append(ref.name)
        return out

    def manifest(self, path: str | os.PathLike[str]) -> Path:
        """Check that `path` is a manifest referenced by a run; returns it resolved.

        Raises:
            PathAccessError: any other file.
        """
        resolved = _resolved(path)
        if resolved not in self.manifests():
            raise PathAccessError(f"refusing to read {path}: no run references this manifest")
        return self.confine(resolved, "manifest")

    def listed_file(self, candidate: str | os.PathLike[str], listed: Iterable[Path]) -> Path:
        """Check that `candidate` is one of the files a manifest lists (`listed`, resolved) and
        lies in an allowed folder (`confine`).

        Raises:
            PathAccessError: it is not listed, or lies elsewhere (``..`` rows, absolute paths,
                symlinks out).
        """
        resolved = _resolved(candidate)
        if resolved not in set(listed):
            raise PathAccessError(f"refusing to read {candidate}: the manifest does not list it")
        return self.confine(resolved, "image")
