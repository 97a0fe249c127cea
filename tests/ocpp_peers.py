"""Real peers for the OCPP server tests: the ocpp library's ChargePoint over websockets, and the server.

They boot, start and stop a transaction, record every SetChargingProfile they receive and answer
GetCompositeSchedule from the profiles they hold (TxProfile on the EVSE over the TxDefaultProfile). A peer
built with ``accept_profiles=False`` rejects every profile. Not a simulator: just enough to be a real peer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from site_gateway.config import ChargerSection, OcppSection
from site_gateway.ocpp.events import OcppEvent, TokenIdentity
from site_gateway.ocpp.server import OcppServer

NOW = "2025-01-01T00:00:00Z"


class _Peer:
    """Profile bookkeeping shared by the peers."""

    def __init__(self, cp_id: str, connection: Any, *, accept_profiles: bool = True) -> None:
        super().__init__(cp_id, connection, response_timeout=5)
        self.accept_profiles = accept_profiles
        self.profiles: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()  # (evse id, profile)
        self.installed: dict[tuple[int, str], dict[str, Any]] = {}

    def record(self, evse_id: int, profile: dict[str, Any]) -> bool:
        self.profiles.put_nowait((evse_id, profile))
        if self.accept_profiles:
            self.installed[(evse_id, profile["charging_profile_purpose"])] = profile
        return self.accept_profiles

    def effective(self, evse_id: int) -> dict[str, Any] | None:
        return self.installed.get((evse_id, "TxProfile")) or self.installed.get((0, "TxDefaultProfile"))

    async def next_profile(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
        return await asyncio.wait_for(self.profiles.get(), timeout)


class Peer16(_Peer, ChargePoint16):
    @on("SetChargingProfile")
    async def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **kwargs: Any
    ) -> Any:
        accepted = self.record(connector_id, cs_charging_profiles)
        return result16.SetChargingProfile(status="Accepted" if accepted else "Rejected")

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, connector_id: int, duration: int, **kwargs: Any) -> Any:
        profile = self.effective(connector_id)
        if profile is None:
            return result16.GetCompositeSchedule(status="Rejected")
        schedule = profile["charging_schedule"]
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=NOW,
            charging_schedule={
                "duration": duration,
                "charging_rate_unit": schedule["charging_rate_unit"],
                # The 1.6 request arrived with Decimal limits; the library cannot json.dumps them back.
                "charging_schedule_period": [
                    {**period, "limit": float(period["limit"])}
                    for period in schedule["charging_schedule_period"]
                ],
            },
        )

    async def boot(self) -> Any:
        return await self.call(call16.BootNotification(charge_point_model="M1", charge_point_vendor="Test"))

    async def heartbeat(self) -> Any:
        return await self.call(call16.Heartbeat())

    async def start_transaction(self, evse_id: int, id_token: str = "TAG-1") -> str:
        result = await self.call(
            call16.StartTransaction(connector_id=evse_id, id_tag=id_token, meter_start=1000, timestamp=NOW)
        )
        return str(result.transaction_id)

    async def stop_transaction(self, transaction_id: str) -> Any:
        return await self.call(
            call16.StopTransaction(meter_stop=6000, timestamp=NOW, transaction_id=int(transaction_id))
        )


class _Peer2x(_Peer):
    """2.0.1 and 2.1 peers: same messages, each from its own version's modules."""

    @on("SetChargingProfile")
    async def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **kwargs: Any
    ) -> Any:
        accepted = self.record(evse_id, charging_profile)
        if accepted:
            return self._call_result.SetChargingProfile(status="Accepted")
        return self._call_result.SetChargingProfile(
            status="Rejected", status_info={"reason_code": "InvalidSchedule", "additional_info": "test peer"}
        )

    @on("GetCompositeSchedule")
    async def on_get_composite_schedule(self, duration: int, evse_id: int, **kwargs: Any) -> Any:
        profile = self.effective(evse_id)
        if profile is None:
            return self._call_result.GetCompositeSchedule(status="Rejected")
        schedule = profile["charging_schedule"][0]
        return self._call_result.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": NOW,
                "charging_rate_unit": schedule["charging_rate_unit"],
                "charging_schedule_period": schedule["charging_schedule_period"],
            },
        )

    async def boot(self) -> Any:
        return await self.call(
            self._call.BootNotification(
                charging_station={"model": "M2", "vendor_name": "Test"}, reason="PowerUp"
            )
        )

    async def heartbeat(self) -> Any:
        return await self.call(self._call.Heartbeat())

    async def start_transaction(
        self, evse_id: int, id_token: str = "TAG-1", transaction_id: str = "TX-1"
    ) -> str:
        await self.call(
            self._call.TransactionEvent(
                event_type="Started",
                timestamp=NOW,
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": transaction_id},
                evse={"id": evse_id, "connector_id": 1},
                id_token={"id_token": id_token, "type": "ISO14443"},
                meter_value=[{"timestamp": NOW, "sampled_value": [{"value": 1000.0}]}],
            )
        )
        return transaction_id

    async def stop_transaction(self, transaction_id: str) -> Any:
        return await self.call(
            self._call.TransactionEvent(
                event_type="Ended",
                timestamp=NOW,
                trigger_reason="EVCommunicationLost",
                seq_no=1,
                transaction_info={"transaction_id": transaction_id, "stopped_reason": "EVDisconnected"},
                meter_value=[{"timestamp": NOW, "sampled_value": [{"value": 6000.0}]}],
            )
        )


