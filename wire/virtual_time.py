"""An asyncio event loop whose time advances only when nothing is ready to run.

::

    from wire.virtual_time import run

    async def day() -> None:
        await asyncio.sleep(24 * 3600)      # returns at once; loop.time() is now 86 400 s later

    run(day())                              # or asyncio.Runner(loop_factory=VirtualTimeEventLoop)

:class:`VirtualTimeEventLoop` is a :class:`asyncio.SelectorEventLoop` with two changes:

- ``time()`` is a virtual clock (seconds, from ``start``); every timer (``asyncio.sleep``,
  ``call_later``, ``asyncio.timeout``, ``wait_for``) runs on it. Pair it with
  :func:`wire.clock.loop_clock` so that ``now()`` of every component moves with it.
- The loop's step (CPython's ``BaseEventLoop._run_once``) waits on its selector with the time to the
  next timer. That wait is replaced by the rule below (the selector is wrapped; ``_run_once`` itself
  is CPython's own, unchanged):

  1. callbacks ready (the loop asked for a timeout of 0): poll the sockets and run them;
  2. else poll the sockets with a timeout of 0: messages in flight on loopback sockets in this
     process (an embedded MQTT broker, a websocket to a simulated charger) are delivered before time
     moves. On Linux a loopback ``send`` has put its bytes in the peer's receive buffer by the time it
     returns, so a poll of 0 sees them;
  3. else, while a thread started through :meth:`~VirtualTimeEventLoop.run_in_executor` (so also
     :func:`asyncio.to_thread`: a solve, a database write; and the ``ocpp`` library's schema
     validation, aiomqtt's connect) is running, or a :meth:`holding` block is open: wait for real,
     without moving time. A solve holds time; with ``executor_latency_s`` its result is instead
     delivered exactly that many virtual seconds after it was started (a modelled latency), however
     long it took for real;
  4. else jump the virtual clock to the next timer (or, with no timer at all, wait for real I/O).

Work handed to an executor also holds the loop itself: ``run_in_executor`` blocks until the thread
is done (up to ``serial_wait_s`` real seconds, then it warns and lets the loop go on beside it), so
nothing else runs meanwhile and its result is queued at the same point in every run. A thread that
needs this loop to finish (``run_coroutine_threadsafe(...).result()``) therefore waits that long;
pass ``serial_wait_s=0`` for such code.

While it runs, paho-mqtt's keepalive (under aiomqtt) is timed on the loop's time too, so an MQTT client
pings an in-process broker on virtual time and is not dropped as silent (:func:`_paho_on_loop_time`).

Every TCP socket the loop watches gets ``TCP_NODELAY`` (asyncio's own transports have it already;
paho-mqtt's socket has not): with Nagle's algorithm a second small write waits for the peer's ACK,
which the receiving kernel may delay by up to 40 ms of real time, and virtual time would move on
without the message.

What it cannot see: a peer in another process (Mosquitto on 127.0.0.1:1883, a database server)
answers after real microseconds, by which time step 4 may have jumped over a timeout. Against that,
after ``spin_polls`` jumps in a row with no socket event, the loop waits up to ``spin_wait_s`` of real
time for I/O before jumping again: a client polling for an outside answer every 50 ms cannot run
through a 20 s timeout in a few real milliseconds. That keeps outside peers usable, not deterministic:
the same seed gives the same result only when every peer runs in this loop. Threads that the loop
does not start (``aiosqlite``'s, a bare :class:`threading.Thread`) do not hold time unless wrapped in
:meth:`~VirtualTimeEventLoop.holding`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar, TypeVarTuple

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

SPIN_POLLS = 100
"""Jumps in a row with no socket event after which the loop waits for real I/O once."""
SPIN_WAIT_S = 0.001
"""That wait [real s]."""
SERIAL_WAIT_S = 30.0
"""How long the loop blocks for work it hands to an executor before it goes on beside it [real s]."""
BUSY_WAIT_S = 0.05
"""Longest single real wait while a thread holds time [real s] (the thread's end wakes it sooner)."""
_MAXIMUM_SELECT_TIMEOUT = 24 * 3600  # asyncio.base_events.MAXIMUM_SELECT_TIMEOUT


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time (the module docstring has the rules).

    ``start``: the loop's time at creation [virtual s]. ``executor_latency_s``: virtual seconds from
    starting work in an executor to its result (0: the work holds time and its result comes at once).
    ``spin_polls`` and ``spin_wait_s``: the guard for peers in other processes. ``serial_wait_s``:
    how long the loop blocks for executor work [real s] (0: it runs beside the loop from the start).
    """

    def __init__(
        self,
        selector: selectors.BaseSelector | None = None,
        *,
        start: float = 0.0,
        executor_latency_s: float = 0.0,
        spin_polls: int = SPIN_POLLS,
        spin_wait_s: float = SPIN_WAIT_S,
        serial_wait_s: float = SERIAL_WAIT_S,
    ) -> None:
        if executor_latency_s < 0:
            raise ValueError(f"executor_latency_s must be >= 0 virtual s, got {executor_latency_s}")
        if spin_polls < 1 or spin_wait_s < 0:
            raise ValueError(f"spin_polls must be >= 1 and spin_wait_s >= 0, got {spin_polls}, {spin_wait_s}")
        self._virtual_now = float(start)
        self.executor_latency_s = executor_latency_s
        self.spin_polls = spin_polls
        self.spin_wait_s = spin_wait_s
        self.serial_wait_s = serial_wait_s
        self._serial_warned = False
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._idle_jumps = 0
        self.jumps = 0
        """How many times the clock jumped to a timer."""
        super().__init__(selector)
        self._selector: selectors.BaseSelector = _VirtualSelector(self._selector, self)

    def run_forever(self) -> None:
        """Run, with paho-mqtt's keepalive on this loop's time (see :func:`_paho_on_loop_time`)."""
        with _paho_on_loop_time(self):
            super().run_forever()

    # ------------------------------------------------------------------------------------------- time

    def time(self) -> float:
        """The virtual time [s]."""
        return self._virtual_now

    @property
    def busy(self) -> int:
        """Threads and :meth:`holding` blocks holding time now."""
        return self._busy

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold virtual time while the block runs (for work in threads the loop did not start)."""
        self._hold()
        try:
            yield
        finally:
            self._release()

    def _hold(self) -> None:
        with self._busy_lock:
            self._busy += 1

    def _release(self, _: object = None) -> None:
        with self._busy_lock:
            self._busy -= 1

    def _advance(self, timeout: float) -> None:
        """Jump to the next timer; ``timeout`` is what ``_run_once`` computed for it."""
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled and timeout < _MAXIMUM_SELECT_TIMEOUT:
            self._virtual_now = max(self._virtual_now, scheduled[0].when())
        else:
            self._virtual_now += timeout
        self.jumps += 1

    # --------------------------------------------------------------------------------------- executor

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        """As :meth:`asyncio.AbstractEventLoop.run_in_executor`; the work holds virtual time until
        it ends (and its result comes ``executor_latency_s`` after its start)."""
        self._check_closed()  # type: ignore[attr-defined]
        if executor is None:
            executor = self._default_executor  # type: ignore[has-type]
            self._check_default_executor()  # type: ignore[attr-defined]
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        started = self.time()
        self._hold()
        try:
            work = executor.submit(func, *args)
        except BaseException:
            self._release()
            raise
        # wrap_future registers its hand-over first, so the result is queued on this loop before the
        # hold is released: the loop never sees "not busy and nothing ready" in between.
        result = asyncio.wrap_future(work, loop=self)
        work.add_done_callback(self._release)
        if self.serial_wait_s > 0:
            self._wait_serially(work, func)
        if self.executor_latency_s <= 0:
            return result
        return self._deliver_at(result, started + self.executor_latency_s)

    def _wait_serially(self, work: concurrent.futures.Future[Any], func: Callable[..., Any]) -> None:
        """Block the loop until ``work`` ends (at most ``serial_wait_s`` real seconds), so nothing else
        runs meanwhile and its result is queued at the same place in every run."""
        concurrent.futures.wait([work], timeout=self.serial_wait_s)
        if not work.done() and not self._serial_warned:
            self._serial_warned = True
            log.warning(
                "virtual time: %r still runs after %.1f real s in an executor; the loop goes on beside "
                "it (time stays held, but what happens meanwhile may differ between runs)",
                func,
                self.serial_wait_s,
            )

    def _deliver_at(self, inner: asyncio.Future[T], due: float) -> asyncio.Future[T]:
        """A future with ``inner``'s outcome, set at virtual time ``due`` (or when ``inner`` ends)."""
        outer: asyncio.Future[T] = self.create_future()

        def hand_over() -> None:
            if outer.cancelled():
                return
            if inner.cancelled():
                outer.cancel()
            elif (error := inner.exception()) is not None:
                outer.set_exception(error)
            else:
                outer.set_result(inner.result())

        def inner_done(_: asyncio.Future[T]) -> None:
            self.call_at(due, hand_over)

        def outer_done(_: asyncio.Future[T]) -> None:
            if outer.cancelled():
                inner.cancel()

        inner.add_done_callback(inner_done)
        outer.add_done_callback(outer_done)
        return outer


class _VirtualSelector(selectors.BaseSelector):
    """The loop's selector, with ``select`` replaced by the virtual-time rule (module docstring)."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualTimeEventLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        events = self._selector.select(0)
        if events or timeout == 0:
            if events:
                loop._idle_jumps = 0
            return events
        if loop.busy:
            # Real time passes, virtual time does not (the work holds it); the work's end wakes us.
            return self._selector.select(BUSY_WAIT_S)
        if timeout is None:  # no timer at all: only the outside can wake us
            return self._selector.select(None)
        if loop._idle_jumps >= loop.spin_polls:
            loop._idle_jumps = 0
            events = self._selector.select(loop.spin_wait_s)
            if events:
                return events
        loop._idle_jumps += 1
        loop._advance(timeout)
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        _no_delay(fileobj)
        return self._selector.register(fileobj, events, data)

    # The rest of the selector's interface, unchanged.

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._selector.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


@contextlib.contextmanager
def _paho_on_loop_time(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """paho-mqtt (under aiomqtt) times its keepalive PINGREQs with its module's ``time_func``, real
    monotonic time, while the broker (amqtt in this process) drops a silent client after its keepalive
    on the loop's time: in virtual time every idle client would be dropped after a minute and a half.
    While the loop runs, paho reads the loop's time instead (restored after)."""
    try:
        from paho.mqtt import client as paho
    except ImportError:  # pragma: no cover - paho comes with aiomqtt, in the base install
        yield
        return
    saved = paho.time_func
    paho.time_func = loop.time
    try:
        yield
    finally:
        paho.time_func = saved


def _no_delay(fileobj: Any) -> None:
    """Turn Nagle's algorithm off on ``fileobj`` if it is a TCP socket (see the module docstring)."""
    try:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        sock = socket.socket(fileno=os.dup(fd))
    except (AttributeError, OSError, ValueError):
        return
    with sock:  # a duplicate of the descriptor: the option is the socket's, the duplicate is ours to close
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, **loop_options: Any) -> T:
    """Run ``main`` to completion on a new :class:`VirtualTimeEventLoop` (``loop_options`` are its
    keyword arguments), as :func:`asyncio.run` does on a real one."""
    with asyncio.Runner(debug=debug, loop_factory=lambda: VirtualTimeEventLoop(**loop_options)) as runner:
        return runner.run(main)
