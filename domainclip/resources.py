"""Where the shipped YAML data (configs/: recipes, prompt sets, audit specs) lives.

Configs name each other with repo-relative paths such as `configs/prompts/synthetic.yaml`, which
only work from the repository root. `resolve_config_path` also finds them from any working
directory, so `domainclip demo` and the shipped recipes work wherever they are started.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """`path` itself if it exists (or is absolute); else the shipped file it names under configs/."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    parts = p.parts
    if parts and parts[0] == "configs":
        candidate = CONFIGS_DIR.joinpath(*parts[1:])
        if candidate.exists():
            return candidate
    return p
