"""Store-and-forward: the gateway's outbound MQTT messages, kept in SQLite until the broker has them.

Every message the gateway sends is first written here, in one transaction with the per-site ``seq``
it carries; the uplink publishes the oldest, waits for the broker's PUBACK and only then deletes it.
A crash, a power cut or a week without the centre loses nothing that was enqueued: on restart the
queue is read back in order and ``seq`` carries on from where it stopped (it is never reused, even
after the queue empties).

One file per gateway, in WAL mode. ``synchronous=FULL`` by default: each enqueue and each delete is
on disk when the call returns (a few fsyncs a second at telemetry rates); pass ``"NORMAL"`` to trade
the last transactions before a power cut for fewer fsyncs. The calls are synchronous and short; they
run on the event loop thread.

The outbox does not bound its size; at 10 messages/s it grows by about 100 MB a day of outage.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    seq         INTEGER NOT NULL UNIQUE,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain      INTEGER NOT NULL CHECK (retain IN (0, 1)),
    enqueued_at TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (name, value) VALUES ('seq', 0);
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or written; ``path`` says which file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"outbox {self.path}: {problem}")


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    """Row id: the queue order."""
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    enqueued_at: datetime


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Outbox:
    """A persistent FIFO of MQTT messages with a persistent per-site sequence counter.

    >>> with Outbox(path) as outbox:                                    # doctest: +SKIP
    ...     msg = outbox.enqueue("fleetgrid/v1/site/s1/telemetry", lambda seq: make_payload(seq))
    ...     head = outbox.peek()                  # publish it, wait for the PUBACK, then:
    ...     outbox.remove(head.id)
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._clock = clock
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------------------------- life cycle

    def open(self) -> Self:
        if self._db is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; explicit BEGIN below
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(self.path, str(exc)) from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(self.path, f"cannot switch to WAL (journal_mode is {mode})")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise OutboxError(self.path, str(exc)) from exc
        except OutboxError:
            db.close()
            raise
        self._db = db
        return self

    def close(self) -> None:
        """Close the file. Unacknowledged messages stay queued for the next :meth:`open`."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(self.path, "not open")
        return self._db

    # ---------------------------------------------------------------------------------------- writing

    def enqueue(
        self,
        topic: str,
        payload: bytes | Callable[[int], bytes],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> OutboxMessage:
        """Assign the next ``seq`` and queue the message, in one transaction.

        ``payload`` is either the bytes to send or a function of the assigned ``seq`` that returns
        them (so the sequence number can be written into the payload itself). If that function
        raises, nothing is queued and the number is not used.
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        db = self._conn
        enqueued_at = self._clock()
        try:
            with _transaction(db):
                seq = self._bump_seq(db)
                body = payload(seq) if callable(payload) else payload
                row = db.execute(
                    "INSERT INTO outbox (seq, topic, payload, qos, retain, enqueued_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (seq, topic, bytes(body), qos, int(retain), enqueued_at.isoformat()),
                ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(self.path, f"enqueue on {topic}: {exc}") from exc
        return OutboxMessage(row[0], seq, topic, bytes(body), qos, retain, enqueued_at)

    def reserve_seq(self) -> int:
        """Take the next ``seq`` for a message that bypasses the queue (the last will, the online
        status sent on connect). It is never handed out again."""
        db = self._conn
        try:
            with _transaction(db):
                return self._bump_seq(db)
        except sqlite3.Error as exc:
            raise OutboxError(self.path, f"reserve seq: {exc}") from exc

    def remove(self, message_id: int) -> None:
        """Delete a message the broker has acknowledged."""
        try:
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
        except sqlite3.Error as exc:
            raise OutboxError(self.path, f"remove {message_id}: {exc}") from exc

    def discard(self, topic: str) -> int:
        """Delete every queued message on ``topic`` (a retained state superseded by a newer one).

        Returns how many were deleted."""
        try:
            return self._conn.execute("DELETE FROM outbox WHERE topic = ?", (topic,)).rowcount
        except sqlite3.Error as exc:
            raise OutboxError(self.path, f"discard {topic}: {exc}") from exc

    # ---------------------------------------------------------------------------------------- reading

    def peek(self) -> OutboxMessage | None:
        """The oldest queued message, or ``None`` when the queue is empty."""
        messages = self.pending(limit=1)
        return messages[0] if messages else None

    def pending(self, limit: int | None = None) -> list[OutboxMessage]:
        """Queued messages, oldest first."""
        sql = "SELECT id, seq, topic, payload, qos, retain, enqueued_at FROM outbox ORDER BY id"
        rows = self._conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [
            OutboxMessage(i, seq, t, bytes(p), q, bool(r), datetime.fromisoformat(at))
            for i, seq, t, p, q, r, at in rows
        ]

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def oldest_enqueued_at(self) -> datetime | None:
        """When the oldest queued message was enqueued (on the outbox's clock); ``None`` when empty."""
        row = self._conn.execute("SELECT enqueued_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    def problem(self) -> str | None:
        """Why a message could not be enqueued now (not open, the file or its write lock out of
        reach), or ``None`` when it could. Takes the write lock and gives it back; writes nothing."""
        if self._db is None:
            return "not open"
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return f"cannot write: {exc}"
        return None

    @property
    def last_seq(self) -> int:
        """The last ``seq`` handed out (0 for a new outbox)."""
        return int(self._conn.execute("SELECT value FROM counter WHERE name = 'seq'").fetchone()[0])

    # -------------------------------------------------------------------------------------- internals

    @staticmethod
    def _bump_seq(db: sqlite3.Connection) -> int:
        row = db.execute("UPDATE counter SET value = value + 1 WHERE name = 'seq' RETURNING value")
        return int(row.fetchone()[0])


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception (the connection is in
    autocommit mode, so the stdlib's implicit transactions stay out of the way)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
