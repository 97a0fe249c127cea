"""Grid signals into dispatch event versions, and the portfolio's flexibility out, on SQLite and PostgreSQL.

The store is driven directly and through the real peers of the adapters' own tests: openleadr's OpenADR
2.0b VTN (``tests/test_openadr2.py``) and the small OpenADR 3 VTN (``tests/openadr3_vtn.py``). The oracle
answers from hand-made plans whose figures are worked out below.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openleadr import OpenADRServer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from test_openadr2 import PEAK, VEN_ID, FixedOracle, Peers, free_port, modify
from test_openadr2 import settings as openadr2_settings
from test_openadr3 import cap_event, running_vtn
from test_openadr3 import settings as openadr3_settings

from aggregator.control.grid_signals import (
    GridSignalStore,
    PortfolioFlexibility,
    StoreOutcome,
)
from aggregator.control.replanning import ReplanRequests
from aggregator.db.models import (
    DispatchEvent,
    EventSiteBaseline,
    Program,
    ProgramKind,
    ProgramSite,
    Role,
    ScheduleStatus,
    ScheduleVersion,
    Site,
    TelemetryRecord,
    User,
)
from aggregator.db.session import make_sessionmaker
from aggregator.programs.dispatch_events import latest_versions
from market_adapters.dispatch import GridSignal, SignalInterval, SignalKind, SignalStatus
from market_adapters.openadr2 import Ven
from market_adapters.openadr3 import OpenAdr3Client
from optimizer import Evse, Scenario, Tariff, VehicleSession
from optimizer import Site as ScenarioSite

# openleadr's VTN stores itself on the aiohttp app under a plain string key.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning:openleadr.server")

H0 = dt.datetime(2031, 7, 1, 16, 0, tzinfo=dt.UTC)  # the 2.0b tests' T0: far ahead, events stay 'far'
Q = dt.timedelta(minutes=15)
WAIT = 5.0
SOURCE = "openadr2b:vtn.test"
WINDOW: dict[str, Any] = {"intervalPeriod": {"start": "2031-07-01T16:00:00Z", "duration": "PT30M"}}
"""An OpenADR 3 event's window: two 30-minute intervals from H0 (``cap_event`` has two values)."""


def at(quarters: float) -> dt.datetime:
    return H0 + quarters * Q


# ------------------------------------------------------------------------------------------- world


@pytest.fixture
def sessions(engine: Engine, session: Session) -> sessionmaker[Session]:
    """Sessions on the module's database; ``session`` (asked for its clean-up) seeds the world:

    programs ``peak`` (sites a and b enrolled) and ``other`` (site c), all owned by one grid operator.
    """
    operator = User(email="operator@example.org", password_hash="x", role=Role.GRID_OPERATOR)
    session.add(operator)
    session.add_all(
        [
            Site(id=site_id, name=site_id, import_limit_kw=50.0, export_limit_kw=8.0)
            for site_id in ("site-a", "site-b", "site-c")
        ]
    )
    session.flush()
    session.add_all(
        [
            Program(id="peak", name="Peak", kind=ProgramKind.DR, owner_id=operator.id),
            Program(id="other", name="Other", kind=ProgramKind.DR, owner_id=operator.id),
        ]
    )
    session.flush()
    session.add_all(
        [
            ProgramSite(program_id="peak", site_id="site-a"),
            ProgramSite(program_id="peak", site_id="site-b"),
            ProgramSite(program_id="other", site_id="site-c"),
        ]
    )
    session.commit()
    return make_sessionmaker(engine)


def signal(
    modification: int = 0,
    *,
    event_id: str = "e-1",
    program_id: str | None = "peak",
    kind: SignalKind = SignalKind.DR_REDUCTION,
    status: SignalStatus = SignalStatus.PENDING,
    values: tuple[float, ...] = (100.0, 50.0),
    targets: tuple[str, ...] = (),
    currency: str | None = None,
    received_at: dt.datetime | None = None,
) -> GridSignal:
    return GridSignal(
        source=SOURCE,
        event_id=event_id,
        modification=modification,
        program_id=program_id,
        kind=kind,
        status=status,
        intervals=tuple(
            SignalInterval(start=at(i), end=at(i + 1), value=value) for i, value in enumerate(values)
        ),
        currency=currency,
        target_sites=targets,
        received_at=received_at or at(-8),
    )