class Peer201(_Peer2x, ChargePoint201):
    pass


class Peer21(_Peer2x, ChargePoint21):
    pass


PEERS: dict[str, type[Any]] = {"ocpp1.6": Peer16, "ocpp2.0.1": Peer201, "ocpp2.1": Peer21}


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def websocket(
    port: int,
    cp_id: str,
    subprotocols: list[str],
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[ClientConnection]:
    headers = basic_auth(cp_id, password) if password is not None else {}
    scheme = "ws" if tls is None else "wss"
    async with connect(
        f"{scheme}://127.0.0.1:{port}/ocpp/{cp_id}",
        ssl=tls,
        subprotocols=subprotocols,
        additional_headers=headers,
        open_timeout=5,
        close_timeout=1,
    ) as connection:
        yield connection


@contextlib.asynccontextmanager
async def peer(
    port: int,
    cp_id: str,
    version: str,
    *,
    password: str | None = None,
    accept_profiles: bool = True,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Any]:
    """A running peer of ``version`` connected as ``cp_id``; its receive loop stops on exit."""
    async with websocket(port, cp_id, [version], password, tls) as connection:
        assert connection.subprotocol == version
        charge_point = PEERS[version](cp_id, connection, accept_profiles=accept_profiles)
        task = asyncio.create_task(charge_point.start(), name=f"peer-{cp_id}")
        try:
            yield charge_point
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task


async def exchange(connection: ClientConnection, frame: str, timeout: float = 5.0) -> list[Any]:
    """Send one raw frame and return the decoded reply."""
    await connection.send(frame)
    reply = await asyncio.wait_for(connection.recv(), timeout)
    decoded: list[Any] = json.loads(reply)
    return decoded


# -- the server under test -------------------------------------------------------------------------------

CHARGERS = [
    ChargerSection(id="CP16-A", limit_unit="A", phases=3),
    ChargerSection(id="CP16-W"),
    ChargerSection(id="CP201", discharge_on_201=True, max_discharge_kw=11),
    ChargerSection(id="CP21", max_discharge_kw=11),
    ChargerSection(id="CP-AUTH"),
]
PASSWORD = "correct horse battery staple"


async def known_tokens(id_token: str) -> TokenIdentity | None:
    return TokenIdentity(driver_id="driver-7", vehicle_id="van-3") if id_token == "TAG-1" else None


@contextlib.asynccontextmanager
async def running(
    allow_unknown: bool = False, **kwargs: Any
) -> AsyncIterator[tuple[OcppServer, list[OcppEvent]]]:
    """An OcppServer on a free loopback port, with its sink collecting events into a list."""
    events: list[OcppEvent] = []

    async def sink(event: OcppEvent) -> None:
        events.append(event)

    options: dict[str, Any] = {
        "passwords": {"CP-AUTH": PASSWORD},
        "sink": sink,
        "token_lookup": known_tokens,
        "default_limit_kw": 3.7,
        "response_timeout_s": 3.0,
        "close_timeout_s": 1.0,
    } | kwargs
    ocpp = OcppSection(host="127.0.0.1", port=0, heartbeat_interval_s=60, allow_unknown=allow_unknown)
    async with OcppServer(ocpp, CHARGERS, **options) as server:
        yield server, events


def run(scenario: Coroutine[Any, Any, None], timeout_s: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout_s):
            await scenario

    asyncio.run(bounded())
