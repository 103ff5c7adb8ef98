"""
The web port's gate (issue 20, item 3): caps on TCP connections and a
whole-request deadline at accept, before TLS and HTTP. Units on a fake
clock, then real connections on loopback to the daemon as twistd builds it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, ssl, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from ocm.bench.spawn import free_port
from ocm.web.gate import Gate, find
from tests import wire
from tests.daemon import DaemonMixin
from tests.processes import ProcessTestCase
from tests.websocket import open_browser

PLAIN = ("--web", "tcp:0:interface=127.0.0.1", "--web-no-tls")


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Inner(protocol.Factory):
    protocol = Echo


def addr(host: str, port: int = 40000) -> Any:
    return IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)


class Transport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class GateUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.gate = Gate(Inner(), clock=self.clock, request_timeout=10, max_connections=5, max_per_address=2)

    def connect(self, host: str = "192.0.2.1") -> tuple[Any, StringTransport]:
        p = self.gate.buildProtocol(addr(host))
        if p is None:
            return None, None  # type: ignore[return-value]
        t = Transport()
        p.makeConnection(t)
        return p, t

    def lose(self, p: Any) -> None:
        p.connectionLost(Failure(ConnectionError("gone")))

    def test_trickling_does_not_extend_the_deadline(self):
        p, t = self.connect()
        for _ in range(9):
            self.clock.advance(1)
            p.dataReceived(b"x")
        self.assertFalse(t.aborted)
        self.clock.advance(1)
        self.assertTrue(t.aborted)
        self.assertEqual(self.gate.counts["deadline"], 1)

    def test_an_answer_gives_the_next_request_its_own_deadline(self):
        p, t = self.connect()
        p.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.clock.advance(9)
        p.answered()
        self.clock.advance(9)
        self.assertFalse(t.aborted or t.disconnecting)
        # Idle since the answer: a clean close, then an abort if it lingers.
        self.clock.advance(1)
        self.assertTrue(t.disconnecting)
        self.assertFalse(t.aborted)
        self.assertEqual(self.gate.idle_closed, 1)
        self.clock.advance(10)
        self.assertTrue(t.aborted)

    def test_an_upgraded_connection_has_no_deadline(self):
        p, t = self.connect()
        opened: defer.Deferred = defer.Deferred()

        class Socket:
            is_open = opened

        p.upgrading(Socket())
        self.clock.advance(5)
        opened.callback(None)
        p.dataReceived(b"a frame")
        p.answered()  # nothing an upgraded connection does re-arms it
        self.clock.advance(1000)
        self.assertFalse(t.aborted or t.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_upgrade_that_never_finishes_is_cut(self):
        p, t = self.connect()

        class Socket:
            is_open: defer.Deferred = defer.Deferred()

        p.dataReceived(b"GET /ws HTTP/1.1\r\n\r\n")
        p.upgrading(Socket())
        self.clock.advance(10)
        self.assertTrue(t.aborted)

    def test_caps_in_all_and_per_address_refuse_at_once(self):
        a1, _ = self.connect("192.0.2.1")
        a2, _ = self.connect("192.0.2.1")
        self.assertIsNone(self.gate.buildProtocol(addr("192.0.2.1")))
        self.assertEqual(self.gate.counts["per_address"], 1)
        # One IPv6 /64 is one address.
        b1, _ = self.connect("2001:db8::1")
        b2, _ = self.connect("2001:db8::2")
        self.assertIsNone(self.gate.buildProtocol(addr("2001:db8::3")))
        self.assertEqual(self.gate.counts["per_address"], 2)
        c1, _ = self.connect("198.51.100.6")
        self.assertIsNone(self.gate.buildProtocol(addr("198.51.100.7")))
        self.assertEqual(self.gate.counts["connections"], 1)
        for p in (a1, a2, b1, b2, c1):
            self.lose(p)
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))

    def test_ipv4_through_an_ipv6_socket_is_its_ipv4_address(self):
        self.connect("::ffff:192.0.2.1")
        self.connect("::ffff:192.0.2.1")
        # Not one /64 for every IPv4 client of a dual-stack listener.
        self.assertIsNotNone(self.gate.buildProtocol(addr("::ffff:192.0.2.2")))
        self.assertEqual(self.gate.caps.per_address, {"192.0.2.1": 2, "192.0.2.2": 1})

    def test_released_and_timers_gone(self):
        p, t = self.connect("2001:db8::1")
        self.lose(p)
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_find_looks_through_a_tls_layer(self):
        p, _ = self.connect()

        class Layer:
            transport = p

        self.assertIs(find(Layer()), p)
        self.assertIs(find(p), p)
        self.assertIsNone(find(StringTransport()))


class Raw(protocol.Protocol):
    """A raw TCP client: what it got, and when the server closed."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(reactor.seconds())


async def raw(port: int, host: str = "127.0.0.1", bind: str | None = None, tls: bool = False) -> Raw:
    bind_address = (bind, 0) if bind else None
    if tls:
        endpoint: Any = endpoints.SSL4ClientEndpoint(
            reactor, host, port, ssl.CertificateOptions(), timeout=5, bindAddress=bind_address
        )
    else:
        kind = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
        endpoint = kind(reactor, host, port, timeout=5, bindAddress=bind_address)
    return await endpoints.connectProtocol(endpoint, Raw())


