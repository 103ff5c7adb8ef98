"""
The TCRP server: a thin Twisted adapter between a stream connection (TLS or
plain) and the room service. One request per connection, PROTOCOL §1.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ocm.server import passwords
from ocm.server.limits import Buckets, address_key
from ocm.wire.names import name_key
from ocm.server.rooms import Member, MemberTransport, RoomService, normalize_ip
from ocm.wire.tcrp import (
    DEFAULT_MAX_PAYLOAD,
    Op,
    ProtocolError,
    Request,
    RequestParser,
    Status,
    encode_complete,
    encode_response,
)

# Runs a slow, blocking function off the reactor thread; tests may pass one
# that runs it inline.
Offload = Callable[..., defer.Deferred]

_OK_MESSAGES = {
    Op.CREATE_ROOM: "room created",
    Op.JOIN_ROOM: "joined",
    Op.LIST_ROOMS: "rooms listed",
}


def complete_body(service: RoomService, member: Member) -> dict[str, Any]:
    """TCRP's COMPLETE for a CREATE or JOIN: the room, and the UDP channel's token, key and port."""
    body = service.joined_body(member)
    body["token"] = member.token
    body["key"] = base64.b64encode(member.key).decode()
    body["udp_port"] = service.udp_port
    return body


async def answer(
    factory: TCRPFactory,
    request: Request,
    ip: str,
    gone: Callable[[], bool],
    transport: MemberTransport | None = None,
) -> tuple[Member | None, dict[str, Any]] | None:
    """
    Carry out a valid LIST, CREATE or JOIN from C{ip}: the new member (None
    for a LIST) and the reply's body, or a L{ProtocolError} to refuse it
    with, or None if the asker is C{gone} once the password work is done.
    TCRP and the WebSocket binding both answer through here; C{transport}
    makes a member without UDP (see RoomService), whose body has no token
    or key.
    """
    service = factory.service
    # Cluster mode: the shared room directory (ocm.cluster), else None.
    directory = factory.directory
    member_kw: dict[str, Any] = {} if transport is None else {"transport": transport}
    body = service.joined_body if transport is not None else lambda m: complete_body(service, m)
    if request.op == Op.LIST_ROOMS:
        rooms = service.list_rooms() if directory is None else await directory.list_rooms()
        return None, {"rooms": rooms}
    if request.op == Op.CREATE_ROOM:
        service.check_create(request.room)
        hashed = None
        if request.password:
            hashed = await factory.offload(passwords.hash_password, request.password)
        if gone():
            return None
        make = lambda: service.create_room(request.room, request.username, ip, hashed, **member_kw)
        if directory is None:
            member = make()
        else:
            member = await directory.create_room(
                request.room, hashed is not None, make, lambda: not gone()
            )
            if member is None:
                return None
        return member, body(member)
    if directory is not None:
        await directory.route_join(request.room)
    room = service.room_for_join(request.room)
    if room.password is not None:
        await check_password(factory, address_key(ip), request.password, request.username, room)
    if gone():
        return None
    member = service.join_room(request.room, request.username, ip, expected=room, **member_kw)
    return member, body(member)


async def check_password(
    factory: TCRPFactory, limit_key: str, password: str, username: str, room: Any
) -> None:
    """
    Verify a room password against two budgets of wrong tries (issue 13):
    one per person (address, room, username), so one person's typos
    cost only that person, and a larger one per address and room, which
    bounds a guesser who changes usernames. Only a wrong password is
    charged, after the verdict and into debt if need be, so a right one
    never spends anyone's budget, and guesses made in parallel all pay.
    """
    f = factory
    now = f.clock.seconds()
    room_key = name_key(room.name)
    person = f.password_tries.get((limit_key, room_key, name_key(username)), now)
    address = f.address_password_tries.get((limit_key, room_key), now)
    for bucket, whom in ((person, f"as {username!r}"), (address, "from your address")):
        if not bucket.ready(now):
            f.limited["password"] += 1
            wait = bucket.wait(now)
            raise ProtocolError(
                Status.TOO_MANY,
                f"too many wrong passwords for room {room.name!r} {whom}; "
                f"try again in {max(1, math.ceil(wait))} s",
                retry_after=wait,
            )
    if not password:
        # Not a guess: nothing to verify, nothing learned, nothing charged.
        raise ProtocolError(Status.UNAUTHORIZED, f"room {room.name!r} needs a password")
    if await f.offload(passwords.verify_password, password, room.password):
        return
    now = f.clock.seconds()
    person.charge(now)
    address.charge(now)
    raise ProtocolError(Status.UNAUTHORIZED, f"wrong password for room {room.name!r}")


@implementer(IHandshakeListener)
class TCRPServerProtocol(Protocol):
    factory: TCRPFactory
    log = Logger()

    def __init__(self) -> None:
        self._deadline: IDelayedCall | None = None
        self._handshaken = False
        self._started = 0.0
        self._answered = False
        self._counted = False
        self._refusing = False
        self._rate_refusal: ProtocolError | None = None
        self.peer_ip = ""
        self.limit_key = ""

    def connectionMade(self) -> None:
        f = self.factory
        self.parser = RequestParser(f.max_payload)
        self.peer_ip = normalize_ip(getattr(self.transport.getPeer(), "host", ""))
        self.limit_key = address_key(self.peer_ip)
        self._started = f.clock.seconds()
        # The deadline covers the TLS handshake too: it starts at accept.
        self._deadline = f.clock.callLater(f.request_timeout, self._timed_out)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except Exception:
                pass
        try:
            self._counted = f.admit(self.limit_key)
        except ProtocolError as e:
            # Over a connection cap: answer at once (nothing to echo yet) and
            # free the slot; past a bound, not even an answer.
            if f.refusing >= f.max_refusing:
                f.refusals["shed"] += 1
                self._answered = True
                self.transport.abortConnection()
                return
            f.refusing += 1
            self._refusing = True
            self._refuse(e)
            return
        # The request rate is charged per connection, and refused once the
        # header arrives, so the refusal can echo the operation and room.
        now = f.clock.seconds()
        bucket = f.requests.get(self.limit_key, now) if f.requests.rate else None
        if bucket is not None and not bucket.take(now):
            self._rate_refusal = ProtocolError(
                Status.TOO_MANY, "too many requests from your address; slow down",
                retry_after=bucket.wait(now),
            )

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        try:
            request = self.parser.feed(data)
            if self._rate_refusal is not None and self.parser.header is not None:
                self.factory.limited["request_rate"] += 1
                raise self._rate_refusal
        except ProtocolError as e:
            self._refuse(e)
            return
        if request is not None:
            self._answered = True
            d = defer.ensureDeferred(self._handle(request))
            d.addErrback(self._failed)

    async def _handle(self, request: Request) -> None:
        try:
            answered = await answer(self.factory, request, self.peer_ip, lambda: not self.connected)
            if answered is None:
                return
            body = answered[1]
        except ProtocolError as e:
            self._refuse(e)
            return
        op, room_bytes = self.parser.header.op, self.parser.room_bytes
        # Both frames in one write: one TLS record, one segment, no Nagle wait.
        self.transport.write(
            encode_response(op, room_bytes, Status.OK, _OK_MESSAGES[request.op])
            + encode_complete(op, room_bytes, body)
        )
        f = self.factory
        f.answered[op, Status.OK] += 1
        if f.on_joined is not None and request.op != Op.LIST_ROOMS:
            f.on_joined(request.op, f.clock.seconds() - self._started)
        self._finish()

    def _refuse(self, error: ProtocolError) -> None:
        self._answered = True
        header = self.parser.header
        op = header.op if header else 0
        self.log.info(
            "refused {status} to {ip}: {why}",
            status=error.status, ip=self.peer_ip, why=error.message,
        )
        self.factory.refusals[error.status] += 1
        self.factory.answered[op, error.status] += 1
        if self.connected:
            self.transport.write(
                encode_response(
                    op, self.parser.room_bytes, error.status, error.message,
                    **error.response_fields(),
                )
            )
        self._finish()

    def _failed(self, failure: Any) -> None:
        self.log.failure("internal error answering {ip}", failure, ip=self.peer_ip)
        if self.connected:
            self.transport.abortConnection()

    def _finish(self) -> None:
        self._cancel_deadline()
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._deadline = None
        self._answered = True
        self.factory.refusals["timeout"] += 1
        self.log.info("dropped {ip}: request not complete in time", ip=self.peer_ip)
        self.transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def handshakeCompleted(self) -> None:
        self._handshaken = True

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        if not self._handshaken and reason is not None and reason.check(SSL.Error):
            self.factory.tls_failures += 1
        self._cancel_deadline()
        if self._counted:
            self._counted = False
            self.factory.release(self.peer_ip)
        if self._refusing:
            self._refusing = False
            self.factory.refusing -= 1


class TCRPFactory(Factory):
    protocol = TCRPServerProtocol
    noisy = False

    def __init__(
        self,
        service: RoomService,
        clock: IReactorTime,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        request_timeout: float = 10.0,
        max_connections: int = 1000,
        max_per_address: int = 50,
        request_rate: float = 5.0,
        request_burst: float = 50.0,
        password_rate: float = 3 / 60,
        password_burst: float = 5.0,
        address_password_rate: float = 5 / 60,
        address_password_burst: float = 50.0,
        offload: Offload = threads.deferToThread,
    ) -> None:
        self.service = service
        self.clock = clock
        self.directory: Any = None  # an ocm.cluster.directory.Directory in cluster mode
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.offload = offload
        self.refusals: Counter[Any] = Counter()
        # Refusals by the limit that made them: "connections", "per_address",
        # "request_rate", "password".
        self.limited: Counter[str] = Counter()
        self.requests = Buckets(request_rate, request_burst)
        # Wrong passwords per (address, room, username) and per (address, room).
        self.password_tries = Buckets(password_rate, password_burst)
        self.address_password_tries = Buckets(address_password_rate, address_password_burst)
        self.active = 0
        self.per_address: Counter[str] = Counter()
        # Connections refused for a cap but not yet closed; past
        # max_refusing they are dropped without an answer.
        self.refusing = 0
        self.max_refusing = 256
        # For the metrics (ocm.ops.metrics reads them when scraped): answers by
        # (operation, status), refusals by limit, failed TLS handshakes, and
        # a hook told of each COMPLETE of a CREATE or JOIN with its seconds
        # since accept.
        self.answered: Counter[tuple[int, int]] = Counter()
        self.limited: Counter[str] = Counter()
        self.tls_failures = 0
        self.on_joined: Callable[[Op, float], None] | None = None

    def admit(self, ip: str) -> bool:
        """
        Count a new connection in, or raise the refusal for a full cap. A
        request holds its connection for a fraction of a second, so a slot is
        likely free a second later: both refusals say so with retry_after.
        """
        if self.active >= self.max_connections:
            self.limited["connections"] += 1
            raise ProtocolError(
                Status.UNAVAILABLE, "the server has all the connections it can take; try again soon",
                retry_after=1,
            )
        if self.per_address[ip] >= self.max_per_address:
            self.limited["per_address"] += 1
            raise ProtocolError(
                Status.TOO_MANY, "too many open connections from your address", retry_after=1,
            )
        self.active += 1
        self.per_address[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.active -= 1
        self.per_address[ip] -= 1
        if not self.per_address[ip]:
            del self.per_address[ip]

    def prune(self) -> None:
        now = self.clock.seconds()
        self.requests.prune(now)
        self.password_tries.prune(now)
        self.address_password_tries.prune(now)
