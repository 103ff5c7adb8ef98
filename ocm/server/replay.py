"""
The receive window for client counters (PROTOCOL §2): each counter is
accepted once, and nothing more than C{WINDOW} below the highest accepted.
"""

from __future__ import annotations

WINDOW = 64


class ReplayWindow:
    """
    A sliding bitmap, as IPsec and DTLS keep one: bit i set means counter
    C{highest - i} was accepted. L{check} is separate from L{accept} so a
    replay is refused before the cost of decryption, and the window moves
    only for datagrams that authenticated.
    """

    __slots__ = ("highest", "_seen")

    def __init__(self) -> None:
        self.highest = 0
        self._seen = 0

    def check(self, counter: int) -> str | None:
        """None if C{counter} may be accepted, else the drop reason."""
        if counter > self.highest:
            return None
        behind = self.highest - counter
        if behind > WINDOW:
            return "stale"
        if self._seen >> behind & 1:
            return "replay"
        return None

    def accept(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            # A jump past the window forgets every bit; shifting by it would
            # build an integer of up to 2**64 bits (a client picks the jump).
            if shift > WINDOW:
                self._seen = 1
            else:
                self._seen = ((self._seen << shift) | 1) & ((1 << (WINDOW + 1)) - 1)
            self.highest = counter
        else:
            self._seen |= 1 << (self.highest - counter)
