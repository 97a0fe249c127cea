"""The SQLite outbox: order, seq that survives restarts, nothing lost without an acknowledgement."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from site_gateway.outbox import Outbox, OutboxError

TOPIC = "fleetgrid/v1/site/s1/telemetry"


def test_messages_come_out_in_order_with_increasing_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        sent = [outbox.enqueue(TOPIC, lambda seq: f"m{seq}".encode()) for _ in range(5)]
        status = outbox.enqueue("fleetgrid/v1/site/s1/status", b"on", qos=1, retain=True)
        assert [m.seq for m in sent] == [1, 2, 3, 4, 5]
        assert [m.payload for m in sent] == [b"m1", b"m2", b"m3", b"m4", b"m5"]
        assert outbox.pending() == [*sent, status]
        assert outbox.pending()[-1].retain is True
        outbox.remove(sent[0].id)
        assert outbox.peek() == sent[1]
        assert len(outbox) == 5


def test_seq_continues_across_reopen_even_when_the_queue_emptied(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        for _ in range(3):
            outbox.remove(outbox.enqueue(TOPIC, b"x").id)
        assert outbox.reserve_seq() == 4
        assert len(outbox) == 0
    with Outbox(path) as outbox:
        assert outbox.last_seq == 4
        assert outbox.enqueue(TOPIC, b"y").seq == 5


def test_a_failing_payload_builder_queues_nothing_and_burns_no_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.sqlite") as outbox:

        def explode(seq: int) -> bytes:
            raise ValueError(f"bad message {seq}")

        with pytest.raises(ValueError, match="bad message 1"):
            outbox.enqueue(TOPIC, explode)
        assert len(outbox) == 0
        assert outbox.enqueue(TOPIC, b"ok").seq == 1


CRASHER = """
import os, sys
from site_gateway.outbox import Outbox
outbox = Outbox(sys.argv[1]).open()
for i in range(20):
    outbox.enqueue(sys.argv[2], lambda seq: f"msg-{seq}".encode())
head = outbox.peek()
outbox.remove(head.id)               # the broker acknowledged the first one only
os._exit(0)                          # no close, no cleanup: as if the process died
"""


def test_unacknowledged_messages_survive_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    subprocess.run([sys.executable, "-c", CRASHER, str(path), TOPIC], check=True, timeout=30)
    with Outbox(path) as outbox:
        pending = outbox.pending()
        assert [m.seq for m in pending] == list(range(2, 21))
        assert [m.payload for m in pending] == [f"msg-{i}".encode() for i in range(2, 21)]
        assert {m.topic for m in pending} == {TOPIC}
        assert outbox.enqueue(TOPIC, b"after").seq == 21


def test_close_without_ack_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path).open()
    sent = [outbox.enqueue(TOPIC, bytes([i])) for i in range(10)]
    outbox.close()
    with Outbox(path) as again:
        assert again.pending() == sent


def test_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        outbox.enqueue(TOPIC, b"x")
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        other.close()


def test_an_unusable_path_is_an_outbox_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OutboxError, match="file"):
        Outbox(tmp_path / "file" / "outbox.sqlite").open()
    with pytest.raises(OutboxError, match="not open"):
        Outbox(tmp_path / "o.sqlite").enqueue(TOPIC, b"x")
