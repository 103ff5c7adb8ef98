"""
Acknowledged sends (PROTOCOL 1.1 §2, SEND): per member, which msg_ids were
relayed and the seq each got, so a retransmission is answered with the same
ECHO and relayed to no one.

The replay window's idea (ocm/server/replay.py) for msg_ids, with a seq per slot
instead of a bit: C{highest} and the 64 below it, in a ring of 65 8-byte
slots (about 600 bytes, made on a member's first SEND, so a version 1
member never pays for it).
"""

from __future__ import annotations

from array import array

WINDOW = 64
SLOTS = WINDOW + 1
_EMPTY = bytes(8 * SLOTS)

NEW = 0  # relay it
STALE = -1  # more than WINDOW below the highest: drop
# (1.2) A msg_id that was answered with REFUSED (a COMMAND, or a muted
# member's SEND): a retransmission gets the same REFUSED, its reason kept in
# SendWindow.refusals.
REFUSED_SEQ = (1 << 64) - 1


class SendWindow:
    # seqs is public for the datagram path, which records the common case
    # (the next msg_id) inline: seqs[msg_id % SLOTS] = seq; highest = msg_id.
    __slots__ = ("highest", "seqs", "refusals")

    def __init__(self) -> None:
        self.highest = 0
        self.seqs = array("Q", _EMPTY)
        self.refusals: dict[int, str] | None = None  # made on the first refusal

    def refuse(self, msg_id: int, why: str) -> None:
        """Remember that C{msg_id} (new) was refused, and why: at most the window's worth."""
        self.record(msg_id, REFUSED_SEQ)
        refusals = self.refusals
        if refusals is None:
            refusals = self.refusals = {}
        refusals[msg_id] = why
        low = self.highest - WINDOW
        for old in [m for m in refusals if m < low]:
            del refusals[old]

    def check(self, msg_id: int) -> int:
        """The seq C{msg_id} was relayed as, or L{NEW}, or L{STALE}."""
        if msg_id > self.highest:
            return NEW
        if self.highest - msg_id > WINDOW:
            return STALE
        return self.seqs[msg_id % SLOTS]

    def record(self, msg_id: int, seq: int) -> None:
        """Remember that C{msg_id} (which L{check} called new) got C{seq}."""
        seqs = self.seqs
        if msg_id > self.highest:
            # Slots of the msg_ids the window moves past now belong to ids
            # not yet seen: empty them.
            jump = msg_id - self.highest
            if jump >= SLOTS:
                self.seqs = seqs = array("Q", _EMPTY)
            else:
                for m in range(self.highest + 1, msg_id):
                    seqs[m % SLOTS] = 0
            self.highest = msg_id
        seqs[msg_id % SLOTS] = seq