def rows(sessions: sessionmaker[Session], event_id: str = "e-1") -> list[DispatchEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(DispatchEvent)
                .where(DispatchEvent.external_event_id == event_id)
                .order_by(DispatchEvent.modification)
            )
        )


# ------------------------------------------------------------------------------------- the store


def test_a_new_event_is_a_version_of_its_program_and_replans_its_enrolled_sites(
    sessions: sessionmaker[Session],
) -> None:
    replans = ReplanRequests()
    stored = GridSignalStore(sessions, replans).store(signal())
    [row] = rows(sessions)
    assert (stored.outcome, stored.event_id, stored.row_id) == (StoreOutcome.STORED, row.id, row.id)
    assert (row.program_id, row.source, row.modification, row.kind, row.status) == (
        "peak",
        SOURCE,
        0,
        SignalKind.DR_REDUCTION,
        SignalStatus.PENDING,
    )
    assert (row.window_start, row.window_end) == (at(0), at(2))
    assert row.intervals == [
        {"start": "2031-07-01T16:00:00Z", "end": "2031-07-01T16:15:00Z", "value": 100.0},
        {"start": "2031-07-01T16:15:00Z", "end": "2031-07-01T16:30:00Z", "value": 50.0},
    ]
    reason = [f"event:{row.id}"]
    assert replans.take() == {"site-a": reason, "site-b": reason}
    assert stored.replans == ("site-a", "site-b")


def test_how_a_stored_event_is_measured_is_declared_at_each_site_it_applies_to(
    sessions: sessionmaker[Session],
) -> None:
    store = GridSignalStore(sessions, ReplanRequests(), program_map={"VTN-OTHER": "other"})
    first = store.store(signal(0, targets=("site-a",)))
    with sessions() as session:
        program = session.get(Program, "peak")
        assert program is not None
        program.measurement = {"method": "same_day"}  # after notification: changes nothing for e-1
        session.commit()
    store.store(signal(1, targets=("site-a", "site-b"), received_at=at(-4)))  # site-b from now on
    store.store(signal(0, event_id="e-2", program_id=None))  # not ours: planned by nobody, declared nowhere
    with sessions() as session:
        declared = session.execute(
            select(
                EventSiteBaseline.event_id,
                EventSiteBaseline.site_id,
                EventSiteBaseline.method,
                EventSiteBaseline.declared_at,
            ).order_by(EventSiteBaseline.site_id)
        ).all()
    assert [tuple(row) for row in declared] == [
        (first.event_id, "site-a", "counterfactual", at(-8)),
        (first.event_id, "site-b", "counterfactual", at(-4)),  # the event is measured one way
    ]


def test_a_modification_appends_a_version_and_replans_old_and_new_targets(
    sessions: sessionmaker[Session],
) -> None:
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans)
    first = store.store(signal(0, targets=("site-a", "site-b")))
    replans.take()
    second = store.store(signal(1, targets=("site-a",), values=(80.0,)))
    assert second.outcome is StoreOutcome.STORED
    assert second.event_id == first.event_id != second.row_id
    assert [(r.modification, r.target_sites, len(r.intervals)) for r in rows(sessions)] == [
        (0, ["site-a", "site-b"], 2),
        (1, ["site-a"], 1),
    ]
    # site-b is no longer targeted: it re-plans too, to drop the event from its plan
    assert replans.take() == {"site-a": [f"event:{first.event_id}"], "site-b": [f"event:{first.event_id}"]}


def test_a_cancellation_appends_a_cancelled_version_that_is_the_latest(
    sessions: sessionmaker[Session],
) -> None:
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans)
    first = store.store(signal(0))
    store.store(signal(1, status=SignalStatus.CANCELLED))
    assert [(r.modification, r.status) for r in rows(sessions)] == [
        (0, SignalStatus.PENDING),
        (1, SignalStatus.CANCELLED),
    ]
    with sessions() as session:
        [(public_id, latest)] = session.execute(latest_versions()).all()
    assert (public_id, latest.status) == (first.event_id, SignalStatus.CANCELLED)
    assert set(replans.take()) == {"site-a", "site-b"}


