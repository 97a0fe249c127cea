"""The composite charging schedule of one EVSE, computed from the charging profiles it holds.

OCPP leaves this computation to the charging station; the ``ocpp`` library validates and routes the
messages but computes none of it. This module does, for OCPP 1.6, 2.0.1 and 2.1 alike:

- profiles arrive as the plain snake_case dicts a ``@on(SetChargingProfile)`` handler receives
  (``cs_charging_profiles`` in 1.6, ``charging_profile`` in 2.x) and are parsed once, by
  :func:`parse_profile`, into :class:`ChargingProfile`; limits are converted to watts there
  (A × V × phases, 230 V and 3 phases by default) and nowhere else;
- purposes: ``ChargePointMaxProfile`` / ``ChargingStationMaxProfile`` and
  ``ChargingStationExternalConstraints`` cap everything; ``TxProfile`` overrides ``TxDefaultProfile``
  for its transaction;
- within a purpose, the valid profile with the highest stack level that has a period at that moment
  wins (validFrom/validTo, startSchedule/duration); a profile for the EVSE beats a station-wide
  (EVSE/connector 0) one of the same purpose;
- kinds: Absolute (startSchedule, or the moment it was installed), Recurring Daily/Weekly (repeating
  from startSchedule), Relative (from the transaction start; without a transaction, from the moment
  asked about);
- 2.1 bidirectional periods: ``discharge_limit`` (≤ 0) and ``setpoint`` with ``operation_mode``
  (``CentralSetpoint`` and friends) give a signed power window; ``Idle`` pins it at 0.

The result at one instant is a :class:`PowerLimit` (a window [min_w, max_w] and an optional setpoint;
its :attr:`PowerLimit.target_w` is the signed power the EVSE should follow). Station-wide max profiles
are applied to each EVSE as its own cap, which is exact for the single-EVSE stations we simulate.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_VOLTAGE_V = 230.0
DEFAULT_PHASES = 3
"""OCPP: when ``numberPhases`` is absent, 3 phases are assumed."""

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)


class ProfileError(ValueError):
    """A charging profile the station must reject; ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Purpose(StrEnum):
    STATION_MAX = "ChargingStationMaxProfile"
    EXTERNAL = "ChargingStationExternalConstraints"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


PURPOSE_ALIASES = {
    "ChargePointMaxProfile": Purpose.STATION_MAX,  # OCPP 1.6 name
    **{p.value: p for p in Purpose},
}
CAPPING = (Purpose.STATION_MAX, Purpose.EXTERNAL)


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class OperationMode(StrEnum):
    """OCPP 2.1 operation modes; 1.6 and 2.0.1 periods are always ``ChargingOnly``."""

    IDLE = "Idle"
    CHARGING_ONLY = "ChargingOnly"
    CENTRAL_SETPOINT = "CentralSetpoint"
    EXTERNAL_SETPOINT = "ExternalSetpoint"
    EXTERNAL_LIMITS = "ExternalLimits"
    CENTRAL_FREQUENCY = "CentralFrequency"
    LOCAL_FREQUENCY = "LocalFrequency"
    LOCAL_LOAD_BALANCING = "LocalLoadBalancing"


@dataclass(frozen=True)
class Period:
    """One ``chargingSchedulePeriod`` in watts: from ``start_s`` after the schedule start."""

    start_s: int
    limit_w: float = math.inf
    """Upper bound (charging positive); inf when a 2.1 period has no limit."""
    discharge_limit_w: float | None = None
    """Lower bound, ≤ 0 (2.1); None when absent."""
    setpoint_w: float | None = None
    """Signed power to follow (2.1 ``CentralSetpoint``); None when absent."""
    mode: OperationMode = OperationMode.CHARGING_ONLY


@dataclass(frozen=True)
class ChargingProfile:
    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    periods: tuple[Period, ...]
    """Sorted by ``start_s``; the first starts at 0."""
    evse_id: int = 0
    transaction_id: str | None = None
    recurrency: dt.timedelta | None = None
    """``DAY`` or ``WEEK`` for Recurring profiles."""
    start_schedule: dt.datetime | None = None
    duration: dt.timedelta | None = None
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None

    def is_valid_at(self, t: dt.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= t) and (
            self.valid_to is None or t < self.valid_to
        )


@dataclass(frozen=True)
class Transaction:
    """The transaction running on an EVSE, as Relative and Tx profiles need it."""

    id: str
    start: dt.datetime


