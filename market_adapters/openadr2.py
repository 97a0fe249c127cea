"""OpenADR 2.0b VEN: registers with a grid operator's VTN (through openleadr) and speaks our seam.

Incoming events become :class:`~market_adapters.dispatch.GridSignal` objects handed to a
:class:`~market_adapters.dispatch.SignalSink`; each event is answered optIn or optOut from what the
:class:`~market_adapters.dispatch.FlexibilityOracle` says the portfolio can deliver; the VTN's report
requests are answered with a TELEMETRY_USAGE report (real power, kW) of what the oracle metered.

The work is split as the adapters' convention asks:

- fetch: openleadr's ``OpenADRClient`` does the HTTP and XML (registration, ``oadrPoll``, replies),
  driven by :class:`Ven` here, through :class:`~market_adapters.openadr2_client.VtnClient`, which makes
  a VTN that does not answer an exception instead of two ERROR lines per request;
- read, parse and decide: :mod:`market_adapters.openadr2_events` (:func:`read_event`,
  :func:`parse_event`, :func:`decide`), with the outside names mapped to ours in its tables and the
  sign rules of LOAD_DISPATCH written at its top. Its settings models are importable from here too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random as _random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from market_adapters.dispatch import FlexibilityOracle, GridSignal, SignalSink, SignalStatus
from market_adapters.errors import AdapterError, AdapterFormatError
from market_adapters.openadr2_events import (
    EVENT_STATUS_MAP,
    SCALE_TO_KW,
    SIGNAL_MAP,
    Openadr2Settings,
    OptType,
    ProgramMapping,
    RawEvent,
    decide,
    parse_event,
    read_event,
)

__all__ = [
    "EVENT_STATUS_MAP",
    "REPORT_MEASUREMENT",
    "REPORT_SCALE",
    "SCALE_TO_KW",
    "SIGNAL_MAP",
    "Openadr2Error",
    "Openadr2Settings",
    "OptType",
    "ProgramMapping",
    "RawEvent",
    "Ven",
    "VtnUnreachableError",
    "decide",
    "jittered_backoff",
    "parse_event",
    "read_event",
]

logger = logging.getLogger(__name__)

REPORT_MEASUREMENT = "power_real"  # openleadr's MEASUREMENTS.POWER_REAL: powerReal, W …
REPORT_SCALE = "k"  # … scaled to kW


class Openadr2Error(AdapterError):
    """The VEN could not do what it was asked to (registration refused, VTN unreachable)."""


class VtnUnreachableError(Openadr2Error):
    """No answer from the VTN (connection refused or lost, timeout), or an HTTP status other than 200."""


def jittered_backoff(attempt: int, random: Callable[[], float]) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...): between half and all of
    ``min(30, 0.5 * 2**attempt)``. The VEN's default; the service passes ``wire.reconnect.Backoff``'s,
    the same rule with its settings (this package may not import ``wire``)."""
    return min(30.0, 0.5 * 2.0 ** min(attempt, 16)) * (0.5 + 0.5 * random())


