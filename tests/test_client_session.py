"""
The client's UDP session on its own: what it sends (sealed, counted,
heartbeats on time) and what it accepts from crafted server datagrams
(gaps, replays, forgeries), on a fake transport and C{task.Clock}.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import task
from twisted.trial import unittest

from ocm.client.errors import ClientError
from ocm.client.session import SEND_BURST, SEND_RATE, ChatSession, Membership
from ocm.client.tcrp import Reply
from ocm.wire.datagram import (
    Event,
    EventKind,
    Kind,
    encode_event,
    open_envelope,
    parse_envelope,
    parse_message,
    seal_server,
)

TIMEOUT = 6.0


class FakeUDP:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.connected: tuple[str, int] | None = None

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def event_received(self, event: Event) -> None:
        self.seen.append(event)

    def messages_lost(self, count: int) -> None:
        self.seen.append(("lost", count))

    def server_unreachable(self) -> None:
        self.seen.append("unreachable")


def reply(**changes: Any) -> Reply:
    body = {
        "token": "ab" * 16,
        "key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "udp_port": 9002,
        "host": False,
        "members": ["alice", "bob"],
        "timeout": TIMEOUT,
        "something_new": [1, 2],
    }
    body.update(changes)
    return Reply(body, "127.0.0.1")


class SessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.membership = Membership.from_reply("Lobby", "bob", reply())
        self.server_aead = AESGCM(self.membership.key)
        self.server_counter = 0
        self.listener = Recorder()
        self.session = ChatSession(self.membership, self.listener, self.clock)
        self.udp = FakeUDP()
        self.session.makeConnection(self.udp)

    def sent(self) -> list[tuple[int, Kind, str]]:
        """What the server would read: (counter, kind, text) of each datagram."""
        out = []
        for data in self.udp.sent:
            env = parse_envelope(data)
            self.assertEqual((env.room, env.token), (b"Lobby", b"ab" * 16))
            kind, text = parse_message(open_envelope(self.server_aead, env))[:2]
            out.append((env.counter, kind, text))
        return out

    def deliver(self, kind: int, name: str = "alice", text: str = "", seq: int = 0,
                counter: int | None = None, aead: AESGCM | None = None) -> bytes:
        if counter is None:
            self.server_counter += 1
            counter = self.server_counter
        event = encode_event(kind, seq, 1_700_000_000_000, name.encode(), text.encode())
        data = seal_server(aead or self.server_aead, counter, event)
        self.session.datagramReceived(data, ("127.0.0.1", 9002))
        return data

    def shown(self) -> list[Any]:
        return [
            (e.kind, e.name, e.text, e.seq) if isinstance(e, Event) else e
            for e in self.listener.seen
        ]

    # -- sending --

    def test_connects_and_heartbeats_at_once(self) -> None:
        self.assertEqual(self.udp.connected, ("127.0.0.1", 9002))
        self.assertEqual(self.sent(), [(1, Kind.HEARTBEAT, "")])

    def test_heartbeat_every_third_of_timeout(self) -> None:
        self.clock.advance(TIMEOUT / 3)
        self.clock.advance(TIMEOUT / 3)
        self.assertEqual([k for _, k, _ in self.sent()], [Kind.HEARTBEAT] * 3)

    def test_chat_stands_in_for_a_heartbeat(self) -> None:
        self.clock.advance(1)
        self.session.say("hi")
        self.clock.advance(TIMEOUT / 3 - 1)  # a tick, but we just spoke
        self.clock.advance(TIMEOUT / 3)
        self.assertEqual(
            self.sent(),
            [(1, Kind.HEARTBEAT, ""), (2, Kind.CHAT, "hi"), (3, Kind.HEARTBEAT, "")],
        )

    def test_never_silent_for_the_timeout(self) -> None:
        last = 0.0
        counted = 1
        for step in range(60):
            self.clock.advance(0.5)
            if step % 7 == 0:
                self.session.say(f"m{step}")
            if len(self.udp.sent) > counted:
                counted = len(self.udp.sent)
                self.assertLess(self.clock.seconds() - last, TIMEOUT)
                last = self.clock.seconds()
        self.assertLess(self.clock.seconds() - last, TIMEOUT)

    def test_leave_once_then_silence(self) -> None:
        self.session.leave()
        self.session.leave()
        self.clock.advance(TIMEOUT * 2)
        self.assertEqual(self.sent(), [(1, Kind.HEARTBEAT, ""), (2, Kind.LEAVE, "")])

    # -- receiving --

    def test_events_pass_and_track_members(self) -> None:
        self.deliver(EventKind.JOINED, "carol")
        self.deliver(EventKind.MESSAGE, "carol", "hi", seq=1)
        self.deliver(EventKind.LEFT, "alice")
        self.deliver(EventKind.TIMED_OUT, "CAROL")
        self.assertEqual(self.shown(), [
            (EventKind.JOINED, "carol", "", 0),
            (EventKind.MESSAGE, "carol", "hi", 1),
            (EventKind.LEFT, "alice", "", 0),
            (EventKind.TIMED_OUT, "CAROL", "", 0),
        ])
        self.assertEqual(self.session.members, ["bob"])

    def test_gap_in_seq_reported_before_the_message(self) -> None:
        self.deliver(EventKind.MESSAGE, text="one", seq=1)
        self.deliver(EventKind.MESSAGE, text="two", seq=2)
        self.deliver(EventKind.MESSAGE, text="five", seq=5)
        self.deliver(EventKind.MESSAGE, text="six", seq=6)
        self.assertEqual(self.shown(), [
            (EventKind.MESSAGE, "alice", "one", 1),
            (EventKind.MESSAGE, "alice", "two", 2),
            ("lost", 2),
            (EventKind.MESSAGE, "alice", "five", 5),
            (EventKind.MESSAGE, "alice", "six", 6),
        ])

    def test_first_message_sets_the_baseline(self) -> None:
        # Joined while the room was at message 41: nothing was lost for us.
        self.deliver(EventKind.MESSAGE, text="hello", seq=42)
        self.assertEqual(self.shown(), [(EventKind.MESSAGE, "alice", "hello", 42)])

    def test_late_message_shown_without_new_gap(self) -> None:
        self.deliver(EventKind.MESSAGE, text="one", seq=1)
        self.deliver(EventKind.MESSAGE, text="three", seq=3, counter=5)
        self.deliver(EventKind.MESSAGE, text="two", seq=2, counter=4)
        self.deliver(EventKind.MESSAGE, text="four", seq=4, counter=6)
        self.assertEqual([e if e[0] == "lost" else e[3] for e in self.shown()],
                         [1, ("lost", 1), 3, 2, 4])

    def test_replay_dropped(self) -> None:
        data = self.deliver(EventKind.MESSAGE, text="once", seq=1)
        self.session.datagramReceived(data, ("127.0.0.1", 9002))
        self.assertEqual(len(self.listener.seen), 1)
        self.assertEqual(self.session.dropped, 1)

    def test_stale_counter_dropped(self) -> None:
        self.deliver(EventKind.JOINED, "carol", counter=100)
        self.deliver(EventKind.JOINED, "dave", counter=30)
        self.assertEqual([e.name for e in self.listener.seen], ["carol"])

    def test_forgeries_dropped(self) -> None:
        self.deliver(EventKind.MESSAGE, text="forged", seq=1, aead=AESGCM(secrets.token_bytes(32)))
        good = self.deliver(EventKind.MESSAGE, text="real", seq=1)
        for bad in (good[:-1] + bytes([good[-1] ^ 1]), good[:20], b"", b"\x00\x00\x00\x01" + good[4:]):
            self.session.datagramReceived(bad, ("127.0.0.1", 9002))
        self.assertEqual([e.text for e in self.listener.seen], ["real"])
        self.assertEqual(self.session.dropped, 5)

    def test_closed_stops_heartbeats_and_leave(self) -> None:
        self.deliver(EventKind.CLOSED, "alice", "the host left")
        self.session.leave()
        self.clock.advance(TIMEOUT)
        self.assertEqual(len(self.udp.sent), 1)
        self.assertTrue(self.session.closed)

    def test_unreachable_reported(self) -> None:
        self.session.connectionRefused()
        self.assertEqual(self.listener.seen, ["unreachable"])

    # -- echoes --

    def test_wait_for_echoes(self) -> None:
        self.session.say("a")
        self.session.say("b")
        waited = self.session.wait_for_echoes(2.0)
        self.deliver(EventKind.MESSAGE, "bob", "a", seq=1)
        self.assertFalse(waited.called)
        self.deliver(EventKind.MESSAGE, "Bob", "b", seq=2)
        self.assertTrue(waited.called)

    def test_wait_for_echoes_gives_up(self) -> None:
        self.session.say("lost on the way")
        waited = self.session.wait_for_echoes(2.0)
        self.clock.advance(1.9)
        self.assertFalse(waited.called)
        self.clock.advance(0.2)
        self.assertIsNone(self.successResultOf(waited))


class MembershipTests(unittest.TestCase):
    def test_bad_bodies_refused_clearly(self) -> None:
        for change in (
            {"token": ""}, {"token": 5}, {"key": "not base64!"},
            {"key": base64.b64encode(b"short").decode()}, {"udp_port": 0},
            {"udp_port": True}, {"timeout": -1}, {"timeout": "60"},
            {"members": "alice"},
        ):
            e = self.assertRaises(ClientError, Membership.from_reply, "r", "bob", reply(**change))
            field = next(iter(change))
            self.assertIn(repr(field), e.sentence)

    def test_good_body(self) -> None:
        m = Membership.from_reply("r", "bob", reply(host=True))
        self.assertTrue(m.host)
        self.assertEqual(m.members, ("alice", "bob"))
        self.assertEqual(m.timeout, TIMEOUT)


class PacingTests(unittest.TestCase):
    """A script's burst of lines is paced below the daemon's flood limit."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.membership = Membership.from_reply("Lobby", "bob", reply())
        self.listener = Recorder()
        self.session = ChatSession(self.membership, self.listener, self.clock)
        self.udp = FakeUDP()
        self.session.makeConnection(self.udp)
        self.aead = AESGCM(self.membership.key)

    def chats(self) -> list[str]:
        out = []
        for data in self.udp.sent:
            kind, text = parse_message(open_envelope(self.aead, parse_envelope(data)))[:2]
            if kind == Kind.CHAT:
                out.append(text)
        return out

    def test_burst_then_paced_in_order(self) -> None:
        lines = [f"line {i}" for i in range(SEND_BURST + 10)]
        for line in lines:
            self.session.say(line)
        self.assertEqual(self.chats(), lines[:SEND_BURST])
        self.assertEqual(self.session.queued, 10)
        self.clock.advance(1 / SEND_RATE)
        self.assertEqual(len(self.chats()), SEND_BURST + 1)
        for _ in range(20):
            self.clock.advance(1 / SEND_RATE)
        self.assertEqual(self.chats(), lines)
        self.assertEqual(self.session.queued, 0)

    def test_echo_wait_starts_after_the_last_line_went_out(self) -> None:
        for i in range(SEND_BURST + 30):  # three seconds of pacing
            self.session.say(f"m{i}")
        waited = self.session.wait_for_echoes(2.0)
        self.clock.pump([0.1] * 29)
        self.assertEqual(self.session.queued, 1)
        self.assertFalse(waited.called)
        self.clock.pump([0.1] * 2)
        self.assertEqual(self.session.queued, 0)
        for i in range(SEND_BURST + 30):
            event = encode_event(EventKind.MESSAGE, i + 1, 0, b"bob", f"m{i}".encode())
            self.session.datagramReceived(seal_server(self.aead, i + 1, event), ("127.0.0.1", 9002))
        self.assertTrue(waited.called)

    def test_leaving_drops_the_queue(self) -> None:
        for i in range(SEND_BURST + 5):
            self.session.say(f"m{i}")
        self.session.leave()
        self.clock.advance(10)
        self.assertEqual(len(self.chats()), SEND_BURST)
        self.assertEqual(self.clock.getDelayedCalls(), [])