@dataclass(frozen=True)
class PowerLimit:
    """What the profiles allow at one instant [W]: a window and, for 2.1 setpoints, a target inside it."""

    max_w: float = math.inf
    min_w: float = 0.0
    setpoint_w: float | None = None

    @property
    def target_w(self) -> float:
        """The signed power to draw: the setpoint if any (clamped into the window), else ``max_w``."""
        if self.setpoint_w is None:
            return self.max_w
        return min(max(self.setpoint_w, self.min_w), self.max_w)

    def intersect(self, other: PowerLimit) -> PowerLimit:
        low, high = max(self.min_w, other.min_w), min(self.max_w, other.max_w)
        if low > high:  # cannot happen with limits ≥ 0 ≥ discharge limits; stay put if it does
            low = high = 0.0
        setpoint = other.setpoint_w if other.setpoint_w is not None else self.setpoint_w
        return PowerLimit(max_w=high, min_w=low, setpoint_w=setpoint)


@dataclass(frozen=True)
class CompositePeriod:
    start_s: int
    limit: PowerLimit


@dataclass(frozen=True)
class CompositeSchedule:
    evse_id: int
    start: dt.datetime
    duration_s: int
    periods: list[CompositePeriod]

    def to_ocpp(
        self,
        version: str,
        unit: str = "W",
        *,
        voltage_v: float = DEFAULT_VOLTAGE_V,
        phases: int = DEFAULT_PHASES,
    ) -> dict[str, Any]:
        """The snake_case payload field of a GetCompositeSchedule response.

        1.6: the ``charging_schedule`` dict (its ``schedule_start`` goes in the response too); 2.x: the
        ``schedule`` dict. ``unit`` "A" divides by ``voltage_v × phases``. 2.1 periods carry
        ``discharge_limit`` and ``setpoint`` when they have them.
        """
        scale = 1.0 if unit == "W" else 1.0 / (voltage_v * phases)
        periods = []
        for p in self.periods:
            entry: dict[str, Any] = {"start_period": p.start_s, "limit": _round1(p.limit.max_w * scale)}
            if unit == "A":
                entry["number_phases"] = phases
            if version == "2.1":
                if p.limit.min_w < 0:
                    entry["discharge_limit"] = _round1(p.limit.min_w * scale)
                if p.limit.setpoint_w is not None:
                    entry["setpoint"] = _round1(p.limit.target_w * scale)
                    entry["operation_mode"] = OperationMode.CENTRAL_SETPOINT.value
            periods.append(entry)
        start = self.start.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        if version == "1.6":
            return {
                "duration": self.duration_s,
                "start_schedule": start,
                "charging_rate_unit": unit,
                "charging_schedule_period": periods,
            }
        return {
            "evse_id": self.evse_id,
            "duration": self.duration_s,
            "schedule_start": start,
            "charging_rate_unit": unit,
            "charging_schedule_period": periods,
        }


def _round1(x: float) -> float:
    """OCPP limits are multiples of 0.1."""
    return round(x, 1)


# ----------------------------------------------------------------------------------------------- parsing


