"""The OCPP server against real charge points (the ocpp library's ChargePoint) over loopback websockets."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp_peers import PASSWORD, exchange, peer, run, running, websocket
from websockets.exceptions import InvalidStatus

from site_gateway.ocpp.events import SessionStarted, StationBooted
from site_gateway.ocpp.profiles import OutcomeStatus
from site_gateway.ocpp.server import server_ssl_context


def until(minutes: float = 15) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


async def boot_and_start(cp: Any, evse_id: int = 1) -> tuple[dict[str, Any], str]:
    """Boot (returning the TxDefaultProfile the charger received) and start a transaction."""
    boot = await cp.boot()
    assert (boot.status, boot.interval) == ("Accepted", 60)
    evse, default = await cp.next_profile()
    assert evse == 0
    return default, await cp.start_transaction(evse_id)


# -- the three versions, end to end ----------------------------------------------------------------------


def test_v16_amps_profile_rounded_down() -> None:
    async def scenario() -> None:
        async with running() as (server, events), peer(server.port, "CP16-A", "ocpp1.6") as cp:
            default, tx = await boot_and_start(cp)
            assert default["charging_profile_purpose"] == "TxDefaultProfile"
            assert default["stack_level"] == 0
            schedule = default["charging_schedule"]
            assert schedule["charging_rate_unit"] == "A"
            assert float(schedule["charging_schedule_period"][0]["limit"]) == 5.3  # 3700 W / 690 V = 5.36 A

            outcome = await server.apply_setpoint("CP16-A", 1, 7.0, until())
            evse, profile = await cp.next_profile()
            assert evse == 1
            assert profile["charging_profile_purpose"] == "TxProfile"
            assert profile["stack_level"] == 1
            assert profile["transaction_id"] == int(tx)
            period = profile["charging_schedule"]["charging_schedule_period"][0]
            assert float(period["limit"]) == 10.1  # 7000 W / (230 V x 3) = 10.14 A, down to 0.1
            assert period["number_phases"] == 3
            assert outcome.status is OutcomeStatus.ACCEPTED, outcome
            assert outcome.charger_status == "Accepted"
            assert outcome.effective_kw == pytest.approx(10.1 * 690 / 1000)

            booted = [e for e in events if isinstance(e, StationBooted)]
            started = [e for e in events if isinstance(e, SessionStarted)]
            assert booted[0].ocpp_version == "ocpp1.6"
            assert (started[0].transaction_id, started[0].driver_id, started[0].vehicle_id) == (
                tx,
                "driver-7",
                "van-3",
            )

    run(scenario())


def test_v16_discharge_is_clamped_to_zero() -> None:
    async def scenario() -> None:
        async with running() as (server, _), peer(server.port, "CP16-W", "ocpp1.6") as cp:
            await boot_and_start(cp)
            outcome = await server.apply_setpoint("CP16-W", 1, -5.0, until())
            _, profile = await cp.next_profile()
            schedule = profile["charging_schedule"]
            assert schedule["charging_rate_unit"] == "W"
            assert float(schedule["charging_schedule_period"][0]["limit"]) == 0.0
            assert outcome.status is OutcomeStatus.ACCEPTED
            assert outcome.sent_kw == 0.0
            assert outcome.reason is not None and "1.6 cannot discharge" in outcome.reason

    run(scenario())


def test_v201_watts_and_negative_limit_when_configured() -> None:
    async def scenario() -> None:
        async with running() as (server, _), peer(server.port, "CP201", "ocpp2.0.1") as cp:
            default, tx = await boot_and_start(cp)
            assert (default["charging_profile_purpose"], default["stack_level"]) == ("TxDefaultProfile", 0)
            assert default["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 3700.0

            outcome = await server.apply_setpoint("CP201", 1, 11.0, until())
            _, profile = await cp.next_profile()
            assert (profile["charging_profile_purpose"], profile["stack_level"]) == ("TxProfile", 1)
            assert profile["transaction_id"] == tx
            schedule = profile["charging_schedule"][0]
            assert schedule["charging_rate_unit"] == "W"
            assert schedule["charging_schedule_period"][0]["limit"] == 11000.0
            assert outcome.status is OutcomeStatus.ACCEPTED and outcome.effective_kw == 11.0

            outcome = await server.apply_setpoint("CP201", 1, -4.2, until())
            _, profile = await cp.next_profile()
            assert profile["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == -4200.0
            assert outcome.status is OutcomeStatus.ACCEPTED and outcome.effective_kw == -4.2

    run(scenario())


def test_v21_discharge_as_central_setpoint() -> None:
    async def scenario() -> None:
        async with running() as (server, _), peer(server.port, "CP21", "ocpp2.1") as cp:
            default, tx = await boot_and_start(cp)
            assert (default["charging_profile_purpose"], default["stack_level"]) == ("TxDefaultProfile", 0)

            outcome = await server.apply_setpoint("CP21", 1, -5.0, until())
            _, profile = await cp.next_profile()
            assert (profile["charging_profile_purpose"], profile["transaction_id"]) == ("TxProfile", tx)
            period = profile["charging_schedule"][0]["charging_schedule_period"][0]
            assert period["operation_mode"] == "CentralSetpoint"
            assert period["setpoint"] == -5000.0
            assert period["discharge_limit"] == -5000.0
            assert "limit" not in period
            assert outcome.status is OutcomeStatus.ACCEPTED, outcome
            assert outcome.effective_kw == -5.0

            outcome = await server.apply_setpoint("CP21", 1, -20.0, until())  # beyond max_discharge_kw=11
            _, profile = await cp.next_profile()
            assert profile["charging_schedule"][0]["charging_schedule_period"][0]["setpoint"] == -11000.0
            assert outcome.is_ok and outcome.reason is not None and "max_discharge_kw" in outcome.reason

    run(scenario())


@pytest.mark.parametrize(
    ("version", "cp_id"), [("ocpp1.6", "CP16-A"), ("ocpp2.0.1", "CP201"), ("ocpp2.1", "CP21")]
)
def test_rejecting_charger(version: str, cp_id: str) -> None:
    async def scenario() -> None:
        async with (
            running() as (server, _),
            peer(server.port, cp_id, version, accept_profiles=False) as cp,
        ):
            await boot_and_start(cp)
            outcome = await server.apply_setpoint(cp_id, 1, 7.0, until())
            assert outcome.status is OutcomeStatus.REJECTED
            assert outcome.charger_status == "Rejected"
            if version != "ocpp1.6":
                assert outcome.reason == "InvalidSchedule test peer"

    run(scenario())


def test_setpoint_without_transaction_or_connection_fails_cleanly() -> None:
    async def scenario() -> None:
        async with running() as (server, _), peer(server.port, "CP201", "ocpp2.0.1") as cp:
            await cp.boot()
            no_tx = await server.apply_setpoint("CP201", 1, 7.0, until())
            offline = await server.apply_setpoint("CP21", 1, 7.0, until())
            expired = await server.apply_setpoint("CP201", 1, 7.0, until(-1))
        assert no_tx.status is OutcomeStatus.FAILED and "no transaction" in (no_tx.reason or "")
        assert offline.status is OutcomeStatus.FAILED and offline.reason == "charge point not connected"
        assert expired.status is OutcomeStatus.FAILED and "expired" in (expired.reason or "")

    run(scenario())


# -- handshake: subprotocols, auth, unknown charge points --------------------------------------------------


def test_basic_auth() -> None:
    async def scenario() -> None:
        async with running() as (server, _):
            with pytest.raises(InvalidStatus) as refused:
                async with websocket(server.port, "CP-AUTH", ["ocpp2.0.1"], password="wrong"):
                    pass
            assert refused.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as missing:
                async with websocket(server.port, "CP-AUTH", ["ocpp2.0.1"]):
                    pass
            assert missing.value.response.status_code == 401
            async with peer(server.port, "CP-AUTH", "ocpp2.0.1", password=PASSWORD) as cp:
                assert (await cp.boot()).status == "Accepted"

    run(scenario())


def test_tls_with_basic_auth(tmp_path: Path) -> None:
    """Security profile 2: basic auth inside TLS, with a throwaway self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        server_tls = server_ssl_context(str(cert), str(key))
        async with (
            running(ssl_context=server_tls) as (server, _),
            peer(server.port, "CP-AUTH", "ocpp2.1", password=PASSWORD, tls=client_tls) as cp,
        ):
            assert (await cp.boot()).status == "Accepted"
            assert server.connected == ["CP-AUTH"]

    run(scenario())


