"""The wheel is the product: it ships every recipe, prompt set and audit spec, and an install of
it (not the repository) finds them from any working directory, the way `domainclip demo` does.

Offline by construction: the wheel is built with the running environment's setuptools (no build
isolation, which would download setuptools) and installed with `--no-index --no-deps` into a
fresh venv that borrows the already-installed dependencies through a .pth file. The build runs on a
clean copy of the source tree: setuptools never empties an in-tree build/, so a stale build/lib
could put files into the wheel that the package data no longer selects.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "domainclip" / "configs"

# Resolves, in the installed copy, every config `domainclip demo` uses, exactly as the demo does
# (domainclip/demo.py: resolve_config_path(PROMPTS), load_config(resolve_config_path(DEMO_CONFIG)),
# run_audit(..., AUDIT_SPEC) -> load_audit_spec), plus the prompt set the recipe itself names, as
# `domainclip finetune configs/demo_synthetic_lora.yaml` resolves it into the run's config.yaml.
LOOKUP = """
import json, sys
import domainclip
from domainclip import demo
from domainclip.audit.spec import load_audit_spec
from domainclip.scoring.prompts import load_prompt_set
from domainclip.finetune import load_config
from domainclip.finetune.framings import load_pool, shipped_specs
from domainclip.finetune.run import absolute_paths
from domainclip.resources import resolve_config_path

manifest = sys.argv[1]
prompts = resolve_config_path(demo.PROMPTS)
cfg = load_config(resolve_config_path(demo.DEMO_CONFIG), [f"data.manifest={manifest}"])
recipe_prompts = load_prompt_set(cfg.eval.prompts)
run_prompts = absolute_paths(cfg).eval.prompts
spec = load_audit_spec(demo.AUDIT_SPEC)
print(json.dumps({
    "package": domainclip.__file__,
    "prompts": str(prompts),
    "prompt_classes": sorted(load_prompt_set(prompts).classes),
    "recipe_prompts": recipe_prompts.source,
    "run_prompts": run_prompts,
    "recipe_manifest": cfg.data.manifest,
    "audit_spec": spec.source,
    "framing_pool": load_pool(cfg.robustness.pool).source,
    "audit_specs_checked": len(shipped_specs()),
}))
"""


def _site_dirs() -> list[str]:
    """The running interpreter's site-packages (where the dependencies are installed)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (it would put the repository first) and never the network."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(cmd: list[str | Path], cwd: Path, **extra: str) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(**extra), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_ships_configs_and_an_install_finds_them_outside_the_repo(tmp_path):
    source = sorted(p.relative_to(REPO).as_posix() for p in SHIPPED.rglob("*.yaml"))
    # The demo's recipe, prompt set and audit spec live in the package (not at <repo>/configs).
    for name in ("demo_synthetic_lora.yaml", "prompts/synthetic.yaml", "audits/synthetic.yaml"):
        assert f"domainclip/configs/{name}" in source, f"{name} is not under {SHIPPED}"

    # --- build: what `pip wheel .` gives a user, minus the download of a build backend
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    anywhere = shutil.ignore_patterns("*.egg-info", "__pycache__", ".*_cache")
    top_level = {".git", ".venv", "build", "runs", "out", "demo_out"}  # outputs, not sources

    def junk(folder: str, names: list[str]) -> set[str]:
        skip = set(anywhere(folder, names))
        return skip | (top_level & set(names)) if Path(folder) == REPO else skip

    shutil.copytree(REPO, src, ignore=junk)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, "."],
        cwd=src,
    )
    (wheel,) = wheels.glob("domainclip-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    missing = sorted(set(source) - in_wheel)
    assert not missing, f"YAML files missing from {wheel.name}: {missing}"
    # Modules too: folders without __init__.py (dashboard/views) ship only as namespace packages.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "domainclip").rglob("*.py")}
    missing = sorted(modules - in_wheel)
    assert not missing, f"modules missing from {wheel.name}: {missing}"

    # --- install into a fresh venv; the dependencies come from this interpreter's site-packages
    # (a .pth written AFTER the install, so pip does not see the editable domainclip there)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, pip = env_dir / "bin" / "python", env_dir / "bin" / "pip"
    _run([pip, "install", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    Path(purelib.strip(), "_borrowed_deps.pth").write_text("\n".join(_site_dirs()) + "\n")

    # --- use it from a directory outside the repository
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert REPO not in work.parents
    data = work / "syn"
    _run(
        [env_dir / "bin" / "domainclip", "data", "import", "synthetic", "--out", data,
         "--n", "20", "--size", "32"],
        cwd=work,
    )
    manifest = data / "manifest.csv"
    assert manifest.is_file()

    found = json.loads(_run([py, "-c", LOOKUP, manifest], cwd=work))
    installed = env_dir.resolve()
    package = Path(found["package"]).resolve()
    assert installed in package.parents, f"imported {package}, not the installed wheel"
    assert REPO not in package.parents
    for key in ("prompts", "recipe_prompts", "run_prompts", "audit_spec", "framing_pool"):
        path = Path(found[key]).resolve()
        assert installed in path.parents and path.is_file(), f"{key}: {path}"
    assert Path(found["prompts"]).name == "synthetic.yaml"
    assert Path(found["audit_spec"]).name == "synthetic.yaml"
    assert Path(found["recipe_manifest"]).resolve() == manifest.resolve()
    assert len(found["prompt_classes"]) >= 2
    assert Path(found["framing_pool"]).name == "industrial.yaml"  # the demo's robust recipe
    assert found["audit_specs_checked"] >= 3  # the pool is checked against the installed specs
