"""OpenADR 3 (3.0.1) client: programs, events, reports and subscriptions over REST with OAuth2.

The VTN is a REST resource server (``/programs``, ``/events``, ``/reports``, ``/subscriptions``,
``/vens``); a VEN authenticates with the OAuth2 client-credentials grant at the token URL (discovered at
``/auth/server`` -> ``tokenURL`` where the VTN offers it, else ``auth/token`` as the 3.0.1 API declares).

Split like the other adapters: :class:`OpenAdr3Client` fetches (and posts reports);
:mod:`market_adapters.openadr3_objects` holds the outside objects, :func:`parse_event` and the one table
of payload types to our signal kinds (:data:`PAYLOAD_MAP`). A deleted event becomes the same signal with
status ``cancelled``; a changed event (its ``modificationDateTime`` or content) a new signal with a higher
``modification``. Reports are ``USAGE`` payloads of the enrolled sites' metered power [kW] (descriptor
``units: KW``), asked from :class:`~market_adapters.dispatch.FlexibilityOracle`. HTTP errors are RFC 7807
problems turned into :class:`OpenAdr3HttpError`; timeouts, connection errors and 5xx are retried with
jittered exponential backoff.

A VTN that stays away never stops the client: a poll that fails is tried again after the poll interval
or the backoff delay, whichever is longer, for ever. Every poll's outcome goes to ``on_link`` (``None``:
it went through; else why not); each change between answering and not is logged once (WARNING when it
stops, INFO when it answers again) with ``extra={"dependency": source, "state": "down" | "up"}``, and the
retries in between only at DEBUG.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated, Any, Self
from urllib.parse import urljoin, urlsplit

import httpx
from fastapi import APIRouter, Header, HTTPException

from market_adapters.dispatch import FlexibilityOracle, GridSignal, SignalSink, SignalStatus
from market_adapters.errors import AdapterError, AdapterFormatError
from market_adapters.openadr3_objects import (
    PAYLOAD_MAP,
    REPORT_PAYLOAD,
    Event,
    Notification,
    OpenAdr3Settings,
    Program,
    parse_event,
    parse_program,
    validate_outside,
)

__all__ = [
    "PAYLOAD_MAP",
    "Event",
    "OpenAdr3AuthError",
    "OpenAdr3Client",
    "OpenAdr3HttpError",
    "OpenAdr3Settings",
    "OpenAdr3UnavailableError",
    "PollResult",
    "Program",
    "callback_router",
    "parse_event",
    "parse_program",
]

logger = logging.getLogger(__name__)


# --- errors ----------------------------------------------------------------------------------------------


class OpenAdr3HttpError(AdapterError):
    """The VTN answered with an error status (an RFC 7807 problem, or an RFC 6749 error on the token URL)."""

    def __init__(self, method: str, url: str, status: int, title: str, detail: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.title = title
        self.detail = detail
        super().__init__(f"{method} {url}: HTTP {status} {title}: {detail}".rstrip(": "))


class OpenAdr3AuthError(OpenAdr3HttpError):
    """The token URL refused our client credentials."""


class OpenAdr3UnavailableError(AdapterError):
    """The VTN stayed unreachable (timeouts, connection errors, 5xx) through every retry."""


# --- the client ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PollResult:
    signals: list[GridSignal]
    errors: list[AdapterFormatError]


@dataclasses.dataclass
class _Seen:
    raw: dict[str, Any]
    signal: GridSignal
    reported: bool = False


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OpenAdr3Client:
    """An OpenADR 3 VEN client. ``async with OpenAdr3Client(settings, sink=...)`` polls in a named task.

    Without ``sink`` it is a plain REST client (token, programs, events, reports, subscriptions). With an
    ``oracle``, a USAGE report is posted once for every event that asked for one (``reportDescriptors``)
    after it ended. ``clock``, ``sleep`` and ``rng`` are injectable; ``transport`` is passed to httpx.
    """

    def __init__(
        self,
        settings: OpenAdr3Settings,
        *,
        sink: SignalSink | None = None,
        oracle: FlexibilityOracle | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_link: Callable[[str | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.oracle = oracle
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.source = f"openadr3:{urlsplit(settings.vtn_url).netloc or settings.vtn_url}"
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._token: str | None = None
        self._token_expires: dt.datetime | None = None
        self._token_lock = asyncio.Lock()
        self._programs: dict[str, Program] = {}
        self._seen: dict[str, _Seen] = {}
        self._stack: AsyncExitStack | None = None
        self.last_errors: list[AdapterError] = []
        self._on_link = on_link
        self.answering: bool | None = None
        """Whether the last poll went through (``None`` before the first)."""
        self.failures = 0
        """Failed polls since the last one that went through."""
        self._down_since: dt.datetime | None = None

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            self._http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=self.settings.vtn_url.rstrip("/") + "/",
                    timeout=self.settings.request_timeout_s,
                    transport=self._transport,
                )
            )
            if self.sink is not None:
                group = await stack.enter_async_context(asyncio.TaskGroup())
                task = group.create_task(self._poll_forever(), name=f"{self.source}:poll")
                stack.callback(task.cancel)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(None, None, None)
        self._http = None

    # -- HTTP with token, retries and problem details

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use OpenAdr3Client as an async context manager")
        return self._http

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
        return cap * self.rng.uniform(0.5, 1.0)

    async def _send(self, method: str, url: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        """One request, retried with jittered backoff on timeouts, connection errors and 5xx."""
        attempts = self.settings.max_retries + 1
        refreshed = False
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {await self.token()}"} if auth else {}
            response: httpx.Response | None = None
            try:
                answer = await self.http.request(method, url, headers=headers, **kwargs)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                response = answer
                if response.status_code == 401 and auth and not refreshed:
                    self._token, refreshed = None, True  # expired early or revoked: one fresh token
                    continue
                if response.status_code < 500:
                    return response
                problem = str(_problem(method, response))
            attempt += 1
            if attempt >= attempts:
                if response is not None:
                    raise _problem(method, response)
                raise OpenAdr3UnavailableError(f"{method} {url}: {problem} after {attempts} attempts")
            delay = self._backoff(attempt - 1)
            logger.debug("%s: %s; retry %d/%d in %.2f s", self.source, problem, attempt, attempts - 1, delay)
            await self.sleep(delay)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise _problem(method, response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AdapterFormatError(self.source, f"{method} {path}", "", "answer is not JSON") from exc

    async def _get_all(self, path: str, params: dict[str, Any] | None = None, page: int = 50) -> list[Any]:
        items: list[Any] = []
        while True:
            batch = await self._json(
                "GET", path, params={**(params or {}), "skip": len(items), "limit": page}
            )
            if not isinstance(batch, list):
                raise AdapterFormatError(self.source, f"GET {path}", "", "answer is not a JSON array")
            items += batch
            if len(batch) < page:
                return items

    # -- token

    async def token(self) -> str:
        """A bearer token, fetched with the client-credentials grant and refreshed before it expires."""
        async with self._token_lock:
            now = self.clock()
            if self._token is None or (self._token_expires is not None and now >= self._token_expires):
                await self._fetch_token(now)
            assert self._token is not None
            return self._token

    async def _token_url(self) -> str:
        if self.settings.token_url:
            return self.settings.token_url
        response = await self._send("GET", "auth/server", auth=False)
        if response.status_code == 200:
            url = response.json().get("tokenURL")
            if isinstance(url, str) and url:
                return urljoin(str(self.http.base_url), url)
        return "auth/token"

    async def _fetch_token(self, now: dt.datetime) -> None:
        url = await self._token_url()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret.get_secret_value(),
        }
        if self.settings.scope:
            form["scope"] = self.settings.scope
        response = await self._send("POST", url, auth=False, data=form)
        if response.status_code != 200:
            error = _problem("POST", response)
            raise OpenAdr3AuthError(error.method, error.url, error.status, error.title, error.detail)
        body = response.json()
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AdapterFormatError(
                self.source, f"POST {url}", "access_token", "missing from the token answer"
            )
        self._token = token
        expires_in = body.get("expires_in")
        self._token_expires = (
            now + dt.timedelta(seconds=max(0.0, float(expires_in) - self.settings.token_refresh_margin_s))
            if isinstance(expires_in, int | float)
            else None
        )

    # -- programs and events

    async def list_programs(self) -> list[Program]:
        """Every program the VTN lists (all of them; ``settings.programs`` filters only the poll)."""
        programs = [parse_program(obj, source=self.source) for obj in await self._get_all("programs")]
        self._programs.update({p.id: p for p in programs})
        return programs

    async def list_events(self, program_id: str | None = None) -> list[dict[str, Any]]:
        """The raw event objects, of one program when ``program_id`` is given."""
        return await self._get_all("events", {"programID": program_id} if program_id else None)

    def _followed(self) -> list[Program]:
        wanted = set(self.settings.programs)
        return [p for p in self._programs.values() if not wanted or p.programName in wanted or p.id in wanted]

    async def poll_once(self) -> PollResult:
        """Fetch programs and their events; new, changed and deleted events become signals for the sink.

        A malformed event is an error in the result (and a log line), never a stop: the other events
        still come through, and the malformed one is tried again at the next poll.
        """
        await self.list_programs()
        result = PollResult([], [])
        present: set[str] = set()
        followed = self._followed()
        for program in followed:
            for obj in await self.list_events(program.id):
                event_id = obj.get("id") if isinstance(obj, dict) else None
                if isinstance(event_id, str):
                    present.add(event_id)
                self._take(obj, program, result)
        followed_ids = {p.id for p in followed}
        for event_id, seen in list(self._seen.items()):
            if event_id not in present and seen.raw.get("programID") in followed_ids:
                result.signals.append(self._cancel(event_id))
        await self._deliver(result)
        return result

    def _take(self, obj: Any, program: Program | None, result: PollResult) -> None:
        event_id = obj.get("id") if isinstance(obj, dict) else None
        previous = self._seen.get(event_id) if isinstance(event_id, str) else None
        if previous is not None and previous.raw == obj:
            return
        try:
            signal = parse_event(
                obj, program=program, settings=self.settings, source=self.source, received_at=self.clock()
            )
        except AdapterFormatError as exc:
            logger.error("%s", exc)
            result.errors.append(exc)
            return
        if signal is None:
            return
        if previous is not None and signal.modification <= previous.signal.modification:
            signal = signal.model_copy(update={"modification": previous.signal.modification + 1})
        self._seen[signal.event_id] = _Seen(obj, signal)
        result.signals.append(signal)

    def _cancel(self, event_id: str) -> GridSignal:
        """The cancellation of a seen event; it stays seen until the sink has taken the cancellation."""
        seen = self._seen[event_id]
        return seen.signal.model_copy(
            update={
                "status": SignalStatus.CANCELLED,
                "modification": seen.signal.modification + 1,
                "received_at": self.clock(),
            }
        )

    async def _deliver(self, result: PollResult) -> None:
        """Hand the signals to the sink. One the sink fails on (its database is down, ...) is logged
        and forgotten, so the next poll delivers it again; the others still go through."""
        self.last_errors = list(result.errors)
        for signal in result.signals:
            if self.sink is not None:
                try:
                    await self.sink(signal)
                except Exception:  # the sink's failure must not stop polling or lose the event
                    logger.exception(
                        "%s: event %s (modification %d) not taken by the aggregator; retried next poll",
                        self.source,
                        signal.event_id,
                        signal.modification,
                    )
                    if signal.status is not SignalStatus.CANCELLED:
                        self._seen.pop(signal.event_id, None)
                    continue
            if signal.status is SignalStatus.CANCELLED:
                self._seen.pop(signal.event_id, None)

    async def handle_notification(self, payload: Any) -> PollResult:
        """A subscription callback's body (an OpenADR 3 ``notification``): events in, signals out."""
        notification = validate_outside(Notification, payload, self.source, "notification")
        result = PollResult([], [])
        if notification.objectType != "EVENT":
            return result
        event_id = notification.object.get("id")
        if notification.operation == "DELETE":
            if isinstance(event_id, str) and event_id in self._seen:
                result.signals.append(self._cancel(event_id))
        else:
            program_id = notification.object.get("programID")
            program = self._programs.get(program_id) if isinstance(program_id, str) else None
            if program is None and isinstance(program_id, str):
                program = parse_program(await self._json("GET", f"programs/{program_id}"), source=self.source)
                self._programs[program.id] = program
            self._take(notification.object, program, result)
        await self._deliver(result)
        return result

    async def subscribe(self, program_id: str, callback_url: str, bearer_token: str | None = None) -> str:
        """Register a webhook for events of a program; returns the subscription id."""
        body = {
            "clientName": self.settings.client_name,
            "programID": program_id,
            "objectOperations": [
                {
                    "objects": ["EVENT"],
                    "operations": ["POST", "PUT", "DELETE"],
                    "callbackUrl": callback_url,
                    "bearerToken": bearer_token,
                }
            ],
        }
        created = await self._json("POST", "subscriptions", json=body)
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise AdapterFormatError(self.source, "POST subscriptions", "id", "missing from the answer")
        return str(created["id"])

    # -- reports

    async def post_usage_report(
        self, event_id: str, oracle: FlexibilityOracle | None = None
    ) -> dict[str, Any]:
        """POST a USAGE report of the metered power [kW] over the event's window; returns what was sent."""
        oracle = oracle or self.oracle
        if oracle is None:
            raise RuntimeError("post_usage_report needs a FlexibilityOracle")
        seen = self._seen.get(event_id)
        if seen is None:
            raise KeyError(f"{self.source}: no event {event_id!r} seen")
        signal = seen.signal
        readings = sorted(await oracle.metered_kw(signal.start, signal.end))
        intervals = []
        for i, (start, kw) in enumerate(readings):
            end = readings[i + 1][0] if i + 1 < len(readings) else signal.end
            intervals.append(
                {
                    "id": i,
                    "intervalPeriod": {"start": _iso(start), "duration": _iso_duration(end - start)},
                    "payloads": [{"type": REPORT_PAYLOAD, "values": [kw]}],
                }
            )
        report = {
            "programID": seen.raw["programID"],
            "eventID": event_id,
            "clientName": self.settings.client_name,
            "reportName": f"{REPORT_PAYLOAD} {event_id}",
            "payloadDescriptors": [
                {"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": REPORT_PAYLOAD, "units": "KW"}
            ],
            "resources": [{"resourceName": self.settings.report_resource_name, "intervals": intervals}],
        }
        await self._json("POST", "reports", json=report)
        seen.reported = True
        return report

    async def _report_due(self) -> None:
        if self.oracle is None:
            return
        now = self.clock()
        for event_id, seen in list(self._seen.items()):
            asked = any(
                d.get("payloadType") == REPORT_PAYLOAD for d in seen.raw.get("reportDescriptors") or ()
            )
            if asked and not seen.reported and seen.signal.end <= now:
                await self.post_usage_report(event_id)

    async def _poll_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self.poll_once()
                await self._report_due()
            except AdapterError as exc:
                self.last_errors = [exc]
                self._link(str(exc))
                delay = max(self.settings.poll_interval_s, self._backoff(failures))
                failures += 1
                logger.debug("%s: poll failed (%s); next in %.2f s", self.source, exc, delay)
            else:
                self._link(None)
                failures = 0
                delay = self.settings.poll_interval_s
            await self.sleep(delay)

    def _link(self, error: str | None) -> None:
        """Record one poll's outcome, tell ``on_link``, and log a change of state once."""
        before = self.answering
        self.answering = error is None
        if self._on_link is not None:
            self._on_link(error)
        if error is not None:
            self.failures += 1
            if before is not False:
                self._down_since = self.clock()
                logger.warning(
                    "%s: VTN not answering (%s); polling again with backoff",
                    self.source,
                    error,
                    extra={"dependency": self.source, "state": "down"},
                )
            return
        if before is not True:
            extra = {"dependency": self.source, "state": "up"}
            if self._down_since is None:
                logger.info("%s: VTN answers", self.source, extra=extra)
            else:
                logger.info(
                    "%s: VTN answers again after %.1f s (%d failed polls)",
                    self.source,
                    (self.clock() - self._down_since).total_seconds(),
                    self.failures,
                    extra=extra,
                )
        self._down_since = None
        self.failures = 0


