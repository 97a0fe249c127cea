"""ACN-Data charging sessions from acnportal (ACN-Sim) event-queue JSON, and scenarios built from them.

Split in the pvlib ``iotools`` style:

- :func:`fetch_acn_sessions` downloads an event-queue file (any ``urllib`` URL) and parses it;
- :func:`read_acn_sessions` reads one from disk, gzipped or not;
- :func:`parse_acn_sessions` turns the decoded payload into :class:`AcnSession` models.

The format: a JSON document that is itself a JSON *string* (decode twice) holding ``{"id": ...,
"context_dict": {object id: {"class": ..., "attributes": {...}}}}``. The top object is an
``EventQueue`` whose ``_queue`` lists ``[timestamp, PluginEvent id]``; each ``PluginEvent`` points to
an ``EV`` (``ev``), each ``EV`` to its ``Battery`` (``_battery``). Times are integer steps (5 minutes
in ACN-Data) counted from a start the file does not record. acnportal's own file names carry it
(:func:`acn_file_name`): ``{site}_{start}_{end}_{period}m_{voltage}V_{max battery power}kW.json.gz``
with ``start`` and ``end`` as local ``YYYYMMDDTHHMMSS`` at the site (every ACN-Data site is in
:data:`ACN_TIMEZONE`), e.g. ``caltech_20190301T000000_20190401T000000_5m_208V_6.6kW.json.gz``. A file
named otherwise needs its start given (:class:`AcnStartUnknownError` otherwise): no start is ever
assumed. Steps are absolute time, so a step is added to the start in UTC (a daylight-saving change
shifts local clock hours against step numbers).

The outside names map to ours in one table, :data:`VARIABLE_MAP`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import re
import urllib.parse
import urllib.request
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from market_adapters.errors import AdapterError, AdapterFormatError
from market_adapters.tariffs import TouTariff
from optimizer.scenario import Evse, Scenario, Site, VehicleSession

logger = logging.getLogger(__name__)

ACN_TIMEZONE = "America/Los_Angeles"
"""Local time of every ACN-Data site (Caltech, JPL, Office001: all in California)."""
ACN_STEP_MINUTES = 5
"""ACN-Data's period [min], used when neither the file name nor the caller says otherwise."""
ACN_EVSE_KW = 6.6
"""Maximum power of every Caltech ACN EVSE at 208 V [kW]."""
ACN_EXPERIMENTS_URL = (
    "https://raw.githubusercontent.com/caltech-netlab/acnportal-experiments/master/"
    "2_1_acnsim_journal/data/caltech_20190301T000000_20190401T000000_5m_208V_6.6kW.json.gz"
)
"""Where the ACN-Sim experiments keep the shared March 2019 file (for :func:`fetch_acn_sessions`)."""

ACN_FILE_NAME_PATTERN = re.compile(
    r"^(?P<site>[^/]+?)_(?P<start>\d{8}T\d{6})_(?P<end>\d{8}T\d{6})_(?P<period>\d+)m_"
    r"(?P<voltage>\d+(?:\.\d+)?)V_(?P<max_kw>\d+(?:\.\d+)?)kW\.json(?:\.gz)?$"
)
"""acnportal's event-queue file name (ACN-Sim experiments, notebook 2.1): ``f"{site}_{start:%Y%m%dT%H%M%S}
_{end:%Y%m%dT%H%M%S}_{period}m_{voltage}V_{default_battery_power}kW.json.gz"``, times local."""
ACN_FILE_NAME_EXAMPLE = "caltech_20190301T000000_20190401T000000_5m_208V_6.6kW.json.gz"

VARIABLE_MAP: dict[str, str] = {
    # EV attributes
    "_session_id": "session_id",
    "_station_id": "station_id",
    "_arrival": "arrival_step",
    "_departure": "departure_step",
    "_requested_energy": "requested_energy_kwh",
    # Battery attributes
    "_max_power": "max_power_kw",
}
"""acnportal attribute name -> :class:`AcnSession` field."""

_EV_CLASS = "acnportal.acnsim.models.ev.EV"
_BATTERY_CLASS = "acnportal.acnsim.models.battery.Battery"
_PLUGIN_CLASS = "acnportal.acnsim.events.event.PluginEvent"
_QUEUE_CLASS = "acnportal.acnsim.events.event_queue.EventQueue"