def test_a_redelivery_is_a_counted_duplicate_and_a_differing_one_is_logged(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans)
    first = store.store(signal(0))
    replans.take()
    again = store.store(signal(0))
    assert (again.outcome, again.event_id, again.row_id, again.replans) == (
        StoreOutcome.DUPLICATE,
        first.event_id,
        first.row_id,
        (),
    )
    with caplog.at_level(logging.WARNING, logger="aggregator.control.grid_signals"):
        changed = store.store(signal(0, values=(90.0, 50.0), targets=("site-a",)))
    assert changed.outcome is StoreOutcome.DUPLICATE
    assert "redelivered with different intervals, target_sites" in caplog.text
    assert len(rows(sessions)) == 1 and rows(sessions)[0].intervals[0]["value"] == 100.0
    assert store.counts == {"stored": 1, "duplicate": 2}
    assert replans.take() == {}


def test_a_lower_modification_is_stale_ignored_and_logged(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans)
    store.store(signal(2))
    replans.take()
    with caplog.at_level(logging.WARNING, logger="aggregator.control.grid_signals"):
        stale = store.store(signal(1, status=SignalStatus.CANCELLED))
    assert stale.outcome is StoreOutcome.STALE
    assert "modification 1 is stale: modification 2 is stored" in caplog.text
    assert [(r.modification, r.status) for r in rows(sessions)] == [(2, SignalStatus.PENDING)]
    assert store.counts["stale"] == 1 and replans.take() == {}


def test_programs_ours_mapped_or_none(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans, program_map={"VTN-PEAK": "peak", "VTN-GONE": "gone"})
    assert store.store(signal(event_id="ours", program_id="other")).program_id == "other"
    assert store.store(signal(event_id="mapped", program_id="VTN-PEAK")).program_id == "peak"
    assert set(replans.take()) == {"site-a", "site-b", "site-c"}
    with caplog.at_level(logging.WARNING, logger="aggregator.control.grid_signals"):
        unknown = store.store(signal(event_id="unknown", program_id="VTN-X", targets=("site-a",)))
        gone = store.store(signal(event_id="gone", program_id="VTN-GONE"))
        nameless = store.store(signal(event_id="nameless", program_id=None))
    assert (unknown.program_id, gone.program_id, nameless.program_id) == (None, None, None)
    assert "program 'VTN-X' is neither ours nor in program_map" in caplog.text
    assert "maps 'VTN-GONE' to 'gone', which is not one of our programs" in caplog.text
    assert "names no program" in caplog.text
    assert [r.program_id for r in rows(sessions, "unknown")] == [None]  # stored all the same
    assert replans.take() == {}  # an event without a program is not planned
    assert store.counts == {"stored": 5, "unmapped": 3}


def test_price_signals_are_stored_too(sessions: sessionmaker[Session]) -> None:
    store = GridSignalStore(sessions, ReplanRequests())
    store.store(signal(event_id="p", kind=SignalKind.PRICE, values=(0.31, 0.12), currency="USD"))
    [row] = rows(sessions, "p")
    assert (row.kind, row.currency, [i["value"] for i in row.intervals]) == (
        SignalKind.PRICE,
        "USD",
        [0.31, 0.12],
    )


def test_epoch_millisecond_modifications_are_stored(sessions: sessionmaker[Session]) -> None:
    """What the OpenADR 3 adapter sends (``modificationDateTime`` in epoch ms) fits the column."""
    store = GridSignalStore(sessions, ReplanRequests())
    modification = int(H0.timestamp() * 1000)
    assert store.store(signal(modification)).outcome is StoreOutcome.STORED
    assert [r.modification for r in rows(sessions)] == [modification]


def test_a_concurrent_delivery_of_the_same_version_is_a_duplicate(sessions: sessionmaker[Session]) -> None:
    """Another delivery stores the version between this one's check and its commit."""
    other = GridSignalStore(sessions, ReplanRequests())

    class Raced(GridSignalStore):
        def _program(self, session: Session, grid_signal: GridSignal, what: str) -> str | None:
            assert other.store(grid_signal).outcome is StoreOutcome.STORED
            return super()._program(session, grid_signal, what)

    raced = Raced(sessions, ReplanRequests())
    outcome = raced.store(signal(0))
    assert outcome.outcome is StoreOutcome.DUPLICATE
    assert raced.counts == {"duplicate": 1} and len(rows(sessions)) == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 5), min_size=1, max_size=8))
