"""The gateway↔centre wire contract: topics, round trips, and errors that name the bad field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wire.contract import (
    READS_SETPOINT_TRANSACTION_ID,
    AckStatus,
    CommandAck,
    ContractError,
    EvseLimit,
    EvseOutcome,
    EvseSetpoint,
    EvseTelemetry,
    GatewayState,
    GatewayStatus,
    LimitReason,
    ParsedTopic,
    SessionEvent,
    SessionEventKind,
    SetpointCommand,
    SetpointPeriod,
    Telemetry,
    TopicKind,
    build,
    command_id_of,
    decode,
    decode_message,
    encode,
    parse_topic,
    setpoint_topic,
    status_topic,
    subscription,
    telemetry_topic,
    topic_for,
)

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)


def telemetry(**overrides: object) -> Telemetry:
    fields: dict[str, object] = {
        "site_id": "depot-north",
        "seq": 7,
        "sent_at": T0,
        "evses": [
            EvseTelemetry(charger_id="CP-01", evse_id=1, power_kw=11.0, energy_kwh=3.2, soc_percent=41.5),
            EvseTelemetry(
                charger_id="CP-02",
                evse_id=1,
                power_kw=-7.4,
                limit=EvseLimit(power_kw=7.4, reason=LimitReason.SITE_LIMIT, discharge=True),
            ),
        ],
        "site_import_kw": 18.6,
        "base_load_kw": 15.0,
    }
    fields.update(overrides)
    return build(Telemetry, **fields)


def command(**overrides: object) -> SetpointCommand:
    fields: dict[str, object] = {
        "site_id": "depot-north",
        "command_id": "cmd-1",
        "issued_at": T0,
        "valid_until": T0 + timedelta(hours=1),
        "setpoints": [
            EvseSetpoint(charger_id="CP-01", evse_id=1, power_kw=7.4),
            EvseSetpoint(
                charger_id="CP-02",
                evse_id=1,
                schedule=(
                    SetpointPeriod(start=T0, power_kw=11.0),
                    SetpointPeriod(start=T0 + timedelta(minutes=15), power_kw=-5.0),
                ),
            ),
        ],
    }
    fields.update(overrides)
    return build(SetpointCommand, **fields)


def payload(message: object) -> dict[str, object]:
    assert isinstance(message, Telemetry | SetpointCommand | SessionEvent | GatewayStatus | CommandAck)
    data: dict[str, object] = json.loads(encode(message))
    return data


def broken(message: object, path: str, value: object) -> bytes:
    """The message's JSON with the field at dotted ``path`` replaced (or, for value=KeyError, removed)."""
    data = payload(message)
    *parents, last = path.split(".")
    node: object = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
    if value is KeyError:
        del node[last]  # type: ignore[attr-defined]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value  # type: ignore[index]
    return json.dumps(data).encode()


# ----------------------------------------------------------------------------------------------- topics


def test_topics_are_under_the_versioned_site_root() -> None:
    assert telemetry_topic("depot-north") == "fleetgrid/v1/site/depot-north/telemetry"
    assert status_topic("depot-north") == "fleetgrid/v1/site/depot-north/status"
    assert setpoint_topic("depot-north") == "fleetgrid/v1/site/depot-north/setpoint"
    assert subscription(TopicKind.TELEMETRY) == "fleetgrid/v1/site/+/telemetry"
    assert subscription() == "fleetgrid/v1/site/#"
    assert topic_for(telemetry()) == "fleetgrid/v1/site/depot-north/telemetry"


def test_parse_topic_round_trips_every_kind() -> None:
    for kind in TopicKind:
        name = f"fleetgrid/v1/site/depot-7/{kind.value}"
        assert parse_topic(name) == ParsedTopic("depot-7", kind)