async def closed_within(conn: Raw, seconds: float) -> float:
    d = conn.closed
    d.addTimeout(seconds, reactor)
    return await d


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class GateTests(DaemonMixin, unittest.TestCase):
    timeout = 60

    @property
    def web(self) -> int:
        return self.svc.web_port.getHost().port

    @property
    def gate(self) -> Gate:
        return self.svc.web_listener.factory

    def hold(self, conn: Raw) -> None:
        self.addCleanup(lambda: conn.closed.called or conn.transport.abortConnection())

    async def get(self, path: str = "/", bind: str | None = None, tls: bool = False) -> tuple[int, bytes]:
        conn = await raw(self.web, bind=bind, tls=tls)
        self.hold(conn)
        conn.transport.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await closed_within(conn, 5)
        head = conn.received.split(b"\r\n", 1)[0]
        return int(head.split()[1]), conn.received

    async def settle(self) -> None:
        """Until the daemon has seen every close (bounded)."""
        await self.settle_to(0)

    async def settle_to(self, active: int) -> None:
        for _ in range(50):
            if self.gate.caps.active <= active:
                return
            await sleep(0.05)

    async def test_slow_headers_are_cut_within_the_deadline(self):
        # 30 connections from one address, a header byte every 0.3 s:
        # before the gate, twisted.web's idle timeout restarted on each byte.
        self.start_daemon(*PLAIN, "--request-timeout", "1")
        conns = [await raw(self.web) for _ in range(30)]
        start = reactor.seconds()
        for c in conns:
            self.hold(c)
            c.transport.write(b"GET / HTTP/1.1\r\nX-Slow: ")

        def drip() -> None:
            for c in conns:
                if not c.closed.called:
                    c.transport.write(b"a")

        dripping = task.LoopingCall(drip)
        dripping.start(0.3)
        self.addCleanup(lambda: dripping.running and dripping.stop())
        ends = [await closed_within(c, 5) for c in conns]
        dripping.stop()
        self.assertLess(max(ends) - start, 2.5)  # 1 s, and room for a busy machine
        self.assertTrue(all(c.received == b"" for c in conns))  # aborted, not answered
        self.assertEqual(self.gate.counts["deadline"], 30)
        await self.settle()
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))
        # The refusals show in the daemon's counts, next to the chat's.
        self.assertEqual(self.svc.web_chat.refusals["deadline"], 30)

    async def test_past_the_per_address_cap_closed_at_once_another_address_served(self):
        # Over TLS (the default): counted at TCP accept, before any handshake.
        self.start_daemon("--web", "tcp:0:interface=127.0.0.1", "--web-max-per-address", "3")
        held = [await raw(self.web) for _ in range(3)]  # no TLS handshake at all
        for c in held:
            self.hold(c)
        extra = await raw(self.web)
        self.hold(extra)
        await closed_within(extra, 1)  # closed at once, nothing written
        self.assertEqual(extra.received, b"")
        self.assertEqual(self.gate.counts["per_address"], 1)
        code, body = await self.get("/", bind="127.0.0.2", tls=True)
        self.assertEqual(code, 200)
        self.assertIn(b"app.js", body)
        self.assertFalse(any(c.closed.called for c in held))
        await self.settle_to(3)
        self.assertEqual(self.gate.caps.per_address, {"127.0.0.1": 3})
        for c in held:
            c.transport.loseConnection()
        await self.settle()
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))

    async def test_a_banned_address_is_closed_at_accept(self):
        # The gate's door is the desk's: the daemon's address bans apply
        # before TLS, to the whole web port.
        self.start_daemon("--web", "tcp:0:interface=127.0.0.1")
        self.svc.desk.bans.ban("127.0.0.2", 60, reactor.seconds())
        banned = await raw(self.web, bind="127.0.0.2")
        self.hold(banned)
        await closed_within(banned, 1)
        self.assertEqual(banned.received, b"")
        self.assertEqual(self.gate.counts["banned"], 1)
        code, _ = await self.get("/", tls=True)  # 127.0.0.1 is not banned
        self.assertEqual(code, 200)

    async def test_behind_a_proxy_only_the_total_applies(self):
        # With --web-no-tls every peer is the local proxy: a per-address cap
        # at the gate would cap the proxy, so only the total applies here.
        self.start_daemon(*PLAIN, "--web-max-connections", "10", "--web-max-per-address", "2")
        held = [await raw(self.web) for _ in range(9)]
        for c in held:
            self.hold(c)
        code, _ = await self.get("/", bind="127.0.0.2")
        self.assertEqual(code, 200)
        await self.settle_to(9)
        more = [await raw(self.web, bind="127.0.0.2") for _ in range(2)]
        for c in more:
            self.hold(c)
        await closed_within(more[1], 1)
        self.assertEqual(self.gate.counts["connections"], 1)
        self.assertFalse(more[0].closed.called)

    async def test_a_tls_handshake_that_never_ends_is_cut(self):
        # The deadline counts from TCP accept: a TLS hello begun and never
        # finished is cut like a slow header.
        self.start_daemon("--web", "tcp:0:interface=127.0.0.1", "--request-timeout", "1")
        conns = [await raw(self.web) for _ in range(5)]
        start = reactor.seconds()
        for c in conns:
            self.hold(c)
            c.transport.write(b"\x16\x03\x01\x02\x00\x01")
        ends = [await closed_within(c, 5) for c in conns]
        self.assertLess(max(ends) - start, 2.5)  # 1 s, and room for a busy machine
        self.assertEqual(self.gate.counts["deadline"], 5)

    async def test_counts_back_to_zero_ipv6(self):
        self.start_daemon("--web", r"tcp6:0:interface=\:\:1", "--web-no-tls")
        conns = [await raw(self.web, host="::1") for _ in range(5)]
        self.assertEqual(self.gate.caps.per_address, {"::/64": 5})
        conns[0].transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await closed_within(conns[0], 5)
        self.assertTrue(conns[0].received.startswith(b"HTTP/1.1 200"))
        conns[1].transport.write(b"GET / HT")
        for c in conns[1:]:
            c.transport.abortConnection()
        await self.settle()
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))

    async def test_pages_websockets_and_closes_leave_nothing_counted(self):
        self.start_daemon(*PLAIN, "--request-timeout", "1")
        self.assertEqual((await self.get("/"))[0], 200)
        self.assertEqual((await self.get("/nothing"))[0], 404)
        b = await open_browser(self.web)
        self.addCleanup(lambda: b.transport and b.transport.abortConnection())
        # Past the request deadline the upgraded socket is the WebSocket's own.
        await sleep(1.5)
        b.send({"op": "list"})
        response = await b.next()
        self.assertEqual(response["status"], 200)
        self.assertEqual(self.gate.caps.active, 1)
        b.transport.loseConnection()
        await self.settle()
        self.assertEqual((self.gate.caps.active, self.gate.caps.per_address), (0, {}))

    async def test_a_kept_alive_connection_gets_a_deadline_per_request(self):
        self.start_daemon(*PLAIN, "--request-timeout", "1.5")
        conn = await raw(self.web)
        self.hold(conn)
        for _ in range(4):  # four answered requests, 0.6 s apart: 2.4 s in all
            conn.transport.write(b"GET /icon.svg HTTP/1.1\r\nHost: x\r\n\r\n")
            await sleep(0.6)
            self.assertFalse(conn.closed.called)
        self.assertEqual(conn.received.count(b"HTTP/1.1 200"), 4)
        # Then idle: closed cleanly within the deadline.
        await closed_within(conn, 3)
        self.assertEqual(self.gate.idle_closed, 1)
        self.assertEqual(self.gate.counts["deadline"], 0)

    async def test_a_plain_get_to_the_agent(self):
        # The ordinary client path still works through the gate.
        self.start_daemon(*PLAIN)
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{self.web}/".encode())
        self.assertEqual(response.code, 200)
        await readBody(response)


