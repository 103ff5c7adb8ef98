"""
TCRP against the daemon the plugin builds, over real loopback sockets and
TLS with the generated certificate, spoken by the independent client in
L{tests.wire} (PROTOCOL §1 and §5).
"""

from __future__ import annotations

import base64
import json
import os
import stat

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests import wire
from tests.daemon import DaemonMixin
from tests.wire import COMPLETE, CREATE_ROOM, JOIN_ROOM, LIST_ROOMS, REQUEST, RESPONSE


class StatusTests(DaemonMixin, TestCase):
    timeout = 30

    def setUp(self) -> None:
        # Many requests from one address: the request rate is not what is
        # tested here (test_integration_limits is about it).
        self.start_daemon("--max-payload", "1024", "--request-rate", "0")

    async def refused(
        self, data: bytes | list[bytes], status: int, op: int, room: bytes = b""
    ) -> str:
        """
        The server answers C{data} with one RESPONSE frame carrying
        C{status}, echoing C{op} and C{room}, then closes. Returns its message.
        """
        frames = (await self.tcrp(data)).frames
        self.assertEqual(len(frames), 1, f"expected one RESPONSE, got {frames}")
        (f,) = frames
        self.assertEqual((f.op, f.state, f.room), (op, RESPONSE, room))
        self.assertEqual(f.body["status"], status, f.body)
        self.assertIsInstance(f.body["message"], str)
        self.assertTrue(f.body["message"])
        return f.body["message"]

    async def test_create_body(self) -> None:
        frames = (await self.tcrp(wire.request(CREATE_ROOM, "Lobby", {"username": "alice"}))).frames
        self.assertEqual(len(frames), 2)
        response, complete = frames
        self.assertEqual((response.op, response.state, response.room), (CREATE_ROOM, RESPONSE, b"Lobby"))
        self.assertEqual(response.body["status"], 200)
        self.assertIsInstance(response.body["message"], str)
        self.assertEqual((complete.op, complete.state, complete.room), (CREATE_ROOM, COMPLETE, b"Lobby"))
        body = complete.body
        self.assertLessEqual({"token", "key", "udp_port", "host", "members", "timeout"}, set(body))
        token = body["token"]
        self.assertIsInstance(token, str)
        self.assertRegex(token, r"^[0-9a-f]+$")
        self.assertGreaterEqual(len(token), 32)  # 128 bits
        self.assertLessEqual(len(token), 255)
        self.assertEqual(len(base64.b64decode(body["key"], validate=True)), 32)
        self.assertIs(type(body["udp_port"]), int)
        self.assertEqual(body["udp_port"], self.svc.rooms.udp_port)
        self.assertIs(body["host"], True)
        self.assertEqual(body["members"], ["alice"])
        self.assertIn(type(body["timeout"]), (int, float))
        self.assertEqual(body["timeout"], 60)

    async def test_join_body(self) -> None:
        _, alice = await self.ask(CREATE_ROOM, "Lobby", {"username": "alice"})
        frames = (await self.tcrp(wire.request(JOIN_ROOM, "Lobby", {"username": "bob"}))).frames
        self.assertEqual([(f.op, f.state, f.room) for f in frames],
                         [(JOIN_ROOM, RESPONSE, b"Lobby"), (JOIN_ROOM, COMPLETE, b"Lobby")])
        self.assertEqual(frames[0].body["status"], 200)
        bob = frames[1].body
        self.assertIs(bob["host"], False)
        self.assertEqual(sorted(bob["members"]), ["alice", "bob"])
        self.assertEqual(bob["udp_port"], alice["udp_port"])
        self.assertNotEqual(bob["token"], alice["token"])
        self.assertNotEqual(bob["key"], alice["key"])

    async def test_list(self) -> None:
        frames = (await self.tcrp(wire.request(LIST_ROOMS, b"", {}))).frames
        self.assertEqual([(f.op, f.state, f.room) for f in frames],
                         [(LIST_ROOMS, RESPONSE, b""), (LIST_ROOMS, COMPLETE, b"")])
        self.assertEqual(frames[1].body, {"rooms": []})
        await self.ask(CREATE_ROOM, "Lobby", {"username": "alice"})
        await self.ask(CREATE_ROOM, "Vault", {"username": "carol", "password": "s3cret"})
        await self.ask(JOIN_ROOM, "Vault", {"username": "dave", "password": "s3cret"})
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(status, 200)
        self.assertEqual(
            sorted(body["rooms"], key=lambda r: r["name"]),
            [{"name": "Lobby", "members": 1, "password": False},
             {"name": "Vault", "members": 2, "password": True}],
        )

    async def test_longest_names(self) -> None:
        """255 bytes is allowed for both names, counted in bytes, not characters."""
        room, user = "r" * 255, "é" * 127 + "u"
        status, body = await self.ask(CREATE_ROOM, room, {"username": user})
        self.assertEqual(status, 200)
        self.assertEqual(body["members"], [user])

    async def test_bad_header(self) -> None:
        body = json.dumps({"username": "alice"}).encode()
        await self.refused(wire.frame(9, REQUEST, b"Lobby", body), 400, 9, b"Lobby")
        await self.refused(wire.frame(0, REQUEST, b"Lobby", body), 400, 0, b"Lobby")
        await self.refused(wire.frame(CREATE_ROOM, RESPONSE, b"Lobby", body), 400, CREATE_ROOM, b"Lobby")
        await self.refused(wire.frame(JOIN_ROOM, 7, b"Lobby", body), 400, JOIN_ROOM, b"Lobby")

    async def test_bad_payload(self) -> None:
        for payload in (b"{not json", b'["alice"]', b'"alice"', b"", b'{"username": "al\xffice"}'):
            await self.refused(wire.request(CREATE_ROOM, "Lobby", payload), 400, CREATE_ROOM, b"Lobby")
        await self.refused(wire.request(LIST_ROOMS, b"", b"nope"), 400, LIST_ROOMS)

    async def test_bad_names(self) -> None:
        await self.refused(wire.request(CREATE_ROOM, b"caf\xc3", {"username": "alice"}),
                           400, CREATE_ROOM, b"caf\xc3")
        await self.refused(wire.request(CREATE_ROOM, b"", {"username": "alice"}), 400, CREATE_ROOM)
        for room in ("Lob\x07by", " Lobby", "Lobby\n", "Lob\u202eby"):
            await self.refused(wire.request(CREATE_ROOM, room, {"username": "alice"}),
                               400, CREATE_ROOM, room.encode())
        for body in (
            {},
            {"password": "x"},
            {"username": None},
            {"username": 7},
            {"username": ""},
            {"username": "al\x00ice"},
            {"username": " alice"},
            {"username": "alice\t"},
            {"username": "a" * 256},
            {"username": "é" * 128},  # 128 characters, 256 bytes
            {"username": "alice", "password": 1234},
        ):
            await self.refused(wire.request(JOIN_ROOM, "Lobby", body), 400, JOIN_ROOM, b"Lobby")
        # A room name on LIST_ROOMS is a malformed request too.
        await self.refused(wire.request(LIST_ROOMS, "Lobby", {}), 400, LIST_ROOMS, b"Lobby")

    async def test_password(self) -> None:
        self.assertEqual((await self.ask(CREATE_ROOM, "Vault", {"username": "alice", "password": "s3cret"}))[0], 200)
        for body in ({"username": "bob"}, {"username": "bob", "password": ""},
                     {"username": "bob", "password": "S3CRET"}, {"username": "bob", "password": "s3cret "}):
            await self.refused(wire.request(JOIN_ROOM, "Vault", body), 401, JOIN_ROOM, b"Vault")
        status, body = await self.ask(JOIN_ROOM, "vault", {"username": "bob", "password": "s3cret"})
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body["members"]), ["alice", "bob"])

    async def test_password_to_open_room_ignored(self) -> None:
        # An empty password makes an open room, as an absent one does.
        await self.ask(CREATE_ROOM, "Lobby", {"username": "alice", "password": ""})
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(body["rooms"], [{"name": "Lobby", "members": 1, "password": False}])
        status, body = await self.ask(JOIN_ROOM, "Lobby", {"username": "bob", "password": "whatever"})
        self.assertEqual(status, 200)
        self.assertEqual(sorted(body["members"]), ["alice", "bob"])

    async def test_not_found(self) -> None:
        await self.refused(wire.request(JOIN_ROOM, "Nowhere", {"username": "bob"}), 404, JOIN_ROOM, b"Nowhere")

    async def test_conflicts_are_case_insensitive(self) -> None:
        await self.ask(CREATE_ROOM, "Lobby", {"username": "alice"})
        await self.refused(wire.request(CREATE_ROOM, "LOBBY", {"username": "zed"}), 409, CREATE_ROOM, b"LOBBY")
        await self.refused(wire.request(JOIN_ROOM, "lobby", {"username": "ALICE"}), 409, JOIN_ROOM, b"lobby")
        # str.casefold, not str.lower: ß and SS are one name.
        await self.ask(CREATE_ROOM, "Straße", {"username": "alice"})
        await self.refused(wire.request(CREATE_ROOM, "STRASSE", {"username": "x"}), 409, CREATE_ROOM, b"STRASSE")
        # Names keep the spelling they were created with.
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(sorted(r["name"] for r in body["rooms"]), ["Lobby", "Straße"])

    async def test_too_large_answered_before_body(self) -> None:
        """413 comes back although the declared body is never sent."""
        head = wire.frame(CREATE_ROOM, REQUEST, b"Lobby", b"", size=1025)
        await self.refused(head, 413, CREATE_ROOM, b"Lobby")
        huge = wire.frame(JOIN_ROOM, REQUEST, b"Lobby", b"", size=(1 << 232) - 1)
        await self.refused(huge, 413, JOIN_ROOM, b"Lobby")
        # The limit itself is allowed.
        payload = json.dumps({"username": "alice"}).encode()
        payload += b" " * (1024 - len(payload))
        self.assertEqual(wire.answer(await self.tcrp(wire.request(CREATE_ROOM, "Lobby", payload)))[0], 200)

    async def test_one_byte_at_a_time(self) -> None:
        data = wire.request(CREATE_ROOM, "Lobby", {"username": "alice", "password": "pw"})
        exchange = await self.tcrp([data[i : i + 1] for i in range(len(data))], gap=0.001)
        status, body = wire.answer(exchange)
        self.assertEqual(status, 200)
        self.assertEqual(body["members"], ["alice"])
        self.assertEqual(exchange.frames[1].room, b"Lobby")

    async def test_one_request_per_connection(self) -> None:
        """A second request on the same connection is not answered."""
        first = wire.request(CREATE_ROOM, "Lobby", {"username": "alice"})
        second = wire.request(CREATE_ROOM, "Other", {"username": "bob"})
        frames = (await self.tcrp(first + second)).frames
        self.assertEqual([(f.state, f.room) for f in frames], [(RESPONSE, b"Lobby"), (COMPLETE, b"Lobby")])
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual([r["name"] for r in body["rooms"]], ["Lobby"])

    async def test_refused_request_in_pieces(self) -> None:
        data = wire.request(JOIN_ROOM, "Nowhere", {"username": "bob"})
        frames = (await self.tcrp([data[:3], data[3:33], data[33:]], gap=0.01)).frames
        self.assertEqual([(f.op, f.room, f.body["status"]) for f in frames], [(JOIN_ROOM, b"Nowhere", 404)])