def test_unknown_charge_point_refused_unless_allowed() -> None:
    async def scenario() -> None:
        async with running() as (server, _):
            with pytest.raises(InvalidStatus) as refused:
                async with websocket(server.port, "CP-STRANGER", ["ocpp1.6"]):
                    pass
            assert refused.value.response.status_code == 404
        async with (
            running(allow_unknown=True) as (server, _),
            peer(server.port, "CP-STRANGER", "ocpp1.6") as cp,
        ):
            assert (await cp.boot()).status == "Accepted"

    run(scenario())


def test_subprotocol_negotiation() -> None:
    async def scenario() -> None:
        async with running() as (server, _):
            for offered in (["ocpp1.5"], []):
                with pytest.raises(InvalidStatus) as refused:
                    async with websocket(server.port, "CP16-W", offered):
                        pass
                assert refused.value.response.status_code == 400
            async with websocket(server.port, "CP16-W", ["ocpp1.5", "ocpp2.0.1", "ocpp1.6"]) as connection:
                assert connection.subprotocol == "ocpp2.0.1"

    run(scenario())


# -- robustness: unsupported actions, malformed frames, reconnects ------------------------------------------


@pytest.mark.parametrize(
    ("version", "format_code"),
    [("ocpp1.6", "FormationViolation"), ("ocpp2.0.1", "FormatViolation"), ("ocpp2.1", "FormatViolation")],
)
def test_bad_frames_get_call_errors_and_the_connection_stays_up(version: str, format_code: str) -> None:
    status = (
        '{"connectorId":"one","errorCode":"NoError","status":"Available"}'
        if version == "ocpp1.6"
        else '{"timestamp":"2025-01-01T00:00:00Z","connectorStatus":"Available","evseId":"1","connectorId":1}'
    )

    async def scenario() -> None:
        async with running() as (server, _), websocket(server.port, "CP16-W", [version]) as connection:
            reply = await exchange(connection, '[2,"u1","DataTransfer",{"vendorId":"acme"}]')
            assert reply[:3] == [4, "u1", "NotImplemented"]
            reply = await exchange(connection, '[2,"u2","FlyToTheMoon",{}]')
            assert reply[:3] == [4, "u2", "NotSupported"]
            reply = await exchange(connection, "this is not json")
            assert reply[:3] == [4, "-1", format_code]
            reply = await exchange(connection, f'[2,"u3","StatusNotification",{status}]')
            assert reply[:3] == [4, "u3", "TypeConstraintViolation"]
            reply = await exchange(connection, '[2,"u4","Heartbeat",{}]')
            assert reply[:2] == [3, "u4"] and "currentTime" in reply[2]

    run(scenario())


