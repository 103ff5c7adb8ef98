"""
A small ocm client written from PROTOCOL.md alone, for integration tests.

Bytes are built with struct and json and sealed with AESGCM directly, never
through the ocm package's own codecs: a misreading of the protocol shared by
the daemon and its codec cannot hide behind a shared encoder here. Nothing in
this module imports ocm, so it can talk to any daemon, in-process or not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, endpoints, ssl, task
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

# PROTOCOL §1
CREATE_ROOM, JOIN_ROOM, LIST_ROOMS = 1, 2, 3
REQUEST, RESPONSE, COMPLETE = 0, 1, 2
HEADER = 32
# PROTOCOL §2
CHAT, HEARTBEAT, LEAVE = 0x01, 0x02, 0x03
CLIENT_PREFIX, SERVER_PREFIX = 1, 2
MAX_DATAGRAM = 4096
MAX_TEXT = 3072
# PROTOCOL §3
MESSAGE, JOINED, LEFT, TIMED_OUT, CLOSED = 0x01, 0x04, 0x05, 0x06, 0x07

# The longest any one wait may take before the test that waits fails.
WAIT = 5.0

_nonce = struct.Struct(">IQ")
_event = struct.Struct(">BQQB")


def sleep(clock: Any, seconds: float) -> defer.Deferred:
    return task.deferLater(clock, seconds, lambda: None)


async def until(predicate: Any, what: Any, limit: float = 10.0, every: float = 0.02) -> Any:
    """
    Poll C{predicate} on the running reactor (so sockets go on being
    served) until it gives something true, and return that; fail after
    C{limit} seconds saying C{what} (a string, or a callable for one).
    """
    from twisted.internet import reactor

    deadline = reactor.seconds() + limit
    while True:
        result = predicate()
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"gave up waiting for {what() if callable(what) else what}")
        await task.deferLater(reactor, every, lambda: None)


# -- TCRP -------------------------------------------------------------------


def frame(op: int, state: int, room: bytes, payload: bytes, size: int | None = None) -> bytes:
    """A TCRP frame; C{size} overrides the declared payload size."""
    declared = len(payload) if size is None else size
    return bytes((len(room), op, state)) + declared.to_bytes(29, "big") + room + payload


def request(op: int, room: str | bytes, body: dict[str, Any] | bytes) -> bytes:
    """A REQUEST frame; a dict body is sent as JSON, bytes as they are."""
    room_bytes = room.encode() if isinstance(room, str) else room
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    return frame(op, REQUEST, room_bytes, payload)


@dataclass(frozen=True)
class Frame:
    op: int
    state: int
    room: bytes
    body: Any


def parse_frames(data: bytes) -> list[Frame]:
    """Every whole frame in C{data}; trailing bytes that are not one fail."""
    frames = []
    at = 0
    while at < len(data):
        if len(data) - at < HEADER:
            raise ValueError(f"{len(data) - at} stray bytes after the last frame")
        name_size, op, state = data[at], data[at + 1], data[at + 2]
        size = int.from_bytes(data[at + 3 : at + HEADER], "big")
        start = at + HEADER + name_size
        end = start + size
        if end > len(data):
            raise ValueError("the connection closed inside a frame")
        frames.append(Frame(op, state, data[at + HEADER : start], json.loads(data[start:end].decode("utf-8"))))
        at = end
    return frames


class PinMismatch(Exception):
    """The server presented a certificate other than the pinned one."""


def pem_digest(pem: bytes) -> bytes:
    """SHA-256 of a PEM certificate's DER form: what a client pins."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


@dataclass
class Exchange:
    """What one TCRP connection brought back, once the server closed it."""

    raw: bytes
    peer_digest: bytes | None

    @property
    def frames(self) -> list[Frame]:
        return parse_frames(self.raw)


@implementer(IHandshakeListener)
class _TCRPClient(Protocol):
    """
    Sends a request (in pieces, if asked) and keeps every byte until the
    server closes. Over TLS it sends nothing before the server's certificate
    matched the pin, as a careful client must.
    """

    def __init__(self, chunks: list[bytes], pin: bytes | None, clock: Any, gap: float) -> None:
        self.chunks = chunks
        self.pin = pin
        self.clock = clock
        self.gap = gap
        self.received = bytearray()
        self.peer_digest: bytes | None = None
        self.error: Exception | None = None
        self.done: defer.Deferred[Exchange] = defer.Deferred()
        self._next: Any = None

    def connectionMade(self) -> None:
        if self.pin is None:
            self._send()

    def handshakeCompleted(self) -> None:
        der = self.transport.getPeerCertificate().to_cryptography().public_bytes(
            serialization.Encoding.DER
        )
        self.peer_digest = hashlib.sha256(der).digest()
        if self.peer_digest != self.pin:
            self.error = PinMismatch(self.peer_digest.hex())
            self.transport.abortConnection()
            return
        self._send()

    def _send(self) -> None:
        self._next = None
        if not self.chunks or not self.connected:
            return
        self.transport.write(self.chunks.pop(0))
        if self.chunks:
            self._next = self.clock.callLater(self.gap, self._send)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        if self.done.called:
            return
        if self.error is not None:
            self.done.errback(self.error)
        else:
            self.done.callback(Exchange(bytes(self.received), self.peer_digest))