def test_any_delivery_order_keeps_exactly_the_versions_not_older_than_the_latest(
    sessions: sessionmaker[Session], deliveries: list[int]
) -> None:
    event_id = uuid.uuid4().hex
    store = GridSignalStore(sessions, ReplanRequests())
    outcomes = [store.store(signal(m, event_id=event_id)).outcome for m in deliveries]
    expected: list[int] = []
    for modification in deliveries:
        if not expected or modification > max(expected):
            expected.append(modification)
    assert [r.modification for r in rows(sessions, event_id)] == expected
    assert outcomes.count(StoreOutcome.STORED) == len(expected)
    assert rows(sessions, event_id)[-1].modification == max(deliveries)


# ------------------------------------------------------------------------------------ the oracle
#
# site-a, 15-minute steps from H0, 4 steps; import limit 50 kW, export limit 8 kW, base load
# [2, 12, 2, 0]. Vehicle A on bidirectional e1 (11/11 kW; the vehicle discharges at most 10 kW, V2G
# consent) plugged steps 0-3; vehicle B on e2 (7 kW) plugged steps 1-2.
#
#   plan     A [6, 6, -4, 0]  B [0, 7, 7, 0]   site = base + A + B = [8, 25, 5, 0]
#   down     = min(sum(p + dmax), site + 8) = min([16, 23, 13, 10], [16, 33, 13, 8]) = [16, 23, 13, 8]
#   export   = down - (A + B)  = [16 - 6, 23 - 13, 13 - 3, 8 - 0]             = [10, 10, 10, 8]
#   cap      = site - down    = [-8, 2, -8, -8]
#
# Both plans leave energy to spare (A ends at 31.67 kWh for a 20 kWh target, 5 kWh reserve; B at
# 15.22 kWh for 10 kWh), so the power headroom binds in these figures; where energy binds, see
# test_a_reduction_is_held_only_as_far_as_the_vehicle_can_catch_up.
#
# site-b: no vehicles, base load 3 kW: down 0, export 0, cap 3 in every step. site-c (program
# "other") has no plan.


def scenario_for(site_id: str, base_load_kw: list[float], vehicles: bool) -> Scenario:
    return Scenario(
        name=site_id,
        start=H0,
        step_minutes=15,
        n_steps=4,
        site=ScenarioSite(id=site_id, import_limit_kw=50.0, export_limit_kw=8.0, base_load_kw=base_load_kw),
        tariff=Tariff(import_price_per_kwh=0.2, export_price_per_kwh=0.1),
        evses=[Evse(id="e1", max_charge_kw=11.0, max_discharge_kw=11.0), Evse(id="e2", max_charge_kw=7.0)],
        vehicles=[
            VehicleSession(
                id="A",
                evse_id="e1",
                arrival=at(0),
                departure=at(4),
                capacity_kwh=60.0,
                energy_at_arrival_kwh=30.0,
                target_energy_kwh=20.0,
                min_energy_kwh=5.0,
                max_charge_kw=11.0,
                max_discharge_kw=10.0,
                v2g_consent=True,
            ),
            VehicleSession(
                id="B",
                evse_id="e2",
                arrival=at(1),
                departure=at(3),
                capacity_kwh=40.0,
                energy_at_arrival_kwh=12.0,
                target_energy_kwh=10.0,
                max_charge_kw=7.4,
            ),
        ]
        if vehicles
        else [],
    )


def add_plan(
    session: Session,
    site_id: str,
    scenario: Scenario,
    powers: dict[str, list[float]],
    created_at: dt.datetime,
) -> None:
    base = scenario.site.base_load_kw
    base_kw = base if isinstance(base, list) else [base] * scenario.n_steps
    site_import = [b + sum(p[k] for p in powers.values()) for k, b in enumerate(base_kw)]
    evses = {v.id: v.evse_id for v in scenario.vehicles}
    session.add(
        ScheduleVersion(
            site_id=site_id,
            created_at=created_at,
            horizon_start=scenario.start,
            step_seconds=scenario.step_minutes * 60,
            inputs={"scenario": scenario.model_dump(mode="json"), "sessions": {}, "events": []},
            result_summary={},
            status=ScheduleStatus.OPTIMAL,
            plan={
                "site_import_kw": site_import,
                "vehicles": {vid: {"power_kw": p, "evse_id": evses[vid]} for vid, p in powers.items()},
            },
        )
    )
    session.commit()