# --------------------------------------------------------------------------------------------------
# The VEN
# --------------------------------------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ven:
    """An OpenADR 2.0b VEN, alive inside ``async with``.

    Entry returns at once, whether or not the VTN answers, after starting two named tasks: one
    registers (``oadrQueryRegistration``, ``oadrCreatePartyRegistration``, offers its TELEMETRY_USAGE
    report, syncs events) and then polls the VTN; the other sends queued reports. :meth:`wait_registered`
    waits for the registration.

    A VTN that does not answer, or refuses to register us, is retried with jittered exponential backoff
    (``retry_delay(attempt)`` seconds, ``attempt`` counting from 0 since the VTN last answered, waited with
    ``sleep``), for ever, until exit: the service around the VEN runs on. Every exchange's outcome goes
    to ``on_link`` (``None``: it went through; else why not), and each change between answering and not
    is logged once (WARNING when it stops answering, INFO when it answers), with
    ``extra={"dependency": settings.source, "state": "down" | "up"}``; the retries in between log only
    at DEBUG. A report that cannot be sent is dropped (as openleadr does) and counted in
    :attr:`reports_dropped`.
    """

    def __init__(
        self,
        settings: Openadr2Settings,
        sink: SignalSink,
        oracle: FlexibilityOracle,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        retry_delay: Callable[[int], float] | None = None,
        on_link: Callable[[str | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._oracle = oracle
        self._clock = clock
        self._sleep = sleep
        self._retry_delay = retry_delay or functools.partial(jittered_backoff, random=random)
        self._on_link = on_link
        self._client: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = asyncio.Event()
        self._committed: dict[str, GridSignal] = {}  # event id → the version we opted in to
        self.answering: bool | None = None
        """Whether the VTN answered the last exchange (``None`` before the first)."""
        self.last_error: str | None = None
        """Why the last failed exchange failed."""
        self.failures = 0
        """Failed exchanges since the VTN last answered."""
        self._down_since: dt.datetime | None = None
        self.reports_dropped = 0
        """Reports that could not be sent (the VTN did not answer)."""

    @property
    def ven_id(self) -> str | None:
        return self._client.ven_id if self._client else None

    @property
    def registration_id(self) -> str | None:
        return self._client.registration_id if self._client else None

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    # -- life ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # openleadr (and its XML signing stack) is imported here, when a VEN starts, not with the
        # settings models: `fleetgrid admin --config central.toml` reads those and would wait ~0.5 s.
        from market_adapters.openadr2_client import VtnClient, objects

        s = self.settings
        secure = not s.insecure_test_mode
        if not secure:
            logger.warning("OpenADR 2.0b VEN %r in insecure test mode (unsigned, unchecked)", s.ven_name)
        client = VtnClient(
            ven_name=s.ven_name,
            vtn_url=s.vtn_url,
            ven_id=s.ven_id,
            cert=str(s.cert_path) if secure and s.cert_path else None,
            key=str(s.key_path) if secure and s.key_path else None,
            passphrase=s.key_passphrase if secure else None,
            ca_file=str(s.ca_path) if secure and s.ca_path else None,
            vtn_fingerprint=s.vtn_fingerprint if secure else None,
            disable_signature=not secure,
            show_fingerprint=False,
        )
        client.loop = asyncio.get_running_loop()
        client.add_handler("on_event", self._on_event)
        client.add_handler("on_update_event", self._on_event)
        client.add_report(
            callback=self._report_values,
            resource_id=s.report_resource_id,
            measurement=REPORT_MEASUREMENT,
            unit="W",
            scale=REPORT_SCALE,
            data_collection_mode="full",
            report_duration=s.report_max_sampling,
            sampling_rate=objects.SamplingRate(
                min_period=s.report_min_sampling, max_period=s.report_max_sampling, on_change=False
            ),
        )
        self._client = client
        try:
            group = asyncio.TaskGroup()
            await group.__aenter__()
            self._group = group
            client.scheduler.start()
            self._tasks = [
                group.create_task(self._session(), name=f"openadr2-session:{s.ven_name}"),
                group.create_task(self._report_loop(), name=f"openadr2-reports:{s.ven_name}"),
            ]
        except BaseException:
            await self._close_client()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                for task in self._tasks:
                    task.cancel()
                self._tasks = []
                await group.__aexit__(None, None, None)  # the block's own exception goes on unwrapped
        finally:
            await self._close_client()

    async def _close_client(self) -> None:
        client = self._client
        if client is None:
            return
        if client.scheduler.running:
            client.scheduler.shutdown(wait=False)
        if client.client_session is not None:
            await client.client_session.close()

    async def wait_registered(self, timeout: float) -> None:
        """Until the VTN has registered us; :class:`Openadr2Error` naming the last failure after
        ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._registered.wait()
        except TimeoutError as err:
            raise Openadr2Error(
                f"{self.settings.source}: VEN {self.settings.ven_name!r} not registered within {timeout} s"
                f" ({self.failures} failed attempts; last: {self.last_error})"
            ) from err

    async def _request(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.settings.request_timeout.total_seconds()):
                return await call
        except TimeoutError as err:
            raise VtnUnreachableError(
                f"{self.settings.source}: no answer to {what} within {self.settings.request_timeout}"
            ) from err

    async def _register(self) -> None:
        client = self._client
        answer = await self._request("oadrQueryRegistration", client.query_registration())
        payload = answer[1] if isinstance(answer, tuple) else {}
        request_id = (payload.get("response") or {}).get("request_id")
        await self._request(
            "oadrCreatePartyRegistration",
            client.create_party_registration(ven_id=client.ven_id, request_id=request_id),
        )
        if not client.registration_id:
            raise Openadr2Error(
                f"{self.settings.source}: VTN did not register VEN {self.settings.ven_name!r} "
                "(it answered without a registration; see the openleadr log)"
            )
        if self.settings.poll_interval is not None:
            client.poll_frequency = self.settings.poll_interval
        logger.info(
            "registered VEN %r as %s (registration %s), polling every %s",
            self.settings.ven_name,
            client.ven_id,
            client.registration_id,
            client.poll_frequency,
        )
        await self._request("oadrRegisterReport", client.register_reports(client.reports))
        await self._request("oadrRequestEvent", client.sync_events())

    async def _session(self) -> None:
        """Register, then poll every poll period; a failure waits the backoff delay and tries again."""
        client = self._client
        attempt = 0
        while True:
            try:
                if not self._registered.is_set():
                    await self._register()
                    self._registered.set()
                else:
                    await self._request("oadrPoll", client._poll())
                    await client._event_cleanup()  # forget cancelled and completed events
            except Openadr2Error as err:
                self._link(str(err))
            except Exception as err:  # openleadr or a handler failed: logged, never the end of the VEN
                self._link(f"{type(err).__name__}: {err}", unexpected=True)
            else:
                self._link(None)
                attempt = 0
                period = min(client.poll_frequency or dt.timedelta(seconds=10), dt.timedelta(hours=24))
                await self._sleep(period.total_seconds())
                continue
            delay = self._retry_delay(attempt)
            attempt += 1
            logger.debug("%s: retry %d in %.2f s (%s)", self.settings.source, attempt, delay, self.last_error)
            await self._sleep(delay)

    def _link(self, error: str | None, *, unexpected: bool = False) -> None:
        """Record one exchange's outcome, tell ``on_link``, and log a change of state once."""
        before = self.answering
        self.answering = error is None
        if error is not None:
            self.failures += 1
            self.last_error = error
        if self._on_link is not None:
            self._on_link(error)
        source = self.settings.source
        if error is not None and before is not False:
            self._down_since = self._clock()
            logger.warning(
                "%s: VTN not answering or refusing VEN %r (%s); retrying with backoff",
                source,
                self.settings.ven_name,
                error,
                exc_info=unexpected,
                extra={"dependency": source, "state": "down"},
            )
        elif error is None and before is not True:
            extra = {"dependency": source, "state": "up"}
            if self._down_since is None:
                logger.info("%s: VTN answers", source, extra=extra)
            else:
                logger.info(
                    "%s: VTN answers again after %.1f s (%d failed attempts)",
                    source,
                    (self._clock() - self._down_since).total_seconds(),
                    self.failures,
                    extra=extra,
                )
            self._down_since = None
        elif error is not None and unexpected:
            logger.debug("%s: %s", source, error, exc_info=True)
        if error is None:
            self.failures = 0

    async def _report_loop(self) -> None:
        """Send the reports openleadr's scheduler queues, one at a time; one that fails is dropped."""
        client = self._client
        while True:
            report = await client.pending_reports.get()
            try:
                await self._request("oadrUpdateReport", client.send_report(report))
            except Openadr2Error as err:
                self.reports_dropped += 1
                logger.debug("%s: report dropped: %s", self.settings.source, err)

    # -- events ----------------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> OptType:
        """openleadr's on_event and on_update_event: decide, tell the sink, answer optIn or optOut.

        The sink hears of the events we commit to (optIn) and of their ends: a cancellation, a
        completion, or a modification we can no longer deliver (then the last committed version comes
        back with status cancelled, so the sites re-plan without it).
        """
        descriptor = event.get("event_descriptor") or {}
        event_id = str(descriptor.get("event_id"))
        modification = int(descriptor.get("modification_number") or 0)
        try:
            signal = parse_event(read_event(event, self.ven_id), self.settings, self._clock())
        except AdapterFormatError as err:
            logger.warning("optOut of event %s modification %d: %s", event_id, modification, err)
            await self._withdraw(event_id, modification)
            return "optOut"
        if signal.status in (SignalStatus.CANCELLED, SignalStatus.COMPLETED):
            committed = self._committed.pop(event_id, None) is not None
            logger.info("event %s %s (modification %d)", event_id, signal.status, modification)
            if committed:
                await self._deliver(signal)
            return "optIn" if committed else "optOut"
        opt, why = await decide(signal, self._oracle)
        logger.info(
            "%s event %s modification %d (%s, VTN status %s): %s",
            opt,
            event_id,
            modification,
            signal.kind,
            descriptor.get("event_status"),
            why,
        )
        if opt == "optOut":
            await self._withdraw(event_id, modification)
            return "optOut"
        if not await self._deliver(signal):
            await self._withdraw(event_id, modification)
            return "optOut"
        self._committed[event_id] = signal
        return "optIn"

    async def _withdraw(self, event_id: str, modification: int) -> None:
        previous = self._committed.pop(event_id, None)
        if previous is None:
            return
        logger.info("event %s modification %d: withdrawn from the plan", event_id, modification)
        await self._deliver(
            previous.model_copy(
                update={
                    "status": SignalStatus.CANCELLED,
                    "modification": modification,
                    "received_at": self._clock(),
                }
            )
        )

    async def _deliver(self, signal: GridSignal) -> bool:
        try:
            await self._sink(signal)
        except Exception:
            logger.exception(
                "sink failed on event %s modification %d (%s)",
                signal.event_id,
                signal.modification,
                signal.status,
            )
            return False
        return True

    # -- reports ---------------------------------------------------------------------------------

    async def _report_values(
        self, date_from: dt.datetime, date_to: dt.datetime, sampling_interval: dt.timedelta
    ) -> list[tuple[dt.datetime, float]]:
        """openleadr's 'full' report callback: what the oracle metered in the window [kW]."""
        values = await self._oracle.metered_kw(date_from, date_to)
        logger.debug("report %s–%s: %d values", date_from, date_to, len(values))
        return [(start, float(kw)) for start, kw in values]
