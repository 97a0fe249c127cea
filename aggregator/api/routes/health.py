"""Health for load balancers and orchestrators: ``GET /healthz`` and ``GET /readyz``. Public, no login.

- ``/healthz``: the process answers (always ``200 {"status": "ok"}`` while it serves at all).
- ``/readyz``: it can do its job. Each check of the app's :class:`Readiness` runs at once, with a
  time-out of :data:`CHECK_TIMEOUT_S`: ``200`` when all pass, ``503`` when one fails. An API on its
  own checks that the database answers; the service (:mod:`aggregator.runtime.service`) adds that its
  MQTT clients are connected to the broker and that the control loop ran recently.

The answer says only ``ok`` or ``fail`` per check: why a check fails is for the operator, in the log
(one line per change of a check's state) and in ``GET /admin/status``, not for whoever can reach the
port. The service serves the same two routes on its metrics listener (:mod:`aggregator.runtime.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
"""Longest wait [s] for one readiness check; one that takes longer fails."""

Check = Callable[[], Awaitable[str | None]]
"""One readiness check: ``None`` when it passes, else why not (logged, never served)."""

CheckState = Literal["ok", "fail"]


class HealthStatus(BaseModel):
    """``ok`` when every check passed; each check by name (none for ``/healthz``)."""

    status: CheckState
    checks: dict[str, CheckState]


class Readiness:
    """Named readiness checks, run together; logs each check's changes of state once."""

    def __init__(self, checks: Mapping[str, Check], *, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"readiness: timeout_s must be positive, got {timeout_s}")
        self.checks = dict(checks)
        self.timeout_s = timeout_s
        self._passed: dict[str, bool] = {}
        """Each check's last outcome, to log its changes."""

    async def run(self) -> dict[str, str | None]:
        """Each check's outcome by name: ``None`` (passed) or why it failed."""
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._one(name) for name in names))
        results = dict(zip(names, outcomes, strict=True))
        for name, why in results.items():
            passed, before = why is None, self._passed.get(name)
            if passed is not before:
                extra = {"check": name, "state": "ok" if passed else "fail"}
                if not passed:
                    log.warning("readiness: %s failing: %s", name, why, extra=extra)
                elif before is not None:
                    log.info("readiness: %s ok again", name, extra=extra)
            self._passed[name] = passed
        return results

    async def status(self) -> HealthStatus:
        results = await self.run()
        checks: dict[str, CheckState] = {
            name: "ok" if why is None else "fail" for name, why in results.items()
        }
        return HealthStatus(status="ok" if all(v == "ok" for v in checks.values()) else "fail", checks=checks)

    async def _one(self, name: str) -> str | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.checks[name]()
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except Exception as error:  # a check that breaks is a failing check, never a 500
            return f"{type(error).__name__}: {error}"


def database_check(sessions: sessionmaker[Session]) -> Check:
    """A check that the database answers ``SELECT 1`` (in a worker thread)."""

    def select_one() -> None:
        with sessions() as session:
            session.execute(text("SELECT 1"))

    async def check() -> str | None:
        await asyncio.to_thread(select_one)
        return None

    return check


def readiness_of(state: object) -> Readiness:
    """The app's :class:`Readiness` (``app.state.readiness``), made on first use from its sessions
    (the database check alone) when the app was built without one."""
    readiness = getattr(state, "readiness", None)
    if readiness is None:
        readiness = Readiness({"database": database_check(state.sessions)})  # type: ignore[attr-defined]
        state.readiness = readiness  # type: ignore[attr-defined]
    assert isinstance(readiness, Readiness)
    return readiness


def health_response(status: HealthStatus) -> JSONResponse:
    """``status`` as JSON: 200 when ok, 503 when a check fails."""
    return JSONResponse(status.model_dump(), status_code=200 if status.status == "ok" else 503)


router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> HealthStatus:
    """The process answers."""
    return HealthStatus(status="ok", checks={})


@router.get("/readyz", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def readyz(request: Request) -> JSONResponse:
    """Whether the service can do its job: ``ok`` or ``fail`` per check, 503 when one fails."""
    return health_response(await readiness_of(request.app.state).status())
