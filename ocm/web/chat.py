"""
The WebSocket side of a browser member: a thin autobahn adapter between one
WebSocket and the room service, speaking the JSON binding (L{binding}).

Room requests (list, create, join) go through the front desk
(L{ocm.server.desk.FrontDesk}), as TCRP's do, under the same per-address
request rate and password limits; the caps on open sockets are this
listener's own L{ocm.server.desk.Door}. A member's events come from the room service through
C{deliver}; its lines go to C{RoomService.say}. Liveness is the WebSocket's
own: the server pings every third of the room timeout, and every pong or
frame touches the member; a socket that closes leaves the room.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ocm.server.desk import Door, FrontDesk
from ocm.web.headers import HandshakeHeaders
from ocm.web.origin import OriginRule
from ocm.server.rooms import CLOSED_RESTARTING, CLOSED_SHUTDOWN, Member, normalize_ip
from ocm.wire import binding
from ocm.wire.datagram import Event, EventKind
from ocm.wire.names import name_key
from ocm.wire.tcrp import Op, ProtocolError, Request, Status

# Close codes the page tells apart (a server may send only 1000 and
# 3000-4999; 4000-4999 are the application's).
CLOSE_NORMAL = 1000
CLOSE_ROOM_CLOSED = 4000  # the room closed: reason is the room's CLOSED text
CLOSE_REMOVED = 4001  # the member was silent for the room timeout
CLOSE_IDLE = 4002  # not in a room, and no request for a while
CLOSE_KICKED = 4003  # (1.2) the host kicked or banned the member: reason is the event's text
CLOSE_RESTARTING = 4004  # (1.2) the server is stopping or restarting: join again when it is back
CLOSE_MALFORMED = 4400  # after an error frame with status 400
CLOSE_TOO_MANY = 4429  # refused frames past the address's request rate
CLOSE_INTERNAL = 4500  # a bug on the server's side

# Bytes a browser may leave unread beyond the transport's own buffer before
# it is removed as a slow reader (--web-send-queue).
DEFAULT_SEND_QUEUE = 256 * 1024

_OK_MESSAGES = {Op.LIST_ROOMS: "rooms listed", Op.CREATE_ROOM: "room created", Op.JOIN_ROOM: "joined"}


class SocketState(enum.Enum):
    """A browser socket's life (the WebSocket's own states are autobahn's)."""

    CONNECTING = "connecting"  # the opening handshake
    LOBBY = "lobby"  # open, in no room: list, create or join
    ASKING = "asking"  # a room request is with the desk
    MEMBER = "member"  # in a room
    ENDED = "ended"  # closing or closed: nothing more is sent


