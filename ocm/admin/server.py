"""
The operator's way in (``ocm-admin``): a Unix stream socket in the daemon's
state directory, a fourth peer over the room service and the front desk
beside TCRP, the WebSocket and IRC, with no network port.

Two lines of defence: the socket file (mode 0600, or 0660 for
C{--admin-group}, in a 0700 directory), and the peer's credentials
(SO_PEERCRED) checked on accept: the daemon's own uid, root, or a member of
the named group. Each connection is bounded (line length, requests, a
deadline); each action is logged with the uid that asked, and no secret
(the requests hold none: names, rooms, addresses, the operator's reasons).
"""

from __future__ import annotations

import enum
import errno
import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import endpoints
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

import ocm
from ocm.admin.protocol import (
    ACTIONS,
    BAD_REQUEST,
    DEADLINE,
    DEADLINE_PASSED,
    FORBIDDEN,
    MAX_CONNECTIONS,
    MAX_LINE,
    MAX_REQUESTS,
    NOT_FOUND,
    REFUSED,
    TOO_LONG,
    TOO_MANY,
    AdminError,
    Request,
    encode_refusal,
    encode_result,
    parse_request,
)
from ocm.server.bans import BanError, ban_key
from ocm.server.listeners import StreamListener
from ocm.wire.datagram import NEEDS_MEMBER, Command, CommandOp, CommandRefused
from ocm.wire.names import name_key

if TYPE_CHECKING:
    from ocm.server.desk import FrontDesk
    from ocm.server.rooms import Member, Room, RoomService

log = Logger()

# What an operator's event says (PROTOCOL 1.2 §4: "their text saying it was
# the server's operator"); the room service adds it to kick, ban and mute.
CLOSED_BY_OPERATOR = "closed by the server's operator"
ADDRESS_BANNED = "your address is banned from this server"

# Linux's SO_PEERGROUPS (4.13): the peer's supplementary groups.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_ucred = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


def peer_of(transport: Any) -> Peer | None:
    """The connecting process's credentials, or None if the kernel gives none."""
    sock = getattr(transport, "socket", None)
    if sock is None:
        return None
    try:
        pid, uid, gid = _ucred.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _ucred.size))
    except (OSError, AttributeError, struct.error):
        return None
    groups: frozenset[int] = frozenset()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 1024)
        groups = frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:
        groups = _groups_of(uid)
    return Peer(pid, uid, gid, groups)


def _groups_of(uid: int) -> frozenset[int]:
    """The groups /etc/group lists a user in: where the kernel cannot say."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return frozenset()
    return frozenset(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)


@dataclass(frozen=True)
class Access:
    """Who may use the socket: the daemon's uid, root, and C{group}'s members."""

    uid: int
    group: int | None = None

    def permits(self, peer: Peer | None) -> bool:
        if peer is None:
            return False
        if peer.uid in (0, self.uid):
            return True
        return self.group is not None and (peer.gid == self.group or self.group in peer.groups)


class AdminState(enum.Enum):
    """A connection's life: open for requests, or done (refused, finished, timed out)."""

    OPEN = "open"
    DONE = "done"


def transport_name(member: Member) -> str:
    """How a member is reached: udp, web, irc (by the transport's own package)."""
    if member.transport is None:
        return "udp"
    kind = getattr(member.transport, "kind", None)
    if isinstance(kind, str):
        return kind
    module = type(member.transport).__module__
    for prefix, name in (("ocm.web", "web"), ("ocm.irc", "irc")):
        if module.startswith(prefix):
            return name
    return "other"


def _where(port: Any) -> str | None:
    if port is None:
        return None
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        return name.decode() if isinstance(name, bytes) else str(name)
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


