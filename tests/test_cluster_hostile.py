"""
Cluster mode with a Redis someone else can write to (issue 20, item 5):
values planted in Redis are checked as if a client had sent them, a node
keeps the rooms it holds, and a Redis with a password is reached with
--redis-password-file. The checks themselves first (pure functions), then
plugin-built nodes against a real redis-server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import txredisapi
from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from ocm.cluster.store import Invalid, Listed, check_row, check_tcp, shown
from ocm.cluster.url import parse_redis_url, with_password_file
from ocm.ops.metrics import OcmCollector
from ocm.server.tap import Options
from tests import wire
from tests.daemon import run_daemon
from tests.redis import RedisServer
from tests.test_cluster import TTL, ClusterTestCase, eventually

# The commands of the ACL user in docs/scaling.md.
ACL_COMMANDS = "+eval +evalsha +hmget +hget +hset +pexpire +sadd +srem +smembers +del +select +auth +ping"
# What the attacker of issue 20 planted: a terminal title and a bell, then 200 KB.
FORGED = "\x1b]0;pwned\x07\x1b[2J" + "A" * 200_000


class Checks(TestCase):
    """What a value read from Redis must be: the rules a client's request meets."""

    def test_tcp(self):
        for good in ("127.0.0.1:9001", "node1.chat.example.org:9001", "[::1]:65535", "host_1:1",
                     "chat.example.org.:9001", "[fe80::1%eth0]:9001", "xn--bcher-kva.example:443"):
            self.assertEqual(check_tcp(good), good)
        for bad in ("evil.example", "evil.example:0", "evil.example:65536", "evil.example:+443",
                    "evil host:443", "evil\x1b.example:443", "[::1]", "[nope]:443", "1.2.3.999:443",
                    "bücher.example:443", "a" * 300 + ":443", ":443", "-a.example:443", "a..b:443", "a.b..:443",
                    "http://evil.example:443", 443, b"127.0.0.1:1", None):
            with self.assertRaises(Invalid, msg=repr(bad)):
                check_tcp(bad)

    def test_row(self):
        self.assertEqual(check_row("lobby", "Lobby", "3", "1", "10.0.0.1:9001", "ab12"),
                         Listed("Lobby", 3, True, "10.0.0.1:9001", "ab12"))
        good = ["lobby", "Lobby", "3", "1", "10.0.0.1:9001", "ab12"]
        for field, bad in ((1, FORGED), (1, "Lo\x07bby"), (1, " Lobby"), (1, "Other"), (1, None),
                           (1, b"Lobby"), (2, "-1"), (2, "99999999999"), (2, "3.5"), (2, None),
                           (3, "yes"), (4, "evil.example"), (5, "x" * 65), (5, "a b"), (5, None),
                           (0, "k" * 2000)):
            row = list(good)
            row[field] = bad
            with self.assertRaises(Invalid, msg=shown(bad)):
                check_row(*row)

    def test_an_advertised_name_other_nodes_would_skip_is_said_at_start(self):
        from twisted.internet import task

        from ocm.cluster.directory import Directory
        from ocm.server.rooms import RoomService

        logs = LogWatch(self)
        for advertise, said in (("node1.chat.example.org", False), ("::1", False),
                                ("bücher.example", True), ("evil\x1b.example", True)):
            clock = task.Clock()
            directory = Directory(RoomService(clock), None, clock, advertise=advertise)
            directory.start(9001)
            directory._refresher.stop()
            errors = [line for line in logs.lines() if "other nodes will ignore" in line]
            self.assertEqual(len(errors), int(said), (advertise, errors))
            logs.events.clear()
            if said:
                self.assertIn("xn--", errors[0])
                self.assertNotIn("\x1b", errors[0])

    def test_shown_is_repr_and_bounded(self):
        text = shown(FORGED)
        self.assertLess(len(text), 100)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\x07", text)
        self.assertIn("\\x1b", text)
        self.assertIn("200014 long", text)
        self.assertEqual(shown("Lobby"), "'Lobby'")


