"""Smart-charging profiles: a per-EVSE setpoint turned into the SetChargingProfile each OCPP version wants.

Pure functions, no I/O. Power is in kW at our side (positive charges the EV, negative discharges it); the
profiles carry W or A, whichever the charger takes (``unit``, from
:func:`~site_gateway.ocpp.capabilities.rate_unit`; ``A = W / (V x phases)`` with the configured voltage
and phases), rounded down to 0.1 as the schemas require multiples of 0.1.

Discharge, within what the session may discharge (``discharge``, a
:class:`~site_gateway.ocpp.capabilities.DischargeCapability`; without one, what the charger's
configuration declares):

- OCPP 2.1: ``operationMode = CentralSetpoint`` with a negative ``setpoint`` and ``dischargeLimit`` in the
  schedule period;
- OCPP 2.0.1: a negative ``limit``, only for chargers configured with ``discharge_on_201``;
- OCPP 1.6: never; the setpoint is clamped to 0 and the plan says why.

Profile ids are fixed per purpose (and per EVSE for TxProfiles), so a new profile replaces the old one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v16 import datatypes as types16
from ocpp.v21 import call as call21
from ocpp.v21 import datatypes as types21
from ocpp.v201 import call as call201
from ocpp.v201 import datatypes as types201

from site_gateway.config import ChargerSection
from site_gateway.ocpp.capabilities import DischargeCapability, OcppVersion, declared_discharge

__all__ = ["OcppVersion"]  # re-exported: the version's home was this module

TX_DEFAULT_PROFILE_ID = 1
STATION_MAX_PROFILE_ID = 2
TX_PROFILE_ID_BASE = 100  # + evse id
TX_PROFILE_STACK_LEVEL = 1
MAX_COMPOSITE_DURATION_S = 86_400
_TENTH = Decimal("0.1")


class ProfileError(ValueError):
    """A setpoint that cannot become a profile (expired, not a number)."""


@dataclass(frozen=True, slots=True)
class ProfilePlan:
    """A SetChargingProfile request ready to send, and what it stands for in our units."""

    version: OcppVersion
    request: Any  # ocpp.v16/v201/v21 call.SetChargingProfile
    purpose: str
    evse_id: int
    unit: str  # "W" or "A"
    value: float  # the limit (or 2.1 setpoint) sent, in ``unit``
    power_kw: float  # the power ``value`` stands for, after clamping and rounding [kW]
    requested_kw: float
    clamp_reason: str | None = None  # set when power_kw differs from requested_kw by more than rounding


@dataclass(frozen=True, slots=True)
class CompositeLimit:
    """First period of a GetCompositeSchedule answer, converted to kW."""

    unit: str
    value: float  # limit, or setpoint when the period runs in CentralSetpoint mode, in ``unit``
    power_kw: float
    operation_mode: str | None = None


class OutcomeStatus(StrEnum):
    ACCEPTED = "accepted"  # profile accepted and the composite schedule agrees
    REJECTED = "rejected"  # the charger said no (Rejected status or a CallError)
    UNVERIFIED = "unverified"  # accepted, but the composite schedule is missing or disagrees
    FAILED = "failed"  # not sent: offline, no transaction, expired, timeout


@dataclass(frozen=True, slots=True)
class ProfileOutcome:
    """What became of a setpoint, for reporting upstream."""

    charge_point_id: str
    evse_id: int
    status: OutcomeStatus
    requested_kw: float
    sent_kw: float | None = None  # after clamping and rounding
    effective_kw: float | None = None  # read back from GetCompositeSchedule
    charger_status: str | None = None  # "Accepted", "Rejected", or the CallError code
    reason: str | None = None
    by_meter: bool = False
    """Accepted by a charger that cannot report a composite schedule: its meter values verify it."""

    @property
    def is_ok(self) -> bool:
        return self.status is OutcomeStatus.ACCEPTED


def _unit(charger: ChargerSection, unit: str | None) -> str:
    if unit is None:
        return charger.limit_unit
    if unit not in ("A", "W"):
        raise ProfileError(f"charging rate unit for {charger.id} must be 'A' or 'W', got {unit!r}")
    return unit


def _round_down(value: float) -> float:
    """Towards zero, to 0.1: a limit never exceeds what was asked."""
    return float(Decimal(repr(value)).quantize(_TENTH, rounding=ROUND_DOWN))


def _to_unit(power_kw: float, unit: str, charger: ChargerSection) -> tuple[float, float]:
    """Power [kW] -> (value in unit, rounded down; the power that value stands for [kW])."""
    watts = power_kw * 1000.0
    if unit == "A":
        amps = _round_down(watts / (charger.voltage_v * charger.phases))
        return amps, amps * charger.voltage_v * charger.phases / 1000.0
    rounded = _round_down(watts)
    return rounded, rounded / 1000.0


def _timestamp(at: datetime) -> str:
    if at.tzinfo is None:
        raise ProfileError(f"timestamp {at.isoformat()} has no time zone")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clamp(
    version: OcppVersion,
    charger: ChargerSection,
    power_kw: float,
    discharge: DischargeCapability | None = None,
) -> tuple[float, str | None]:
    if not math.isfinite(power_kw):
        raise ProfileError(f"setpoint {power_kw} kW is not a number")
    if power_kw > charger.max_charge_kw:
        return charger.max_charge_kw, f"charge limited to max_charge_kw={charger.max_charge_kw}"
    if power_kw >= 0:
        return power_kw, None
    if discharge is None:
        discharge = declared_discharge(version, charger)
    if not discharge.allowed:
        return 0.0, f"{discharge.reason} (charger {charger.id}): setpoint clamped to 0"
    if -power_kw > discharge.max_kw:
        if discharge.max_kw >= charger.max_discharge_kw:
            return -discharge.max_kw, f"discharge limited to max_discharge_kw={charger.max_discharge_kw}"
        return -discharge.max_kw, f"discharge limited to {discharge.max_kw:g} kW, the vehicle's maximum"
    return power_kw, None


def _profile_kwargs(
    version: OcppVersion,
    *,
    profile_id: int,
    stack_level: int,
    purpose: str,
    kind: str,
    unit: str,
    period: dict[str, Any],
    transaction_id: str | None = None,
    start: datetime | None = None,
    duration_s: int | None = None,
    valid_to: datetime | None = None,
) -> Any:
    """The version's ChargingProfile datatype for one schedule with one period."""
    start_schedule = None if start is None else _timestamp(start)
    valid_to_text = None if valid_to is None else _timestamp(valid_to)
    if version is OcppVersion.V16:
        return types16.ChargingProfile(
            charging_profile_id=profile_id,
            stack_level=stack_level,
            charging_profile_purpose=purpose,
            charging_profile_kind=kind,
            transaction_id=None if transaction_id is None else int(transaction_id),
            valid_to=valid_to_text,
            charging_schedule=types16.ChargingSchedule(
                charging_rate_unit=unit,
                charging_schedule_period=[types16.ChargingSchedulePeriod(**period)],
                duration=duration_s,
                start_schedule=start_schedule,
            ),
        )
    types: Any = types201 if version is OcppVersion.V201 else types21
    return types.ChargingProfileType(
        id=profile_id,
        stack_level=stack_level,
        charging_profile_purpose=purpose,
        charging_profile_kind=kind,
        transaction_id=transaction_id,
        valid_to=valid_to_text,
        charging_schedule=[
            types.ChargingScheduleType(
                id=profile_id,
                charging_rate_unit=unit,
                charging_schedule_period=[types.ChargingSchedulePeriodType(**period)],
                duration=duration_s,
                start_schedule=start_schedule,
            )
        ],
    )


