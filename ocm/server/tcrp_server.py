"""
The TCRP listener: a thin Twisted adapter between a stream connection (TLS
or plain) and the front desk (L{ocm.server.desk}). One request per
connection, PROTOCOL §1: the bytes become a L{Request}, the desk's
L{Answer} or refusal becomes a response and, for a CREATE or JOIN, a
COMPLETE that adds the UDP channel (token, key, port) to the room's body.
"""

from __future__ import annotations

import base64
import enum
from collections import Counter
from typing import Any, Callable

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ocm.server.desk import Door, FrontDesk
from ocm.server.rooms import Member, RoomService, normalize_ip
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

_OK_MESSAGES = {
    Op.CREATE_ROOM: "room created",
    Op.JOIN_ROOM: "joined",
    Op.LIST_ROOMS: "rooms listed",
}


def complete_body(service: RoomService, member: Member, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """TCRP's COMPLETE for a CREATE or JOIN: the room's body, and the UDP channel's token, key and port."""
    body = dict(service.joined_body(member) if body is None else body)
    body["token"] = member.token
    body["key"] = base64.b64encode(member.key).decode()
    body["udp_port"] = service.udp_port
    return body


class State(enum.Enum):
    """A TCRP connection's life: one request, one answer, then the end."""

    READING = "reading"  # the request is not whole yet
    ANSWERING = "answering"  # the desk is working on it
    DONE = "done"  # answered, refused or dropped: input is ignored


class Slot(enum.Enum):
    """What a connection holds until it closes, to be given back."""

    NONE = "none"
    DOOR = "door"  # a place under the listener's connection caps
    REFUSING = "refusing"  # one of the bounded refusals in flight


@implementer(IHandshakeListener)
class TCRPServerProtocol(Protocol):
    factory: TCRPFactory
    log = Logger()

    def __init__(self) -> None:
        self._deadline: IDelayedCall | None = None
        self._handshaken = False
        self._started = 0.0
        self.state = State.READING
        self._slot = Slot.NONE
        self._rate_refusal: ProtocolError | None = None
        self.peer_ip = ""

    def connectionMade(self) -> None:
        f = self.factory
        self.parser = RequestParser(f.max_payload)
        self.peer_ip = normalize_ip(getattr(self.transport.getPeer(), "host", ""))
        self._started = f.clock.seconds()
        # The deadline covers the TLS handshake too: it starts at accept.
        self._deadline = f.clock.callLater(f.request_timeout, self._timed_out)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except Exception:
                pass
        refusal = f.door.admit(self.peer_ip)
        if refusal is not None:
            # Over a connection cap: answer at once (nothing to echo yet) and
            # free the slot; past a bound, not even an answer.
            if f.refusing >= f.max_refusing:
                f.refusals["shed"] += 1
                self.state = State.DONE
                self.transport.abortConnection()
                return
            f.refusing += 1
            self._slot = Slot.REFUSING
            self._refuse(refusal)
            return
        self._slot = Slot.DOOR
        # The request rate is charged per connection, and refused once the
        # header arrives, so the refusal can echo the operation and room.
        self._rate_refusal = f.desk.rate_refusal(self.peer_ip)

    def dataReceived(self, data: bytes) -> None:
        if self.state is not State.READING:
            return
        try:
            request = self.parser.feed(data)
            if self._rate_refusal is not None and self.parser.header is not None:
                self.factory.desk.limited["request_rate"] += 1
                raise self._rate_refusal
        except ProtocolError as e:
            self._refuse(e)
            return
        if request is not None:
            self.state = State.ANSWERING
            d = defer.ensureDeferred(self._handle(request))
            d.addErrback(self._failed)

    async def _handle(self, request: Request) -> None:
        f = self.factory
        try:
            answered = await f.desk.answer(request, self.peer_ip, lambda: not self.connected)
            if answered is None:
                return
        except ProtocolError as e:
            self._refuse(e)
            return
        body = answered.body
        if answered.member is not None:
            body = complete_body(f.desk.service, answered.member, body)
        op, room_bytes = self.parser.header.op, self.parser.room_bytes
        self.state = State.DONE
        # Both frames in one write: one TLS record, one segment, no Nagle wait.
        self.transport.write(
            encode_response(op, room_bytes, Status.OK, _OK_MESSAGES[request.op])
            + encode_complete(op, room_bytes, body)
        )
        f.answered[op, Status.OK] += 1
        if f.on_joined is not None and request.op != Op.LIST_ROOMS:
            f.on_joined(request.op, f.clock.seconds() - self._started)
        self._finish()

    def _refuse(self, error: ProtocolError) -> None:
        self.state = State.DONE
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
        self.state = State.DONE
        self.log.failure("internal error answering {ip}", failure, ip=self.peer_ip)
        if self.connected:
            self.transport.abortConnection()

    def _finish(self) -> None:
        self._cancel_deadline()
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._deadline = None
        self.state = State.DONE
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
        self.state = State.DONE
        if not self._handshaken and reason is not None and reason.check(SSL.Error):
            self.factory.tls_failures += 1
        self._cancel_deadline()
        slot, self._slot = self._slot, Slot.NONE
        if slot is Slot.DOOR:
            self.factory.door.release(self.peer_ip)
        elif slot is Slot.REFUSING:
            self.factory.refusing -= 1


class TCRPFactory(Factory):
    """What every TCRP connection shares: the desk, this listener's door, its counters."""

    protocol = TCRPServerProtocol
    noisy = False

    def __init__(
        self,
        desk: FrontDesk,
        door: Door,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        request_timeout: float = 10.0,
    ) -> None:
        self.desk = desk
        self.door = door
        self.clock = desk.clock
        self.max_payload = max_payload
        self.request_timeout = request_timeout
        # Refusals by status, and "timeout" and "shed" for connections
        # dropped without an answer.
        self.refusals: Counter[Any] = Counter()
        # Connections refused for a cap but not yet closed; past
        # max_refusing they are dropped without an answer.
        self.refusing = 0
        self.max_refusing = 256
        # For the metrics (ocm.ops.metrics reads them when scraped): answers by
        # (operation, status), failed TLS handshakes, and a hook told of each
        # COMPLETE of a CREATE or JOIN with its seconds since accept.
        self.answered: Counter[tuple[int, int]] = Counter()
        self.tls_failures = 0
        self.on_joined: Callable[[Op, float], None] | None = None

    @property
    def active(self) -> int:
        return self.door.active

    @property
    def limited(self) -> Counter[str]:
        """Refusals by the limit that made them: this door's caps and the desk's limits."""
        counts = Counter(self.door.refused)
        counts.update(self.desk.limited)
        return counts
