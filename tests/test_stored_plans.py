"""The stored plan has one parser (``aggregator/control/schedules.py``) and nobody else reads its keys.

``schedule_versions.plan`` and ``.counterfactual`` are JSON (``{"site_import_kw": [...], "vehicles":
{vehicle id: {"power_kw": [...], "evse_id": str}}}``). :func:`read_plan` and :func:`read_counterfactual`
turn them into a :class:`StoredPlan`; a document of another shape is a :class:`ScheduleDataError` that
names the version and the field. The guard at the end reads every module of ``aggregator`` and fails
on a raw plan key read anywhere but in ``schedules.py``.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest

from aggregator.control.schedules import (
    ScheduleDataError,
    empty_plan_document,
    planned_sessions,
    read_counterfactual,
    read_plan,
    shifted_plan_document,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)
STEP_S = 900


def plan(site: list[Any], **vehicles: list[Any]) -> dict[str, Any]:
    return {
        "site_import_kw": site,
        "vehicles": {
            vehicle_id: {"power_kw": power, "evse_id": f"cp-{vehicle_id}/1"}
            for vehicle_id, power in vehicles.items()
        },
    }


# ------------------------------------------------------------------------------------------ reading


def test_a_plan_is_read_as_arrays_with_its_vehicles_sessions() -> None:
    stored = read_plan(
        7, "depot-1", T0, STEP_S, plan([4.0, 2, 0.0], a=[4.0, 2.0, 0.0], b=[0, 0, 0]), {"a": 31, "b": "x"}
    )
    assert (stored.version_id, stored.site_id, stored.n_steps, stored.step) == (
        7,
        "depot-1",
        3,
        dt.timedelta(minutes=15),
    )
    assert stored.site_import_kw.tolist() == [4.0, 2.0, 0.0]
    a = stored.vehicle("a")
    assert a is not None and a.evse_id == "cp-a/1" and a.power_kw.tolist() == [4.0, 2.0, 0.0]
    assert a.session_id == 31
    b = stored.vehicle("b")
    assert b is not None and b.session_id is None  # "x" is not a charging session's id
    assert stored.vehicle("c") is None
    assert stored.horizon_end == T0 + dt.timedelta(minutes=45)


def test_a_plan_without_vehicles_or_evse_id_is_read() -> None:
    assert read_plan(1, "s", T0, STEP_S, {"site_import_kw": [1.0]}).vehicles == ()
    (vehicle,) = read_plan(
        1, "s", T0, STEP_S, {"site_import_kw": [1.0], "vehicles": {"a": {"power_kw": [1]}}}
    ).vehicles
    assert vehicle.evse_id == ""


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "schedule version 42: plan is not an object: None"),
        ({"vehicles": {}}, "schedule version 42: plan.site_import_kw is missing"),
        ({"site_import_kw": "1, 2"}, "schedule version 42: plan.site_import_kw is not a list: '1, 2'"),
        (plan([1.0, "2"]), "schedule version 42: plan.site_import_kw[1] is not a number: '2'"),
        (plan([1.0, None]), "schedule version 42: plan.site_import_kw[1] is null"),
        (
            {"site_import_kw": [1.0], "vehicles": []},
            "schedule version 42: plan.vehicles is not an object: []",
        ),
        (plan([1.0], a=[True]), r"schedule version 42: plan.vehicles['a'].power_kw[0] is not a number: True"),
        (
            {"site_import_kw": [1.0], "vehicles": {"a": {"evse_id": "cp-1/1"}}},
            "schedule version 42: plan.vehicles['a'].power_kw is missing",
        ),
        (
            {"site_import_kw": [1.0], "vehicles": {"a": {"power_kw": [1.0], "evse_id": 3}}},
            "schedule version 42: plan.vehicles['a'].evse_id is not a string: 3",
        ),
        (
            plan([1.0, 2.0, 3.0], a=[1.0, 2.0]),
            "schedule version 42: plan.vehicles['a'].power_kw has 2 values, the plan has 3 steps",
        ),
    ],
)
def test_a_malformed_plan_names_the_version_and_the_field(document: object, message: str) -> None:
    with pytest.raises(ScheduleDataError) as raised:
        read_plan(42, "depot-1", T0, STEP_S, document)
    assert str(raised.value) == message
    assert raised.value.version_id == 42 and str(raised.value).startswith(
        f"schedule version 42: {raised.value.field} "
    )


def test_a_counterfactual_keeps_nulls_as_nan_and_each_series_its_length() -> None:
    assert read_counterfactual(3, "s", T0, STEP_S, None) is None
    stored = read_counterfactual(3, "s", T0, STEP_S, plan([9.0, None, 9.0, 9.0], a=[4.0, 4.0]), {"a": 8})
    assert stored is not None
    assert stored.site_import_kw.tolist()[::2] == [9.0, 9.0] and math.isnan(stored.site_import_kw[1])
    (vehicle,) = stored.vehicles
    assert (vehicle.power_kw.tolist(), vehicle.session_id) == ([4.0, 4.0], 8)
    with pytest.raises(
        ScheduleDataError, match=r"^schedule version 3: counterfactual.vehicles\['a'\].power_kw "
    ):
        read_counterfactual(3, "s", T0, STEP_S, {"site_import_kw": [], "vehicles": {"a": {"power_kw": 4}}})


def test_planned_sessions_keeps_only_ids() -> None:
    assert planned_sessions({"a": 1, "b": None, "c": "2"}) == {"a": 1}
    assert planned_sessions(None) == {} and planned_sessions([1, 2]) == {}


# ------------------------------------------------------------------------------------------ writing


def test_what_the_loop_writes_reads_back() -> None:
    empty = read_plan(1, "s", T0, STEP_S, empty_plan_document(4).model_dump())
    assert empty.site_import_kw.tolist() == [0.0] * 4 and empty.vehicles == ()

    previous = read_plan(1, "s", T0, STEP_S, plan([5.0, 6.0, 7.0, 8.0], a=[1.0, 2.0, 3.0, 4.0], b=[9.0] * 4))
    moved = shifted_plan_document(previous, T0 + dt.timedelta(minutes=30), 4, {"a"})
    assert moved is not None and moved.model_dump() == {
        "site_import_kw": [7.0, 8.0, 0.0, 0.0],
        "vehicles": {"a": {"power_kw": [3.0, 4.0, 0.0, 0.0], "evse_id": "cp-a/1"}},
    }
    shifted = read_plan(2, "s", T0 + dt.timedelta(minutes=30), STEP_S, moved.model_dump())
    assert shifted.vehicle("a") is not None and shifted.vehicle("b") is None
    assert shifted_plan_document(previous, T0 + dt.timedelta(hours=1), 4, {"a"}) is None  # nothing left
    assert shifted_plan_document(previous, T0 - dt.timedelta(minutes=15), 4, {"a"}) is None  # before it


# ------------------------------------------------------------------------------------------ the guard

PLAN_KEYS = frozenset({"site_import_kw", "vehicles", "power_kw", "evse_id"})
VEHICLE_KEYS = frozenset({"power_kw", "evse_id"})
"""Keys only a planned vehicle has: read anywhere, they are a plan read. ``site_import_kw`` and
``vehicles`` are also column and field names elsewhere, so they count when read from something named
for a plan or a counterfactual."""
OWNER = ROOT / "aggregator" / "control" / "schedules.py"


def _names(node: ast.AST) -> set[str]:
    found = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.Name):
            found.add(inner.id.lower())
        elif isinstance(inner, ast.Attribute):
            found.add(inner.attr.lower())
    return found


def raw_plan_key_reads(source: str) -> list[tuple[int, str]]:
    """(line, key) of every raw plan key read in ``source``: ``x["power_kw"]`` and ``x.get("power_kw")``
    (also ``pop`` / ``setdefault``), and the same for ``site_import_kw`` / ``vehicles`` when ``x``
    names a plan or counterfactual."""
    reads = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            receiver, key = node.value, node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"get", "pop", "setdefault"}
            and node.args
        ):
            receiver, key = node.func.value, node.args[0]
        else:
            continue
        if not (isinstance(key, ast.Constant) and key.value in PLAN_KEYS):
            continue
        if key.value in VEHICLE_KEYS or any(
            "plan" in name or "counterfactual" in name for name in _names(receiver)
        ):
            reads.append((node.lineno, key.value))
    return sorted(reads)


def test_no_module_but_schedules_reads_a_raw_plan_key() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} reads {key!r}"
        for path in sorted((ROOT / "aggregator").rglob("*.py"))
        if path != OWNER
        for line, key in raw_plan_key_reads(path.read_text())
    ]
    assert not found, "read stored plans through aggregator.control.schedules (StoredPlan):\n" + "\n".join(
        found
    )


def test_the_guard_finds_the_reads_it_was_written_for() -> None:
    # the shapes the issue found, one a line; then reads that are not of a plan
    source = """
planned["evse_id"]
planned["power_kw"]
previous.plan.get("site_import_kw", [])
previous.plan.get("vehicles", {})
(counterfactual or {}).get("vehicles")
schedule.plan.get("vehicles") or {}
entry.get("power_kw", [])
select(ScheduleVersion.plan["vehicles"])
table["site_import_kw"]
(row.result_summary or {}).get("vehicles", {})
plan.frame()[["site_import_kw"]]
{"vehicles": {}, "power_kw": 1}
"""
    assert raw_plan_key_reads(source) == [
        (2, "evse_id"),
        (3, "power_kw"),
        (4, "site_import_kw"),
        (5, "vehicles"),
        (6, "vehicles"),
        (7, "vehicles"),
        (8, "power_kw"),
        (9, "vehicles"),
    ]
