"""
The room service: rooms, members, tokens, keys, counters and liveness
(PROTOCOL §1–§4), shared by the TCRP server and the UDP relay.

It knows no sockets. Time comes from an injected clock (the reactor, or
C{task.Clock} in tests) and sealed datagrams leave through an injected
C{send(data, address)} callable that the relay provides (the socket's own
C{sendto}: one Python frame less per delivery); an C{OSError} from it costs
that one delivery, is counted, and goes to C{send_failed}.

A member is delivered to through one of two transports. A UDP member (the
TCRP kind) has a token, a key and an address, and is sealed to in the
fan-out's own loop: that loop is the daemon's hot path. Any other member (a
browser over a WebSocket, an IRC client) has a L{MemberTransport} instead,
no token and no key: it is handed each event as an L{Event} value and
carries it over its own connection. Such members speak through
L{RoomService.say}, L{RoomService.request_history}, L{RoomService.touch}
and L{RoomService.leave}, under the same rules as datagrams.
"""

from __future__ import annotations

import secrets
import struct
from collections import Counter
from typing import Any, Callable, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ocm.wire.datagram import (
    MAX_TEXT,
    DatagramError,
    Event,
    EventKind,
    Kind,
    encode_event,
    open_envelope,
    parse_envelope,
    parse_event,
    parse_message,
    server_nonce,
)
from ocm.server.history import DEFAULT_BYTES as DEFAULT_HISTORY_BYTES
from ocm.server.history import DEFAULT_COUNT as DEFAULT_HISTORY
from ocm.server.history import History
from ocm.server.limits import TokenBucket, address_key
from ocm.wire.names import name_key
from ocm.server.passwords import PasswordHash
from ocm.server.replay import ReplayWindow
from ocm.server.sends import NEW, STALE, SendWindow
from ocm.server.sends import SLOTS as _SEND_SLOTS
from ocm.wire.tcrp import ProtocolError, Status

Address = tuple  # (host, port) as the relay's transport gives it
Send = Callable[[bytes, Address], Any]
SendFailed = Callable[[OSError, Address], None]


class MemberTransport(Protocol):
    """
    How a member without UDP is reached: a WebSocket, an IRC connection.
    C{deliver} is called inside the room's fan-out, once per event for this
    member, so it must not raise and must not block: it queues (bounded)
    and returns.
    """

    def deliver(self, event: Event) -> None: ...


VERSION = "1.1"

TOKEN_BYTES = 16  # 128 bits, PROTOCOL §1's minimum

# Enum members as plain module names for the datagram path: on Python 3.11
# each Kind.X lookup costs about 0.35 us.
_CHAT, _LEAVE, _MESSAGE = Kind.CHAT, Kind.LEAVE, EventKind.MESSAGE
_SEND, _HISTORY, _ECHO = Kind.SEND, Kind.HISTORY, EventKind.ECHO
_msg_id = struct.Struct(">I").pack
_echo = struct.Struct(">BQQB").pack  # an event's head (encode_event's), for ECHO inline
# A HISTORY request costs one token, like any datagram, and one more for
# every HISTORY_PER_TOKEN events it is answered with (docs/security.md).
HISTORY_PER_TOKEN = 10

CLOSED_HOST_LEFT = "the host left"
CLOSED_HOST_TIMED_OUT = "the host timed out"
CLOSED_SHUTDOWN = "the server is shutting down"


