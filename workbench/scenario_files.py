"""Scenario files: :class:`optimizer.Scenario` to and from JSON or YAML, chosen by the file's suffix.

``.json`` files are the pydantic JSON of the scenario; ``.yaml``/``.yml`` files hold the same data.
YAML is read with a safe loader that does not turn clock times such as ``22:00`` into base-60
integers (YAML 1.1 would read ``22:00`` as 1320), so hand-written time windows mean what they say.

Reading checks every field (pydantic); cross-object checks (EVSEs booked twice, series lengths) are
:func:`optimizer.build_problem`'s. Every failure is a :class:`ScenarioFileError` naming the file and
the position or field at fault; a missing file is a :class:`FileNotFoundError`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from optimizer.scenario import Scenario

JSON_SUFFIXES = frozenset({".json"})
YAML_SUFFIXES = frozenset({".yaml", ".yml"})


class ScenarioFileError(ValueError):
    """A scenario file that cannot be read: ``path``, and ``field`` (``vehicles[2].arrival``) if known."""

    def __init__(self, path: Path, problem: str, field: str | None = None) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def write_scenario(scenario: Scenario, path: str | Path) -> Path:
    """Write ``scenario`` as JSON or YAML according to ``path``'s suffix; return the path."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix in JSON_SUFFIXES:
        text = scenario.model_dump_json(indent=2) + "\n"
    else:
        text = yaml.dump(
            scenario.model_dump(mode="json"), Dumper=_ScenarioDumper, sort_keys=False, allow_unicode=True
        )
    path.write_text(text, encoding="utf-8")
    return path


def read_scenario(path: str | Path) -> Scenario:
    """Read and validate a JSON or YAML scenario file (by suffix)."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"scenario file not found: {path}")
    text = path.read_text(encoding="utf-8")
    data = _load_json(text, path) if suffix in JSON_SUFFIXES else _load_yaml(text, path)
    if not isinstance(data, dict):
        raise ScenarioFileError(path, f"holds a {type(data).__name__}, expected a mapping of scenario fields")
    try:
        return Scenario.model_validate(data)
    except ValidationError as error:
        problems = [(_location(e["loc"]), e["msg"]) for e in error.errors()]
        listed = "; ".join(f"{where or '(top level)'}: {msg}" for where, msg in problems)
        plural = "s" if len(problems) > 1 else ""
        raise ScenarioFileError(
            path, f"invalid scenario ({len(problems)} error{plural}): {listed}", field=problems[0][0]
        ) from error


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in JSON_SUFFIXES | YAML_SUFFIXES:
        known = ", ".join(sorted(JSON_SUFFIXES | YAML_SUFFIXES))
        raise ValueError(f"{path}: unknown scenario file suffix {path.suffix!r}; use one of {known}")
    return suffix


def _load_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ScenarioFileError(
            path, f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from error


def _load_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_ScenarioLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ScenarioFileError(path, f"is not valid YAML: {problem}{where}") from error


def _location(loc: tuple[int | str, ...]) -> str:
    """``('vehicles', 2, 'arrival')`` -> ``vehicles[2].arrival``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _ScenarioLoader(yaml.SafeLoader):
    """YAML 1.1 safe loading without base-60 numbers: ``22:00`` stays the string ``"22:00"``."""


_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_ScenarioLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


class _ScenarioDumper(yaml.SafeDumper):
    """Safe YAML with per-step series on one line (``[0.06, 0.06, ...]``) instead of one item per line."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.SequenceNode:
    flat = all(isinstance(item, int | float | str | bool) or item is None for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat and bool(items))


_ScenarioDumper.add_representer(list, _represent_list)
