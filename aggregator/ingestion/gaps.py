"""Sequence gaps: the numbers of a site's messages that never reached the centre, made visible.

Every site→centre message carries ``seq`` from one per-site counter that the gateway persists
(:mod:`wire.contract`): strictly increasing in the order the gateway takes numbers, but not gap-free,
and not quite in that order on arrival. What the centre can rely on, and what :class:`SequenceGaps`
does with it:

- Telemetry, session events and acks leave the gateway's outbox in ``seq`` order, one at a time, so
  with one ingestion session they arrive in ``seq`` order (redeliveries aside). When one of these
  *ordered* messages arrives with ``seq`` ``s``, every number below ``s`` that has not arrived is
  declared missing (a :class:`Gap`): a log line per gap, and :attr:`SequenceGaps.missing`,
  :attr:`SequenceGaps.gaps` and :attr:`SequenceGaps.recent` (the last :data:`RECENT_GAPS` ranges).
  This is how an outage longer than the broker can queue for the centre shows: the broker drops what
  it cannot hold, and the next message that does arrive is far ahead.
- Statuses bypass the outbox (the status a gateway publishes when it connects overtakes its
  backlog), and a last will carries a number taken when its connection opened, published only if
  that connection dies. So a status only fills its number; it never declares the numbers below it
  missing.
- A single missing number is what the contract itself leaves: the reserved number of a last will that
  was never needed, or a status superseded in the outbox before it was sent. It is still declared
  (a gap of one, logged at INFO, counted in :attr:`SequenceGaps.singles`); a run of two or more is
  logged as a WARNING. A lost single message looks the same as those, which is why it is counted.
- A number that arrives after being declared missing (a late last will; telemetry out of order when
  several sessions share the telemetry subscription) is counted in :attr:`SequenceGaps.late` and
  taken off :attr:`SequenceGaps.missing`. ``reorder_window`` delays declaring a gap until the site's
  ordered messages are that many numbers past it, for when messages may arrive out of order.
- The tracker starts from the highest numbers already stored (:meth:`SequenceGaps.start_from`), so a
  loss while the centre was down shows at its first message after the restart; numbers at or below
  that are redeliveries and change nothing.

Memory: per site, the next expected number and the numbers seen above it that do not yet close a
gap (at most ``reorder_window`` plus the statuses ahead of a backlog), plus :data:`RECENT_GAPS` gaps.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger("aggregator.ingestion.pipeline")  # one logger for all of ingestion

RECENT_GAPS = 1_000
"""Gaps kept in :attr:`SequenceGaps.recent`; past it the oldest is dropped (the counters stay exact)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Numbers ``first`` to ``last`` (inclusive) of ``site_id`` that had not arrived when a later
    ordered message did, at ``detected_at`` (the centre's clock)."""

    site_id: str
    first: int
    last: int
    detected_at: dt.datetime

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass
class _Site:
    expected: int
    """The lowest number not accounted for: everything below arrived or was declared missing."""
    ahead: set[int] = field(default_factory=set)
    """Numbers at or above ``expected`` that arrived (statuses, or ordered messages within the window)."""
    declared_ranges: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=64)
    )
    """The ranges of this site's last gaps (up to 64), so that a number arriving late is recognised."""


@dataclass
class SequenceGaps:
    """Per-site sequence tracking (see the module notes); :meth:`observe` each decoded message in
    arrival order."""

    reorder_window: int = 0
    """How many numbers past a hole a site's ordered messages must be before it is declared missing."""
    gaps: int = 0
    """Gaps declared (a single missing number included)."""
    singles: int = 0
    """Of :attr:`gaps`, those of one number (a last will or superseded status, or one lost message)."""
    missing: int = 0
    """Numbers declared missing and not arrived since."""
    late: int = 0
    """Numbers that arrived after being declared missing."""
    recent: collections.deque[Gap] = field(default_factory=lambda: collections.deque(maxlen=RECENT_GAPS))
    """The last :data:`RECENT_GAPS` gaps, oldest first."""
    site_gaps: collections.Counter[tuple[str, bool]] = field(default_factory=collections.Counter)
    """:attr:`gaps` per ``(site_id, single)``: ``single`` for a gap of one number."""
    site_missing: collections.Counter[str] = field(default_factory=collections.Counter)
    """Numbers declared missing per site, ever (late arrivals are not taken off: see :attr:`late`)."""
    _sites: dict[str, _Site] = field(default_factory=dict, repr=False)

    def start_from(self, last_seqs: dict[str, int]) -> None:
        """The highest number already stored per site: the next one is expected after it."""
        for site_id, last in last_seqs.items():
            site = self._sites.get(site_id)
            if site is None or site.expected <= last:
                self._sites[site_id] = _Site(expected=last + 1)

    def observe(self, site_id: str, seq: int, *, ordered: bool, at: dt.datetime) -> list[Gap]:
        """One message of ``site_id`` numbered ``seq`` arrived; ``ordered`` when it left the gateway's
        outbox in order (telemetry, session event, ack), not for a status. Returns the gaps it revealed."""
        site = self._sites.get(site_id)
        if site is None:  # the first we hear of this site: nothing before it is known
            self._sites[site_id] = site = _Site(expected=seq)
        if seq < site.expected:
            self._late(site_id, site, seq)
            return []
        site.ahead.add(seq)
        self._advance(site)
        if not ordered:
            return []
        found: list[Gap] = []
        while site.expected + self.reorder_window < seq:
            # a hole at site.expected lies below an ordered message far enough ahead: declare it
            end = min((n for n in site.ahead if n > site.expected), default=seq) - 1
            gap = Gap(site_id, site.expected, end, at)
            self._declare(site, gap)
            found.append(gap)
            site.expected = end + 1
            self._advance(site)
        return found

    def observe_all(self, messages: Iterable[tuple[str, int, bool]], at: dt.datetime) -> list[Gap]:
        """:meth:`observe` each ``(site_id, seq, ordered)`` in order."""
        found: list[Gap] = []
        for site_id, seq, ordered in messages:
            found += self.observe(site_id, seq, ordered=ordered, at=at)
        return found

    @staticmethod
    def _advance(site: _Site) -> None:
        while site.expected in site.ahead:
            site.ahead.discard(site.expected)
            site.expected += 1

    def _declare(self, site: _Site, gap: Gap) -> None:
        self.gaps += 1
        self.missing += gap.size
        self.site_gaps[gap.site_id, gap.size == 1] += 1
        self.site_missing[gap.site_id] += gap.size
        self.recent.append(gap)
        site.declared_ranges.append((gap.first, gap.last))
        if gap.size == 1:
            self.singles += 1
            log.info(
                "ingestion: site %s: seq %d never arrived (a last will's reserved number or a status"
                " superseded in the gateway's outbox leave one number out; a lost message looks the same)",
                gap.site_id,
                gap.first,
            )
        else:
            log.warning(
                "ingestion: site %s: seq %d-%d never arrived: %d messages lost between the gateway and"
                " the centre (an outage longer than the broker's queue holds?)",
                gap.site_id,
                gap.first,
                gap.last,
                gap.size,
            )

    def _late(self, site_id: str, site: _Site, seq: int) -> None:
        for i, (first, last) in enumerate(site.declared_ranges):
            if first <= seq <= last:
                # split the range so the same number is not counted twice
                del site.declared_ranges[i]
                for part in ((first, seq - 1), (seq + 1, last)):
                    if part[0] <= part[1]:
                        site.declared_ranges.append(part)
                self.late += 1
                self.missing -= 1
                log.info("ingestion: site %s: seq %d arrived after it was declared missing", site_id, seq)
                return
