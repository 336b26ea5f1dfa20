"""Where the shipped YAML data (recipes, prompt sets, audit specs) lives: `domainclip/configs/`.

The files are package data, found through `importlib.resources`, so they come with a wheel and
work from any working directory. Configs and the README name them with the short paths
`configs/<file>` (e.g. `configs/prompts/synthetic.yaml` inside a recipe's `eval.prompts`);
`resolve_config_path` maps such a path to the shipped file unless a file of that name exists
where the user is.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _configs_dir() -> Path:
    root = files("domainclip") / "configs"
    # A regular (unzipped) install gives a real directory; the loaders below need real paths
    # (glob, open, is_file), and zip imports are not supported by torch et al. anyway.
    if not isinstance(root, Path):
        raise RuntimeError(
            f"domainclip's shipped configs are not on the file system ({root!r}); install "
            "domainclip as a regular (unzipped) package"
        )
    return root


CONFIGS_DIR: Path = _configs_dir()


def resolve_config_path(path: str | Path) -> Path:
    """`path` itself if it exists (or is absolute); else the shipped file it names under configs/.

    `configs/neu_det_lora.yaml` -> `<site-packages>/domainclip/configs/neu_det_lora.yaml` when no
    `./configs/neu_det_lora.yaml` exists. Any other missing path is returned unchanged, so the
    caller's "not found" message names what the user typed.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    parts = p.parts
    if parts and parts[0] == "configs":
        candidate = CONFIGS_DIR.joinpath(*parts[1:])
        if candidate.exists():
            return candidate
    return p
