"""
The cluster directory's own logic, on task.Clock and an in-memory store that
keeps Redis's rules (claims expire, compare-and-delete), so expiry, outages,
re-assertion and double claims are tested without Redis or waiting.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from ocm.cluster.directory import Directory, host_port
from ocm.cluster.store import Claim, DirectoryUnavailable, Listed
from ocm.cluster.url import parse_redis_url
from ocm.server.rooms import RoomService
from ocm.wire.tcrp import ProtocolError, Status

TTL = 15.0


class MemoryStore:
    """Redis's semantics for the directory, on a clock; C{down} fails every call."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.claims: dict[str, tuple[str, str, Claim, float]] = {}  # key -> node, tcp, claim, until
        self.down = False
        self.calls = 0
        self.closed = False

    @property
    def connected(self) -> bool:
        return not self.down

    def _live(self, key: str) -> tuple[str, str, Claim, float] | None:
        held = self.claims.get(key)
        if held is not None and held[3] <= self.clock.seconds():
            del self.claims[key]
            return None
        return held

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise DirectoryUnavailable("no connection to Redis")

    def assert_claims(self, node: str, tcp: str, claims: list[Claim], ttl: float) -> defer.Deferred:
        try:
            self._check()
        except DirectoryUnavailable as e:
            return defer.fail(e)
        out: list[str | None] = []
        for c in claims:
            held = self._live(c.key)
            if held is not None and held[0] != node and held[1] != tcp:
                out.append(held[1])
            else:
                self.claims[c.key] = (node, tcp, c, self.clock.seconds() + ttl)
                out.append(None)
        return defer.succeed(out)

    def release(self, node: str, key: str) -> defer.Deferred:
        try:
            self._check()
        except DirectoryUnavailable as e:
            return defer.fail(e)
        held = self._live(key)
        if held is not None and held[0] == node:
            del self.claims[key]
            return defer.succeed(True)
        return defer.succeed(False)

    def owner(self, key: str) -> defer.Deferred:
        try:
            self._check()
        except DirectoryUnavailable as e:
            return defer.fail(e)
        held = self._live(key)
        return defer.succeed(None if held is None else (held[0], held[1], held[2].name))

    def list(self) -> defer.Deferred:
        try:
            self._check()
        except DirectoryUnavailable as e:
            return defer.fail(e)
        rows = []
        for key in list(self.claims):
            held = self._live(key)
            if held is not None:
                node, tcp, c, _ = held
                rows.append(Listed(c.name, c.members, c.password, tcp, node))
        return defer.succeed(rows)

    def close(self) -> defer.Deferred:
        self.closed = True
        return defer.succeed(None)


class Node:
    """One node: a RoomService and its Directory on the shared clock and store."""

    def __init__(self, clock: task.Clock, store: MemoryStore, port: int) -> None:
        self.rooms = RoomService(clock)
        self.directory = Directory(self.rooms, store, clock, advertise="10.0.0.1", ttl=TTL)
        self.directory.start(port)

    def create(self, room: str, user: str = "host", still: bool = True) -> defer.Deferred:
        make = lambda: self.rooms.create_room(room, user, "127.0.0.1", None)
        return defer.ensureDeferred(self.directory.create_room(room, False, make, lambda: still))

    def join(self, room: str) -> defer.Deferred:
        return defer.ensureDeferred(self.directory.route_join(room))

    def list(self) -> defer.Deferred:
        return defer.ensureDeferred(self.directory.list_rooms())


