"""
The front desk: what every way in must pass before it reaches a room.

TCRP, the WebSocket and IRC listeners are peers over one L{FrontDesk}, as
Twisted Names' server factory is one controller behind TCP and UDP. The
desk holds the request policy: the per-address request rate, the password
checks and their budgets, the per-address shares of rooms and members,
daemon-wide address bans, the hashing pool's offload and the cluster
directory. Each listener gets a L{Door}, its own connection caps, which
computes the address key itself on admit and on release. A listener turns
bytes into a L{Request}, calls L{FrontDesk.answer}, and turns the
L{Answer} or the L{ProtocolError} back into its own bytes; none of them
knows another.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime

from ocm.server import passwords
from ocm.server.bans import AddressBans
from ocm.server.limits import Buckets, ConnectionCaps, address_key
from ocm.server.rooms import Member, MemberTransport, Room, RoomService
from ocm.wire.names import name_key
from ocm.wire.tcrp import Op, ProtocolError, Request, Status

if TYPE_CHECKING:
    from ocm.cluster.directory import Directory

# Runs a slow, blocking function off the reactor thread; tests may pass one
# that runs it inline.
Offload = Callable[..., defer.Deferred]

# A class behind one NAT address: 30 pupils, a few rooms each, fits with
# room to spare; one address holding all 1000 rooms does not.
DEFAULT_ROOMS_PER_ADDRESS = 60
DEFAULT_MEMBERS_PER_ADDRESS = 500


@dataclass(frozen=True)
class Answer:
    """
    What a request got: the new member (None for a LIST) and the
    transport-neutral body (LIST's rooms, or L{RoomService.joined_body});
    each listener adds its own keys (TCRP: the token, key and UDP port).
    """

    member: Member | None
    body: dict[str, Any]


class Door:
    """
    One listener's connection caps, in all and per address. Refusals are
    returned, not raised, and counted under C{refused} by cap.
    """

    def __init__(self, name: str, max_total: int, max_per_address: int, bans: AddressBans, clock: IReactorTime) -> None:
        self.name = name
        self.caps = ConnectionCaps(max_total, max_per_address)
        self.refused: Counter[str] = Counter()
        self._bans = bans
        self._clock = clock

    @property
    def active(self) -> int:
        return self.caps.active

    def admit(self, ip: str) -> ProtocolError | None:
        """Count a connection from C{ip} in, or say why not (counting nothing)."""
        if self._bans.banned(ip, self._clock.seconds()):
            self.refused["banned"] += 1
            return ProtocolError(Status.FORBIDDEN, "your address is banned from this server")
        full = self.caps.admit(ip)
        if full is None:
            return None
        self.refused[full] += 1
        # A connection holds its slot for a fraction of a second, so one is
        # likely free a second later: both refusals say so.
        if full == "connections":
            return ProtocolError(
                Status.UNAVAILABLE, "the server has all the connections it can take; try again soon",
                retry_after=1,
            )
        return ProtocolError(Status.TOO_MANY, "too many open connections from your address", retry_after=1)

    def release(self, ip: str) -> None:
        self.caps.release(ip)


class FrontDesk:
    """The request policy every listener shares (see the module docstring)."""

    def __init__(
        self,
        service: RoomService,
        clock: IReactorTime,
        *,
        request_rate: float = 5.0,
        request_burst: float = 50.0,
        password_rate: float = 3 / 60,
        password_burst: float = 5.0,
        address_password_rate: float = 5 / 60,
        address_password_burst: float = 50.0,
        max_rooms_per_address: int = DEFAULT_ROOMS_PER_ADDRESS,
        max_members_per_address: int = DEFAULT_MEMBERS_PER_ADDRESS,
        offload: Offload = threads.deferToThread,
        directory: Directory | None = None,
        bans: AddressBans | None = None,
    ) -> None:
        self.service = service
        self.clock = clock
        self.offload = offload
        # Cluster mode: the shared room directory (ocm.cluster), else None.
        self.directory = directory
        self.bans = bans if bans is not None else AddressBans()
        self.max_rooms_per_address = max_rooms_per_address
        self.max_members_per_address = max_members_per_address
        self.requests = Buckets(request_rate, request_burst)
        # Wrong passwords per (address, room, username) and per (address, room).
        self.password_tries = Buckets(password_rate, password_burst)
        self.address_password_tries = Buckets(address_password_rate, address_password_burst)
        # Refusals by the limit that made them: "request_rate", "password",
        # "rooms_per_address", "members_per_address".
        self.limited: Counter[str] = Counter()
        self.doors: dict[str, Door] = {}

    def door(self, name: str, max_total: int, max_per_address: int) -> Door:
        """A listener's own connection caps (one per listener, by name)."""
        door = self.doors[name] = Door(name, max_total, max_per_address, self.bans, self.clock)
        return door

    # -- per request ----------------------------------------------------------

    def charge_request(self, ip: str) -> None:
        """Take one request from C{ip}'s budget, or raise the 429 that says when to retry."""
        requests = self.requests
        if not requests.rate:
            return
        now = self.clock.seconds()
        bucket = requests.get(address_key(ip), now)
        if not bucket.take(now):
            self.limited["request_rate"] += 1
            raise ProtocolError(
                Status.TOO_MANY, "too many requests from your address; slow down",
                retry_after=bucket.wait(now),
            )

    def rate_refusal(self, ip: str) -> ProtocolError | None:
        """L{charge_request}, returning the refusal instead of raising it (uncounted until raised)."""
        requests = self.requests
        if not requests.rate:
            return None
        now = self.clock.seconds()
        bucket = requests.get(address_key(ip), now)
        if bucket.take(now):
            return None
        return ProtocolError(
            Status.TOO_MANY, "too many requests from your address; slow down",
            retry_after=bucket.wait(now),
        )

    async def answer(
        self,
        request: Request,
        ip: str,
        gone: Callable[[], bool],
        transport: MemberTransport | None = None,
    ) -> Answer | None:
        """
        Carry out a valid LIST, CREATE or JOIN from C{ip}: an L{Answer}, or
        a L{ProtocolError} raised to refuse it with, or None if the asker is
        C{gone} once the password work is done. C{transport} makes a member
        without UDP (no token, no key); None makes a UDP member.
        """
        service = self.service
        directory = self.directory
        if request.op == Op.LIST_ROOMS:
            rooms = service.list_rooms() if directory is None else await directory.list_rooms()
            return Answer(None, {"rooms": rooms})
        self._check_shares(request.op, ip)
        if request.op == Op.CREATE_ROOM:
            service.check_create(request.room)
            hashed = None
            if request.password:
                hashed = await self.offload(passwords.hash_password, request.password)
            if gone():
                return None
            self._check_shares(request.op, ip)

            def make() -> Member:
                return service.create_room(
                    request.room, request.username, ip, hashed, transport=transport,
                    version=request.version,
                )

            if directory is None:
                member = make()
            else:
                made = await directory.create_room(
                    request.room, hashed is not None, make, lambda: not gone()
                )
                if made is None:
                    return None
                member = made
            return Answer(member, service.joined_body(member))
        if directory is not None:
            await directory.route_join(request.room)
        room = service.room_for_join(request.room)
        # A banned person spends no password budget (and learns no verdict).
        service.check_banned(room, request.username, ip)
        if room.password is not None:
            await self.check_password(ip, request.password, request.username, room)
        if gone():
            return None
        self._check_shares(request.op, ip)
        member = service.join_room(
            request.room, request.username, ip, expected=room, transport=transport,
            version=request.version,
        )
        return Answer(member, service.joined_body(member))

    def resume(self, room: str, username: str, secret: str, ip: str, transport: MemberTransport) -> Answer:
        """
        A member kept across a restart whose transport is back (a browser's
        socket, protocol 1.2): the same member over C{transport}, or the
        L{ProtocolError} a JOIN would get. The listener charges the request.
        """
        member = self.service.resume(room, username, secret, ip, transport)
        return Answer(member, self.service.joined_body(member))

    def _check_shares(self, op: Op, ip: str) -> None:
        """One address's share of the rooms and of the members (issue 20)."""
        key = address_key(ip)
        service = self.service
        if op == Op.CREATE_ROOM and service.rooms_by_address.get(key, 0) >= self.max_rooms_per_address:
            self.limited["rooms_per_address"] += 1
            raise ProtocolError(Status.TOO_MANY, "your address holds as many rooms as it may")
        if service.members_by_address.get(key, 0) >= self.max_members_per_address:
            self.limited["members_per_address"] += 1
            raise ProtocolError(Status.TOO_MANY, "your address has as many members in rooms as it may")

    async def check_password(self, ip: str, password: str, username: str, room: Room) -> None:
        """
        Verify a room password against two budgets of wrong tries (issue 13):
        one per person (address, room, username), so one person's typos
        cost only that person, and a larger one per address and room, which
        bounds a guesser who changes usernames. Only a wrong password is
        charged, after the verdict and into debt if need be, so a right one
        never spends anyone's budget, and guesses made in parallel all pay.
        """
        limit_key = address_key(ip)
        now = self.clock.seconds()
        room_key = name_key(room.name)
        person = self.password_tries.get((limit_key, room_key, name_key(username)), now)
        address = self.address_password_tries.get((limit_key, room_key), now)
        for bucket, whom in ((person, f"as {username!r}"), (address, "from your address")):
            if not bucket.ready(now):
                self.limited["password"] += 1
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
        if await self.offload(passwords.verify_password, password, room.password):
            return
        now = self.clock.seconds()
        person.charge(now)
        address.charge(now)
        raise ProtocolError(Status.UNAUTHORIZED, f"wrong password for room {room.name!r}")

    def prune(self) -> None:
        """Forget idle budgets and expired bans (the service calls it every minute)."""
        now = self.clock.seconds()
        self.requests.prune(now)
        self.password_tries.prune(now)
        self.address_password_tries.prune(now)
        self.bans.prune(now)
