"""
ocm.admin.server on a StringTransport and task.Clock: every command over
the wire format, the refusals, the bounds, who may connect, what is logged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ocm.admin import protocol
from ocm.admin.server import (
    Access,
    Admin,
    AdminFactory,
    AdminState,
    Peer,
    SocketPathError,
    check_path,
    clear_stale,
    endpoint_string,
)
from ocm.server.desk import FrontDesk
from ocm.wire.datagram import HEARTBEAT, EventKind, send
from ocm.wire.tcrp import ProtocolError, Status
from tests.test_rooms_12 import NumberedFixture

K = EventKind
ROOT = Peer(1, 0, 0)


class Browser:
    """A member transport as the WebSocket's is, recording what it is handed."""

    kind = "web"

    def __init__(self) -> None:
        self.events: list[Any] = []

    def deliver(self, event: Any) -> None:
        self.events.append(event)


class AdminFixture(NumberedFixture):
    def setUp(self):
        super().setUp()
        self.desk = FrontDesk(self.service, self.clock)
        self.door = self.desk.door("tcrp", 100, 10)
        self.admin = Admin(self.service, self.desk, self.clock)
        self.peer = ROOT
        self.factory = AdminFactory(self.admin, Access(uid=1000, group=50), self.clock,
                                    credentials=lambda transport: self.peer)
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def replies(self, transport: StringTransport) -> list[dict]:
        return [json.loads(line) for line in transport.value().splitlines()]

    def ask(self, cmd: str, **fields: Any) -> Any:
        """One request on a new connection: the result, or the refusal as a dict."""
        proto, transport = self.connect()
        proto.dataReceived(protocol.encode_request(cmd, **fields))
        (reply,) = self.replies(transport)
        return reply["result"] if reply["ok"] else reply

    def refused(self, cmd: str, **fields: Any) -> tuple[str, str]:
        reply = self.ask(cmd, **fields)
        self.assertIs(reply["ok"], False, reply)
        return reply["error"], reply["message"]

    def texts(self, peer) -> list[tuple[int, str, str]]:
        return [(e.kind, e.name, e.text) for e in peer.events() if e.kind != K.PONG]

    def actions(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.logged if "ocm-admin" in (e.get("log_format") or "")]


class ReadTests(AdminFixture):
    def test_status(self):
        self.create()
        self.join()
        self.clock.advance(25)
        status = self.ask("status")
        self.assertEqual((status["rooms"], status["members"], status["max_rooms"]), (1, 2, 3))
        self.assertEqual(status["uptime"], 25)
        self.assertEqual(status["address_bans"], 0)
        self.assertIn("received", status["stats"])

    def test_rooms(self):
        self.create("Lobby")
        self.join("Lobby")
        self.clock.advance(10)
        self.service.create_room("Attic", "carol", "10.0.0.3", object())  # a password hash
        rooms = self.ask("rooms")
        self.assertEqual(
            [(r["name"], r["members"], r["password"], r["host"]) for r in rooms],
            [("Attic", 1, True, "carol"), ("Lobby", 2, False, "alice")],
        )
        self.assertEqual(rooms[0]["created"] - rooms[1]["created"], 10)

    def test_members(self):
        self.create()  # alice over UDP, 1.2
        self.clock.advance(30)
        self.service.join_room("Lobby", "bea", "10.0.0.5", transport=Browser(), version="1.1")
        members = self.ask("members", room="lobby")
        self.assertEqual(members["room"], "Lobby")
        alice, bea = members["members"]
        self.assertEqual(
            (alice["name"], alice["address"], alice["host"], alice["muted"], alice["version"], alice["transport"]),
            ("alice", "10.0.0.1:5000", True, False, "1.2", "udp"),
        )
        self.assertEqual(
            (bea["name"], bea["address"], bea["host"], bea["version"], bea["transport"], bea["for"]),
            ("bea", "10.0.0.5", False, "1.1", "web", 0),
        )
        self.assertEqual((alice["for"], bea["since"] - alice["since"]), (30, 30))

    def test_no_such_room(self):
        self.assertEqual(self.refused("members", room="nowhere"), ("not-found", "no room named 'nowhere'"))

    def test_reads_are_not_logged_as_actions(self):
        self.ask("status")
        self.ask("rooms")
        self.assertEqual(self.actions(), [])