class AcnStartUnknownError(AdapterError, ValueError):
    """A file whose step 0 is not known: its name is not acnportal's and no start was given."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__(
            f"{source}: the file does not record when its step 0 is, and its name is not acnportal's "
            f"(like {ACN_FILE_NAME_EXAMPLE}, which carries it); give the start"
        )


@dataclass(frozen=True)
class AcnFileName:
    """What an acnportal event-queue file name says (:data:`ACN_FILE_NAME_PATTERN`)."""

    site: str
    start: dt.datetime
    """Step 0, timezone-aware (local time at the site)."""
    end: dt.datetime
    """End of the period the file was generated for, timezone-aware."""
    step_minutes: int
    voltage_v: float
    max_battery_kw: float
    """acnportal's default maximum battery power [kW]."""


def acn_file_name(name: str, *, timezone: str = ACN_TIMEZONE) -> AcnFileName | None:
    """What an acnportal file name (the last part of a path or URL) says, its times read in
    ``timezone``; ``None`` for a name not in acnportal's form.

    Raises :class:`~market_adapters.errors.AdapterFormatError` for a name in the form whose dates
    are not dates, whose end is not after its start, or whose period is 0.
    """
    found = ACN_FILE_NAME_PATTERN.match(name)
    if found is None:
        return None
    zone = zoneinfo.ZoneInfo(timezone)
    moments = {}
    for part in ("start", "end"):
        try:
            moments[part] = dt.datetime.strptime(found[part], "%Y%m%dT%H%M%S").replace(tzinfo=zone)
        except ValueError as error:
            raise AdapterFormatError(
                name, "file name", "", f"has {part} {found[part]!r}, not a date YYYYMMDDTHHMMSS"
            ) from error
    if moments["end"] <= moments["start"]:
        raise AdapterFormatError(
            name, "file name", "", f"has end {found['end']} not after start {found['start']}"
        )
    period = int(found["period"])
    if period < 1:
        raise AdapterFormatError(name, "file name", "", f"has a period of {found['period']} minutes")
    return AcnFileName(
        site=found["site"],
        start=moments["start"],
        end=moments["end"],
        step_minutes=period,
        voltage_v=float(found["voltage"]),
        max_battery_kw=float(found["max_kw"]),
    )


def _step_zero(
    name: str,
    source: str,
    start: dt.datetime | None,
    step_minutes: int | None,
    timezone: str,
) -> tuple[dt.datetime, int]:
    """Step 0 and the step [min] of a file called ``name``: from its name when acnportal's (a
    ``start`` or ``step_minutes`` given as well must agree), else ``start`` (required) and
    ``step_minutes`` (default :data:`ACN_STEP_MINUTES`)."""
    named = acn_file_name(name, timezone=timezone)
    if named is None:
        if start is None:
            raise AcnStartUnknownError(source)
        return start, step_minutes if step_minutes is not None else ACN_STEP_MINUTES
    if start is not None and start != named.start:
        raise AdapterFormatError(
            source,
            "file name",
            "",
            f"says step 0 is {named.start.isoformat()}, but the start given is {start.isoformat()}",
        )
    if step_minutes is not None and step_minutes != named.step_minutes:
        raise AdapterFormatError(
            source,
            "file name",
            "",
            f"says steps are {named.step_minutes} min, but {step_minutes} min was given",
        )
    return start if start is not None else named.start, named.step_minutes


class AcnSession(BaseModel):
    """One charging session as recorded by ACN-Data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = Field(min_length=1)
    station_id: str = Field(min_length=1)
    arrival_step: int = Field(ge=0, description="Arrival as a step number from the file's start")
    departure_step: int = Field(ge=0, description="Departure as a step number from the file's start")
    arrival: AwareDatetime = Field(description="Arrival in local time with its fixed UTC offset")
    departure: AwareDatetime = Field(description="Departure in local time with its fixed UTC offset")
    requested_energy_kwh: float = Field(ge=0, allow_inf_nan=False, description="Energy delivered [kWh]")
    max_power_kw: float = Field(gt=0, allow_inf_nan=False, description="EV battery power limit [kW]")

    @model_validator(mode="after")
    def _departure_after_arrival(self) -> AcnSession:
        if self.departure_step <= self.arrival_step:
            raise ValueError(
                f"departure_step={self.departure_step} is not after arrival_step={self.arrival_step}"
            )
        return self


def fetch_acn_sessions(
    url: str = ACN_EXPERIMENTS_URL,
    *,
    start: dt.datetime | None = None,
    step_minutes: int | None = None,
    timezone: str = ACN_TIMEZONE,
    timeout: float = 60.0,
) -> list[AcnSession]:
    """Download an event-queue file (gzipped or not) from ``url`` and parse it; step 0 and the step
    come from the URL's file name as in :func:`read_acn_sessions`."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    first, step = _step_zero(name, url, start, step_minutes, timezone)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        payload = response.read()
    return parse_acn_sessions(_decode(payload, url), start=first, step_minutes=step, source=url)


