"""The central service's outside peers and whether each answers: what ``GET /admin/status`` shows.

A peer the service cannot reach (an OpenADR VTN, InfluxDB, the MQTT broker) never stops it: the
component that talks to the peer retries with jittered exponential backoff and reports each outcome to
its :class:`Dependency` (``report(None)``: it answered; ``report("why")``: it did not). The entry keeps
the state, since when (on the service's clock), the last error and the failed attempts since it was last
up. Logging is the component's job, once per change of state (see each component's docstring); this
module only records, so a report costs nothing and may come on every exchange.

The MQTT broker has no component that reports: :func:`watch_broker` samples the ingestion's and the
setpoint publisher's "connected" flags instead and logs their changes itself.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from wire.clock import Clock

log = logging.getLogger(__name__)


class DependencyState(enum.StrEnum):
    UNKNOWN = "unknown"
    """Not tried yet (InfluxDB before the first write; a VTN before the first exchange)."""
    UP = "up"
    """The last exchange went through."""
    DOWN = "down"
    """The last exchange failed; the component retries with backoff."""


class DependencyKind(enum.StrEnum):
    OPENADR_VTN = "openadr-vtn"
    INFLUXDB = "influxdb"
    MQTT_BROKER = "mqtt-broker"


@dataclass
class Dependency:
    """One outside peer: ``name`` (``openadr:1``, ``influxdb``, ``mqtt``), what it is and where."""

    name: str
    kind: DependencyKind
    target: str
    """URL or ``host:port``."""
    clock: Callable[[], dt.datetime] = field(repr=False)
    state: DependencyState = DependencyState.UNKNOWN
    since: dt.datetime | None = None
    """When it entered ``state`` (when it was added, while unknown)."""
    last_error: str | None = None
    """Why the last failed exchange failed (kept after it comes up again, until the next failure)."""
    failures: int = 0
    """Failed exchanges since it was last up (the broker: 1 while down; its clients retry on their own)."""
    changes: int = 0
    """Changes of state between up and down since the service started."""

    def __post_init__(self) -> None:
        self.since = self.clock()

    def report(self, error: str | None) -> None:
        """The outcome of one exchange with the peer: ``None`` if it went through, else why not."""
        state = DependencyState.UP if error is None else DependencyState.DOWN
        if error is not None:
            self.failures += 1
            self.last_error = error
        else:
            self.failures = 0
        if state is not self.state:
            if self.state is not DependencyState.UNKNOWN:
                self.changes += 1
            self.state = state
            self.since = self.clock()


class Dependencies:
    """The service's dependencies by name, in the order they were added."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self._clock = clock
        self._entries: dict[str, Dependency] = {}

    def add(self, name: str, kind: DependencyKind, target: str) -> Dependency:
        if name in self._entries:
            raise ValueError(f"dependency {name!r} is already registered")
        entry = Dependency(name, kind, target, self._clock)
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> Dependency:
        return self._entries[name]

    def __iter__(self) -> Iterator[Dependency]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def degraded(self) -> bool:
        """Some dependency is down."""
        return any(entry.state is DependencyState.DOWN for entry in self)


BROKER_SAMPLE_S = 0.25
"""How often [s] :func:`watch_broker` looks at the MQTT clients' connected flags."""


async def watch_broker(
    entry: Dependency,
    connected: Callable[[], str | None],
    *,
    clock: Clock,
    grace_s: float,
    sample_s: float = BROKER_SAMPLE_S,
) -> None:
    """Report the broker's state to ``entry`` from ``connected()`` (``None`` when every MQTT client of the
    service is connected, else which is not) every ``sample_s`` seconds, when it changes, and log it once.

    Up to ``grace_s`` seconds after the start a client still connecting is not a failure (the state stays
    unknown). The clients themselves retry with backoff (:func:`wire.reconnect.keep_connected`). Cancel
    to stop."""
    started = clock.monotonic()
    while True:
        problem = connected()
        state = DependencyState.UP if problem is None else DependencyState.DOWN
        settled = problem is None or clock.monotonic() - started >= grace_s
        if settled and state is not entry.state:
            before = entry.state
            entry.report(problem)
            _log_broker_change(entry, before)
        await clock.sleep(sample_s)


def _log_broker_change(entry: Dependency, before: DependencyState) -> None:
    extra = {"dependency": entry.name, "state": entry.state.value}
    if entry.state is DependencyState.DOWN:
        log.warning(
            "MQTT broker %s: %s; the clients retry with backoff", entry.target, entry.last_error, extra=extra
        )
    elif before is DependencyState.UNKNOWN:
        log.info("MQTT broker %s: connected", entry.target, extra=extra)
    else:
        log.info("MQTT broker %s: connected again", entry.target, extra=extra)