@pytest.fixture
def planned(sessions: sessionmaker[Session], session: Session) -> sessionmaker[Session]:
    site_a = scenario_for("site-a", [2.0, 12.0, 2.0, 0.0], vehicles=True)
    # an older version of site-a, which the latest replaces
    add_plan(session, "site-a", site_a, {"A": [11, 11, 11, 11], "B": [0, 7, 7, 0]}, at(-9))
    add_plan(session, "site-a", site_a, {"A": [6, 6, -4, 0], "B": [0, 7, 7, 0]}, at(-8))
    add_plan(session, "site-b", scenario_for("site-b", [3.0] * 4, vehicles=False), {}, at(-8))
    return sessions


PLANNED_AT = H0 - 2 * dt.timedelta(hours=1)


def oracle(
    sessions: sessionmaker[Session], now: dt.datetime = PLANNED_AT, **kwargs: Any
) -> PortfolioFlexibility:
    return PortfolioFlexibility(sessions, clock=lambda: now, **kwargs)


@pytest.mark.parametrize(
    ("start", "end", "reduction", "export", "cap"),
    [
        (at(0), at(4), 8.0, 8.0, 2.0),
        (at(0), at(1), 16.0, 10.0, -8.0),
        (at(0) + dt.timedelta(minutes=10), at(1) + dt.timedelta(minutes=5), 16.0, 10.0, 2.0),
        (at(2), at(3), 13.0, 10.0, -8.0),
    ],
)
def test_site_figures_by_hand(
    planned: sessionmaker[Session],
    start: dt.datetime,
    end: dt.datetime,
    reduction: float,
    export: float,
    cap: float,
) -> None:
    flexibility = oracle(planned, programs={"peak"})
    assert flexibility.by_site(SignalKind.DR_REDUCTION, start, end) == {"site-a": reduction, "site-b": 0.0}
    assert flexibility.by_site(SignalKind.V2G_EXPORT, start, end) == {"site-a": export, "site-b": 0.0}
    assert flexibility.by_site(SignalKind.DR_CAP, start, end) == {"site-a": cap, "site-b": 3.0}


def test_the_portfolio_sums_its_sites_and_unplanned_sites_promise_nothing(
    planned: sessionmaker[Session],
) -> None:
    async def ask(flexibility: PortfolioFlexibility, kind: SignalKind, start: int, end: int) -> float:
        return await flexibility.available_kw(kind, at(start), at(end))

    async def scenario() -> None:
        peak = oracle(planned, programs={"peak"})
        assert await ask(peak, SignalKind.DR_REDUCTION, 0, 4) == 8.0
        assert await ask(peak, SignalKind.V2G_EXPORT, 0, 4) == 8.0
        assert await ask(peak, SignalKind.DR_CAP, 0, 4) == 2.0 + 3.0
        assert await ask(peak, SignalKind.PRICE, 0, 4) == 0.0
        # beyond the plans' horizon: nothing to promise, no cap to hold
        assert await ask(peak, SignalKind.DR_REDUCTION, 2, 5) == 0.0
        assert await ask(peak, SignalKind.DR_CAP, 2, 5) == float("inf")
        # every enrolled site: site-c has no plan, so no cap can be promised
        everyone = oracle(planned)
        assert await ask(everyone, SignalKind.DR_REDUCTION, 0, 4) == 8.0
        assert await ask(everyone, SignalKind.DR_CAP, 0, 4) == float("inf")
        # nobody enrolled
        assert await ask(oracle(planned, programs={"none"}), SignalKind.DR_CAP, 0, 4) == float("inf")

    asyncio.run(scenario())


def test_the_past_part_of_a_window_is_not_asked_of_the_plan(planned: sessionmaker[Session]) -> None:
    during = oracle(planned, now=at(1), programs={"peak"})
    assert during.by_site(SignalKind.DR_REDUCTION, at(0), at(2))["site-a"] == 23.0  # step 1 only
    after = oracle(planned, now=at(5), programs={"peak"})
    assert after.by_site(SignalKind.DR_REDUCTION, at(0), at(2)) == {"site-a": None, "site-b": None}