class Admin:
    """
    The commands, over the room service and the desk: each takes a
    L{Request} and returns a JSON-ready value or raises L{AdminError}.
    No I/O, so tests drive it on C{task.Clock}.
    """

    def __init__(self, rooms: RoomService, desk: FrontDesk, clock: IReactorTime) -> None:
        self.rooms = rooms
        self.desk = desk
        self.clock = clock
        self.started = clock.seconds()
        # The daemon's MultiService, for the ports in "status" (None in unit tests).
        self.daemon: Any = None

    def execute(self, request: Request) -> Any:
        return getattr(self, "_" + request.cmd.replace("-", "_"))(request)

    def _room(self, name: str) -> Room:
        room = self.rooms.rooms.get(name_key(name))
        if room is None:
            raise AdminError(NOT_FOUND, f"no room named {name!r}")
        return room

    # -- reads ----------------------------------------------------------------

    def _status(self, request: Request) -> dict[str, Any]:
        now = self.clock.seconds()
        daemon = self.daemon
        ports: dict[str, Any] = {}
        counts: dict[str, int] = {}
        if daemon is not None:
            ports = {
                "tcrp": _where(daemon.tcp),
                "udp": self.rooms.udp_port,
                "web": _where(daemon.web_port),
                "metrics": _where(daemon.metrics),
            }
            counts = dict(sorted(daemon.counts().items()))
        return {
            "version": ocm.__version__,
            "started": self.started,
            "uptime": now - self.started,
            "ports": ports,
            "rooms": len(self.rooms.rooms),
            "members": self.rooms.member_count,
            "max_rooms": self.rooms.max_rooms,
            "max_members": self.rooms.max_members,
            "address_bans": len(self.desk.bans.active(now)),
            "stats": self.rooms.stats,
            "counts": counts,
        }

    def _rooms(self, request: Request) -> list[dict[str, Any]]:
        return [
            {
                "name": r.name,
                "members": len(r.members),
                "password": r.password is not None,
                "host": r.host.name if r.host is not None else None,
                "created": r.created_at,
                "bans": len(r.bans),
            }
            for r in sorted(self.rooms.rooms.values(), key=lambda r: name_key(r.name))
        ]

    def _members(self, request: Request) -> dict[str, Any]:
        room = self._room(request.room)
        now = self.clock.seconds()
        members = []
        for m in room.members.values():
            address = f"{m.address[0]}:{m.address[1]}" if m.address is not None else m.ip
            if m.address is not None and ":" in m.address[0]:
                address = f"[{m.address[0]}]:{m.address[1]}"
            members.append({
                "name": m.name,
                "address": address,
                "since": m.joined_at,
                "for": now - m.joined_at,
                "host": m.is_host,
                "muted": m.muted,
                "version": m.version,
                "transport": transport_name(m),
            })
        return {"room": room.name, "members": members}

    def _bans(self, request: Request) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [
            {"address": key, "left": left, "until": now + left}
            for key, left in sorted(self.desk.bans.active(now).items())
        ]

    # -- actions --------------------------------------------------------------

    def _moderate(self, request: Request) -> dict[str, Any]:
        room = self._room(request.room)
        op = CommandOp(request.cmd)
        if op in NEEDS_MEMBER and name_key(request.name) not in room.members:
            raise AdminError(NOT_FOUND, f"{request.name!r} is not in room {room.name!r}")
        try:
            event = self.rooms.moderate(room, Command(op, request.name, request.reason), by=None)
        except CommandRefused as e:
            raise AdminError(REFUSED, str(e))
        return {"room": room.name, "name": request.name, "event": event}

    _kick = _ban = _unban = _mute = _unmute = _moderate

    def _close(self, request: Request) -> dict[str, Any]:
        room = self._room(request.room)
        members = len(room.members)
        reason = CLOSED_BY_OPERATOR + (f": {request.reason}" if request.reason else "")
        self.rooms.close_room(room, reason)
        return {"room": room.name, "members": members, "reason": reason}

    def _ban_address(self, request: Request) -> dict[str, Any]:
        """
        Ban the address from every way in. The doors refuse it at accept
        (TCRP, WebSocket, IRC: 403); its members now are kicked, so their
        UDP tokens die with them and the relay needs no check of its own.
        """
        now = self.clock.seconds()
        try:
            key = self.desk.bans.ban(request.address, request.seconds, now)
        except BanError as e:
            raise AdminError(TOO_MANY if "already" in str(e) else BAD_REQUEST, str(e))
        text = ADDRESS_BANNED + (f": {request.reason}" if request.reason else "")
        removed = []
        for room in list(self.rooms.rooms.values()):
            for m in [m for m in room.members.values() if ban_key(m.ip) == key]:
                if self.rooms.rooms.get(name_key(room.name)) is not room:
                    break  # its host went, and the room with it
                if room.members.get(name_key(m.name)) is not m:
                    continue
                self.rooms.moderate(room, Command(CommandOp.KICK, m.name, text), by=None)
                removed.append({"room": room.name, "name": m.name})
        return {"address": key, "seconds": request.seconds, "until": now + request.seconds, "removed": removed}

    def _unban_address(self, request: Request) -> dict[str, Any]:
        try:
            if not self.desk.bans.unban(request.address):
                raise AdminError(NOT_FOUND, f"{request.address!r} is not banned")
            return {"address": ban_key(request.address)}
        except BanError as e:
            raise AdminError(BAD_REQUEST, str(e))


