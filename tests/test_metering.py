"""Metered import per interval from stored telemetry, on SQLite and PostgreSQL, against hand-computed
means; and the bucketing's invariants with hypothesis."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from aggregator.db.models import EvseTelemetryRecord, Site, TelemetryRecord
from aggregator.ingestion.metering import (
    MeteringError,
    _bucket,
    evse_power_intervals,
    interval_index,
    site_import_intervals,
)

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
CET = dt.timezone(dt.timedelta(hours=1))


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def sites(session: Session) -> list[Site]:
    sites = [
        Site(id="depot-1", name="Depot 1", import_limit_kw=100, export_limit_kw=50),
        Site(id="depot-2", name="Depot 2", import_limit_kw=100, export_limit_kw=0),
    ]
    session.add_all(sites)
    session.commit()
    return sites


def add_readings(
    session: Session, site_id: str, readings: list[tuple[dt.datetime, float]], evses: bool = False
) -> None:
    for seq, (sent_at, kw) in enumerate(readings):
        record = TelemetryRecord(
            site_id=site_id,
            seq=seq,
            sent_at=sent_at,
            received_at=sent_at + dt.timedelta(seconds=2),
            site_import_kw=kw,
            base_load_kw=None,
        )
        if evses:
            record.evses = [
                EvseTelemetryRecord(
                    charger_id="cp-1", evse_id=1, power_kw=kw / 2, energy_kwh=None, soc_percent=None
                ),
                EvseTelemetryRecord(
                    charger_id="cp-1", evse_id=2, power_kw=-1.0, energy_kwh=None, soc_percent=None
                ),
            ]
        session.add(record)
    session.commit()


READINGS = [
    (at(-0.01), 999.0),  # before the window
    (at(0), 10.0),
    (at(5), 20.0),
    (at(14.99), 30.0),  # interval 10:00: mean 20 of 3
    # interval 10:15: nothing
    (at(30), -5.0),
    (at(44.5), 15.0),  # interval 10:30: mean 5 of 2 (an export and an import)
    (at(45), 999.0),  # the window is half-open: 10:45 is out
]


def test_site_import_means_per_interval(session: Session, sites: list[Site]) -> None:
    add_readings(session, "depot-1", READINGS)
    add_readings(session, "depot-2", [(at(1), 500.0)])  # another site's readings stay out

    means = site_import_intervals(session, "depot-1", T0, at(45))

    assert list(means.mean_kw.index) == [pd.Timestamp(at(m)) for m in (0, 15, 30)]
    assert means.mean_kw.iloc[0] == pytest.approx(20.0)
    assert math.isnan(means.mean_kw.iloc[1])  # an interval with no data is NaN, not 0
    assert means.mean_kw.iloc[2] == pytest.approx(5.0)
    assert list(means.samples) == [3, 0, 2]
    assert not means.complete
    energy = means.energy_kwh
    assert energy.iloc[0] == pytest.approx(5.0)  # 20 kW for a quarter hour
    assert math.isnan(energy.iloc[1])
    assert energy.iloc[2] == pytest.approx(1.25)


def test_a_window_given_with_another_offset_means_the_same_instants(
    session: Session, sites: list[Site]
) -> None:
    # readings stored with a +01:00 offset, asked for with +01:00 bounds: 11:00+01:00 is 10:00Z
    add_readings(
        session, "depot-1", [(at(m).astimezone(CET), kw) for m, kw in ((1, 8.0), (16, 4.0), (29, 6.0))]
    )

    means = site_import_intervals(session, "depot-1", at(0).astimezone(CET), at(30).astimezone(CET))

    assert str(means.mean_kw.index.tz) == "UTC"
    assert list(means.mean_kw.index) == [pd.Timestamp("2026-03-02T10:00Z"), pd.Timestamp("2026-03-02T10:15Z")]
    assert list(means.mean_kw) == pytest.approx([8.0, 5.0])
    assert list(means.samples) == [1, 2]
    assert means.complete


def test_a_quiet_site_has_every_interval_missing(session: Session, sites: list[Site]) -> None:
    means = site_import_intervals(session, "depot-2", T0, at(30), step=dt.timedelta(minutes=5))
    assert len(means.mean_kw) == 6
    assert means.mean_kw.isna().all()
    assert (means.samples == 0).all()


def test_evse_power_per_interval(session: Session, sites: list[Site]) -> None:
    add_readings(session, "depot-1", READINGS, evses=True)

    evses = evse_power_intervals(session, "depot-1", T0, at(45))

    assert sorted(evses) == [("cp-1", 1), ("cp-1", 2)]
    first = evses[("cp-1", 1)]
    assert first.mean_kw.iloc[0] == pytest.approx(10.0)  # halves of 10, 20, 30
    assert math.isnan(first.mean_kw.iloc[1])
    assert first.mean_kw.iloc[2] == pytest.approx(2.5)  # halves of -5 and 15
    assert list(evses[("cp-1", 2)].samples) == [3, 0, 2]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (T0.replace(tzinfo=None), at(15), "start .* has no UTC offset"),
        (T0, at(15).replace(tzinfo=None), "end .* has no UTC offset"),
        (at(15), at(15), "is not after start"),
    ],
)
def test_windows_that_cannot_be_answered(start: dt.datetime, end: dt.datetime, message: str) -> None:
    with pytest.raises(MeteringError, match=message):
        interval_index(start, end)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=3600 - 1), st.floats(min_value=-100, max_value=100)),
        max_size=40,
    )
)
def test_bucketing_keeps_every_reading_once(readings: list[tuple[int, float]]) -> None:
    """Each reading lands in exactly one interval, and the means weighted by their sample counts add up
    to the readings' sum."""
    index = interval_index(T0, at(60))
    times = [T0 + dt.timedelta(seconds=second) for second, _ in readings]
    means = _bucket(times, [kw for _, kw in readings], index, dt.timedelta(minutes=15))
    assert int(means.samples.sum()) == len(readings)
    assert float((means.mean_kw.fillna(0) * means.samples).sum()) == pytest.approx(
        sum(kw for _, kw in readings), abs=1e-6
    )
    assert (means.mean_kw.isna() == (means.samples == 0)).all()
