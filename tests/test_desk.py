"""
The front desk (ocm.server.desk): the policy every listener shares, driven
through the TCRP listener and the WebSocket one as peers.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ocm.server.desk import FrontDesk
from ocm.server.rooms import RoomService
from ocm.server.tcrp_server import TCRPFactory
from ocm.wire.datagram import Event
from ocm.wire.tcrp import Op, ProtocolError, Request, ReplyParser, Status, encode_request


class Browser:
    """A member transport that keeps what it is handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)


def inline(f, *a):
    return defer.succeed(f(*a))


class DoorTests(SynchronousTestCase):
    """Issue 20's IPv6 lockout, at the door every listener uses."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.desk = FrontDesk(RoomService(self.clock), self.clock, offload=inline)
        self.factory = TCRPFactory(self.desk, self.desk.door("tcrp", 100, 3))

    def connect(self, host: str):
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        proto = self.factory.buildProtocol(address)
        t = StringTransport(peerAddress=address)
        proto.makeConnection(t)
        return proto, t

    def status(self, t: StringTransport) -> int:
        return json.loads(ReplyParser().feed(t.value())[0].payload)["status"]

    def test_an_ipv6_64_is_counted_out_as_it_was_counted_in(self):
        # Three hosts of one /64 fill its share; once they close, the /64
        # is free again, now and a minute later, and nothing is left over.
        for round in range(3):
            held = [self.connect(f"2001:db8::{round}:{i}") for i in range(3)]
            fourth, t = self.connect("2001:db8::ffff")
            self.assertEqual(self.status(t), Status.TOO_MANY)
            fourth.connectionLost(None)
            for proto, _ in held:
                proto.connectionLost(None)
            self.assertEqual((self.factory.active, self.factory.door.caps.per_address), (0, {}))
            self.clock.advance(60)

    def test_another_64_is_not_affected(self):
        held = [self.connect(f"2001:db8::{i}") for i in range(3)]
        proto, t = self.connect("2001:db8:0:1::1")
        proto.dataReceived(encode_request(Op.LIST_ROOMS, "", {}))
        self.assertEqual(self.status(t), Status.OK)
        for p, _ in held:
            p.connectionLost(None)

    def test_listeners_have_doors_of_their_own_and_share_the_request_rate(self):
        web = self.desk.door("web", 100, 1)
        self.assertIsNone(web.admit("10.0.0.1"))
        self.assertEqual(web.admit("10.0.0.1").status, Status.TOO_MANY)
        # TCRP's door is not web's: three from that address still get in.
        held = [self.connect("10.0.0.1") for _ in range(3)]
        self.assertEqual(self.factory.active, 3)
        for p, _ in held:
            p.connectionLost(None)
        web.release("10.0.0.1")
        self.assertEqual(web.caps.per_address, {})
        # One budget of requests per address, whichever way they come in.
        self.desk.requests.rate, self.desk.requests.burst = 1, 2
        self.desk.charge_request("10.0.0.2")
        proto, t = self.connect("10.0.0.2")
        proto.dataReceived(encode_request(Op.LIST_ROOMS, "", {}))
        self.assertEqual(self.status(t), Status.OK)
        with self.assertRaises(ProtocolError) as refused:
            self.desk.charge_request("10.0.0.2")
        self.assertEqual(refused.exception.status, Status.TOO_MANY)

    def test_a_banned_address_is_refused_at_every_door(self):
        self.desk.bans.ban("2001:db8::1", 60, self.clock.seconds())
        proto, t = self.connect("2001:db8::2")  # the same /64
        self.assertEqual(self.status(t), Status.FORBIDDEN)
        self.assertEqual(self.desk.door("irc", 10, 10).admit("2001:db8::3").status, Status.FORBIDDEN)
        self.clock.advance(61)
        self.assertIsNone(self.desk.door("web", 10, 10).admit("2001:db8::3"))


class ShareTests(SynchronousTestCase):
    """Issue 20: one address cannot hold every room, nor every seat."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.rooms = RoomService(self.clock, max_rooms=1000)
        self.desk = FrontDesk(
            self.rooms, self.clock, offload=inline, max_rooms_per_address=3, max_members_per_address=5
        )

    def ask(self, op: Op, room: str, user: str, ip: str):
        d = defer.ensureDeferred(self.desk.answer(Request(op, room, user), ip, lambda: False, Browser()))
        return self.successResultOf(d)

    def refused(self, op: Op, room: str, user: str, ip: str) -> int:
        d = defer.ensureDeferred(self.desk.answer(Request(op, room, user), ip, lambda: False, Browser()))
        return self.failureResultOf(d, ProtocolError).value.status

    def test_one_address_holds_its_share_of_rooms(self):
        for i in range(3):
            self.ask(Op.CREATE_ROOM, f"r{i}", "host", "203.0.113.5")
        self.assertEqual(self.refused(Op.CREATE_ROOM, "r3", "host", "203.0.113.5"), Status.TOO_MANY)
        self.assertEqual(self.desk.limited["rooms_per_address"], 1)
        # Another address still creates; a closed room gives its share back.
        self.ask(Op.CREATE_ROOM, "elsewhere", "x", "198.51.100.7")
        self.rooms.leave(self.rooms.rooms["r0"].host)
        self.ask(Op.CREATE_ROOM, "r3", "host", "203.0.113.5")
        for room in list(self.rooms.rooms.values()):
            self.rooms.leave(room.host)
        self.assertEqual((dict(self.rooms.rooms_by_address), dict(self.rooms.members_by_address)), ({}, {}))

    def test_one_address_holds_its_share_of_members(self):
        self.ask(Op.CREATE_ROOM, "class", "teacher", "198.51.100.7")
        answers = [self.ask(Op.JOIN_ROOM, "class", f"pupil{i}", "203.0.113.5") for i in range(5)]
        self.assertEqual(self.refused(Op.JOIN_ROOM, "class", "pupil5", "203.0.113.5"), Status.TOO_MANY)
        self.rooms.leave(answers[0].member)
        self.ask(Op.JOIN_ROOM, "class", "pupil5", "203.0.113.5")
        self.assertEqual(self.rooms.members_by_address["203.0.113.5"], 5)

    def test_the_defaults_fit_a_class_behind_one_address(self):
        desk = FrontDesk(self.rooms, self.clock, offload=inline)
        for i in range(3):
            defer.ensureDeferred(desk.answer(Request(Op.CREATE_ROOM, f"group{i}", "t"), "203.0.113.9",
                                             lambda: False, Browser()))
        for room in ("group0", "group1", "group2"):
            for i in range(30):
                self.successResultOf(defer.ensureDeferred(desk.answer(
                    Request(Op.JOIN_ROOM, room, f"p{i}"), "203.0.113.9", lambda: False, Browser()
                )))
        self.assertEqual(self.rooms.members_by_address["203.0.113.9"], 93)

    def test_udp_and_other_members_get_what_their_transport_needs(self):
        udp = self.successResultOf(defer.ensureDeferred(
            self.desk.answer(Request(Op.CREATE_ROOM, "r", "a"), "10.0.0.1", lambda: False)
        ))
        other = self.ask(Op.JOIN_ROOM, "r", "b", "10.0.0.2")
        self.assertEqual((len(udp.member.key), udp.member.aead is not None), (32, True))
        self.assertEqual((other.member.token, other.member.key, other.member.aead), ("", b"", None))
        self.assertNotIn("token", other.body)
        self.assertNotIn("key", udp.body)  # TCRP adds its own keys, not the desk
