"""A discharge refused because the vehicle did not negotiate bidirectional transfer is reported to the
centre as such (``vehicle_not_bidirectional``), but only to a centre that can read it: the whole
gateway with a simulated OCPP 2.1 station, a test-owned Mosquitto and a centre client
(``test_gateway_v2g.site``).

A centre from before the reason would refuse the whole telemetry message over it (every contract
model validates its enums), so the gateway tells a centre that does not bind setpoints to sessions
(its commands name no transaction) ``charger_max``, as before. Before this rule the refusal was
``charger_max`` for every centre (the test fails there).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from mosquitto import Mosquitto
from test_gateway import Centre, until
from test_gateway_v2g import site

from wire.contract import (
    EvseLimit,
    LimitReason,
    SetpointCommand,
    encode,
    setpoint_topic,
)


async def command(centre: Centre, power_kw: float, transaction_id: str | None) -> str:
    """A discharge command for cp-0 from ``centre``, naming ``transaction_id`` (a centre that binds
    setpoints to sessions) or none (one from before)."""
    now = centre.clock()
    command_id = f"cmd-{transaction_id}-{now.timestamp()}"
    setpoint = {"charger_id": "cp-0", "evse_id": 1, "power_kw": power_kw, "transaction_id": transaction_id}
    message = SetpointCommand(
        site_id=centre.site_id,
        command_id=command_id,
        issued_at=now - dt.timedelta(seconds=1),
        valid_until=now + dt.timedelta(hours=1),
        setpoints=(setpoint,),
    )
    await centre.client.publish(setpoint_topic(centre.site_id), encode(message), qos=1)
    return command_id


def latest_limit(centre: Centre) -> EvseLimit | None:
    last = centre.telemetry[-1] if centre.telemetry else None
    return last.evses[0].limit if last and last.evses else None


def reported(centre: Centre, reason: LimitReason, after: int) -> bool:
    """A reading after the ``after``-th says the discharge is capped at 0 for ``reason``."""
    limit = latest_limit(centre) if len(centre.telemetry) > after else None
    return limit is not None and limit.discharge and limit.power_kw == 0.0 and limit.reason is reason


def test_a_vehicle_without_bidirectional_transfer_is_named_to_a_centre_that_reads_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async def scenario() -> None:
        async with site(tmp_path, broker, "2.1", discharge_kw=0.0) as (gateway, centre, sim, _received):
            await until(lambda: gateway.evses["cp-0/1"].energy_request_kwh is not None)  # AC_three_phase
            transaction_id = gateway.evses["cp-0/1"].transaction_id
            assert transaction_id is not None

            # A centre that binds setpoints to sessions hears who refused.
            command_id = await command(centre, -5.0, transaction_id)
            await until(lambda: centre.ack(command_id) is not None)
            ack = centre.ack(command_id)
            assert ack is not None and (ack.evses[0].detail or "").startswith(
                "limited to 0.00 kW by the vehicle"
            )
            seen = len(centre.telemetry)
            await until(lambda: reported(centre, LimitReason.VEHICLE_NOT_BIDIRECTIONAL, seen))
            assert b'"reason":"vehicle_not_bidirectional"' in encode(centre.telemetry[-1])

            # One from before (no transaction named) is told charger_max: it could not read the message.
            command_id = await command(centre, -5.0, None)
            await until(lambda: centre.ack(command_id) is not None)
            seen = len(centre.telemetry)
            await until(lambda: reported(centre, LimitReason.CHARGER_MAX, seen))
            assert b"vehicle_not_bidirectional" not in encode(centre.telemetry[-1])
            assert sim.power_w >= 0

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_only_a_centre_that_binds_sessions_is_told_the_new_reason() -> None:
    new = LimitReason.VEHICLE_NOT_BIDIRECTIONAL
    assert new.for_reader(binds_sessions=True) is new
    assert new.for_reader(binds_sessions=False) is LimitReason.CHARGER_MAX
    assert all(r.for_reader(binds_sessions=False) is r for r in LimitReason if r is not new)
