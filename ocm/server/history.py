"""
A room's recent events, kept for HISTORY (PROTOCOL 1.1 §2, §4; 1.2 §3).

Protocol 1.2 numbers every event that changes a room (messages, joins,
leaves, time-outs, moderation, the close) in one sequence, and HISTORY
resends any of them to a 1.2 member; a 1.1 member still numbers messages
among messages and is resent only those. One store serves both views: it
holds each numbered event's bytes as the room broadcast them to 1.1
members (a MESSAGE carries its message number there, the others 0), in
event order, and the event number of each message it holds. Keeping an
event costs a reference or two on the datagram path; resending one costs a
kind byte and a seq swapped in. A count and a byte budget bound it, over
events of every kind; the oldest goes first.
"""

from __future__ import annotations

import struct
from collections import deque
from itertools import islice

from ocm.wire.datagram import RESENT, EventKind

DEFAULT_COUNT = 100
DEFAULT_BYTES = 64 * 1024
MAX_PER_REQUEST = 100  # PROTOCOL §2: at most 100 served per HISTORY request
# What a stored event costs beyond its bytes: the bytes object's header, its
# deque slot and, for a message, its event number's slot (CPython 3.11,
# 64-bit). Counted in the budget so a room of one-byte messages is bounded
# as tightly as one of long ones.
ENTRY_OVERHEAD = 33 + 8 + 8

_HISTORY_KIND = bytes((EventKind.HISTORY,))
_MESSAGE = EventKind.MESSAGE
_seq = struct.Struct(">Q").pack


class History:
    """
    Events with event numbers C{first}..C{first + len - 1}, contiguous
    (every numbered event is added, in order), and of them the messages
    with message numbers C{msg_first}.. (also contiguous).
    """

    __slots__ = ("_events", "_messages", "first", "msg_first", "size", "max_count", "max_bytes")

    def __init__(self, max_count: int = DEFAULT_COUNT, max_bytes: int = DEFAULT_BYTES) -> None:
        self._events: deque[bytes] = deque()
        self._messages: deque[int] = deque()  # the event number of each message held
        self.first = 1  # event number of _events[0], or the next to come if empty
        self.msg_first = 1  # message number of _messages[0], or the next to come if empty
        self.size = 0  # bytes held, with ENTRY_OVERHEAD each
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._events)

    @property
    def messages(self) -> int:
        return len(self._messages)

    def add(self, event_seq: int, event: bytes) -> None:
        """
        Keep numbered event C{event_seq} (the one after the last kept), as
        broadcast to 1.1 members.
        """
        events = self._events
        if event[0] == _MESSAGE:
            self._messages.append(event_seq)
        if len(events) >= self.max_count:
            # A busy room's steady state: one in, the oldest out.
            self._pop()
        events.append(event)
        self.size += len(event) + ENTRY_OVERHEAD
        while self.size > self.max_bytes and events:
            self._pop()

    def _pop(self) -> None:
        event = self._events.popleft()
        self.size -= len(event) + ENTRY_OVERHEAD
        self.first += 1
        if event[0] == _MESSAGE:
            self._messages.popleft()
            self.msg_first += 1

    def request(self, first: int, last: int, current: int) -> tuple[int | None, list[bytes]]:
        """
        The 1.1 view: answer HISTORY first..last, in message numbers, in a
        room whose last message is C{current}: (the EXPIRED seq if part of
        the range is gone, else None; the HISTORY events to send, at most
        L{MAX_PER_REQUEST}, in order).
        """
        messages = self._messages
        expired, low, high = _clamp(first, last, current, self.msg_first if messages else current + 1)
        if low > high:
            return expired, []
        events, base = self._events, self.first
        held = islice(messages, low - self.msg_first, high - self.msg_first + 1)
        return expired, [_HISTORY_KIND + events[seq - base][1:] for seq in held]

    def request_events(self, first: int, last: int, current: int) -> tuple[int | None, list[bytes]]:
        """
        The 1.2 view: HISTORY first..last in event numbers, in a room whose
        last event is C{current}; each resent event keeps its kind with
        the high bit set, and its own event number.
        """
        events = self._events
        expired, low, high = _clamp(first, last, current, self.first if events else current + 1)
        if low > high:
            return expired, []
        held = islice(events, low - self.first, high - self.first + 1)
        return expired, [
            bytes((event[0] | RESENT,)) + _seq(seq) + event[9:]
            for seq, event in zip(range(low, high + 1), held)
        ]

    def clear(self) -> None:
        self._events.clear()
        self._messages.clear()
        self.size = 0


def _clamp(first: int, last: int, current: int, oldest: int) -> tuple[int | None, int, int]:
    """(EXPIRED's seq or None, the held range to serve low..high, empty if low > high)."""
    last = min(last, current)
    if first > last:
        return None, 1, 0
    expired = oldest if first < oldest else None
    low = max(first, oldest)
    return expired, low, min(last, low + MAX_PER_REQUEST - 1)
