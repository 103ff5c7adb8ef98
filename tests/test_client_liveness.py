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
from ocm.client.session import Membership
from ocm.wire.datagram import EventKind, Kind, encode_event, seal_server
from tests import test_client_reliable as reliable_tests

reply = reliable_tests.reply


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


class NumberedSessionTests(unittest.TestCase):
    """bob's 1.2 session against crafted server datagrams, on a task.Clock."""

    # The 1.1 tests' helpers, not their tests.
    _helpers = reliable_tests.ReliableSessionTests
    join, sent, event = _helpers.join, _helpers.sent, _helpers.event

    def setUp(self) -> None:
        self.join(backlog=0, version="1.2", host_name="alice", muted=["bob"], seq=3)

    def test_versions(self) -> None:
        self.assertTrue(self.membership.numbered)
        self.assertEqual((self.membership.host_name, self.membership.muted), ("alice", ("bob",)))
        old = Membership.from_reply("lobby", "bob", reply(version="1.1", host=True))
        self.assertEqual((old.reliable, old.numbered, old.host_name), (True, False, "bob"))
        self.assertRaises(Exception, Membership.from_reply, "lobby", "bob", reply(version="1.2", muted="bob"))

    def test_every_numbered_event_in_order_and_the_roster(self) -> None:
        self.event(EventKind.JOINED, 5, "carol")  # 4 is missing: held back
        self.assertEqual(self.screen.lines, [])
        self.clock.advance(0.2)
        self.assertIn((0.2, "HISTORY", (4, 4)), self.sent(Kind.HISTORY))
        self.event(EventKind.UNMUTED | 0x80, 4, "bob")  # the resent one
        self.assertEqual(self.screen.lines, [("UNMUTED", "bob"), ("JOINED", "carol")])
        self.assertEqual(self.session.members, ["alice", "bob", "carol"])
        self.assertFalse(self.session.roster.is_muted("bob"))
        self.event(EventKind.HOST, 6, "bob")
        self.assertTrue(self.session.is_host)

    def test_a_pong_ahead_asks_history(self) -> None:
        self.clock.advance(0.5)
        self.event(EventKind.PONG, 7)
        self.clock.advance(0.2)
        self.assertEqual(self.sent(Kind.HISTORY)[-1][2], (4, 7))

    def test_refused_line_said_and_settled(self) -> None:
        self.session.say("hi")
        self.assertEqual(self.sent(Kind.SEND), [(0.0, "SEND", (1, "hi"))])
        self.event(EventKind.REFUSED, 0, "bob", (1).to_bytes(4, "big") + b"you are muted")
        self.assertIn(("refused", "hi", "you are muted"), self.screen.lines)
        self.assertEqual(self.session.unconfirmed, 0)
        self.clock.advance(5.0)
        self.assertEqual(self.sent(Kind.SEND), [(0.0, "SEND", (1, "hi"))])  # not retried

    def test_silence_said_once_then_back(self) -> None:
        self.clock.pump([1.0] * 45)  # heartbeats every 20 s, nothing answers
        self.assertEqual(self.screen.lines.count(("not answering",)), 1)
        beats = [t for t, kind, _ in self.sent() if kind == "HEARTBEAT"]
        self.assertEqual(beats[:3], [0.0, 1.0, 3.0])  # retried sooner while unanswered
        self.event(EventKind.PONG, 3)
        self.assertEqual(self.screen.lines[-1], ("back",))

    def test_a_datagram_from_elsewhere_is_dropped(self) -> None:
        self.counter += 1
        data = seal_server(self.aead, self.counter, encode_event(EventKind.JOINED, 4, 0, b"mallory", b""))
        self.session.datagramReceived(data, ("127.0.0.1", 9003))
        self.assertEqual((self.screen.lines, self.session.dropped), ([], 1))

    def test_removed_by_the_host_stops_at_once(self) -> None:
        self.session.say("pending")
        self.event(EventKind.KICKED, 6, "bob", "spam")  # 4 and 5 never came: shown lost first
        self.assertEqual(self.screen.lines, [("lost", 2), ("KICKED", "bob")])
        self.assertTrue(self.session.closed)
        sent = len(self.udp.sent)
        self.clock.advance(30)
        self.assertEqual(len(self.udp.sent), sent)

    def test_a_command_unanswered_for_the_timeout_is_named(self) -> None:
        self.session.order("kick", "carol", "spam")
        self.assertEqual(self.sent(Kind.COMMAND)[0][1], "COMMAND")
        self.clock.pump([1.0] * 59)
        self.assertEqual(self.screen.failed, [])  # kept while the server may come back
        self.clock.pump([1.0] * 2)
        self.assertEqual(self.screen.failed, [Order("kick", "carol", "spam")])
