"""
The TCRP server: a thin Twisted adapter between a stream connection (TLS or
plain) and the room service. One request per connection, PROTOCOL §1.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from ocm import passwords
from ocm.rooms import RoomService, normalize_ip
from ocm.tcrp import (
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


class TCRPServerProtocol(Protocol):
    factory: TCRPFactory
    log = Logger()

    def __init__(self) -> None:
        self._deadline: IDelayedCall | None = None
        self._answered = False
        self.peer_ip = ""

    def connectionMade(self) -> None:
        f = self.factory
        self.parser = RequestParser(f.max_payload)
        self.peer_ip = normalize_ip(getattr(self.transport.getPeer(), "host", ""))
        # The deadline covers the TLS handshake too: it starts at accept.
        self._deadline = f.clock.callLater(f.request_timeout, self._timed_out)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except Exception:
                pass

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        try:
            request = self.parser.feed(data)
        except ProtocolError as e:
            self._refuse(e)
            return
        if request is not None:
            self._answered = True
            d = defer.ensureDeferred(self._handle(request))
            d.addErrback(self._failed)

    async def _handle(self, request: Request) -> None:
        service = self.factory.service
        try:
            if request.op == Op.LIST_ROOMS:
                body: dict[str, Any] = {"rooms": service.list_rooms()}
            elif request.op == Op.CREATE_ROOM:
                service.check_create(request.room)
                hashed = None
                if request.password:
                    hashed = await self.factory.offload(passwords.hash_password, request.password)
                if not self.connected:
                    return
                member = service.create_room(request.room, request.username, self.peer_ip, hashed)
                body = service.complete_body(member)
            else:
                room = service.room_for_join(request.room)
                if room.password is not None:
                    ok = bool(request.password) and await self.factory.offload(
                        passwords.verify_password, request.password, room.password
                    )
                    if not ok:
                        raise ProtocolError(
                            Status.UNAUTHORIZED,
                            f"wrong or missing password for room {room.name!r}",
                        )
                if not self.connected:
                    return
                member = service.join_room(request.room, request.username, self.peer_ip, expected=room)
                body = service.complete_body(member)
        except ProtocolError as e:
            self._refuse(e)
            return
        op, room_bytes = self.parser.header.op, self.parser.room_bytes
        # Both frames in one write: one TLS record, one segment, no Nagle wait.
        self.transport.write(
            encode_response(op, room_bytes, Status.OK, _OK_MESSAGES[request.op])
            + encode_complete(op, room_bytes, body)
        )
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
        if self.connected:
            self.transport.write(encode_response(op, self.parser.room_bytes, error.status, error.message))
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

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        self._cancel_deadline()


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
        offload: Offload = threads.deferToThread,
    ) -> None:
        self.service = service
        self.clock = clock
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        self.offload = offload
        self.refusals: Counter[Any] = Counter()