def parse_time(value: str | dt.datetime) -> dt.datetime:
    """An OCPP date-time (ISO 8601, ``Z`` allowed) as an aware datetime; naive means UTC."""
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def parse_profile(
    payload: Mapping[str, Any],
    *,
    evse_id: int = 0,
    voltage_v: float = DEFAULT_VOLTAGE_V,
    installed_at: dt.datetime | None = None,
) -> ChargingProfile:
    """A profile from its snake_case dict (1.6 ``cs_charging_profiles`` or 2.x ``charging_profile``).

    ``installed_at`` is the start of an Absolute profile without ``start_schedule``. Raises
    :class:`ProfileError` for what a station must reject (unknown purpose, missing recurrency, ...).
    """
    profile_id = payload.get("charging_profile_id", payload.get("id"))
    if profile_id is None:
        raise ProfileError("charging profile has no id", "id")
    purpose_name = payload.get("charging_profile_purpose")
    try:
        purpose = PURPOSE_ALIASES[str(purpose_name)]
    except KeyError:
        raise ProfileError(f"profile {profile_id}: unsupported purpose {purpose_name!r}", "purpose") from None
    try:
        kind = Kind(str(payload.get("charging_profile_kind")))
    except ValueError:
        kind_name = payload.get("charging_profile_kind")
        raise ProfileError(f"profile {profile_id}: unsupported kind {kind_name!r}", "kind") from None
    schedules = payload.get("charging_schedule")
    if isinstance(schedules, list):  # 2.x: up to three schedules (ISO 15118 tariffs); the first applies
        if not schedules:
            raise ProfileError(f"profile {profile_id}: empty charging_schedule", "charging_schedule")
        schedule = schedules[0]
    elif isinstance(schedules, Mapping):
        schedule = schedules
    else:
        raise ProfileError(f"profile {profile_id}: no charging_schedule", "charging_schedule")

    unit = schedule.get("charging_rate_unit", "W")
    if unit not in ("W", "A"):
        raise ProfileError(f"profile {profile_id}: unknown charging rate unit {unit!r}", "charging_rate_unit")
    raw_periods = sorted(schedule.get("charging_schedule_period") or [], key=lambda p: p["start_period"])
    if not raw_periods or raw_periods[0]["start_period"] != 0:
        raise ProfileError(
            f"profile {profile_id}: the first charging schedule period must start at 0", "start_period"
        )
    periods = tuple(_parse_period(p, unit, voltage_v) for p in raw_periods)

    recurrency = None
    if kind is Kind.RECURRING:
        recurrency = {"Daily": DAY, "Weekly": WEEK}.get(payload.get("recurrency_kind", ""))
        if recurrency is None:
            raise ProfileError(f"profile {profile_id}: Recurring without Daily/Weekly", "recurrency_kind")
    start_raw = schedule.get("start_schedule")
    start = parse_time(start_raw) if start_raw else None
    if kind is Kind.RECURRING and start is None:
        raise ProfileError(f"profile {profile_id}: Recurring needs start_schedule", "start_schedule")
    if kind is Kind.ABSOLUTE and start is None:
        start = installed_at
    duration = schedule.get("duration")
    transaction_id = payload.get("transaction_id")
    valid_from, valid_to = payload.get("valid_from"), payload.get("valid_to")
    return ChargingProfile(
        id=int(profile_id),
        stack_level=int(payload.get("stack_level", 0)),
        purpose=purpose,
        kind=kind,
        periods=periods,
        evse_id=evse_id,
        transaction_id=None if transaction_id is None else str(transaction_id),
        recurrency=recurrency,
        start_schedule=start,
        duration=None if duration is None else dt.timedelta(seconds=duration),
        valid_from=parse_time(valid_from) if valid_from else None,
        valid_to=parse_time(valid_to) if valid_to else None,
    )


def _parse_period(raw: Mapping[str, Any], unit: str, voltage_v: float) -> Period:
    phases = raw.get("number_phases") or DEFAULT_PHASES
    scale = 1.0 if unit == "W" else voltage_v * phases

    def watts(name: str) -> float | None:
        value = raw.get(name)
        return None if value is None else float(value) * scale

    limit = watts("limit")
    if limit is not None and limit < 0:
        raise ProfileError(f"limit must be ≥ 0, got {raw['limit']}", "limit")
    discharge = watts("discharge_limit")
    if discharge is not None and discharge > 0:
        raise ProfileError(f"discharge_limit must be ≤ 0, got {raw['discharge_limit']}", "discharge_limit")
    try:
        mode = OperationMode(raw.get("operation_mode") or OperationMode.CHARGING_ONLY)
    except ValueError:
        raise ProfileError(
            f"unknown operation_mode {raw.get('operation_mode')!r}", "operation_mode"
        ) from None
    return Period(
        start_s=int(raw["start_period"]),
        limit_w=math.inf if limit is None else limit,
        discharge_limit_w=discharge,
        setpoint_w=watts("setpoint"),
        mode=mode,
    )


# ------------------------------------------------------------------------------------------- evaluation