class DirectoryTests(TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryStore(self.clock)
        self.a = Node(self.clock, self.store, 9001)
        self.b = Node(self.clock, self.store, 9003)

    def refusal(self, d: defer.Deferred) -> ProtocolError:
        return self.failureResultOf(d, ProtocolError).value

    def test_a_name_is_claimed_once_in_the_cluster(self):
        self.successResultOf(self.a.create("Lobby"))
        e = self.refusal(self.b.create("LOBBY"))
        self.assertEqual(e.status, Status.CONFLICT)
        self.assertIn("10.0.0.1:9001", e.message)
        self.assertNotIn("lobby", self.b.rooms.rooms)

    def test_join_elsewhere_is_redirected_and_a_local_join_asks_nobody(self):
        self.successResultOf(self.a.create("Lobby"))
        e = self.refusal(self.b.join("lobby"))
        self.assertEqual((e.status, e.response_fields()), (Status.REDIRECT, {"tcp": "10.0.0.1:9001"}))
        calls = self.store.calls
        self.store.down = True
        self.successResultOf(self.a.join("LOBBY"))  # the holder: no store call
        self.assertEqual(self.store.calls, calls)
        self.store.down = False
        self.successResultOf(self.b.join("nowhere"))  # the service answers 404

    def test_list_shows_every_nodes_rooms_own_ones_live(self):
        self.successResultOf(self.a.create("Lobby"))
        self.successResultOf(self.b.create("Games"))
        self.a.rooms.join_room("Lobby", "guest", "127.0.0.1")
        self.assertEqual(
            self.successResultOf(self.a.list()),
            [{"name": "Games", "members": 1, "password": False, "tcp": "10.0.0.1:9003"},
             {"name": "Lobby", "members": 2, "password": False, "tcp": "10.0.0.1:9001"}],
        )
        # Node B sees A's count as of A's last refresh, then the new one.
        self.assertEqual(self.successResultOf(self.b.list())[1]["members"], 1)
        self.clock.advance(TTL / 3)
        self.assertEqual(self.successResultOf(self.b.list())[1]["members"], 2)

    def test_a_refreshed_claim_lives_and_a_dead_nodes_expire_within_the_ttl(self):
        self.successResultOf(self.a.create("Lobby"))
        for _ in range(10):
            self.clock.advance(TTL / 3)
        self.assertEqual(len(self.successResultOf(self.b.list())), 1)
        self.a.directory._refresher.stop()  # the node dies: no more refreshes
        self.clock.advance(TTL - 0.01)
        self.assertEqual(len(self.successResultOf(self.b.list())), 1)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(self.b.list()), [])
        self.successResultOf(self.b.create("Lobby"))

    def test_a_closed_room_is_released_after_the_reactor_turn(self):
        self.successResultOf(self.a.create("Lobby"))
        host = self.a.rooms.rooms["lobby"].host
        calls = self.store.calls
        self.a.rooms._remove(host, timed_out=False)  # as a LEAVE datagram does
        self.assertEqual(self.store.calls, calls, "a store call from the datagram path")
        self.clock.advance(0)
        self.assertEqual(self.store.claims, {})
        self.successResultOf(self.b.create("Lobby"))

    def test_a_release_that_failed_is_retried_by_the_next_tick(self):
        self.successResultOf(self.a.create("Lobby"))
        self.store.down = True
        self.a.rooms.stop()
        self.clock.advance(0)
        self.assertIn("lobby", self.store.claims)
        self.store.down = False
        self.clock.advance(TTL / 3)
        self.assertEqual(self.store.claims, {})

    def test_a_client_gone_before_the_room_was_made_gives_the_name_back(self):
        self.assertIsNone(self.successResultOf(self.a.create("Lobby", still=False)))
        self.clock.advance(0)
        self.assertEqual(self.store.claims, {})

    def test_a_name_released_late_does_not_undo_the_same_nodes_new_room(self):
        self.successResultOf(self.a.create("Lobby"))
        self.store.down = True
        self.a.rooms._close(self.a.rooms.rooms["lobby"], "test")
        self.clock.advance(0)  # the release fails: queued
        self.store.down = False
        self.successResultOf(self.a.create("Lobby"))  # same node, same name, new room
        self.clock.advance(TTL / 3)
        self.assertEqual(self.store.claims["lobby"][0], self.a.directory.node)
        self.failureResultOf(self.b.create("lobby"), ProtocolError)

    def test_redis_unreachable_means_503_with_retry_after_then_reassertion(self):
        self.successResultOf(self.a.create("Lobby"))
        self.store.down = True
        for d, what in ((self.b.create("New"), "created"), (self.b.join("Lobby"), "looked up"),
                        (self.b.list(), "listed")):
            e = self.refusal(d)
            self.assertEqual(e.status, Status.UNAVAILABLE)
            self.assertIn(what, e.message)
            self.assertEqual(e.response_fields(), {"retry_after": 5})
        self.clock.advance(TTL / 3)
        self.assertIs(self.a.directory.up, False)
        # Redis comes back empty: the next tick claims the room again.
        self.store.down = False
        self.store.claims.clear()
        self.clock.advance(TTL / 3)
        self.assertIs(self.a.directory.up, True)
        self.assertEqual(self.refusal(self.b.join("Lobby")).status, Status.REDIRECT)

    def test_a_name_claimed_twice_stays_with_the_directory_elsewhere(self):
        self.successResultOf(self.a.create("Lobby"))
        self.store.claims.clear()  # Redis lost its data ...
        self.successResultOf(self.b.create("LOBBY"))  # ... and B got in first
        self.clock.advance(TTL / 3)
        self.assertEqual(self.a.directory.contested, {"lobby": "10.0.0.1:9003"})
        self.assertIn("lobby", self.a.rooms.rooms)  # A's room goes on
        # A never gives its live room up on Redis's word: JOINs made on A
        # join it, and A lists it; a third node follows the directory.
        self.successResultOf(self.a.join("lobby"))
        self.assertEqual([r["tcp"] for r in self.successResultOf(self.a.list())], ["10.0.0.1:9001"])
        c = Node(self.clock, self.store, 9005)
        self.assertEqual(self.refusal(c.join("lobby")).response_fields(), {"tcp": "10.0.0.1:9003"})
        # B's room closes: A claims the name back at its next tick.
        self.b.rooms.stop()
        self.clock.advance(0)
        self.clock.advance(TTL / 3)
        self.assertEqual(self.a.directory.contested, {})
        self.assertEqual(self.refusal(self.b.join("lobby")).response_fields(), {"tcp": "10.0.0.1:9001"})

    def test_a_planted_claim_does_not_redirect_a_live_rooms_joins(self):
        """Issue 20, item 5: Redis says evil.example:443 holds A's live room."""
        self.successResultOf(self.a.create("Lobby"))
        claim = Claim("lobby", "Lobby", False, 1)
        self.store.claims["lobby"] = ("evil", "evil.example:443", claim, self.clock.seconds() + 3600)
        self.clock.advance(TTL / 3)
        self.assertEqual(self.a.directory.contested, {"lobby": "evil.example:443"})
        self.successResultOf(self.a.join("lobby"))  # served here, not 307
        self.successResultOf(self.a.join("LOBBY"))
        self.assertEqual([r["tcp"] for r in self.successResultOf(self.a.list())], ["10.0.0.1:9001"])
        # The room closes: A releases nothing of another's (compare-and-delete).
        self.a.rooms.stop()
        self.clock.advance(0)
        self.assertEqual(self.store.claims["lobby"][1], "evil.example:443")

    def test_a_restarted_node_takes_over_what_its_address_held(self):
        self.successResultOf(self.a.create("Lobby"))
        self.a.directory._refresher.stop()  # killed; restarted at once on the same port:
        again = Node(self.clock, self.store, 9001)
        self.successResultOf(again.join("Lobby"))  # not redirected to itself (the service says 404)
        self.assertEqual(self.successResultOf(again.list()), [])
        self.successResultOf(again.create("LOBBY"))
        self.assertEqual(self.store.claims["lobby"][0], again.directory.node)

    def test_stop_releases_every_room_and_closes_the_store(self):
        self.successResultOf(self.a.create("One"))
        self.successResultOf(self.a.create("Two"))
        self.a.rooms.stop()
        self.successResultOf(defer.ensureDeferred(self.a.directory.stop()))
        self.assertEqual(self.store.claims, {})
        self.assertTrue(self.store.closed)


