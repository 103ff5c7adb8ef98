"""
Limits on what a client controls (issue 4), on a fake clock: token buckets,
member floods, connection caps, request rate, password guessing, deadlines.
"""

import json

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ocm.datagram import HEARTBEAT, chat
from ocm.limits import Buckets, TokenBucket
from ocm.passwords import hash_password
from ocm.rooms import RoomService
from ocm.tcrp import ReplyParser, encode_request
from ocm.tcrp_server import TCRPFactory
from tests.test_rooms import Peer


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self):
        b = TokenBucket(rate=5, burst=20, now=0)
        self.assertEqual(sum(b.take(0) for _ in range(100)), 20)
        self.assertEqual(sum(b.take(1) for _ in range(100)), 5)
        self.assertAlmostEqual(b.wait(1), 0.2)
        self.assertEqual(sum(b.take(1000) for _ in range(100)), 20)  # never more than the burst

    def test_refund(self):
        b = TokenBucket(rate=1, burst=2, now=0)
        self.assertTrue(b.take(0))
        b.refund()
        self.assertEqual(sum(b.take(0) for _ in range(10)), 2)

    def test_zero_rate_is_unlimited(self):
        b = TokenBucket(rate=0, burst=1, now=0)
        self.assertTrue(all(b.take(0) for _ in range(1000)))

    def test_buckets_forget_idle_keys_and_stay_bounded(self):
        bs = Buckets(rate=1, burst=2, max_keys=10)
        for i in range(10):
            bs.take(i, 0)
        self.assertEqual(len(bs), 10)
        bs.prune(0.5)
        self.assertEqual(len(bs), 10)  # not yet full again
        bs.prune(5)
        self.assertEqual(len(bs), 0)
        for i in range(25):
            bs.take(i, 100)
        self.assertLessEqual(len(bs), 10)


class FloodTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.sent = []
        self.service = RoomService(self.clock, member_rate=20, member_burst=40,
                                   send=lambda d, a: self.sent.append((d, a)))
        self.flooder = Peer(self, self.service.complete_body(self.service.create_room("R", "flood", "10.0.0.1", None)), room="R")
        self.calm = Peer(self, self.service.complete_body(self.service.join_room("R", "calm", "10.0.0.2")),
                         ip="10.0.0.2", room="R")

    def test_a_flood_relays_at_most_the_rate_and_others_get_through(self):
        self.calm.send(HEARTBEAT)
        for second in range(3):
            for i in range(2000):  # 2,000 datagrams a second
                self.flooder.send(chat(f"spam {i}"))
                if i == 1000:
                    self.calm.send(chat(f"hello {second}"))
            self.clock.advance(1)
        texts = [e.text for e in self.calm.events()]
        spam = [t for t in texts if t.startswith("spam")]
        # The burst of 40, then 20 a second for the two seconds after.
        self.assertEqual(len(spam), 40 + 20 * 2)
        self.assertEqual([t for t in texts if t.startswith("hello")], ["hello 0", "hello 1", "hello 2"])
        self.assertEqual(self.service.drops["flood"], 6000 - len(spam))


def status_of(transport):
    frames = ReplyParser().feed(transport.value())
    return frames[0].op, frames[0].room, json.loads(frames[0].payload)["status"]


class AdmissionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.service = RoomService(self.clock)
        self.factory = TCRPFactory(
            self.service, self.clock, max_connections=50, max_per_address=20,
            request_rate=5, request_burst=20, password_rate=3 / 60, password_burst=5,
            offload=lambda f, *a: defer.succeed(f(*a)),
        )

    def connect(self, ip="10.0.0.1", data=None):
        proto = self.factory.buildProtocol(IPv4Address("TCP", ip, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        proto.makeConnection(transport)
        if data is not None:
            proto.dataReceived(data)
        return proto, transport

    def close(self, proto):
        proto.connectionLost(None)

    def test_request_rate_per_address(self):
        answers = []
        for _ in range(200):
            proto, t = self.connect(data=encode_request(3, "", {}))
            answers.append(status_of(t))
            self.close(proto)
        self.assertEqual(answers[:20], [(3, b"", 200)] * 20)
        self.assertEqual(set(answers[20:]), {(3, b"", 429)})
        # Another address is not affected...
        proto, t = self.connect(ip="10.0.0.2", data=encode_request(3, "", {}))
        self.assertEqual(status_of(t)[2], 200)
        # ...and the first one may go on at the rate.
        self.clock.advance(1)
        statuses = []
        for _ in range(10):
            proto, t = self.connect(data=encode_request(3, "", {}))
            statuses.append(status_of(t)[2])
            self.close(proto)
        self.assertEqual(statuses, [200] * 5 + [429] * 5)

    def test_connections_per_address(self):
        held = [self.connect() for _ in range(20)]
        proto, t = self.connect()
        self.assertEqual(status_of(t), (0, b"", 429))
        self.assertTrue(t.disconnecting)
        proto, t = self.connect(ip="10.0.0.2", data=encode_request(3, "", {}))
        self.assertEqual(status_of(t)[2], 200)
        self.close(held[0][0])
        self.clock.advance(1)  # the held connections spent the request burst
        proto, t = self.connect(data=encode_request(3, "", {}))
        self.assertEqual(status_of(t)[2], 200)

    def test_connections_in_all(self):
        for i in range(50):
            self.connect(ip=f"10.0.1.{i}")
        proto, t = self.connect(ip="10.0.2.1")
        self.assertEqual(status_of(t), (0, b"", 503))

    def test_stalled_connections_dropped_at_the_deadline(self):
        stalled = [self.connect(data=b"\x05")[1] for _ in range(20)]
        proto, t = self.connect(ip="10.0.0.2", data=encode_request(1, "Lobby", {"username": "a"}))
        self.assertEqual(status_of(t)[2], 200)  # served at once
        self.clock.advance(9.9)
        self.assertFalse(any(s.disconnecting for s in stalled))
        self.clock.advance(0.2)
        self.assertTrue(all(s.disconnecting for s in stalled))
        self.assertEqual(self.factory.refusals["timeout"], 20)

    def test_password_guessing_is_slowed(self):
        self.service.create_room("Vault", "host", "10.0.0.9", hash_password("right"))

        def join(password, ip="10.0.0.1", user="guess"):
            proto, t = self.connect(ip, encode_request(2, "Vault", {"username": user, "password": password}))
            self.close(proto)
            return status_of(t)[2]

        self.assertEqual([join(f"wrong{i}") for i in range(5)], [401] * 5)
        self.assertEqual([join(f"wrong{i}") for i in range(55)], [429] * 55)
        # Even the right password waits, from that address...
        self.assertEqual(join("right"), 429)
        # ...but not from another.
        self.assertEqual(join("right", ip="10.0.0.2", user="friend"), 200)
        # A minute later, three more guesses.
        self.clock.advance(60)
        self.assertEqual([join(f"again{i}") for i in range(4)], [401, 401, 401, 429])

    def test_right_passwords_are_not_charged(self):
        self.service.create_room("Class", "teacher", "10.0.0.9", hash_password("pw"))
        statuses = []
        for i in range(10):  # a class behind one NAT address
            proto, t = self.connect("10.0.0.1", encode_request(2, "Class", {"username": f"s{i}", "password": "pw"}))
            statuses.append(status_of(t)[2])
        self.assertEqual(statuses, [200] * 10)
