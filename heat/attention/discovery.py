"""Find the modules of a package that register attention variants, without importing the rest.

A variant is one module: its spec class, its kernel class and `@register(SpecClass)` on the
kernel. `heat.attention` imports every one of its modules that has a line starting with
`@register(` (a top-level decorated class), so a new built-in variant needs no import line
anywhere. Reading the sources costs well under a millisecond; importing every module instead would
load the Triton and C++ kernel modules, which are meant to load only when a fused kernel runs.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable

_REGISTERS = re.compile(r"^@register\(", re.MULTILINE)


def variant_modules(package: str, path: Iterable[str]) -> list[str]:
    """The names of the modules of `package` (found on `path`, its `__path__`) whose source has
    a top-level `@register(` line, sorted. A module without readable source counts as one."""
    names = []
    for info in pkgutil.iter_modules(list(path), prefix=f"{package}."):
        if info.ispkg:
            continue
        spec = info.module_finder.find_spec(info.name, None)  # type: ignore[call-arg]
        source = spec.loader.get_source(info.name) if spec and spec.loader else None
        if source is None or _REGISTERS.search(source):
            names.append(info.name)
    return sorted(names)


def import_variant_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import (and so register) every variant module of `package`; returns their names."""
    names = variant_modules(package, path)
    for name in names:
        importlib.import_module(name)
    return names
