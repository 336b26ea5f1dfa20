"""Lazy package exports (PEP 562): `import domainclip.x` stays cheap until a name is used.

The CLI imports torch, matplotlib and scikit-learn only when a command needs them; packages
re-export their public names through `lazy_exports` instead of importing every submodule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that imports `package.<exports[name]>` on use.

    Args:
        package: the package's `__name__`.
        exports: public name -> submodule (relative to `package`) that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