def normalize_ip(host: str) -> str:
    """The IP a token is bound to: IPv4 seen through an IPv6 socket unwrapped."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class Member:
    # The fan-out reads aead, address and sent once per delivery: first, so
    # they share the object's first cache line.
    __slots__ = (
        "aead", "address", "sent", "name", "name_bytes", "room", "token", "key",
        "ip", "window", "last_seen", "bucket", "sends", "transport", "version", "limit_key",
    )

    def __init__(
        self, name: str, room: Room, ip: str, now: float, bucket: TokenBucket,
        transport: MemberTransport | None = None, version: str = "1.1",
    ) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.room = room
        # Only a UDP member has a token and a key: nobody else would use them.
        self.token = "" if transport is not None else secrets.token_hex(TOKEN_BYTES)
        self.key = b"" if transport is not None else secrets.token_bytes(32)
        self.aead = AESGCM(self.key) if transport is None else None
        self.ip = ip
        self.address: Address | None = None
        self.window = ReplayWindow()
        self.last_seen = now
        self.sent = 0  # the server's nonce counter for this recipient
        self.bucket = bucket  # datagrams this member may still send now
        self.sends: SendWindow | None = None  # made on the first SEND
        self.transport = transport  # None for a UDP member
        self.version = version  # the protocol version it asked to be served
        self.limit_key = address_key(self.ip)  # what its address's shares count

    @property
    def is_host(self) -> bool:
        return self.room.host is self

    def __repr__(self) -> str:
        return f"<Member {self.name!r} of {self.room.name!r}>"


class Room:
    __slots__ = ("name", "name_bytes", "password", "members", "host", "seq", "history", "others", "owner_key")

    def __init__(self, name: str, password: PasswordHash | None, history: History | None = None) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.password = password
        self.members: dict[str, Member] = {}
        self.host: Member | None = None
        self.seq = 0
        self.history = history
        # Members with a MemberTransport (browsers, IRC), also in members.
        self.others: list[Member] = []
        # The address key of whoever created it: its share of rooms.
        self.owner_key = ""


class RoomService:
    """
    All rooms of one daemon. The TCRP side calls L{list_rooms},
    L{check_create}, L{create_room}, L{room_for_join} and L{join_room}; the
    relay calls L{datagram_received}; L{start} and L{stop} run the liveness
    sweep and, at shutdown, close every room.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float = 60.0,
        udp_port: int = 0,
        max_rooms: int = 1000,
        max_members: int = 250,
        member_rate: float = 20.0,
        member_burst: float = 40.0,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        send: Send | None = None,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.udp_port = udp_port
        self.max_rooms = max_rooms
        self.max_members = max_members
        self.member_rate = member_rate
        self.member_burst = member_burst
        self.history = history
        self.history_bytes = history_bytes
        self.send: Send = send or (lambda data, address: None)
        # Told of each failed send after it is counted; the relay logs the unusual ones.
        self.send_failed: SendFailed = lambda error, address: None
        self.rooms: dict[str, Room] = {}
        self.tokens: dict[bytes, Member] = {}  # UDP members by token
        self.member_count = 0  # every member, whatever its transport
        # Rooms hosted and members held per address key (an IPv6 /64 is one
        # address), for the front desk's per-address shares.
        self.rooms_by_address: Counter[str] = Counter()
        self.members_by_address: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        # Plain integers, counted where things happen; read through stats.
        self.received = 0  # datagrams handed to datagram_received
        self.echoes = 0
        self.duplicates = 0  # SENDs already relayed: echoed again, not relayed
        self.history_requests = 0
        self.history_events = 0
        self.expired = 0
        self._departed_sent = 0  # deliveries to members no longer here
        # Called with each Room after it closed (the cluster directory).
        self.on_room_closed: list[Callable[[Room], Any]] = []
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock

    # -- life -------------------------------------------------------------

    def start(self) -> None:
        # Sweep often enough that nobody outlives the timeout by more than a
        # tenth of it (and by at most a second).
        interval = max(0.05, min(1.0, self.timeout / 10))
        self._sweeper.start(interval, now=False)

    def stop(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for room in list(self.rooms.values()):
            self._close(room, CLOSED_SHUTDOWN)

    @property
    def stats(self) -> dict[str, int]:
        """Totals since start, for metrics; computed when read, not counted per delivery."""
        delivered = self._departed_sent + sum(
            m.sent for r in self.rooms.values() for m in r.members.values()
        )
        return {
            "received": self.received,
            "delivered": delivered - self.drops["send"],
            "echo": self.echoes,
            "duplicate": self.duplicates,
            "history_request": self.history_requests,
            "history_event": self.history_events,
            "expired": self.expired,
        }

    # -- TCRP side ----------------------------------------------------------

    def list_rooms(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "members": len(r.members), "password": r.password is not None}
            for r in self.rooms.values()
        ]

    def check_create(self, room: str) -> None:
        """Refuse a CREATE early, before the cost of hashing its password."""
        if name_key(room) in self.rooms:
            raise ProtocolError(Status.CONFLICT, f"room {room!r} already exists")
        if len(self.rooms) >= self.max_rooms:
            raise ProtocolError(Status.UNAVAILABLE, "the server has all the rooms it can hold")

    def create_room(
        self, room: str, username: str, ip: str, password: PasswordHash | None,
        transport: MemberTransport | None = None, version: str = "1.1",
    ) -> Member:
        self.check_create(room)
        history = History(self.history, self.history_bytes) if self.history else None
        r = Room(room, password, history)
        self.rooms[name_key(room)] = r
        member = self._add(r, username, ip, transport, version)
        r.host = member
        r.owner_key = member.limit_key
        self.rooms_by_address[r.owner_key] += 1
        self.log.info(
            "room {room!r} created by {user!r} from {ip}{locked}",
            room=room, user=username, ip=ip,
            locked=" (password)" if password else "",
        )
        return member

    def room_for_join(self, room: str) -> Room:
        r = self.rooms.get(name_key(room))
        if r is None:
            raise ProtocolError(Status.NOT_FOUND, f"no room named {room!r}")
        return r

    def join_room(
        self, room: str, username: str, ip: str, expected: Room | None = None,
        transport: MemberTransport | None = None, version: str = "1.1",
    ) -> Member:
        """
        Add a member. C{expected} is the room whose password was checked: if
        the room closed and was created anew meanwhile, the check is void.
        """
        r = self.room_for_join(room)
        if expected is not None and r is not expected:
            raise ProtocolError(Status.NOT_FOUND, f"room {room!r} closed while you joined")
        if name_key(username) in r.members:
            raise ProtocolError(Status.CONFLICT, f"username {username!r} is taken in room {r.name!r}")
        if len(r.members) >= self.max_members:
            raise ProtocolError(Status.UNAVAILABLE, f"room {r.name!r} is full")
        member = self._add(r, username, ip, transport, version)
        self.log.info("{user!r} joined room {room!r} from {ip}", user=username, room=r.name, ip=ip)
        self._broadcast(r, EventKind.JOINED, 0, member.name_bytes, b"", exclude=member)
        return member

    def joined_body(self, member: Member) -> dict[str, Any]:
        """
        What every way in tells a new member about its room (COMPLETE's
        transport-neutral keys); each listener adds its own (TCRP: the
        token, key and UDP port).
        """
        return {
            "host": member.is_host,
            "members": [m.name for m in member.room.members.values()],
            "timeout": self.timeout,
            "version": VERSION,
            "room": member.room.name,
            "seq": member.room.seq,
            "history": self.history,
        }

    def _add(
        self, room: Room, username: str, ip: str, transport: MemberTransport | None = None,
        version: str = "1.1",
    ) -> Member:
        now = self.clock.seconds()
        bucket = TokenBucket(self.member_rate, self.member_burst, now)
        member = Member(username, room, normalize_ip(ip), now, bucket, transport, version)
        room.members[name_key(username)] = member
        self.member_count += 1
        self.members_by_address[member.limit_key] += 1
        if transport is None:
            self.tokens[member.token.encode()] = member
        else:
            room.others.append(member)
        return member

    # -- UDP side -----------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address) -> None:
        """
        Act on one client datagram; anything wrong is dropped and counted.
        The daemon's hot path, once per datagram: the common cases are
        tested inline before calling out, as each Python call costs about
        as much as a line of this.
        """
        self.received += 1
        try:
            envelope = parse_envelope(data)
            member = self.tokens.get(envelope.token)
            if member is None or (
                envelope.room != member.room.name_bytes
                and not self._names_room(envelope.room, member.room)
            ):
                raise DatagramError("unknown")
            ip = address[0]
            if ip != member.ip and normalize_ip(ip) != member.ip:
                raise DatagramError("address")
            window = member.window
            if envelope.counter <= window.highest:
                refused = window.check(envelope.counter)
                if refused:
                    raise DatagramError(refused)
            kind, text, number, last, raw = parse_message(open_envelope(member.aead, envelope))
            now = self.clock.seconds()
            window.accept(envelope.counter)
            # Counted only once authentic, so nobody can spend another's
            # budget; a flood still refreshes liveness, but relays no more
            # than the rate.
            member.last_seen = now
            member.address = address
            if kind != _LEAVE and not member.bucket.take(now):
                raise DatagramError("flood")
            if kind == _SEND:
                sends = member.sends
                if sends is not None and number == sends.highest + 1:
                    # The common case, the member's next message, inline:
                    # what _say does, without its checks or frame.
                    room = member.room
                    room.seq += 1
                    seq = room.seq
                    sends.seqs[number % _SEND_SLOTS] = seq
                    sends.highest = number
                    self.echoes += 1
                    name = member.name_bytes
                    self._broadcast(room, _MESSAGE, seq, name, raw, member, number)
                else:
                    self._say(member, raw, number)
            elif kind == _CHAT:
                room = member.room
                room.seq += 1
                self._broadcast(room, _MESSAGE, room.seq, member.name_bytes, raw)
            elif kind == _HISTORY:
                self._history(member, number, last)
            elif kind == _LEAVE:
                self._remove(member, timed_out=False)
        except DatagramError as e:
            self.drops[e.reason] += 1
        except Exception:
            # A bug must cost one datagram, never the relay.
            self.drops["internal"] += 1
            self.log.failure("internal error on a datagram from {address}", address=address)

    def _say(self, member: Member, text: bytes, msg_id: int) -> None:
        """SEND: relay a new msg_id once and ECHO it; ECHO a repeat again."""
        sends = member.sends
        if sends is None:
            sends = member.sends = SendWindow()
        seq = sends.check(msg_id)
        if seq == STALE:
            raise DatagramError("stale")
        self.echoes += 1
        time_ms = int(self.clock.seconds() * 1000)
        if seq != NEW:
            self.duplicates += 1
            self._send_to(member, encode_event(_ECHO, seq, time_ms, member.name_bytes, _msg_id(msg_id)))
            return
        room = member.room
        room.seq += 1
        seq = room.seq
        sends.record(msg_id, seq)
        self._broadcast(room, _MESSAGE, seq, member.name_bytes, text, member, msg_id)

    def _history(self, member: Member, first: int, last: int) -> None:
        """HISTORY: resend what the room holds of first..last, to the asker only."""
        self.history_requests += 1
        room = member.room
        if room.history is None:
            expired = room.seq + 1 if first <= room.seq else None
            events: list[bytes] = []
        else:
            expired, events = room.history.request(first, last, room.seq)
        if expired is not None:
            self.expired += 1
            self._send_to(
                member,
                encode_event(EventKind.EXPIRED, expired, int(self.clock.seconds() * 1000), b"", b""),
            )
        for event in events:
            self._send_to(member, event)
        self.history_events += len(events)
        # The answer costs the asker's rate budget too: a member cannot
        # make the server send more than HISTORY_PER_TOKEN x its rate.
        member.bucket.tokens -= len(events) // HISTORY_PER_TOKEN

    # -- members without a UDP address (browsers) ---------------------------

    def _admit(self, member: Member) -> None:
        """What an accepted datagram does before its kind: liveness and rate."""
        if member.room.members.get(name_key(member.name)) is not member:
            raise DatagramError("unknown")
        now = self.clock.seconds()
        member.last_seen = now
        if not member.bucket.take(now):
            raise DatagramError("flood")

    def say(self, member: Member, text: str, msg_id: int) -> bool:
        """
        A line from a member without UDP, as SEND. False if it was dropped
        (counted in C{drops} by reason, as a datagram would be).
        """
        try:
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError:
                raise DatagramError("malformed")
            if not 1 <= len(raw) <= MAX_TEXT or not 1 <= msg_id < 2**32:
                raise DatagramError("malformed")
            self._admit(member)
            self._say(member, raw, msg_id)
        except DatagramError as e:
            self.drops[e.reason] += 1
            return False
        return True

    def request_history(self, member: Member, first: int, last: int) -> bool:
        """HISTORY from a member without UDP; False if dropped (and counted)."""
        try:
            if not 1 <= first <= last < 2**64:
                raise DatagramError("malformed")
            self._admit(member)
            self._history(member, first, last)
        except DatagramError as e:
            self.drops[e.reason] += 1
            return False
        return True

    def touch(self, member: Member) -> None:
        """Liveness from the member's own transport (a WebSocket pong)."""
        member.last_seen = self.clock.seconds()

    def leave(self, member: Member) -> None:
        if member.room.members.get(name_key(member.name)) is member:
            self._remove(member, timed_out=False)

    def drop(self, member: Member) -> None:
        """Remove a member its transport gave up on (a slow reader): TIMED_OUT to the others."""
        if member.room.members.get(name_key(member.name)) is member:
            self._remove(member, timed_out=True)

    @staticmethod
    def _names_room(raw: bytes, room: Room) -> bool:
        """A name that differs from the room's bytes but is the same room."""
        try:
            return name_key(raw.decode("utf-8")) == name_key(room.name)
        except UnicodeDecodeError:
            return False

    # -- events -------------------------------------------------------------

    def _broadcast(
        self,
        room: Room,
        kind: int,
        seq: int,
        name: bytes,
        text: bytes,
        exclude: Member | None = None,
        echo_id: int = 0,
    ) -> None:
        """
        The one fan-out: an event to every member, over its transport.
        C{exclude}, the member the event is from or about, gets the ECHO of
        its msg_id C{echo_id} instead if given (a SEND's, sealed in the same
        loop), else nothing (a JOINED's newcomer).
        """
        time_ms = int(self.clock.seconds() * 1000)
        event = encode_event(kind, seq, time_ms, name, text)
        if kind == _MESSAGE:
            history = room.history
            if history is not None:
                history.add(seq, event)
        echo = None
        if echo_id:
            echo = _echo(_ECHO, seq, time_ms, len(name)) + name + _msg_id(echo_id)
        send = self.send
        nonce = server_nonce  # seal_server, inlined: this loop runs once per delivery
        for m in room.members.values():
            address = m.address
            if address is None:
                continue
            if m is exclude:
                if echo is None:
                    continue
                payload = echo
            else:
                payload = event
            m.sent += 1
            n = nonce(m.sent)
            try:
                send(n + m.aead.encrypt(n, payload, None), address)
            except OSError as e:
                self.drops["send"] += 1
                self.send_failed(e, address)
        if room.others:
            value = Event(kind, seq, time_ms, name.decode(), text.decode())
            for m in room.others:
                if m is not exclude:
                    m.transport.deliver(value)
                elif echo_id:
                    m.transport.deliver(Event(_ECHO, seq, time_ms, value.name, "", echo_id))

    def _send_to(self, member: Member, event: bytes) -> None:
        """
        One event to one member, over whichever transport it has. Only the
        rare events come this way (a repeat's ECHO, HISTORY, EXPIRED), so a
        transport member's is parsed here from the bytes a UDP one is sealed.
        """
        if member.transport is not None:
            member.transport.deliver(parse_event(event))
            return
        address = member.address
        if address is None:
            return
        member.sent += 1
        n = server_nonce(member.sent)
        try:
            self.send(n + member.aead.encrypt(n, event, None), address)
        except OSError as e:
            self.drops["send"] += 1
            self.send_failed(e, address)

    def _forget(self, member: Member) -> None:
        self.member_count -= 1
        _count_down(self.members_by_address, member.limit_key)
        if member.transport is None:
            del self.tokens[member.token.encode()]
            self._departed_sent += member.sent
        else:
            member.room.others.remove(member)

    def _remove(self, member: Member, timed_out: bool) -> None:
        room = member.room
        if member.is_host:
            self.log.info(
                "host {user!r} {how}", user=member.name,
                how="timed out" if timed_out else "left",
            )
            self._close(room, CLOSED_HOST_TIMED_OUT if timed_out else CLOSED_HOST_LEFT)
            return
        del room.members[name_key(member.name)]
        self._forget(member)
        kind = EventKind.TIMED_OUT if timed_out else EventKind.LEFT
        self.log.info(
            "{user!r} {how} room {room!r}", user=member.name, room=room.name,
            how="timed out of" if timed_out else "left",
        )
        self._broadcast(room, kind, 0, member.name_bytes, b"")

    def _close(self, room: Room, reason: str) -> None:
        """Tell everyone, then forget the room and invalidate its tokens."""
        self._broadcast(room, EventKind.CLOSED, 0, room.host.name_bytes, reason.encode())
        for m in list(room.members.values()):
            self._forget(m)
        room.members.clear()
        if room.history is not None:
            room.history.clear()
        del self.rooms[name_key(room.name)]
        _count_down(self.rooms_by_address, room.owner_key)
        self.log.info("room {room!r} closed: {reason}", room=room.name, reason=reason)
        for hook in self.on_room_closed:
            try:
                hook(room)
            except Exception:
                self.log.failure("room-closed hook failed for {room!r}", room=room.name)
        # The host and the room point at each other: without this the pair
        # (and the host's key and AESGCM) waits for the cyclic collector.
        room.host = None

    def sweep(self) -> None:
        """Remove every member silent for C{timeout} seconds."""
        deadline = self.clock.seconds() - self.timeout
        for room in list(self.rooms.values()):
            silent = [m for m in room.members.values() if m.last_seen <= deadline]
            if room.host in silent:
                self._remove(room.host, timed_out=True)
                continue
            for m in silent:
                self._remove(m, timed_out=True)


def _count_down(counts: Counter[str], key: str) -> None:
    """One less under C{key}, never below zero, gone at zero."""
    n = counts.get(key, 0)
    if n <= 1:
        counts.pop(key, None)
    else:
        counts[key] = n - 1
