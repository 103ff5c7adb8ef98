"""
Cluster mode against a real redis-server: two and three plugin-built nodes
(in-process, listening for real on loopback) and one spawned node that is
killed; Redis stopped and restarted under live rooms.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from ocm.bench.spawn import Server, free_port
from ocm.cluster.store import DirectoryUnavailable, RedisStore
from ocm.cluster.url import parse_redis_url
from ocm.server.service import OcmService
from tests import wire
from tests.daemon import run_daemon
from tests.redis import RedisServer

TTL = 1.0  # --redis-ttl of the test nodes: refreshed every third of a second
WAIT = 8.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT) -> float:
    """Poll C{check} every 50 ms until true; fail after C{timeout}. Returns the wait."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await wire.sleep(reactor, 0.05)


class ClusterTestCase(TestCase):
    timeout = 60

    async def start_redis(self) -> RedisServer:
        self.redis = RedisServer(self)
        await self.redis.start()
        return self.redis

    def node(self, *args: str, ttl: float = TTL) -> OcmService:
        return run_daemon(
            self, "--no-tls", "--redis", self.redis.url, "--redis-ttl", str(ttl), *args,
            data_dir=Path(self.mktemp()),
        )

    async def reply(self, node: OcmService | int, op: int, room: str, body: dict[str, Any]) -> dict[str, Any]:
        """The RESPONSE body, with the COMPLETE body under "complete" after a 200."""
        port = node if isinstance(node, int) else node.tcp_port
        frames = (await wire.tcrp(reactor, port, wire.request(op, room, body), pin=None)).frames
        response = dict(frames[0].body)
        if response["status"] == 200:
            response["complete"] = frames[1].body
        return response

    async def create(self, node: OcmService, room: str, user: str, **extra: Any) -> wire.Member:
        r = await self.reply(node, wire.CREATE_ROOM, room, {"username": user, **extra})
        self.assertEqual(r["status"], 200, r)
        return self.member(room, r["complete"])

    def member(self, room: str, complete: dict[str, Any]) -> wire.Member:
        m = wire.Member(reactor, room.encode(), complete, ("127.0.0.1", complete["udp_port"]))
        self.addCleanup(m.close)
        m.heartbeat()
        return m

    async def listed(self, node: OcmService | int) -> dict[str, dict[str, Any]]:
        r = await self.reply(node, wire.LIST_ROOMS, "", {})
        self.assertEqual(r["status"], 200, r)
        return {room["name"]: room for room in r["complete"]["rooms"]}

    def where(self, node: OcmService) -> str:
        return f"127.0.0.1:{node.tcp_port}"


