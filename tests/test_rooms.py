"""The room service on a fake clock: no sockets, no real time."""

import base64
import errno

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ocm.server.tcrp_server import complete_body
from ocm.wire.datagram import HEARTBEAT, LEAVE, EventKind, chat, open_server, seal_client
from ocm.server.passwords import hash_password
from ocm.server.rooms import RoomService
from ocm.wire.tcrp import ProtocolError


class Peer:
    """One member as a client sees it: its COMPLETE body and its datagrams."""

    def __init__(self, test, body, ip="10.0.0.1", port=5000, room="Lobby"):
        self.test, self.body = test, body
        self.aead = AESGCM(base64.b64decode(body["key"]))
        self.address = (ip, port)
        self.room = room.encode()
        self.counter = 0

    def datagram(self, inner, counter=None):
        if counter is None:
            self.counter += 1
            counter = self.counter
        return seal_client(self.aead, self.room, self.body["token"].encode(), counter, inner)

    def send(self, inner, counter=None, source=None):
        self.test.service.datagram_received(self.datagram(inner, counter), source or self.address)

    def events(self):
        """Events delivered to this peer since the last call, decrypted."""
        mine = [d for d, a in self.test.sent if a == self.address]
        self.test.sent = [(d, a) for d, a in self.test.sent if a != self.address]
        return [open_server(self.aead, d)[1] for d in mine]