class WebChatFactory(WebSocketServerFactory):
    """
    What every browser socket shares: the front desk, this listener's door
    (the caps on open sockets), the Origin rule, and the counters.
    """

    _log = Logger()

    def __init__(
        self,
        desk: FrontDesk,
        door: Door,
        *,
        origin_rule: OriginRule | None = None,
        behind_proxy: bool = False,
        max_payload: int = 65536,
        request_timeout: float = 10.0,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        # No Server header: the version of what serves the page is nobody's business.
        super().__init__(server=None)
        self.send_queue = send_queue
        self.protocol = ChatSocket
        self.desk = desk
        self.service = desk.service
        self.clock = desk.clock
        self.door = door
        # Which pages may open the socket (ocm.web.origin): by default only
        # the local names, over TLS.
        self.origin_rule = origin_rule or OriginRule(tls=True, names=("localhost", "127.0.0.1", "::1"))
        self.behind_proxy = behind_proxy
        self.refusals: Counter[Any] = Counter()
        # Open sockets, for drain() when the daemon stops.
        self.sockets: set[ChatSocket] = set()
        self._drained: list[defer.Deferred[None]] = []
        service = self.service
        self.setProtocolOptions(
            maxFramePayloadSize=max_payload,
            maxMessagePayloadSize=max_payload,
            # A page that never finishes its handshake is dropped, like a
            # TCRP request that never finishes.
            openHandshakeTimeout=request_timeout,
            closeHandshakeTimeout=5,
            # A frame over the limit gets close code 1009, not a bare drop.
            failByDrop=False,
            # Liveness: a ping every third of the timeout. The room's sweep
            # removes a member whose pongs stop (TIMED_OUT), as it removes a
            # silent one; the socket itself is dropped later. autobahn's
            # timers run to whole seconds, hence the 2 s: the sweep (at most
            # a second late) must come first. No floor on the interval: its
            # timer fires in 0.2 s buckets after the last pong, so at the
            # shortest --timeout (0.5 s) a floor of 0.5 s left pongs further
            # apart than the timeout and the sweep took the member out.
            autoPingInterval=service.timeout / 3,
            autoPingTimeout=service.timeout + 2,
            # Liveness is what the browser answers (its pongs), never what
            # it sends: its own frames must not hold the ping timeout off.
            autoPingRestartOnAnyTraffic=False,
            # Compression would let a small frame inflate to a large one.
            perMessageCompressionAccept=lambda offers: None,
        )

    def client_ip(self, peer_host: str, forwarded_for: str | None) -> str:
        """
        The address limits are charged to. Behind a proxy on loopback, the
        last address of X-Forwarded-For: the one the proxy itself added.
        """
        ip = normalize_ip(peer_host)
        if self.behind_proxy and forwarded_for:
            last = forwarded_for.split(",")[-1].strip()
            try:
                ipaddress.ip_address(last)
            except ValueError:
                return ip
            try:
                local = ipaddress.ip_address(ip).is_loopback
            except ValueError:
                local = ip == ""  # a Unix socket's peer has no address
            if local:
                return normalize_ip(last)
        return ip

    def drain(self, limit: float = 1.5) -> defer.Deferred[None]:
        """
        When the daemon stops: close the sockets still in the lobby (1000)
        and wait, at most C{limit} seconds, for every socket to finish
        closing, so that a member's CLOSED and close code (4004: come
        back) reach its page before the process exits instead of being
        lost in a buffer.
        """
        for sock in list(self.sockets):
            if sock.life is not SocketState.ENDED:
                sock._end(CLOSE_NORMAL, "the server is stopping")
        if not self.sockets:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        timer = self.clock.callLater(limit, self._drain_done)
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    def closed(self, sock: "ChatSocket") -> None:
        self.sockets.discard(sock)
        if not self.sockets:
            self._drain_done()

    def _drain_done(self) -> None:
        waiters, self._drained = self._drained, []
        for d in waiters:
            d.callback(None)

    @property
    def active(self) -> int:
        return self.door.active

    def admit(self, ip: str) -> None:
        """Count a socket in, or refuse it over a cap (or a ban)."""
        refusal = self.door.admit(ip)
        if refusal is not None:
            self.refusals[refusal.status] += 1
            message = {
                Status.UNAVAILABLE: "the server has all the chat connections it can take; try again soon",
                Status.TOO_MANY: "too many open chat connections from your address",
            }.get(refusal.status, refusal.message)
            raise ConnectionDeny(int(refusal.status), message)


def _op(frame: binding.RoomRequest | binding.Resume) -> Op:
    """The operation a room request is answered as (a resume as a join)."""
    return frame.op if isinstance(frame, binding.RoomRequest) else Op.JOIN_ROOM


class ChatSocket(HandshakeHeaders, WebSocketServerProtocol):
    """One browser: any number of list requests, then at most one membership."""

    factory: WebChatFactory
    # (1.2) A page comes back after a restart as the same member (resume).
    resumable = True
    # Not "log": autobahn's own (txaio's, level-filtered) must stay its own.
    _log = Logger()

    ip = ""
    member: Member | None = None
    life = SocketState.CONNECTING
    _admitted = False
    _idle: IDelayedCall | None = None
    # Bytes written since the transport said its buffer is full
    # (pauseProducing); None while it is taking them.
    _unread: int | None = None

    # -- the handshake ------------------------------------------------------

    def onConnect(self, request: Any) -> None:
        f = self.factory
        headers = request.headers
        peer = getattr(self.transport.getPeer(), "host", "")
        self.ip = f.client_ip(peer, headers.get("x-forwarded-for"))
        origin = headers.get("origin", "")
        if not f.origin_rule.allows(origin):
            f.refusals["origin"] += 1
            self._log.info("refused a WebSocket from {ip}: origin {origin!r} not allowed",
                          ip=self.ip, origin=origin[:200])
            raise ConnectionDeny(403, "this page's origin may not use the chat")
        f.admit(self.ip)
        self._admitted = True
        return None

    def onOpen(self) -> None:
        if self.life is SocketState.CONNECTING:
            self.life = SocketState.LOBBY
        self.factory.sockets.add(self)
        # The transport tells its producer when its buffer is full: after
        # the upgrade that is this socket, no longer twisted.web's channel.
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        self._rearm_idle()

    # -- the send queue (IPushProducer, for the transport) ----------------------

    def pauseProducing(self) -> None:
        if self._unread is None:
            self._unread = 0

    def resumeProducing(self) -> None:
        self._unread = None

    def stopProducing(self) -> None:
        self._unread = None

    # -- frames in ----------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.life is SocketState.ENDED:
            return
        if self.member is not None and not self._still_member():
            self._removed()
            return
        try:
            if isBinary:
                raise ProtocolError(Status.BAD_REQUEST, "frames are JSON text, not binary")
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:  # autobahn checks this too
                raise ProtocolError(Status.BAD_REQUEST, "the frame is not valid UTF-8")
            frame = binding.parse_frame(text)
        except ProtocolError as e:
            self._refuse_frame(e)
            return
        if isinstance(frame, (binding.RoomRequest, binding.Resume)):
            self._room_request(frame)
        elif self.member is None:
            self._refuse_frame(ProtocolError(Status.BAD_REQUEST, "join or create a room first"))
        elif isinstance(frame, binding.Say):
            self.factory.service.say(self.member, frame.text, frame.msg_id)
        elif isinstance(frame, binding.History):
            self.factory.service.request_history(self.member, frame.first, frame.last)
        elif isinstance(frame, binding.Order):
            self._order(frame)
        else:  # Leave
            self._end(CLOSE_NORMAL, "you left the room")
            self._leave_quietly()

    def _order(self, frame: binding.Order) -> None:
        """A command (1.2): carried out by the room service, or refused here as it would."""
        member = self.member
        assert member is not None
        if not member.numbered:
            self._refuse_frame(ProtocolError(Status.BAD_REQUEST, 'commands need "version": "1.2"'))
            return
        if frame.refused:
            # Charged as a datagram would be, then answered as the server would.
            service = self.factory.service
            if member.bucket.take(self.factory.clock.seconds()):
                self._send(binding.refused_event(
                    frame.msg_id, member.name, frame.refused, int(self.factory.clock.seconds() * 1000)
                ))
            else:
                service.drops["flood"] += 1
            return
        self.factory.service.command(member, frame.msg_id, frame.body)

    def onPong(self, payload: bytes) -> None:
        if self.member is None:
            return
        if self._still_member():
            self.factory.service.touch(self.member)
        else:
            self._removed()

    def _removed(self) -> None:
        """
        The sweep removed this member (no pong or frame for the room
        timeout, then this late one): the others were told it timed out.
        """
        self._end(CLOSE_REMOVED, "you were silent too long and left the room")

    def _refuse_frame(self, error: ProtocolError) -> None:
        """
        A bad frame: say why; malformed input also ends the connection. Every
        refusal costs a request from the address's budget, so refused frames
        (a 413 over and over) cannot be sent faster than requests.
        """
        f = self.factory
        f.refusals[error.status] += 1
        if f.desk.rate_refusal(self.ip) is not None:
            f.desk.limited["request_rate"] += 1
            self._log.info("closing the WebSocket of {ip}: refused frames past the request rate", ip=self.ip)
            self._end(CLOSE_TOO_MANY, "too many refused frames; slow down")
            self._leave_quietly()
            return
        self._send(binding.encode_error(error))
        if error.status == Status.BAD_REQUEST:
            self._log.info("closing the WebSocket of {ip}: {why}", ip=self.ip, why=error.message)
            self._end(CLOSE_MALFORMED, "malformed frame")
            self._leave_quietly()

    # -- room requests --------------------------------------------------------

    def _room_request(self, frame: binding.RoomRequest | binding.Resume) -> None:
        if self.life is SocketState.ASKING:
            self._refuse_frame(ProtocolError(Status.BAD_REQUEST, "one room request at a time"))
            return
        if self.member is not None and _op(frame) != Op.LIST_ROOMS:
            self._refuse_frame(ProtocolError(Status.BAD_REQUEST, "already in a room"))
            return
        self._rearm_idle()
        self.life = SocketState.ASKING
        d = defer.ensureDeferred(self._answer(frame))
        d.addErrback(self._failed)

    async def _answer(self, frame: binding.RoomRequest | binding.Resume) -> None:
        f = self.factory
        desk = f.desk
        op = _op(frame)
        try:
            try:
                # Charged per request, from the same per-address budget TCRP uses.
                desk.charge_request(self.ip)
                if isinstance(frame, binding.Resume):
                    # (1.2) The same member, kept across a restart.
                    answered = desk.resume(frame.room, frame.username, frame.secret, self.ip, self)
                    answered.body["resumed"] = True
                else:
                    request = Request(frame.op, frame.room, frame.username, frame.password, frame.version)
                    transport = None if frame.op == Op.LIST_ROOMS else self
                    answered = await desk.answer(
                        request, self.ip, lambda: self.life is SocketState.ENDED, transport
                    )
            except ProtocolError as e:
                f.refusals[e.status] += 1
                self._log.info("refused {status} to {ip} (web): {why}",
                              status=e.status, ip=self.ip, why=e.message)
                self._send(binding.encode_response(
                    op, frame.room, e.status, e.message, **e.response_fields()
                ))
                return
        finally:
            if self.life is SocketState.ASKING:
                self.life = SocketState.LOBBY if self.member is None else SocketState.MEMBER
            self._rearm_idle()
        if answered is None:
            return
        member, body = answered.member, answered.body
        if member is not None:
            self.member = member
            self.life = SocketState.MEMBER
            self._cancel_idle()
        room = body.get("room", frame.room)
        self._send(binding.encode_response(op, room, Status.OK, _OK_MESSAGES[op]))
        self._send(binding.encode_complete(op, room, body))

    def _still_member(self) -> bool:
        member = self.member
        return member is not None and member.room.members.get(name_key(member.name)) is member

    # -- events out ---------------------------------------------------------

    def deliver(self, parsed: Event) -> None:
        """
        The member transport (ocm.server.rooms.MemberTransport): called by
        the room service, inside its fan-out, with each event for this
        member. It must not raise, or the members after it would miss the
        event.
        """
        try:
            text = binding.encode_event(parsed)
            if text is not None:
                self._send(text)
            # A close reason is at most 123 bytes.
            reason = parsed.text.encode()[:120].decode("utf-8", "ignore")
            if parsed.kind == EventKind.CLOSED:
                # (1.2) A daemon that stops, or restarts keeping a room it
                # cannot carry a browser over in: a page served 1.2 is told
                # to come back (4004) rather than that the room is over.
                stopping = parsed.text in (CLOSED_RESTARTING, CLOSED_SHUTDOWN)
                numbered = self.member is not None and self.member.numbered
                self._end(CLOSE_RESTARTING if stopping and numbered else CLOSE_ROOM_CLOSED,
                          reason or "the room closed")
            elif parsed.kind in (EventKind.KICKED, EventKind.BANNED) and not parsed.resent and self._about_me(parsed):
                # The room service has removed this member already.
                self.member = None
                self._end(CLOSE_KICKED, reason or "removed by the host")
            elif parsed.kind == EventKind.RESTARTING:
                # The room is kept as it is: this member does not leave it
                # (no LEFT), it comes back by joining again.
                self.member = None
                self._end(CLOSE_RESTARTING, reason or "the server is restarting")
        except Exception:
            self._log.failure("could not deliver an event to {ip} (web)", ip=self.ip)

    def _about_me(self, event: Event) -> bool:
        member = self.member
        return member is not None and name_key(event.name) == name_key(member.name)

    def _send(self, text: str) -> None:
        if self.life is SocketState.ENDED or self.state != self.STATE_OPEN:
            return
        data = text.encode("utf-8")
        if self._unread is not None:
            self._unread += len(data)
            if self._unread > self.factory.send_queue:
                self._slow_reader()
                return
        self.sendMessage(data, isBinary=False)

    def _slow_reader(self) -> None:
        """
        The browser leaves more unread than its queue's bound: it is
        removed (TIMED_OUT to the others, as for a silent member) and the
        connection dropped, since a close frame could not get through.
        Called inside the room's fan-out, so the removal waits a turn.
        """
        self.life = SocketState.ENDED
        self._cancel_idle()
        f = self.factory
        f.refusals["slow_reader"] += 1
        self._log.info("dropping the WebSocket of {ip}: it reads too slowly", ip=self.ip)
        member, self.member = self.member, None
        if member is not None:
            f.clock.callLater(0, f.service.drop, member)
        self.transport.abortConnection()

    # -- the end --------------------------------------------------------------

    def _end(self, code: int, reason: str) -> None:
        """Close with C{code}; nothing more is sent (a leaving host's own CLOSED included)."""
        if self.life is SocketState.ENDED:
            return
        self.life = SocketState.ENDED
        self._cancel_idle()
        self.sendClose(code, reason)

    def _leave_quietly(self) -> None:
        member, self.member = self.member, None
        if member is not None:
            self.factory.service.leave(member)  # a no-op if already removed

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.life = SocketState.ENDED
        self._cancel_idle()
        # autobahn keeps this timer past a close the peer never answered.
        if getattr(self, "closeHandshakeTimeoutCall", None) is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        # A closed tab, a lost network, a server that closed it: the member
        # leaves now (LEFT to the others, or CLOSED if it was the host).
        self._leave_quietly()
        if self._admitted:
            self._admitted = False
            self.factory.door.release(self.ip)
        self.factory.closed(self)

    def _failed(self, failure: Any) -> None:
        self._log.failure("internal error answering {ip} (web)", failure, ip=self.ip)
        self._end(CLOSE_INTERNAL, "internal error")
        self._leave_quietly()

    # -- sockets outside a room do not linger ---------------------------------

    def _rearm_idle(self) -> None:
        self._cancel_idle()
        if self.member is None and self.life is not SocketState.ENDED:
            clock = self.factory.clock
            self._idle = clock.callLater(self.factory.service.timeout, self._idle_out)

    def _idle_out(self) -> None:
        self._idle = None
        if self.member is None and self.life is not SocketState.ASKING:
            self._end(CLOSE_IDLE, "no request for a while")

    def _cancel_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
