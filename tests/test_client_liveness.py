"""
The client's protocol 1.2 bookkeeping on times passed in: the member list,
host and muted from numbered events (L{Roster}); when the server counts as
not answering, and as back (L{Liveness}); commands and refusals in the
outbox; a seq learned from a PONG or a COMMAND's ECHO repaired as a gap.
"""

from __future__ import annotations

from twisted.trial import unittest

from ocm.client.reliable import (
    BEAT_RETRY,
    LINE_SILENCE,
    SILENT_BEAT,
    Liveness,
    Order,
    Outbox,
    Roster,
    RoundTrip,
    Sequencer,
)
from ocm.wire.datagram import EventKind


class RosterTests(unittest.TestCase):
    def test_events_keep_members_host_and_muted(self) -> None:
        r = Roster(["alice", "bob"], "alice", ["bob"])
        self.assertTrue(r.is_host("ALICE"))
        self.assertTrue(r.is_muted("bob"))
        r.apply(EventKind.JOINED, "carol")
        r.apply(EventKind.JOINED, "Carol")  # one member per casefolded name
        r.apply(EventKind.UNMUTED, "bob")
        r.apply(EventKind.MUTED, "carol")
        r.apply(EventKind.MUTED, "nobody")  # not a member: not marked
        self.assertEqual(r.members, ["alice", "bob", "carol"])
        self.assertFalse(r.is_muted("bob"))
        self.assertTrue(r.is_muted("carol"))
        self.assertFalse(r.is_muted("nobody"))
        r.apply(EventKind.HOST, "bob")
        self.assertTrue(r.is_host("bob"))
        self.assertFalse(r.is_host("alice"))
        r.apply(EventKind.KICKED, "carol")
        r.apply(EventKind.BANNED, "dave")  # a ban of an absent name changes no one
        r.apply(EventKind.LEFT, "alice")
        self.assertEqual(r.members, ["bob"])
        self.assertFalse(r.is_muted("carol"))  # a kicked member rejoining is not muted
        r.apply(EventKind.TIMED_OUT, "bob")
        self.assertIsNone(r.host)
        r = Roster(["a", "b"], "a")
        r.apply(EventKind.CLOSED, "a")
        self.assertEqual((r.members, r.host), ([], None))


class LivenessTests(unittest.TestCase):
    def test_idle_silent_after_two_intervals_and_back_once(self) -> None:
        live = Liveness(0.0, interval=10.0)
        self.assertTrue(live.beat_due(0.0))  # the first heartbeat at once
        live.beat_sent(0.0)
        self.assertTrue(live.heard(0.01) is False)  # its PONG: it was never silent
        self.assertEqual(live.next_beat, 10.0)
        self.assertFalse(live.beat_due(9.9))
        live.beat_sent(10.0)
        # Unanswered: again after 1 s, then 2, 4 ... (capped at the interval).
        self.assertEqual(live.next_beat, 10.0 + BEAT_RETRY)
        live.beat_sent(11.0)
        self.assertEqual(live.next_beat, 13.0)
        self.assertFalse(live.check(20.0, None))
        self.assertEqual(live.deadline(None), 13.0)
        self.assertTrue(live.check(20.01, None))  # two intervals after the PONG
        self.assertFalse(live.check(25.0, None))  # said once
        live.beat_sent(21.0)
        self.assertEqual(live.next_beat, 21.0 + SILENT_BEAT)  # keeps trying
        self.assertTrue(live.heard(30.0))  # back: said once
        self.assertFalse(live.heard(30.5))
        self.assertFalse(live.silent)

    def test_a_waiting_line_is_silence_after_five_seconds(self) -> None:
        live = Liveness(0.0, interval=20.0)
        live.heard(3.0)
        self.assertEqual(live.silence_at(4.0), 4.0 + LINE_SILENCE)
        self.assertEqual(live.silence_at(1.0), 3.0 + LINE_SILENCE)  # heard after it went out
        self.assertFalse(live.check(8.9, 4.0))
        self.assertTrue(live.check(9.0, 4.0))
        self.assertEqual(live.silence_at(None), 43.0)


class OutboxCommandTests(unittest.TestCase):
    def test_commands_share_the_sequence_and_refusals_settle(self) -> None:
        box = Outbox(RoundTrip(), window=4)
        box.add("hello")
        box.add(Order("kick", "bob", "spam"))
        self.assertEqual([box.take(0.0).msg_id, box.take(0.0).msg_id], [1, 2])
        self.assertEqual(box.waiting_since(), 0.0)
        self.assertEqual(box.refuse(2, 0.1), Order("kick", "bob", "spam"))
        self.assertIsNone(box.refuse(2, 0.2))  # REFUSED again: already told
        self.assertEqual(box.unsettled(), ["hello"])
        self.assertEqual(box.acknowledge(1, 0.3), ("hello", False))
        self.assertTrue(box.settled)
        self.assertEqual((box.delivered, box.failed, box.refused), (1, 0, 1))

    def test_unsettled_keeps_the_typed_order(self) -> None:
        box = Outbox(RoundTrip())
        for text in ("a", "b", "c"):
            box.add(text)
        box.take(0.0)
        self.assertEqual(box.unsettled(), ["a", "b", "c"])


class KnownSeqTests(unittest.TestCase):
    def test_a_pong_ahead_opens_a_gap_that_is_asked_for(self) -> None:
        seq: Sequencer[str] = Sequencer(5, 4, 0.0, RoundTrip(), reorder_wait=0.15)
        seq.known(7, 1.0)
        self.assertEqual(seq.poll(1.1, 4), [])  # a late datagram may still come
        self.assertEqual(seq.poll(1.2, 4), [(5, 7)])
        seq.receive(5, "JOINED carol", 1.3)
        seq.receive(6, "MUTED bob", 1.3)
        seq.known(6, 1.4)  # nothing new
        self.assertEqual([s.item for s in seq.shown()], ["JOINED carol", "MUTED bob"])
        seq.receive(7, "HOST bob", 1.5)
        self.assertTrue(seq.idle)