class ModerationTests(AdminFixture):
    def test_kick_says_it_was_the_operator(self):
        alice = self.create()
        bob = self.join()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")
        alice.events()
        bob.events()
        result = self.ask("kick", room="Lobby", name="BOB", reason="spam")
        self.assertEqual(result["room"], "Lobby")
        self.assertEqual(self.texts(alice), [(K.KICKED, "bob", "the server's operator: spam")])
        # bob hears it about itself; a 1.1 member sees bob leave.
        self.assertEqual(self.texts(bob), [(K.KICKED, "bob", "the server's operator: spam")])
        self.assertEqual(self.texts(old)[-1][:2], (K.LEFT, "bob"))
        self.assertNotIn("bob", self.service.rooms["lobby"].members)
        # A kicked member may come back.
        self.service.join_room("Lobby", "bob", "10.0.0.2")
        self.assertEqual(self.actions(), ["ocm-admin (uid 0): kick room='Lobby' name='BOB' reason='spam' done"])

    def test_kicking_the_host_closes_the_room(self):
        self.create()
        bob = self.join()
        self.ask("kick", room="Lobby", name="alice")
        self.assertEqual(self.texts(bob), [(K.CLOSED, "alice", "the host was kicked by the server's operator")])
        self.assertEqual(self.service.rooms, {})

    def test_ban_and_unban(self):
        alice = self.create()
        self.join()
        self.ask("ban", room="Lobby", name="bob", reason="flood")
        self.assertEqual(self.texts(alice)[-1], (K.BANNED, "bob", "the server's operator: flood"))
        for name, ip in (("bob", "10.0.0.9"), ("bobby", "10.0.0.2")):
            with self.assertRaises(ProtocolError) as cm:
                self.service.join_room("Lobby", name, ip)
            self.assertEqual(cm.exception.status, Status.FORBIDDEN)
        self.ask("unban", room="Lobby", name="bob")
        self.assertEqual(self.texts(alice)[-1], (K.UNBANNED, "bob", "the server's operator"))
        self.service.join_room("Lobby", "bob", "10.0.0.2")
        self.assertEqual(self.refused("unban", room="Lobby", name="carol"), ("refused", "'carol' is not banned"))

    def test_mute_and_unmute(self):
        alice = self.create()
        bob = self.join()
        alice.events()
        self.ask("mute", room="Lobby", name="bob")
        self.assertEqual(self.texts(alice), [(K.MUTED, "bob", "the server's operator")])
        bob.events()
        bob.send(send(1, "still here"))
        self.assertEqual([e.kind for e in bob.events()], [K.REFUSED])
        self.assertEqual(self.texts(alice), [])
        code, why = self.refused("mute", room="Lobby", name="bob")
        self.assertEqual((code, why), ("refused", "'bob' is already muted"))
        self.ask("unmute", room="Lobby", name="bob")
        self.assertEqual(self.texts(alice), [(K.UNMUTED, "bob", "the server's operator")])
        self.assertIn("ocm-admin (uid 0): mute room='Lobby' name='bob' refused: 'bob' is already muted",
                      self.actions())

    def test_an_unknown_name_or_room(self):
        self.create()
        for cmd in ("kick", "mute", "unmute"):
            self.assertEqual(self.refused(cmd, room="Lobby", name="zed"),
                             ("not-found", "'zed' is not in room 'Lobby'"))
            self.assertEqual(self.refused(cmd, room="Attic", name="zed")[0], "not-found")

    def test_close(self):
        alice = self.create()
        bob = self.join()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")
        for p in (alice, bob, old):
            p.events()
        result = self.ask("close", room="Lobby", reason="maintenance")
        self.assertEqual(result["members"], 3)
        why = "closed by the server's operator: maintenance"
        for p in (alice, bob, old):
            self.assertEqual(self.texts(p), [(K.CLOSED, "alice", why)])
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.refused("close", room="Lobby")[0], "not-found")