def read_acn_sessions(
    path: str | Path,
    *,
    start: dt.datetime | None = None,
    step_minutes: int | None = None,
    timezone: str = ACN_TIMEZONE,
) -> list[AcnSession]:
    """Read an event-queue file (``.json`` or gzipped) into sessions sorted by arrival.

    Step 0 and the step [min] come from an acnportal file name (:func:`acn_file_name`, local times
    read in ``timezone``); ``start`` and ``step_minutes`` given as well must agree with it. A file
    named otherwise needs ``start`` (timezone-aware); its step is ``step_minutes``, by default
    :data:`ACN_STEP_MINUTES`.

    Raises :class:`FileNotFoundError` for a missing file, :class:`AcnStartUnknownError` when step 0
    is not known, and :class:`~market_adapters.errors.AdapterFormatError` for a file that is not the
    acnportal format or a name that disagrees with what was given.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ACN event-queue file not found: {path}")
    first, step = _step_zero(path.name, str(path), start, step_minutes, timezone)
    return parse_acn_sessions(
        _decode(path.read_bytes(), str(path)), start=first, step_minutes=step, source=str(path)
    )


def parse_acn_sessions(
    data: str | Mapping[str, Any],
    *,
    start: dt.datetime,
    step_minutes: int = ACN_STEP_MINUTES,
    source: str = "<data>",
) -> list[AcnSession]:
    """Turn a decoded event queue (the dict, or the JSON string acnportal writes) into sessions.

    ``start`` (timezone-aware) is the moment of step 0: the payload does not record it. Arrival and
    departure are ``start + step * k`` in absolute time, shown in ``start``'s zone as a fixed UTC
    offset (``-08:00`` before the 2019-03-10 DST change, ``-07:00`` after): their clock hour is
    local, and subtracting them gives elapsed time (Python subtracts two datetimes sharing one
    ``ZoneInfo`` in wall-clock time, an hour off across a DST change). Sessions are sorted by
    (arrival_step, departure_step, session_id).
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"start must be timezone-aware, got {start}")
    if isinstance(data, str):
        data = _loads(data, source)
    if not isinstance(data, Mapping):
        raise AdapterFormatError(source, "document", "", f"is a {type(data).__name__}, expected an object")
    context = _field(data, "context_dict", Mapping, source, "document")
    queue_id = str(_field(data, "id", (str, int), source, "document"))
    queue = _object(context, queue_id, _QUEUE_CLASS, source, "document 'id'")
    entries = _field(queue["attributes"], "_queue", list, source, f"EventQueue object {queue_id!r}")

    step = dt.timedelta(minutes=step_minutes)
    start_utc = start.astimezone(dt.UTC)
    sessions = []
    for position, entry in enumerate(entries):
        where = f"EventQueue object {queue_id!r}"
        if not (isinstance(entry, list) and len(entry) == 2):
            raise AdapterFormatError(
                source, where, "_queue", f"entry {position} is {entry!r}, expected [timestamp, event id]"
            )
        event = _object(context, str(entry[1]), None, source, f"{where} _queue entry {position}")
        if event["class"] != _PLUGIN_CLASS:
            continue  # unplug and recompute events carry no session of their own
        ev_id = str(_field(event["attributes"], "ev", (str, int), source, f"PluginEvent object {entry[1]!r}"))
        sessions.append(_session(context, ev_id, start_utc, start.tzinfo, step, source))
    sessions.sort(key=lambda s: (s.arrival_step, s.departure_step, s.session_id))
    return sessions


