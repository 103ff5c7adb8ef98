"""
One IRC connection: a thin adapter between an IRC client and the room
service, on Twisted's C{irc.IRC} (its command dispatch to C{irc_*} methods,
C{irc.parsemsg}, its numerics), through the front desk like every other way
in (ocm.server.desk).

An IRC connection is not a member: each channel it joins is one, reached
through its own L{Seat} (the L{MemberTransport} the room service delivers
to), all seats sharing the nick as their username. The connection has an
explicit life (L{State}): REGISTERING until NICK, USER and any CAP
negotiation are done (or its deadline passes), REGISTERED, then CLOSED.

Limits, as for every transport: connection caps per address (the desk's
L{Door}), the desk's per-address request rate for JOIN and LIST, a line
rate (an excess flood closes the connection), input lines within IRC's
bounds (longer ones get 417 and are dropped), and a send queue bounded in
bytes: a client that reads slower than its rooms talk is removed from its
rooms and closed (ERROR), never buffered without end. Liveness: the server
PINGs every third of the room timeout and touches the members only when
the client answers (PONG), so a vanished client times out of its rooms as a
silent UDP member does.
"""

from __future__ import annotations

import datetime
import enum
import itertools
import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.words.protocols import irc
from zope.interface import implementer

from ocm.irc import lines, names
from ocm.server.history import MAX_PER_REQUEST
from ocm.server.limits import TokenBucket
from ocm.server.rooms import Member, normalize_ip
from ocm.wire.datagram import MAX_REASON, CommandOp, Event, EventKind
from ocm.wire.names import name_key
from ocm.wire.tcrp import Op, ProtocolError, Request, Status

if TYPE_CHECKING:
    from ocm.irc.listener import IRCFactory

# Numerics Twisted's table does not name (Modern IRC, and ircd-hybrid's 479).
ERR_UNKNOWNERROR = "400"
ERR_INVALIDCAPCMD = "410"
ERR_INPUTTOOLONG = "417"
ERR_BADCHANNAME = "479"

# What CAP LS offers (IRCv3).
CAPABILITIES = ("batch", "draft/chathistory", "echo-message", "message-tags", "server-time")
CHATHISTORY_MAX = MAX_PER_REQUEST  # messages one CHATHISTORY answers with at most

# Commands a client may send before it is registered (RFC 2812 §3.1).
_BEFORE_WELCOME = frozenset({"CAP", "NICK", "USER", "PASS", "PING", "PONG", "QUIT"})

USER_HOST = "ocm"  # the user@host of every member: addresses are not shown
# Each membership is served protocol 1.2's view: moderation's events
# (KICKED, BANNED, MUTED, HOST, ...) as themselves, and one numbering of
# everything that changes a room, which msgids and chathistory use.
VERSION = "1.2"
MAX_MODES = 4  # mode changes one MODE may carry (ISUPPORT MODES)
RPL_QUIETLIST = "728"  # Solanum's +q list: <channel> q <mask>
RPL_ENDOFQUIETLIST = "729"
MAX_PENDING_ECHOES = 64


class State(enum.Enum):
    REGISTERING = "registering"
    REGISTERED = "registered"
    CLOSED = "closed"


@dataclass
class Settings:
    """What every connection of one listener shares; the defaults are the daemon's."""

    server_name: str = "ocm"
    network: str = "ocm"
    registration_timeout: float = 30.0
    ping_interval: float | None = None  # default: a third of the room timeout
    max_queue: int = 256 * 1024  # bytes waiting for a slow reader, past the transport's own buffer
    max_channels: int = 20
    line_rate: float = 10.0  # lines a second, once the burst is spent
    line_burst: float = 40.0
    playback: int = 50  # recent messages sent on JOIN (0: none)
    fingerprint: str | None = None  # the TLS certificate's, shown in the MOTD
    close_grace: float = 10.0  # seconds a closing connection has to flush


class Seat:
    """One membership of a connection: the transport the room service delivers to."""

    __slots__ = ("connection", "member", "channel", "active", "msg_ids", "echoes", "host_name")

    def __init__(self, connection: IRCConnection) -> None:
        self.connection = connection
        self.member: Member | None = None
        self.channel = ""
        self.active = False  # True from the JOIN to the PART, KICK or close
        self.msg_ids = itertools.count(1)
        # msg_id -> (command, text) of what the client said, for echo-message.
        self.echoes: OrderedDict[int, tuple[str, str]] = OrderedDict()
        self.host_name = ""  # who this client was last shown as the host (@)

    def deliver(self, event: Event) -> None:
        self.connection.deliver(self, event)

    def still_member(self) -> bool:
        m = self.member
        return m is not None and m.room.members.get(name_key(m.name)) is m