class PasswordFile(TestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        Path(path).write_bytes(data)
        return path

    def test_read_once_one_line_never_in_the_shown_url(self):
        address = with_password_file(parse_redis_url("redis://db.internal:6380/2"), self.write(b"s3cret pw\n"))
        self.assertEqual((address.password, address.host, address.port, address.db),
                         ("s3cret pw", "db.internal", 6380, 2))
        self.assertNotIn("s3cret", address.shown)
        self.assertNotIn("s3cret", repr(address))
        self.assertEqual(with_password_file(parse_redis_url("redis://h"), self.write(b"pw\r\n")).password, "pw")

    def test_unusable_files_name_the_option_not_the_contents(self):
        for data in (b"", b"\n", b"two\nlines\n", b"\xff\xfe", b"x" * 5000):
            with self.assertRaises(ValueError) as e:
                with_password_file(parse_redis_url("redis://h"), self.write(data))
            self.assertIn("--redis-password-file", str(e.exception))
            self.assertNotIn("lines", str(e.exception))
        with self.assertRaises(ValueError):
            with_password_file(parse_redis_url("redis://h"), self.mktemp())  # absent
        with self.assertRaises(ValueError) as e:
            with_password_file(parse_redis_url("redis://:pw@h"), self.write(b"pw"))
        self.assertIn("give one", str(e.exception))

    def test_the_option(self):
        path = self.write(b"s3cret\n")
        o = Options()
        o.parseOptions(["--redis", "redis://127.0.0.1", "--advertise", "node1.example",
                        "--redis-password-file", path])
        self.assertEqual(o["redis-address"].password, "s3cret")
        with self.assertRaises(UsageError) as e:
            Options().parseOptions(["--redis-password-file", path])
        self.assertIn("--redis-password-file goes with --redis", str(e.exception))


class LogWatch:
    """Every event logged while a test runs, formatted and raw."""

    def __init__(self, test: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(e) or "" for e in self.events]

    def strings(self) -> list[str]:
        """Every text an observer (a JSON log file too) could write: the line and each field."""
        out = self.lines()
        for e in self.events:
            out += [v for v in e.values() if isinstance(v, str)]
        return out


class Planted(ClusterTestCase):
    """Values someone wrote into the node's Redis, as issue 20's attacker did."""

    timeout = 60

    async def setUp(self) -> None:
        self.logs = LogWatch(self)
        await self.start_redis()
        self.a = self.node("--interface", "127.0.0.1")
        await eventually(lambda: self._up(self.a), "the node connected")
        self.attacker = await txredisapi.Connection("127.0.0.1", self.redis.port, reconnect=False)
        self.addCleanup(self.attacker.disconnect)

    async def _up(self, node: Any) -> bool:
        return node.directory.store.connected

    async def plant(self, key: str, **fields: str) -> None:
        await self.attacker.hmset(f"ocm:room:{key}", fields)
        await self.attacker.sadd("ocm:rooms", key)

    async def test_a_planted_claim_does_not_redirect_joins_of_a_live_room(self):
        alice = await self.create(self.a, "Lobby", "alice")
        await self.plant("lobby", node="evil", tcp="evil.example:443", name="Lobby",
                         members="1", password="0")
        await eventually(lambda: defer.succeed("lobby" in self.a.directory.contested),
                         "the node's tick met the planted claim", timeout=3 * TTL)
        r = await self.reply(self.a, wire.JOIN_ROOM, "lobby", {"username": "bob"})
        self.assertEqual(r["status"], 200, r)  # was 307 {"tcp": "evil.example:443"}
        self.member("lobby", r["complete"])
        self.assertEqual((await alice.event()).name, "bob")
        listed = await self.listed(self.a)
        self.assertEqual({n: x["tcp"] for n, x in listed.items()}, {"Lobby": self.where(self.a)})
        warned = [line for line in self.logs.lines() if "claimed in the directory by 'evil.example:443'" in line]
        self.assertEqual(len(warned), 1, self.logs.lines())

    async def test_a_planted_huge_name_with_escapes_is_not_listed_nor_logged_raw(self):
        await self.create(self.a, "Lobby", "alice")
        # The entry, filed under a key a client can JOIN ...
        await self.plant("trap", node="evil", tcp="127.0.0.1:1", name=FORGED, members="1", password="0")
        # ... and others that break one rule each.
        await self.plant("beep\x07", node="evil", tcp="127.0.0.1:1", name="beep\x07", members="1", password="0")
        await self.plant("elsewhere", node="evil", tcp="evil host:443", name="Elsewhere", members="1",
                         password="0")
        await self.plant("many", node="evil", tcp="127.0.0.1:1", name="Many", members="1" * 12,
                         password="0")
        await self.plant("fine", node="other", tcp="127.0.0.1:2", name="Fine", members="4", password="1")
        for _ in range(3):
            listed = await self.listed(self.a)
            self.assertEqual(sorted(listed), ["Fine", "Lobby"])
        self.assertEqual((listed["Fine"]["members"], listed["Fine"]["password"]), (4, True))
        for room in ("trap", "elsewhere"):
            r = await self.reply(self.a, wire.JOIN_ROOM, room, {"username": "bob"})
            self.assertEqual(r["status"], 404, r)  # was 307 (to the planted name or host)
        store = self.a.directory.store
        # 3 LISTs of 4 bad entries, and 2 JOINs: counted by field, also for Prometheus.
        self.assertEqual(store.invalid, {"name": 3 * 2 + 1, "tcp": 3 + 1, "members": 3})
        [family] = [f for f in OcmCollector(self.a).collect() if f.name == "ocm_cluster_entries_ignored"]
        self.assertEqual({s.labels["field"]: s.value for s in family.samples if s.name.endswith("_total")},
                         {"key": 0, "name": 7, "members": 3, "password": 0, "tcp": 4, "node": 0})
        ignored = [line for line in self.logs.lines() if "ignored a room entry" in line]
        self.assertEqual(len(ignored), 4, ignored)  # once per entry, not per request
        for line in ignored:
            self.assertLess(len(line), 400, line)
        for text in self.logs.strings():
            self.assertNotIn("\x1b", text)
            self.assertNotIn("\x07", text)
            self.assertNotIn("A" * 100, text)


class Password(ClusterTestCase):
    """A Redis that wants a password (requirepass), given with --redis-password-file."""

    timeout = 60
    PASSWORD = "correct horse battery staple"

    async def setUp(self) -> None:
        self.logs = LogWatch(self)
        self.redis = RedisServer(self, password=self.PASSWORD)
        await self.redis.start()

    def password_node(self, password: str, url: str | None = None) -> Any:
        path = os.path.abspath(self.mktemp())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return run_daemon(
            self, "--no-tls", "--redis", url or self.redis.url, "--redis-ttl", str(TTL),
            "--interface", "127.0.0.1", "--redis-password-file", path, data_dir=Path(self.mktemp()),
        )

    def assert_never_logged(self, password: str) -> None:
        for text in self.logs.strings():
            self.assertNotIn(password, text)

    async def test_the_right_password_makes_a_working_cluster(self):
        a = self.password_node(self.PASSWORD)
        b = self.password_node(self.PASSWORD)
        await self.create(a, "Lobby", "alice")
        r = await self.reply(b, wire.JOIN_ROOM, "lobby", {"username": "bob"})
        self.assertEqual((r["status"], r.get("tcp")), (307, self.where(a)))
        self.assertEqual(set(await self.listed(b)), {"Lobby"})
        self.assertIn(":***@", a.directory.store.shown)
        self.assert_never_logged(self.PASSWORD)

    async def test_a_wrong_password_is_said_clearly(self):
        a = self.password_node("wrong password")
        await eventually(lambda: defer.succeed(a.directory.store.refused is not None),
                         "the node heard Redis refuse it")
        said = [line for line in self.logs.lines() if "refused this node" in line]
        self.assertEqual(len(said), 1, self.logs.lines())
        self.assertIn("--redis-password-file", said[0])
        self.assertIn("WRONGPASS", said[0])
        r = await self.reply(a, wire.CREATE_ROOM, "Lobby", {"username": "alice"})
        self.assertEqual(r["status"], 503, r)
        r = await self.reply(a, wire.LIST_ROOMS, "", {})
        self.assertEqual(r["status"], 503, r)
        self.assert_never_logged("wrong password")

    async def test_an_acl_user_with_only_the_directorys_commands(self):
        """The ACL docs/scaling.md gives: the cluster works with it, and it denies the rest."""
        await self.redis.stop()
        acl = ("~ocm:*", "&*", "-@all", *ACL_COMMANDS.split())
        self.redis = RedisServer(self, config=("--user", "default", "off", "--user", "ocm", "on",
                                               ">" + self.PASSWORD, *acl))
        await self.redis.start()
        url = self.redis.url.replace("redis://", "redis://ocm@")
        a = self.password_node(self.PASSWORD, url)
        b = self.password_node(self.PASSWORD, url)
        alice = await self.create(a, "Lobby", "alice")
        r = await self.reply(b, wire.JOIN_ROOM, "lobby", {"username": "bob"})
        self.assertEqual((r["status"], r.get("tcp")), (307, self.where(a)))
        self.assertEqual(set(await self.listed(b)), {"Lobby"})
        alice.leave()  # the release script (DEL, SREM) runs as the user too

        async def released() -> bool:
            return "Lobby" not in await self.listed(b)

        await eventually(released, "the room released")
        self.assertEqual(a.directory.releasing, {})
        await b.directory.refresh()
        self.assertEqual(b.directory.store.refused, None)
        self.assertTrue(b.directory.up)
        user = await txredisapi.Connection("127.0.0.1", self.redis.port, reconnect=False,
                                           password=self.PASSWORD, username="ocm")
        self.addCleanup(user.disconnect)
        with self.assertRaises(txredisapi.ResponseError):
            await user.execute_command("FLUSHALL")
        with self.assertRaises(txredisapi.ResponseError):
            await user.execute_command("HSET", "elsewhere", "a", "b")

    async def test_no_password_is_said_too(self):
        a = self.node("--interface", "127.0.0.1")
        r = await self.reply(a, wire.LIST_ROOMS, "", {})
        self.assertEqual(r["status"], 503, r)
        said = [line for line in self.logs.lines() if "refused this node" in line]
        self.assertEqual(len(said), 1, self.logs.lines())
        self.assertIn("NOAUTH", said[0])
        self.assertIn("--redis-password-file", said[0])
        r = await self.reply(a, wire.LIST_ROOMS, "", {})
        self.assertEqual(r["status"], 503, r)
        self.assertEqual(len([line for line in self.logs.lines() if "refused this node" in line]), 1)