async def tcrp(
    reactor: Any,
    port: int,
    data: bytes | list[bytes],
    *,
    pin: bytes | None,
    host: str = "127.0.0.1",
    bind: str | None = None,
    gap: float = 0.0,
    timeout: float = WAIT,
) -> Exchange:
    """
    One TCRP connection: send C{data} (a list is sent piece by piece, C{gap}
    seconds apart) and return everything the server sent once it closed.
    C{pin}, the SHA-256 of the server's certificate, means TLS; None means
    plain TCP. Fails if the server has not closed within C{timeout}.
    """
    chunks = [data] if isinstance(data, bytes) else list(data)
    client = _TCRPClient(chunks, pin, reactor, gap)
    endpoint: Any = endpoints.TCP4ClientEndpoint(
        reactor, host, port, timeout=timeout, bindAddress=(bind, 0) if bind else None
    )
    if pin is not None:
        endpoint = endpoints.wrapClientTLS(ssl.CertificateOptions(), endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: client))

    def give_up(result: Any, seconds: float) -> Any:
        if client.transport is not None:
            client.transport.abortConnection()
        return result

    return await client.done.addTimeout(timeout, reactor, onTimeoutCancel=give_up)


def answer(exchange: Exchange) -> tuple[int, dict[str, Any] | None]:
    """(status, COMPLETE body or None) of a CREATE/JOIN/LIST exchange."""
    frames = exchange.frames
    status = frames[0].body["status"]
    return status, frames[1].body if status == 200 else None


# -- UDP --------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    counter: int  # the server's nonce counter for this recipient
    kind: int
    seq: int
    time_ms: int
    name: str
    text: str


class Mailbox(DatagramProtocol):
    """A UDP socket's received datagrams, in order, awaited one at a time."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.queue: list[tuple[bytes, Any]] = []
        self.waiters: list[defer.Deferred] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:
        if self.waiters:
            self.waiters.pop(0).callback((data, address))
        else:
            self.queue.append((data, address))

    def next(self, timeout: float = WAIT) -> defer.Deferred:
        """The next datagram and its source; fails after C{timeout} seconds."""
        if self.queue:
            return defer.succeed(self.queue.pop(0))
        d: defer.Deferred = defer.Deferred(lambda d: self.waiters.remove(d))
        self.waiters.append(d)
        return d.addTimeout(timeout, self.clock)


@dataclass
class Member:
    """
    One member's UDP side, from the COMPLETE body it was given: its own
    socket, its key and the client nonce counter (PROTOCOL §2).
    """

    reactor: Any
    room: bytes
    body: dict[str, Any]
    server: tuple[str, int]
    bind: str = "127.0.0.1"
    counter: int = 0
    server_counters: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token = self.body["token"].encode("ascii")
        self.key = base64.b64decode(self.body["key"], validate=True)
        self.aead = AESGCM(self.key)
        self.mailbox = Mailbox(self.reactor)
        self.port = self.reactor.listenUDP(0, self.mailbox, interface=self.bind)

    def close(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)

    def seal(
        self,
        inner: bytes,
        counter: int | None = None,
        *,
        room: bytes | None = None,
        token: bytes | None = None,
        key: bytes | None = None,
        prefix: int = CLIENT_PREFIX,
    ) -> bytes:
        """A client datagram; without C{counter} the next one is used."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        room = self.room if room is None else room
        token = self.token if token is None else token
        header = bytes((len(room), len(token))) + room + token
        nonce = _nonce.pack(prefix, counter)
        aead = self.aead if key is None else AESGCM(key)
        return header + nonce + aead.encrypt(nonce, inner, header)

    def send(self, datagram: bytes) -> bytes:
        self.port.write(datagram, self.server)
        return datagram

    def chat(self, text: str) -> bytes:
        return self.send(self.seal(bytes((CHAT,)) + text.encode("utf-8")))

    def heartbeat(self) -> bytes:
        return self.send(self.seal(bytes((HEARTBEAT,))))

    def leave(self) -> bytes:
        return self.send(self.seal(bytes((LEAVE,))))

    async def event(self, timeout: float = WAIT) -> Event:
        """The next server datagram, authenticated and parsed (PROTOCOL §3)."""
        data, source = await self.mailbox.next(timeout)
        if source != self.server:
            raise AssertionError(f"a datagram from {source}, not the server {self.server}")
        if len(data) > MAX_DATAGRAM:
            raise AssertionError(f"a server datagram of {len(data)} bytes")
        prefix, counter = _nonce.unpack_from(data)
        if prefix != SERVER_PREFIX:
            raise AssertionError(f"server nonce prefix {prefix}, not 2")
        inner = self.aead.decrypt(data[:12], data[12:], None)
        kind, seq, time_ms, name_size = _event.unpack_from(inner)
        end = _event.size + name_size
        if end > len(inner):
            raise AssertionError("event name runs past the event")
        self.server_counters.append(counter)
        return Event(
            counter, kind, seq, time_ms,
            inner[_event.size : end].decode("utf-8"), inner[end:].decode("utf-8"),
        )
