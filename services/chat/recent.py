"""The newest events of recently used rooms, in memory: what recoveries mostly ask for.

A recovery (a ``join`` with ``since``, or a gateway filling a gap) wants the events after
``since``, and ``since`` is usually recent. Read from JetStream, each event costs chat
~25-40 us of CPU to parse (nats-py), so a reconnect storm, where the k-th client to
rejoin a room is also sent the k-1 joins before its own, cost O(clients²) parses: 500
clients rejoining one room were ~125,000 event reads. Here each room keeps one
contiguous run of its newest events, as :class:`~services.chat.rooms.StoredEvent`: a
recovery that starts inside the run reads from the stream only the events after it
(those appended since, by another replica; from its last event on, which must still be
the stream's), and copies the rest from memory.

What goes in (:meth:`RecentEvents.add`): the events a read fetched from the stream, and
the events this replica appends. A run only grows by events that overlap it or are
known to follow its last event in the stream, so it never has a hole; where an event
of the same seq disagrees (a different stream sequence: the room was purged or the
stream recreated), the newer information replaces the run. The run is
the room's newest events up to ``max_events`` (the stream's own per-room limit, so it
never holds an event the stream dropped); rooms past ``max_bytes`` in all are forgotten,
least recently used first. Age (``max_age``) and the stream's truth (its head) are
checked by the reader, :meth:`services.chat.rooms.RoomStore.read`, not here.
``max_events`` must equal the stream's per-room limit: a larger one could serve events the
stream dropped (:meth:`~services.chat.rooms.RoomStore.follow` starts a new cache when
another replica changes that limit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from services.chat.rooms import StoredEvent

OVERHEAD = 96  # bytes an event costs beyond its frame (the StoredEvent, the list slot)


@dataclass(slots=True)
class Run:
    """Events ``lo..lo+len(events)-1`` of one room, every seq present."""

    events: list[StoredEvent] = field(default_factory=list)
    size: int = 0

    @property
    def lo(self) -> int:
        return self.events[0].seq

    @property
    def hi(self) -> int:
        return self.events[-1].seq

    def at(self, seq: int) -> StoredEvent:
        return self.events[seq - self.lo]


def _contiguous(events: Sequence[StoredEvent]) -> bool:
    """For ascending seqs (a room's events in stream order): none missing between."""
    return events[-1].seq - events[0].seq == len(events) - 1


def _cost(events: Sequence[StoredEvent]) -> int:
    return sum(len(e.frame) + OVERHEAD for e in events)


class RecentEvents:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.size = 0  # bytes held, all rooms
        self._rooms: OrderedDict[str, Run] = OrderedDict()

    def span(self, room: str) -> tuple[int, int] | None:
        """First and last seq held for ``room``, or None."""
        run = self._rooms.get(room)
        return None if run is None else (run.lo, run.hi)

    def get(self, room: str, first: int, last: int) -> list[StoredEvent] | None:
        """Events ``first..last``, all of them, or None if any is not held."""
        run = self._rooms.get(room)
        if run is None or first < run.lo or last > run.hi or first > last:
            return None
        self._rooms.move_to_end(room)
        return run.events[first - run.lo : last - run.lo + 1]

    def forget(self, room: str) -> None:
        run = self._rooms.pop(room, None)
        if run is not None:
            self.size -= run.size

    def add(
        self,
        room: str,
        events: Sequence[StoredEvent],
        *,
        newest: bool = False,
        after: int | None = None,
    ) -> None:
        """Take ``events`` (ascending seqs, none missing in between) into ``room``'s run
        if they overlap it, or continue it: right after its last event, and ``after``
        (the stream sequence of the event stored just before them, when known: an
        append's expected last, a read that started at the run's last event) is that
        event's. Adjacent seqs alone prove nothing: the room may have been purged and
        written again. ``newest``: they are the room's newest events, read just now; if
        they do not join the run, they replace it (else they are dropped: a run never
        has a hole)."""
        if not events or self.max_bytes <= 0 or not _contiguous(events):
            return
        run = self._rooms.get(room)
        if (
            run is not None and events[0].seq == run.hi + 1 and after == run.events[-1].stream_seq
        ):  # the usual: an append, or what another replica appended, right after
            run.events.extend(events)
            self._grew(room, run, _cost(events))
            return
        if run is None:
            merged = list(events)
        elif events[0].seq > run.hi or events[-1].seq < run.lo:  # no event in common
            if not (newest and events[0].seq > run.hi):
                return
            merged = list(events)
        else:
            merged = self._merge(run, events)
        self.forget(room)
        run = Run(merged)
        self._rooms[room] = run
        self._grew(room, run, _cost(merged))

    def _grew(self, room: str, run: Run, added: int) -> None:
        """Account ``added`` bytes to ``run``, cut it to ``max_events``, mark the room
        as just used, and forget the least recently used rooms while over ``max_bytes``."""
        run.size += added
        self.size += added
        excess = len(run.events) - self.max_events
        if excess > 0:
            dropped = _cost(run.events[:excess])
            del run.events[:excess]
            run.size -= dropped
            self.size -= dropped
        self._rooms.move_to_end(room)
        while self.size > self.max_bytes and self._rooms:
            self.forget(next(iter(self._rooms)))

    @staticmethod
    def _merge(run: Run, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """The union of ``run`` and ``events``, which touch or overlap it; ``events`` win
        (the run is dropped) if any seq of both names a different stored event."""
        lo, hi = max(run.lo, events[0].seq), min(run.hi, events[-1].seq)
        for seq in range(lo, hi + 1):
            if run.at(seq).stream_seq != events[seq - events[0].seq].stream_seq:
                return list(events)
        before = [e for e in events if e.seq < run.lo]
        after = [e for e in events if e.seq > run.hi]
        return [*before, *run.events, *after]