class FileDescriptorTests(ProcessTestCase):
    """Issue 20's reproduction: under a low ulimit -n, one address took every descriptor."""

    timeout = 90

    async def test_one_address_cannot_take_the_daemons_descriptors(self):
        web = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.tcp = free_port(socket.SOCK_STREAM, "127.0.0.1")
        udp = free_port(socket.SOCK_DGRAM, "127.0.0.1")
        limit = 64
        daemon = self.spawn("daemon", [
            "-c", f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
                  "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.dir / "daemon.log"), "ocm",
            "--tcp", f"tcp:{self.tcp}:interface=127.0.0.1", "--udp", str(udp), "--no-tls",
            "--interface", "127.0.0.1", "--data-dir", str(self.dir / "data"),
            "--web", f"tcp:{web}:interface=127.0.0.1", "--web-max-per-address", "10",
        ])
        self.wait_for(lambda: "web chat page: HTTPS" in self.read("daemon.log") or daemon.poll() is not None,
                      "the daemon to start")
        self.assertIsNone(daemon.poll(), self.read("daemon.log") + self.read("daemon.err"))
        held = []
        for _ in range(limit + 6):  # more than the daemon has descriptors
            try:
                c = await raw(web)
            except Exception:
                continue
            self.addCleanup(lambda c=c: c.closed.called or c.transport.abortConnection())
            held.append(c)
        await sleep(0.5)
        # Another address still gets its TCRP LIST (before the gate, the
        # daemon had no descriptor left to accept it with).
        status, body = wire.answer(await wire.tcrp(
            reactor, self.tcp, wire.request(wire.LIST_ROOMS, "", {}), pin=None, bind="127.0.0.2"))
        self.assertEqual((status, body["rooms"]), (200, []))
        alive = [c for c in held if not c.closed.called]
        self.assertEqual(len(alive), 10, self.read("daemon.log")[-2000:])
        fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        self.assertLess(fds, limit - 10)