@pytest.mark.parametrize(
    "name",
    [
        "fleetgrid/v2/site/a/telemetry",
        "fleetgrid/v1/site/a/telemetry/extra",
        "fleetgrid/v1/site/a/bogus",
        "fleetgrid/v1/site/a+b/telemetry",
        "fleetgrid/v1/site//telemetry",
    ],
)
def test_parse_topic_refuses_foreign_topics(name: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_topic(name)
    assert err.value.field in ("topic", "site_id")


def test_a_site_id_that_would_break_the_topic_tree_is_refused() -> None:
    with pytest.raises(ContractError, match="site_id"):
        telemetry_topic("north/#")


# ------------------------------------------------------------------------------------------ round trips


def test_every_payload_round_trips_through_json() -> None:
    messages = [
        telemetry(),
        SessionEvent(
            site_id="depot-north",
            seq=8,
            sent_at=T0,
            kind=SessionEventKind.EV_CHARGING_NEEDS,
            charger_id="CP-01",
            evse_id=1,
            transaction_id="tx-9",
            id_token="04A1B2C3",
            departure_time=T0 + timedelta(hours=9),
            energy_request_kwh=42.0,
        ),
        GatewayStatus(
            site_id="depot-north", seq=9, sent_at=T0, state=GatewayState.FALLBACK, reason="stale", since=T0
        ),
        command(),
        CommandAck(
            site_id="depot-north",
            seq=10,
            sent_at=T0,
            command_id="cmd-1",
            status=AckStatus.REJECTED,
            evses=(EvseOutcome(charger_id="CP-01", evse_id=1, status=AckStatus.REJECTED, detail="Rejected"),),
            error="CP-01 refused the profile",
        ),
        CommandAck(
            site_id="depot-north", seq=11, sent_at=T0, command_id=None, status=AckStatus.ERROR, error="?"
        ),
    ]
    for message in messages:
        assert decode(type(message), encode(message)) == message
        _, again = decode_message(topic_for(message), encode(message))
        assert again == message


def test_timestamps_are_normalised_to_utc_and_written_with_z() -> None:
    cet = timezone(timedelta(hours=1))
    message = telemetry(sent_at=datetime(2025, 3, 1, 7, 0, tzinfo=cet))
    assert message.sent_at == T0 and message.sent_at.tzinfo is UTC
    assert payload(message)["sent_at"] == "2025-03-01T06:00:00Z"


# ---------------------------------------------------------------------------------- malformed payloads


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("evses.0.power_kw", "11", "evses.0.power_kw"),  # numbers are not strings
        ("evses.1.evse_id", 1.5, "evses.1.evse_id"),
        ("evses.0.soc_percent", 140, "evses.0.soc_percent"),
        ("seq", 0, "seq"),
        ("seq", KeyError, "seq"),
        ("sent_at", "2025-03-01T06:00:00", "sent_at"),  # naive
        ("sent_at", 1740808800, "sent_at"),  # epoch seconds
        ("site_import_kw", None, "site_import_kw"),
        ("schema_version", 2, "schema_version"),
        ("surprise", 1, "surprise"),  # extra field
        ("evses.0.colour", "red", "evses.0.colour"),
        ("evses.1.limit.power_kw", -1.0, "evses.1.limit.power_kw"),
        ("evses.1.limit.reason", "whim", "evses.1.limit.reason"),
        ("evses.1.limit.discharge", "yes", "evses.1.limit.discharge"),
    ],
)
def test_malformed_telemetry_names_the_field(path: str, value: object, field: str) -> None:
    with pytest.raises(ContractError) as err:
        decode(Telemetry, broken(telemetry(), path, value))
    assert err.value.field == field
    assert err.value.model == "Telemetry"
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        (
            "setpoints.0.schedule",
            [{"start": "2025-03-01T06:00:00Z", "power_kw": 1.0}],
            "setpoints.0",
            "one of",
        ),
        ("setpoints.1.schedule.1.start", "2025-03-01T05:00:00Z", "setpoints.1", "not after"),
        ("setpoints.1.charger_id", "CP-01", "setpoints.1.charger_id", ""),  # differs: fine
        ("valid_until", "2025-03-01T05:00:00Z", "", "valid_until must be after issued_at"),
        ("setpoints", [], "setpoints", "at least 1"),
        ("command_id", "", "command_id", ""),
        ("site_id", "a/b", "site_id", "pattern"),
    ],
)
def test_malformed_command_names_the_field(path: str, value: object, field: str, words: str) -> None:
    data = broken(command(), path, value)
    if path == "setpoints.1.charger_id":  # CP-01 twice with evse 1
        with pytest.raises(ContractError, match=r"setpoints\[1\] repeats charger 'CP-01' evse 1"):
            decode(SetpointCommand, data)
        return
    with pytest.raises(ContractError) as err:
        decode(SetpointCommand, data)
    assert err.value.field == field
    assert words in err.value.problem


