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

import hashlib
import hmac
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
    NEEDS_MEMBER,
    NUMBERED,
    Command,
    CommandOp,
    CommandRefused,
    DatagramError,
    Envelope,
    Event,
    EventKind,
    Kind,
    encode_event,
    open_envelope,
    parse_command,
    parse_envelope,
    parse_event,
    parse_message,
    refused_text,
    server_nonce,
)
from ocm.server.history import DEFAULT_BYTES as DEFAULT_HISTORY_BYTES
from ocm.server.history import DEFAULT_COUNT as DEFAULT_HISTORY
from ocm.server.history import History
from ocm.server.limits import TokenBucket, address_key
from ocm.server.moderation import BanList
from ocm.wire.names import name_key
from ocm.server.passwords import PasswordHash
from ocm.server.replay import ReplayWindow
from ocm.server.sends import NEW, REFUSED_SEQ, STALE, SendWindow
from ocm.server.sends import SLOTS as _SEND_SLOTS
from ocm.server.tombstones import Tombstones
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


VERSION = "1.1"  # what a member that asks for nothing newer is served
V12 = "1.2"

TOKEN_BYTES = 16  # 128 bits, PROTOCOL §1's minimum

# Enum members as plain module names for the datagram path: on Python 3.11
# each Kind.X lookup costs about 0.35 us.
_CHAT, _LEAVE, _MESSAGE = Kind.CHAT, Kind.LEAVE, EventKind.MESSAGE
_SEND, _HISTORY, _ECHO = Kind.SEND, Kind.HISTORY, EventKind.ECHO
_HEARTBEAT, _COMMAND, _PONG = Kind.HEARTBEAT, Kind.COMMAND, EventKind.PONG
_NUMBERED = frozenset(int(k) for k in NUMBERED)
_msg_id = struct.Struct(">I").pack
_seq = struct.Struct(">Q").pack
_echo = struct.Struct(">BQQB").pack  # an event's head (encode_event's), for ECHO inline
# A HISTORY request costs one token, like any datagram, and one more for
# every HISTORY_PER_TOKEN events it is answered with (docs/security.md).
HISTORY_PER_TOKEN = 10

CLOSED_HOST_LEFT = "the host left"
CLOSED_HOST_TIMED_OUT = "the host timed out"
CLOSED_SHUTDOWN = "the server is shutting down"
CLOSED_RESTARTING = "the server is restarting"
RESTARTING_TEXT = "the server is restarting and keeps this room; stay here"
# The text of an event the daemon's operator caused (ocm-admin), before its reason.
OPERATOR = "the server's operator"

# What a 1.1 member is sent instead of a moderation event (PROTOCOL 1.2 §3):
# a KICKED or BANNED about itself as CLOSED, the others' as LEFT; the rest
# not at all.
_LEGACY_ABOUT_OTHERS = {EventKind.KICKED: EventKind.LEFT, EventKind.BANNED: EventKind.LEFT}


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
        "numbered", "muted", "joined_at", "resume",
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
        # 1.2: served the room's one numbering of every event (PROTOCOL §3).
        self.numbered = version == V12
        self.muted = False  # 1.2: what it says is refused
        self.limit_key = address_key(self.ip)  # what its address's shares count
        self.joined_at = now
        # 1.2, a member whose transport can come back (a browser's socket):
        # the digest of the secret it resumes with after a restart.
        self.resume = b""

    @property
    def is_host(self) -> bool:
        return self.room.host is self

    def __repr__(self) -> str:
        return f"<Member {self.name!r} of {self.room.name!r}>"


class Detached:
    """
    The transport of a member restored after a restart whose own (a
    browser's socket) is not back yet: nothing reaches it until it resumes
    (L{RoomService.resume}); what it missed it asks for with HISTORY.
    """

    resumable = True

    def deliver(self, event: Event) -> None:
        pass


DETACHED = Detached()


