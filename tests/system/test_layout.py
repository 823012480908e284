"""The layout's dependency direction, checked by walking every import (issue #9).

    api -> counters.runtime -> counters domain and persistence
    persistence -> the domain's keys, errors and types (never api, runtime or cli)
    the domain never imports persistence, counters.runtime, counters.cli or api

A module-level import, a function-level import and an ``if TYPE_CHECKING`` import all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "counters", "persistence")

# Which packages each layer may not import (prefix match on dotted module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "api": ("persistence", "counters.cli"),
    "counters.cli": ("api",),
    "counters.runtime": ("api", "counters.cli"),
    "persistence": ("api", "counters.runtime", "counters.cli", "counters.exp.service"),
    "counters": ("api", "persistence", "counters.runtime", "counters.cli"),
}


def _layer(module: str) -> str:
    """The most specific FORBIDDEN key that ``module`` belongs to."""
    matches = [key for key in FORBIDDEN if module == key or module.startswith(key + ".")]
    return max(matches, key=len)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _edges_against_direction() -> list[str]:
    bad: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            forbidden = FORBIDDEN[_layer(module)]
            for line, target in _imports(path):
                for prefix in forbidden:
                    if target == prefix or target.startswith(prefix + "."):
                        rel = path.relative_to(ROOT)
                        bad.append(f"{rel}:{line}: {module} imports {target}")
    return bad


def test_no_import_points_against_the_layering() -> None:
    assert _edges_against_direction() == []


def test_the_checker_sees_a_bad_edge(tmp_path: Path) -> None:
    """The walker is not vacuous: a domain module importing persistence is reported."""
    assert _layer("counters.exp.service") == "counters"
    assert _layer("counters.runtime.services") == "counters.runtime"
    source = "from persistence.store import Store\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(path) == [(1, "persistence.store"), (1, "persistence.store.Store")]
