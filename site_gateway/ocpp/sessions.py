"""Charging sessions (OCPP transactions) the gateway knows about, keyed by charge point id + transaction id.

The register belongs to the OCPP server, not to a connection: a charger that drops and reconnects
mid-session finds its transaction where it left it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import datetime

from site_gateway.ocpp.capabilities import NO_DISCHARGE, DischargeCapability

ID_EPOCH = 1_704_067_200
"""2024-01-01T00:00:00Z: 1.6 transaction ids count seconds from here when a gateway starts."""


@dataclass(slots=True)
class Session:
    charge_point_id: str
    evse_id: int
    transaction_id: str  # 1.6 integer ids are kept as their decimal text
    started_at: datetime
    id_token: str | None = None
    driver_id: str | None = None
    vehicle_id: str | None = None
    meter_start_wh: float | None = None
    energy_wh: float | None = None  # latest register reading
    power_w: float | None = None  # latest power, negative while discharging
    soc_pct: float | None = None
    departure_time: datetime | None = None
    energy_request_wh: float | None = None
    discharge: DischargeCapability = NO_DISCHARGE
    """What the session may discharge: the charger's declaration until the vehicle reports its needs
    (:mod:`site_gateway.ocpp.capabilities`)."""


class SessionRegister:
    """Running sessions by (charge point id, transaction id)."""

    def __init__(self, first_transaction_id: int | None = None) -> None:
        """1.6 transaction ids start at the seconds since :data:`ID_EPOCH` by default, so a restarted
        gateway never hands out an id a charger may still hold from before (ids stay below 2**31 until
        2092, and a depot starts far fewer than one transaction per second)."""
        self._sessions: dict[tuple[str, str], Session] = {}
        start = first_transaction_id if first_transaction_id is not None else int(time.time()) - ID_EPOCH
        self._ids = itertools.count(start)

    def next_transaction_id(self) -> int:
        """A fresh OCPP 1.6 transaction id (the central system assigns them on 1.6)."""
        return next(self._ids)

    def get(self, charge_point_id: str, transaction_id: str) -> Session | None:
        return self._sessions.get((charge_point_id, transaction_id))

    def add(self, session: Session) -> Session:
        self._sessions[(session.charge_point_id, session.transaction_id)] = session
        return session

    def remove(self, charge_point_id: str, transaction_id: str) -> Session | None:
        return self._sessions.pop((charge_point_id, transaction_id), None)

    def active(self, charge_point_id: str, evse_id: int) -> Session | None:
        """The most recently started session on an EVSE."""
        candidates = [
            s
            for s in self._sessions.values()
            if s.charge_point_id == charge_point_id and s.evse_id == evse_id
        ]
        return max(candidates, key=lambda s: s.started_at, default=None)

    def of_charge_point(self, charge_point_id: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.charge_point_id == charge_point_id]

    def __len__(self) -> int:
        return len(self._sessions)