class AddressBanTests(AdminFixture):
    def test_ban_address_removes_its_members_and_the_doors_refuse_it(self):
        alice = self.create()  # 10.0.0.1
        bob = self.join()  # 10.0.0.2
        self.service.create_room("Attic", "bob2", "10.0.0.2", None)
        carol = self.join(user="carol", ip="10.0.0.3", port=5002)
        alice.events()
        result = self.ask("ban-address", address="10.0.0.2", duration="1m", reason="abuse")
        self.assertEqual(result["address"], "10.0.0.2")
        self.assertEqual(sorted((r["room"], r["name"]) for r in result["removed"]),
                         [("Attic", "bob2"), ("Lobby", "bob")])
        text = "the server's operator: your address is banned from this server: abuse"
        self.assertEqual(self.texts(alice), [(K.KICKED, "bob", text)])
        self.assertEqual(self.texts(carol), [(K.KICKED, "bob", text)])
        self.assertNotIn("attic", self.service.rooms)  # its host went
        # The token died with the member: its datagrams are not relayed.
        bob.send(send(1, "back?"))
        self.assertEqual(self.texts(alice), [])
        refusal = self.door.admit("10.0.0.2")
        self.assertEqual(refusal.status, Status.FORBIDDEN)
        self.assertIsNone(self.door.admit("10.0.0.3"))
        self.assertEqual([b["address"] for b in self.ask("bans")], ["10.0.0.2"])
        self.clock.advance(61)
        self.assertIsNone(self.door.admit("10.0.0.2"))
        self.assertEqual(self.ask("bans"), [])

    def test_an_ipv6_ban_is_its_64(self):
        self.service.create_room("Lobby", "alice", "2001:db8:1:2::5", None)
        result = self.ask("ban-address", address="2001:db8:1:2::99", duration="2h")
        self.assertEqual(result["address"], "2001:db8:1:2::/64")
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.door.admit("2001:db8:1:2:ffff::1").status, Status.FORBIDDEN)
        self.assertIsNone(self.door.admit("2001:db8:1:3::1"))
        self.assertEqual(self.ask("bans")[0]["left"], 7200)

    def test_unban_address(self):
        self.ask("ban-address", address="192.0.2.7", duration="1d")
        self.assertEqual(self.ask("unban-address", address="192.0.2.7"), {"address": "192.0.2.7"})
        self.assertIsNone(self.door.admit("192.0.2.7"))
        self.assertEqual(self.refused("unban-address", address="192.0.2.7")[0], "not-found")
        self.assertEqual(self.refused("unban-address", address="nonsense")[0], "bad-request")

    def test_refusals(self):
        self.assertEqual(self.refused("ban-address", address="example.org", duration="1m"),
                         ("bad-request", "'example.org' is not an IP address"))
        self.assertEqual(self.refused("ban-address", address="10.0.0.1", duration="2y")[0], "bad-request")
        self.desk.bans.max_bans = 1
        self.ask("ban-address", address="10.0.0.1", duration="1m")
        self.assertEqual(self.refused("ban-address", address="10.0.0.2", duration="1m")[0], "too-many")