# One van on an 11 kW charger for an hour (steps 0-3), planned at 7 kW throughout: exactly the 7 kWh
# (6.44 kWh stored) its target needs. A window over steps 1-2 has 7 kW of power headroom in each step,
# but every kWh taken out of it must come back in steps 0 and 3, where the van can add 11 - 7 = 4 kW,
# 1 kWh each. Holding X kW over the window moves 2 x 0.25 x X kWh, so X = (spare + catch-up) / 0.5.
#
#   nothing spare, all of steps 0 and 3 ahead        X = (0 + 1 + 1) / 0.5                  = 4 kW
#   a target 0.92 kWh lower (1 kWh from the grid)     X = (1 + 1 + 1) / 0.5                  = 6 kW
#   import limit 9 kW: the site adds only 2 kW       X = (0 + 0.5 + 0.5) / 0.5              = 2 kW
#   asked half-way through step 0                     X = (0 + 0.5 + 1) / 0.5                = 3 kW
# and the lowest cap it can hold is the planned 7 kW minus X. Over step 1 alone step 2 can catch up
# too and 0.25 x X kWh move: the power headroom, 7 kW, binds, except under the 9 kW limit:
# X = (0.5 + 0.5 + 0.5) / 0.25 = 6 kW.


@pytest.mark.parametrize(
    ("target_kwh", "import_limit_kw", "asked_at", "reduction", "one_step"),
    [
        (26.44, 50.0, PLANNED_AT, 4.0, 7.0),
        (25.52, 50.0, PLANNED_AT, 6.0, 7.0),
        (26.44, 9.0, PLANNED_AT, 2.0, 6.0),
        (26.44, 50.0, at(0.5), 3.0, 7.0),
    ],
)
def test_a_reduction_is_held_only_as_far_as_the_vehicle_can_catch_up(
    sessions: sessionmaker[Session],
    session: Session,
    target_kwh: float,
    import_limit_kw: float,
    asked_at: dt.datetime,
    reduction: float,
    one_step: float,
) -> None:
    van = VehicleSession(
        id="van",
        evse_id="e1",
        arrival=at(0),
        departure=at(4),
        capacity_kwh=60.0,
        energy_at_arrival_kwh=20.0,
        target_energy_kwh=target_kwh,
        max_charge_kw=11.0,
    )
    scenario = Scenario(
        name="site-c",
        start=H0,
        step_minutes=15,
        n_steps=4,
        site=ScenarioSite(id="site-c", import_limit_kw=import_limit_kw, export_limit_kw=0.0),
        tariff=Tariff(import_price_per_kwh=0.2),
        evses=[Evse(id="e1", max_charge_kw=11.0)],
        vehicles=[van],
    )
    add_plan(session, "site-c", scenario, {"van": [7.0] * 4}, at(-8))
    flexibility = oracle(sessions, now=asked_at, programs={"other"})

    figure = flexibility.by_site(SignalKind.DR_REDUCTION, at(1), at(3))["site-c"]
    assert figure == pytest.approx(reduction, abs=1e-6)
    assert flexibility.by_site(SignalKind.DR_CAP, at(1), at(3))["site-c"] == pytest.approx(7.0 - reduction)
    assert flexibility.by_site(SignalKind.V2G_EXPORT, at(1), at(3))["site-c"] == 0.0  # no V2G
    assert flexibility.by_site(SignalKind.DR_REDUCTION, at(1), at(2))["site-c"] == pytest.approx(one_step)