@implementer(IPushProducer)
class IRCConnection(irc.IRC):
    factory: IRCFactory
    log = Logger()

    def __init__(self) -> None:
        self.state = State.REGISTERING
        self.nick = ""
        self.realname = ""
        self.ip = ""
        self.caps: set[str] = set()
        self.seats: dict[str, Seat] = {}  # by the room's name_key
        self.joining: set[str] = set()  # name_keys with a JOIN in flight
        self._user_given = False
        self._cap_negotiating = False
        self._admitted = False
        self._inbox = b""
        self._discarding = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._closing = False
        self._deadline: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._pinger: LoopingCall | None = None
        self._ping_token = ""
        self._answered = 0.0  # when the client last answered a PING
        self._lines: TokenBucket | None = None
        self._capture: tuple[Seat, list[Event]] | None = None
        self._batches = itertools.count(1)

    # -- the connection's life ---------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        # irc.IRC.connectionMade would look the host name up (blocking): ours is set.
        self.hostname = f.settings.server_name
        self.channels: list[str] = []
        self.ip = normalize_ip(getattr(self.transport.getPeer(), "host", ""))
        refusal = f.door.admit(self.ip)
        if refusal is not None:
            f.refusals[refusal.status] += 1
            self.state = State.CLOSED
            self.transport.write(lines.line("ERROR", [f"Closing link: {refusal.message}"]))
            self.transport.loseConnection()
            return
        self._admitted = True
        now = f.clock.seconds()
        self._lines = TokenBucket(f.settings.line_rate, f.settings.line_burst, now)
        self.transport.registerProducer(self, True)
        self._deadline = f.clock.callLater(f.settings.registration_timeout, self._registration_expired)

    def connectionLost(self, reason: Any = None) -> None:
        self.state = State.CLOSED
        self._cancel_timers()
        self._leave_all()
        self._queue.clear()
        self._queued = 0
        if self._admitted:
            self._admitted = False
            self.factory.door.release(self.ip)

    def _cancel_timers(self) -> None:
        for call in (self._deadline, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._abort = None
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None

    def close(self, reason: str, *, gave_up: bool = False) -> None:
        """
        Leave every room, say ERROR, and close once it is written (or soon
        regardless). C{gave_up}: the server gave up on a client that does
        not read; its members are dropped (TIMED_OUT to the others, as for a
        silent member) and the connection aborted, as nothing more gets through.
        """
        if self.state is State.CLOSED:
            return
        self._leave_all(gave_up)
        self.state = State.CLOSED
        self._cancel_timers()
        self.transport.write(lines.line("ERROR", [f"Closing link: {self.ip} ({reason})"]))
        if gave_up:
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        self._abort = self.factory.clock.callLater(self.factory.settings.close_grace, self.transport.abortConnection)

    def _leave_all(self, gave_up: bool = False) -> None:
        seats = list(self.seats.values())
        self.seats.clear()
        service = self.factory.service
        remove = service.drop if gave_up else service.leave
        for seat in seats:
            seat.active = False
            if seat.member is not None:
                try:
                    remove(seat.member)
                except Exception:
                    self.log.failure("leaving {room!r} for {ip} (irc)", room=seat.member.room.name, ip=self.ip)

    def _registration_expired(self) -> None:
        self._deadline = None
        if self.state is State.REGISTERING:
            self.factory.refusals["registration_timeout"] += 1
            self.close("registration timed out")

    # -- the send queue (IPushProducer: the transport pauses us) -------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._queue and not self._paused and self.state is not State.CLOSED:
            data = self._queue.popleft()
            self._queued -= len(data)
            self.transport.write(data)

    def stopProducing(self) -> None:
        self._queue.clear()
        self._queued = 0

    def send(self, data: bytes) -> None:
        """Write a line now, or queue it behind a full transport; past the bound, the client goes."""
        if self.state is State.CLOSED or self._closing:
            return
        if not self._paused and not self._queue:
            self.transport.write(data)
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.factory.settings.max_queue:
            self._slow_reader()

    def sendLine(self, line: str) -> None:  # irc.IRC's helpers write through here
        self.send((line + "\r\n").encode("utf-8"))

    def _slow_reader(self) -> None:
        """
        Queued more than the bound: drop the queue and close. Called inside
        a room's fan-out, so the leaving waits for the next turn (the room
        service's loop must not see its member list change under it).
        """
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self.factory.refusals["slow_reader"] += 1
        self.log.info("closing the IRC connection of {ip}: it reads too slowly", ip=self.ip)

        def later() -> None:
            self._closing = False
            self.close("send queue full: you read too slowly", gave_up=True)

        self.factory.clock.callLater(0, later)

    # -- lines in -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Lines as bytes (irc.IRC decodes chunks, which may split a
        character): each within IRC's bounds, UTF-8, under the line rate.
        """
        if self.state is State.CLOSED:
            return
        buffer = self._inbox + data
        while self.state is not State.CLOSED:
            end = buffer.find(b"\n")
            if end < 0:
                break
            raw, buffer = buffer[:end], buffer[end + 1 :]
            if self._discarding:
                self._discarding = False
                continue
            self._line_received(raw)
        if len(buffer) > lines.MAX_INPUT:
            buffer = b""
            if not self._discarding:
                self._discarding = True
                self._too_long()
        self._inbox = buffer

    def _too_long(self) -> None:
        self.numeric(ERR_INPUTTOOLONG, "Input line was too long")

    def _line_received(self, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            return
        if not self._lines.take(self.factory.clock.seconds()):
            self.factory.refusals["flood"] += 1
            self.close("Excess Flood")
            return
        # Modern IRC: tags within their 4096 bytes, the rest within 512 (CRLF included).
        tags, _, body = raw.partition(b" ") if raw.startswith(b"@") else (b"", b"", raw)
        if len(tags) + 1 > lines.MAX_CLIENT_TAGS or len(body) > lines.MAX_LINE - 2:
            self._too_long()
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.notice("that line was not UTF-8 and was ignored")
            return
        try:
            message = lines.parse(text)
        except lines.BadLine:
            return
        self.handleCommand(message.command, message.prefix, message.params)

    def handleCommand(self, command: str, prefix: str, params: list[str]) -> None:
        if self.state is State.REGISTERING and command not in _BEFORE_WELCOME:
            self.numeric(irc.ERR_NOTREGISTERED, "You have not registered")
            return
        method = getattr(self, f"irc_{command}", None) if command.isalpha() and command.isupper() else None
        try:
            if method is None:
                self.numeric(irc.ERR_UNKNOWNCOMMAND, command[:32], "Unknown command")
            else:
                method(prefix, params)
        except Exception:
            self.log.failure("internal error on {command} from {ip} (irc)", command=command[:32], ip=self.ip)
            self.numeric(ERR_UNKNOWNERROR, command[:32], "internal error")

    # -- lines out ------------------------------------------------------------

    @property
    def me(self) -> str:
        return f"{self.nick}!{USER_HOST}@{USER_HOST}"

    def numeric(self, code: str, *params: str) -> None:
        self.send(lines.line(code, [self.nick or "*", *params], self.hostname))

    def notice(self, text: str) -> None:
        self.send(lines.line("NOTICE", [self.nick or "*", text], self.hostname))

    def _tags(
        self, time_ms: int | None = None, batch: str | None = None, msgid: str | None = None,
    ) -> dict[str, str]:
        tags: dict[str, str] = {}
        if batch is not None and "batch" in self.caps:
            tags["batch"] = batch
        if time_ms is not None and "server-time" in self.caps:
            tags["time"] = lines.server_time(time_ms)
        if msgid is not None and "message-tags" in self.caps:
            tags["msgid"] = msgid
        return tags

    def _msgid(self, seat: Seat, seq: int) -> str | None:
        return self.factory.msgid(seat.member.room, seq) if seq else None

    # -- registration ---------------------------------------------------------

    def irc_CAP(self, prefix: str, params: list[str]) -> None:
        sub = params[0].upper() if params else ""
        who = self.nick or "*"
        if sub == "LS":
            if self.state is State.REGISTERING:
                self._cap_negotiating = True
            self.send(lines.line("CAP", [who, "LS", " ".join(CAPABILITIES)], self.hostname))
        elif sub == "LIST":
            self.send(lines.line("CAP", [who, "LIST", " ".join(sorted(self.caps))], self.hostname))
        elif sub == "REQ":
            if self.state is State.REGISTERING:
                self._cap_negotiating = True
            asked = params[1] if len(params) > 1 else ""
            wanted = asked.split()
            if wanted and all(w.lstrip("-") in CAPABILITIES for w in wanted):
                for w in wanted:
                    if w.startswith("-"):
                        self.caps.discard(w[1:])
                    else:
                        self.caps.add(w)
                self.send(lines.line("CAP", [who, "ACK", asked], self.hostname))
            else:
                self.send(lines.line("CAP", [who, "NAK", asked], self.hostname))
        elif sub == "END":
            self._cap_negotiating = False
            self._try_register()
        else:
            self.numeric(ERR_INVALIDCAPCMD, sub[:32] or "*", "Invalid CAP command")

    def irc_PASS(self, prefix: str, params: list[str]) -> None:
        # No server password: room keys are given at JOIN.
        if self.state is State.REGISTERED:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")

    def irc_NICK(self, prefix: str, params: list[str]) -> None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NONICKNAMEGIVEN, "No nickname given")
            return
        wanted = params[0]
        problem = names.nick_problem(wanted)
        if problem is not None:
            self.numeric(irc.ERR_ERRONEUSNICKNAME, wanted[:names.NICKLEN], f"Erroneous nickname: {problem}")
            return
        if self.state is State.REGISTERING:
            self.nick = wanted
            self._try_register()
            return
        if wanted == self.nick:
            return
        if self.seats or self.joining:
            # Each room knows this connection by the nick it joined with.
            self.numeric(ERR_UNKNOWNERROR, "NICK", "Your nick is your name in your rooms: /part them to change it")
            return
        old = self.me
        self.nick = wanted
        self.send(lines.line("NICK", [wanted], old))

    def irc_USER(self, prefix: str, params: list[str]) -> None:
        if self.state is State.REGISTERED:
            self.numeric(irc.ERR_ALREADYREGISTRED, "You may not reregister")
            return
        if len(params) < 4:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "USER", "Not enough parameters")
            return
        self._user_given = True
        self.realname = params[3][:100]
        self._try_register()

    def _try_register(self) -> None:
        if self.state is not State.REGISTERING or not self.nick or not self._user_given or self._cap_negotiating:
            return
        self.state = State.REGISTERED
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._welcome()
        f = self.factory
        self._answered = f.clock.seconds()
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = f.clock
        self._pinger.start(f.ping_interval, now=False)

    def _welcome(self) -> None:
        f = self.factory
        from ocm import __version__

        server = self.hostname
        self.numeric(irc.RPL_WELCOME, f"Welcome to the {f.settings.network} IRC gateway, {self.nick}")
        self.numeric(irc.RPL_YOURHOST, f"Your host is {server}, running ocm {__version__}")
        self.numeric(irc.RPL_CREATED, f"This server was created {f.created}")
        self.numeric(irc.RPL_MYINFO, server, f"ocm-{__version__}", "i", "bknoqt", "bkoq")
        for raw in lines.isupport_lines(self.nick, f.isupport(), server):
            self.send(raw)
        self._motd()

    def _motd(self) -> None:
        self.numeric(irc.RPL_MOTDSTART, f"- {self.hostname} Message of the day -")
        for text in self.factory.motd():
            self.numeric(irc.RPL_MOTD, f"- {text}")
        self.numeric(irc.RPL_ENDOFMOTD, "End of /MOTD command.")

    def irc_MOTD(self, prefix: str, params: list[str]) -> None:
        self._motd()

    # -- liveness -------------------------------------------------------------

    def irc_PING(self, prefix: str, params: list[str]) -> None:
        if not params:
            self.numeric(irc.ERR_NOORIGIN, "No origin specified")
            return
        self.send(lines.line("PONG", [self.hostname, params[0]], self.hostname))

    def irc_PONG(self, prefix: str, params: list[str]) -> None:
        if self.state is not State.REGISTERED:
            return
        self._answered = self.factory.clock.seconds()
        for seat in list(self.seats.values()):
            if seat.still_member():
                self.factory.service.touch(seat.member)

    def _ping(self) -> None:
        f = self.factory
        now = f.clock.seconds()
        if now - self._answered > f.service.timeout + f.ping_interval:
            f.refusals["ping_timeout"] += 1
            self.close(f"Ping timeout: {int(now - self._answered)} seconds")
            return
        for seat in list(self.seats.values()):
            self._check_seat(seat)
        self._ping_token = f"ocm-{int(now * 1000)}"
        self.send(lines.line("PING", [self._ping_token], self.hostname))

    def _check_seat(self, seat: Seat) -> bool:
        """Whether the seat's member is still in its room; if not (the sweep), tell the client."""
        if seat.still_member():
            return True
        self._drop_seat(seat)
        self.send(lines.line("KICK", [seat.channel, self.nick, "you were silent too long and left the room"], self.hostname))
        return False

    def _drop_seat(self, seat: Seat) -> None:
        seat.active = False
        member = seat.member
        if member is not None and self.seats.get(name_key(member.room.name)) is seat:
            del self.seats[name_key(member.room.name)]

    def irc_QUIT(self, prefix: str, params: list[str]) -> None:
        reason = params[0][:200] if params else ""
        self.close(f"Quit: {reason}" if reason else "Quit")

    # -- channels -------------------------------------------------------------

    def irc_JOIN(self, prefix: str, params: list[str]) -> None:
        if not params:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "JOIN", "Not enough parameters")
            return
        if params[0] == "0":
            self.irc_PART(prefix, [",".join(s.channel for s in self.seats.values())] if self.seats else [])
            return
        chans = params[0].split(",")
        keys = params[1].split(",") if len(params) > 1 else []
        for i, chan in enumerate(chans[: self.factory.settings.max_channels]):
            if chan:
                key = keys[i] if i < len(keys) else ""
                d = defer.ensureDeferred(self._join(chan, key))
                d.addErrback(self._internal, "JOIN")

    async def _join(self, chan: str, key: str) -> None:
        f = self.factory
        problem = names.channel_problem(chan)
        if problem is not None:
            self.numeric(ERR_BADCHANNAME, chan[: names.CHANNELLEN], f"Illegal channel name: {problem}")
            return
        room = names.room_name(chan)
        assert room is not None
        k = name_key(room)
        if k in self.seats or k in self.joining:
            return
        if len(self.seats) + len(self.joining) >= f.settings.max_channels:
            self.numeric(irc.ERR_TOOMANYCHANNELS, chan, "You have joined too many channels")
            return
        username = names.username(self.nick)
        assert username is not None
        seat = Seat(self)
        self.joining.add(k)
        op = Op.JOIN_ROOM
        try:
            try:
                f.desk.charge_request(self.ip)
                gone = lambda: self.state is State.CLOSED
                try:
                    answer = await f.desk.answer(Request(Op.JOIN_ROOM, room, username, key, VERSION), self.ip, gone, seat)
                except ProtocolError as e:
                    if e.status != Status.NOT_FOUND:
                        raise
                    # No such room: JOIN makes it, as IRC servers do; the key is its password.
                    op = Op.CREATE_ROOM
                    try:
                        answer = await f.desk.answer(Request(Op.CREATE_ROOM, room, username, key, VERSION), self.ip, gone, seat)
                    except ProtocolError as e2:
                        if e2.status != Status.CONFLICT:
                            raise
                        op = Op.JOIN_ROOM  # made by someone else meanwhile
                        answer = await f.desk.answer(Request(Op.JOIN_ROOM, room, username, key, VERSION), self.ip, gone, seat)
            except ProtocolError as e:
                f.refusals[e.status] += 1
                self._join_refused(chan, op, e)
                return
        finally:
            self.joining.discard(k)
        if answer is None or answer.member is None:
            return
        member = answer.member
        seat.member = member
        if self.state is State.CLOSED:
            f.service.leave(member)
            return
        seat.channel = names.channel(member.room.name)
        seat.host_name = member.room.host.name if member.room.host is not None else ""
        seat.active = True
        self.seats[name_key(member.room.name)] = seat
        self.send(lines.line("JOIN", [seat.channel], self.me))
        self._topic(seat)
        self._names(seat)
        self._playback(seat)

    def _join_refused(self, chan: str, op: Op, e: ProtocolError) -> None:
        """A desk refusal as the numeric an IRC client shows for a failed JOIN."""
        why = e.message
        if e.retry_after is not None and e.status in (Status.TOO_MANY, Status.UNAVAILABLE):
            why = f"{why} (try again in {max(1, int(e.retry_after + 0.999))} s)"
        if e.status == Status.UNAUTHORIZED:
            self.numeric(irc.ERR_BADCHANNELKEY, chan, f"Cannot join channel (+k): {why}")
        elif e.status == Status.FORBIDDEN:
            self.numeric(irc.ERR_BANNEDFROMCHAN, chan, f"Cannot join channel (+b): {why}")
        elif e.status == Status.CONFLICT:
            self.numeric(irc.ERR_NICKNAMEINUSE, self.nick, f"Nickname is already in use in {chan}: {why}")
        elif e.status == Status.UNAVAILABLE and op == Op.JOIN_ROOM and e.retry_after is None:
            self.numeric(irc.ERR_CHANNELISFULL, chan, f"Cannot join channel (+l): {why}")
        elif e.status in (Status.TOO_MANY, Status.UNAVAILABLE):
            self.numeric(irc.RPL_TRYAGAIN, "JOIN", f"{chan}: {why}")
        elif e.status == Status.BAD_REQUEST:
            self.numeric(ERR_BADCHANNAME, chan, f"Illegal channel name: {why}")
        elif e.status == Status.REDIRECT:
            # Cluster mode: the room lives on another node, which IRC cannot follow.
            self.numeric(irc.ERR_NOSUCHCHANNEL, chan, f"{why}: connect your IRC client to that node")
        else:
            self.numeric(irc.ERR_NOSUCHCHANNEL, chan, why)

    def _topic(self, seat: Seat) -> None:
        room = seat.member.room
        host = room.host.name if room.host is not None else "nobody"
        locked = ", with a password" if room.password is not None else ""
        self.numeric(irc.RPL_TOPIC, seat.channel, f"ocm room \u201c{room.name}\u201d, hosted by {host}{locked}")

    def _names(self, seat: Seat) -> None:
        room = seat.member.room
        host = room.host
        entries = [("@" if m is host else "") + names.nick(m.name) for m in room.members.values()]
        head = lines.line(irc.RPL_NAMREPLY, [self.nick, "=", seat.channel, "x"], self.hostname)
        budget = lines.MAX_LINE - len(head) + 1
        chunk: list[str] = []
        size = 0
        for entry in entries:
            n = len(entry.encode("utf-8")) + 1
            if chunk and size + n > budget:
                self.numeric(irc.RPL_NAMREPLY, "=", seat.channel, " ".join(chunk))
                chunk, size = [], 0
            chunk.append(entry)
            size += n
        if chunk:
            self.numeric(irc.RPL_NAMREPLY, "=", seat.channel, " ".join(chunk))
        self.numeric(irc.RPL_ENDOFNAMES, seat.channel, "End of /NAMES list.")

    def _playback(self, seat: Seat) -> None:
        """The room's recent messages, as one chathistory batch (IRCv3 batch) where the client takes it."""
        count = self.factory.settings.playback
        if count <= 0 or "draft/chathistory" in self.caps:
            return  # a chathistory client asks for what it lacks itself
        held = (self._held(seat) or [])[-count:]
        if not held:
            return
        batch = str(next(self._batches))
        if "batch" in self.caps:
            self.send(lines.line("BATCH", [f"+{batch}", "chathistory", seat.channel], self.hostname))
        for event in held:
            text = event.text
            if "server-time" not in self.caps:
                text = f"[{lines.server_time(event.time_ms)[11:19]}] {text}"
            tags = self._tags(event.time_ms, batch, self._msgid(seat, event.seq))
            for raw in lines.text_lines("PRIVMSG", seat.channel, text, _prefix(event.name), tags):
                self.send(raw)
        if "batch" in self.caps:
            self.send(lines.line("BATCH", [f"-{batch}"], self.hostname))

    def irc_PART(self, prefix: str, params: list[str]) -> None:
        if not params or not params[0]:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "PART", "Not enough parameters")
            return
        reason = params[1][:200] if len(params) > 1 else ""
        for chan in params[0].split(","):
            seat = self._seat(chan)
            if seat is None:
                self.numeric(irc.ERR_NOTONCHANNEL, chan[: names.CHANNELLEN] or "*", "You're not on that channel")
                continue
            self._drop_seat(seat)
            self.send(lines.line("PART", [seat.channel, *([reason] if reason else [])], self.me))
            self.factory.service.leave(seat.member)

    def _seat(self, chan: str) -> Seat | None:
        room = names.room_name(chan)
        if room is None:
            return None
        seat = self.seats.get(name_key(room))
        if seat is not None and not self._check_seat(seat):
            return None
        return seat

    def _charged(self, command: str) -> bool:
        """
        Take one request from the address's budget (the desk's) for a reply
        that grows with a room (NAMES, WHO): 263 and False past it.
        """
        try:
            self.factory.desk.charge_request(self.ip)
        except ProtocolError as e:
            self.factory.refusals[e.status] += 1
            self.numeric(irc.RPL_TRYAGAIN, command, e.message)
            return False
        return True

    def irc_NAMES(self, prefix: str, params: list[str]) -> None:
        if not self._charged("NAMES"):
            return
        chans = params[0].split(",") if params and params[0] else [s.channel for s in self.seats.values()]
        for chan in chans[: self.factory.settings.max_channels]:
            seat = self._seat(chan)
            if seat is not None:
                self._names(seat)
            else:
                self.numeric(irc.RPL_ENDOFNAMES, chan[: names.CHANNELLEN] or "*", "End of /NAMES list.")

    def irc_TOPIC(self, prefix: str, params: list[str]) -> None:
        if not params:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "TOPIC", "Not enough parameters")
            return
        seat = self._seat(params[0])
        if seat is None:
            self.numeric(irc.ERR_NOTONCHANNEL, params[0][: names.CHANNELLEN], "You're not on that channel")
        elif len(params) > 1:
            self.numeric(irc.ERR_CHANOPRIVSNEEDED, seat.channel, "ocm rooms have no topic to set")
        else:
            self._topic(seat)

    def irc_WHO(self, prefix: str, params: list[str]) -> None:
        if not self._charged("WHO"):
            return
        mask = params[0] if params else "*"
        seat = self._seat(mask) if mask.startswith("#") else None
        if seat is not None:
            room = seat.member.room
            for m in room.members.values():
                flags = "H" + ("@" if m is room.host else "")
                self.numeric(
                    irc.RPL_WHOREPLY, seat.channel, USER_HOST, USER_HOST, self.hostname,
                    names.nick(m.name), flags, f"0 {m.name}",
                )
        elif mask == self.nick:
            self.numeric(irc.RPL_WHOREPLY, "*", USER_HOST, USER_HOST, self.hostname, self.nick, "H", f"0 {self.realname or self.nick}")
        self.numeric(irc.RPL_ENDOFWHO, mask[: names.CHANNELLEN], "End of WHO list.")

    def irc_WHOIS(self, prefix: str, params: list[str]) -> None:
        target = params[-1] if params else ""
        if not target:
            self.numeric(irc.ERR_NONICKNAMEGIVEN, "No nickname given")
            return
        if target == self.nick:
            self.numeric(irc.RPL_WHOISUSER, self.nick, USER_HOST, USER_HOST, "*", self.realname or self.nick)
        else:
            shared = [s.channel for s in self.seats.values() if s.member is not None
                      and (u := names.username(target)) is not None and name_key(u) in s.member.room.members]
            if shared:
                self.numeric(irc.RPL_WHOISUSER, target, USER_HOST, USER_HOST, "*", names.username(target) or target)
                self.numeric("319", target, " ".join(shared))
            else:
                self.numeric(irc.ERR_NOSUCHNICK, target[: names.NICKLEN], "No such nick in your rooms")
        self.numeric(irc.RPL_ENDOFWHOIS, target[: names.NICKLEN], "End of /WHOIS list.")

    def irc_MODE(self, prefix: str, params: list[str]) -> None:
        if not params:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "MODE", "Not enough parameters")
            return
        target = params[0]
        if not target.startswith("#"):
            if target == self.nick:
                if len(params) == 1:
                    self.numeric(irc.RPL_UMODEIS, "+")
                return  # user modes are accepted and ignored
            self.numeric(irc.ERR_USERSDONTMATCH, "Cannot change mode for other users")
            return
        seat = self._seat(target)
        if seat is None:
            self.numeric(irc.ERR_NOTONCHANNEL, target[: names.CHANNELLEN], "You're not on that channel")
            return
        modes = params[1] if len(params) > 1 else ""
        if not modes:
            key = "k" if seat.member.room.password is not None else ""
            self.numeric(irc.RPL_CHANNELMODEIS, seat.channel, f"+nt{key}")
        else:
            self._channel_mode(seat, modes[:32], list(params[2:]))

    def irc_LIST(self, prefix: str, params: list[str]) -> None:
        wanted = None
        if params and params[0]:
            wanted = {name_key(r) for r in map(names.room_name, params[0].split(",")) if r is not None}
        d = defer.ensureDeferred(self._list(wanted))
        d.addErrback(self._internal, "LIST")

    async def _list(self, wanted: set[str] | None) -> None:
        f = self.factory
        try:
            f.desk.charge_request(self.ip)
            answer = await f.desk.answer(Request(Op.LIST_ROOMS, ""), self.ip, lambda: self.state is State.CLOSED)
        except ProtocolError as e:
            f.refusals[e.status] += 1
            self.numeric(irc.RPL_TRYAGAIN, "LIST", e.message)
            return
        if answer is None or self.state is State.CLOSED:
            return
        self.numeric(irc.RPL_LISTSTART, "Channel", "Users  Name")
        for entry in answer.body.get("rooms", []):
            room = str(entry.get("name", entry.get("room", "")))
            if not room or (wanted is not None and name_key(room) not in wanted):
                continue
            chan = names.channel(room)
            if names.channel_problem(chan) is not None:
                continue  # too long to join over IRC
            topic = "password" if entry.get("password") else ""
            self.numeric(irc.RPL_LIST, chan, str(int(entry.get("members", 0))), topic)
        self.numeric(irc.RPL_LISTEND, "End of /LIST")

    # -- talking --------------------------------------------------------------

    def irc_PRIVMSG(self, prefix: str, params: list[str]) -> None:
        self._talk("PRIVMSG", params)

    def irc_NOTICE(self, prefix: str, params: list[str]) -> None:
        self._talk("NOTICE", params)

    def _talk(self, command: str, params: list[str]) -> None:
        """PRIVMSG and NOTICE to channels (RFC 2812 §3.3); a NOTICE never gets an error back."""
        quiet = command == "NOTICE"
        if not params or not params[0]:
            if not quiet:
                self.numeric(irc.ERR_NORECIPIENT, f"No recipient given ({command})")
            return
        if len(params) < 2 or not params[1]:
            if not quiet:
                self.numeric(irc.ERR_NOTEXTTOSEND, "No text to send")
            return
        text = params[1]
        for target in params[0].split(",")[:4]:
            if not target.startswith("#"):
                if not quiet:
                    self.numeric(irc.ERR_NOSUCHNICK, target[: names.NICKLEN], "ocm has no private messages: talk in a channel")
                continue
            seat = self._seat(target)
            if seat is None:
                if not quiet:
                    self.numeric(irc.ERR_CANNOTSENDTOCHAN, target[: names.CHANNELLEN], "Cannot send to channel: you're not on it")
                continue
            self._say(seat, command, text, quiet)

    def _say(self, seat: Seat, command: str, text: str, quiet: bool) -> None:
        said = text
        if text.startswith("\x01"):
            body = text.strip("\x01")
            if not body.upper().startswith("ACTION "):
                return  # other CTCP to a channel: nothing an ocm member can read
            said = "* " + body[7:]
        msg_id = next(seat.msg_ids)
        # The ECHO comes inside say(), so what to echo is kept first.
        seat.echoes[msg_id] = (command, text)
        while len(seat.echoes) > MAX_PENDING_ECHOES:
            seat.echoes.popitem(last=False)
        if not self.factory.service.say(seat.member, said, msg_id):
            seat.echoes.pop(msg_id, None)
            if not quiet:
                self.numeric(irc.ERR_CANNOTSENDTOCHAN, seat.channel, "Cannot send to channel: too fast, message dropped")

    # -- moderation (the host's) ----------------------------------------------

    def irc_KICK(self, prefix: str, params: list[str]) -> None:
        """KICK #room nick[,nick] [:reason] (RFC 2812 §3.2.8): the host removes members."""
        if len(params) < 2:
            self.numeric(irc.ERR_NEEDMOREPARAMS, "KICK", "Not enough parameters")
            return
        seat = self._host_seat(params[0])
        if seat is None:
            return
        reason = _reason(params[2]) if len(params) > 2 else ""
        room = seat.member.room
        for nickname in params[1].split(",")[:MAX_MODES]:
            user = names.username(nickname)
            if user is None or name_key(user) not in room.members:
                self.numeric(irc.ERR_USERNOTINCHANNEL, nickname[: names.NICKLEN] or "*", seat.channel,
                             "They aren't on that channel")
                continue
            if not self._moderate(seat, CommandOp.KICK, user, reason) or not seat.active:
                return

    def _host_seat(self, chan: str) -> Seat | None:
        """The seat on C{chan} if this client hosts it; else the numeric that says why not."""
        seat = self._seat(chan)
        if seat is None:
            self.numeric(irc.ERR_NOTONCHANNEL, chan[: names.CHANNELLEN] or "*", "You're not on that channel")
            return None
        if not seat.member.is_host:
            self.numeric(irc.ERR_CHANOPRIVSNEEDED, seat.channel, "You're not the room's host")
            return None
        return seat

    def _moderate(self, seat: Seat, op: CommandOp, user: str, reason: str = "") -> bool:
        """
        One moderation command as the member's COMMAND (RoomService.command:
        the member rate, once per msg_id); a refusal comes back as REFUSED
        (482 with the room's reason), success as the event itself. False if
        it was dropped (too fast).
        """
        body: dict[str, str] = {"op": op.value, "name": user}
        if reason:
            body["reason"] = reason
        msg_id = next(seat.msg_ids)
        seat.echoes[msg_id] = ("COMMAND", op.value)  # REFUSED and ECHO come inside command()
        while len(seat.echoes) > MAX_PENDING_ECHOES:
            seat.echoes.popitem(last=False)
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        if not self.factory.service.command(seat.member, msg_id, raw):
            seat.echoes.pop(msg_id, None)
            self.numeric(irc.RPL_TRYAGAIN, "KICK" if op == CommandOp.KICK else "MODE", "too fast: try again in a moment")
            return False
        return True

    def _channel_mode(self, seat: Seat, modes: str, args: list[str]) -> None:
        """
        MODE #room with changes: +b/-b (ban, unban a name), +q/-q (mute,
        unmute), +o (hand the room over), each the host's alone; b and q
        alone list the bans and the muted.
        """
        room = seat.member.room
        changes: list[tuple[str, str, str | None]] = []
        sign = "+"
        for ch in modes:
            if ch in "+-":
                sign = ch
                continue
            arg = args.pop(0) if ch in "boq" and args else None
            changes.append((sign, ch, arg))
        for sign, ch, arg in changes[:MAX_MODES]:
            if ch in "bq" and arg is None:
                if ch == "b":
                    for name in room.bans.names():
                        self.numeric(irc.RPL_BANLIST, seat.channel, _mask(name))
                    self.numeric(irc.RPL_ENDOFBANLIST, seat.channel, "End of channel ban list")
                else:
                    for m in room.members.values():
                        if m.muted:
                            self.numeric(RPL_QUIETLIST, seat.channel, "q", _mask(m.name))
                    self.numeric(RPL_ENDOFQUIETLIST, seat.channel, "q", "End of channel quiet list")
                continue
            if ch not in "boq":
                self.numeric(irc.ERR_UNKNOWNMODE, ch, "is not a mode an ocm room can change")
                continue
            if not seat.member.is_host:
                self.numeric(irc.ERR_CHANOPRIVSNEEDED, seat.channel, "You're not the room's host")
                return
            if arg is None:
                self.numeric(irc.ERR_NEEDMOREPARAMS, "MODE", "Not enough parameters")
                continue
            user = names.username(arg.split("!", 1)[0])
            if user is None:
                self.numeric(irc.ERR_NOSUCHNICK, arg[: names.NICKLEN], "Not a nick (ocm bans names, not masks)")
                continue
            if ch == "o" and sign == "-":
                self.numeric(irc.ERR_CHANOPRIVSNEEDED, seat.channel, "A room always has a host: give it with +o")
                continue
            op = {("+", "b"): CommandOp.BAN, ("-", "b"): CommandOp.UNBAN, ("+", "q"): CommandOp.MUTE,
                  ("-", "q"): CommandOp.UNMUTE, ("+", "o"): CommandOp.HOST}[(sign, ch)]
            if not self._moderate(seat, op, user) or not seat.active:
                return

    # -- draft/chathistory ----------------------------------------------------

    def irc_CHATHISTORY(self, prefix: str, params: list[str]) -> None:
        """
        IRCv3 draft/chathistory over the room's history: LATEST, BEFORE,
        AFTER, AROUND, BETWEEN by msgid or timestamp; TARGETS lists none
        (ocm has no private conversations, and a channel's is asked by name).
        """
        sub = params[0].upper() if params else ""
        if sub == "TARGETS":
            batch = str(next(self._batches))
            self.send(lines.line("BATCH", [f"+{batch}", "draft/chathistory-targets"], self.hostname))
            self.send(lines.line("BATCH", [f"-{batch}"], self.hostname))
            return
        wanted = {"LATEST": 4, "BEFORE": 4, "AFTER": 4, "AROUND": 4, "BETWEEN": 5}.get(sub)
        if wanted is None or len(params) < wanted:
            self._fail("INVALID_PARAMS", sub or "*", "CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN target reference(s) limit")
            return
        target = params[1]
        seat = self._seat(target) if target.startswith("#") else None
        if seat is None:
            self._fail("INVALID_TARGET", sub, target[: names.CHANNELLEN] or "*", "You're not on that channel")
            return
        try:
            limit = int(params[-1])
        except ValueError:
            limit = 0
        refs = [_reference(r) for r in params[2:-1]]
        if not 1 <= limit or any(r is None for r in refs) or (refs[0] == ("*", 0) and sub != "LATEST") or (
            sub == "BETWEEN" and ("*", 0) in refs
        ):
            self._fail("INVALID_PARAMS", sub, "a reference is *, msgid=... or timestamp=..., and a limit a whole number")
            return
        limit = min(limit, CHATHISTORY_MAX)
        room = seat.member.room
        events = self._held(seat)
        if events is None:
            self._fail("MESSAGE_ERROR", sub, target, "too many requests: try again in a moment")
            return

        def before(e: Event, ref: tuple[str, int]) -> bool:
            kind, value = ref
            return (e.seq if kind == "msgid" else e.time_ms) < value

        def after(e: Event, ref: tuple[str, int]) -> bool:
            kind, value = ref
            return (e.seq if kind == "msgid" else e.time_ms) > value

        refs_ok = [self._resolve(room, r) for r in refs]
        if any(r is None for r in refs_ok):
            chosen: list[Event] = []  # a msgid of another room, or of one gone
        elif sub == "LATEST":
            ref = refs_ok[0]
            chosen = (events if ref[0] == "*" else [e for e in events if after(e, ref)])[-limit:]
        elif sub == "BEFORE":
            chosen = [e for e in events if before(e, refs_ok[0])][-limit:]
        elif sub == "AFTER":
            chosen = [e for e in events if after(e, refs_ok[0])][:limit]
        elif sub == "AROUND":
            earlier = [e for e in events if before(e, refs_ok[0])]
            later = [e for e in events if not before(e, refs_ok[0])]
            half = limit // 2
            chosen = earlier[-half:] if half else []
            chosen = chosen + later[: limit - len(chosen)]
        else:  # BETWEEN, either way round, exclusive of both ends
            a, b = refs_ok
            forwards = sum(before(e, a) for e in events) <= sum(before(e, b) for e in events)
            low, high = (a, b) if forwards else (b, a)
            inside = [e for e in events if after(e, low) and before(e, high)]
            chosen = inside[:limit] if forwards else inside[-limit:]
        batch = str(next(self._batches))
        self.send(lines.line("BATCH", [f"+{batch}", "chathistory", seat.channel], self.hostname))
        for e in chosen:
            tags = self._tags(e.time_ms, batch, self._msgid(seat, e.seq))
            for raw in lines.text_lines("PRIVMSG", seat.channel, e.text, _prefix(e.name), tags):
                self.send(raw)
        self.send(lines.line("BATCH", [f"-{batch}"], self.hostname))

    def _held(self, seat: Seat) -> list[Event] | None:
        """
        The messages among the room's last 100 events, oldest first, asked
        for as HISTORY (and paid for as one); None if refused.
        """
        member = seat.member
        room = member.room
        current = room.events if member.numbered else room.seq
        if current <= 0:
            return []
        self._capture = (seat, [])
        try:
            ok = self.factory.service.request_history(member, max(1, current - MAX_PER_REQUEST + 1), current)
            return self._capture[1] if ok else None
        finally:
            self._capture = None

    def _resolve(self, room: Any, ref: tuple[str, Any]) -> tuple[str, int] | None:
        """A parsed reference as (kind, seq or time_ms) in C{room}; None for another room's msgid."""
        kind, value = ref
        if kind == "msgid":
            return ("msgid", value[1]) if self.factory.room_token(room) == value[0] else None
        return ref

    def _fail(self, code: str, command_or_sub: str, *context: str) -> None:
        """IRCv3 standard replies: FAIL CHATHISTORY <code> <context...> :<description>."""
        *ctx, description = (command_or_sub, *context)
        self.send(lines.line("FAIL", ["CHATHISTORY", code, *ctx, description], self.hostname))

    # -- events out -----------------------------------------------------------

    def deliver(self, seat: Seat, event: Event) -> None:
        """
        An event for one of this connection's members, as IRC lines. Runs
        inside the room's fan-out: it only formats and queues, and never raises.
        """
        try:
            if not seat.active:
                return
            self._deliver(seat, event)
        except Exception:
            self.log.failure("could not deliver an event to {ip} (irc)", ip=self.ip)

    def _deliver(self, seat: Seat, event: Event) -> None:
        kind = event.kind
        chan = seat.channel
        if kind == EventKind.MESSAGE and not event.resent:
            tags = self._tags(event.time_ms, msgid=self._msgid(seat, event.seq))
            for raw in lines.text_lines("PRIVMSG", chan, event.text, _prefix(event.name), tags):
                self.send(raw)
        elif kind == EventKind.HISTORY or event.resent:
            # Asked for by _held (playback, chathistory): only the messages.
            if self._capture is not None and self._capture[0] is seat and kind in (EventKind.HISTORY, EventKind.MESSAGE):
                self._capture[1].append(event)
        elif kind == EventKind.ECHO:
            said = seat.echoes.pop(event.msg_id, None)
            if said is not None and said[0] != "COMMAND" and "echo-message" in self.caps:
                command, text = said
                tags = self._tags(event.time_ms, msgid=self._msgid(seat, event.seq))
                for raw in lines.text_lines(command, chan, text, self.me, tags):
                    self.send(raw)
        elif kind == EventKind.JOINED:
            self.send(lines.line("JOIN", [chan], _prefix(event.name), self._tags(event.time_ms)))
        elif kind == EventKind.LEFT:
            self.send(lines.line("PART", [chan, "left the room"], _prefix(event.name), self._tags(event.time_ms)))
        elif kind == EventKind.TIMED_OUT:
            # PART, not QUIT: the same name in another room is another member.
            self.send(lines.line("PART", [chan, "timed out"], _prefix(event.name), self._tags(event.time_ms)))
        elif kind == EventKind.CLOSED:
            self._drop_seat(seat)
            reason = f"the room closed: {event.text}" if event.text else "the room closed"
            self.send(lines.line("KICK", [chan, self.nick, reason], self.hostname, self._tags(event.time_ms)))
        elif kind in (EventKind.KICKED, EventKind.BANNED):
            room = seat.member.room
            tags = self._tags(event.time_ms)
            by = _prefix(seat.host_name) if seat.host_name else self.hostname
            if kind == EventKind.BANNED:
                self.send(lines.line("MODE", [chan, "+b", _mask(event.name)], by, tags))
            if name_key(event.name) in room.members:  # not yet removed: it is about a member
                if name_key(event.name) == name_key(seat.member.name):
                    self._drop_seat(seat)
                self.send(lines.line("KICK", [chan, names.nick(event.name), event.text or EventKind(kind).name.lower()], by, tags))
        elif kind == EventKind.UNBANNED:
            by = _prefix(seat.host_name) if seat.host_name else self.hostname
            self.send(lines.line("MODE", [chan, "-b", _mask(event.name)], by, self._tags(event.time_ms)))
        elif kind in (EventKind.MUTED, EventKind.UNMUTED):
            by = _prefix(seat.host_name) if seat.host_name else self.hostname
            sign = "+q" if kind == EventKind.MUTED else "-q"
            self.send(lines.line("MODE", [chan, sign, _mask(event.name)], by, self._tags(event.time_ms)))
        elif kind == EventKind.HOST:
            old, seat.host_name = seat.host_name, event.name
            by = _prefix(old) if old else self.hostname
            if old and name_key(old) != name_key(event.name):
                self.send(lines.line("MODE", [chan, "-o+o", names.nick(old), names.nick(event.name)], by, self._tags(event.time_ms)))
            else:
                self.send(lines.line("MODE", [chan, "+o", names.nick(event.name)], by, self._tags(event.time_ms)))
        elif kind == EventKind.REFUSED:
            said = seat.echoes.pop(event.msg_id, None)
            if said is not None and said[0] == "PRIVMSG":
                self.numeric(irc.ERR_CANNOTSENDTOCHAN, chan, f"Cannot send to channel: {event.text or 'refused'}")
            elif said is not None and said[0] == "COMMAND":
                self.numeric(irc.ERR_CHANOPRIVSNEEDED, chan, event.text or f"{said[1]} refused")
        elif kind in (EventKind.EXPIRED, EventKind.PONG):
            return
        else:
            # RESTARTING, and kinds yet to come, as words to the channel.
            try:
                what = EventKind(kind).name.lower().replace("_", " ")
            except ValueError:
                return
            text = " ".join(filter(None, (event.name, what))) + (f": {event.text}" if event.text else "")
            self.send(lines.line("NOTICE", [chan, text], self.hostname, self._tags(event.time_ms)))

    def _internal(self, failure: Any, command: str) -> None:
        self.log.failure("internal error on {command} from {ip} (irc)", failure, command=command, ip=self.ip)
        if self.state is not State.CLOSED:
            self.numeric(ERR_UNKNOWNERROR, command, "internal error")


def _reference(text: str) -> tuple[str, Any] | None:
    """A CHATHISTORY reference: ("*", 0), ("msgid", (room token, seq)), ("timestamp", ms); None if malformed."""
    if text == "*":
        return ("*", 0)
    kind, _, value = text.partition("=")
    if kind == "msgid":
        token, _, seq = value.rpartition("-")
        if token and seq.isdigit() and len(seq) < 20:
            return ("msgid", (token, int(seq)))
        return None
    if kind == "timestamp":
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return ("timestamp", int(moment.timestamp() * 1000))
    return None


def _mask(username: str) -> str:
    """A name as the nick!user@host mask bans and quiets are shown with."""
    return f"{names.nick(username)}!*@*"


def _reason(text: str) -> str:
    """A KICK reason within ocm's: no control characters, at most 200 bytes, cut between characters."""
    text = "".join(c for c in text if not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0))
    while len(text.encode("utf-8", "surrogatepass")) > MAX_REASON:
        text = text[:-1]
    return text


def _prefix(username: str) -> str:
    return f"{names.nick(username)}!{USER_HOST}@{USER_HOST}"