def schedule_start(
    profile: ChargingProfile, t: dt.datetime, relative_start: dt.datetime
) -> dt.datetime | None:
    """When the recurrence of ``profile`` that covers ``t`` started (None before it starts)."""
    if profile.kind is Kind.RELATIVE:
        return relative_start
    start = profile.start_schedule
    if start is None or t < start:
        return None
    if profile.kind is Kind.RECURRING and profile.recurrency is not None:
        return start + ((t - start) // profile.recurrency) * profile.recurrency
    return start


def period_at(
    profile: ChargingProfile, t: dt.datetime, relative_start: dt.datetime | None = None
) -> Period | None:
    """The period of ``profile`` in force at ``t``, or None if the profile says nothing then.

    ``relative_start`` anchors Relative profiles (the transaction start); None means ``t`` itself.
    """
    if not profile.is_valid_at(t):
        return None
    start = schedule_start(profile, t, t if relative_start is None else relative_start)
    if start is None or t < start:
        return None
    offset = (t - start).total_seconds()
    if profile.duration is not None and offset >= profile.duration.total_seconds():
        return None
    current = None
    for period in profile.periods:
        if period.start_s > offset:
            break
        current = period
    return current


def period_window(period: Period, purpose: Purpose) -> PowerLimit:
    """The power window of one period. A capping profile's period bounds only what it states."""
    if period.mode is OperationMode.IDLE:
        return PowerLimit(max_w=0.0, min_w=0.0, setpoint_w=0.0)
    if purpose in CAPPING:
        floor = -math.inf if period.discharge_limit_w is None else period.discharge_limit_w
        return PowerLimit(max_w=period.limit_w, min_w=floor)
    if period.mode is OperationMode.CHARGING_ONLY:
        floor = 0.0
    elif period.discharge_limit_w is not None:
        floor = period.discharge_limit_w
    else:  # discharge only as far as the setpoint asks
        floor = min(0.0, period.setpoint_w or 0.0)
    return PowerLimit(max_w=period.limit_w, min_w=floor, setpoint_w=period.setpoint_w)


@dataclass
class ProfileStore:
    """The charging profiles one charging station holds, per EVSE (0 = the whole station).

    ``max_power_w`` is the EVSE's hardware rating: the composite never exceeds it and never goes
    below ``-max_discharge_w``.

    What the station's smart charging can do, as real ones differ: ``rate_units`` are the charging-rate
    units its profiles may use (many AC chargers take amperes only: ``("A",)``; a profile in another
    unit is rejected), and ``reports_composite`` false makes it a station that does not implement
    GetCompositeSchedule (answered with a NotImplemented CallError).
    """

    max_power_w: float = math.inf
    max_discharge_w: float = 0.0
    voltage_v: float = DEFAULT_VOLTAGE_V
    rate_units: tuple[str, ...] = ("W", "A")
    reports_composite: bool = True
    profiles: dict[tuple[int, int], ChargingProfile] = field(default_factory=dict)
    """(evse id, profile id) -> profile."""

    def install(self, profile: ChargingProfile) -> None:
        """Add ``profile``, replacing one with its id, or with its purpose and stack level on its EVSE."""
        if profile.purpose is Purpose.STATION_MAX and profile.evse_id != 0:
            raise ProfileError(f"profile {profile.id}: {profile.purpose} only on EVSE 0", "evse_id")
        if profile.purpose is Purpose.TX and profile.evse_id == 0:
            raise ProfileError(f"profile {profile.id}: TxProfile needs an EVSE, not 0", "evse_id")
        for key, old in list(self.profiles.items()):
            same_slot = (
                old.evse_id == profile.evse_id
                and old.purpose is profile.purpose
                and old.stack_level == profile.stack_level
            )
            if old.id == profile.id or same_slot:
                del self.profiles[key]
        self.profiles[(profile.evse_id, profile.id)] = profile

    def install_payload(
        self, payload: Mapping[str, Any], evse_id: int, installed_at: dt.datetime
    ) -> ChargingProfile:
        schedules = payload.get("charging_schedule")
        first = schedules[0] if isinstance(schedules, list) and schedules else schedules
        unit = first.get("charging_rate_unit") if isinstance(first, Mapping) else None
        if unit is not None and unit not in self.rate_units:
            allowed = " or ".join(self.rate_units)
            raise ProfileError(
                f"charging rate unit {unit!r}: this station takes {allowed}", "charging_rate_unit"
            )
        profile = parse_profile(payload, evse_id=evse_id, voltage_v=self.voltage_v, installed_at=installed_at)
        self.install(profile)
        return profile

    def clear(
        self,
        profile_id: int | None = None,
        *,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """ClearChargingProfile: remove the profiles matching every given criterion; returns how many.

        With ``profile_id`` the other criteria are ignored (as OCPP specifies); with nothing given,
        everything is cleared.
        """
        wanted_purpose = PURPOSE_ALIASES.get(purpose) if purpose is not None else None
        if purpose is not None and wanted_purpose is None:
            return 0

        def matches(p: ChargingProfile) -> bool:
            if profile_id is not None:
                return p.id == profile_id
            return (
                (evse_id is None or p.evse_id == evse_id)
                and (wanted_purpose is None or p.purpose is wanted_purpose)
                and (stack_level is None or p.stack_level == stack_level)
            )

        doomed = [key for key, p in self.profiles.items() if matches(p)]
        for key in doomed:
            del self.profiles[key]
        return len(doomed)

    def clear_transaction(self, transaction_id: str) -> None:
        """Drop the TxProfiles of a finished transaction (OCPP: they end with it)."""
        for key, p in list(self.profiles.items()):
            if p.purpose is Purpose.TX and p.transaction_id in (None, transaction_id):
                del self.profiles[key]

    def _winner(
        self,
        purpose: Purpose,
        evse_id: int,
        t: dt.datetime,
        transaction: Transaction | None,
        relative_start: dt.datetime | None,
    ) -> tuple[ChargingProfile, Period] | None:
        """The highest-stack-level profile of ``purpose`` with a period at ``t``; the EVSE's own first."""
        scopes = [evse_id, 0] if evse_id != 0 else [0]
        for scope in scopes:
            candidates = sorted(
                (p for p in self.profiles.values() if p.evse_id == scope and p.purpose is purpose),
                key=lambda p: -p.stack_level,
            )
            for p in candidates:
                if purpose is Purpose.TX and (
                    transaction is None or p.transaction_id not in (None, transaction.id)
                ):
                    continue
                period = period_at(p, t, relative_start)
                if period is not None:
                    return p, period
        return None

    def limit_at(
        self,
        t: dt.datetime,
        evse_id: int,
        transaction: Transaction | None = None,
        *,
        relative_start: dt.datetime | None = None,
    ) -> PowerLimit:
        """The composite power window of ``evse_id`` at ``t`` (EVSE 0: the station-wide caps only).

        Relative profiles start at the transaction start, else at ``relative_start``, else at ``t``.
        """
        if transaction is not None:
            relative_start = transaction.start
        limit = PowerLimit(max_w=self.max_power_w, min_w=-self.max_discharge_w)
        for purpose in CAPPING:
            won = self._winner(purpose, evse_id, t, transaction, relative_start)
            if won is not None:
                limit = limit.intersect(period_window(won[1], purpose))
        if evse_id == 0:
            return limit
        won = self._winner(Purpose.TX, evse_id, t, transaction, relative_start)
        if won is None:
            won = self._winner(Purpose.TX_DEFAULT, evse_id, t, transaction, relative_start)
        if won is not None:
            limit = limit.intersect(period_window(won[1], won[0].purpose))
        return limit

    def power_at(self, t: dt.datetime, evse_id: int, transaction: Transaction | None = None) -> float:
        """The signed power [W] the EVSE should follow at ``t`` (``limit_at(...).target_w``)."""
        return self.limit_at(t, evse_id, transaction).target_w

    def composite(
        self,
        start: dt.datetime,
        duration_s: int,
        evse_id: int,
        transaction: Transaction | None = None,
    ) -> CompositeSchedule:
        """GetCompositeSchedule: the composite over ``[start, start + duration_s)``, equal periods merged.

        Relative profiles without a transaction start at ``start``.
        """
        relative_start = transaction.start if transaction else start
        relevant = [p for p in self.profiles.values() if p.evse_id in (0, evse_id)]
        end = start + dt.timedelta(seconds=duration_s)
        points = sorted({start, *(b for p in relevant for b in _breakpoints(p, start, end, relative_start))})
        periods: list[CompositePeriod] = []
        for t in points:
            limit = self.limit_at(t, evse_id, transaction, relative_start=relative_start)
            if not periods or periods[-1].limit != limit:
                periods.append(CompositePeriod(round((t - start).total_seconds()), limit))
        return CompositeSchedule(evse_id=evse_id, start=start, duration_s=duration_s, periods=periods)


def _breakpoints(
    profile: ChargingProfile, start: dt.datetime, end: dt.datetime, relative_start: dt.datetime
) -> Iterable[dt.datetime]:
    """Every instant in [start, end) where ``profile`` may change what it says."""
    edges = [profile.valid_from, profile.valid_to]
    origins: list[dt.datetime] = []
    if profile.kind is Kind.RECURRING and profile.recurrency is not None and profile.start_schedule:
        origin = schedule_start(profile, max(start, profile.start_schedule), relative_start)
        while origin is not None and origin < end:
            origins.append(origin)
            origin += profile.recurrency
    else:
        origin = relative_start if profile.kind is Kind.RELATIVE else profile.start_schedule
        if origin is not None:
            origins.append(origin)
    for origin in origins:
        edges.extend(origin + dt.timedelta(seconds=p.start_s) for p in profile.periods)
        if profile.duration is not None:
            edges.append(origin + profile.duration)
    return (e for e in edges if e is not None and start <= e < end)
