"""Cross-object checks run before any model is built (in the spirit of PyPSA's ``consistency.py``).

Field-level rules (signs, NaN, one-of fields) are enforced by the pydantic models in
:mod:`optimizer.scenario`; this module checks what needs more than one object: series lengths,
sessions inside the horizon, EVSEs booked twice, energies against capacities, windows on the step grid.
Every failure raises :class:`~optimizer.errors.ScenarioError` naming the object and the field.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict

from optimizer.errors import ScenarioError
from optimizer.scenario import Scenario


def check_scenario(scenario: Scenario) -> None:
    """Raise :class:`ScenarioError` for the first impossible input found."""
    _check_series(scenario)
    _check_site(scenario)
    _check_tariff(scenario)
    _check_evses(scenario)
    _check_vehicles(scenario)
    _check_windows(scenario)


def _check_series(scenario: Scenario) -> None:
    n = scenario.n_steps
    site = f"site {scenario.site.id!r}"
    for obj, owner in ((site, scenario.site), ("tariff", scenario.tariff)):
        for name, value in owner:
            if isinstance(value, list) and name.endswith(("_kw", "_per_kwh")) and len(value) != n:
                raise ScenarioError(obj, name, f"has {len(value)} values, expected n_steps={n}")
    for name in ("base_load_kw", "generation_kw"):
        values = getattr(scenario.site, name)
        for position, value in enumerate(values if isinstance(values, list) else [values]):
            if value < 0:
                raise ScenarioError(site, name, f"is negative ({value}) at step {position}")


def _check_site(scenario: Scenario) -> None:
    site = scenario.site
    base = _as_list(site.base_load_kw, scenario.n_steps)
    generation = _as_list(site.generation_kw, scenario.n_steps)
    for step, (load, gen) in enumerate(zip(base, generation, strict=True)):
        if load - gen > site.import_limit_kw + 1e-9:
            raise ScenarioError(
                f"site {site.id!r}",
                "base_load_kw",
                f"minus generation is {load - gen:.3f} kW at step {step}, above "
                f"import_limit_kw={site.import_limit_kw}: the site is overloaded before any vehicle charges",
            )


def _check_tariff(scenario: Scenario) -> None:
    interval, step = scenario.tariff.demand_interval_minutes, scenario.step_minutes
    if interval > step and interval % step:
        raise ScenarioError(
            "tariff",
            "demand_interval_minutes",
            f"={interval} is not a multiple of step_minutes={step}",
        )


def _check_evses(scenario: Scenario) -> None:
    seen: set[str] = set()
    for evse in scenario.evses:
        if evse.id in seen:
            raise ScenarioError(f"EVSE {evse.id!r}", "id", "appears twice")
        seen.add(evse.id)


def _check_vehicles(scenario: Scenario) -> None:
    evses = {evse.id for evse in scenario.evses}
    ids: set[str] = set()
    by_evse: dict[str, list[tuple[dt.datetime, dt.datetime, str]]] = defaultdict(list)
    for v in scenario.vehicles:
        obj = f"vehicle {v.id!r}"
        if v.id in ids:
            raise ScenarioError(obj, "id", "appears twice")
        ids.add(v.id)
        if v.evse_id not in evses:
            raise ScenarioError(obj, "evse_id", f"{v.evse_id!r} is not an EVSE of this scenario")
        if v.departure <= v.arrival:
            raise ScenarioError(obj, "departure", f"{v.departure.isoformat()} is not after arrival")
        if v.departure <= scenario.start or v.arrival >= scenario.end:
            raise ScenarioError(
                obj,
                "arrival" if v.arrival >= scenario.end else "departure",
                f"session {v.arrival.isoformat()}..{v.departure.isoformat()} lies outside the horizon "
                f"{scenario.start.isoformat()}..{scenario.end.isoformat()}",
            )
        for name in ("energy_at_arrival_kwh", "target_energy_kwh", "min_energy_kwh"):
            value = getattr(v, name)
            if value > v.capacity_kwh + 1e-9:
                raise ScenarioError(obj, name, f"={value} kWh is above capacity_kwh={v.capacity_kwh}")
        by_evse[v.evse_id].append((v.arrival, v.departure, v.id))
    for evse_id, sessions in by_evse.items():
        sessions.sort()
        for (_, departure, first), (arrival, _, second) in itertools.pairwise(sessions):
            if arrival < departure:
                raise ScenarioError(
                    f"EVSE {evse_id!r}",
                    "vehicles",
                    f"is booked twice at once: {first!r} until {departure.isoformat()} and "
                    f"{second!r} from {arrival.isoformat()}",
                )


def _check_windows(scenario: Scenario) -> None:
    events = [("DR event", e.id, e.start, e.end) for e in scenario.dr_events]
    events += [("V2G dispatch", d.id, d.start, d.end) for d in scenario.v2g_dispatches]
    for kind, ident, start, end in events:
        obj = f"{kind} {ident!r}"
        if end <= start:
            raise ScenarioError(obj, "end", f"{end.isoformat()} is not after start {start.isoformat()}")
        for name, moment in (("start", start), ("end", end)):
            offset = moment - scenario.start
            if offset % scenario.step:
                raise ScenarioError(
                    obj, name, f"{moment.isoformat()} is not on the {scenario.step} step grid"
                )
        if start < scenario.start or end > scenario.end:
            raise ScenarioError(
                obj,
                "start" if start < scenario.start else "end",
                f"window {start.isoformat()}..{end.isoformat()} is not inside the horizon",
            )
    for event in scenario.dr_events:
        baseline = event.baseline_kw
        steps = (event.end - event.start) // scenario.step
        if isinstance(baseline, list) and len(baseline) != steps:
            raise ScenarioError(
                f"DR event {event.id!r}",
                "baseline_kw",
                f"has {len(baseline)} values, expected one per event step ({steps})",
            )


def _as_list(value: float | list[float], n: int) -> list[float]:
    return list(value) if isinstance(value, list) else [value] * n