class TwoNodes(ClusterTestCase):
    async def setUp(self) -> None:
        await self.start_redis()
        self.a = self.node("--interface", "127.0.0.1")
        self.b = self.node("--advertise", "127.0.0.1")

    async def test_join_through_another_node_is_redirected_then_chats(self):
        alice = await self.create(self.a, "Lobby", "alice")
        r = await self.reply(self.b, wire.JOIN_ROOM, "lobby", {"username": "bob"})
        self.assertEqual(r["status"], 307, r)
        self.assertEqual(r["tcp"], self.where(self.a))
        self.assertIn("'Lobby'", r["message"])  # the room's own spelling
        host, port = r["tcp"].rsplit(":", 1)
        r = await self.reply(int(port), wire.JOIN_ROOM, "lobby", {"username": "bob"})
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(r["complete"]["members"], ["alice", "bob"])
        bob = self.member("lobby", r["complete"])
        joined = await alice.event()
        self.assertEqual((joined.kind, joined.name), (wire.JOINED, "bob"))
        bob.chat("hello from bob")
        for m in (alice, bob):
            seen = await m.event()
            self.assertEqual((seen.kind, seen.name, seen.text), (wire.MESSAGE, "bob", "hello from bob"))

    async def test_a_name_is_created_once_in_the_cluster(self):
        await self.create(self.a, "Lobby", "alice")
        r = await self.reply(self.b, wire.CREATE_ROOM, "LOBBY", {"username": "bob"})
        self.assertEqual(r["status"], 409, r)
        self.assertIn(self.where(self.a), r["message"])
        # Both at once, on two nodes: exactly one wins.
        import twisted.internet.defer as defer
        results = await defer.gatherResults([
            defer.ensureDeferred(self.reply(n, wire.CREATE_ROOM, "Race", {"username": u}))
            for n, u in ((self.a, "x"), (self.b, "y"))
        ])
        self.assertEqual(sorted(r["status"] for r in results), [200, 409])

    async def test_list_from_either_node_shows_every_room(self):
        await self.create(self.a, "On A", "alice", password="pw")
        bob = await self.create(self.b, "On B", "bob")
        r = await self.reply(self.b, wire.JOIN_ROOM, "On B", {"username": "carol"})
        self.assertEqual(r["status"], 200)
        expected = {"On A": (1, True, self.where(self.a)), "On B": (2, False, self.where(self.b))}
        # A node's own rooms are listed as they are; another node's member
        # counts as of its last refresh (every third of the TTL).
        for node in (self.a, self.b):
            await eventually(
                lambda: self._lists(node, expected), "both rooms listed with their figures", timeout=TTL
            )
        # A room that closes leaves the directory at once (not after the TTL).
        bob.leave()
        await eventually(
            lambda: self._absent(self.a, "On B"), "the closed room gone from the list", timeout=TTL / 2
        )
        r = await self.reply(self.a, wire.JOIN_ROOM, "On B", {"username": "dave"})
        self.assertEqual(r["status"], 404, r)

    async def _lists(self, node: OcmService, expected: dict[str, tuple]) -> bool:
        rooms = await self.listed(node)
        return {n: (r["members"], r["password"], r["tcp"]) for n, r in rooms.items()} == expected

    async def _absent(self, node: OcmService, name: str) -> bool:
        return name not in await self.listed(node)

    async def test_redis_down_then_back_under_live_rooms(self):
        alice = await self.create(self.a, "Lobby", "alice")
        r = await self.reply(self.b, wire.JOIN_ROOM, "Lobby", {"username": "bob"})
        bob = self.member("Lobby", (await self.reply(int(r["tcp"].rsplit(":", 1)[1]), wire.JOIN_ROOM, "Lobby", {"username": "bob"}))["complete"])
        await alice.event()  # bob JOINED
        await self.redis.stop()
        await eventually(lambda: self._disconnected(self.a, self.b), "both nodes saw Redis go")
        # Chat goes on without Redis.
        bob.chat("still here")
        self.assertEqual((await alice.event()).text, "still here")
        # What needs the directory answers 503 with a sentence and retry_after.
        for node, op, room in ((self.a, wire.CREATE_ROOM, "New"), (self.b, wire.JOIN_ROOM, "Lobby"),
                               (self.b, wire.LIST_ROOMS, "")):
            r = await self.reply(node, op, room, {} if op == wire.LIST_ROOMS else {"username": "zed"})
            self.assertEqual(r["status"], 503, (op, r))
            self.assertIn("directory is unreachable", r["message"])
            self.assertGreaterEqual(r["retry_after"], 1)
        # A JOIN of a room this node holds needs no Redis.
        r = await self.reply(self.a, wire.JOIN_ROOM, "Lobby", {"username": "carol"})
        self.assertEqual(r["status"], 200, r)
        # Redis back, empty: node A re-asserts its room.
        await self.redis.start()
        await eventually(lambda: self._present(self.b, "Lobby"), "the room listed again after Redis came back")
        r = await self.reply(self.b, wire.JOIN_ROOM, "Lobby", {"username": "dave"})
        self.assertEqual((r["status"], r.get("tcp")), (307, self.where(self.a)))
        self.assertEqual((await self.listed(self.b))["Lobby"]["members"], 3)

    async def _disconnected(self, *nodes: OcmService) -> bool:
        return not any(n.directory.store.connected for n in nodes)

    async def _connected(self, *nodes: OcmService) -> bool:
        return all(n.directory.store.connected for n in nodes)

    async def _present(self, node: OcmService, name: str) -> bool:
        try:
            return name in await self.listed(node)
        except AssertionError:
            return False  # 503 until this node reconnects

    async def test_a_name_claimed_twice_after_redis_lost_its_data(self):
        """
        Redis restarts empty, and node B creates a name that node A's live
        room had, before A re-asserted it: B's claim stands for B (and any
        other node). A never gives its live room up on Redis's word: A lists
        it, and JOINs made on A join it. When B's room closes, A claims the
        name back.
        """
        # A refreshes only every 10 s: B gets in first.
        self.a = self.node("--interface", "127.0.0.1", ttl=30)
        alice = await self.create(self.a, "Lobby", "alice")
        await self.redis.stop()
        await self.redis.start()
        await eventually(lambda: self._connected(self.a, self.b), "both nodes reconnected")
        host = await self.create(self.b, "LOBBY", "bob")
        await self.a.directory.refresh()  # A's tick: it learns it lost the name
        self.assertEqual(self.a.directory.contested, {"lobby": self.where(self.b)})
        for node, name in ((self.a, "Lobby"), (self.b, "LOBBY")):
            self.assertEqual(
                {n: r["tcp"] for n, r in (await self.listed(node)).items()}, {name: self.where(node)}
            )
        r = await self.reply(self.a, wire.JOIN_ROOM, "lobby", {"username": "carol"})
        self.assertEqual(r["status"], 200, r)
        self.member("lobby", r["complete"])
        joined = await alice.event()
        self.assertEqual((joined.kind, joined.name), (wire.JOINED, "carol"))  # in A's room
        alice.chat("we are still here")
        self.assertEqual((await alice.event()).text, "we are still here")
        host.leave()
        await eventually(lambda: self._absent(self.b, "LOBBY"), "B's room released")
        await self.a.directory.refresh()
        self.assertEqual(self.a.directory.contested, {})
        self.assertEqual({n: r["tcp"] for n, r in (await self.listed(self.b)).items()},
                         {"Lobby": self.where(self.a)})