def resume_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class Room:
    __slots__ = (
        "name", "name_bytes", "password", "members", "host", "seq", "events", "numbered", "history",
        "others", "owner_key", "bans", "created_at",
    )

    def __init__(self, name: str, password: PasswordHash | None, history: History | None = None) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.password = password
        self.members: dict[str, Member] = {}
        self.host: Member | None = None
        self.seq = 0  # the last message's number (the 1.1 view)
        self.events = 0  # the last numbered event's number (1.2: every event that changes the room)
        self.numbered = 0  # members served 1.2's numbering
        self.bans = BanList()
        self.created_at = 0.0
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
        # 1.2: removed members' tokens, kept for a timeout to answer with
        # the event that removed them.
        self.tombstones = Tombstones()
        self.pongs = 0
        self.frozen = False  # stopping: nothing more is served or sent
        self.tombstone_answers = 0
        self.commands = 0
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
        self.frozen = False
        self._sweeper.start(interval, now=False)

    def stop(self, keep: bool = False) -> None:
        """
        Close every room (CLOSED to all), or with C{keep} (1.2) keep every
        room whose host is a UDP member served 1.2: its members that a
        restart cannot carry over (1.1 clients, browsers) get CLOSED and
        leave (LEFT, numbered, to the rest), and the others RESTARTING.
        Either way nothing is sent after this (L{freeze}).
        """
        if self._sweeper.running:
            self._sweeper.stop()
        for room in list(self.rooms.values()):
            host = room.host
            if not keep or host is None or not keepable(host):
                self._close(room, CLOSED_SHUTDOWN)
                continue
            time_ms = int(self.clock.seconds() * 1000)
            for m in list(room.members.values()):
                if keepable(m):
                    continue
                self._send_to(m, encode_event(EventKind.CLOSED, 0, time_ms, host.name_bytes,
                                              CLOSED_RESTARTING.encode()))
                del room.members[name_key(m.name)]
                self._forget(m)
                self._broadcast(room, EventKind.LEFT, 0, m.name_bytes, b"")
            restarting = encode_event(EventKind.RESTARTING, room.events, time_ms, b"", RESTARTING_TEXT.encode())
            for m in room.members.values():
                self._send_to(m, restarting)
        self.freeze()

    def freeze(self) -> None:
        """
        Send nothing more and serve nothing more (the daemon is stopping):
        a server nonce counter saved for a restart must be the last used.
        """
        self.frozen = True
        self.send = lambda data, address: None

    def adopt(self, room: Room, member: Member) -> None:
        """Put back a member restored from a saved state (ocm.server.state): no event."""
        room.members[name_key(member.name)] = member
        self.member_count += 1
        self.members_by_address[member.limit_key] += 1
        if member.numbered:
            room.numbered += 1
        if member.transport is None:
            self.tokens[member.token.encode()] = member
        else:
            room.others.append(member)

    def disown(self, member: Member) -> None:
        """Undo L{adopt} (a restored room that cannot live): no event."""
        if member.room.members.get(name_key(member.name)) is member:
            del member.room.members[name_key(member.name)]
            self._forget(member)

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
            "pong": self.pongs,
            "tombstone": self.tombstone_answers,
            "command": self.commands,
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
        r.created_at = self.clock.seconds()
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
        self.check_banned(r, username, ip)
        if name_key(username) in r.members:
            raise ProtocolError(Status.CONFLICT, f"username {username!r} is taken in room {r.name!r}")
        if len(r.members) >= self.max_members:
            raise ProtocolError(Status.UNAVAILABLE, f"room {r.name!r} is full")
        member = self._add(r, username, ip, transport, version)
        self.log.info("{user!r} joined room {room!r} from {ip}", user=username, room=r.name, ip=ip)
        self._broadcast(r, EventKind.JOINED, 0, member.name_bytes, b"", exclude=member)
        return member

    def check_banned(self, room: Room, username: str, ip: str) -> None:
        """403 for a username, or an address (IPv4, IPv6 /64), the room's host banned."""
        if room.bans.refuses(username, normalize_ip(ip)):
            raise ProtocolError(Status.FORBIDDEN, f"you are banned from room {room.name!r}")

    def joined_body(self, member: Member) -> dict[str, Any]:
        """
        What every way in tells a new member about its room (COMPLETE's
        transport-neutral keys); each listener adds its own (TCRP: the
        token, key and UDP port).
        """
        room = member.room
        body: dict[str, Any] = {
            "host": member.is_host,
            "members": [m.name for m in room.members.values()],
            "timeout": self.timeout,
            "version": member.version,
            "room": room.name,
            "seq": room.events if member.numbered else room.seq,
            "history": self.history,
        }
        if member.numbered:
            # 1.2: who hosts, and who is muted, so the member list is whole.
            body["host_name"] = room.host.name if room.host is not None else ""
            body["muted"] = [m.name for m in room.members.values() if m.muted]
            secret = self._resume_secret(member)
            if secret is not None:
                body["resume"] = secret
        return body

    def resume(self, room_name: str, username: str, secret: str, ip: str, transport: MemberTransport) -> Member:
        """
        A restored member's transport is back (a browser reconnected after
        a restart): the same member, with the same seq behind it, over
        C{transport}. Refused as a JOIN would be if there is no such member
        waiting, or the secret or the address is not its own.
        """
        room = self.room_for_join(room_name)
        member = room.members.get(name_key(username))
        if member is None or member.transport is not DETACHED or not member.resume:
            raise ProtocolError(Status.NOT_FOUND, f"{username!r} is not waiting in room {room.name!r}")
        if not hmac.compare_digest(resume_digest(secret), member.resume):
            raise ProtocolError(Status.UNAUTHORIZED, "that is not your membership")
        if address_key(normalize_ip(ip)) != member.limit_key:
            raise ProtocolError(Status.FORBIDDEN, "a membership resumes from the address it joined from")
        member.transport = transport
        member.last_seen = self.clock.seconds()
        self.log.info("{user!r} is back in room {room!r} after the restart", user=member.name, room=room.name)
        return member

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
        if member.numbered:
            room.numbered += 1
        if transport is None:
            self.tokens[member.token.encode()] = member
        else:
            room.others.append(member)
        return member

    def _resume_secret(self, member: Member) -> str | None:
        """A new secret for a 1.2 member whose transport can resume after a restart."""
        if not (member.numbered and getattr(member.transport, "resumable", False)):
            return None
        secret = secrets.token_urlsafe(18)
        member.resume = resume_digest(secret)
        return secret

    # -- UDP side -----------------------------------------------------------

    def datagram_received(self, data: bytes, address: Address) -> None:
        """
        Act on one client datagram; anything wrong is dropped and counted.
        The daemon's hot path, once per datagram: the common cases are
        tested inline before calling out, as each Python call costs about
        as much as a line of this.
        """
        self.received += 1
        if self.frozen:
            self.drops["stopping"] += 1
            return
        try:
            envelope = parse_envelope(data)
            member = self.tokens.get(envelope.token)
            if member is None or (
                envelope.room != member.room.name_bytes
                and not self._names_room(envelope.room, member.room)
            ):
                if member is None and self.tombstones:
                    self._tombstone(envelope, address)
                    return
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
                if sends is not None and number == sends.highest + 1 and not member.muted:
                    # The common case, the member's next message, inline:
                    # what _say does, without its checks or frame.
                    room = member.room
                    room.seq += 1
                    seq = room.seq
                    sends.highest = number
                    self.echoes += 1
                    event_seq = self._broadcast(room, _MESSAGE, seq, member.name_bytes, raw, member, number)
                    sends.seqs[number % _SEND_SLOTS] = event_seq if member.numbered else seq
                else:
                    self._say(member, raw, number)
            elif kind == _HEARTBEAT:
                if member.numbered:
                    # 1.2: answered, with the room's current seq.
                    self.pongs += 1
                    self._send_to(member, encode_event(
                        _PONG, member.room.events, int(now * 1000), b"", b""
                    ))
            elif kind == _CHAT:
                if member.muted:
                    raise DatagramError("muted")
                room = member.room
                room.seq += 1
                self._broadcast(room, _MESSAGE, room.seq, member.name_bytes, raw)
            elif kind == _HISTORY:
                self._history(member, number, last)
            elif kind == _LEAVE:
                self._remove(member, timed_out=False)
            elif kind == _COMMAND:
                self._command(member, number, raw)
        except DatagramError as e:
            self.drops[e.reason] += 1
        except Exception:
            # A bug must cost one datagram, never the relay.
            self.drops["internal"] += 1
            self.log.failure("internal error on a datagram from {address}", address=address)

    def _say(self, member: Member, text: bytes, msg_id: int) -> None:
        """SEND: relay a new msg_id once and ECHO it; ECHO a repeat again."""
        sends = self._new_msg_id(member, msg_id)
        if sends is None:
            return
        if member.muted:
            self._refuse(member, sends, msg_id, "you are muted in this room")
            return
        self.echoes += 1
        room = member.room
        room.seq += 1
        seq = room.seq
        event_seq = self._broadcast(room, _MESSAGE, seq, member.name_bytes, text, member, msg_id)
        sends.record(msg_id, event_seq if member.numbered else seq)

    def _new_msg_id(self, member: Member, msg_id: int) -> SendWindow | None:
        """
        The member's SEND window if C{msg_id} (a SEND's or a COMMAND's: one
        sequence) is new; a repeat is answered again here (None), one too
        old is dropped.
        """
        sends = member.sends
        if sends is None:
            sends = member.sends = SendWindow()
        seq = sends.check(msg_id)
        if seq == STALE:
            raise DatagramError("stale")
        if seq != NEW:
            self.duplicates += 1
            self._answer_again(member, sends, msg_id, seq)
            return None
        return sends

    def _answer_again(self, member: Member, sends: SendWindow, msg_id: int, seq: int) -> None:
        """A retransmitted SEND or COMMAND: the same ECHO, or the same REFUSED, again."""
        time_ms = int(self.clock.seconds() * 1000)
        if seq == REFUSED_SEQ:
            why = (sends.refusals or {}).get(msg_id, "refused")
            if member.numbered or member.transport is not None:
                self._send_to(member, encode_event(
                    EventKind.REFUSED, 0, time_ms, member.name_bytes, refused_text(msg_id, why)
                ))
            return
        self.echoes += 1
        self._send_to(member, encode_event(_ECHO, seq, time_ms, member.name_bytes, _msg_id(msg_id)))

    def _refuse(self, member: Member, sends: SendWindow, msg_id: int, why: str) -> None:
        """
        REFUSED (1.2) to a COMMAND or a muted member's SEND, remembered so a
        retransmission gets it again. A 1.1 member is not sent 1.2's kinds:
        its refused SEND is dropped (counted as "muted").
        """
        sends.refuse(msg_id, why)
        if member.numbered or member.transport is not None:
            self._send_to(member, encode_event(
                EventKind.REFUSED, 0, int(self.clock.seconds() * 1000), member.name_bytes,
                refused_text(msg_id, why),
            ))
        else:
            self.drops["muted"] += 1

    def _history(self, member: Member, first: int, last: int) -> None:
        """HISTORY: resend what the room holds of first..last, to the asker only."""
        self.history_requests += 1
        room = member.room
        current = room.events if member.numbered else room.seq
        if room.history is None:
            expired = current + 1 if first <= current else None
            events: list[bytes] = []
        elif member.numbered:
            expired, events = room.history.request_events(first, last, current)
        else:
            expired, events = room.history.request(first, last, current)
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

    def command(self, member: Member, msg_id: int, body: bytes) -> bool:
        """
        COMMAND (1.2) from a member without UDP, as the datagram's: the
        JSON C{body}; answered through its transport with ECHO or REFUSED.
        False if it was dropped (counted in C{drops}).
        """
        try:
            if not 1 <= msg_id < 2**32 or not 1 <= len(body) <= 1024:
                raise DatagramError("malformed")
            self._admit(member)
            self._command(member, msg_id, body)
        except DatagramError as e:
            self.drops[e.reason] += 1
            return False
        return True

    def close_room(self, room: Room, reason: str) -> None:
        """Close C{room} on the operator's word (ocm-admin): CLOSED to all, saying why."""
        if self.rooms.get(name_key(room.name)) is room:
            self.log.info("the operator closes room {room!r}", room=room.name)
            self._close(room, reason)

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
    ) -> int:
        """
        The one fan-out: an event to every member, over its transport, in
        each member's view; returns the event's number (1.2), 0 if it has
        none. C{seq} is its 1.1 number (a MESSAGE's; 0 for the others).
        C{exclude}, the member the event is from or about, gets the ECHO of
        its msg_id C{echo_id} instead if given (a SEND's, sealed in the same
        loop), else nothing (a JOINED's newcomer).
        """
        time_ms = int(self.clock.seconds() * 1000)
        event = encode_event(kind, seq, time_ms, name, text)  # the 1.1 view
        event_seq = 0
        if kind in _NUMBERED:
            room.events += 1
            event_seq = room.events
            history = room.history
            if history is not None:
                history.add(event_seq, event)
        # 1.2's view differs in the seq alone, and only if someone asked for it.
        numbered = event[:1] + _seq(event_seq) + event[9:] if room.numbered else event
        echo = None
        if echo_id:
            echo = _echo(
                _ECHO, event_seq if exclude.numbered else seq, time_ms, len(name)
            ) + name + _msg_id(echo_id)
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
                payload = numbered if m.numbered else event
            m.sent += 1
            n = nonce(m.sent)
            try:
                send(n + m.aead.encrypt(n, payload, None), address)
            except OSError as e:
                self.drops["send"] += 1
                self.send_failed(e, address)
        if room.others:
            value = Event(kind, seq, time_ms, name.decode(), text.decode())
            value12 = Event(kind, event_seq, time_ms, value.name, value.text)
            for m in room.others:
                if m is not exclude:
                    m.transport.deliver(value12 if m.numbered else value)
                elif echo_id:
                    m.transport.deliver(Event(
                        _ECHO, event_seq if m.numbered else seq, time_ms, value.name, "", echo_id
                    ))
        return event_seq

    def _announce(self, room: Room, kind: EventKind, name: bytes, text: bytes, about: Member | None) -> int:
        """
        A 1.2 event with no 1.1 counterpart of its own (moderation): 1.2
        members get it numbered; a 1.1 member gets a KICKED or BANNED
        about itself as CLOSED and the others' as LEFT (when C{about} was
        a member), and the rest not at all. Returns its number.
        """
        time_ms = int(self.clock.seconds() * 1000)
        room.events += 1
        event_seq = room.events
        stored = encode_event(kind, 0, time_ms, name, text)
        if room.history is not None:
            room.history.add(event_seq, stored)
        numbered = stored[:1] + _seq(event_seq) + stored[9:]
        legacy = _LEGACY_ABOUT_OTHERS.get(kind) if about is not None else None
        for m in list(room.members.values()):
            if m.numbered:
                payload = numbered
            elif m is about and kind in _LEGACY_ABOUT_OTHERS:
                payload = encode_event(EventKind.CLOSED, 0, time_ms, room.host.name_bytes if room.host else b"", text)
            elif legacy is not None:
                payload = encode_event(legacy, 0, time_ms, name, b"")
            else:
                continue
            self._send_to(m, payload)
        return event_seq

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
        if member.numbered:
            member.room.numbered -= 1
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
            self._close(room, CLOSED_HOST_TIMED_OUT if timed_out else CLOSED_HOST_LEFT,
                        left=None if timed_out else member)
            return
        del room.members[name_key(member.name)]
        self._forget(member)
        kind = EventKind.TIMED_OUT if timed_out else EventKind.LEFT
        self.log.info(
            "{user!r} {how} room {room!r}", user=member.name, room=room.name,
            how="timed out of" if timed_out else "left",
        )
        event_seq = self._broadcast(room, kind, 0, member.name_bytes, b"")
        if timed_out:
            self._bury(member, encode_event(kind, event_seq, int(self.clock.seconds() * 1000),
                                            member.name_bytes, b""))

    def _bury(self, member: Member, event: bytes) -> None:
        """Keep a removed 1.2 UDP member's tombstone: C{event} is what removed it, in its view."""
        if member.numbered and member.transport is None:
            self.tombstones.add(member, event, self.clock.seconds() + self.timeout)

    def _close(self, room: Room, reason: str, keep: bool = False, left: Member | None = None) -> None:
        """
        Tell everyone, then forget the room and invalidate its tokens; each
        1.2 member but the host that C{left} keeps a tombstone (unless the
        room is C{keep}t across a restart).
        """
        host_name = room.host.name_bytes if room.host is not None else b""
        event_seq = self._broadcast(room, EventKind.CLOSED, 0, host_name, reason.encode())
        closed = encode_event(EventKind.CLOSED, event_seq, int(self.clock.seconds() * 1000),
                              host_name, reason.encode())
        for m in list(room.members.values()):
            self._forget(m)
            if not keep and m is not left:
                self._bury(m, closed)
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

    # -- 1.2: tombstones ------------------------------------------------------

    def _tombstone(self, envelope: Envelope, address: Address) -> None:
        """
        A datagram under the token of a member removed less than a timeout
        ago: authenticated as ever, then answered (at most once a second)
        with the event that removed it; nothing else is served. The checks
        are datagram_received's, in its order (written out there, on the
        hot path, rather than called).
        """
        stone = self.tombstones.get(envelope.token)
        if stone is None or envelope.room != stone.room_bytes:
            raise DatagramError("unknown")
        member = stone.member
        ip = address[0]
        if ip != member.ip and normalize_ip(ip) != member.ip:
            raise DatagramError("address")
        window = member.window
        if envelope.counter <= window.highest:
            refused = window.check(envelope.counter)
            if refused:
                raise DatagramError(refused)
        parse_message(open_envelope(member.aead, envelope))
        window.accept(envelope.counter)
        now = self.clock.seconds()
        if now - stone.answered < 1.0:
            raise DatagramError("removed")
        stone.answered = now
        member.address = address
        self.tombstone_answers += 1
        self._send_to(member, stone.event)

    # -- 1.2: moderation (COMMAND) -------------------------------------------

    def _command(self, member: Member, msg_id: int, raw: bytes) -> None:
        """COMMAND: act once per msg_id, answered with ECHO (the event's seq) or REFUSED."""
        if not member.numbered:
            raise DatagramError("version")  # a 1.2 request from a member served 1.1
        sends = self._new_msg_id(member, msg_id)
        if sends is None:
            return
        self.commands += 1
        try:
            event_seq = self.moderate(member.room, parse_command(raw), by=member)
        except CommandRefused as e:
            self._refuse(member, sends, msg_id, str(e))
            return
        sends.record(msg_id, event_seq)
        if self.rooms.get(name_key(member.room.name)) is member.room and member.room.members.get(
            name_key(member.name)
        ) is member:
            self._answer_again(member, sends, msg_id, event_seq)

    def moderate(self, room: Room, command: Command, by: Member | None = None) -> int:
        """
        Carry out a moderation command on C{room} from its host C{by}, or
        from the daemon's operator (C{by} None): the event's number, or
        L{CommandRefused} saying why not.
        """
        op, name = command.op, command.name
        who = "the host" if by is not None else "the server's operator"
        if by is not None:
            if room.host is not by:
                raise CommandRefused(f"only the host may {op.value}; ask {room.host.name if room.host else 'the host'}")
            if name_key(name) == name_key(by.name):
                raise CommandRefused(f"you cannot {op.value} yourself")
        target = room.members.get(name_key(name))
        if op in NEEDS_MEMBER and target is None:
            raise CommandRefused(f"{name!r} is not in the room")
        reason = command.reason
        if by is None:
            # PROTOCOL 1.2 §4: the operator's events say so in their text.
            reason = OPERATOR + (f": {reason}" if reason else "")
        text = reason.encode()
        if target is not None:
            name = target.name
        name_bytes = name.encode()
        if op == CommandOp.KICK or op == CommandOp.BAN:
            if op == CommandOp.BAN and not room.bans.ban(name, target.ip if target is not None else None):
                raise CommandRefused("this room has all the bans it can hold")
            kind = EventKind.KICKED if op == CommandOp.KICK else EventKind.BANNED
            self.log.info(
                "{who} {did} {user!r} in room {room!r}", who=who, room=room.name, user=name,
                did="kicked" if op == CommandOp.KICK else "banned",
            )
            if target is not None and target is room.host:
                # Only the operator gets here: a host removed closes the room.
                self._close(room, f"the host was {'kicked' if op == CommandOp.KICK else 'banned'} "
                                  f"by {reason}")
                return room.events
            event_seq = self._announce(room, kind, name_bytes, text, target)
            if target is not None:
                del room.members[name_key(target.name)]
                self._forget(target)
                self._bury(target, encode_event(kind, event_seq, int(self.clock.seconds() * 1000),
                                                name_bytes, text))
            return event_seq
        if op == CommandOp.UNBAN:
            if not room.bans.unban(name):
                raise CommandRefused(f"{name!r} is not banned")
            self.log.info("{who} unbanned {user!r} in room {room!r}", who=who, user=name, room=room.name)
            return self._announce(room, EventKind.UNBANNED, name_bytes, text if by is None else b"", None)
        if op == CommandOp.MUTE or op == CommandOp.UNMUTE:
            mute = op == CommandOp.MUTE
            if target.muted == mute:
                raise CommandRefused(f"{target.name!r} is {'already' if mute else 'not'} muted")
            target.muted = mute
            self.log.info("{who} {did} {user!r} in room {room!r}", who=who, user=target.name,
                          room=room.name, did="muted" if mute else "unmuted")
            return self._announce(room, EventKind.MUTED if mute else EventKind.UNMUTED, name_bytes,
                                  text if by is None else b"", None)
        # HOST: hand the room over.
        room.host = target
        self.log.info("{who} handed room {room!r} to {user!r}", who=who, room=room.name, user=target.name)
        return self._announce(room, EventKind.HOST, name_bytes, text if by is None else b"", None)

    def sweep(self) -> None:
        """Remove every member silent for C{timeout} seconds; forget old tombstones."""
        now = self.clock.seconds()
        self.tombstones.prune(now)
        deadline = now - self.timeout
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


def keepable(member: Member) -> bool:
    """
    A member a restart can carry over (1.2): a UDP member (its token and
    key go on), or one whose transport can resume (a browser's socket).
    """
    return member.numbered and (member.transport is None or getattr(member.transport, "resumable", False))