def test_not_json_at_all_is_a_contract_error() -> None:
    with pytest.raises(ContractError) as err:
        decode(SetpointCommand, b"\xff{not json")
    assert err.value.field == ""
    assert command_id_of(b"\xff{not json") is None
    assert command_id_of(b'{"command_id": "cmd-7", "setpoints": 3}') == "cmd-7"


def test_session_start_needs_a_transaction_id() -> None:
    with pytest.raises(ContractError, match="transaction_id is required"):
        build(
            SessionEvent,
            site_id="s",
            seq=1,
            sent_at=T0,
            kind=SessionEventKind.STARTED,
            charger_id="CP-01",
            evse_id=1,
        )


def test_a_refusal_must_say_why() -> None:
    with pytest.raises(ContractError, match="error must say why"):
        build(CommandAck, site_id="s", seq=1, sent_at=T0, command_id="c", status=AckStatus.ERROR)


def test_payload_from_another_sites_topic_is_refused() -> None:
    with pytest.raises(ContractError, match="came on 'depot-south'") as err:
        decode_message("fleetgrid/v1/site/depot-south/telemetry", encode(telemetry()))
    assert err.value.field == "site_id"


def test_a_limit_came_within_schema_version_1_and_is_left_out_when_unset() -> None:
    """A reader from before ``limit`` (every field known, no other) still reads an uncapped reading;
    and a payload without the key is a reading with no cap."""
    data = json.loads(encode(telemetry()))
    assert "limit" not in data["evses"][0] and data["evses"][1]["limit"]["reason"] == "site_limit"
    message = decode(Telemetry, json.dumps(data))
    assert [e.limit for e in message.evses] == [None, telemetry().evses[1].limit]


def status(**overrides: object) -> GatewayStatus:
    fields: dict[str, object] = {"site_id": "depot-north", "seq": 9, "sent_at": T0, "state": "online"}
    fields.update(overrides)
    return build(GatewayStatus, **fields)


def test_what_a_gateway_reads_came_within_schema_version_1_and_is_left_out_when_empty() -> None:
    """A status naming nothing is the status of before ``reads``, key for key; one naming the
    transaction id round-trips, and a payload without the key reads nothing."""
    before = {"schema_version", "site_id", "seq", "sent_at", "state", "reason", "since"}
    assert set(payload(status())) == before
    named = status(reads=[READS_SETPOINT_TRANSACTION_ID])
    assert payload(named)["reads"] == ["setpoint.transaction_id"]
    assert decode(GatewayStatus, encode(named)) == named
    assert decode(GatewayStatus, encode(status())).reads == ()


def test_a_gateway_may_name_fields_this_reader_does_not_know_but_not_malformed_ones() -> None:
    newer = status(reads=["setpoint.transaction_id", "setpoint.priority"])
    assert decode(GatewayStatus, encode(newer)).reads == ("setpoint.transaction_id", "setpoint.priority")
    for bad in ("transaction_id", "Setpoint.TransactionId", "setpoint.", "x" * 70 + ".y"):
        with pytest.raises(ContractError) as err:
            decode(GatewayStatus, broken(newer, "reads.1", bad))
        assert err.value.field == "reads.1", bad
