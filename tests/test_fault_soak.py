"""The fault soak, short: ``bench/fault_soak.py``'s plan ``SHORT`` (6 chargers at a 15 kW site, every
fault for a few seconds) against a private Mosquitto, PostgreSQL, the centre's ingestion and the site
gateway as processes that are SIGKILLed and restarted. The full run and its figures are the benchmark
(BENCHMARKS.md, "Fault soak").

Each promise is asserted on its own, so a failure says which one broke and where:
nothing the gateway enqueued is lost or stored twice, the site's import and export at the chargers
stay within the limits in every 50 ms sample, and no car discharges without its driver's consent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path

import pytest
from mosquitto import Mosquitto, free_port
from test_gateway import until
from test_gateway_restart import SPEED, centre_of, charging, gateway_on, near

from chargersim.clock import SimClock
from chargersim.stations import SimulatedCharger
from chargersim.vehicles import Vehicle
from site_gateway.config import GatewayConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fault_soak import SHORT, SoakResult, run_soak, summary  # the benchmark's module


@pytest.fixture(scope="module")
def soak(postgres_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> SoakResult:
    workdir = tmp_path_factory.mktemp("soak")
    return asyncio.run(asyncio.wait_for(run_soak(SHORT, workdir, postgres_database_url, log=print), 240))


@pytest.mark.slow
def test_every_fault_was_injected_and_recovered_from(soak: SoakResult) -> None:
    names = [fault.name for fault in soak.faults]
    assert len(names) == 10, names
    stored, backlog = soak.catch_up
    assert "mid catch-up" in names[4] and 0 < stored < backlog, f"{stored} of {backlog} stored at the kill"
    not_recovered = [f.name for f in soak.faults if f.recovered_s is None]
    assert not not_recovered, summary(soak)


@pytest.mark.slow
def test_nothing_the_gateway_enqueued_is_lost_or_doubled(soak: SoakResult) -> None:
    assert soak.telemetry > 40, summary(soak)
    assert soak.lost == [] and soak.altered == [], summary(soak)
    assert soak.telemetry_stored == soak.telemetry - soak.left_in_outbox, summary(soak)
    assert soak.sessions_missing == [] and soak.sessions_doubled == [], summary(soak)
    assert soak.acks_missing == [], summary(soak)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="open (issue 12): a charger's TxDefaultProfile is not counted while its EVSE has a session, "
    "so a new transaction there (a reboot, the next car) draws up to its default above what the rollout "
    "counted it at until the next control step; seen as one 50 ms sample 1-1.5 kW over in some runs",
)
def test_the_site_import_holds_at_the_chargers(soak: SoakResult) -> None:
    assert [p for p in soak.violations() if "import above" in p] == []


@pytest.mark.slow
def test_the_site_export_holds_at_the_chargers(soak: SoakResult) -> None:
    assert [p for p in soak.violations() if "export above" in p] == []
    assert sum(f.window.samples for f in soak.faults) > 1000
    assert max(f.window.peak_import_kw for f in soak.faults) > 0.9 * SHORT.import_limit_kw  # it was full
    assert max(f.window.peak_export_kw for f in soak.faults) > 0  # and the consenting car discharged


@pytest.mark.slow
def test_no_car_discharges_without_its_driver_s_consent(soak: SoakResult) -> None:
    assert [p for p in soak.violations() if "discharge without consent in" in p] == []


# ------------------------------------------------------------- what the soak found, reproduced


def test_a_setpoint_in_flight_does_not_reach_the_next_car(tmp_path: Path, broker: Mosquitto) -> None:
    """Found by the soak (3 samples of -3 kW at a car whose driver had not consented): a control step
    allocates cp-0's consenting car a discharge, which goes out in the second wave, after the
    reductions are metered (up to ``charger_response_s``). The car leaves during that wait and a
    BPT-capable car whose driver did not consent plugs in. The wave must not send the old session's
    discharge to the new session: before, the OCPP server sent it to whatever transaction was running
    then, and the new car discharged until the next step."""

    async def scenario() -> list[float]:
        clock = SimClock(dt.datetime.now(dt.UTC), speed=SPEED)
        port = free_port()
        config = GatewayConfig.model_validate(
            {
                "site": {"id": "site-r", "import_limit_kw": 12, "export_limit_kw": 5},
                "ocpp": {"host": "127.0.0.1", "port": port},
                "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}"},
                "control": {
                    "schedule_stale_after_s": 3600,
                    "telemetry_interval_s": 30,
                    "charger_response_s": 120,
                },
                "chargers": [
                    {"id": "cp-0", "max_charge_kw": 22, "max_discharge_kw": 11},
                    {"id": "cp-1", "max_charge_kw": 22},
                    {"id": "cp-2", "max_charge_kw": 22},
                ],
            }
        )
        sims = [
            SimulatedCharger(
                f"cp-{n}",
                f"ws://127.0.0.1:{port}",
                "2.1" if n == 0 else "2.0.1",
                None,
                clock,
                max_power_w=22_000,
                max_discharge_w=11_000 if n == 0 else 0,
                meter_interval_s=30 if n == 0 else 3600,  # cp-1's reduction is never metered in time
                tick_s=5,
            )
            for n in range(3)
        ]
        new_car_kw: list[float] = []
        async with (
            gateway_on(config, tmp_path, clock) as gateway,
            centre_of(broker, clock) as centre,
            asyncio.TaskGroup() as tasks,
        ):
            runs = [tasks.create_task(sim.run(), name=sim.station_id) for sim in sims]
            await until(lambda: all(sim.connected.is_set() and sim.store.profiles for sim in sims))
            for n, sim in enumerate(sims):
                sim.plug_in(soak_car(clock, discharge_kw=11 if n == 0 else 0))
            await until(charging(gateway, sims))
            await centre.command({"cp-0": 1.0, "cp-1": 11.0, "cp-2": 0.0}, valid_s=3600)
            await until(lambda: near(sims[0], 1)() and near(sims[1], 11)())
            old = sims[0].transaction
            assert old is not None
            # cp-1 down, cp-2 up, cp-0 to discharge: the discharge and cp-2 wait for cp-1's reduction
            await centre.command({"cp-0": -3.0, "cp-1": 0.0, "cp-2": 11.0}, valid_s=3600)
            await until(lambda: sims[1].power_w < 100)  # the first wave is out: the step now waits
            assert sims[0].vehicle is not None
            sims[0].vehicle.departure = clock.now()
            await until(lambda: sims[0].transaction is None)
            sims[0].plug_in(soak_car(clock, discharge_kw=11))  # BPT-capable; no consent given
            await until(lambda: sims[0].transaction is not None and sims[0].transaction != old)
            for _ in range(300):  # 3 s real: past the wait and the second wave
                new_car_kw.append(sims[0].power_w / 1000)
                await asyncio.sleep(0.01)
            for run in runs:
                run.cancel()
        return new_car_kw

    new_car_kw = asyncio.run(scenario())
    assert min(new_car_kw) >= 0, f"the new car discharged: down to {min(new_car_kw):.2f} kW"


def soak_car(clock: SimClock, *, discharge_kw: float) -> Vehicle:
    return Vehicle(
        capacity_kwh=400,
        soc=0.3,
        max_charge_kw=11,
        arrival=clock.now(),
        departure=clock.now() + dt.timedelta(hours=10),
        max_discharge_kw=discharge_kw,
        min_soc=0.1,
    )