def _session(
    context: Mapping[str, Any],
    ev_id: str,
    start_utc: dt.datetime,
    zone: dt.tzinfo | None,
    step: dt.timedelta,
    source: str,
) -> AcnSession:
    ev = _object(context, ev_id, _EV_CLASS, source, "PluginEvent 'ev'")
    obj = f"EV object {ev_id!r}"
    battery_id = str(_field(ev["attributes"], "_battery", (str, int), source, obj))
    battery = _object(context, battery_id, _BATTERY_CLASS, source, f"{obj} '_battery'")
    values: dict[str, Any] = {}
    for outside, ours in VARIABLE_MAP.items():
        owner, owner_name = (
            (battery, f"Battery object {battery_id!r}") if ours == "max_power_kw" else (ev, obj)
        )
        expected: type | tuple[type, ...] = str if ours in ("session_id", "station_id") else (int, float)
        value = _field(owner["attributes"], outside, expected, source, owner_name)
        if isinstance(value, bool):
            raise AdapterFormatError(source, owner_name, outside, f"is {value!r}, expected a number")
        if ours.endswith("_step"):
            if value != int(value):
                raise AdapterFormatError(source, owner_name, outside, f"is {value!r}, expected a whole step")
            value = int(value)
        values[ours] = value
    for name in ("arrival", "departure"):
        values[name] = _fixed_offset((start_utc + values[f"{name}_step"] * step).astimezone(zone))
    try:
        return AcnSession(**values)
    except ValidationError as error:
        first = error.errors()[0]
        ours = str(first["loc"][0]) if first["loc"] else "departure_step"
        outside = {v: k for k, v in VARIABLE_MAP.items()}.get(ours, ours)
        message = first["msg"].removeprefix("Value error, ")
        raise AdapterFormatError(source, obj, outside, message) from error


def _decode(payload: bytes, source: str) -> str:
    if payload[:2] == b"\x1f\x8b":
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError) as error:
            raise AdapterFormatError(source, "file", "", f"is not valid gzip: {error}") from error
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AdapterFormatError(source, "file", "", f"is not UTF-8 text: {error}") from error


def _loads(text: str, source: str) -> Any:
    """Decode JSON; acnportal writes a JSON string holding JSON, so decode a string result once more."""
    for _ in range(2):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise AdapterFormatError(
                source,
                "document",
                "",
                f"is not JSON: {error.msg} at line {error.lineno} column {error.colno}",
            ) from error
        if not isinstance(value, str):
            return value
        text = value
    return value


def _field(owner: Mapping[str, Any], name: str, kind: type | tuple[type, ...], source: str, obj: str) -> Any:
    if not isinstance(owner, Mapping) or name not in owner:
        raise AdapterFormatError(source, obj, name, "is missing")
    value = owner[name]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise AdapterFormatError(source, obj, name, f"is {value!r}, expected {names}")
    return value


def _object(
    context: Mapping[str, Any], ident: str, kind: str | None, source: str, referrer: str
) -> Mapping[str, Any]:
    obj = context.get(ident)
    if obj is None:
        raise AdapterFormatError(source, referrer, "", f"refers to object {ident!r}, not in context_dict")
    if not isinstance(obj, Mapping) or not isinstance(obj.get("attributes"), Mapping):
        raise AdapterFormatError(source, f"object {ident!r}", "attributes", "is missing or not an object")
    if kind is not None and obj.get("class") != kind:
        raise AdapterFormatError(
            source, f"object {ident!r}", "class", f"is {obj.get('class')!r}, expected {kind!r}"
        )
    return obj


def station_overlaps(sessions: Iterable[AcnSession]) -> list[tuple[AcnSession, AcnSession]]:
    """Pairs of sessions on one station where the later arrives before the earlier departs.

    A departure at the very step of the next arrival is no overlap (the optimizer agrees).
    The shared Caltech March 2019 file has none; six stations see a departure and an arrival at
    the same step.
    """
    by_station: dict[str, list[AcnSession]] = defaultdict(list)
    for session in sessions:
        by_station[session.station_id].append(session)
    pairs = []
    for station_sessions in by_station.values():
        station_sessions.sort(key=lambda s: (s.arrival_step, s.departure_step, s.session_id))
        for k, later in enumerate(station_sessions):
            pairs += [
                (earlier, later) for earlier in station_sessions[:k] if later.arrival < earlier.departure
            ]
    return pairs


def evse_assignment(sessions: Iterable[AcnSession]) -> dict[str, str]:
    """EVSE id for every session id: its station id, or a virtual ``"<station>#2"``, ``#3``... when the
    station is still busy with an earlier session (see :func:`station_overlaps`).

    Each session goes to the first of its station's EVSEs that is free at its arrival, in arrival
    order, so a station's real id serves as many sessions as it can.
    """
    by_station: dict[str, list[AcnSession]] = defaultdict(list)
    for session in sessions:
        by_station[session.station_id].append(session)
    assignment: dict[str, str] = {}
    for station, station_sessions in by_station.items():
        free_from: list[dt.datetime] = []  # per EVSE of this station: when its last session departs
        for session in sorted(station_sessions, key=lambda s: (s.arrival, s.departure, s.session_id)):
            slot = next((k for k, free in enumerate(free_from) if free <= session.arrival), len(free_from))
            if slot == len(free_from):
                free_from.append(session.departure)
            free_from[slot] = session.departure
            assignment[session.session_id] = station if slot == 0 else f"{station}#{slot + 1}"
    return assignment