class ThreeNodes(ClusterTestCase):
    async def test_every_node_lists_every_room_and_redirects_to_its_holder(self):
        await self.start_redis()
        nodes = [self.node("--interface", "127.0.0.1") for _ in range(3)]
        for i, node in enumerate(nodes):
            await self.create(node, f"room {i}", f"host{i}")
        expected = {f"room {i}": self.where(n) for i, n in enumerate(nodes)}
        for node in nodes:
            self.assertEqual({n: r["tcp"] for n, r in (await self.listed(node)).items()}, expected)
            for i, holder in enumerate(nodes):
                r = await self.reply(node, wire.JOIN_ROOM, f"ROOM {i}", {"username": "guest"})
                if holder is node:
                    self.assertEqual(r["status"], 200, r)
                    self.member(f"room {i}", r["complete"]).leave()
                else:
                    self.assertEqual((r["status"], r["tcp"]), (307, self.where(holder)))


class KilledNode(ClusterTestCase):
    async def test_a_killed_nodes_rooms_leave_the_directory_within_the_ttl(self):
        await self.start_redis()
        survivor = self.node("--interface", "127.0.0.1")
        doomed = Server(
            reactor, "ocm", "127.0.0.1", False, 10, 10,
            extra=["--redis", self.redis.url, "--redis-ttl", str(TTL)],
        )
        self.addCleanup(doomed.stop)
        await doomed.ready()
        r = await self.reply(doomed.tcp_port, wire.CREATE_ROOM, "Doomed", {"username": "x"})
        self.assertEqual(r["status"], 200, r)
        self.assertIn("Doomed", await self.listed(survivor))
        os.kill(doomed.pid, signal.SIGKILL)
        waited = await eventually(lambda: self._gone(survivor), "the dead node's room forgotten")
        self.assertLess(waited, TTL + 0.5)
        r = await self.reply(survivor, wire.JOIN_ROOM, "Doomed", {"username": "y"})
        self.assertEqual(r["status"], 404, r)
        # The name is free again for a live node.
        await self.create(survivor, "Doomed", "z")

    async def _gone(self, node: OcmService) -> bool:
        return "Doomed" not in await self.listed(node)

    async def test_a_node_restarted_at_the_same_address_takes_over_its_names(self):
        await self.start_redis()
        survivor = self.node("--interface", "127.0.0.1")
        doomed = Server(
            reactor, "ocm", "127.0.0.1", False, 10, 10,
            extra=["--redis", self.redis.url, "--redis-ttl", "30"],
        )
        self.addCleanup(doomed.stop)
        await doomed.ready()
        r = await self.reply(doomed.tcp_port, wire.CREATE_ROOM, "Doomed", {"username": "x"})
        self.assertEqual(r["status"], 200, r)
        os.kill(doomed.pid, signal.SIGKILL)
        await doomed.stop()
        # Restarted on its port long before its claims (30 s) expire.
        again = run_daemon(
            self, "--no-tls", "--redis", self.redis.url, "--tcp", f"tcp:{doomed.tcp_port}:interface=127.0.0.1",
            "--interface", "127.0.0.1", data_dir=Path(self.mktemp()),
        )
        r = await self.reply(survivor, wire.JOIN_ROOM, "Doomed", {"username": "y"})
        self.assertEqual((r["status"], r.get("tcp")), (307, self.where(again)))
        r = await self.reply(again, wire.JOIN_ROOM, "Doomed", {"username": "y"})
        self.assertEqual(r["status"], 404, r)  # not a redirect to itself
        await self.create(again, "Doomed", "z")