def test_metered_import_sums_the_enrolled_sites_per_interval(
    sessions: sessionmaker[Session], session: Session
) -> None:
    readings = [
        ("site-a", at(0), 10.0),
        ("site-a", at(0) + dt.timedelta(minutes=5), 14.0),
        ("site-b", at(0) + dt.timedelta(minutes=1), 3.0),
        ("site-b", at(1), 5.0),  # site-a silent in this interval: left out, not zero
        ("site-c", at(0), 100.0),  # enrolled in "other" only
        ("site-a", at(3), 7.0),  # outside the window
    ]
    for seq, (site_id, sent_at, kw) in enumerate(readings):
        session.add(
            TelemetryRecord(site_id=site_id, seq=seq, sent_at=sent_at, received_at=sent_at, site_import_kw=kw)
        )
    session.commit()

    async def scenario() -> None:
        metered = await oracle(sessions, programs={"peak"}).metered_kw(at(0), at(3))
        assert metered == [(at(0), 12.0 + 3.0), (at(1), 5.0)]
        assert await oracle(sessions, programs={"none"}).metered_kw(at(0), at(3)) == []

    asyncio.run(scenario())


# ---------------------------------------------------------------------------- through real peers


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def versions_of(sessions: sessionmaker[Session], source: str) -> list[DispatchEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(DispatchEvent).where(DispatchEvent.source == source).order_by(DispatchEvent.id)
            )
        )


def no_reports(
    ven_id: str,
    resource_id: str,
    measurement: str,
    unit: str,
    scale: str,
    min_sampling_interval: dt.timedelta,
    max_sampling_interval: dt.timedelta,
) -> None:
    """The VTN asks for no report (the reports are tested in tests/test_openadr2.py)."""


@contextlib.asynccontextmanager
async def openadr2_peers(store: GridSignalStore, oracle: Any) -> AsyncIterator[Peers]:
    """openleadr's VTN on loopback and our VEN storing into ``store`` (as in tests/test_openadr2.py)."""
    port = free_port()
    vtn = OpenADRServer(
        vtn_id="TESTVTN",
        http_port=port,
        http_host="127.0.0.1",
        requested_poll_freq=dt.timedelta(seconds=10),
        verify_message_signatures=False,
        show_fingerprint=False,
    )
    vtn.add_handler("on_create_party_registration", lambda payload: (VEN_ID, "reg-1"))
    vtn.add_handler("on_register_report", no_reports)
    await vtn.run()
    try:
        async with Ven(openadr2_settings(port), store, oracle) as ven:
            yield Peers(vtn, ven, asyncio.Queue(), asyncio.Queue(), asyncio.Queue())
    finally:
        await vtn.stop()


def test_openadr2_events_become_versions_through_the_ven(sessions: sessionmaker[Session]) -> None:
    """SIMPLE levels 2 and 1 of program PEAK (→ "peak-2031", mapped to our "peak" by the store) are
    100 and 50 kW (tests/test_openadr2.py); a modification and the cancellation append versions."""
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans, program_map={"peak-2031": "peak"})

    async def scenario() -> None:
        async with openadr2_peers(store, FixedOracle(available={SignalKind.DR_REDUCTION: 150.0})) as p:
            source = p.ven.settings.source
            event_id = p.add_event("SIMPLE", "level", [2, 1], market_context=PEAK)
            await until(lambda: len(versions_of(sessions, source)) == 1, "the event's first version")
            [first] = versions_of(sessions, source)
            assert (first.external_event_id, first.program_id, first.modification) == (event_id, "peak", 0)
            assert (first.kind, first.status) == (SignalKind.DR_REDUCTION, SignalStatus.PENDING)
            assert [(i["start"], i["value"]) for i in first.intervals] == [
                ("2031-07-01T16:00:00Z", 100.0),
                ("2031-07-01T16:15:00Z", 50.0),
            ]
            # the re-plan requests follow the commit that made the version visible: gather them
            requested: dict[str, list[str]] = {}
            async with asyncio.timeout(10):
                while set(requested) != {"site-a", "site-b"}:
                    for site, reasons in (await replans.wait(1)).items():
                        requested.setdefault(site, []).extend(reasons)
            assert requested == {"site-a": [f"event:{first.id}"], "site-b": [f"event:{first.id}"]}

            modify(p, event_id, 3)  # 200 kW > 150 kW available: opted out, withdrawn from the plan
            await until(lambda: len(versions_of(sessions, source)) == 2, "the withdrawal")
            modify(p, event_id, 1)  # 50 kW again: opted in
            await until(lambda: len(versions_of(sessions, source)) == 3, "the modified version")
            p.expect_opt(event_id)
            p.vtn.cancel_event(VEN_ID, event_id)
            await until(lambda: len(versions_of(sessions, source)) == 4, "the cancellation")

        chain = versions_of(sessions, source)
        assert [(v.modification, v.status, v.intervals[0]["value"]) for v in chain] == [
            (0, SignalStatus.PENDING, 100.0),
            (1, SignalStatus.CANCELLED, 100.0),
            (2, SignalStatus.PENDING, 50.0),
            (3, SignalStatus.CANCELLED, 50.0),
        ]
        assert {v.program_id for v in chain} == {"peak"}
        assert set(replans.take()) == {"site-a", "site-b"}

    asyncio.run(scenario())


