"""Synthetic depot/workplace days: a seeded :class:`optimizer.Scenario` with realistic sessions.

Session distributions are fitted to real data: the 820 weekday sessions of ACN-Data, Caltech ACN
garage, March 2019 (``shared/data/acn/caltech_201903.json.gz``, acnportal event-queue format), by
``bench/fit_acn_distributions.py``, which prints the constants below. Method (maximum likelihood,
numpy only):

- arrival clock hour (local): Gaussian mixture fitted by EM; three components (lower BIC than two):
  a tight *morning* commuter group around 8:48, a broad *midday* group around 11:03 and an
  *evening* group around 18:55 (:data:`ARRIVAL_GROUPS`);
- each session assigned to its most likely group; per group, dwell hours and energy [kWh] are
  lognormal (mean and standard deviation of the logarithm). ACN's energy is what the session
  actually delivered; here it is the energy a vehicle needs (target minus arrival energy).

Sampling: arrival hours outside the horizon (less a minimum dwell) are redrawn; arrival is rounded up
and departure down to the step grid, departure is clipped to the horizon's end; the energy needed is
clipped to at most :data:`FEASIBLE_SHARE` of what the vehicle can charge while plugged in and to
leave at least 10 % of capacity at arrival, so every target is reachable.

Site and tariff: one EVSE per vehicle (7.2, 9.6 or 11 kW AC; a V2G vehicle's EVSE is bidirectional
with discharge = charge limit); an office/depot base-load shape; a site import limit sized at least
for spreading every vehicle's energy evenly over its stay (so the targets are feasible) but well
below the peak of charging every vehicle at full power on arrival (so scheduling matters): halfway
between the two peaks, and so below base load plus the sum of charger powers. Prices are SCE TOU-EV-4
(:data:`TOU_EV_4`, from acnportal's ``sce_tou_ev_4_march_2019.json``, tariff sheet
https://www1.sce.com/NR/sc3/tm2/pdf/ce141-12.pdf): energy by season, day type and hour, and a
$15.51/kW demand charge on the billing month's 15-minute peak. The day is one of the month's working
days, so the peak already reached this month (``peak_already_kw``) is taken as the peak of a typical
managed day: base load plus every vehicle's energy spread evenly over its stay. Only an increase above
it costs money, as on the bill. Currency USD.

Randomness is a :class:`numpy.random.Generator`: ``generate_depot_day(n, seed)`` is deterministic for
a given ``seed``; pass ``rng`` to draw from a generator of your own (then ``seed`` only names the day).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass

import numpy as np

from market_adapters.tariffs import TariffBlock, TouTariff
from optimizer.scenario import (
    DemandCharge,
    DrEvent,
    Evse,
    Scenario,
    Site,
    Tariff,
    V2gDispatch,
    VehicleSession,
)

DEFAULT_TIMEZONE = "America/Los_Angeles"
DEFAULT_START = dt.datetime(2019, 3, 5, tzinfo=zoneinfo.ZoneInfo(DEFAULT_TIMEZONE))
"""A winter weekday (Tuesday) in the month the distributions were fitted to."""


@dataclass(frozen=True)
class LogNormal:
    """``exp(N(mu, sigma))``: ``mu`` and ``sigma`` of the logarithm."""

    mu: float
    sigma: float

    @property
    def median(self) -> float:
        return math.exp(self.mu)


@dataclass(frozen=True)
class ArrivalGroup:
    """One component of the arrival-hour mixture, with its own dwell and energy distributions."""

    name: str
    weight: float
    arrival_mean_h: float
    """Mean arrival clock hour, local time [h]."""
    arrival_sd_h: float
    dwell_h: LogNormal
    """Hours plugged in."""
    energy_kwh: LogNormal
    """Energy needed by the session [kWh]."""


# Printed by bench/fit_acn_distributions.py from caltech_201903.json.gz (820 weekday sessions).
ARRIVAL_GROUPS: tuple[ArrivalGroup, ...] = (
    ArrivalGroup(
        name="morning",
        weight=0.3091,
        arrival_mean_h=8.8082,
        arrival_sd_h=0.5344,
        dwell_h=LogNormal(mu=1.9823, sigma=0.5718),  # median 7.26 h (312 sessions)
        energy_kwh=LogNormal(mu=2.0349, sigma=0.8519),  # median 7.65 kWh
    ),
    ArrivalGroup(
        name="midday",
        weight=0.5209,
        arrival_mean_h=11.0538,
        arrival_sd_h=2.6080,
        dwell_h=LogNormal(mu=1.5120, sigma=0.8152),  # median 4.54 h (363 sessions)
        energy_kwh=LogNormal(mu=1.5710, sigma=1.0167),  # median 4.81 kWh
    ),
    ArrivalGroup(
        name="evening",
        weight=0.1700,
        arrival_mean_h=18.9235,
        arrival_sd_h=1.7502,
        dwell_h=LogNormal(mu=1.0048, sigma=1.0920),  # median 2.73 h (145 sessions)
        energy_kwh=LogNormal(mu=1.8775, sigma=1.0153),  # median 6.54 kWh
    ),
)
"""Arrival-hour mixture (3 components: lower BIC than 2, 4148 vs 4204) with per-group dwell and energy."""

TOU_EV_4: dict[tuple[str, str], tuple[tuple[float, float], ...]] = {
    # (season, day type): ((hour where a price starts, $/kWh), ...)
    ("summer", "weekday"): ((0, 0.05623), (8, 0.0925), (12, 0.26668), (18, 0.0925), (23, 0.05623)),
    ("summer", "weekend"): ((0, 0.05623),),
    ("winter", "weekday"): ((0, 0.06087), (8, 0.07492), (12, 0.0869), (18, 0.07492), (23, 0.06087)),
    ("winter", "weekend"): ((0, 0.06087),),
}
"""SCE TOU-EV-4 energy prices [$/kWh] (acnportal 0.3.3 ``sce_tou_ev_4_march_2019.json``).
Summer is June to September, winter October to May."""
TOU_EV_4_DEMAND_CHARGE_PER_KW = 15.51
"""SCE TOU-EV-4 demand charge [$/kW of the billing period's peak 15-minute demand]."""
EXPORT_PRICE_PER_KWH = 0.03
BATTERY_WEAR_COST_PER_KWH = 0.05

EVSE_POWERS_KW = (7.2, 9.6, 11.0)
VEHICLE_ONBOARD_KW = (7.2, 11.0)
CAPACITY_RANGE_KWH = (40.0, 100.0)
EFFICIENCY_RANGE = (0.90, 0.95)
TARGET_SOC_RANGE = (0.8, 1.0)
V2G_RESERVE_SOC_RANGE = (0.2, 0.4)
MIN_ARRIVAL_SOC = 0.1
MIN_DWELL = dt.timedelta(minutes=30)
MIN_ENERGY_KWH = 0.5
FEASIBLE_SHARE = 0.8
"""A target needs at most this share of what the vehicle could charge at full power while plugged in."""
IMPORT_LIMIT_SHARE = 0.5
"""Where the import limit sits between the even-spread peak (0) and the charge-on-arrival peak (1)."""

BASE_LOAD_PEAK_KW_PER_VEHICLE = 1.5
BASE_LOAD_NIGHT_SHARE = 0.35
DR_EVENT_HOURS = 2
DR_EVENT_START_HOURS = (14, 15, 16)
DR_REDUCTION_SHARE = 0.3
DR_PAYMENT_PER_KWH = 1.0
DR_PENALTY_PER_KWH = 0.5
V2G_DISPATCH_HOURS = 1
V2G_DISPATCH_WINDOW_H = (12, 20)
V2G_DISPATCH_SHARE = 0.5
"""Requested export as a share of the discharge power plugged in for the whole dispatch."""
V2G_PRICE_PER_KWH = 1.0
V2G_PENALTY_PER_KWH = 0.5


@dataclass(frozen=True)
class SessionDraws:
    """Raw draws of the fitted distributions, before snapping to the grid and clipping."""

    group: np.ndarray
    """Index into :data:`ARRIVAL_GROUPS`."""
    arrival_h: np.ndarray
    dwell_h: np.ndarray
    energy_kwh: np.ndarray


def draw_sessions(
    n: int, rng: np.random.Generator, *, arrival_bounds_h: tuple[float, float] = (0.0, 24.0)
) -> SessionDraws:
    """Draw ``n`` sessions from :data:`ARRIVAL_GROUPS`; arrival hours outside the bounds are redrawn."""
    low, high = arrival_bounds_h
    if high <= low:
        raise ValueError(f"arrival_bounds_h={arrival_bounds_h} is empty")
    weights = np.array([g.weight for g in ARRIVAL_GROUPS])
    group = rng.choice(len(ARRIVAL_GROUPS), size=n, p=weights / weights.sum())
    means = np.array([g.arrival_mean_h for g in ARRIVAL_GROUPS])[group]
    sds = np.array([g.arrival_sd_h for g in ARRIVAL_GROUPS])[group]
    arrival = rng.normal(means, sds)
    for _ in range(1000):
        outside = (arrival < low) | (arrival >= high)
        if not outside.any():
            break
        arrival[outside] = rng.normal(means[outside], sds[outside])
    else:  # the bounds hold almost none of the mixture: fall back to uniform arrivals
        outside = (arrival < low) | (arrival >= high)
        arrival[outside] = rng.uniform(low, high, size=int(outside.sum()))
    dwell = rng.lognormal(
        np.array([g.dwell_h.mu for g in ARRIVAL_GROUPS])[group],
        np.array([g.dwell_h.sigma for g in ARRIVAL_GROUPS])[group],
    )
    energy = rng.lognormal(
        np.array([g.energy_kwh.mu for g in ARRIVAL_GROUPS])[group],
        np.array([g.energy_kwh.sigma for g in ARRIVAL_GROUPS])[group],
    )
    return SessionDraws(group=group, arrival_h=arrival, dwell_h=dwell, energy_kwh=energy)


def generate_depot_day(
    n_vehicles: int,
    seed: int,
    *,
    v2g_share: float = 0.0,
    dr_event: bool = False,
    start: dt.datetime | None = None,
    step_minutes: int = 15,
    n_steps: int = 96,
    rng: np.random.Generator | None = None,
) -> Scenario:
    """A seeded depot/workplace day of ``n_vehicles`` sessions (see the module docstring).

    ``v2g_share``: share of vehicles (rounded to a whole number) with V2G consent, a bidirectional EVSE
    and a ``min_energy_kwh`` reserve of 20–40 % of capacity. ``dr_event``: add one 2-hour afternoon
    DR event (import reduction of 30 % below the expected import, paid $1/kWh, $0.5/kWh penalty) and,
    if any vehicle is V2G, one 1-hour V2G export dispatch (half the V2G power plugged in for the whole
    hour, $1/kWh, $0.5/kWh penalty). ``start``: timezone-aware start of the horizon (a naive one is
    read as America/Los_Angeles local time); default 2019-03-05 00:00 America/Los_Angeles. The
    scenario's ``timezone`` is ``start``'s IANA zone, else America/Los_Angeles; its datetimes carry
    fixed UTC offsets. Demand is billed on 15-minute intervals (on each step if 15 is not a multiple
    of ``step_minutes``).
    """
    if n_vehicles < 0:
        raise ValueError(f"n_vehicles must be >= 0, got {n_vehicles}")
    if not 0.0 <= v2g_share <= 1.0:
        raise ValueError(f"v2g_share must be within [0, 1], got {v2g_share}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    start = start if start is not None else DEFAULT_START
    if start.tzinfo is None:
        start = start.replace(tzinfo=zoneinfo.ZoneInfo(DEFAULT_TIMEZONE))
    zone = (
        start.tzinfo if isinstance(start.tzinfo, zoneinfo.ZoneInfo) else zoneinfo.ZoneInfo(DEFAULT_TIMEZONE)
    )
    grid = _Grid(_fixed_offset(start.astimezone(zone)), zone, dt.timedelta(minutes=step_minutes), n_steps)

    base_load = _base_load_kw(grid, n_vehicles, rng)
    evses, vehicles, spread_kw, asap_kw = _sessions(grid, n_vehicles, v2g_share, rng)
    expected_import = base_load + spread_kw
    even_peak, asap_peak = float(expected_import.max()), float((base_load + asap_kw).max())
    import_limit = math.ceil(even_peak + IMPORT_LIMIT_SHARE * max(0.0, asap_peak - even_peak))
    any_v2g = any(v.v2g_consent for v in vehicles)
    dr_events, dispatches = [], []
    if dr_event:
        dr_events.append(_dr_event(grid, expected_import, rng))
        if any_v2g:
            dispatch = _v2g_dispatch(grid, vehicles, evses)
            if dispatch is not None:
                dispatches.append(dispatch)

    return Scenario(
        name=f"depot-day-n{n_vehicles}-seed{seed}",
        start=grid.start,
        step_minutes=step_minutes,
        n_steps=n_steps,
        timezone=str(zone),
        currency="USD",
        site=Site(
            id="depot",
            import_limit_kw=float(import_limit),
            export_limit_kw=float(import_limit) if any_v2g else 0.0,
            base_load_kw=[round(float(x), 2) for x in base_load],
        ),
        tariff=Tariff(
            import_price_per_kwh=[tou_ev_4_price(t) for t in grid.local_times],
            export_price_per_kwh=EXPORT_PRICE_PER_KWH,
            demand_charges=[
                DemandCharge(
                    name="facilities",
                    rate_per_kw=TOU_EV_4_DEMAND_CHARGE_PER_KW,
                    peak_already_kw=round(even_peak, 1),
                )
            ],
            demand_interval_minutes=15 if 15 % step_minutes == 0 or step_minutes > 15 else step_minutes,
        ),
        evses=evses,
        vehicles=vehicles,
        dr_events=dr_events,
        v2g_dispatches=dispatches,
        battery_wear_cost_per_kwh=BATTERY_WEAR_COST_PER_KWH,
    )


def tou_ev_4_price(moment: dt.datetime) -> float:
    """SCE TOU-EV-4 energy price [$/kWh] at ``moment`` (read in its own local time)."""
    season = "summer" if 6 <= moment.month <= 9 else "winter"
    day = "weekday" if moment.weekday() < 5 else "weekend"
    hour = moment.hour + moment.minute / 60
    price = 0.0
    for starts_h, value in TOU_EV_4[(season, day)]:
        if hour >= starts_h:
            price = value
    return price


@dataclass(frozen=True)
class _Grid:
    """The horizon's steps. Every datetime it returns carries the local time's fixed UTC offset."""

    start: dt.datetime
    zone: zoneinfo.ZoneInfo
    step: dt.timedelta
    n_steps: int

    @property
    def end(self) -> dt.datetime:
        return self.at(self.n_steps)

    @property
    def step_hours(self) -> float:
        return self.step.total_seconds() / 3600

    def at(self, k: int) -> dt.datetime:
        """Start of step ``k`` in local time (steps are absolute time, also across DST changes)."""
        return _fixed_offset((self.start.astimezone(dt.UTC) + k * self.step).astimezone(self.zone))

    @property
    def local_times(self) -> list[dt.datetime]:
        return [self.at(k) for k in range(self.n_steps)]

    @property
    def midnight(self) -> dt.datetime:
        """Local midnight of the start's day: clock hours of the session draws count from here."""
        return dt.datetime.combine(self.start.date(), dt.time(), tzinfo=self.zone)

    def hours_after_midnight(self, moment: dt.datetime) -> float:
        return (moment - self.midnight.astimezone(dt.UTC)).total_seconds() / 3600

    def step_of(self, hours_after_midnight: float, *, up: bool) -> int:
        """Step holding the moment ``hours_after_midnight`` after local midnight, rounded up or down."""
        offset = self.midnight.astimezone(dt.UTC) + dt.timedelta(hours=hours_after_midnight) - self.start
        steps = offset / self.step
        return math.ceil(steps - 1e-9) if up else math.floor(steps + 1e-9)

    def index_of(self, moment: dt.datetime) -> int:
        return round((moment - self.start) / self.step)

    def clock_hour(self, k: int) -> float:
        moment = self.at(k)
        return moment.hour + moment.minute / 60


def _fixed_offset(moment: dt.datetime) -> dt.datetime:
    """``moment`` with its current UTC offset as a fixed zone.

    Python subtracts and adds datetimes that share one ``ZoneInfo`` in wall-clock time, which is off by
    an hour across a DST change; fixed offsets keep arithmetic absolute (the scenario's ``timezone``
    still names the zone for time-of-day rules).
    """
    offset = moment.utcoffset()
    assert offset is not None
    return moment.astimezone(dt.timezone(offset))


def _base_load_kw(grid: _Grid, n_vehicles: int, rng: np.random.Generator) -> np.ndarray:
    """Office/depot shape: night floor, morning ramp around 7:00, evening fall around 18:30, ±3 % noise."""
    peak = max(5.0, BASE_LOAD_PEAK_KW_PER_VEHICLE * n_vehicles)
    hours = np.array([grid.clock_hour(k) for k in range(grid.n_steps)])
    day = 1 / (1 + np.exp(-(hours - 7.0) / 0.6)) * (1 / (1 + np.exp((hours - 18.5) / 0.8)))
    shape = BASE_LOAD_NIGHT_SHARE + (1 - BASE_LOAD_NIGHT_SHARE) * day
    noise = 1 + 0.03 * rng.standard_normal(grid.n_steps)
    return np.round(peak * shape * np.clip(noise, 0.9, 1.1), 2)


def _sessions(
    grid: _Grid, n: int, v2g_share: float, rng: np.random.Generator
) -> tuple[list[Evse], list[VehicleSession], np.ndarray, np.ndarray]:
    """EVSEs, sessions and their charging power [kW] per step if every vehicle charges evenly over its
    stay, and if every vehicle charges at full power from arrival until its target is reached."""
    min_steps = max(1, math.ceil(MIN_DWELL / grid.step))
    first_h = grid.hours_after_midnight(grid.start)
    last_h = grid.hours_after_midnight(grid.at(grid.n_steps - min_steps))
    if grid.n_steps < min_steps:
        raise ValueError(f"a horizon of {grid.n_steps} steps is shorter than the minimum dwell {MIN_DWELL}")
    draws = draw_sessions(n, rng, arrival_bounds_h=(first_h, max(last_h, first_h + 1e-6)))
    evse_kw = rng.choice(EVSE_POWERS_KW, size=n)
    onboard_kw = rng.choice(VEHICLE_ONBOARD_KW, size=n)
    capacity = np.round(rng.uniform(*CAPACITY_RANGE_KWH, size=n))
    eta_charge = np.round(rng.uniform(*EFFICIENCY_RANGE, size=n), 3)
    eta_discharge = np.round(rng.uniform(*EFFICIENCY_RANGE, size=n), 3)
    target_soc = rng.uniform(*TARGET_SOC_RANGE, size=n)
    reserve_soc = rng.uniform(*V2G_RESERVE_SOC_RANGE, size=n)
    v2g = np.zeros(n, dtype=bool)
    v2g[rng.permutation(n)[: round(v2g_share * n)]] = True

    first = np.array([min(grid.step_of(h, up=True), grid.n_steps - min_steps) for h in draws.arrival_h])
    first = np.maximum(first, 0)
    leave = np.array(
        [grid.step_of(h + d, up=False) for h, d in zip(draws.arrival_h, draws.dwell_h, strict=True)]
    )
    leave = np.clip(leave, first + min_steps, grid.n_steps)
    order = np.argsort(first, kind="stable")

    evses, vehicles = [], []
    spread_kw, asap_kw = np.zeros(grid.n_steps), np.zeros(grid.n_steps)
    for number, i in enumerate(order):
        power_kw = float(min(evse_kw[i], onboard_kw[i]))
        stay_h = (leave[i] - first[i]) * grid.step_hours
        target = math.floor(target_soc[i] * capacity[i] * 100) / 100
        need = min(
            float(draws.energy_kwh[i]),
            FEASIBLE_SHARE * power_kw * eta_charge[i] * stay_h,
            target - MIN_ARRIVAL_SOC * capacity[i],
        )
        need = math.floor(max(need, MIN_ENERGY_KWH) * 100) / 100
        spread_kw[first[i] : leave[i]] += need / eta_charge[i] / stay_h
        full_steps, rest = divmod(need / (eta_charge[i] * power_kw * grid.step_hours), 1.0)
        asap_kw[first[i] : first[i] + int(full_steps)] += power_kw
        if rest > 0:
            asap_kw[first[i] + int(full_steps)] += rest * power_kw
        evse_id, vehicle_id = f"evse-{number + 1:03d}", f"ev-{number + 1:03d}"
        evses.append(
            Evse(
                id=evse_id,
                max_charge_kw=float(evse_kw[i]),
                max_discharge_kw=float(evse_kw[i]) if v2g[i] else 0.0,
            )
        )
        vehicles.append(
            VehicleSession(
                id=vehicle_id,
                evse_id=evse_id,
                arrival=grid.at(int(first[i])),
                departure=grid.at(int(leave[i])),
                capacity_kwh=float(capacity[i]),
                energy_at_arrival_kwh=round(target - need, 2),
                target_energy_kwh=target,
                min_energy_kwh=round(float(reserve_soc[i] * capacity[i]), 2) if v2g[i] else 0.0,
                charge_efficiency=float(eta_charge[i]),
                discharge_efficiency=float(eta_discharge[i]),
                max_charge_kw=float(onboard_kw[i]),
                max_discharge_kw=float(onboard_kw[i]) if v2g[i] else 0.0,
                v2g_consent=bool(v2g[i]),
            )
        )
    return evses, vehicles, spread_kw, asap_kw


def _window(grid: _Grid, start_h: float, hours: float) -> tuple[int, int] | None:
    """Steps ``[first, end)`` of a local clock window, or None if it is not inside the horizon."""
    first = grid.step_of(start_h, up=True)
    end = first + max(1, round(hours / grid.step_hours))
    return (first, end) if first >= 0 and end <= grid.n_steps else None


def _dr_event(grid: _Grid, expected_import_kw: np.ndarray, rng: np.random.Generator) -> DrEvent:
    candidates = [w for h in DR_EVENT_START_HOURS if (w := _window(grid, h, DR_EVENT_HOURS))]
    if not candidates:
        raise ValueError(
            f"dr_event=True needs a horizon holding a {DR_EVENT_HOURS} h window starting at one of "
            f"{DR_EVENT_START_HOURS} h local time; {grid.start.isoformat()}..{grid.end.isoformat()} does not"
        )
    first, end = candidates[int(rng.integers(len(candidates)))]
    baseline = [round(float(x), 2) for x in expected_import_kw[first:end]]
    return DrEvent(
        id="dr-1",
        start=grid.at(first),
        end=grid.at(end),
        baseline_kw=baseline,
        reduction_kw=round(DR_REDUCTION_SHARE * float(np.mean(baseline)), 1),
        payment_per_kwh=DR_PAYMENT_PER_KWH,
        penalty_per_kwh=DR_PENALTY_PER_KWH,
    )


def _v2g_dispatch(grid: _Grid, vehicles: list[VehicleSession], evses: list[Evse]) -> V2gDispatch | None:
    """A 1-hour export request where the most V2G discharge power is plugged in for the whole hour.

    Searched in 12:00–20:00 local first, then over the whole horizon.
    """
    length = max(1, round(V2G_DISPATCH_HOURS / grid.step_hours))
    evse_kw = {e.id: e.max_discharge_kw for e in evses}
    stays = [
        (grid.index_of(v.arrival), grid.index_of(v.departure), min(v.max_discharge_kw, evse_kw[v.evse_id]))
        for v in vehicles
        if v.v2g_consent
    ]

    def available_kw(first: int) -> float:
        return sum(kw for a, d, kw in stays if a <= first and first + length <= d)

    low, high = (grid.step_of(h, up=True) for h in V2G_DISPATCH_WINDOW_H)
    afternoon = range(max(0, low), min(grid.n_steps, high) - length + 1)
    whole = range(grid.n_steps - length + 1)
    for candidates in (afternoon, whole):
        best = max(candidates, key=available_kw, default=None)
        if best is not None and available_kw(best) > 0:
            return V2gDispatch(
                id="v2g-1",
                start=grid.at(best),
                end=grid.at(best + length),
                export_kw=round(V2G_DISPATCH_SHARE * available_kw(best), 1),
                price_per_kwh=V2G_PRICE_PER_KWH,
                penalty_per_kwh=V2G_PENALTY_PER_KWH,
            )
    return None


def tou_ev_4_tariff() -> TouTariff:
    """:data:`TOU_EV_4` as a :class:`~market_adapters.tariffs.TouTariff`, for planners that price any
    horizon (the control loop), with the demand charge on every block."""
    seasons = {"summer": [((6, 1), (9, 30))], "winter": [((1, 1), (5, 31)), ((10, 1), (12, 31))]}
    blocks = []
    for (season, day_type), periods in TOU_EV_4.items():
        for n, (first, last) in enumerate(seasons[season]):
            blocks.append(
                TariffBlock(
                    id=f"{season}-{day_type}-{n}",
                    first_day=first,
                    last_day=last,
                    days="WEEKDAYS" if day_type == "weekday" else "WEEKENDS",
                    start_hours=[float(start) for start, _ in periods],
                    prices_per_kwh=[price for _, price in periods],
                    demand_charge_per_kw=TOU_EV_4_DEMAND_CHARGE_PER_KW,
                )
            )
    return TouTariff(name="SCE TOU-EV-4", blocks=blocks)