class RedisAddresses(ClusterTestCase):
    """The other two forms of --redis, against a real redis-server."""

    async def two_nodes_agree(self) -> None:
        a = self.node("--interface", "127.0.0.1")
        b = self.node("--interface", "127.0.0.1")
        await eventually(lambda: self._connected(a, b), "both nodes connected to Redis")
        await self.create(a, "Lobby", "alice")
        r = await self.reply(b, wire.JOIN_ROOM, "Lobby", {"username": "bob"})
        self.assertEqual((r["status"], r.get("tcp")), (307, self.where(a)))

    async def _connected(self, *nodes: OcmService) -> bool:
        return all(n.directory.store.connected for n in nodes)

    async def test_unix_socket(self):
        self.redis = RedisServer(self, unix=True)
        await self.redis.start()
        await self.two_nodes_agree()

    async def test_tls_with_a_private_ca(self):
        from ocm.server import tls

        cert, key = tls.make_self_signed("localhost")
        cert_path, key_path = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        Path(cert_path).write_bytes(cert)
        Path(key_path).write_bytes(key)
        self.redis = RedisServer(self, tls=(cert_path, key_path))
        await self.redis.start()
        await self.two_nodes_agree()


class StoreStart(ClusterTestCase):
    """A node's first moments: its connection to Redis is still being made."""

    def nowhere(self) -> str:
        """A Redis URL where nothing listens."""
        return f"redis://127.0.0.1:{free_port(socket.SOCK_STREAM, '127.0.0.1')}/0"

    def store(self, url: str, timeout: float = 2.0) -> RedisStore:
        store = RedisStore(parse_redis_url(url), reactor, timeout=timeout, reactor=reactor)
        self.addCleanup(store.close)
        return store

    async def test_a_request_in_the_first_moment_waits_for_the_connection(self):
        """
        A CREATE that reaches a node just started (twistd has said it is
        ready, systemd too) is answered, not refused with 503 because the
        connection to Redis was a few milliseconds from made.
        """
        await self.start_redis()
        store = self.store(self.redis.url)
        self.assertFalse(store.connected)
        self.assertIsNone(await store.owner("lobby"))

    async def test_redis_down_at_start_is_said_within_the_timeout_then_at_once(self):
        store = self.store(self.nowhere(), timeout=0.5)
        start = time.monotonic()
        with self.assertRaises(DirectoryUnavailable):
            await store.owner("lobby")
        self.assertLess(time.monotonic() - start, 1.5)
        await wire.sleep(reactor, 0.5)
        start = time.monotonic()
        with self.assertRaises(DirectoryUnavailable):
            await store.owner("lobby")
        self.assertLess(time.monotonic() - start, 0.1, "waited again though Redis is known down")

    async def test_a_node_stopped_while_connecting_answers_and_leaves_nothing_behind(self):
        store = self.store(self.nowhere(), timeout=30)
        waiting = store.owner("lobby")
        await store.close()  # trial fails the test if its 30 s timer were left
        with self.assertRaises(DirectoryUnavailable):
            await waiting
