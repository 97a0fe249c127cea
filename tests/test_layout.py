"""The map of rooms in docs/architecture.md, checked against the code's own imports.

Each rule names a room (a top-level package, or a folder of ``aggregator``) and the rooms it may
import. An import of a room not on its list fails with the file, the line and the rule; so does a
module past the size limit without a reason written at its top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top-level packages: what each may import of ours (itself always).
PACKAGE_RULES: dict[str, set[str]] = {
    "wire": set(),
    "optimizer": set(),
    "market_adapters": {"optimizer"},
    "workbench": {"optimizer", "market_adapters"},
    "site_gateway": {"wire"},
    "chargersim": {"wire"},
    "aggregator": {"wire", "optimizer", "market_adapters", "site_gateway", "chargersim", "workbench"},
}

# Rooms inside aggregator: what each may import of aggregator (itself always).
AGGREGATOR_RULES: dict[str, set[str]] = {
    "db": set(),
    "programs": {"db", "control.schedules"},
    "ingestion": {"db", "control.replanning"},
    "control": {"db", "programs", "ingestion"},
    "settlement": {"db", "programs", "ingestion", "control.schedules"},
    "api": {"db", "programs", "ingestion", "control", "settlement"},
    "runtime": {"db", "programs", "ingestion", "control", "settlement", "api"},
    "cli": {"db", "programs", "ingestion", "control", "settlement", "api", "runtime"},
}

SIZE_LIMIT = 600
"""Lines past which a module must say at its top why it is not split (CONVENTIONS.md)."""


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in ``path``, at any depth (lazy imports count)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def aggregator_room(dotted: str) -> str | None:
    """``aggregator.control.inputs`` -> ``control``; None for modules at aggregator's root."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 else None


def allowed_in_aggregator(room: str, target: str) -> bool:
    rules = AGGREGATOR_RULES[room]
    target_room = aggregator_room(target)
    if target_room is None or target_room == room:
        return True
    module = ".".join(target.split(".")[1:3])
    return target_room in rules or module in rules


@pytest.mark.parametrize("package", sorted(PACKAGE_RULES))
def test_packages_import_only_what_their_rule_allows(package: str) -> None:
    allowed = PACKAGE_RULES[package] | {package}
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(package)
        for line, module in imports_of(path)
        if module.split(".")[0] in PACKAGE_RULES and module.split(".")[0] not in allowed
    ]
    assert not broken, f"{package} may import only {sorted(allowed)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("room", sorted(AGGREGATOR_RULES))
def test_aggregator_rooms_import_only_what_their_rule_allows(room: str) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in python_files(f"aggregator/{room}")
        for line, module in imports_of(path)
        if module.startswith("aggregator.") and not allowed_in_aggregator(room, module)
    ]
    assert not broken, f"aggregator/{room} may import {sorted(AGGREGATOR_RULES[room])}:\n" + "\n".join(broken)


def test_aggregator_has_no_modules_at_its_root() -> None:
    loose = sorted(p.name for p in (ROOT / "aggregator").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"every aggregator module belongs to a room (docs/architecture.md): {loose}"


def test_every_aggregator_room_has_a_rule() -> None:
    rooms = {p.name for p in (ROOT / "aggregator").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(AGGREGATOR_RULES)


def test_long_modules_say_why_at_their_top() -> None:
    too_long = []
    for package in PACKAGE_RULES:
        for path in python_files(package):
            text = path.read_text()
            lines = text.count("\n")
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if lines > SIZE_LIMIT and "not split" not in docstring.lower():
                too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, (
        f"modules past {SIZE_LIMIT} lines: split them, or say at the top why they are not split:\n"
        + "\n".join(too_long)
    )


def test_the_rules_catch_a_forbidden_import(tmp_path: Path) -> None:
    # the checker itself: an edge module importing the centre is found, with its line
    module = tmp_path / "edge.py"
    module.write_text("import json\n\n\ndef f():\n    from aggregator.db import models\n")
    assert imports_of(module) == [(1, "json"), (5, "aggregator.db.models")]
    assert not allowed_in_aggregator("programs", "aggregator.control.loop")
    assert allowed_in_aggregator("settlement", "aggregator.control.schedules")
