"""Local safety control: the site limits hold for any input, fallback engages and leaves, EDF, headroom."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from site_gateway.safety import (
    Cap,
    EvseState,
    Mode,
    SafetyController,
    Session,
    Setpoint,
    SiteLimits,
    allocate,
)
from wire.contract import LimitReason

NOW = dt.datetime(2024, 6, 3, 8, 0, tzinfo=dt.UTC)
LIMITS = SiteLimits(import_limit_kw=50.0, export_limit_kw=20.0)


def hours(h: float) -> dt.datetime:
    return NOW + dt.timedelta(hours=h)


def session(departs_in_h: float | None = 8, need: float = 30, max_kw: float = 22, v2g: float = 0) -> Session:
    return Session(
        departure=None if departs_in_h is None else hours(departs_in_h),
        energy_needed_kwh=need,
        max_charge_kw=max_kw,
        max_discharge_kw=v2g,
    )


def setpoint(evse: str, kw: float, until_h: float = 0.25) -> Setpoint:
    return Setpoint(evse, kw, valid_from=hours(-0.25), valid_until=hours(until_h))


def test_setpoints_within_limit_are_followed() -> None:
    evses = [EvseState("a", session()), EvseState("b", session(v2g=10)), EvseState("c")]
    out = allocate(NOW, LIMITS, 10, evses, {"a": setpoint("a", 20), "b": setpoint("b", -5)})
    assert out.mode is Mode.NORMAL
    assert out.power_kw == {"a": 20, "b": -5, "c": 0}


def test_over_asking_is_scaled_down_proportionally() -> None:
    evses = [EvseState("a", session()), EvseState("b", session())]
    out = allocate(NOW, LIMITS, 20, evses, {"a": setpoint("a", 20), "b": setpoint("b", 20)})
    assert out.power_kw == pytest.approx({"a": 15, "b": 15})  # 30 kW of room for 40 asked


def test_setpoints_clipped_to_session_limits() -> None:
    evses = [
        EvseState("a", session(max_kw=11)),
        EvseState("b", session(v2g=4)),
        EvseState("c", session(need=0)),
    ]
    sps = {"a": setpoint("a", 20), "b": setpoint("b", -9), "c": setpoint("c", 7)}
    assert allocate(NOW, LIMITS, 0, evses, sps).power_kw == {"a": 11, "b": -4, "c": 0}


def test_vehicle_drawing_less_frees_headroom_for_the_others() -> None:
    # 30 kW of room, 60 asked: a tapering vehicle drawing 4 kW is held at 4 + 1 kW margin
    evses = [
        EvseState("taper", session(), measured_kw=4),
        EvseState("b", session(), measured_kw=15),
        EvseState("c", session(), measured_kw=None),
    ]
    sps = {"taper": setpoint("taper", 20), "b": setpoint("b", 20), "c": setpoint("c", 20)}
    out = allocate(NOW, LIMITS, 20, evses, sps)
    # taper capped at 5; 25 kW left for b (cap 16) and c (cap 20) asking 20 each: factor 0.625 -> 12.5
    assert out.power_kw == pytest.approx({"taper": 5, "b": 12.5, "c": 12.5})
    evses[1] = EvseState("b", session(), measured_kw=9)  # b now also draws less: capped at 10
    out = allocate(NOW, LIMITS, 20, evses, sps)
    assert out.power_kw == pytest.approx({"taper": 5, "b": 10, "c": 15})


def test_redistribution_never_exceeds_setpoints() -> None:
    evses = [EvseState("a", session(), measured_kw=2), EvseState("b", session())]
    out = allocate(NOW, LIMITS, 30, evses, {"a": setpoint("a", 15), "b": setpoint("b", 12)})
    assert out.power_kw == pytest.approx({"a": 3, "b": 12})  # 20 kW room, 27 asked; b stops at 12


def test_discharge_limited_by_export_limit_without_charging_credit() -> None:
    evses = [EvseState(k, session(v2g=20)) for k in "abc"]
    sps = {"a": setpoint("a", -20), "b": setpoint("b", -20), "c": setpoint("c", 10)}
    out = allocate(NOW, LIMITS, 5, evses, sps)  # export room 20 + 5 = 25 kW, c's charging not counted
    assert out.power_kw == pytest.approx({"a": -12.5, "b": -12.5, "c": 10})


def test_unplanned_vehicle_gets_what_is_left_earliest_departure_first() -> None:
    evses = [EvseState("a", session()), EvseState("late", session(10)), EvseState("soon", session(2))]
    out = allocate(NOW, LIMITS, 10, evses, {"a": setpoint("a", 15)})
    assert out.power_kw == {"a": 15, "soon": 22, "late": 3}


def test_fallback_without_schedule_is_edf_and_never_discharges() -> None:
    evses = [
        EvseState("late", session(10)),
        EvseState("never", session(None)),
        EvseState("soon", session(1, v2g=10)),
        EvseState("full", session(0.5, need=0)),
    ]
    out = allocate(NOW, LIMITS, 10, evses, {})
    assert out.mode is Mode.FALLBACK
    assert out.reason == "no schedule from the centre"
    assert out.power_kw == {"soon": 22, "late": 18, "never": 0, "full": 0}


def test_fallback_when_schedule_ran_out() -> None:
    evses = [EvseState("a", session(v2g=10))]
    out = allocate(NOW, LIMITS, 0, evses, {"a": setpoint("a", -10, until_h=0)})
    assert out.mode is Mode.FALLBACK
    assert "ran out" in out.reason
    assert out.power_kw == {"a": 22}


def test_controller_reports_mode_changes() -> None:
    now = [NOW]
    ctl = SafetyController(LIMITS, clock=lambda: now[0])
    evses = [EvseState("a", session())]
    sps = {"a": setpoint("a", 7)}
    _, change = ctl.step(0, evses, sps)
    assert change is not None and change.mode is Mode.NORMAL and change.since == NOW
    now[0] = hours(0.1)
    _, change = ctl.step(0, evses, sps)
    assert change is None
    now[0] = hours(0.5)  # the schedule ran out at +15 min: fallback
    allocation, change = ctl.step(0, evses, sps)
    assert change is not None and change.mode is Mode.FALLBACK and change.since == hours(0.5)
    assert allocation.power_kw == {"a": 22}
    now[0] = hours(1)
    fresh = {"a": Setpoint("a", 5, hours(1), hours(2))}
    allocation, change = ctl.step(0, evses, fresh)
    assert change is not None and change.mode is Mode.NORMAL
    assert "0:30:00 in fallback" in change.reason
    assert allocation.power_kw == {"a": 5}
    assert [e.mode for e in ctl.events] == [Mode.NORMAL, Mode.FALLBACK, Mode.NORMAL]


# ------------------------------------------------------------------------------ reserves and caps


def test_an_arrival_gets_the_reserve_back_before_the_planned_vehicles() -> None:
    """a is planned for the whole site; b plugs in and is not planned yet: it gets the 7 kW reserve
    its idle charger kept, a the rest, and both caps say why."""
    evses = [EvseState("a", session(max_kw=50)), EvseState("b", session())]
    out = allocate(NOW, LIMITS, 0, evses, {"a": setpoint("a", 50)}, arrival_reserve_kw=7)
    assert out.power_kw == pytest.approx({"a": 43, "b": 7})
    assert out.caps == {
        "a": Cap(pytest.approx(43), LimitReason.RESERVE),  # type: ignore[arg-type]
        "b": Cap(7, LimitReason.RESERVE),
    }
    # without the handed-back reserve, b would get what is left: nothing
    assert allocate(NOW, LIMITS, 0, evses, {"a": setpoint("a", 50)}).power_kw == {"a": 50, "b": 0}


def test_an_idle_reserve_takes_room_and_its_cap_says_so() -> None:
    evses = [EvseState("a", session(max_kw=50)), EvseState("idle")]
    out = allocate(NOW, LIMITS, 0, evses, {"a": setpoint("a", 50)}, idle_reserve_kw=10)
    assert out.power_kw == {"a": 40, "idle": 0}
    assert out.caps == {"a": Cap(40, LimitReason.RESERVE)}


def test_every_cap_that_meets_the_ask_is_reported_with_its_reason() -> None:
    evses = [
        EvseState("scaled", session(max_kw=50)),
        EvseState("at-max", session(max_kw=11)),
        EvseState("full", session(need=0)),
        EvseState("v2g", session(v2g=20)),
        EvseState("no-v2g", session()),
        EvseState("below", session()),
    ]
    sps = {
        "scaled": setpoint("scaled", 45),
        "at-max": setpoint("at-max", 20),
        "full": setpoint("full", 5),
        "v2g": setpoint("v2g", -20),
        "no-v2g": setpoint("no-v2g", -5),
        "below": setpoint("below", 3),
    }
    out = allocate(NOW, LIMITS, 10, evses, sps)  # 40 kW to import (45 + 11 + 3 asked), 30 to export
    assert out.power_kw == pytest.approx(
        {
            "scaled": 45 * 40 / 59,
            "at-max": 11 * 40 / 59,
            "full": 0,
            "v2g": -20,
            "no-v2g": 0,
            "below": 3 * 40 / 59,
        }
    )
    assert out.caps["scaled"] == Cap(pytest.approx(45 * 40 / 59), LimitReason.SITE_LIMIT)  # type: ignore[arg-type]
    assert out.caps["at-max"] == Cap(pytest.approx(11 * 40 / 59), LimitReason.SITE_LIMIT)  # type: ignore[arg-type]
    assert out.caps["full"] == Cap(0, LimitReason.ENERGY_REQUEST_MET)
    assert out.caps["v2g"] == Cap(20, LimitReason.CHARGER_MAX, discharge=True)  # asked just the max
    assert out.caps["no-v2g"] == Cap(0, LimitReason.CHARGER_MAX, discharge=True)
    assert out.caps["below"] == Cap(pytest.approx(3 * 40 / 59), LimitReason.SITE_LIMIT)  # type: ignore[arg-type]
    roomy = allocate(
        NOW, LIMITS, 0, evses[:2], {"scaled": setpoint("scaled", 20), "at-max": setpoint("at-max", 20)}
    )
    assert roomy.caps == {"at-max": Cap(11, LimitReason.CHARGER_MAX)}  # "scaled" gets all it asked


def test_fallback_caps_say_fallback() -> None:
    evses = [EvseState("soon", session(1)), EvseState("late", session(10))]
    out = allocate(NOW, SiteLimits(30), 0, evses, {})
    assert out.power_kw == {"soon": 22, "late": 8}
    assert out.caps == {"soon": Cap(22, LimitReason.CHARGER_MAX), "late": Cap(8, LimitReason.FALLBACK)}


def test_a_site_limit_cap_holds_while_the_centre_plans_to_it_and_the_site_is_full() -> None:
    ctl = SafetyController(SiteLimits(30), clock=lambda: NOW)
    evses = [EvseState("a", session()), EvseState("b", session())]
    out, _ = ctl.step(0, evses, {"a": setpoint("a", 20), "b": setpoint("b", 20)})
    assert out.caps == {k: Cap(15, LimitReason.SITE_LIMIT) for k in "ab"}
    # The next plan took the caps in: they still hold, the site being full.
    out, _ = ctl.step(0, evses, {"a": setpoint("a", 15), "b": setpoint("b", 15)})
    assert out.power_kw == {"a": 15, "b": 15}
    assert out.caps == {k: Cap(15, LimitReason.SITE_LIMIT) for k in "ab"}
    # Room to spare: the limit no longer binds and is no longer reported.
    out, _ = ctl.step(0, evses, {"a": setpoint("a", 10), "b": setpoint("b", 10)})
    assert out.caps == {}


# ------------------------------------------------------------------------------------------- property

kw = st.integers(-400, 400).map(lambda x: x / 10)


@st.composite
def scenes(draw: st.DrawFn) -> tuple[SiteLimits, float, list[EvseState], dict[str, Setpoint]]:
    limits = SiteLimits(draw(st.integers(0, 200).map(float)), draw(st.integers(0, 100).map(float)))
    base = draw(st.floats(-limits.export_limit_kw, limits.import_limit_kw))
    evses, setpoints = [], {}
    for i in range(draw(st.integers(0, 8))):
        evse_id = f"e{i}"
        plugged = draw(st.booleans()) or i == 0
        sess = None
        if plugged:
            sess = Session(
                departure=draw(st.none() | st.integers(0, 24).map(hours)),
                energy_needed_kwh=draw(st.sampled_from([0.0, 5.0, 60.0])),
                max_charge_kw=draw(st.sampled_from([3.7, 7.4, 11.0, 22.0, 50.0])),
                max_discharge_kw=draw(st.sampled_from([0.0, 10.0])),
            )
        measured = draw(st.none() | st.floats(-20, 60))
        evses.append(EvseState(evse_id, sess, measured))
        if draw(st.booleans()):
            start = hours(draw(st.sampled_from([-1.0, -0.1, 0.1])))
            setpoints[evse_id] = Setpoint(evse_id, draw(kw), start, start + dt.timedelta(minutes=30))
    return limits, base, evses, setpoints


@settings(max_examples=500, deadline=None, derandomize=True)
@given(scene=scenes())
def test_site_limits_hold_for_any_input(
    scene: tuple[SiteLimits, float, list[EvseState], dict[str, Setpoint]],
) -> None:
    limits, base, evses, setpoints = scene
    out = allocate(NOW, limits, base, evses, setpoints)
    assert set(out.power_kw) == {e.evse_id for e in evses}
    assert base + out.total_kw <= limits.import_limit_kw + 1e-6
    assert base + out.total_kw >= -limits.export_limit_kw - 1e-6
    charging = sum(p for p in out.power_kw.values() if p > 0)
    assert base + charging <= limits.import_limit_kw + 1e-6  # no credit taken for discharge
    for e in evses:
        p = out.power_kw[e.evse_id]
        if e.session is None:
            assert p == 0
            continue
        assert -e.session.max_discharge_kw - 1e-9 <= p <= e.session.max_charge_kw + 1e-9
        sp = setpoints.get(e.evse_id)
        if out.mode is Mode.FALLBACK:
            assert p >= 0
        elif sp is not None and sp.is_fresh(NOW):
            assert p <= max(sp.power_kw, 0) + 1e-9 and p >= min(sp.power_kw, 0) - 1e-9
    has_fresh = any(s.is_fresh(NOW) for s in setpoints.values())
    assert out.mode is (Mode.NORMAL if has_fresh else Mode.FALLBACK)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(scene=scenes())
def test_fallback_is_earliest_deadline_first(
    scene: tuple[SiteLimits, float, list[EvseState], dict[str, Setpoint]],
) -> None:
    limits, base, evses, _ = scene
    out = allocate(NOW, limits, base, evses, {})
    plugged = sorted(
        (e for e in evses if e.session is not None and e.measured_kw is None),
        key=lambda e: (e.session.departure or hours(1e6)).timestamp(),  # type: ignore[union-attr]
    )
    # a vehicle gets less than it wants only if every earlier-leaving one got all it wants
    for n, e in enumerate(plugged):
        assert e.session is not None
        wanted = e.session.max_charge_kw if e.session.energy_needed_kwh > 0 else 0.0
        if out.power_kw[e.evse_id] > 1e-9:
            for earlier in plugged[:n]:
                assert earlier.session is not None
                if earlier.session.departure != e.session.departure:
                    want = earlier.session.max_charge_kw if earlier.session.energy_needed_kwh > 0 else 0.0
                    assert out.power_kw[earlier.evse_id] == pytest.approx(want)
        assert out.power_kw[e.evse_id] <= wanted + 1e-9


@settings(max_examples=500, deadline=None, derandomize=True)
@given(scene=scenes(), idle_reserve=st.sampled_from([0.0, 7.4, 30.0]), arrival=st.sampled_from([0.0, 3.7]))
def test_reserves_hold_and_every_shortfall_has_a_cap(
    scene: tuple[SiteLimits, float, list[EvseState], dict[str, Setpoint]], idle_reserve: float, arrival: float
) -> None:
    """The site limit holds with the idle reserve counted as load; a planned EVSE that gets less than
    its setpoint (within its session's bounds) has a cap that says how much it may have, never less
    than it got."""
    limits, base, evses, setpoints = scene
    out = allocate(
        NOW, limits, base, evses, setpoints, idle_reserve_kw=idle_reserve, arrival_reserve_kw=arrival
    )
    charging = sum(p for p in out.power_kw.values() if p > 0)
    assert base + idle_reserve + charging <= max(limits.import_limit_kw, base + idle_reserve) + 1e-6
    for e in evses:
        p, cap = out.power_kw[e.evse_id], out.caps.get(e.evse_id)
        if cap is not None:
            assert cap.limit_kw >= (-p if cap.discharge else p) - 1e-6
        sp = setpoints.get(e.evse_id)
        if e.session is None or out.mode is Mode.FALLBACK or sp is None or not sp.is_fresh(NOW):
            continue
        within = min(max(sp.power_kw, -e.session.max_discharge_kw), e.session.max_charge_kw)
        if abs(p - within) > 0.1 or abs(within - sp.power_kw) > 0.1:
            assert cap is not None, (e, sp, p)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    scene=scenes(),
    idle_reserve=st.sampled_from([0.0, 7.4, 30.0]),
    fixed_import=st.sampled_from([0.0, 11.0, 60.0]),
    fixed_export=st.sampled_from([0.0, 5.0, 40.0]),
)
def test_export_room_is_not_enlarged_by_what_may_draw(
    scene: tuple[SiteLimits, float, list[EvseState], dict[str, Setpoint]],
    idle_reserve: float,
    fixed_import: float,
    fixed_export: float,
) -> None:
    """Export gets the same care as import: the idle reserve and EVSEs that may draw (a charger not
    connected) take import room but give no export room (they need not draw), and EVSEs that may give
    back take export room. Measured before: export limit 5 kW, one idle charger, a -11 kW setpoint
    granted as -10.71 kW, the reserve having been counted as base load."""
    limits, base, evses, setpoints = scene
    out = allocate(
        NOW,
        limits,
        base,
        evses,
        setpoints,
        idle_reserve_kw=idle_reserve,
        fixed_import_kw=fixed_import,
        fixed_export_kw=fixed_export,
    )
    charging = sum(p for p in out.power_kw.values() if p > 0)
    discharging = -sum(p for p in out.power_kw.values() if p < 0)
    assert charging <= max(limits.import_limit_kw - base - fixed_import - idle_reserve, 0.0) + 1e-6
    assert discharging <= max(limits.export_limit_kw + base - fixed_export, 0.0) + 1e-6


def test_the_idle_reserve_gives_no_export_room() -> None:
    evses = [EvseState("v2g", session(v2g=11), measured_kw=0.0), EvseState("idle")]
    out = allocate(
        NOW, SiteLimits(40.0, 5.0), 0.0, evses, {"v2g": setpoint("v2g", -11)}, idle_reserve_kw=5.71
    )
    assert out.power_kw["v2g"] == pytest.approx(-5.0)