def _request(version: OcppVersion, evse_id: int, profile: Any) -> Any:
    if version is OcppVersion.V16:
        return call16.SetChargingProfile(connector_id=evse_id, cs_charging_profiles=profile)
    if version is OcppVersion.V201:
        return call201.SetChargingProfile(evse_id=evse_id, charging_profile=profile)
    return call21.SetChargingProfile(evse_id=evse_id, charging_profile=profile)


def _period(version: OcppVersion, charger: ChargerSection, unit: str, value: float) -> dict[str, Any]:
    """One schedule period starting at 0 with ``value`` in ``unit`` (negative = discharge)."""
    if value < 0 and version is OcppVersion.V21:
        return {
            "start_period": 0,
            "operation_mode": "CentralSetpoint",
            "setpoint": value,
            "discharge_limit": value,
        }
    period: dict[str, Any] = {"start_period": 0, "limit": value}
    if unit == "A":
        period["number_phases"] = charger.phases
    return period


def tx_profile(
    version: OcppVersion,
    charger: ChargerSection,
    *,
    evse_id: int,
    transaction_id: str,
    power_kw: float,
    valid_until: datetime,
    now: datetime,
    unit: str | None = None,
    discharge: DischargeCapability | None = None,
) -> ProfilePlan:
    """TxProfile for the running transaction on ``evse_id``: ``power_kw`` from ``now`` until ``valid_until``,
    in ``unit`` (default: the configured ``limit_unit``), discharging no more than ``discharge`` allows.

    After ``valid_until`` the charger falls back to the TxDefaultProfile sent at boot.
    """
    duration_s = math.ceil((valid_until - now).total_seconds())
    if duration_s <= 0:
        raise ProfileError(f"setpoint for {charger.id} EVSE {evse_id} expired at {valid_until.isoformat()}")
    clamped_kw, reason = _clamp(version, charger, power_kw, discharge)
    unit = _unit(charger, unit)
    value, sent_kw = _to_unit(clamped_kw, unit, charger)
    purpose = "TxProfile"
    profile = _profile_kwargs(
        version,
        profile_id=TX_PROFILE_ID_BASE + evse_id,
        stack_level=TX_PROFILE_STACK_LEVEL,
        purpose=purpose,
        kind="Absolute",
        unit=unit,
        period=_period(version, charger, unit, value),
        transaction_id=transaction_id,
        start=now,
        duration_s=duration_s,
        valid_to=valid_until,
    )
    return ProfilePlan(
        version, _request(version, evse_id, profile), purpose, evse_id, unit, value, sent_kw, power_kw, reason
    )


