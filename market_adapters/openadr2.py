"""OpenADR 2.0b VEN: registers with a grid operator's VTN (through openleadr) and speaks our seam.

Incoming events become :class:`~market_adapters.dispatch.GridSignal` objects handed to a
:class:`~market_adapters.dispatch.SignalSink`; each event is answered optIn or optOut from what the
:class:`~market_adapters.dispatch.FlexibilityOracle` says the portfolio can deliver; the VTN's report
requests are answered with a TELEMETRY_USAGE report (real power, kW) of what the oracle metered.

The work is split as the adapters' convention asks:

- fetch: openleadr's ``OpenADRClient`` does the HTTP and XML (registration, ``oadrPoll``, replies),
  driven by :class:`Ven` here;
- read, parse and decide: :mod:`market_adapters.openadr2_events` (:func:`read_event`,
  :func:`parse_event`, :func:`decide`), with the outside names mapped to ours in its tables and the
  sign rules of LOAD_DISPATCH written at its top. Its settings models are importable from here too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import warnings
from collections.abc import Callable
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
    "decide",
    "parse_event",
    "read_event",
]

logger = logging.getLogger(__name__)

REPORT_MEASUREMENT = "power_real"  # openleadr's MEASUREMENTS.POWER_REAL: powerReal, W …
REPORT_SCALE = "k"  # … scaled to kW


class Openadr2Error(AdapterError):
    """The VEN could not do what it was asked to (registration refused, VTN unreachable)."""


# --------------------------------------------------------------------------------------------------
# The VEN
# --------------------------------------------------------------------------------------------------


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ven:
    """An OpenADR 2.0b VEN, alive inside ``async with``.

    On entry it registers (raising :class:`Openadr2Error` when the VTN refuses or does not answer),
    offers its TELEMETRY_USAGE report and syncs events; then a named task polls the VTN and another
    sends queued reports until exit.
    """

    def __init__(
        self,
        settings: Openadr2Settings,
        sink: SignalSink,
        oracle: FlexibilityOracle,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._oracle = oracle
        self._clock = clock
        self._client: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._committed: dict[str, GridSignal] = {}  # event id → the version we opted in to

    @property
    def ven_id(self) -> str | None:
        return self._client.ven_id if self._client else None

    @property
    def registration_id(self) -> str | None:
        return self._client.registration_id if self._client else None

    # -- life ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # openleadr (and its XML signing stack) is imported here, when a VEN starts, not with the
        # settings models: `fleetgrid admin --config central.toml` reads those and would wait ~0.5 s.
        with warnings.catch_warnings():
            # openleadr imports signxml, whose signer names cryptography's DSA key type in an
            # annotation; cryptography >= 51 deprecates DSA with a warning at that lookup. We never
            # sign with DSA.
            warnings.filterwarnings("ignore", message="DSA is deprecated", module="signxml")
            from openleadr import OpenADRClient, objects

        s = self.settings
        secure = not s.insecure_test_mode
        if not secure:
            logger.warning("OpenADR 2.0b VEN %r in insecure test mode (unsigned, unchecked)", s.ven_name)
        client = OpenADRClient(
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
            await self._register()
            group = asyncio.TaskGroup()
            await group.__aenter__()
            self._group = group
            client.scheduler.start()
            self._tasks = [
                group.create_task(self._poll_loop(), name=f"openadr2-poll:{s.ven_name}"),
                group.create_task(client._report_queue_worker(), name=f"openadr2-reports:{s.ven_name}"),
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
                await group.__aexit__(exc_type, exc, tb)
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

    async def _request(self, what: str, call: Any) -> Any:
        try:
            async with asyncio.timeout(self.settings.request_timeout.total_seconds()):
                return await call
        except TimeoutError as err:
            raise Openadr2Error(
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
                "(refused or unreachable; see the openleadr log)"
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

    async def _poll_loop(self) -> None:
        client = self._client
        while True:
            period = min(client.poll_frequency or dt.timedelta(seconds=10), dt.timedelta(hours=24))
            await asyncio.sleep(period.total_seconds())
            try:
                await self._request("oadrPoll", client._poll())
            except Openadr2Error as err:
                logger.warning("%s", err)
            except Exception:
                logger.exception("%s: poll failed; will poll again", self.settings.source)
            await client._event_cleanup()  # forget cancelled and completed events

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
