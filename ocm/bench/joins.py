"""
The generator's TCRP side: many CREATE and JOIN requests over TLS (or plain
TCP), a bounded number at a time, each timed from connect to COMPLETE.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from twisted.internet import defer, endpoints, ssl
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ocm.wire.tcrp import Op, ReplyParser, State, encode_request

T = TypeVar("T")
JOIN_TIMEOUT = 30.0


class JoinRefused(Exception):
    def __init__(self, status: int, message: str, tcp: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.tcp = tcp  # a 307's node address


@dataclass(frozen=True)
class Credentials:
    room: str
    username: str
    token: str
    key: str  # base64, as the server sent it
    udp_port: int


class _JoinProtocol(Protocol):
    """Send one request, collect RESPONSE and COMPLETE, hang up at once."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = ReplyParser()
        self.done: defer.Deferred[dict[str, Any]] = defer.Deferred()

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        try:
            frames = self.parser.feed(data)
        except Exception:
            self._fail(Failure())
            return
        for frame in frames:
            body = json.loads(frame.payload)
            if frame.state == State.RESPONSE and body.get("status") != 200:
                self._fail(Failure(JoinRefused(body.get("status", 0), body.get("message", ""), body.get("tcp"))))
                return
            if frame.state == State.COMPLETE:
                self.done.callback(body)
                self.transport.loseConnection()
                return

    def _fail(self, failure: Failure) -> None:
        if not self.done.called:
            self.done.errback(failure)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


class Joiner:
    """Speaks TCRP to one server; C{latencies} collects seconds per request."""

    def __init__(self, reactor: Any, host: str, port: int, tls: bool) -> None:
        self.reactor = reactor
        self.host = host
        if tls:
            # A load generator: the bench does not verify the certificate
            # (the bundled client does, PROTOCOL §5).
            self.endpoint = endpoints.SSL4ClientEndpoint(reactor, host, port, ssl.CertificateOptions())
        else:
            self.endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port)
        self.latencies: list[float] = []

    async def request(self, op: Op, room: str, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        proto = _JoinProtocol(encode_request(op, room, payload))
        connecting = endpoints.connectProtocol(self.endpoint, proto)
        connecting.addTimeout(JOIN_TIMEOUT, self.reactor)
        try:
            await connecting
            done = proto.done.addTimeout(JOIN_TIMEOUT, self.reactor)
            body = await done
        except BaseException:
            if proto.transport is not None:
                proto.transport.abortConnection()
            raise
        self.latencies.append(time.monotonic() - started)
        return body

    async def join(self, op: Op, room: str, username: str) -> Credentials:
        body = await self.request(op, room, {"username": username})
        return Credentials(room, username, body["token"], body["key"], int(body["udp_port"]))


class ClusterJoiner:
    """
    Joins against the nodes of a cluster (C{--cluster}): room i is created
    on node i mod N, and each guest enters through the next node, which
    answers 307, and is sent on to the room's node: the dearest join a
    cluster has. C{latencies} holds whole joins, redirect included.
    """

    def __init__(self, reactor: Any, host: str, ports: list[int], tls: bool) -> None:
        self.joiners = {port: Joiner(reactor, host, port, tls) for port in ports}
        self.ports = ports
        self.home: dict[str, int] = {}
        self.latencies: list[float] = []
        self.redirects = 0

    async def join(self, op: Op, room: str, username: str) -> Credentials:
        started = time.monotonic()
        if op == Op.CREATE_ROOM:
            port = self.ports[len(self.home) % len(self.ports)]
            self.home[room] = port
        else:
            home = self.ports.index(self.home[room])
            port = self.ports[(home + 1) % len(self.ports)]
        try:
            creds = await self.joiners[port].join(op, room, username)
        except JoinRefused as e:
            if e.status != 307 or not isinstance(e.tcp, str):
                raise
            self.redirects += 1
            creds = await self.joiners[int(e.tcp.rsplit(":", 1)[1])].join(op, room, username)
        self.latencies.append(time.monotonic() - started)
        return creds


async def bounded(
    items: Iterable[T], fn: Callable[[T], Awaitable[Any]], concurrency: int
) -> list[Any]:
    """Run C{fn} over C{items}, at most C{concurrency} at once, in order."""
    semaphore = defer.DeferredSemaphore(max(1, concurrency))
    calls = [
        semaphore.run(lambda item=item: defer.ensureDeferred(fn(item)))
        for item in items
    ]
    return await defer.gatherResults(calls, consumeErrors=True)


async def join_rooms(
    joiner: Joiner | ClusterJoiner, rooms: list[str], members: int, concurrency: int
) -> list[list[Credentials]]:
    """Create each room (its host is member 0), then join the others to it."""
    hosts = await bounded(
        rooms, lambda room: joiner.join(Op.CREATE_ROOM, room, "m0"), concurrency
    )
    guests = await bounded(
        [(r, i) for i in range(1, members) for r in rooms],
        lambda pair: joiner.join(Op.JOIN_ROOM, pair[0], f"m{pair[1]}"),
        concurrency,
    )
    by_room: dict[str, list[Credentials]] = {c.room: [c] for c in hosts}
    for c in guests:
        by_room[c.room].append(c)
    return [by_room[r] for r in rooms]
