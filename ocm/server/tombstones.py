"""
Tombstones (PROTOCOL 1.2 §4): for C{timeout} seconds after a 1.2 member is
removed (TIMED_OUT, CLOSED, KICKED, BANNED), its token, key and replay
window are kept, so that a datagram it sends is still authenticated and
answered, at most once a second, with the event that removed it: a client
that lost that event learns it from its next heartbeat. Nothing else is
served. Bounded in count; the oldest goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ocm.server.rooms import Member

MAX_STONES = 10_000


class Tombstone:
    __slots__ = ("member", "room_bytes", "event", "expires", "answered")

    def __init__(self, member: Member, event: bytes, expires: float) -> None:
        self.member = member
        self.room_bytes = member.room.name_bytes
        self.event = event  # the plaintext event that removed it, as it was sent
        self.expires = expires
        self.answered = float("-inf")


class Tombstones:
    def __init__(self, max_count: int = MAX_STONES) -> None:
        self.max_count = max_count
        self._stones: OrderedDict[bytes, Tombstone] = OrderedDict()

    def __len__(self) -> int:
        return len(self._stones)

    def __bool__(self) -> bool:
        return bool(self._stones)

    def add(self, member: Member, event: bytes, expires: float) -> None:
        token = member.token.encode()
        self._stones.pop(token, None)
        self._stones[token] = Tombstone(member, event, expires)
        while len(self._stones) > self.max_count:
            self._stones.popitem(last=False)

    def get(self, token: bytes) -> Tombstone | None:
        return self._stones.get(token)

    def prune(self, now: float) -> None:
        """Forget the expired (they were added in order of expiry)."""
        stones = self._stones
        while stones:
            token, stone = next(iter(stones.items()))
            if stone.expires > now:
                break
            del stones[token]

    def clear(self) -> None:
        self._stones.clear()