def tx_default_profile(
    version: OcppVersion,
    charger: ChargerSection,
    *,
    limit_kw: float,
    evse_id: int = 0,
    unit: str | None = None,
) -> ProfilePlan:
    """Stack level 0 TxDefaultProfile: a charge-only limit every transaction starts with, in ``unit``
    (default: the configured ``limit_unit``)."""
    if not math.isfinite(limit_kw) or limit_kw < 0:
        raise ProfileError(f"default limit for {charger.id} must be >= 0 kW, got {limit_kw}")
    clamped_kw, reason = _clamp(version, charger, limit_kw)
    unit = _unit(charger, unit)
    value, sent_kw = _to_unit(clamped_kw, unit, charger)
    purpose = "TxDefaultProfile"
    profile = _profile_kwargs(
        version,
        profile_id=TX_DEFAULT_PROFILE_ID,
        stack_level=0,
        purpose=purpose,
        kind="Relative",
        unit=unit,
        period=_period(version, charger, unit, value),
    )
    return ProfilePlan(
        version, _request(version, evse_id, profile), purpose, evse_id, unit, value, sent_kw, limit_kw, reason
    )


def station_max_profile(
    version: OcppVersion,
    charger: ChargerSection,
    *,
    limit_kw: float,
    now: datetime,
    unit: str | None = None,
) -> ProfilePlan:
    """Station-wide ChargePointMaxProfile (1.6) / ChargingStationMaxProfile (2.x) on EVSE 0."""
    if not math.isfinite(limit_kw) or limit_kw < 0:
        raise ProfileError(f"station limit for {charger.id} must be >= 0 kW, got {limit_kw}")
    unit = _unit(charger, unit)
    value, sent_kw = _to_unit(limit_kw, unit, charger)
    purpose = "ChargePointMaxProfile" if version is OcppVersion.V16 else "ChargingStationMaxProfile"
    profile = _profile_kwargs(
        version,
        profile_id=STATION_MAX_PROFILE_ID,
        stack_level=0,
        purpose=purpose,
        kind="Absolute",
        unit=unit,
        period=_period(version, charger, unit, value),
        start=now,
    )
    return ProfilePlan(version, _request(version, 0, profile), purpose, 0, unit, value, sent_kw, limit_kw)


def composite_request(version: OcppVersion, evse_id: int, duration_s: int, unit: str) -> Any:
    """GetCompositeSchedule for ``evse_id`` over ``duration_s`` (bounded to a day), in ``unit``."""
    duration_s = max(1, min(duration_s, MAX_COMPOSITE_DURATION_S))
    if version is OcppVersion.V16:
        return call16.GetCompositeSchedule(connector_id=evse_id, duration=duration_s, charging_rate_unit=unit)
    if version is OcppVersion.V201:
        return call201.GetCompositeSchedule(evse_id=evse_id, duration=duration_s, charging_rate_unit=unit)
    return call21.GetCompositeSchedule(evse_id=evse_id, duration=duration_s, charging_rate_unit=unit)


def read_composite(version: OcppVersion, charger: ChargerSection, response: Any) -> CompositeLimit | None:
    """The first period of a GetCompositeSchedule response, or None when there is none."""
    schedule = response.charging_schedule if version is OcppVersion.V16 else response.schedule
    if not isinstance(schedule, dict):
        return None
    periods = schedule.get("charging_schedule_period") or []
    if not periods:
        return None
    first = min(periods, key=lambda period: period.get("start_period", 0))
    mode = first.get("operation_mode")
    raw = first.get("setpoint") if mode == "CentralSetpoint" else first.get("limit")
    if raw is None:
        raw = first.get("limit", first.get("setpoint"))
    if raw is None:
        return None
    value = float(raw)  # 1.6 answers arrive as Decimal
    unit = str(schedule.get("charging_rate_unit", "W"))
    if unit == "A":
        phases = int(first.get("number_phases") or charger.phases)
        power_kw = value * charger.voltage_v * phases / 1000.0
    else:
        power_kw = value / 1000.0
    return CompositeLimit(unit, value, power_kw, mode)


def composite_agrees(plan: ProfilePlan, composite: CompositeLimit, tolerance_kw: float = 0.05) -> bool:
    """The composite schedule lies between 0 and the planned power (other profiles may only lower it)."""
    low = min(0.0, plan.power_kw) - tolerance_kw
    high = max(0.0, plan.power_kw) + tolerance_kw
    return low <= composite.power_kw <= high