class AddressTests(TestCase):
    def test_forms(self):
        a = parse_redis_url("redis://user:s3cret@redis.example:6380/2")
        self.assertEqual((a.host, a.port, a.db, a.username, a.password, a.tls), ("redis.example", 6380, 2, "user", "s3cret", False))
        self.assertNotIn("s3cret", a.shown)
        self.assertNotIn("s3cret", repr(a))
        self.assertTrue(parse_redis_url("rediss://h/0?ssl_ca_certs=/etc/ca.pem").tls)
        u = parse_redis_url("unix:///run/redis/redis.sock?db=3")
        self.assertEqual((u.scheme, u.path, u.db), ("unix", "/run/redis/redis.sock", 3))
        self.assertEqual(parse_redis_url("redis://h").port, 6379)

    def test_bad_ones_name_the_option(self):
        for bad in ("http://h", "redis://", "redis://h/x", "redis://h:99999", "unix://relative",
                    "redis://h/0?ssl_ca_certs=/ca.pem"):
            with self.assertRaises(ValueError) as e:
                parse_redis_url(bad)
            self.assertTrue(str(e.exception).startswith("--redis:"), str(e.exception))

    def test_host_port(self):
        self.assertEqual(host_port("::1", 9001), "[::1]:9001")
        self.assertEqual(host_port("node1.example", 9001), "node1.example:9001")


class OptionTests(TestCase):
    def parse(self, *args: str) -> Any:
        from ocm.server.tap import Options

        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), *args])
        return o

    def test_without_redis_nothing_changes(self):
        o = self.parse()
        self.assertIsNone(o["redis"])

    def test_advertise_defaults_to_one_interface_else_is_needed(self):
        self.assertEqual(self.parse("--redis", "redis://h", "--interface", "10.0.0.5")["advertise"], "10.0.0.5")
        self.assertEqual(self.parse("--redis", "redis://h", "--advertise", "node1.example")["advertise"], "node1.example")
        from twisted.python.usage import UsageError

        for args, option in ((("--redis", "redis://h"), "--advertise"),
                             (("--advertise", "x"), "--advertise goes with --redis"),
                             (("--redis", "ftp://h", "--advertise", "x"), "--redis"),
                             (("--redis", "redis://h", "--advertise", "a b"), "--advertise"),
                             (("--redis", "redis://h", "--advertise", "x", "--redis-ttl", "0.1"), "--redis-ttl")):
            with self.assertRaises(UsageError) as e:
                self.parse(*args)
            self.assertIn(option, str(e.exception))
