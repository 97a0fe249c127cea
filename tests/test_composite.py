"""Composite schedules from charging profiles, hand-computed, for OCPP 1.6, 2.0.1 and 2.1 payloads."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargersim.composite import (
    Kind,
    PowerLimit,
    ProfileError,
    ProfileStore,
    Purpose,
    Transaction,
    parse_profile,
    period_at,
)

T0 = dt.datetime(2024, 6, 3, 8, 0, tzinfo=dt.UTC)  # a Monday
TX = Transaction(id="7", start=T0)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def v16(
    profile_id: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    stack: int = 0,
    kind: str = "Absolute",
    unit: str = "W",
    start: dt.datetime | None = T0,
    duration: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A 1.6 ``cs_charging_profiles`` dict as the library hands it to a handler."""
    schedule: dict[str, Any] = {
        "charging_rate_unit": unit,
        "charging_schedule_period": [{"start_period": s, "limit": lim} for s, lim in periods],
    }
    if start is not None:
        schedule["start_schedule"] = iso(start)
    if duration is not None:
        schedule["duration"] = duration
    return {
        "charging_profile_id": profile_id,
        "stack_level": stack,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": kind,
        "charging_schedule": schedule,
        **extra,
    }


def v2x(profile_id: int, purpose: str, periods: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A 2.0.1/2.1 ``charging_profile`` dict: ``id`` and a list of schedules."""
    return {
        "id": profile_id,
        "stack_level": extra.pop("stack", 0),
        "charging_profile_purpose": purpose,
        "charging_profile_kind": extra.pop("kind", "Absolute"),
        "charging_schedule": [
            {
                "id": 1,
                "start_schedule": iso(extra.pop("start", T0)),
                "charging_rate_unit": extra.pop("unit", "W"),
                "charging_schedule_period": periods,
            }
        ],
        **extra,
    }


def store_with(
    *profiles: tuple[dict[str, Any], int], max_w: float = 22_000, max_discharge_w: float = 0
) -> ProfileStore:
    store = ProfileStore(max_power_w=max_w, max_discharge_w=max_discharge_w)
    for payload, evse in profiles:
        store.install_payload(payload, evse, installed_at=T0)
    return store


def test_tx_default_absolute_periods_in_watts() -> None:
    store = store_with((v16(1, "TxDefaultProfile", [(0, 11_000), (1800, 7_000)]), 1))
    assert store.power_at(at(0), 1) == 11_000
    assert store.power_at(at(29.9), 1) == 11_000
    assert store.power_at(at(30), 1) == 7_000
    assert store.power_at(at(-1), 1) == 22_000  # before startSchedule: only the hardware limit


def test_amps_convert_with_voltage_and_phases() -> None:
    store = store_with((v16(1, "TxDefaultProfile", [(0, 16)], unit="A"), 1))
    assert store.power_at(at(0), 1) == pytest.approx(16 * 230 * 3)
    one_phase = v16(2, "TxDefaultProfile", [(0, 16)], unit="A", stack=1)
    one_phase["charging_schedule"]["charging_schedule_period"][0]["number_phases"] = 1
    store.install_payload(one_phase, 1, installed_at=T0)
    assert store.power_at(at(0), 1) == pytest.approx(16 * 230)
    us = ProfileStore(voltage_v=120.0)
    us.install_payload(v16(1, "TxDefaultProfile", [(0, 10)], unit="A"), 1, installed_at=T0)
    assert us.power_at(at(0), 1) == pytest.approx(10 * 120 * 3)


def test_max_profile_caps_tx_profile() -> None:
    store = store_with(
        (v16(1, "ChargePointMaxProfile", [(0, 9_000)]), 0),
        (v16(2, "TxProfile", [(0, 11_000), (600, 4_000)], transaction_id=7), 1),
    )
    assert store.power_at(at(0), 1, TX) == 9_000
    assert store.power_at(at(10), 1, TX) == 4_000
    assert store.power_at(at(10), 0) == 9_000  # EVSE 0: the station cap alone


def test_tx_profile_overrides_tx_default_only_for_its_transaction() -> None:
    store = store_with(
        (v16(1, "TxDefaultProfile", [(0, 6_000)], stack=5), 1),
        (v16(2, "TxProfile", [(0, 10_000)], transaction_id=7), 1),
    )
    assert store.power_at(at(0), 1, TX) == 10_000  # TxProfile wins despite the lower stack level
    other = Transaction(id="8", start=T0)
    assert store.power_at(at(0), 1, other) == 6_000
    assert store.power_at(at(0), 1) == 6_000  # no transaction: TxDefault


def test_highest_valid_stack_level_wins_and_falls_back_when_it_ends() -> None:
    store = store_with(
        (v16(1, "TxDefaultProfile", [(0, 7_000)], stack=0), 1),
        (v16(2, "TxDefaultProfile", [(0, 3_000)], stack=2, duration=3600), 1),
        (
            v16(3, "TxDefaultProfile", [(0, 5_000)], stack=1, valid_from=iso(at(30)), valid_to=iso(at(90))),
            1,
        ),
    )
    assert store.power_at(at(0), 1) == 3_000  # stack 2
    assert store.power_at(at(60), 1) == 5_000  # stack 2 ran out (duration 1 h), stack 1 valid
    assert store.power_at(at(90), 1) == 7_000  # stack 1 expired (validTo is exclusive)


def test_evse_specific_tx_default_beats_station_wide() -> None:
    store = store_with(
        (v16(1, "TxDefaultProfile", [(0, 7_000)], stack=3), 0),
        (v16(2, "TxDefaultProfile", [(0, 5_000)], stack=0), 2),
    )
    assert store.power_at(at(0), 1) == 7_000
    assert store.power_at(at(0), 2) == 5_000


def test_relative_profile_runs_from_transaction_start() -> None:
    store = store_with(
        (v16(1, "TxDefaultProfile", [(0, 3_000), (900, 8_000)], kind="Relative", start=None), 1)
    )
    tx = Transaction(id="7", start=at(60))
    assert store.power_at(at(70), 1, tx) == 3_000
    assert store.power_at(at(75), 1, tx) == 8_000
    assert store.power_at(at(75), 1) == 3_000  # no transaction: starts now


def test_daily_recurring_profile_repeats() -> None:
    evening = T0.replace(hour=18)
    payload = v16(1, "TxDefaultProfile", [(0, 2_000), (4 * 3600, 11_000)], kind="Recurring", start=evening)
    payload["recurrency_kind"] = "Daily"
    store = store_with((payload, 1))
    assert store.power_at(evening + dt.timedelta(hours=1), 1) == 2_000
    assert store.power_at(evening + dt.timedelta(hours=5), 1) == 11_000
    next_day = evening + dt.timedelta(days=1, minutes=30)
    assert store.power_at(next_day, 1) == 2_000
    assert store.power_at(evening - dt.timedelta(hours=1), 1) == 22_000  # not before the first one


def test_weekly_recurring_with_duration() -> None:
    payload = v16(1, "ChargePointMaxProfile", [(0, 1_000)], kind="Recurring", duration=3600)
    payload["recurrency_kind"] = "Weekly"
    store = store_with((payload, 0))
    assert store.power_at(at(30), 1) == 1_000
    assert store.power_at(at(90), 1) == 22_000
    assert store.power_at(at(30) + dt.timedelta(days=7), 1) == 1_000
    assert store.power_at(at(30) + dt.timedelta(days=1), 1) == 22_000


def test_absolute_without_start_starts_when_installed() -> None:
    store = ProfileStore()
    store.install_payload(v16(1, "TxDefaultProfile", [(0, 4_000)], start=None, duration=60), 1, at(5))
    assert store.power_at(at(5.5), 1) == 4_000
    assert store.power_at(at(4), 1) == math.inf
    assert store.power_at(at(6), 1) == math.inf


def test_v201_payload_uses_first_schedule_and_string_transaction_id() -> None:
    payload = v2x(9, "TxProfile", [{"start_period": 0, "limit": 16.0}], unit="A", transaction_id="7")
    store = store_with((payload, 1))
    assert store.power_at(at(0), 1, TX) == pytest.approx(11_040)


def test_v21_central_setpoint_discharge() -> None:
    periods = [
        {"start_period": 0, "limit": 11_000, "setpoint": -7_000, "operation_mode": "CentralSetpoint"},
        {"start_period": 600, "limit": 11_000, "setpoint": 5_000, "operation_mode": "CentralSetpoint"},
        {"start_period": 1200, "operation_mode": "Idle"},
        {
            "start_period": 1800,
            "limit": 11_000,
            "discharge_limit": -3_000,
            "setpoint": -9_000,
            "operation_mode": "CentralSetpoint",
        },
    ]
    store = store_with((v2x(1, "TxProfile", periods, transaction_id="7"), 1), max_discharge_w=10_000)
    assert store.power_at(at(0), 1, TX) == -7_000
    assert store.power_at(at(10), 1, TX) == 5_000
    assert store.power_at(at(20), 1, TX) == 0
    assert store.power_at(at(30), 1, TX) == -3_000  # setpoint clamped by the discharge limit
    assert store.limit_at(at(0), 1, TX) == PowerLimit(max_w=11_000, min_w=-7_000, setpoint_w=-7_000)


def test_discharge_capped_by_hardware_and_station_discharge_limit() -> None:
    tx = v2x(1, "TxProfile", [{"start_period": 0, "setpoint": -9_000, "operation_mode": "CentralSetpoint"}])
    cap = v2x(
        2, "ChargingStationMaxProfile", [{"start_period": 0, "limit": 20_000, "discharge_limit": -6_000}]
    )
    assert store_with((tx, 1), max_discharge_w=8_000).power_at(at(0), 1, TX) == -8_000
    assert store_with((tx, 1), (cap, 0), max_discharge_w=8_000).power_at(at(0), 1, TX) == -6_000
    assert store_with((tx, 1)).power_at(at(0), 1, TX) == 0  # the EVSE cannot discharge


def test_charging_only_profile_never_discharges() -> None:
    store = store_with(
        (v2x(1, "TxDefaultProfile", [{"start_period": 0, "limit": 0}]), 1), max_discharge_w=10_000
    )
    assert store.limit_at(at(0), 1) == PowerLimit(max_w=0, min_w=0)


def test_install_replaces_same_id_and_same_purpose_stack_level() -> None:
    store = store_with((v16(1, "TxDefaultProfile", [(0, 7_000)], stack=1), 1))
    store.install_payload(v16(1, "TxDefaultProfile", [(0, 6_000)], stack=4), 1, T0)
    assert len(store.profiles) == 1
    store.install_payload(v16(2, "TxDefaultProfile", [(0, 5_000)], stack=4), 1, T0)
    assert list(store.profiles) == [(1, 2)]
    assert store.power_at(at(0), 1) == 5_000


def test_clear_by_id_purpose_and_stack_level() -> None:
    store = store_with(
        (v16(1, "ChargePointMaxProfile", [(0, 9_000)]), 0),
        (v16(2, "TxDefaultProfile", [(0, 7_000)], stack=1), 1),
        (v16(3, "TxDefaultProfile", [(0, 5_000)], stack=2), 1),
        (v16(4, "TxProfile", [(0, 4_000)], transaction_id=7), 1),
    )
    assert store.clear(99) == 0
    assert store.clear(4) == 1
    assert store.clear(purpose="TxDefaultProfile", stack_level=2) == 1
    assert store.power_at(at(0), 1, TX) == 7_000
    assert store.clear(purpose="ChargePointMaxProfile", evse_id=1) == 0
    assert store.clear(purpose="ChargePointMaxProfile", evse_id=0) == 1
    assert store.clear() == 1
    assert store.profiles == {}


def test_rejects_what_a_station_must_reject() -> None:
    with pytest.raises(ProfileError, match="start at 0"):
        parse_profile(v16(1, "TxDefaultProfile", [(60, 1_000)]))
    with pytest.raises(ProfileError) as caught:
        parse_profile(v16(1, "TxDefaultProfile", [(0, 1_000)], kind="Recurring"))
    assert caught.value.field == "recurrency_kind"
    with pytest.raises(ProfileError, match="purpose"):
        parse_profile(v2x(1, "PriorityCharging", [{"start_period": 0, "limit": 1}]))
    store = ProfileStore()
    with pytest.raises(ProfileError, match="EVSE"):
        store.install_payload(v16(1, "TxProfile", [(0, 1_000)]), 0, T0)
    with pytest.raises(ProfileError, match="EVSE 0"):
        store.install_payload(v16(1, "ChargePointMaxProfile", [(0, 1_000)]), 1, T0)


def test_composite_schedule_merges_and_converts() -> None:
    store = store_with(
        (v16(1, "ChargePointMaxProfile", [(0, 9_000), (3600, 22_000)]), 0),
        (v16(2, "TxProfile", [(0, 11_000), (1800, 9_000), (2700, 4_000)], transaction_id=7), 1),
    )
    composite = store.composite(T0, 7200, 1, TX)
    got = [(p.start_s, p.limit.max_w) for p in composite.periods]
    assert got == [(0, 9_000), (2700, 4_000)]  # 0-45 min capped at 9 kW (merged), then 4 kW to the end
    payload = composite.to_ocpp("1.6", "A")
    assert payload["charging_rate_unit"] == "A"
    assert payload["start_schedule"] == "2024-06-03T08:00:00Z"
    assert payload["charging_schedule_period"][0] == {"start_period": 0, "limit": 13.0, "number_phases": 3}
    assert store.composite(T0, 7200, 0).to_ocpp("2.0.1")["charging_schedule_period"] == [
        {"start_period": 0, "limit": 9_000},
        {"start_period": 3600, "limit": 22_000},
    ]


def test_composite_relative_without_transaction_starts_at_window() -> None:
    store = store_with(
        (v16(1, "TxDefaultProfile", [(0, 3_000), (600, 8_000)], kind="Relative", start=None), 1)
    )
    periods = store.composite(at(30), 1200, 1).periods
    assert [(p.start_s, p.limit.max_w) for p in periods] == [(0, 3_000), (600, 8_000)]


def test_composite_v21_reports_discharge() -> None:
    periods = [
        {
            "start_period": 0,
            "setpoint": -5_000,
            "discharge_limit": -6_000,
            "operation_mode": "CentralSetpoint",
        }
    ]
    store = store_with((v2x(1, "TxProfile", periods, transaction_id="7"), 1), max_discharge_w=10_000)
    out = store.composite(T0, 600, 1, TX).to_ocpp("2.1")
    assert out["charging_schedule_period"] == [
        {
            "start_period": 0,
            "limit": 22_000,
            "discharge_limit": -6_000,
            "setpoint": -5_000,
            "operation_mode": "CentralSetpoint",
        }
    ]


# ------------------------------------------------------------------------------------------- property

limits = st.integers(0, 500).map(lambda x: x * 100.0)
period_lists = st.lists(st.tuples(st.integers(1, 120), limits), max_size=4).map(
    lambda rest: sorted({start * 60: lim for start, lim in rest}.items())
)


@st.composite
def stores(draw: st.DrawFn) -> ProfileStore:
    store = ProfileStore(max_power_w=draw(st.sampled_from([math.inf, 22_000.0])), max_discharge_w=10_000)
    n = draw(st.integers(1, 6))
    for i in range(n):
        purpose = draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]))
        fixed = {"ChargePointMaxProfile": 0, "TxProfile": 1}
        evse = fixed[purpose] if purpose in fixed else draw(st.sampled_from([0, 1]))
        kind = draw(st.sampled_from(["Absolute", "Relative", "Recurring"]))
        periods = [(0, draw(limits)), *draw(period_lists)]
        payload = v16(
            i + 1,
            purpose,
            periods,
            stack=draw(st.integers(0, 3)),
            kind=kind,
            start=at(draw(st.integers(-120, 120))) if kind != "Relative" else None,
            duration=draw(st.none() | st.integers(60, 10_000)),
        )
        payload["recurrency_kind"] = "Daily"
        if purpose == "TxProfile" and draw(st.booleans()):
            payload["transaction_id"] = 7
        store.install_payload(payload, evse, installed_at=T0)
    return store


def winning_max_limit(store: ProfileStore, t: dt.datetime) -> float:
    """The limit of the highest-stack-level max profile with a period at ``t`` (inf if none)."""
    in_force = [
        (p.stack_level, period.limit_w)
        for p in store.profiles.values()
        if p.purpose is Purpose.STATION_MAX and (period := period_at(p, t, TX.start)) is not None
    ]
    return max(in_force)[1] if in_force else math.inf


@settings(max_examples=200, deadline=None, derandomize=True)
@given(store=stores(), minutes=st.integers(-180, 24 * 60))
def test_composite_never_exceeds_the_max_profile_in_force(store: ProfileStore, minutes: int) -> None:
    t = at(minutes)
    power = store.power_at(t, 1, TX)
    assert 0 <= power <= store.max_power_w  # 1.6 profiles never discharge
    assert power <= winning_max_limit(store, t)
    schedule = store.composite(at(-60), 6 * 3600, 1, TX)
    for period in schedule.periods:
        start = schedule.start + dt.timedelta(seconds=period.start_s)
        assert period.limit == store.limit_at(start, 1, TX)
        assert period.limit.max_w <= winning_max_limit(store, start)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(store=stores(), minutes=st.integers(-180, 6 * 60 - 1))
def test_composite_schedule_matches_pointwise_limit(store: ProfileStore, minutes: int) -> None:
    schedule = store.composite(at(-180), 9 * 3600, 1, TX)
    t = at(minutes)
    offset = (t - schedule.start).total_seconds()
    current = [p for p in schedule.periods if p.start_s <= offset][-1]
    assert current.limit == store.limit_at(t, 1, TX)


def test_kind_and_purpose_enums_cover_ocpp_names() -> None:
    assert Kind("Relative") is Kind.RELATIVE
    assert Purpose("ChargingStationMaxProfile") is Purpose.STATION_MAX
