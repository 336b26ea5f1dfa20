"""The package's shape: import layers (no module imports a layer above its own) and function size.

Layers, lowest first. A module belongs to the layer of its longest matching prefix; every
`domainclip.<pkg>.cli` module is an entry point and belongs to the top layer with the `domainclip`
command itself. Function-level (lazy) imports count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "domainclip"

LAYERS: list[tuple[str, ...]] = [
    (
        "domainclip",  # the package __init__ (sets the offline environment)
        "domainclip.errors",
        "domainclip.io",
        "domainclip.resources",
        "domainclip.privacy",
        "domainclip.templates",
        "domainclip.configschema",
        "domainclip.resultfile",
        "domainclip.lazy",
        "domainclip.runs.layout",
    ),
    ("domainclip.models",),
    ("domainclip.datasets",),
    ("domainclip.scoring", "domainclip.calibrators"),
    ("domainclip.finetune",),
    ("domainclip.runs",),
    ("domainclip.evaluation", "domainclip.explain", "domainclip.retrieval"),
    # deploy (predict, export) reads the audit verdict (audit.results.AuditReport) and the run's
    # task (evaluation.task), so it sits beside audit, below the entry points that register it.
    ("domainclip.audit", "domainclip.deploy"),
    ("domainclip.dashboard", "domainclip.demo", "domainclip.cli", "domainclip.__main__"),
]
TOP = len(LAYERS) - 1
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer index of a dotted module name (entry-point `cli` modules are on top)."""
    if module.endswith(".cli"):
        return TOP
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported domainclip module) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("domainclip")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.startswith("domainclip"):
                # `from domainclip.x import y` may import the submodule x.y
                out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return out


def _resolve(target: str) -> str:
    """`pkg.module.name` -> the longest prefix that is a module or package of domainclip."""
    parts = target.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return target


def test_no_module_imports_a_layer_above_its_own():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "domainclip":
            continue  # the package root's lazy `domainclip.load_backbone` is a facade for users
        own = layer_of(module)
        for line, target in _imports(path, module):
            target = _resolve(target)
            if layer_of(target) > own:
                violations.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} {module} (layer {own}) imports "
                    f"{target} (layer {layer_of(target)})"
                )
    assert not violations, "\n".join(violations)


def test_the_layer_check_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import of a higher layer is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from domainclip.audit import api\n    return api\n")
    found = [_resolve(t) for _, t in _imports(src, "domainclip.models.m")]
    assert "domainclip.audit.api" in found
    assert layer_of("domainclip.audit.api") > layer_of("domainclip.models.m")
    assert layer_of("domainclip.runs.layout") == 0 and layer_of("domainclip.runs.run") == 5
    assert layer_of("domainclip.finetune.cli") == TOP


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {n}")
    assert not long, "\n".join(long)
