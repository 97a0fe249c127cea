"""Setpoint -> SetChargingProfile per OCPP version: hand-computed limits, units, rounding, discharge rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from site_gateway.config import ChargerSection
from site_gateway.ocpp.profiles import (
    CompositeLimit,
    OcppVersion,
    ProfileError,
    ProfilePlan,
    composite_agrees,
    station_max_profile,
    tx_default_profile,
    tx_profile,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
UNTIL = NOW + timedelta(minutes=15)


def plan(version: OcppVersion, charger: ChargerSection, power_kw: float) -> ProfilePlan:
    return tx_profile(
        version, charger, evse_id=2, transaction_id="7", power_kw=power_kw, valid_until=UNTIL, now=NOW
    )


@pytest.mark.parametrize(
    ("phases", "power_kw", "amps"),
    [(3, 11.0, 15.9), (3, 7.0, 10.1), (1, 7.4, 32.1), (1, 3.7, 16.0), (3, 0.0, 0.0)],
)
def test_v16_amps_rounded_down(phases: int, power_kw: float, amps: float) -> None:
    # 11000 / 690 = 15.94; 7000 / 690 = 10.14; 7400 / 230 = 32.17; 3700 / 230 = 16.09
    charger = ChargerSection(id="A", limit_unit="A", phases=phases)
    result = plan(OcppVersion.V16, charger, power_kw)
    profile = result.request.cs_charging_profiles
    period = profile.charging_schedule.charging_schedule_period[0]
    assert (period.limit, period.number_phases, profile.charging_schedule.charging_rate_unit) == (
        amps,
        phases,
        "A",
    )
    assert result.power_kw <= power_kw
    assert result.power_kw == pytest.approx(amps * 230 * phases / 1000)
    assert (profile.transaction_id, profile.charging_profile_id, profile.stack_level) == (7, 102, 1)
    assert profile.charging_schedule.duration == 900
    assert (profile.charging_schedule.start_schedule, profile.valid_to) == (
        "2025-06-01T12:00:00Z",
        "2025-06-01T12:15:00Z",
    )


def test_v16_watts_are_multiples_of_a_tenth() -> None:
    result = plan(OcppVersion.V16, ChargerSection(id="W"), 7.12345)
    assert result.request.cs_charging_profiles.charging_schedule.charging_schedule_period[0].limit == 7123.4


@pytest.mark.parametrize(
    ("version", "charger", "sent_kw", "clamped"),
    [
        (OcppVersion.V16, ChargerSection(id="c", max_discharge_kw=11), 0.0, True),
        (OcppVersion.V201, ChargerSection(id="c", max_discharge_kw=11), 0.0, True),
        (OcppVersion.V201, ChargerSection(id="c", max_discharge_kw=11, discharge_on_201=True), -5.0, False),
        (OcppVersion.V21, ChargerSection(id="c"), 0.0, True),  # max_discharge_kw = 0
        (OcppVersion.V21, ChargerSection(id="c", max_discharge_kw=11), -5.0, False),
        (OcppVersion.V21, ChargerSection(id="c", max_discharge_kw=3), -3.0, True),
    ],
)
def test_discharge_rules(
    version: OcppVersion, charger: ChargerSection, sent_kw: float, clamped: bool
) -> None:
    result = plan(version, charger, -5.0)
    assert result.power_kw == sent_kw
    assert (result.clamp_reason is not None) is clamped


def test_v21_discharge_period_is_a_central_setpoint() -> None:
    result = plan(OcppVersion.V21, ChargerSection(id="c", max_discharge_kw=11), -5.0)
    period = result.request.charging_profile.charging_schedule[0].charging_schedule_period[0]
    assert (period.operation_mode, period.setpoint, period.discharge_limit, period.limit) == (
        "CentralSetpoint",
        -5000.0,
        -5000.0,
        None,
    )
    charge = plan(OcppVersion.V21, ChargerSection(id="c", max_discharge_kw=11), 5.0)
    period = charge.request.charging_profile.charging_schedule[0].charging_schedule_period[0]
    assert (period.operation_mode, period.limit) == (None, 5000.0)


def test_charge_limited_to_max_charge() -> None:
    result = plan(OcppVersion.V201, ChargerSection(id="c", max_charge_kw=11), 22.0)
    assert result.power_kw == 11.0 and result.clamp_reason is not None


def test_expired_or_nan_setpoints_are_refused() -> None:
    with pytest.raises(ProfileError, match="expired"):
        tx_profile(
            OcppVersion.V201,
            ChargerSection(id="c"),
            evse_id=1,
            transaction_id="t",
            power_kw=1.0,
            valid_until=NOW,
            now=NOW,
        )
    with pytest.raises(ProfileError, match="not a number"):
        plan(OcppVersion.V201, ChargerSection(id="c"), float("nan"))


@pytest.mark.parametrize("version", list(OcppVersion))
def test_default_and_station_profiles(version: OcppVersion) -> None:
    charger = ChargerSection(id="c", max_charge_kw=22)
    default = tx_default_profile(version, charger, limit_kw=7.4)
    station = station_max_profile(version, charger, limit_kw=22.0, now=NOW)
    assert (default.purpose, default.evse_id, default.power_kw) == ("TxDefaultProfile", 0, 7.4)
    expected = "ChargePointMaxProfile" if version is OcppVersion.V16 else "ChargingStationMaxProfile"
    assert (station.purpose, station.evse_id) == (expected, 0)
    profile = (
        default.request.cs_charging_profiles
        if version is OcppVersion.V16
        else default.request.charging_profile
    )
    assert (profile.stack_level, profile.charging_profile_kind) == (0, "Relative")


@pytest.mark.parametrize(
    ("planned_kw", "composite_kw", "agrees"),
    [
        (7.0, 7.0, True),
        (7.0, 3.0, True),
        (7.0, 7.5, False),
        (-5.0, -5.0, True),
        (-5.0, -2.0, True),
        (-5.0, -6.0, False),
        (5.0, -1.0, False),
    ],
)
def test_composite_agreement(planned_kw: float, composite_kw: float, agrees: bool) -> None:
    planned = plan(OcppVersion.V21, ChargerSection(id="c", max_discharge_kw=11), planned_kw)
    assert composite_agrees(planned, CompositeLimit("W", composite_kw * 1000, composite_kw)) is agrees
