"""
The client's protocol 1.1 delivery on an injected clock: SEND retransmitted
on a schedule from the measured round trip and given up after GIVE_UP;
ECHO matched by msg_id; the backlog asked for on joining; gaps repaired by
HISTORY after a short reorder wait; every seq shown once, in order; a gap
shown once only when repair failed or the server said EXPIRED. Then the
property: under any loss, duplication and reordering the retries cover,
every line is shown exactly once, in seq order, by every member.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial import unittest

from ocm.client import reliable
from ocm.client.reliable import GIVE_UP, HISTORY_TRIES, PROBE_SPAN, Outbox, RoundTrip, Sequencer
from ocm.client.session import SEND_BURST, SEND_RATE, ChatSession, Membership
from ocm.client.tcrp import Reply
from ocm.wire.datagram import EventKind, Kind, encode_event, open_envelope, parse_envelope, read_message, seal_server
from tests.simserver import DELAY, DELIVER, DROP, DUPLICATE, Network, Screen, SimServer, run_until


class RoundTripTests(unittest.TestCase):
    def test_timeout_from_samples_and_backoff(self) -> None:
        rtt = RoundTrip()
        self.assertEqual([rtt.timeout(n) for n in (1, 2, 3)], [0.5, 1.0, 1.0])
        rtt.sample(0.001)  # loopback: the floor holds
        self.assertEqual(rtt.rto, reliable.MIN_RTO)
        self.assertEqual([rtt.timeout(n) for n in (1, 2, 3, 4, 5)], [0.2, 0.4, 0.8, 1.0, 1.0])
        for _ in range(20):
            rtt.sample(2.0)  # a slow path: never retried faster than it answers
        self.assertGreaterEqual(rtt.timeout(1), 2.0)
        self.assertEqual(rtt.timeout(4), rtt.rto)


class OutboxTests(unittest.TestCase):
    def test_one_line_in_flight_keeps_the_order(self) -> None:
        box = Outbox(RoundTrip())
        box.add("first")
        box.add("second")
        self.assertEqual(box.take(0.0).text, "first")
        self.assertIsNone(box.take(0.1))  # not before first is echoed
        self.assertEqual(box.take(0.5).text, "first")  # retransmitted
        box.acknowledge(1, 0.6)
        self.assertEqual(box.take(0.6).text, "second")

    def test_window_bounds_what_is_in_flight(self) -> None:
        self.assertRaises(ValueError, Outbox, RoundTrip(), window=65)
        box = Outbox(RoundTrip(), window=64)
        for i in range(100):
            box.add(f"l{i}")
        sent = [box.take(0.0) for _ in range(100)]
        self.assertEqual([l.msg_id for l in sent if l], list(range(1, 65)))
        self.assertIsNone(sent[64])
        self.assertEqual(box.acknowledge(1, 0.1), ("l0", False))
        line = box.take(0.1)
        self.assertEqual((line.msg_id, line.text), (65, "l64"))

    def test_duplicate_and_late_echoes(self) -> None:
        box = Outbox(RoundTrip())
        box.add("a")
        box.take(0.0)
        self.assertEqual(box.acknowledge(1, 0.05), ("a", False))
        self.assertIsNone(box.acknowledge(1, 0.06))  # a duplicate ECHO
        self.assertIsNone(box.acknowledge(9, 0.06))  # never sent
        box.add("b")
        box.take(1.0)
        self.assertEqual([l.text for l in box.give_ups(1.0 + GIVE_UP)], ["b"])
        self.assertEqual((box.delivered, box.failed), (1, 1))
        self.assertEqual(box.acknowledge(2, 12.0), ("b", True))  # delivered after all
        self.assertEqual((box.delivered, box.failed), (2, 0))

    def test_karn_no_sample_from_a_retransmitted_line(self) -> None:
        rtt = RoundTrip()
        box = Outbox(rtt)
        box.add("a")
        box.take(0.0)
        box.take(0.5)
        box.acknowledge(1, 0.51)
        self.assertIsNone(rtt.srtt)


class SequencerTests(unittest.TestCase):
    def test_span_bounds_what_is_tracked(self) -> None:
        seq: Sequencer[str] = Sequencer(1, 0, 0.0, RoundTrip())
        seq.receive(1, "one", 0.0)
        seq.receive(2**62, "far", 0.0)  # an absurd jump costs MAX_SPAN entries, no more
        self.assertLessEqual(len(seq.asks), reliable.MAX_SPAN)
        shown = seq.shown()
        self.assertEqual(shown[0].item, "one")
        self.assertEqual(shown[1].lost, 2**62 - 1 - reliable.MAX_SPAN)


TIMEOUT = 60.0


def reply(version: str | None = "1.1", **changes: Any) -> Reply:
    body: dict[str, Any] = {
        "token": "ab" * 16,
        "key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "udp_port": 9002, "host": False, "members": ["alice", "bob"], "timeout": TIMEOUT,
        "room": "Lobby", "seq": 0, "history": 100,
    }
    if version is not None:
        body["version"] = version
    body.update(changes)
    return Reply(body, "127.0.0.1")


class FakeUDP:
    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.clock: task.Clock | None = None

    def connect(self, host: str, port: int) -> None:
        pass

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((self.clock.seconds(), data))


class ReliableSessionTests(unittest.TestCase):
    """bob's session against crafted server datagrams."""

    def join(self, backlog: int = 20, **changes: Any) -> None:
        self.clock = task.Clock()
        self.membership = Membership.from_reply("lobby", "bob", reply(**changes))
        self.aead = AESGCM(self.membership.key)
        self.counter = 0
        self.screen = Screen()
        self.session = ChatSession(self.membership, self.screen, self.clock, backlog=backlog)
        self.udp = FakeUDP()
        self.udp.clock = self.clock
        self.session.makeConnection(self.udp)

    def setUp(self) -> None:
        self.join()

    def sent(self, *kinds: int) -> list[tuple[Any, ...]]:
        """(time, kind, text or msg_id/range) of what bob sent, of the given kinds."""
        out = []
        for when, data in self.udp.sent:
            m = read_message(open_envelope(self.aead, parse_envelope(data)))
            if kinds and m.kind not in kinds:
                continue
            detail: Any = {Kind.SEND: (m.number, m.text), Kind.HISTORY: (m.number, m.last)}.get(m.kind, m.text)
            out.append((round(when, 3), Kind(m.kind).name, detail))
        return out

    def event(self, kind: int, seq: int = 0, name: str = "alice", text: str | bytes = "") -> None:
        self.counter += 1
        body = text if isinstance(text, bytes) else text.encode()
        data = seal_server(self.aead, self.counter, encode_event(kind, seq, 1_700_000_000_000, name.encode(), body))
        self.session.datagramReceived(data, ("127.0.0.1", 9002))

    def message(self, seq: int, text: str = "", kind: int = EventKind.MESSAGE) -> None:
        self.event(kind, seq, "alice", text or f"m{seq}")

    def echo(self, seq: int, msg_id: int) -> None:
        self.event(EventKind.ECHO, seq, "bob", msg_id.to_bytes(4, "big"))

    def seqs(self) -> list[Any]:
        return [line[1] if line[0] in ("MESSAGE", "HISTORY") else line for line in self.screen.lines]

    # -- joining ----------------------------------------------------------------

    def test_membership_reads_the_new_keys(self) -> None:
        m = self.membership
        self.assertEqual((m.reliable, m.seq, m.history, m.room), (True, 0, 100, "Lobby"))
        for bad in ({"seq": -1}, {"seq": "3"}, {"history": True}):
            self.assertRaises(Exception, Membership.from_reply, "lobby", "bob", reply(**bad))
        self.assertFalse(Membership.from_reply("lobby", "bob", reply(version=None)).reliable)
        self.assertFalse(Membership.from_reply("lobby", "bob", reply(version="one")).reliable)
        self.assertTrue(Membership.from_reply("lobby", "bob", reply(version="1.2")).reliable)
        # A room name that is not the one asked for is not taken.
        self.assertEqual(Membership.from_reply("lobby", "bob", reply(room="Other")).room, "lobby")

    def test_backlog_asked_for_at_once_and_shown_as_earlier(self) -> None:
        self.join(backlog=20, seq=30)
        self.assertEqual(self.sent(), [(0, "HEARTBEAT", ""), (0, "HISTORY", (11, 30))])
        self.message(31, "live")  # a live message overtakes the backlog: held back
        self.assertEqual(self.screen.lines, [])
        for seq in range(11, 31):
            self.message(seq, kind=EventKind.HISTORY)
        self.assertEqual(self.seqs(), list(range(11, 31)) + [("earlier done",), 31])
        self.assertEqual({line[0] for line in self.screen.lines[:20]}, {"HISTORY"})
        self.assertEqual(self.screen.lines[-1][0], "MESSAGE")

    def test_backlog_bounded_by_the_room(self) -> None:
        for changes, expected in (
            ({"seq": 30, "history": 5}, [(26, 30)]),  # the room keeps five
            ({"seq": 3}, [(1, 3)]),  # only three ever said
            ({"seq": 0}, []),
        ):
            self.join(backlog=20, **changes)
            self.assertEqual([d for _, _, d in self.sent(Kind.HISTORY)], expected)
        self.join(backlog=0, seq=30)
        self.assertEqual(self.sent(Kind.HISTORY), [])
        self.message(31)
        self.assertEqual(self.seqs(), [31])

    def test_expired_backlog_is_skipped_silently(self) -> None:
        self.join(backlog=5, seq=10)
        self.event(EventKind.EXPIRED, 9)
        self.message(9, kind=EventKind.HISTORY)
        self.message(10, kind=EventKind.HISTORY)
        self.assertEqual(self.seqs(), [9, 10, ("earlier done",)])

    # -- sending ------------------------------------------------------------------

    def test_send_then_echo_shows_the_line_once(self) -> None:
        self.session.say("hi")
        self.assertEqual(self.sent(Kind.SEND, Kind.CHAT), [(0, "SEND", (1, "hi"))])
        self.clock.advance(0.01)
        self.echo(1, 1)
        self.echo(1, 1)  # a duplicate ECHO
        self.clock.advance(GIVE_UP * 2)
        self.assertEqual(self.screen.lines, [("MESSAGE", 1, "bob", "hi")])
        self.assertEqual(len(self.sent(Kind.SEND)), 1)  # never retransmitted
        self.assertEqual(self.session.undelivered, 0)

    def test_retransmit_schedule_then_give_up(self) -> None:
        self.clock.advance(1.0)
        self.session.say("anyone?")
        run_until(self.clock, lambda: False, GIVE_UP + 5)
        times = [when - 1.0 for when, _, _ in self.sent(Kind.SEND)]
        # From the initial timeout (no round trip measured yet), doubling to
        # the cap of one second, until GIVE_UP seconds after the first try.
        expected = [0.0, 0.5] + [0.5 + n for n in range(1, 10)]
        self.assertEqual(len(times), len(expected))
        for got, want in zip(times, expected):
            self.assertLess(abs(got - want), 0.002, times)
        self.assertEqual({d for _, _, d in self.sent(Kind.SEND)}, {(1, "anyone?")})
        self.assertEqual(self.screen.failed, ["anyone?"])
        self.assertEqual(self.session.undelivered, 1)

    def test_paced_and_one_at_a_time_with_prompt_echoes(self) -> None:
        wakes = []
        woken = self.session._woken
        self.session._woken = lambda: (wakes.append(self.clock.seconds()), woken())[1]
        echoed = set()

        def echo_all() -> None:
            for _, _, (msg_id, _) in self.sent(Kind.SEND):
                if msg_id not in echoed:
                    echoed.add(msg_id)
                    self.echo(msg_id, msg_id)

        for i in range(SEND_BURST + 10):
            self.session.say(f"l{i}")
            echo_all()
        for _ in range(300):
            self.clock.advance(0.01)
            echo_all()
        sends = self.sent(Kind.SEND)
        self.assertEqual([d for _, _, d in sends], [(i + 1, f"l{i}") for i in range(SEND_BURST + 10)])
        self.assertEqual(len([t for t, _, _ in sends if t == 0]), SEND_BURST)  # then the pace
        self.assertLessEqual(sends[-1][0], 10 / SEND_RATE + 0.05)
        self.assertLess(len(wakes), 40)  # woken when something is due, not in a loop

    def test_timeout_follows_the_measured_round_trip(self) -> None:
        self.session.say("one")
        self.clock.advance(0.04)
        self.echo(1, 1)
        self.session.say("two")
        run_until(self.clock, lambda: False, 2.0)
        times = [round(when - 0.04, 2) for when, _, (msg_id, _) in self.sent(Kind.SEND) if msg_id == 2]
        self.assertEqual(times[:4], [0.0, 0.2, 0.6, 1.4])

    def test_echoes_matched_by_msg_id_shown_in_seq_order(self) -> None:
        self.session.outbox.window = 2
        self.session.say("a")
        self.session.say("b")
        self.echo(2, 2)  # b's echo first, and b got seq 2: held for seq 1
        self.assertEqual(self.screen.lines, [])
        self.echo(1, 1)
        self.assertEqual(self.screen.messages(), [(1, "bob", "a"), (2, "bob", "b")])

    def test_late_echo_after_give_up_still_shows_the_line(self) -> None:
        self.session.say("slow")
        self.clock.advance(0.1)
        self.message(1)  # the server is there...
        self.clock.pump([0.1] * int(GIVE_UP / 0.1 + 2))
        self.assertEqual(self.screen.failed, ["slow"])
        self.echo(2, 1)
        self.assertEqual(self.screen.late, ["slow"])
        self.assertEqual(self.screen.messages(), [(1, "alice", "m1"), (2, "bob", "slow")])
        self.assertEqual(self.session.undelivered, 0)

    def test_silent_server_gives_up_the_rest(self) -> None:
        self.clock.advance(1.0)
        self.session.say("first")
        self.clock.advance(4.0)
        for i in range(3):
            self.session.say(f"more {i}")
        self.clock.pump([0.1] * 70)
        self.assertEqual(self.screen.failed, ["first"])
        self.assertIn(("silent", 3), self.screen.lines)
        self.assertEqual(self.session.undelivered, 4)
        settled = self.session.settled()
        self.assertTrue(settled.called)

    def test_settled_waits_for_echoes_and_repairs(self) -> None:
        self.session.say("x")
        settled = self.session.settled()
        self.message(2)  # seq 1 missing
        self.echo(3, 1)
        self.assertFalse(settled.called)  # 1 is still being repaired
        self.message(1, kind=EventKind.HISTORY)
        self.assertTrue(settled.called)

    def test_leaving_counts_unconfirmed_lines(self) -> None:
        self.session.say("in flight")
        self.session.leave()
        self.assertEqual(self.session.undelivered, 1)
        self.assertEqual(self.sent()[-1][1], "LEAVE")

    def test_closed_gives_up_and_shows_what_came_before(self) -> None:
        self.session.say("too late")
        self.message(1)
        self.message(3)
        settled = self.session.settled()
        self.event(EventKind.CLOSED, 0, "alice", "the host left")
        self.assertTrue(settled.called)
        self.assertEqual(self.seqs(), [1, ("lost", 1), 3, ("CLOSED", "alice")])
        self.assertEqual(self.session.undelivered, 1)

    # -- receiving ---------------------------------------------------------------

    def test_gap_repaired_after_the_reorder_wait(self) -> None:
        self.message(1)
        self.message(3)
        self.assertEqual(self.seqs(), [1])
        self.clock.advance(reliable.REORDER_WAIT - 0.01)
        self.assertEqual(self.sent(Kind.HISTORY), [])  # a late datagram may still come
        self.clock.advance(0.02)
        self.assertEqual([d for _, _, d in self.sent(Kind.HISTORY)], [(2, 2)])
        self.message(2, kind=EventKind.HISTORY)
        self.assertEqual(self.seqs(), [1, 2, 3])
        self.assertEqual([line[0] for line in self.screen.lines], ["MESSAGE"] * 3)

    def test_reordered_datagram_needs_no_repair(self) -> None:
        self.message(1)
        self.message(3)
        self.clock.advance(0.1)
        self.message(2)
        self.clock.advance(0.5)
        self.assertEqual(self.seqs(), [1, 2, 3])
        self.assertEqual(self.sent(Kind.HISTORY), [])

    def test_history_and_live_duplicates_shown_once(self) -> None:
        self.message(1)
        self.message(3)
        self.clock.advance(0.2)
        self.message(2, kind=EventKind.HISTORY)
        self.message(2)  # the live one, late
        self.message(2, kind=EventKind.HISTORY)  # answer to a second request
        self.message(3)
        self.message(1, kind=EventKind.HISTORY)
        self.assertEqual(self.seqs(), [1, 2, 3])
        self.assertEqual(self.session.sequencer.duplicates, 4)

    def test_repair_retried_then_gap_shown_once(self) -> None:
        self.message(1)
        self.message(3)
        run_until(self.clock, lambda: False, 15.0)
        asks = [when for when, _, d in self.sent(Kind.HISTORY) if d == (2, 2)]
        self.assertEqual(len(asks), HISTORY_TRIES)
        waits = [round(b - a, 3) for a, b in zip(asks, asks[1:])]
        self.assertEqual(waits, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # backing off to the cap
        self.assertEqual(self.seqs(), [1, ("lost", 1), 3])
        self.message(2)  # too late: not shown out of order, nor twice
        self.assertEqual(self.seqs(), [1, ("lost", 1), 3])

    def test_expired_shown_once(self) -> None:
        self.message(1)
        self.message(5)
        self.clock.advance(0.2)
        self.assertEqual([d for _, _, d in self.sent(Kind.HISTORY)], [(2, 4)])
        self.event(EventKind.EXPIRED, 4)
        self.event(EventKind.EXPIRED, 4)
        self.message(4, kind=EventKind.HISTORY)
        self.clock.advance(30)
        self.assertEqual(self.seqs(), [1, ("lost", 2), 4, 5])

    def test_tail_probe_finds_a_lost_last_message(self) -> None:
        self.message(1)
        self.clock.advance(reliable.PROBE_DELAYS[0])
        self.assertEqual([d for _, _, d in self.sent(Kind.HISTORY)], [(2, 1 + PROBE_SPAN)])
        self.message(2, kind=EventKind.HISTORY)
        self.assertEqual(self.seqs(), [1, 2])
        self.assertEqual(self.screen.lines[-1][0], "MESSAGE")  # live, repaired: not "earlier"

    def test_tail_probes_back_off_and_stop(self) -> None:
        self.message(1)
        self.clock.pump([0.5] * 200)
        probes = [when for when, _, _ in self.sent(Kind.HISTORY)]
        self.assertEqual(len(probes), len(reliable.PROBE_DELAYS))
        self.assertEqual([round(b - a) for a, b in zip(probes, probes[1:])], list(reliable.PROBE_DELAYS[1:]))

    # -- version 1 --------------------------------------------------------------------

    def test_version_1_server_gets_no_1_1_kinds(self) -> None:
        self.join(version=None, seq=30)
        self.session.say("plain")
        self.message(1)
        self.message(5)  # a gap: shown at once, no HISTORY
        self.clock.advance(GIVE_UP * 3)
        kinds = {kind for _, kind, _ in self.sent()}
        self.assertEqual(kinds, {"HEARTBEAT", "CHAT"})
        self.assertEqual(self.seqs(), [1, ("lost", 3), 5])


# The property: a network that drops, duplicates and delays datagrams, both
# ways, but drops few enough that the retries cover (a line gets 11 tries, a
# repair 8, a tail message 5 probes).
MAX_DROPS = 4


def bounded_drops(fates: list[int]) -> list[int]:
    out, drops = [], 0
    for fate in fates:
        if fate == DROP:
            drops += 1
            if drops > MAX_DROPS:
                fate = DELIVER
        out.append(fate)
    return out


class PropertyTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        fates=st.lists(st.sampled_from([DELIVER, DELIVER, DROP, DUPLICATE, DELAY]), max_size=150).map(bounded_drops),
        said=st.lists(st.tuples(st.booleans(), st.floats(0, 3)), min_size=1, max_size=20),
        earlier=st.integers(0, 5),
    )
    def test_every_line_shown_once_in_seq_order(
        self, fates: list[int], said: list[tuple[bool, float]], earlier: int
    ) -> None:
        clock = task.Clock()
        server = SimServer(clock, Network(clock, fates))
        # A room with some history, so the backlog is fetched through the same loss.
        host = Screen()
        sessions = {"alice": (server.join("alice", host, backlog=3), host)}
        for i in range(earlier):
            server._relay(server.members[sessions["alice"][0].membership.token], f"before {i}", exclude=None)
        bob = Screen()
        sessions["bob"] = (server.join("bob", bob, backlog=3), bob)
        for i, (by_alice, at) in enumerate(said):
            session = sessions["alice" if by_alice else "bob"][0]
            clock.callLater(at, session.say, f"line {i}")
        total = earlier + len(said)

        def done() -> bool:
            return all(
                len(screen.messages()) >= (total if name == "alice" else len(said) + min(3, earlier))
                and session.outbox.settled
                for name, (session, screen) in sessions.items()
            )

        run_until(clock, done, 60.0)
        # Every line was relayed once, and each sender was told so.
        self.assertEqual(server.relayed, list(range(1, total + 1)))
        for name, (session, screen) in sessions.items():
            self.assertEqual((session.outbox.failed, screen.failed), (0, []), name)
            shown = screen.messages()
            first = 1 if name == "alice" else max(1, earlier - 2)
            self.assertEqual([seq for seq, _, _ in shown], list(range(first, total + 1)), name)
            self.assertNotIn("lost", [line[0] for line in screen.lines], name)
            # Each member's lines once, in the order said.
            for who in ("alice", "bob"):
                texts = [text for _, by, text in shown if by == who and not text.startswith("before")]
                mine = [f"line {i}" for i, (a, _) in sorted(enumerate(said), key=lambda e: e[1][1])
                        if a == (who == "alice")]
                self.assertEqual(texts, mine, name)