class CapacityTests(DaemonMixin, TestCase):
    timeout = 30

    async def test_max_rooms(self) -> None:
        self.start_daemon("--max-rooms", "1")
        self.assertEqual((await self.ask(CREATE_ROOM, "One", {"username": "alice"}))[0], 200)
        frames = (await self.tcrp(wire.request(CREATE_ROOM, "Two", {"username": "bob"}))).frames
        self.assertEqual([(f.op, f.state, f.room, f.body["status"]) for f in frames],
                         [(CREATE_ROOM, RESPONSE, b"Two", 503)])

    async def test_max_members(self) -> None:
        self.start_daemon("--max-members", "2")
        await self.ask(CREATE_ROOM, "Lobby", {"username": "alice"})
        self.assertEqual((await self.ask(JOIN_ROOM, "Lobby", {"username": "bob"}))[0], 200)
        frames = (await self.tcrp(wire.request(JOIN_ROOM, "Lobby", {"username": "carol"}))).frames
        self.assertEqual([(f.op, f.state, f.room, f.body["status"]) for f in frames],
                         [(JOIN_ROOM, RESPONSE, b"Lobby", 503)])


class DeadlineTests(DaemonMixin, TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.start_daemon("--request-timeout", "0.5")

    async def test_partial_request_dropped(self) -> None:
        data = wire.request(CREATE_ROOM, "Lobby", {"username": "alice"})
        exchange = await self.tcrp(data[:20])
        self.assertEqual(exchange.raw, b"")

    async def test_partial_body_dropped(self) -> None:
        data = wire.request(CREATE_ROOM, "Lobby", {"username": "alice"})
        exchange = await self.tcrp(data[:-1])
        self.assertEqual(exchange.raw, b"")
        # Nothing was created by the half request.
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(body, {"rooms": []})

    async def test_silent_connection_dropped(self) -> None:
        exchange = await self.tcrp([])
        self.assertEqual(exchange.raw, b"")

    async def test_plain_tcp_connection_dropped(self) -> None:
        """No TLS handshake at all: the deadline covers it too."""
        exchange = await wire.tcrp(reactor, self.svc.tcp_port, [], pin=None)
        self.assertEqual(exchange.raw, b"")


class TLSTests(DaemonMixin, TestCase):
    timeout = 30

    async def test_generated_certificate(self) -> None:
        """The pinned SHA-256 is the one of data-dir/server.pem; its key is private."""
        self.start_daemon()
        exchange = await self.tcrp(wire.request(LIST_ROOMS, b"", {}))
        self.assertEqual(exchange.peer_digest, self.pin)
        self.assertEqual(wire.answer(exchange)[0], 200)
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir / "server.key").st_mode), 0o600)

    async def test_certificate_reused(self) -> None:
        first = self.start_daemon()
        await first.stopService()
        pin, made = self.pin, (self.data_dir / "server.pem").read_bytes()
        self.start_daemon(data_dir=self.data_dir)
        self.assertEqual((self.data_dir / "server.pem").read_bytes(), made)
        self.assertEqual((await self.tcrp(wire.request(LIST_ROOMS, b"", {}))).peer_digest, pin)

    async def test_wrong_pin_sends_nothing(self) -> None:
        """The client refuses a certificate other than the pinned one."""
        self.start_daemon()
        with self.assertRaises(wire.PinMismatch):
            await wire.tcrp(reactor, self.svc.tcp_port, wire.request(LIST_ROOMS, b"", {}),
                            pin=bytes(32))
        self.assertEqual(self.svc.rooms.rooms, {})

    async def test_plain_request_to_tls_port(self) -> None:
        """A clear-text request gets no TCRP answer from a TLS daemon."""
        self.start_daemon()
        data = wire.request(CREATE_ROOM, "Lobby", {"username": "alice"})
        exchange = await wire.tcrp(reactor, self.svc.tcp_port, data, pin=None)
        self.assertFalse(exchange.raw.startswith(b"\x05\x01\x01"), exchange.raw)
        self.assertEqual(self.svc.rooms.rooms, {})

    async def test_no_tls(self) -> None:
        self.start_daemon("--no-tls")
        self.assertIsNone(self.pin)
        self.assertFalse((self.data_dir / "server.pem").exists())
        status, body = await self.ask(CREATE_ROOM, "Lobby", {"username": "alice"})
        self.assertEqual(status, 200)
        self.assertEqual(body["members"], ["alice"])