def test_openadr2_asks_the_portfolio_from_its_plans(planned: sessionmaker[Session]) -> None:
    """The plans can drop import by 8 kW over H0..H0+1h (see the oracle's hand figures): LOAD_DISPATCH
    delta -8 kW targeted at site-a... is opted in and stored; -20 kW is opted out and never stored."""
    store = GridSignalStore(planned, ReplanRequests(), program_map={"peak-2031": "peak"})

    async def scenario() -> None:
        async with openadr2_peers(store, oracle(planned, programs={"peak"})) as p:
            source = p.ven.settings.source
            too_much = p.add_event("LOAD_DISPATCH", "delta", [-20.0] * 4, market_context=PEAK)
            assert await asyncio.wait_for(p.opts.get(), WAIT) == (too_much, "optOut")
            fits = p.add_event("LOAD_DISPATCH", "delta", [-8.0] * 4, market_context=PEAK)
            assert await asyncio.wait_for(p.opts.get(), WAIT) == (fits, "optIn")
            await until(lambda: len(versions_of(planned, source)) == 1, "the opted-in event")
        [stored] = versions_of(planned, source)
        assert (stored.external_event_id, stored.intervals[0]["value"]) == (fits, 8.0)

    asyncio.run(scenario())


def test_openadr3_events_become_versions_and_a_restart_redelivers_duplicates(
    sessions: sessionmaker[Session],
) -> None:
    """Program "DR-1" maps to "our-dr" in the client, which the store maps to "peak"; "depot-a" is
    site-a (tests/test_openadr3.py). A second client (a restart) sees the same event again."""
    replans = ReplanRequests()
    store = GridSignalStore(sessions, replans, program_map={"our-dr": "peak"})

    async def scenario() -> None:
        source = ""
        async with running_vtn() as (vtn, url, admin):
            program = vtn.add_program("DR-1")
            flexibility = oracle(sessions, programs={"peak"})
            async with OpenAdr3Client(openadr3_settings(url), sink=store, oracle=flexibility) as client:
                source = client.source
                event_id = await admin.post(cap_event(program["id"], **WINDOW))
                await until(lambda: len(versions_of(sessions, source)) == 1, "the first version")
                await admin.put(event_id, cap_event(program["id"], values=(30.0,), **WINDOW))
                await until(lambda: len(versions_of(sessions, source)) == 2, "the changed version")
                await admin.delete(event_id)
                await until(lambda: len(versions_of(sessions, source)) == 3, "the cancellation")
                second = await admin.post(cap_event(program["id"], **WINDOW))
                await until(lambda: len(versions_of(sessions, source)) == 4, "the second event")
            stored_before = store.counts["stored"]
            async with OpenAdr3Client(openadr3_settings(url), sink=store, oracle=flexibility):
                await until(lambda: store.counts["duplicate"] >= 1, "the redelivery of the second event")
            assert store.counts["stored"] == stored_before

        chain = [v for v in versions_of(sessions, source) if v.external_event_id == event_id]
        assert [(v.status, v.kind, [i["value"] for i in v.intervals]) for v in chain] == [
            (SignalStatus.PENDING, SignalKind.DR_CAP, [50.0, 40.0]),
            (SignalStatus.PENDING, SignalKind.DR_CAP, [30.0]),
            (SignalStatus.CANCELLED, SignalKind.DR_CAP, [30.0]),
        ]
        assert chain[0].modification < chain[1].modification < chain[2].modification
        assert {v.program_id for v in chain} == {"peak"} and chain[0].target_sites == ["site-a"]
        assert [v.external_event_id for v in versions_of(sessions, source)][-1] == second
        assert set(replans.take()) == {"site-a"}

    asyncio.run(scenario())
