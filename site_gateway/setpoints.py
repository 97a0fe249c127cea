"""The centre's setpoints at the gateway, each bound to the session (OCPP transaction) it was given for.

Rules:

- a setpoint belongs to the transaction it names (:attr:`wire.contract.EvseSetpoint.transaction_id`)
  or, when it names none, to the transaction running on its EVSE when the command arrives;
- a setpoint for an EVSE that runs no transaction, or that names a transaction the EVSE is not
  running, is refused and not kept: kept, it would wait for the next vehicle;
- it ends with its transaction: dropped when the transaction stops, and never applied to another
  transaction on that EVSE. A new vehicle starts with no setpoint (the arrival reserve in normal mode,
  the fallback rules otherwise) until the centre sends one for its session;
- a newer command replaces an EVSE's setpoint; EVSEs a command does not name keep theirs.

Whether the latest command named a transaction (:attr:`SetpointBook.centre_binds_sessions`) is also how
the gateway knows its centre reads the limit reasons added with that field
(:meth:`wire.contract.LimitReason.for_reader`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from site_gateway.safety import Setpoint
from wire.contract import EvseSetpoint, SetpointCommand, evse_key


@dataclass(frozen=True, slots=True)
class HeldSetpoint:
    """A setpoint of the centre's, the transaction it belongs to, and when it holds."""

    setpoint: EvseSetpoint
    transaction_id: str
    valid_from: dt.datetime
    valid_until: dt.datetime


RunningTransaction = Callable[[str], str | None]
"""EVSE key -> the transaction it runs now, or ``None``."""


class SetpointBook:
    """The setpoints in force, at most one per EVSE, each bound to its transaction (module docstring)."""

    def __init__(self) -> None:
        self._held: dict[str, HeldSetpoint] = {}
        self._refused: dict[str, dict[str, str]] = {}
        """Command id -> EVSE key -> why, until :meth:`refused` hands it to the acknowledgement (one
        entry per command not yet acknowledged)."""
        self.centre_binds_sessions = False
        """The latest command named a transaction in a setpoint: the centre binds setpoints to
        sessions, and reads what was added to the contract with that (a centre rolled back to one that
        does not is known by its next command)."""

    def accept(self, command: SetpointCommand, running: RunningTransaction) -> dict[str, str]:
        """Keep each of ``command``'s setpoints, bound to its transaction. Returns EVSE key -> why, for
        the setpoints refused (and not kept; :meth:`refused` gives them again, once); an EVSE refused
        drops the setpoint it held before only if that one's transaction has ended."""
        refused: dict[str, str] = {}
        self.centre_binds_sessions = any(s.transaction_id is not None for s in command.setpoints)
        for setpoint in command.setpoints:
            key = evse_key(setpoint.charger_id, setpoint.evse_id)
            transaction_id = running(key)
            if transaction_id is None:
                refused[key] = "no vehicle charging at this EVSE"
            elif setpoint.transaction_id not in (None, transaction_id):
                refused[key] = (
                    f"setpoint for transaction {setpoint.transaction_id!r}, but the EVSE runs"
                    f" transaction {transaction_id!r}"
                )
            else:
                self._held[key] = HeldSetpoint(
                    setpoint, transaction_id, command.issued_at, command.valid_until
                )
                continue
            held = self._held.get(key)
            if held is not None and held.transaction_id != transaction_id:
                del self._held[key]
        self._refused[command.command_id] = refused
        return refused

    def refused(self, command_id: str) -> dict[str, str]:
        """EVSE key -> why, for the setpoints of command ``command_id`` that were refused (once)."""
        return self._refused.pop(command_id, {})

    def end_session(self, key: str, transaction_id: str | None = None) -> HeldSetpoint | None:
        """Drop the setpoint of ``key`` when it belongs to ``transaction_id`` (``None``: whatever it
        belongs to); returns what was dropped."""
        held = self._held.get(key)
        if held is None or transaction_id not in (None, held.transaction_id):
            return None
        return self._held.pop(key)

    def current(self, now: dt.datetime, running: RunningTransaction) -> dict[str, Setpoint]:
        """EVSE key -> the power asked of it at ``now``, for the EVSEs still running the transaction
        their setpoint belongs to (a setpoint whose transaction has gone is dropped here too)."""
        current: dict[str, Setpoint] = {}
        for key, held in list(self._held.items()):
            if running(key) != held.transaction_id:
                del self._held[key]
                continue
            setpoint, valid_until = held.setpoint, held.valid_until
            if setpoint.power_kw is not None:
                current[key] = Setpoint(key, setpoint.power_kw, held.valid_from, valid_until)
                continue
            assert setpoint.schedule is not None  # the contract gives exactly one of the two
            started = [p for p in setpoint.schedule if p.start <= now]
            if started:
                period = started[-1]
                following = [p.start for p in setpoint.schedule if p.start > now]
                current[key] = Setpoint(key, period.power_kw, period.start, min([valid_until, *following]))
        return current

    def get(self, key: str) -> HeldSetpoint | None:
        return self._held.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)