def _problem(method: str, response: httpx.Response) -> OpenAdr3HttpError:
    """An error from an RFC 7807 problem (or an RFC 6749 token error), naming the status and the detail."""
    title, detail = response.reason_phrase, response.text[:200]
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or body.get("error") or title)
        detail = str(body.get("detail") or body.get("error_description") or "")
    return OpenAdr3HttpError(method, str(response.request.url), response.status_code, title, detail)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _iso_duration(length: dt.timedelta) -> str:
    seconds = length.total_seconds()
    return f"PT{seconds:g}S" if seconds % 60 else f"PT{int(seconds // 60)}M"


def callback_router(
    client: OpenAdr3Client, *, bearer_token: str | None, path: str = "/openadr3/notifications"
) -> APIRouter:
    """The subscription webhook as a FastAPI router, for the aggregator's API to include.

    The VTN POSTs a ``notification`` with the bearer token we gave in the subscription; anything else
    gets 403. A malformed event answers 200 with the error listed (the VTN cannot fix it by retrying).
    """
    router = APIRouter()

    @router.post(path)
    async def openadr3_notification(
        body: dict[str, Any], authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        if bearer_token is not None and authorization != f"Bearer {bearer_token}":
            raise HTTPException(status_code=403, detail="notification without our bearer token")
        try:
            result = await client.handle_notification(body)
        except AdapterFormatError as exc:
            return {"signals": 0, "errors": [str(exc)]}
        return {"signals": len(result.signals), "errors": [str(e) for e in result.errors]}

    return router