class RoomFixture(SynchronousTestCase):
    """A room service on a fake clock whose sends are recorded, and peers to drive it."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sent = []
        self.service = RoomService(self.clock, timeout=60, udp_port=9002, max_rooms=3, max_members=3,
                                   send=lambda d, a: self.sent.append((d, a)))
        self.service.start()
        self.addCleanup(lambda: self.service._sweeper.running and self.service._sweeper.stop())

    def create(self, room="Lobby", user="alice", ip="10.0.0.1", port=5000, password=None):
        m = self.service.create_room(room, user, ip, password)
        return Peer(self, complete_body(self.service, m), ip, port, room)

    def join(self, room="Lobby", user="bob", ip="10.0.0.2", port=5001):
        m = self.service.join_room(room, user, ip)
        return Peer(self, complete_body(self.service, m), ip, port, room)

    def status(self, f, *args):
        with self.assertRaises(ProtocolError) as cm:
            f(*args)
        return cm.exception.status

    def kinds(self, peer):
        return [(e.kind, e.name, e.text) for e in peer.events()]


class RoomServiceTests(RoomFixture):
    def test_complete_body(self):
        alice = self.create()
        body = alice.body
        self.assertEqual(len(bytes.fromhex(body["token"])), 16)
        self.assertEqual(len(base64.b64decode(body["key"])), 32)
        self.assertEqual((body["udp_port"], body["host"], body["members"], body["timeout"]),
                         (9002, True, ["alice"], 60))
        bob = self.join()
        self.assertEqual((bob.body["host"], bob.body["members"]), (False, ["alice", "bob"]))
        self.assertNotEqual(alice.body["token"], bob.body["token"])
        self.assertNotEqual(alice.body["key"], bob.body["key"])

    def test_names_unique_case_insensitively(self):
        self.create("Lobby")
        self.assertEqual(self.status(self.service.check_create, "LOBBY"), 409)
        self.join("lobby", "Bob")
        self.assertEqual(self.status(self.service.join_room, "LoBbY", "BOB", "10.0.0.3"), 409)
        self.assertEqual(self.status(self.service.join_room, "Straße", "x", "10.0.0.3"), 404)
        self.create("Straße", "x")
        self.assertEqual(self.status(self.service.check_create, "STRASSE"), 409)
        self.assertEqual([r["name"] for r in self.service.list_rooms()], ["Lobby", "Straße"])

    def test_capacity(self):
        for i in range(3):
            self.create(f"room{i}", "host")
        self.assertEqual(self.status(self.service.check_create, "room3"), 503)
        self.join("room0", "b")
        self.join("room0", "c")
        self.assertEqual(self.status(self.service.join_room, "room0", "d", "10.0.0.9"), 503)

    def test_list(self):
        self.create("Open")
        self.create("Locked", password=hash_password("pw"))
        self.join("Open", "bob")
        self.assertEqual(self.service.list_rooms(), [
            {"name": "Open", "members": 2, "password": False},
            {"name": "Locked", "members": 1, "password": True},
        ])

    def test_chat_sequence_and_time(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        for text in ("one", "two", "three"):
            alice.send(chat(text))
            self.clock.advance(0.5)
        for peer in (alice, bob):
            events = peer.events()
            self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in events],
                             [(1, 1, "alice", "one"), (1, 2, "alice", "two"), (1, 3, "alice", "three")])
            self.assertEqual(events[0].time_ms, 1_700_000_000_000)
            self.assertEqual(events[2].time_ms, 1_700_000_001_000)

    def test_a_failed_send_costs_one_delivery(self):
        """A full buffer or unreachable peer loses that delivery, not the others."""
        alice, bob, carol = self.create(), self.join(), self.join(user="carol", ip="10.0.0.3", port=5002)
        for peer in (alice, bob, carol):
            peer.send(HEARTBEAT)
        failures = []

        def send(data, address):
            if address == bob.address:
                raise OSError(errno.ENOBUFS, "No buffer space available")
            self.sent.append((data, address))

        self.service.send = send
        self.service.send_failed = lambda error, address: failures.append((error.errno, address))
        alice.send(chat("still here"))
        self.assertEqual(failures, [(errno.ENOBUFS, bob.address)])
        for peer in (alice, carol):
            self.assertEqual([(e.name, e.text) for e in peer.events()], [("alice", "still here")])

    def test_send_failures_are_counted_by_default(self):
        alice = self.create()
        alice.send(HEARTBEAT)
        self.service.send = lambda data, address: (_ for _ in ()).throw(OSError(errno.EAGAIN, "again"))
        alice.send(chat("lost"))
        self.assertEqual(self.service.drops["send"], 1)

    def test_a_bug_costs_one_datagram(self):
        """An unexpected exception is counted as 'internal', and the next datagram works."""
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        real = self.service._broadcast
        self.service._broadcast = lambda *a, **k: 1 / 0
        alice.send(chat("boom"))
        self.assertEqual(self.service.drops["internal"], 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.service._broadcast = real
        alice.send(chat("fine"))
        self.assertEqual([(e.name, e.text) for e in bob.events()], [("alice", "fine")])

    def test_server_counters_grow_per_recipient(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        alice.send(chat("a"))
        alice.send(chat("b"))
        counters = [open_server(alice.aead, d)[0] for d, a in self.sent if a == alice.address]
        self.assertEqual(counters, [1, 2])

    def test_joined_goes_to_others_with_an_address(self):
        alice = self.create()
        alice.send(HEARTBEAT)
        self.join()
        self.assertEqual(self.kinds(alice), [(EventKind.JOINED, "bob", "")])
        self.assertEqual(self.sent, [])  # bob has no address yet

    def test_guest_leave(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        bob.send(LEAVE)
        self.assertEqual(self.kinds(alice), [(EventKind.LEFT, "bob", "")])
        self.assertEqual(bob.events(), [])
        # The token is dead at once...
        bob.send(chat("ghost"))
        self.assertEqual(self.service.drops["unknown"], 1)
        self.assertEqual(alice.events(), [])
        # ...and the same name may come back.
        self.join(user="bob")

    def test_host_leave_closes_room(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        alice.send(LEAVE)
        for peer in (alice, bob):
            self.assertEqual(self.kinds(peer), [(EventKind.CLOSED, "alice", "the host left")])
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.service.tokens, {})
        self.assertEqual(self.status(self.service.room_for_join, "Lobby"), 404)

    def test_guest_timeout(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        for _ in range(10):
            self.clock.advance(10)
            alice.send(HEARTBEAT)
        self.assertEqual(self.kinds(alice), [(EventKind.TIMED_OUT, "bob", "")])
        self.assertEqual(list(self.service.list_rooms()), [{"name": "Lobby", "members": 1, "password": False}])

    def test_timeout_is_measured_from_last_datagram(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        self.clock.advance(59)
        bob.send(HEARTBEAT)
        alice.send(HEARTBEAT)
        self.clock.advance(59)
        self.assertEqual(len(self.service.tokens), 2)
        self.clock.advance(2)
        self.assertEqual(len(self.service.tokens), 0)

    def test_host_timeout_closes_room(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        for _ in range(7):
            self.clock.advance(10)
            bob.send(HEARTBEAT)
        self.assertEqual(self.kinds(bob), [(EventKind.CLOSED, "alice", "the host timed out")])
        self.assertEqual(self.service.rooms, {})

    def test_stop_closes_every_room(self):
        a, b = self.create("one", "a", port=1), self.create("two", "b", port=2)
        a.send(HEARTBEAT)
        b.send(HEARTBEAT)
        self.service.stop()
        for peer in (a, b):
            self.assertEqual(self.kinds(peer), [(EventKind.CLOSED, peer.body["members"][0], "the server is shutting down")])

    def test_drops_are_counted_and_harmless(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        replay = alice.datagram(chat("once"))
        self.service.datagram_received(replay, alice.address)
        self.service.datagram_received(replay, alice.address)
        alice.send(chat("late"), counter=1)
        alice.counter = 200
        alice.send(HEARTBEAT)
        alice.send(chat("stale"), counter=100)
        alice.send(chat("from elsewhere"), source=("10.9.9.9", 5000))
        self.service.datagram_received(b"\x00" * 50, alice.address)
        self.service.datagram_received(b"x" * 5000, alice.address)
        forged = bytearray(alice.datagram(chat("forged")))
        forged[-1] ^= 1
        self.service.datagram_received(bytes(forged), alice.address)
        wrong_room = seal_client(alice.aead, b"Other", alice.body["token"].encode(), 300, chat("x"))
        self.service.datagram_received(wrong_room, alice.address)
        self.assertEqual(dict(self.service.drops), {
            "replay": 2, "stale": 1, "address": 1, "malformed": 1, "oversize": 1, "auth": 1, "unknown": 1,
        })
        self.assertEqual([e.text for e in bob.events()], ["once"])
        bob.send(chat("still fine"))
        self.assertEqual([e.text for e in alice.events()], ["once", "still fine"])

    def test_room_name_in_datagram_is_case_insensitive(self):
        alice = self.create("Lobby")
        alice.room = b"LOBBY"
        alice.send(HEARTBEAT)
        alice.send(chat("hi"))
        self.assertEqual([e.text for e in alice.events()], ["hi"])

    def test_events_follow_the_latest_address(self):
        alice, bob = self.create(), self.join()
        bob.send(HEARTBEAT)
        bob.address = ("10.0.0.2", 6000)
        bob.send(HEARTBEAT)
        alice.send(chat("hi"))
        self.assertEqual([e.text for e in bob.events()], ["hi"])

    def test_ipv4_mapped_addresses_match(self):
        alice = self.create(ip="::ffff:10.0.0.1")
        alice.send(HEARTBEAT)
        alice.send(chat("hi"))
        self.assertEqual(len(alice.events()), 1)

    def test_join_checks_the_room_it_verified(self):
        self.create()
        stale = self.service.room_for_join("Lobby")
        self.service._remove(self.service.rooms["lobby"].host, timed_out=False)
        self.create()
        with self.assertRaises(ProtocolError) as cm:
            self.service.join_room("Lobby", "bob", "10.0.0.2", expected=stale)
        self.assertEqual(cm.exception.status, 404)
