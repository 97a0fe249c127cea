"""Telemetry is stored once per (site_id, seq), by constraint, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from aggregator.db.models import EvseTelemetryRecord, Site, TelemetryRecord
from aggregator.db.telemetry import insert_telemetry_many, insert_telemetry_once
from wire.contract import EvseTelemetry, Telemetry

SENT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
RECEIVED = SENT + dt.timedelta(seconds=2)


def telemetry(seq: int, site_id: str = "depot-1", import_kw: float = 30.0) -> Telemetry:
    return Telemetry(
        site_id=site_id,
        seq=seq,
        sent_at=SENT + dt.timedelta(seconds=seq),
        site_import_kw=import_kw,
        base_load_kw=8.0,
        evses=(
            EvseTelemetry(charger_id="CP-1", evse_id=1, power_kw=11.0, energy_kwh=3.5, soc_percent=40.0),
            EvseTelemetry(charger_id="CP-2", evse_id=1, power_kw=-7.0),
        ),
    )


@pytest.fixture
def sites(session: Session) -> Session:
    session.add_all(
        [
            Site(id="depot-1", name="Depot 1", import_limit_kw=100, export_limit_kw=50),
            Site(id="depot-2", name="Depot 2", import_limit_kw=100, export_limit_kw=50),
        ]
    )
    session.commit()
    return session


def count(session: Session, model: type[TelemetryRecord] | type[EvseTelemetryRecord]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_first_delivery_is_stored_with_its_evses(sites: Session) -> None:
    assert insert_telemetry_once(sites, telemetry(1), received_at=RECEIVED) is True
    sites.commit()
    record = sites.scalars(select(TelemetryRecord)).one()
    assert (record.site_id, record.seq, record.site_import_kw, record.base_load_kw) == (
        "depot-1",
        1,
        30.0,
        8.0,
    )
    assert (record.sent_at, record.received_at) == (SENT + dt.timedelta(seconds=1), RECEIVED)
    assert [(e.charger_id, e.evse_id, e.power_kw, e.energy_kwh, e.soc_percent) for e in record.evses] == [
        ("CP-1", 1, 11.0, 3.5, 40.0),
        ("CP-2", 1, -7.0, None, None),
    ]


def test_redelivery_is_dropped_and_the_first_copy_kept(sites: Session) -> None:
    assert insert_telemetry_once(sites, telemetry(5, import_kw=30.0)) is True
    sites.commit()
    assert insert_telemetry_once(sites, telemetry(5, import_kw=99.0)) is False
    sites.commit()
    assert count(sites, TelemetryRecord) == 1
    assert count(sites, EvseTelemetryRecord) == 2
    assert sites.scalars(select(TelemetryRecord.site_import_kw)).one() == 30.0


def test_duplicate_in_the_same_transaction_is_dropped(sites: Session) -> None:
    assert [insert_telemetry_once(sites, telemetry(seq)) for seq in (1, 2, 1, 3, 2)] == [
        True,
        True,
        False,
        True,
        False,
    ]
    sites.commit()
    assert sorted(sites.scalars(select(TelemetryRecord.seq))) == [1, 2, 3]


def test_seq_is_per_site(sites: Session) -> None:
    assert insert_telemetry_once(sites, telemetry(1, "depot-1")) is True
    assert insert_telemetry_once(sites, telemetry(1, "depot-2")) is True
    sites.commit()
    assert count(sites, TelemetryRecord) == 2


def test_the_constraint_itself_rejects_a_duplicate(sites: Session) -> None:
    """The guarantee is the database's, not the helper's: a plain insert of a stored (site, seq) fails."""
    insert_telemetry_once(sites, telemetry(1))
    sites.commit()
    sites.add(
        TelemetryRecord(site_id="depot-1", seq=1, sent_at=SENT, received_at=RECEIVED, site_import_kw=1.0)
    )
    with pytest.raises(IntegrityError):
        sites.flush()
    sites.rollback()
    assert count(sites, TelemetryRecord) == 1


def test_unknown_site_is_an_error(sites: Session) -> None:
    with pytest.raises(IntegrityError):
        insert_telemetry_once(sites, telemetry(1, "nowhere"))


# ---------------------------------------------------------------------------------------- batches


def evse_rows(session: Session) -> list[tuple[int, str, int, float, float | None, float | None]]:
    query = select(
        TelemetryRecord.seq,
        EvseTelemetryRecord.charger_id,
        EvseTelemetryRecord.evse_id,
        EvseTelemetryRecord.power_kw,
        EvseTelemetryRecord.energy_kwh,
        EvseTelemetryRecord.soc_percent,
    ).join(TelemetryRecord)
    return sorted((seq, cp, evse, kw, kwh, soc) for seq, cp, evse, kw, kwh, soc in session.execute(query))


def test_a_batch_is_stored_with_each_message_its_own_evses_and_times(sites: Session) -> None:
    received = [RECEIVED + dt.timedelta(seconds=i) for i in range(3)]
    batch = [telemetry(1), telemetry(2, "depot-2", import_kw=12.5), telemetry(3)]
    assert insert_telemetry_many(sites, batch, received_at=received) == [True, True, True]
    sites.commit()
    records = sites.scalars(select(TelemetryRecord).order_by(TelemetryRecord.received_at)).all()
    assert [(r.site_id, r.seq, r.site_import_kw, r.received_at) for r in records] == [
        ("depot-1", 1, 30.0, received[0]),
        ("depot-2", 2, 12.5, received[1]),
        ("depot-1", 3, 30.0, received[2]),
    ]
    assert [r.sent_at for r in records] == [SENT + dt.timedelta(seconds=seq) for seq in (1, 2, 3)]
    assert evse_rows(sites) == [
        row
        for seq in (1, 2, 3)
        for row in [(seq, "CP-1", 1, 11.0, 3.5, 40.0), (seq, "CP-2", 1, -7.0, None, None)]
    ]


def test_a_batch_drops_what_was_stored_before_and_repeats_within_itself(sites: Session) -> None:
    assert insert_telemetry_once(sites, telemetry(2, import_kw=1.0)) is True
    sites.commit()
    batch = [
        telemetry(1),
        telemetry(2),
        telemetry(3, import_kw=3.0),
        telemetry(3, import_kw=9.0),
        telemetry(1),
    ]
    assert insert_telemetry_many(sites, batch, received_at=RECEIVED) == [True, False, True, False, False]
    assert insert_telemetry_many(sites, []) == []
    sites.commit()
    kw = {seq: kw for seq, kw in sites.execute(select(TelemetryRecord.seq, TelemetryRecord.site_import_kw))}
    assert kw == {1: 30.0, 2: 1.0, 3: 3.0}  # the first copy of each is the one kept
    assert count(sites, EvseTelemetryRecord) == 6


def test_a_batch_with_an_unknown_site_fails_whole(sites: Session) -> None:
    with pytest.raises(IntegrityError):
        insert_telemetry_many(sites, [telemetry(1), telemetry(2, "nowhere")])
    sites.rollback()
    assert count(sites, TelemetryRecord) == 0


def test_received_times_must_match_the_messages(sites: Session) -> None:
    with pytest.raises(ValueError, match="received_at has 1 times for 2 telemetry messages"):
        insert_telemetry_many(sites, [telemetry(1), telemetry(2)], received_at=[RECEIVED])


_offsets = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    deliveries=st.lists(st.tuples(st.sampled_from(["depot-1", "depot-2"]), st.integers(1, 12)), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=4),
)
def test_any_deliveries_in_any_batches_store_each_message_once(
    sites: Session, deliveries: list[tuple[str, int]], cuts: list[int]
) -> None:
    """However redeliveries fall into batches, each (site, seq) is stored exactly once, by the first
    delivery, and the results say which ones those were."""
    base = 100 * next(_offsets)  # examples share the database: each uses its own seqs
    messages = [telemetry(base + seq, site, import_kw=float(i)) for i, (site, seq) in enumerate(deliveries)]
    bounds = [0, *sorted(c for c in cuts if c < len(messages)), len(messages)]
    results: list[bool] = []
    for start, end in itertools.pairwise(bounds):
        results += insert_telemetry_many(sites, messages[start:end])
        sites.commit()
    first: dict[tuple[str, int], int] = {}
    for i, key in enumerate(deliveries):
        first.setdefault(key, i)
    assert results == [first[key] == i for i, key in enumerate(deliveries)]
    query = select(TelemetryRecord.site_id, TelemetryRecord.seq, TelemetryRecord.site_import_kw).where(
        TelemetryRecord.seq > base, TelemetryRecord.seq <= base + 12
    )
    stored = {(site, seq - base): kw for site, seq, kw in sites.execute(query)}
    assert stored == {key: float(i) for key, i in first.items()}


def test_a_batch_of_messages_without_readings_or_optional_values(sites: Session) -> None:
    bare = [Telemetry(site_id="depot-1", seq=seq, sent_at=SENT, site_import_kw=-2.5) for seq in (1, 2)]
    reading = EvseTelemetry(charger_id="CP-9", evse_id=2, power_kw=0.0)
    batch = [*bare, Telemetry(site_id="depot-2", seq=1, sent_at=SENT, site_import_kw=0.0, evses=(reading,))]
    assert insert_telemetry_many(sites, batch, received_at=RECEIVED) == [True, True, True]
    assert insert_telemetry_many(sites, bare) == [False, False]
    sites.commit()
    stored = sites.execute(select(TelemetryRecord.site_id, TelemetryRecord.seq, TelemetryRecord.base_load_kw))
    assert sorted(stored) == [("depot-1", 1, None), ("depot-1", 2, None), ("depot-2", 1, None)]
    assert evse_rows(sites) == [(1, "CP-9", 2, 0.0, None, None)]


def test_postgresql_takes_a_batch_in_one_order_whatever_its_arrival_order(sites: Session) -> None:
    """Rows go in sorted by (site, seq), so two writers holding the same redelivered messages wait for
    each other in one order (ids follow the order of insertion); SQLite keeps arrival order."""
    batch = [
        telemetry(5, "depot-2"),
        telemetry(3, "depot-1"),
        telemetry(1, "depot-2"),
        telemetry(2, "depot-1"),
    ]
    assert insert_telemetry_many(sites, batch) == [True] * 4
    sites.commit()
    inserted = list(
        sites.execute(select(TelemetryRecord.site_id, TelemetryRecord.seq).order_by(TelemetryRecord.id))
    )
    if sites.get_bind().dialect.name == "postgresql":
        assert inserted == [("depot-1", 2), ("depot-1", 3), ("depot-2", 1), ("depot-2", 5)]
    else:
        assert inserted == [(m.site_id, m.seq) for m in batch]
