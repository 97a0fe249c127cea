"""Impossible inputs are rejected before any model is built, with an error naming object and field.

Cross-object problems raise :class:`ScenarioError` (from :mod:`optimizer.consistency`, through
:func:`optimizer.schedule`); field-level ones are pydantic ``ValidationError`` from the schema.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pydantic
import pytest

from optimizer import Scenario, ScenarioError, schedule


def at(clock: str) -> str:
    return f"2024-01-01T{clock}:00+00:00"


BASE: dict[str, Any] = {
    "start": at("00:00"),
    "step_minutes": 15,
    "n_steps": 8,
    "site": {"id": "depot", "import_limit_kw": 50.0, "base_load_kw": 5.0},
    "tariff": {"import_price_per_kwh": 0.2},
    "evses": [
        {"id": "evse-1", "max_charge_kw": 11.0, "max_discharge_kw": 11.0},
        {"id": "evse-2", "max_charge_kw": 22.0},
    ],
    "vehicles": [
        {
            "id": "ev-1",
            "evse_id": "evse-1",
            "arrival": at("00:00"),
            "departure": at("01:00"),
            "capacity_kwh": 40.0,
            "energy_at_arrival_kwh": 10.0,
            "target_energy_kwh": 20.0,
            "max_charge_kw": 11.0,
        },
        {
            "id": "ev-2",
            "evse_id": "evse-2",
            "arrival": at("00:30"),
            "departure": at("02:00"),
            "capacity_kwh": 60.0,
            "energy_at_arrival_kwh": 5.0,
            "target_energy_kwh": 30.0,
            "max_charge_kw": 22.0,
        },
    ],
}


def changed(**paths: Any) -> dict[str, Any]:
    """A copy of BASE with dotted paths replaced: ``changed(**{"vehicles.0.capacity_kwh": 5})``."""
    data = copy.deepcopy(BASE)
    for path, value in paths.items():
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


DR = {"id": "dr-1", "start": at("00:30"), "end": at("01:00"), "cap_kw": 10.0}
V2G = {"id": "v2g-1", "start": at("00:30"), "end": at("01:00"), "export_kw": 5.0}


def test_the_base_scenario_is_valid() -> None:
    scenario = Scenario.model_validate(changed(dr_events=[DR], v2g_dispatches=[V2G]))
    for policy in ("milp", "edf"):
        assert schedule(scenario, policy).status.value in ("optimal", "heuristic")


@pytest.mark.parametrize(
    ("data", "obj", "field", "words"),
    [
        pytest.param(
            changed(**{"vehicles.0.departure": at("00:00")}),
            "vehicle 'ev-1'",
            "departure",
            "not after arrival",
            id="departure-at-arrival",
        ),
        pytest.param(
            changed(**{"vehicles.1.departure": at("00:15")}),
            "vehicle 'ev-2'",
            "departure",
            "not after arrival",
            id="departure-before-arrival",
        ),
        pytest.param(
            changed(**{"vehicles.0.energy_at_arrival_kwh": 45.0}),
            "vehicle 'ev-1'",
            "energy_at_arrival_kwh",
            "above capacity_kwh=40",
            id="arrival-energy-above-capacity",
        ),
        pytest.param(
            changed(**{"vehicles.1.target_energy_kwh": 61.0}),
            "vehicle 'ev-2'",
            "target_energy_kwh",
            "above capacity_kwh=60",
            id="target-above-capacity",
        ),
        pytest.param(
            changed(**{"tariff.import_price_per_kwh": [0.2] * 7}),
            "tariff",
            "import_price_per_kwh",
            "has 7 values, expected n_steps=8",
            id="price-series-too-short",
        ),
        pytest.param(
            changed(**{"site.base_load_kw": [1.0] * 9}),
            "site 'depot'",
            "base_load_kw",
            "has 9 values",
            id="base-load-series-too-long",
        ),
        pytest.param(
            changed(**{"site.base_load_kw": [1.0] * 7 + [-1.0]}),
            "site 'depot'",
            "base_load_kw",
            "negative (-1.0) at step 7",
            id="negative-base-load",
        ),
        pytest.param(
            changed(**{"vehicles.1.evse_id": "evse-1"}),
            "EVSE 'evse-1'",
            "vehicles",
            "booked twice at once: 'ev-1' until",
            id="evse-booked-twice",
        ),
        pytest.param(
            changed(**{"vehicles.1.evse_id": "evse-9"}),
            "vehicle 'ev-2'",
            "evse_id",
            "'evse-9' is not an EVSE",
            id="unknown-evse",
        ),
        pytest.param(
            changed(**{"vehicles.1.id": "ev-1"}),
            "vehicle 'ev-1'",
            "id",
            "appears twice",
            id="duplicate-vehicle",
        ),
        pytest.param(
            changed(**{"evses.1.id": "evse-1"}),
            "EVSE 'evse-1'",
            "id",
            "appears twice",
            id="duplicate-evse",
        ),
        pytest.param(
            changed(**{"vehicles.0.arrival": at("03:00"), "vehicles.0.departure": at("04:00")}),
            "vehicle 'ev-1'",
            "arrival",
            "outside the horizon",
            id="session-after-horizon",
        ),
        pytest.param(
            changed(
                **{"vehicles.0.arrival": "2023-12-31T20:00:00+00:00", "vehicles.0.departure": at("00:00")}
            ),
            "vehicle 'ev-1'",
            "departure",
            "outside the horizon",
            id="session-before-horizon",
        ),
        pytest.param(
            changed(dr_events=[{**DR, "start": at("00:20")}]),
            "DR event 'dr-1'",
            "start",
            "not on the 0:15:00 step grid",
            id="dr-event-off-grid",
        ),
        pytest.param(
            changed(dr_events=[{**DR, "end": at("02:15")}]),
            "DR event 'dr-1'",
            "end",
            "not inside the horizon",
            id="dr-event-outside-horizon",
        ),
        pytest.param(
            changed(dr_events=[{**DR, "end": at("00:30")}]),
            "DR event 'dr-1'",
            "end",
            "is not after start",
            id="dr-event-empty",
        ),
        pytest.param(
            changed(dr_events=[{**DR, "cap_kw": None, "reduction_kw": 2.0, "baseline_kw": [9.0] * 3}]),
            "DR event 'dr-1'",
            "baseline_kw",
            "has 3 values, expected one per event step (2)",
            id="dr-baseline-wrong-length",
        ),
        pytest.param(
            changed(v2g_dispatches=[{**V2G, "end": at("01:05")}]),
            "V2G dispatch 'v2g-1'",
            "end",
            "not on the 0:15:00 step grid",
            id="v2g-dispatch-off-grid",
        ),
        pytest.param(
            changed(v2g_dispatches=[{**V2G, "start": "2023-12-31T23:45:00+00:00"}]),
            "V2G dispatch 'v2g-1'",
            "start",
            "not inside the horizon",
            id="v2g-dispatch-before-horizon",
        ),
        pytest.param(
            changed(**{"site.base_load_kw": [5.0] * 3 + [51.0] + [5.0] * 4}),
            "site 'depot'",
            "base_load_kw",
            "is 51.000 kW at step 3, above import_limit_kw=50",
            id="base-load-above-import-limit",
        ),
        pytest.param(
            changed(**{"tariff.demand_interval_minutes": 40}),
            "tariff",
            "demand_interval_minutes",
            "=40 is not a multiple of step_minutes=15",
            id="demand-interval-off-steps",
        ),
    ],
)
def test_cross_object_errors_name_object_and_field(
    data: dict[str, Any], obj: str, field: str, words: str
) -> None:
    scenario = Scenario.model_validate(data)
    with pytest.raises(ScenarioError) as caught:
        schedule(scenario, "milp")
    error = caught.value
    assert (error.obj, error.field) == (obj, field)
    assert str(error).startswith(f"{obj}: {field} ")
    assert words in str(error)


@pytest.mark.parametrize(
    ("data", "location", "words"),
    [
        pytest.param(
            changed(**{"site.import_limit_kw": -1.0}),
            ("site", "import_limit_kw"),
            "greater than or equal to 0",
            id="negative-import-limit",
        ),
        pytest.param(
            changed(**{"evses.0.max_discharge_kw": -11.0}),
            ("evses", 0, "max_discharge_kw"),
            "greater than or equal to 0",
            id="negative-evse-limit",
        ),
        pytest.param(
            changed(**{"vehicles.1.max_charge_kw": -7.0}),
            ("vehicles", 1, "max_charge_kw"),
            "greater than or equal to 0",
            id="negative-vehicle-limit",
        ),
        pytest.param(
            changed(**{"tariff.import_price_per_kwh": math.nan}),
            ("tariff", "import_price_per_kwh"),
            "must hold finite numbers, got nan",
            id="nan-price",
        ),
        pytest.param(
            changed(**{"tariff.export_price_per_kwh": [0.1] * 5 + [math.inf] + [0.1] * 2}),
            ("tariff", "export_price_per_kwh"),
            "got inf at position 5",
            id="infinite-price-in-series",
        ),
        pytest.param(
            changed(**{"vehicles.0.capacity_kwh": 0.0}),
            ("vehicles", 0, "capacity_kwh"),
            "greater than 0",
            id="zero-capacity",
        ),
        pytest.param(
            changed(**{"vehicles.0.charge_efficiency": 1.2}),
            ("vehicles", 0, "charge_efficiency"),
            "less than or equal to 1",
            id="efficiency-above-one",
        ),
        pytest.param(
            changed(**{"vehicles.1.charge_taper": {"start_soc": 1.0, "end_fraction": 0.05}}),
            ("vehicles", 1, "charge_taper"),
            "vehicle 'ev-2': charge_taper.start_soc: Input should be less than 1",
            id="taper-starting-at-full",
        ),
        pytest.param(
            changed(**{"vehicles.0.charge_taper": {"start_soc": 0.8, "end_fraction": -0.1}}),
            ("vehicles", 0, "charge_taper"),
            "vehicle 'ev-1': charge_taper.end_fraction: Input should be greater than or equal to 0",
            id="taper-below-zero-at-full",
        ),
        pytest.param(
            changed(**{"vehicles.0.charge_taper": {"start_soc": 0.8}}),
            ("vehicles", 0, "charge_taper"),
            "vehicle 'ev-1': charge_taper.end_fraction: Field required",
            id="taper-without-end-fraction",
        ),
        pytest.param(
            changed(**{"vehicles.0.arrival": "2024-01-01T00:00:00"}),
            ("vehicles", 0, "arrival"),
            "must carry a UTC offset",
            id="naive-arrival",
        ),
        pytest.param(
            changed(dr_events=[{**DR, "reduction_kw": 2.0}]),
            ("dr_events", 0),
            "DR event 'dr-1': give exactly one of reduction_kw and cap_kw",
            id="dr-cap-and-reduction",
        ),
        pytest.param(
            changed(timezone="Mars/Olympus_Mons"),
            ("timezone",),
            "must be an IANA time zone",
            id="unknown-timezone",
        ),
    ],
)
def test_field_errors_name_object_and_field(
    data: dict[str, Any], location: tuple[str | int, ...], words: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        Scenario.model_validate(data)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [location]
    assert words in errors[0]["msg"]
    assert ".".join(map(str, location)) in str(caught.value)
