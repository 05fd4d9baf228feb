"""The package's import graph runs one way: each module imports only modules of lower
layers (read from the source with ast, function-level imports included), so there is no
import circle and the pure core pulls in no I/O library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "milter" / "crowdsec_milter"

# Lowest first. A module may import from any layer below its own, never from its own or
# above. A new module must be placed here (the test says so).
LAYERS: list[set[str]] = [
    # data, helpers; what a session says about its client; recipient spellings
    {"__init__", "decisions", "tally", "jsonstream", "events", "notify", "signals", "redact",
     "guard", "address"},
    {"selection"},  # which decisions apply, which action each gets
    {"index", "policy"},  # pure logic over decisions
    # configuration; the LAPI client; what the MTA is asked; MaxMind databases; the
    # state file (decisions on disk)
    {"settings", "lapi", "protocol", "geo", "state"},
    {"source"},  # decision sources
    {"session", "metrics", "usage"},  # what serves or reads the parts
    {"wiring"},  # the settings to the parts
    {"app", "tools"},  # the milter; the operator tools
    {"cli"},  # the command line picks one
    {"__main__"},
]
# The pure core: stdlib and our own data only, no HTTP, cache, libmilter or Prometheus.
PURE = ("decisions", "tally", "selection", "index", "policy", "signals", "address")


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def imports(module: str) -> tuple[set[str], set[str]]:
    """(our modules, top-level outside packages) that `module` imports anywhere in it."""
    ours: set[str] = set()
    outside: set[str] = set()
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 0 and name.split(".")[0] != "crowdsec_milter":
                outside.add(name.split(".")[0])
                continue
            if node.level == 0:
                name = name.partition(".")[2]
            if name:
                ours.add(name.split(".")[0])
            else:  # from . import x: a module of ours, or a name from __init__
                ours.update(a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__"
                            for a in node.names)
    return ours, outside - {"__future__"}


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module in names)


def test_every_module_has_one_layer() -> None:
    placed = [m for names in LAYERS for m in names]
    assert sorted(placed) == modules(), "place each module in exactly one layer"


@pytest.mark.parametrize("module", modules())
def test_imports_only_go_down(module: str) -> None:
    ours, _ = imports(module)
    upward = sorted(m for m in ours if layer(m) >= layer(module))
    assert upward == [], f"{module} (layer {layer(module)}) imports {upward}: " + \
        ", ".join(f"{m} is layer {layer(m)}" for m in upward)


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_imports_the_standard_library_only(module: str) -> None:
    _, outside = imports(module)
    assert outside <= sys.stdlib_module_names, sorted(outside - sys.stdlib_module_names)