@pytest.mark.parametrize(("version", "cp_id"), [("ocpp1.6", "CP16-A"), ("ocpp2.0.1", "CP201")])
def test_reconnect_mid_transaction_keeps_the_session(version: str, cp_id: str) -> None:
    async def scenario() -> None:
        async with running() as (server, _):
            async with peer(server.port, cp_id, version) as first:
                _, tx = await boot_and_start(first)
                # The charger comes back on a new connection while the old one still looks open.
                async with peer(server.port, cp_id, version) as second:
                    await second.heartbeat()
                    await asyncio.wait_for(first._connection.wait_closed(), 3)  # the server closed it
                    assert first._connection.close_code == 1001
                    outcome = await server.apply_setpoint(cp_id, 1, 6.0, until())
                    evse, profile = await second.next_profile()
                    assert evse == 1
                    assert str(profile["transaction_id"]) == tx
                    assert outcome.status is OutcomeStatus.ACCEPTED, outcome
                    assert first.profiles.empty()
                    assert server.connected == [cp_id]
            # Gone entirely, then back: the transaction is still known.
            while server.connected:  # the server notices the close a moment later
                await asyncio.sleep(0.01)
            assert server.active_session(cp_id, 1) is not None
            async with peer(server.port, cp_id, version) as third:
                await third.heartbeat()
                outcome = await server.apply_setpoint(cp_id, 1, 5.0, until())
                _, profile = await third.next_profile()
                assert str(profile["transaction_id"]) == tx
                assert outcome.is_ok
                await third.stop_transaction(tx)
                assert server.active_session(cp_id, 1) is None

    run(scenario())
