"""What each charger was last given, kept on disk: the site limit holds at the meter, not in the
gateway's belief.

A charger keeps the charging profiles it was sent across reboots and across the gateway's own
restarts (OCPP requires them to persist), so what it may draw is what it was *given*, not what the
gateway happens to remember. This module is that memory, in SQLite next to the outbox:

- per charger, its TxDefaultProfile (EVSE 0): the limit every transaction there starts with [kW].
  It does not expire;
- per EVSE, its TxProfile: the import and export limits [kW, ≥ 0], the transaction it belongs to and
  when it expires (the charger then falls back to its TxDefaultProfile).

Write-ahead: before a profile goes out the record becomes the *higher* of what the charger held and
what it is being sent (:meth:`InstalledLimits.sending_default`, :meth:`InstalledLimits.sending_tx`),
so a gateway killed mid-push never under-counts; the charger's answer settles it: accepted, the new
limit (confirmed); refused, the old one back; no answer, the higher stays, unconfirmed, until its
expiry.

What an EVSE may draw now (:meth:`InstalledLimits.bound`): a confirmed TxProfile still valid, its
limits; an unconfirmed one (no answer, or the charger booted since: its profiles are "state unknown"),
the higher of it and the default; none, the default. A TxProfile is forgotten when its transaction
ends (the charger drops it too): at the stop, at a new transaction on the EVSE, when the EVSE reports
itself available.

The calls are synchronous and short (one row each, ``synchronous=FULL``); they run on the event loop
thread, as the outbox's do.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

_SCHEMA = """
CREATE TABLE IF NOT EXISTS installed (
    charger_id     TEXT    NOT NULL,
    evse_id        INTEGER NOT NULL CHECK (evse_id >= 0),
    kind           TEXT    NOT NULL CHECK (kind IN ('TxDefaultProfile', 'TxProfile')),
    import_kw      REAL    NOT NULL CHECK (import_kw >= 0),
    export_kw      REAL    NOT NULL CHECK (export_kw >= 0),
    transaction_id TEXT,
    valid_until    TEXT,
    confirmed      INTEGER NOT NULL CHECK (confirmed IN (0, 1)),
    recorded_at    TEXT    NOT NULL,
    PRIMARY KEY (charger_id, evse_id, kind)
);
"""


class InstalledError(RuntimeError):
    """The file of installed limits cannot be opened or written; ``path`` says which file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"installed limits {self.path}: {problem}")


class ProfileKind(StrEnum):
    DEFAULT = "TxDefaultProfile"
    """Station-wide (EVSE 0), no expiry: what a transaction starts with."""
    TX = "TxProfile"
    """One EVSE's running transaction, until ``valid_until``."""


@dataclass(frozen=True)
class Installed:
    """What one charger was given for one EVSE (0: the station-wide default)."""

    charger_id: str
    evse_id: int
    kind: ProfileKind
    import_kw: float
    """The most it may draw under this profile [kW, ≥ 0]."""
    export_kw: float
    """The most it may give back under this profile [kW, ≥ 0]."""
    transaction_id: str | None
    valid_until: dt.datetime | None
    """When the charger drops it (TxProfile); ``None``: until replaced (TxDefaultProfile)."""
    confirmed: bool
    """The charger accepted exactly this, and has not booted since."""
    recorded_at: dt.datetime

    def is_valid(self, now: dt.datetime) -> bool:
        return self.valid_until is None or now < self.valid_until


def installed_path(outbox: Path) -> Path:
    """The file of installed limits beside an outbox: ``outbox.sqlite`` -> ``outbox.installed.sqlite``."""
    return outbox.with_name(f"{outbox.stem}.installed{outbox.suffix or '.sqlite'}")


