"""
A room's recent messages, kept for HISTORY (PROTOCOL 1.1 §2, §4).

The store holds the very MESSAGE event bytes the room broadcast (the
plaintext inner event, before sealing): keeping them costs one reference per
message on the datagram path, and resending one costs a one-byte kind swap
and the seal every datagram pays anyway. A count and a byte budget bound it;
the oldest message goes first.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from ocm.wire.datagram import EventKind

DEFAULT_COUNT = 100
DEFAULT_BYTES = 64 * 1024
MAX_PER_REQUEST = 100  # PROTOCOL §2: at most 100 served per HISTORY request
# What a stored message costs beyond its bytes: the bytes object's header
# and its deque slot (CPython 3.11, 64-bit). Counted in the budget so a
# room of one-byte messages is bounded as tightly as one of long ones.
ENTRY_OVERHEAD = 33 + 8

_HISTORY_KIND = bytes((EventKind.HISTORY,))


class History:
    """
    Messages with seqs C{first}..C{first + len - 1}, contiguous: every seq a
    room gives out is added here, in order, so the seq of the i-th held
    message is C{first + i}.
    """

    __slots__ = ("_events", "first", "size", "max_count", "max_bytes")

    def __init__(self, max_count: int = DEFAULT_COUNT, max_bytes: int = DEFAULT_BYTES) -> None:
        self._events: deque[bytes] = deque()
        self.first = 1  # seq of _events[0], or the next seq to come if empty
        self.size = 0  # bytes held, with ENTRY_OVERHEAD each
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._events)

    def add(self, seq: int, event: bytes) -> None:
        """Keep the MESSAGE event of C{seq}, the seq after the last one kept."""
        events = self._events
        if len(events) >= self.max_count:
            # A busy room's steady state: one in, the oldest out.
            self.size -= len(events.popleft()) + ENTRY_OVERHEAD
            self.first += 1
        events.append(event)
        self.size += len(event) + ENTRY_OVERHEAD
        if self.size > self.max_bytes:
            self._evict(seq)

    def _evict(self, seq: int) -> None:
        events = self._events
        while len(events) > self.max_count or self.size > self.max_bytes:
            self.size -= len(events.popleft()) + ENTRY_OVERHEAD
            self.first += 1
        if not events:
            self.first = seq + 1

    def request(self, first: int, last: int, current: int) -> tuple[int | None, list[bytes]]:
        """
        Answer HISTORY first..last in a room whose last seq is C{current}:
        (the EXPIRED seq if part of the range is gone, else None; the
        HISTORY events to send, at most L{MAX_PER_REQUEST}, in order).
        """
        last = min(last, current)
        if first > last:
            return None, []
        oldest = self.first if self._events else current + 1
        expired = oldest if first < oldest else None
        low = max(first, oldest)
        high = min(last, low + MAX_PER_REQUEST - 1)
        if low > high:
            return expired, []
        start = low - self.first
        held = islice(self._events, start, start + high - low + 1)
        return expired, [_HISTORY_KIND + event[1:] for event in held]

    def clear(self) -> None:
        self._events.clear()
        self.size = 0