class AdminProtocol(LineOnlyReceiver):
    """One operator's connection: credentials on accept, then request, reply, ..."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    factory: AdminFactory
    state = AdminState.DONE
    peer: Peer | None = None
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections += 1
        self.requests = 0
        self.state = AdminState.OPEN
        if factory.connections > MAX_CONNECTIONS:
            self._finish(AdminError(TOO_MANY, "the admin socket has all the connections it takes"))
            return
        self.peer = factory.credentials(self.transport)
        if not factory.access.permits(self.peer):
            who = f"uid {self.peer.uid}" if self.peer is not None else "a peer of unknown uid"
            log.warn("ocm-admin: refused {who} (pid {pid})", who=who, pid=getattr(self.peer, "pid", "?"))
            self._finish(AdminError(FORBIDDEN, f"{who} may not use this daemon's admin socket"))
            return
        self._deadline = factory.clock.callLater(DEADLINE, self._timed_out)

    def lineReceived(self, line: bytes) -> None:
        if self.state is not AdminState.OPEN:
            return
        self.requests += 1
        if self.requests > MAX_REQUESTS:
            self._finish(AdminError(TOO_MANY, f"one connection makes at most {MAX_REQUESTS} requests"))
            return
        self.transport.write(self.factory.answer(line.rstrip(b"\r"), self.peer))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(AdminError(TOO_LONG, f"a request is at most {MAX_LINE} bytes"))

    def _timed_out(self) -> None:
        self._deadline = None
        self._finish(AdminError(DEADLINE_PASSED, f"a connection lasts at most {DEADLINE:g} seconds"))

    def _finish(self, error: AdminError) -> None:
        if self.state is AdminState.DONE:
            return
        self.state = AdminState.DONE
        self.transport.write(encode_refusal(error))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.state = AdminState.DONE
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.factory.connections -= 1


class AdminFactory(Factory):
    protocol = AdminProtocol
    noisy = False

    def __init__(
        self,
        admin: Admin,
        access: Access,
        clock: IReactorTime,
        credentials: Callable[[Any], Peer | None] = peer_of,
    ) -> None:
        self.admin = admin
        self.access = access
        self.clock = clock
        self.credentials = credentials
        self.connections = 0

    def answer(self, line: bytes, peer: Peer | None) -> bytes:
        """One request line's reply line; every action logged, done or refused."""
        uid = peer.uid if peer is not None else "?"
        try:
            request = parse_request(line)
        except AdminError as e:
            return encode_refusal(e)
        try:
            result = self.admin.execute(request)
        except AdminError as e:
            if request.cmd in ACTIONS:
                log.info("ocm-admin (uid {uid}): {request} refused: {why}", uid=uid,
                         request=request.shown(), why=e.message)
            return encode_refusal(e)
        except Exception:
            # A bug costs this one request, never the daemon.
            log.failure("ocm-admin (uid {uid}): {request} failed", uid=uid, request=request.shown())
            return encode_refusal(AdminError("internal", "the daemon failed to do it; see its log"))
        if request.cmd in ACTIONS:
            log.info("ocm-admin (uid {uid}): {request} done", uid=uid, request=request.shown())
        return encode_result(result)


# -- the listener --------------------------------------------------------------

MAX_PATH = 107  # bytes in a Unix socket's path (sun_path less its NUL)


class SocketPathError(ValueError):
    """A socket path that cannot be used: too long, or something else is there."""


def check_path(path: str) -> None:
    if len(os.fsencode(path)) > MAX_PATH:
        raise SocketPathError(
            f"{path!r} is {len(os.fsencode(path))} bytes; a Unix socket's path is at most {MAX_PATH}"
        )


def clear_stale(path: str) -> None:
    """
    Make way for the socket: nothing there, or a socket no one listens on
    (removed). Anything else, a live daemon's socket or a file that is not
    a socket, is refused rather than removed. The directory is the daemon's
    own (0700), so no one else can race the check.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path!r} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathError(f"{path!r}: cannot tell whether it is in use ({e.strerror})")
    else:
        raise SocketPathError(f"{path!r} is in use: is another daemon running with this --data-dir?")
    finally:
        probe.close()
    os.unlink(path)


def endpoint_string(path: str) -> str:
    """A Twisted unix: server endpoint for C{path}, 0600, no lock file (L{clear_stale} does that work)."""
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600:lockfile=0"


class AdminListener(StreamListener):
    """
    The admin socket as a child of the daemon's service: made under a
    umask that leaves it 0600 from its first instant, then given to the
    group (0660) if one was named; Twisted's unix port removes it at stop.
    """

    def __init__(self, path: str, factory: AdminFactory, reactor: Any, group: int | None = None) -> None:
        super().__init__("admin", endpoints.serverFromString(reactor, endpoint_string(path)), factory)
        self.path = path
        self.group = group
        self.admin_factory = factory

    def privilegedStartService(self) -> None:
        if self._waitingForPort is not None:
            return
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        clear_stale(self.path)
        old = os.umask(0o177)
        try:
            super().privilegedStartService()
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
            os.chmod(self.path, 0o660)
            if not os.stat(directory).st_mode & stat.S_IXGRP:
                log.warn("ocm-admin: the group may not reach {path}: its directory is not group-searchable",
                         path=self.path)

    def startService(self) -> None:
        super().startService()
        admin = self.admin_factory.admin
        admin.daemon = self.parent
        admin.started = admin.clock.seconds()
        log.info("ocm-admin socket at {path}", path=self.path)


def group_id(name: str) -> int:
    """A group's id, by name or number."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ValueError(f"no group named {name!r}")


def make_listener(
    path: str, rooms: RoomService, desk: FrontDesk, reactor: Any, group: int | None = None
) -> AdminListener:
    """The admin socket's listener, for the daemon's service tree."""
    admin = Admin(rooms, desk, reactor)
    factory = AdminFactory(admin, Access(os.getuid(), group), reactor)
    return AdminListener(path, factory, reactor, group)