class InstalledLimits:
    """What each charger was last given (module docstring): a SQLite file mirrored in memory."""

    def __init__(self, path: Path | str, *, clock: Callable[[], dt.datetime]) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._rows: dict[tuple[str, int, ProfileKind], Installed] = {}

    # ------------------------------------------------------------------------------------- life cycle

    def open(self) -> Self:
        if self._db is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            rows = db.execute(
                "SELECT charger_id, evse_id, kind, import_kw, export_kw, transaction_id, valid_until,"
                " confirmed, recorded_at FROM installed"
            ).fetchall()
        except (OSError, sqlite3.Error) as exc:
            raise InstalledError(self.path, str(exc)) from exc
        self._db = db
        self._rows = {}
        for cp, evse, kind, imp, exp, tx, until, confirmed, at in rows:
            record = Installed(
                cp,
                int(evse),
                ProfileKind(kind),
                float(imp),
                float(exp),
                tx,
                None if until is None else dt.datetime.fromisoformat(until),
                bool(confirmed),
                dt.datetime.fromisoformat(at),
            )
            self._rows[(record.charger_id, record.evse_id, record.kind)] = record
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- reading

    def chargers(self) -> set[str]:
        """Every charger with a record: it was given something, by this process or an earlier one."""
        return {cp for cp, _, _ in self._rows}

    def default_kw(self, charger_id: str) -> float | None:
        """The TxDefaultProfile limit ``charger_id`` may hold [kW]; ``None`` if never given one."""
        record = self._rows.get((charger_id, 0, ProfileKind.DEFAULT))
        return None if record is None else record.import_kw

    def tx(self, charger_id: str, evse_id: int) -> Installed | None:
        """The TxProfile ``charger_id`` may hold on ``evse_id`` (expired or not)."""
        return self._rows.get((charger_id, evse_id, ProfileKind.TX))

    def evse_ids(self, charger_id: str) -> set[int]:
        """The EVSEs of ``charger_id`` that have a TxProfile record."""
        return {e for cp, e, kind in self._rows if cp == charger_id and kind is ProfileKind.TX}

    def bound(
        self, charger_id: str, evse_id: int, now: dt.datetime, default_kw: float
    ) -> tuple[float, float]:
        """(import, export) [kW, ≥ 0]: the most the EVSE may draw and give back now if a vehicle is
        plugged in, with ``default_kw`` its charger's TxDefaultProfile limit (module docstring)."""
        tx = self.tx(charger_id, evse_id)
        if tx is None or not tx.is_valid(now):
            return default_kw, 0.0
        if tx.confirmed:
            return tx.import_kw, tx.export_kw
        return max(tx.import_kw, default_kw), tx.export_kw

    # ---------------------------------------------------------------------------------------- writing

    def sending_default(self, charger_id: str, limit_kw: float, *, otherwise_kw: float) -> None:
        """A TxDefaultProfile of ``limit_kw`` goes out: until it is answered the charger may hold it or
        the one before (``otherwise_kw`` when there is no record)."""
        before = self.default_kw(charger_id)
        held = max(limit_kw, before if before is not None else otherwise_kw)
        self._put(self._default(charger_id, held, confirmed=False))

    def default_installed(self, charger_id: str, limit_kw: float) -> None:
        """``charger_id`` holds a TxDefaultProfile of ``limit_kw`` (it accepted it, or this is the most
        it may hold)."""
        self._put(self._default(charger_id, limit_kw, confirmed=True))

    def sending_tx(
        self,
        charger_id: str,
        evse_id: int,
        transaction_id: str,
        power_kw: float,
        valid_until: dt.datetime,
    ) -> Installed | None:
        """A TxProfile of signed ``power_kw`` until ``valid_until`` goes out: the record becomes the
        higher of it and what may be held now. Returns the record before (for :meth:`tx_settled`)."""
        before = self.tx(charger_id, evse_id)
        imp, exp = max(power_kw, 0.0), max(-power_kw, 0.0)
        until = valid_until
        now = self._clock()
        if before is not None and before.is_valid(now) and before.transaction_id == transaction_id:
            imp, exp = max(imp, before.import_kw), max(exp, before.export_kw)
            until = max(until, before.valid_until) if before.valid_until is not None else until
        self._put(Installed(charger_id, evse_id, ProfileKind.TX, imp, exp, transaction_id, until, False, now))
        return before

    def tx_settled(
        self,
        charger_id: str,
        evse_id: int,
        transaction_id: str,
        *,
        power_kw: float | None,
        valid_until: dt.datetime,
        before: Installed | None,
    ) -> None:
        """The charger answered the TxProfile :meth:`sending_tx` recorded. ``power_kw``: the signed
        power it now holds (it accepted), or ``None`` when it kept ``before`` (it refused, or it was
        never sent). Leave the record alone when the answer is unknown."""
        if power_kw is None:
            if before is None:
                self._drop(charger_id, evse_id, ProfileKind.TX)
            else:
                self._put(before)
            return
        self._put(
            Installed(
                charger_id,
                evse_id,
                ProfileKind.TX,
                max(power_kw, 0.0),
                max(-power_kw, 0.0),
                transaction_id,
                valid_until,
                True,
                self._clock(),
            )
        )

    def state_unknown(self, charger_id: str) -> None:
        """``charger_id`` booted: whether it kept its TxProfiles is unknown, so none is relied on
        beyond the higher of it and the default until it is installed again."""
        for record in list(self._rows.values()):
            if record.charger_id == charger_id and record.kind is ProfileKind.TX and record.confirmed:
                self._put(replace(record, confirmed=False, recorded_at=self._clock()))

    def tx_ended(self, charger_id: str, evse_id: int, transaction_id: str | None = None) -> None:
        """The transaction on ``evse_id`` ended (``transaction_id`` given: only if the record is that
        transaction's, or a different one began): its TxProfile is gone with it."""
        record = self.tx(charger_id, evse_id)
        if record is None:
            return
        if transaction_id is None or record.transaction_id == transaction_id:
            self._drop(charger_id, evse_id, ProfileKind.TX)

    def tx_started(self, charger_id: str, evse_id: int, transaction_id: str) -> None:
        """A transaction runs on ``evse_id``: a TxProfile of another transaction no longer applies."""
        record = self.tx(charger_id, evse_id)
        if record is not None and record.transaction_id != transaction_id:
            self._drop(charger_id, evse_id, ProfileKind.TX)

    # -------------------------------------------------------------------------------------- internals

    def _default(self, charger_id: str, limit_kw: float, *, confirmed: bool) -> Installed:
        return Installed(
            charger_id, 0, ProfileKind.DEFAULT, max(limit_kw, 0.0), 0.0, None, None, confirmed, self._clock()
        )

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise InstalledError(self.path, "not open")
        return self._db

    def _put(self, record: Installed) -> None:
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO installed (charger_id, evse_id, kind, import_kw, export_kw,"
                " transaction_id, valid_until, confirmed, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.charger_id,
                    record.evse_id,
                    record.kind.value,
                    record.import_kw,
                    record.export_kw,
                    record.transaction_id,
                    None if record.valid_until is None else record.valid_until.isoformat(),
                    int(record.confirmed),
                    record.recorded_at.isoformat(),
                ),
            )
        except sqlite3.Error as exc:
            raise InstalledError(self.path, f"record {record.charger_id}/{record.evse_id}: {exc}") from exc
        self._rows[(record.charger_id, record.evse_id, record.kind)] = record

    def _drop(self, charger_id: str, evse_id: int, kind: ProfileKind) -> None:
        try:
            self._conn.execute(
                "DELETE FROM installed WHERE charger_id = ? AND evse_id = ? AND kind = ?",
                (charger_id, evse_id, kind.value),
            )
        except sqlite3.Error as exc:
            raise InstalledError(self.path, f"forget {charger_id}/{evse_id}: {exc}") from exc
        self._rows.pop((charger_id, evse_id, kind), None)
