"""
One node's part of the cluster's room directory: which rooms this node
holds, claimed in a shared L{Store} (Redis) so that a name is created once
in the cluster, found from any node, and listed by every node.

The rooms themselves, their members, keys and datagrams, stay in this
node's RoomService: nothing here runs on the datagram path. The directory is
consulted by the TCRP server before CREATE, a JOIN of a room this node does
not hold, and LIST; and told by the RoomService when a room closes.

Plain Python on an injected clock; the store is injected too, so all of
this runs in tests on C{task.Clock} and a fake store.

What happens when things fail:

 - Claims expire C{ttl} seconds after their node last refreshed them (every
   C{ttl / 3}): a node that dies loses its rooms, and the directory forgets
   them within C{ttl}.
 - Redis unreachable: this node's rooms go on (chat never needs Redis);
   CREATE, a JOIN that would be redirected, and LIST answer 503 with
   C{retry_after}. Every refresh tick tries again; the first that succeeds
   re-asserts every room of this node (claims that Redis lost are made anew).
 - A name claimed twice (Redis lost its data, and another node created a
   room of the same name before this node re-asserted its own; or someone
   wrote to Redis): the claim in Redis stands for the other nodes, which
   list that room and redirect to it. This node never gives up a room it
   holds on Redis's word: JOINs of it here join it, this node's LIST shows
   it, and the rival claim is logged (bounded). When the rival's room
   closes, the next tick claims the name back. A planted claim therefore
   cannot redirect the JOINs of a live room away from its node.
 - What Redis returns is checked by the store (names, sizes, host:port);
   invalid entries are skipped, as if absent.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ocm.cluster.store import BATCH, Claim, DirectoryUnavailable, Invalid, Store, check_tcp, shown
from ocm.wire.names import name_key
from ocm.server.rooms import Member, Room, RoomService
from ocm.wire.tcrp import ProtocolError, Status

DEFAULT_TTL = 15.0


def host_port(host: str, port: int) -> str:
    """A node's address as a 307 carries it: host:port, [v6]:port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Directory:
    log = Logger()

    def __init__(
        self,
        service: RoomService,
        store: Store,
        clock: IReactorTime,
        *,
        advertise: str = "127.0.0.1",
        ttl: float = DEFAULT_TTL,
        node: str | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.node = node or secrets.token_hex(8)
        self.advertise = advertise
        self.tcp = ""  # this node's advertised host:port, known at start
        # Rooms of this node whose name Redis gives another node: name key ->
        # that node's tcp. Still served here (never redirected away).
        self.contested: dict[str, str] = {}
        # Names of rooms closed here, still to release: name key -> until when.
        self.releasing: dict[str, float] = {}
        # Names being claimed by a CREATE here: never released meanwhile.
        self._claiming: set[str] = set()
        self._flush: IDelayedCall | None = None
        self.up: bool | None = None  # None until the first tick says
        self._refresher = LoopingCall(self.refresh)
        self._refresher.clock = clock
        service.on_room_closed.append(self._closed)

    @property
    def retry_after(self) -> float:
        return max(1.0, self.ttl / 3)

    # -- life -------------------------------------------------------------

    def start(self, tcp_port: int) -> None:
        """Begin claiming, once the TCRP port is known (it may have been 0)."""
        tcp = self.tcp = host_port(self.advertise, tcp_port)
        try:
            check_tcp(tcp)
        except Invalid as e:
            # Other nodes check what they read by this rule, and would skip every room of this one.
            self.log.error(
                "--advertise {advertise}: {why}; other nodes will ignore this node's rooms "
                "(give an ASCII host name, an IDN in its xn-- form, or an address)",
                advertise=shown(self.advertise), why=str(e),
            )
        self.log.info(
            "cluster node {node} at {tcp}: room names held in the directory for {ttl:g} s, "
            "refreshed every {every:g} s", node=self.node, tcp=tcp, ttl=self.ttl, every=self.ttl / 3,
        )
        # Not now: the connection to Redis is still being made.
        self._refresher.start(self.ttl / 3, now=False)

    async def stop(self) -> None:
        """Release what can be released now (the rooms closed before this), then disconnect."""
        if self._refresher.running:
            self._refresher.stop()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        try:
            await self._release_pending()
        except DirectoryUnavailable as e:
            self.log.warn(
                "could not release {n} room names at shutdown ({why}); they expire within {ttl:g} s",
                n=len(self.releasing), why=str(e), ttl=self.ttl,
            )
        finally:
            await self.store.close()

    # -- TCRP side ----------------------------------------------------------

    def _unavailable(self, what: str) -> ProtocolError:
        return ProtocolError(
            Status.UNAVAILABLE,
            f"the cluster's room directory is unreachable, so {what} now; "
            "rooms already joined go on",
            retry_after=self.retry_after,
        )

    async def list_rooms(self) -> list[dict[str, Any]]:
        """Every room of the cluster: this node's as they are, the others' as last refreshed."""
        try:
            listed = await self.store.list()
        except DirectoryUnavailable:
            raise self._unavailable("the rooms of every node cannot be listed")
        # This node's rooms as they are; Redis's word for the others (not
        # for a name this node holds: a JOIN of it here joins this one).
        rooms = [
            {"name": r.name, "members": r.members, "password": r.password, "tcp": r.tcp}
            for r in listed
            if r.node != self.node and r.tcp != self.tcp and name_key(r.name) not in self.service.rooms
        ]
        for room in self.service.rooms.values():
            rooms.append({
                "name": room.name, "members": len(room.members),
                "password": room.password is not None, "tcp": self.tcp,
            })
        rooms.sort(key=lambda r: name_key(r["name"]))
        return rooms

    async def create_room(
        self, room: str, password: bool, make: Callable[[], Member], still: Callable[[], bool]
    ) -> Member | None:
        """
        Claim the name for this node, then C{make} the room here. None when
        the client went away meanwhile (the claim is given back).
        """
        key = name_key(room)
        claim = Claim(key, room, password, 1)
        self._claiming.add(key)
        try:
            [holder] = await self.store.assert_claims(self.node, self.tcp, [claim], self.ttl)
        except DirectoryUnavailable:
            raise self._unavailable(f"room {room!r} cannot be created")
        finally:
            self._claiming.discard(key)
        # The claim is this node's now: an older release of it is void.
        self.releasing.pop(key, None)
        if holder is not None:
            raise ProtocolError(Status.CONFLICT, f"room {room!r} already exists (on node {holder})")
        try:
            if not still():
                return None
            return make()
        finally:
            # Created here (now or by a request that won the race): keep the claim.
            if key not in self.service.rooms:
                self._release_soon(key)

    async def route_join(self, room: str) -> None:
        """
        Return if the room is this node's (no Redis call, whatever Redis
        says) or nowhere (the service answers 404); raise 307 to the node
        that holds it.
        """
        key = name_key(room)
        if key in self.service.rooms:
            return
        try:
            holder = await self.store.owner(key)
        except DirectoryUnavailable:
            raise self._unavailable(f"room {room!r} cannot be looked up")
        if holder is None or holder[0] == self.node or holder[1] == self.tcp:
            # Nowhere, or a claim left by the process that had this address
            # before this one: the service answers (404, unless it is here).
            return
        _, tcp, name = holder
        raise ProtocolError(Status.REDIRECT, f"room {name!r} is on node {tcp}", extra={"tcp": tcp})

    # -- upkeep -------------------------------------------------------------

    def _claims(self) -> list[Claim]:
        return [
            Claim(key, r.name, r.password is not None, len(r.members))
            for key, r in self.service.rooms.items()
        ]

    async def refresh(self) -> None:
        """
        Every C{ttl / 3}: claim or refresh every room of this node, and
        release the names of rooms that closed. Never raises (a raise would
        stop the LoopingCall).
        """
        every = self._claims()
        claims: list[Claim] = []
        holders: list[str | None] = []
        try:
            if not self.store.connected:
                raise DirectoryUnavailable("no connection to Redis")
            for start in range(0, len(every), BATCH):
                # A room may close between batches: claim only those still here.
                batch = [c for c in every[start:start + BATCH] if c.key in self.service.rooms]
                holders += await self.store.assert_claims(self.node, self.tcp, batch, self.ttl)
                claims += batch
            await self._release_pending()
        except DirectoryUnavailable as e:
            if self.up is not False:
                self.log.warn(
                    "the room directory (Redis) is unreachable: {why}; this node's {n} rooms go on, "
                    "CREATE, redirected JOIN and LIST get 503 until it is back",
                    why=str(e), n=len(self.service.rooms),
                )
            self.up = False
            return
        except Exception:
            self.log.failure("refreshing the room directory failed")
            return
        if self.up is False:
            self.log.info(
                "the room directory (Redis) is reachable again: {n} rooms of this node re-asserted",
                n=len(claims),
            )
        self.up = True
        for claim, holder in zip(claims, holders):
            room = self.service.rooms.get(claim.key)
            if room is None:
                # Closed while the tick ran: its release is queued after this claim.
                continue
            if holder is None and claim.key in self.contested:
                del self.contested[claim.key]
                self.log.info("room {room!r} holds its name in the directory again", room=claim.name)
            elif holder is not None and self.contested.get(claim.key) != holder:
                self.contested[claim.key] = holder
                self.log.warn(
                    "room {room!r} of this node is claimed in the directory by {holder} (Redis lost "
                    "this node's claim and that node created the name meanwhile, or someone wrote "
                    "to Redis): this node keeps it, its {n} members and JOINs made here; other "
                    "nodes send new JOINs to {holder} until one of the two rooms closes",
                    room=claim.name, holder=shown(holder), n=claim.members,
                )

    def _closed(self, room: Room) -> None:
        """A room of this node closed: give its name back, after this reactor turn."""
        key = name_key(room.name)
        self.contested.pop(key, None)
        self._release_soon(key)

    def _release_soon(self, key: str) -> None:
        self.releasing[key] = self.clock.seconds() + self.ttl
        if self._flush is None or not self._flush.active():
            # Not from inside the datagram that closed the room.
            self._flush = self.clock.callLater(0, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        d = defer.ensureDeferred(self._release_pending())
        d.addErrback(lambda f: f.trap(DirectoryUnavailable))  # the next tick retries

    async def _release_pending(self) -> None:
        now = self.clock.seconds()
        sent = []
        for key, until in list(self.releasing.items()):
            if key in self._claiming:
                continue
            if key in self.service.rooms or until <= now:
                # Created here again (its claim is the new room's), or expired anyway.
                del self.releasing[key]
                continue
            sent.append((key, until, self.store.release(self.node, key)))
        failed: DirectoryUnavailable | None = None
        for key, until, d in sent:
            try:
                await d
            except DirectoryUnavailable as e:
                failed = e
                continue
            if self.releasing.get(key) == until:
                del self.releasing[key]
        if failed is not None:
            raise failed
