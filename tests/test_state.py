"""
Rooms kept across a restart (ocm.server.state, PROTOCOL 1.2 §4): a round
trip of every piece of state on a fake clock, the nonce argument (a state
restored at most once, never an old copy after a newer one), and a real
daemon stopped and started again under a UDP member that carries on.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from ocm.server import passwords, state
from ocm.server.rooms import RoomService
from ocm.server.tcrp_server import complete_body
from ocm.wire.datagram import HEARTBEAT, EventKind, command, history, send
from ocm.wire.tcrp import Status
from tests import wire
from tests.daemon import DaemonMixin
from tests.test_rooms import Peer

K = EventKind


class Browser:
    def __init__(self) -> None:
        self.events = []

    def deliver(self, event) -> None:
        self.events.append(event)


class Fixture(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sent: list = []
        self.dir = Path(self.mktemp())
        self.service = self.make()

    def make(self) -> RoomService:
        return RoomService(self.clock, timeout=60, udp_port=9002, send=lambda d, a: self.sent.append((d, a)))

    def peer(self, member, port: int) -> Peer:
        p = Peer(self, complete_body(self.service, member), member.ip, port, member.room.name)
        p.send(HEARTBEAT)
        p.events()
        return p

    def restart(self, gap: float = 2.0) -> None:
        """Stop keeping rooms, save, and restore into a new room service."""
        self.service.stop(keep=True)
        state.save(self.service, self.dir, self.clock.seconds())
        self.clock.advance(gap)
        self.service = self.make()
        saved = state.take(self.dir, self.clock.seconds())
        state.restore(self.service, saved, self.clock.seconds())


class RoundTripTests(Fixture):
    def test_a_room_and_its_members_carry_on_after_a_restart(self):
        s = self.service
        hashed = passwords.hash_password("sesame")
        alice = self.peer(s.create_room("Lobby", "alice", "10.0.0.1", hashed, version="1.2"), 5000)
        bob = self.peer(s.join_room("Lobby", "bob", "10.0.0.2", version="1.2"), 5001)
        carol = self.peer(s.join_room("Lobby", "carol", "10.0.0.3", version="1.2"), 5002)
        old = self.peer(s.join_room("Lobby", "old", "10.0.0.4"), 5003)  # 1.1: cannot be kept
        page = Browser()
        s.join_room("Lobby", "page", "10.0.0.5", transport=page, version="1.2")
        alice.send(send(1, "before"))
        alice.send(command(2, "mute", "carol"))
        alice.send(command(3, "ban", "mallory"))
        for p in (alice, bob, carol, old):
            p.events()
        page.events.clear()
        events_before = s.rooms["lobby"].events

        self.service.stop(keep=True)
        self.assertEqual([(e.kind, e.text) for e in old.events()], [(K.CLOSED, "the server is restarting")])
        self.assertEqual([e.kind for e in page.events], [K.LEFT, K.CLOSED])
        # The kept members are told the two left, then that the server restarts.
        self.assertEqual([(e.kind, e.name) for e in bob.events()],
                         [(K.LEFT, "old"), (K.LEFT, "page"), (K.RESTARTING, "")])
        alice.events(), carol.events()
        sent_before = s.rooms["lobby"].members["bob"].sent
        # Nothing is served or sent once stopping, so the saved counters are the last used.
        bob.send(send(1, "while stopping"))
        self.assertEqual((bob.events(), s.drops["stopping"]), ([], 1))
        rooms, members = state.save(s, self.dir, self.clock.seconds())
        self.assertEqual((rooms, members), (1, 3))
        self.assertEqual(stat.S_IMODE(os.stat(self.dir / state.STATE_FILE).st_mode), 0o600)

        self.clock.advance(3)
        self.service = new = self.make()
        state.restore(new, state.take(self.dir, self.clock.seconds()), self.clock.seconds())
        room = new.rooms["lobby"]
        self.assertEqual((room.host.name, room.events, room.seq), ("alice", events_before + 2, 1))
        self.assertEqual(sorted(room.members), ["alice", "bob", "carol"])
        self.assertTrue(room.members["carol"].muted)
        # Same tokens and keys: bob talks on, alice hears it with the next seq.
        bob.send(send(1, "after"))
        [echo] = bob.events()
        self.assertEqual((echo.kind, echo.seq), (K.ECHO, room.events))
        self.assertEqual([(e.kind, e.seq, e.text) for e in alice.events()], [(K.MESSAGE, room.events, "after")])
        self.assertGreater(room.members["bob"].sent, sent_before)
        # The SEND window came along: alice's msg_id 1 is a repeat, not new.
        alice.send(send(1, "before"))
        self.assertEqual([(e.kind, e.seq) for e in alice.events()], [(K.ECHO, 5)])  # after four JOINEDs
        # So did the replay windows: an old datagram of bob's is refused.
        bob.send(HEARTBEAT, counter=1)
        self.assertEqual(new.drops["replay"], 1)
        # History, the mute, the ban and the password.
        bob.send(history(1, 100))
        self.assertIn((K.MESSAGE, "before"), [(e.kind, e.text) for e in bob.events()])
        carol.events()
        carol.send(send(1, "may I?"))
        self.assertEqual([e.kind for e in carol.events()], [K.REFUSED])
        with self.assertRaises(Exception) as banned:
            new.join_room("Lobby", "mallory", "10.0.0.9")
        self.assertEqual(banned.exception.status, Status.FORBIDDEN)
        self.assertTrue(passwords.verify_password("sesame", room.password))
        self.assertEqual((new.member_count, new.rooms_by_address["10.0.0.1"]), (3, 1))

    def test_a_room_whose_host_cannot_be_kept_is_closed_as_before(self):
        s = self.service
        old = self.peer(s.create_room("Old", "host", "10.0.0.1", None), 5000)
        guest = self.peer(s.join_room("Old", "g", "10.0.0.2", version="1.2"), 5001)
        self.restart()
        self.assertEqual([(e.kind, e.text) for e in guest.events()], [(K.CLOSED, "the server is shutting down")])
        self.assertEqual(self.service.rooms, {})
        old.events()


class Resumable(Browser):
    resumable = True


class ResumeTests(Fixture):
    """A browser member (1.2) kept across a restart, back as the same member when its page reconnects."""

    def room(self):
        s = self.service
        alice = self.peer(s.create_room("Lobby", "alice", "10.0.0.1", None, version="1.2"), 5000)
        page = Resumable()
        bea = s.join_room("Lobby", "bea", "10.0.0.5", transport=page, version="1.2")
        secret = s.joined_body(bea)["resume"]
        alice.events()
        return alice, page, secret

    def test_a_browser_resumes_as_the_same_member(self):
        alice, page, secret = self.room()
        events = self.service.rooms["lobby"].events
        self.restart()
        room = self.service.rooms["lobby"]
        self.assertEqual(sorted(room.members), ["alice", "bea"])
        self.assertEqual([e.kind for e in page.events], [K.RESTARTING])
        self.assertEqual(alice.events()[-1].kind, K.RESTARTING)
        back = Resumable()
        member = self.service.resume("Lobby", "bea", secret, "10.0.0.5", back)
        self.assertEqual((member.name, room.events), ("bea", events))
        alice.send(send(1, "welcome back"))
        self.assertEqual([(e.kind, e.text) for e in back.events], [(K.MESSAGE, "welcome back")])
        # A new secret for the next restart; the old one is spent.
        self.assertNotEqual(self.service.joined_body(member)["resume"], secret)

    def test_only_its_own_page_from_its_own_address_resumes_it(self):
        alice, page, secret = self.room()
        self.restart()
        for args, status in (
            (("Lobby", "bea", "wrong", "10.0.0.5"), Status.UNAUTHORIZED),
            (("Lobby", "bea", secret, "10.9.9.9"), Status.FORBIDDEN),
            (("Lobby", "alice", secret, "10.0.0.1"), Status.NOT_FOUND),  # a UDP member: nothing to resume
            (("Lobby", "nobody", secret, "10.0.0.5"), Status.NOT_FOUND),
        ):
            with self.assertRaises(Exception) as refused:
                self.service.resume(*args, Resumable())
            self.assertEqual(refused.exception.status, status, args)

    def test_a_page_that_never_comes_back_times_out(self):
        alice, page, secret = self.room()
        self.restart()
        self.service.start()
        self.addCleanup(self.service._sweeper.stop)
        for _ in range(7):
            self.clock.advance(10)
            alice.send(HEARTBEAT)
        self.assertIn((K.TIMED_OUT, "bea"), [(e.kind, e.name) for e in alice.events()])
        self.assertEqual(sorted(self.service.rooms["lobby"].members), ["alice"])


class NonceTests(Fixture):
    """docs/security.md, "No nonce twice": each test is one way a counter could go back."""

    def room(self) -> Peer:
        return self.peer(self.service.create_room("Lobby", "alice", "10.0.0.1", None, version="1.2"), 5000)

    def test_a_state_is_restored_at_most_once(self):
        self.room()
        self.service.stop(keep=True)
        state.save(self.service, self.dir, self.clock.seconds())
        copy = self.dir / "copy"
        shutil.copy(self.dir / state.STATE_FILE, copy)
        self.assertIsNotNone(state.take(self.dir, self.clock.seconds()))
        self.assertIsNone(state.take(self.dir, self.clock.seconds()))  # the file is gone
        shutil.copy(copy, self.dir / state.STATE_FILE)  # put back by hand: refused
        with self.assertRaises(state.StateError):
            state.take(self.dir, self.clock.seconds())
        self.assertFalse((self.dir / state.STATE_FILE).exists())

    def test_an_old_state_is_never_restored_after_a_newer_one(self):
        self.room()
        self.service.stop(keep=True)
        state.save(self.service, self.dir, self.clock.seconds())
        shutil.copy(self.dir / state.STATE_FILE, self.dir / "first")
        state.save(self.service, self.dir, self.clock.seconds())  # a newer one
        shutil.copy(self.dir / "first", self.dir / state.STATE_FILE)
        with self.assertRaises(state.StateError):
            state.take(self.dir, self.clock.seconds())

    def test_a_state_older_than_the_timeout_is_discarded(self):
        self.room()
        self.service.stop(keep=True)
        state.save(self.service, self.dir, self.clock.seconds())
        self.clock.advance(61)
        with self.assertRaises(state.StateError):
            state.take(self.dir, self.clock.seconds())

    def test_a_damaged_state_is_refused_not_crashed_on(self):
        self.dir.mkdir()
        (self.dir / state.STATE_FILE).write_bytes(b"{not json")
        with self.assertRaises(state.StateError):
            state.take(self.dir, self.clock.seconds())


class DaemonRestartTests(DaemonMixin, unittest.TestCase):
    timeout = 60

    async def test_a_member_carries_on_through_a_restart(self):
        data = Path(self.mktemp())
        svc = self.start_daemon("--no-tls", data_dir=data)
        tcp, udp = svc.tcp_port, svc.rooms.udp_port
        status, complete = await self.ask(wire.CREATE_ROOM, "Lobby", {"username": "alice", "version": "1.2"})
        self.assertEqual((status, complete["version"]), (200, "1.2"))
        alice = wire.Member(reactor, b"Lobby", complete, ("127.0.0.1", udp))
        self.addCleanup(alice.close)
        alice.heartbeat()
        self.assertEqual((await alice.event()).kind, K.PONG)
        await svc.stopService()
        self.assertEqual((await alice.event()).kind, K.RESTARTING)
        svc = self.start_daemon("--no-tls", "--tcp", f"tcp:{tcp}:interface=127.0.0.1", "--udp", str(udp),
                                data_dir=data)
        self.assertIn("lobby", svc.rooms.rooms)
        alice.send(alice.seal(send(1, "still here")))
        echo = await alice.event()
        self.assertEqual((echo.kind, echo.text), (K.ECHO, "\x00\x00\x00\x01"))
        status, body = await self.ask(wire.JOIN_ROOM, "Lobby", {"username": "bob"})
        self.assertEqual((status, body["members"]), (200, ["alice", "bob"]))