class StopTests(DaemonMixin, TestCase):
    async def test_stopped_daemon_refuses(self) -> None:
        svc = self.start_daemon()
        port = svc.tcp_port
        await svc.stopService()
        with self.assertRaises(ConnectionRefusedError):
            await wire.tcrp(reactor, port, wire.request(LIST_ROOMS, b"", {}), pin=self.pin)


class LogTests(DaemonMixin, TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.lines: list[str] = []

        def observe(event: dict) -> None:
            self.lines.append(f"{formatEvent(event)} {event!r}")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def test_fingerprint_logged(self) -> None:
        """A person can compare the certificate's SHA-256 with the log."""
        self.start_daemon()
        wanted = self.pin.hex().upper()
        self.assertTrue(
            any(wanted in line.replace(":", "").upper() for line in self.lines),
            "the certificate's SHA-256 fingerprint is not in the start-up log",
        )

    async def test_no_secrets_logged(self) -> None:
        """Passwords, tokens and keys never reach a log line (PROTOCOL §5)."""
        self.start_daemon()
        alice = await self.enter("Vault", "alice", "hunter2-secret", create=True)
        bob = await self.enter("Vault", "bob", "hunter2-secret")
        await self.ask(JOIN_ROOM, "Vault", {"username": "eve", "password": "wrong-guess-42"})
        bob.chat("hi")
        await alice.event()  # JOINED
        await alice.event()  # MESSAGE
        bob.leave()
        await alice.event()  # LEFT
        await self.svc.stopService()
        await alice.event()  # CLOSED
        secrets = ["hunter2-secret", "wrong-guess-42"]
        for m in (alice, bob):
            secrets += [m.body["token"], m.body["key"], m.key.hex()]
        self.assertTrue(self.lines)
        for line in self.lines:
            for secret in secrets:
                self.assertNotIn(secret, line)