class ConnectionTests(AdminFixture):
    def test_bad_json_is_answered_and_the_connection_stays(self):
        proto, transport = self.connect()
        proto.dataReceived(b"{nope\n" + protocol.encode_request("bans"))
        bad, good = self.replies(transport)
        self.assertEqual(bad["error"], "bad-request")
        self.assertEqual(good, {"ok": True, "result": []})
        self.assertFalse(transport.disconnecting)

    def test_several_requests_on_one_connection_and_crlf(self):
        proto, transport = self.connect()
        proto.dataReceived(b'{"cmd": "rooms"}\r\n{"cmd": "bans"}\n')
        self.assertEqual([r["result"] for r in self.replies(transport)], [[], []])

    def test_an_over_long_line_closes_the_connection(self):
        proto, transport = self.connect()
        proto.dataReceived(b"x" * (protocol.MAX_LINE + 1))  # no newline yet: already too long
        (reply,) = self.replies(transport)
        self.assertEqual(reply["error"], "too-long")
        self.assertTrue(transport.disconnecting)
        self.assertIs(proto.state, AdminState.DONE)
        proto.dataReceived(b'\n{"cmd": "rooms"}\n')
        self.assertEqual(len(self.replies(transport)), 1)

    def test_requests_per_connection_are_bounded(self):
        proto, transport = self.connect()
        proto.dataReceived(b'{"cmd": "bans"}\n' * (protocol.MAX_REQUESTS + 5))
        replies = self.replies(transport)
        self.assertEqual(len(replies), protocol.MAX_REQUESTS + 1)
        self.assertEqual(replies[-1]["error"], "too-many")
        self.assertTrue(transport.disconnecting)

    def test_the_deadline(self):
        proto, transport = self.connect()
        self.clock.advance(protocol.DEADLINE - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.replies(transport)[-1]["error"], "deadline")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.factory.connections, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [d for d in self.clock.getDelayedCalls() if d.active()])

    def test_a_closed_connection_leaves_no_timer(self):
        before = len(self.clock.getDelayedCalls())
        proto, transport = self.connect()
        self.assertEqual(len(self.clock.getDelayedCalls()), before + 1)
        proto.connectionLost(None)
        self.assertEqual(len(self.clock.getDelayedCalls()), before)

    def test_connections_are_bounded(self):
        open_ = [self.connect() for _ in range(protocol.MAX_CONNECTIONS)]
        proto, transport = self.connect()
        self.assertEqual(self.replies(transport)[0]["error"], "too-many")
        proto.connectionLost(None)
        for p, _ in open_:
            p.connectionLost(None)
        self.assertEqual(self.factory.connections, 0)
        self.assertEqual(self.ask("bans"), [])

    def test_an_internal_error_costs_one_request(self):
        def broken(request):
            raise RuntimeError("a bug")

        self.admin._rooms = broken
        self.assertEqual(self.refused("rooms")[0], "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.ask("bans"), [])


class AccessTests(AdminFixture):
    def test_who_may_connect(self):
        access = Access(uid=1000, group=50)
        self.assertTrue(access.permits(Peer(1, 1000, 1000)))  # the daemon's own user
        self.assertTrue(access.permits(Peer(1, 0, 0)))  # root
        self.assertTrue(access.permits(Peer(1, 1001, 50)))  # the group, as primary
        self.assertTrue(access.permits(Peer(1, 1001, 100, frozenset({7, 50}))))  # or supplementary
        self.assertFalse(access.permits(Peer(1, 1001, 100, frozenset({7}))))
        self.assertFalse(access.permits(None))
        self.assertFalse(Access(uid=1000).permits(Peer(1, 1001, 50)))

    def test_a_stranger_is_refused_and_logged(self):
        self.create()
        self.peer = Peer(4242, 1001, 100)
        proto, transport = self.connect()
        (reply,) = self.replies(transport)
        self.assertEqual((reply["error"], reply["message"]),
                         ("forbidden", "uid 1001 may not use this daemon's admin socket"))
        self.assertTrue(transport.disconnecting)
        proto.dataReceived(protocol.encode_request("close", room="Lobby"))
        self.assertEqual(len(self.replies(transport)), 1)
        self.assertIn("lobby", self.service.rooms)
        self.assertEqual(self.actions(), ["ocm-admin: refused uid 1001 (pid 4242)"])

    def test_no_credentials_no_entry(self):
        self.peer = None
        proto, transport = self.connect()
        self.assertEqual(self.replies(transport)[0]["error"], "forbidden")

    def test_nothing_secret_is_logged(self):
        alice = self.create(password=None)
        token = alice.body["token"]
        self.join()
        for cmd, fields in (("members", {"room": "Lobby"}), ("kick", {"room": "Lobby", "name": "bob"}),
                            ("close", {"room": "Lobby"})):
            self.ask(cmd, **fields)
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(e) for e in self.logged)
        self.assertIn("kick room='Lobby' name='bob' done", text)
        self.assertNotIn(token, text)
        self.assertNotIn(alice.body["key"], text)


class SocketFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ocm-admin-")
        self.path = os.path.join(self.dir, "admin.sock")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_a_stale_socket_is_removed(self):
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.close()  # bound, never listening: what a killed daemon leaves
        clear_stale(self.path)
        self.assertFalse(os.path.exists(self.path))

    def test_a_live_socket_is_not(self):
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.listen(1)
        self.addCleanup(s.close)
        with self.assertRaises(SocketPathError) as cm:
            clear_stale(self.path)
        self.assertIn("in use", str(cm.exception))
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))

    def test_a_file_that_is_not_a_socket_is_not(self):
        with open(self.path, "w") as f:
            f.write("precious")
        with self.assertRaises(SocketPathError):
            clear_stale(self.path)
        os.symlink("/etc/passwd", self.path + "2")
        with self.assertRaises(SocketPathError):
            clear_stale(self.path + "2")
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious")

    def test_path_length_and_endpoint(self):
        check_path("/var/lib/ocm/admin.sock")
        with self.assertRaises(SocketPathError):
            check_path("/" + "x" * 107)
        self.assertEqual(endpoint_string("/a:b/admin.sock"), r"unix:/a\:b/admin.sock:mode=600:lockfile=0")