def scenario_from_acn(
    sessions: Sequence[AcnSession],
    tariff: TouTariff,
    *,
    start: dt.datetime,
    end: dt.datetime,
    step_minutes: int = ACN_STEP_MINUTES,
    evse_kw: float = ACN_EVSE_KW,
    import_limit_kw: float | None = None,
    demand_interval_minutes: int = 15,
    peak_already_kw: float = 0.0,
    timezone: str = ACN_TIMEZONE,
    name: str = "acn",
    site_id: str = "caltech-acn",
) -> Scenario:
    """An optimizer :class:`~optimizer.Scenario` of the ACN sessions that overlap ``[start, end)``.

    As acnportal models them: one EVSE of ``evse_kw`` per station id; each vehicle's capacity and
    target are its requested (delivered) energy, it arrives empty, charges at efficiency 1.0 up to
    its battery's ``max_power_kw``, and has no V2G. The site has no base load and an import limit of
    ``import_limit_kw`` (default: the sum of EVSE powers, i.e. unconstrained); prices and the demand
    charge come from ``tariff`` on the horizon's steps, in ``timezone`` (USD).

    Sessions cut by the horizon's edges stay in (the optimizer plans the part inside). Sessions with
    zero requested energy are left out. If two sessions on one station overlap in time (the shared
    March 2019 file has none), the later one gets a virtual EVSE ``"<station>#2"`` and a warning is
    logged with the count; :func:`station_overlaps` lists them.
    """
    for label, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{label} must be timezone-aware, got {moment}")
    step = dt.timedelta(minutes=step_minutes)
    span = end.astimezone(dt.UTC) - start.astimezone(dt.UTC)
    if span <= dt.timedelta(0) or span % step:
        raise ValueError(
            f"the horizon {start.isoformat()}..{end.isoformat()} is not a positive whole number of "
            f"{step_minutes}-minute steps"
        )
    zone = zoneinfo.ZoneInfo(timezone)
    first = _fixed_offset(start.astimezone(zone))
    n_steps = span // step

    inside = [s for s in sessions if s.arrival < end and s.departure > start]
    empty = [s for s in inside if s.requested_energy_kwh <= 0]
    if empty:
        logger.info("left out %d ACN sessions with zero requested energy", len(empty))
    inside = [s for s in inside if s.requested_energy_kwh > 0]
    overlaps = station_overlaps(inside)
    if overlaps:
        logger.warning(
            "%d pairs of ACN sessions overlap on one station; later sessions get virtual EVSEs "
            "('<station>#2', ...): %s",
            len(overlaps),
            ", ".join(f"{a.session_id} / {b.session_id}" for a, b in overlaps[:5]),
        )
    assignment = evse_assignment(inside)
    evse_ids = sorted(set(assignment.values()))
    index = pd.date_range(pd.Timestamp(first), periods=n_steps, freq=step).tz_convert(zone)

    return Scenario(
        name=name,
        start=first,
        step_minutes=step_minutes,
        n_steps=n_steps,
        timezone=timezone,
        currency="USD",
        site=Site(
            id=site_id,
            import_limit_kw=import_limit_kw if import_limit_kw is not None else evse_kw * len(evse_ids),
        ),
        tariff=tariff.to_optimizer_tariff(
            index, demand_interval_minutes=demand_interval_minutes, peak_already_kw=peak_already_kw
        ),
        evses=[Evse(id=evse_id, max_charge_kw=evse_kw) for evse_id in evse_ids],
        vehicles=[
            VehicleSession(
                id=s.session_id,
                evse_id=assignment[s.session_id],
                arrival=s.arrival,
                departure=s.departure,
                capacity_kwh=s.requested_energy_kwh,
                energy_at_arrival_kwh=0.0,
                target_energy_kwh=s.requested_energy_kwh,
                charge_efficiency=1.0,
                discharge_efficiency=1.0,
                max_charge_kw=s.max_power_kw,
            )
            for s in inside
        ],
    )


def _fixed_offset(moment: dt.datetime) -> dt.datetime:
    """``moment`` with its current UTC offset as a fixed zone (so arithmetic on it is absolute)."""
    offset = moment.utcoffset()
    assert offset is not None
    return moment.astimezone(dt.timezone(offset))
