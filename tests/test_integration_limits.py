"""
Issue 4's limits against a live daemon on loopback, over TLS: what a
brute-forcer, a flooder and a slow-loris meet, while others are served; and
issue 13's class behind one address, which must not be taken for any of them.
"""

import time
from pathlib import Path

from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ocm.client.errors import RequestRefused
from ocm.client.retry import retrying
from ocm.client.tcrp import Server, request
from ocm.client.trust import KnownServers, PinnedTrust
from ocm.wire.tcrp import Op
from tests import wire
from tests.daemon import DaemonMixin


class _Stall(Protocol):
    """Connects, sends what it is given, then never another byte."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.closed: defer.Deferred = defer.Deferred()
        self.received = b""

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(reactor.seconds())


class LimitTests(DaemonMixin, TestCase):
    async def stall(self, first: bytes = b"\x05") -> _Stall:
        proto = _Stall(first)
        await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.svc.tcp_port).connect(
            Factory.forProtocol(lambda: proto)
        )
        self.addCleanup(lambda: proto.transport.abortConnection() if proto.transport.connected else None)
        return proto

    async def test_rapid_requests_meet_429(self):
        self.start_daemon()
        started = reactor.seconds()
        exchanges = []
        for _ in range(200):
            exchanges.append((await self.tcrp(wire.request(wire.LIST_ROOMS, "", {}))).frames[0].body)
        elapsed = reactor.seconds() - started
        statuses = [e["status"] for e in exchanges]
        # The burst of 50, then 5 a second.
        self.assertEqual(statuses[:50], [200] * 50)
        self.assertIn(429, statuses)
        self.assertLessEqual(statuses.count(200), 50 + 5 * elapsed + 1)
        self.assertEqual({e.get("retry_after") for e in exchanges if e["status"] == 429}, {1})
        # Someone else is served at once.
        self.assertEqual((await self.ask(wire.LIST_ROOMS, "", {}, bind="127.0.0.2"))[0], 200)

    async def test_sixty_wrong_passwords_meet_429(self):
        self.start_daemon()
        await self.enter("Vault", "host", "correct horse", create=True)
        statuses = []
        for i in range(60):
            statuses.append((await self.ask(wire.JOIN_ROOM, "Vault", {"username": "mallory", "password": f"guess{i}"}))[0])
        self.assertEqual(statuses[:5], [401] * 5)
        self.assertEqual(set(statuses[5:]), {429})
        status, body = await self.ask(wire.JOIN_ROOM, "Vault", {"username": "bob", "password": "correct horse"},
                                      bind="127.0.0.2")
        self.assertEqual(status, 200)

    async def test_a_guesser_changing_names_is_held_to_the_address_budget(self):
        self.start_daemon()
        await self.enter("Vault", "host", "correct horse", create=True)
        replies = []
        began = time.monotonic()
        for i in range(55):
            exchange = await self.tcrp(wire.request(
                wire.JOIN_ROOM, "Vault", {"username": f"mallory{i // 5}", "password": f"guess{i}"}))
            replies.append(exchange.frames[0].body)
        self.assertEqual([r["status"] for r in replies], [401] * 50 + [429] * 5)
        # 5 a minute from then on: the next guess in 12 s, less the time
        # these requests took (scrypt is slow on a busy machine).
        took = time.monotonic() - began
        self.assertTrue(all(12 - took - 1 <= r["retry_after"] <= 12 for r in replies[50:]), (took, replies[50:]))
        self.assertEqual(self.svc.tcrp.limited["password"], 5)
        # That address waits too, the right password included; others do not.
        status, _ = await self.ask(wire.JOIN_ROOM, "Vault", {"username": "bob", "password": "correct horse"})
        self.assertEqual(status, 429)
        status, _ = await self.ask(wire.JOIN_ROOM, "Vault", {"username": "bob", "password": "correct horse"},
                                   bind="127.0.0.2")
        self.assertEqual(status, 200)

    async def test_a_flood_is_held_to_its_rate_and_others_get_through(self):
        self.start_daemon("--member-rate", "20", "--member-burst", "40")
        host = await self.enter("Busy", "host", create=True)
        flooder = await self.enter("Busy", "flooder")
        calm = await self.enter("Busy", "calm")
        started = reactor.seconds()
        for burst in range(10):  # 5,000 datagrams in about a second
            for i in range(500):
                flooder.chat(f"spam {burst}.{i}")
            if burst == 5:
                calm.chat("still here")
            await task.deferLater(reactor, 0.1, lambda: None)
        elapsed = reactor.seconds() - started
        texts = []
        while True:
            try:
                event = await host.event(timeout=0.5)
            except defer.TimeoutError:
                break
            if event.kind == wire.MESSAGE:
                texts.append(event.text)
        spam = [t for t in texts if t.startswith("spam")]
        self.assertIn("still here", texts)
        self.assertLessEqual(len(spam), 40 + 20 * elapsed + 1)
        self.assertGreater(self.svc.rooms.drops["flood"], 4000)

    async def test_stalled_connections_dropped_at_deadline_others_served(self):
        self.start_daemon("--request-timeout", "1", "--max-per-address", "200", "--request-burst", "200")
        stalled = [await self.stall(b"\x05" if i % 2 else b"") for i in range(100)]  # half never start TLS
        started = reactor.seconds()
        status, body = await self.ask(wire.CREATE_ROOM, "Open", {"username": "punctual"}, bind="127.0.0.2")
        self.assertEqual(status, 200)
        served = reactor.seconds() - started
        closed_at = await defer.gatherResults([s.closed for s in stalled]).addTimeout(10, reactor)
        self.assertTrue(all(t - started >= 0.5 for t in closed_at), "dropped before the deadline")
        self.assertLess(served, min(closed_at) - started, "the join waited for the stalled connections")
        self.assertEqual(self.svc.tcrp.refusals["timeout"], 100)
        self.assertEqual(self.svc.tcrp.active, 0)

    async def test_connection_cap_per_address(self):
        self.start_daemon("--max-per-address", "5")
        held = [await self.stall(b"") for _ in range(5)]
        status = (await self.ask(wire.LIST_ROOMS, "", {}))[0]
        self.assertEqual(status, 429)
        self.assertEqual((await self.ask(wire.LIST_ROOMS, "", {}, bind="127.0.0.2"))[0], 200)
        for h in held:
            h.transport.abortConnection()
        await defer.gatherResults([h.closed for h in held])
        self.assertEqual((await self.ask(wire.LIST_ROOMS, "", {}))[0], 200)

    async def test_connection_cap_in_all(self):
        self.start_daemon("--max-connections", "3")
        for _ in range(3):
            await self.stall(b"")
        self.assertEqual((await self.ask(wire.LIST_ROOMS, "", {}, bind="127.0.0.2"))[0], 503)

    async def test_minute_summary_counts_drops_by_reason(self):
        from twisted.logger import formatEvent, globalLogPublisher

        self.start_daemon()
        member = await self.enter("Room", "host", create=True)
        member.send(b"garbage")
        member.send(member.seal(bytes((wire.CHAT,)) + b"hi", key=bytes(32)))
        await self.ask(wire.JOIN_ROOM, "Nowhere", {"username": "x"})
        await task.deferLater(reactor, 0.2, lambda: None)
        lines = []
        observer = lambda e: lines.append(formatEvent(e))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.svc.minutely()
        self.svc.minutely()  # nothing moved since: no second line
        summaries = [line for line in lines if "in the last minute" in line]
        self.assertEqual(len(summaries), 1)
        self.assertIn("datagram malformed 1", summaries[0])
        self.assertIn("datagram auth 1", summaries[0])
        self.assertIn("request 404 1", summaries[0])
        self.assertNotIn(member.body["token"], summaries[0])


class CrowdTests(DaemonMixin, TestCase):
    """Issue 13: a class behind one address joins a password room at once."""

    async def test_forty_join_at_once_and_a_typist_keeps_no_one_out(self):
        self.start_daemon()  # the default limits
        known = Path(self.mktemp())
        server = Server("127.0.0.1", self.svc.tcp_port, PinnedTrust(KnownServers(known), lambda _: None),
                        timeout=30)
        await request(reactor, server, Op.CREATE_ROOM, "Class", "teacher", "read aloud")
        # First one student mistypes the password ten times.
        typos = []
        for i in range(10):
            try:
                await request(reactor, server, Op.JOIN_ROOM, "Class", "typist", f"read alout{i}")
            except RequestRefused as e:
                typos.append(e.status)
        self.assertEqual(typos, [401] * 5 + [429] * 5)
        # Then forty start at once, through the client's request and retry code.
        notes: list[str] = []
        started = reactor.seconds()

        async def student(i: int) -> dict:
            reply = await retrying(
                reactor,
                lambda: request(reactor, server, Op.JOIN_ROOM, "Class", f"student{i}", "read aloud"),
                notes.append,
            )
            return reply.body

        bodies = await defer.gatherResults(
            [defer.ensureDeferred(student(i)) for i in range(40)], consumeErrors=True
        )
        elapsed = reactor.seconds() - started
        self.assertEqual(len({b["token"] for b in bodies}), 40)
        room = self.svc.rooms.rooms["class"]
        self.assertEqual(len(room.members), 41)
        self.assertLess(elapsed, 20, notes)
        # The typist, with the right password, waits only for their own budget.
        try:
            await request(reactor, server, Op.JOIN_ROOM, "Class", "typist", "read aloud")
            self.fail("the typist's budget was not spent")
        except RequestRefused as e:
            self.assertEqual(e.status, 429)
            self.assertIn("as 'typist'", e.server_message)
            self.assertLessEqual(e.retry_after, 20)
