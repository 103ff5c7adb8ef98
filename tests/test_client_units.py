"""
The client's pure parts: what it prints for each event and status, how it
cleans what peers send, and the known-servers file behind certificate pinning.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from twisted.trial import unittest

from ocm.server import tls
from ocm.client import display
from ocm.client.errors import UsageError
from ocm.client.trust import (
    CATrust,
    CertificateChanged,
    KnownServers,
    PinnedTrust,
    default_known_servers,
    server_key,
)
from ocm.wire.datagram import Event, EventKind
from ocm.wire.tcrp import Op, Status


class SanitizeTests(unittest.TestCase):
    def test_plain_text_unchanged(self) -> None:
        for text in ("hi", "héllo wörld", "日本語", "👩\u200d💻 at work", "a  b"):
            self.assertEqual(display.sanitize(text), text)

    def test_terminal_escapes_neutralised(self) -> None:
        hostile = "\x1b[2J\x1b]0;pwned\x07\x9b31mred\rfake\nline\u202etxt.exe"
        cleaned = display.sanitize(hostile)
        for ch in "\x1b\x07\x9b\r\n\u202e":
            self.assertNotIn(ch, cleaned)
        self.assertIn("pwned", cleaned)
        self.assertEqual(cleaned.count(display.REPLACEMENT), 7)

    def test_tab_becomes_space(self) -> None:
        self.assertEqual(display.sanitize("a\tb"), "a b")


class EventLineTests(unittest.TestCase):
    def event(self, kind: int, name: str = "bob", text: str = "", seq: int = 0, ms: int = 0) -> Event:
        return Event(kind, seq, ms, name, text)

    def test_message_in_local_time(self) -> None:
        ms = 1_700_000_000_123
        expected = time.strftime("%H:%M:%S", time.localtime(ms / 1000))
        line = display.event_line(self.event(EventKind.MESSAGE, "alice", "hi", 1, ms))
        self.assertEqual(line, f"[{expected}] alice: hi")

    def test_membership_events(self) -> None:
        self.assertEqual(display.event_line(self.event(EventKind.JOINED)), "* bob joined")
        self.assertEqual(display.event_line(self.event(EventKind.LEFT)), "* bob left")
        self.assertEqual(display.event_line(self.event(EventKind.TIMED_OUT, "carol")), "* carol timed out")

    def test_closed_with_and_without_reason(self) -> None:
        closed = self.event(EventKind.CLOSED, "alice", "the host left")
        self.assertEqual(display.event_line(closed), "* room closed: the host left")
        bare = self.event(EventKind.CLOSED, "alice")
        self.assertEqual(display.event_line(bare), "* room closed: no reason given")

    def test_moderation_says_who_did_it(self) -> None:
        kicked = self.event(EventKind.KICKED, "bob", "spam")
        self.assertEqual(display.event_line(kicked), "* bob was removed by the host: spam")
        by_operator = self.event(EventKind.BANNED, "bob", "the server's operator: abuse")
        self.assertEqual(display.event_line(by_operator), "* bob was banned by the server's operator: abuse")
        self.assertEqual(display.removed_line(self.event(EventKind.KICKED, "bob", "the server's operator"), "Lobby"),
                         "You were removed from room 'Lobby' by the server's operator; you may join it again.")

    def test_unknown_kind_shows_nothing(self) -> None:
        self.assertIsNone(display.event_line(self.event(0x42)))

    def test_hostile_name_and_text_cleaned(self) -> None:
        line = display.event_line(self.event(EventKind.MESSAGE, "ev\x1bil", "\x1b[1Ahi", 1))
        self.assertNotIn("\x1b", line)

    def test_lost(self) -> None:
        self.assertEqual(display.lost_line(1), "* 1 message lost")
        self.assertEqual(display.lost_line(3), "* 3 messages lost")


class StatusSentenceTests(unittest.TestCase):
    def sentence(self, status: int, op: int = Op.JOIN_ROOM, password: bool = True, message: str = "x") -> str:
        return display.status_sentence(status, message, op, "Lobby", "bob", password)

    def test_every_status(self) -> None:
        self.assertEqual(self.sentence(Status.UNAUTHORIZED), "Wrong password for room 'Lobby'.")
        self.assertEqual(self.sentence(Status.UNAUTHORIZED, password=False), "Room 'Lobby' needs a password.")
        self.assertEqual(self.sentence(Status.NOT_FOUND), "Room 'Lobby' does not exist.")
        self.assertEqual(self.sentence(Status.CONFLICT, Op.CREATE_ROOM), "Room 'Lobby' already exists.")
        self.assertEqual(self.sentence(Status.CONFLICT), "The name 'bob' is already taken in room 'Lobby'.")
        self.assertEqual(
            self.sentence(Status.BAD_REQUEST, message="username is empty"),
            "The server refused the request as malformed: username is empty.",
        )
        self.assertIn("too large", self.sentence(Status.TOO_LARGE))
        self.assertIn("try again later", self.sentence(Status.TOO_MANY))
        self.assertEqual(self.sentence(Status.UNAVAILABLE), "Room 'Lobby' is full.")
        self.assertIn("cannot hold any more rooms", self.sentence(Status.UNAVAILABLE, Op.CREATE_ROOM))
        self.assertEqual(
            self.sentence(418, message="teapot"),
            "The server refused the request with status 418: teapot.",
        )

    def test_server_message_cleaned(self) -> None:
        self.assertNotIn("\x1b", self.sentence(Status.BAD_REQUEST, message="\x1b[2Jbad"))


class RoomsLinesTests(unittest.TestCase):
    def test_listing(self) -> None:
        lines = display.rooms_lines([
            {"name": "ops", "members": 1, "password": True},
            {"name": "Lobby", "members": 3, "password": False},
            "junk",
        ])
        self.assertEqual(lines, ["Rooms (2):", "  Lobby (3 members)", "  ops (1 member, password)"])

    def test_empty(self) -> None:
        self.assertEqual(display.rooms_lines([]), ["No rooms on this server yet."])


class KnownServersTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "deep" / "known_servers"
        self.known = KnownServers(self.path)

    def test_missing_file_knows_nothing(self) -> None:
        self.assertIsNone(self.known.lookup("127.0.0.1:9001"))

    def test_remember_then_replace(self) -> None:
        self.known.remember("127.0.0.1:9001", "AA:BB")
        self.known.remember("example.org:9001", "CC:DD")
        self.known.remember("127.0.0.1:9001", "EE:FF")
        self.assertEqual(self.known.lookup("127.0.0.1:9001"), "EE:FF")
        self.assertEqual(self.known.lookup("example.org:9001"), "CC:DD")
        lines = [l for l in self.path.read_text().splitlines() if not l.startswith("#")]
        self.assertEqual(lines, ["example.org:9001 SHA256:CC:DD", "127.0.0.1:9001 SHA256:EE:FF"])

    def test_keys(self) -> None:
        self.assertEqual(server_key("Example.ORG", 9001), "example.org:9001")
        self.assertEqual(server_key("::1", 9001), "[::1]:9001")

    def test_default_under_xdg_config_home(self) -> None:
        self.patch(os, "environ", {"XDG_CONFIG_HOME": "/cfg", "HOME": "/home/x"})
        self.assertEqual(default_known_servers(), Path("/cfg/ocm/known_servers"))


class PinnedTrustTests(unittest.TestCase):
    def setUp(self) -> None:
        self.notices: list[str] = []
        self.path = Path(self.mktemp())
        self.trust = PinnedTrust(KnownServers(self.path), self.notices.append)
        self.der = b"certificate one"
        self.fp = tls.fingerprint(self.der)

    def test_first_use_pins_and_says_so(self) -> None:
        self.trust.verify("127.0.0.1", 9001, self.der)
        self.assertIn(f"127.0.0.1:9001 SHA256:{self.fp}", self.path.read_text())
        self.assertEqual(len(self.notices), 1)
        self.assertIn(f"SHA256:{self.fp}", self.notices[0])

    def test_same_certificate_later_is_silent(self) -> None:
        self.trust.verify("127.0.0.1", 9001, self.der)
        again = PinnedTrust(KnownServers(self.path), self.notices.append)
        again.verify("127.0.0.1", 9001, self.der)
        self.assertEqual(len(self.notices), 1)

    def test_changed_certificate_refused(self) -> None:
        self.trust.verify("127.0.0.1", 9001, self.der)
        e = self.assertRaises(CertificateChanged, self.trust.verify, "127.0.0.1", 9001, b"certificate two")
        self.assertIn(self.fp, e.sentence)
        self.assertIn(tls.fingerprint(b"certificate two"), e.sentence)
        self.assertIn("--accept-new-cert", e.sentence)
        self.assertIn(str(self.path), e.sentence)
        self.assertIn(self.fp, self.path.read_text())

    def test_pins_are_per_port(self) -> None:
        self.trust.verify("127.0.0.1", 9001, self.der)
        self.trust.verify("127.0.0.1", 9003, b"certificate two")
        self.assertEqual(len(self.notices), 2)

    def test_accept_new(self) -> None:
        self.trust.verify("127.0.0.1", 9001, self.der)
        PinnedTrust(KnownServers(self.path), self.notices.append, accept_new=True).verify(
            "127.0.0.1", 9001, b"certificate two"
        )
        self.assertIn(tls.fingerprint(b"certificate two"), self.path.read_text())
        self.assertNotIn(self.fp, self.path.read_text())


class CATrustTests(unittest.TestCase):
    def test_missing_file(self) -> None:
        e = self.assertRaises(UsageError, CATrust, "/nonexistent/ca.pem")
        self.assertIn("--ca", e.sentence)

    def test_not_a_certificate(self) -> None:
        path = Path(self.mktemp())
        path.write_text("hello\n")
        e = self.assertRaises(UsageError, CATrust, str(path))
        self.assertIn("no PEM certificate", e.sentence)

    def test_loads_a_chain(self) -> None:
        path = Path(self.mktemp())
        path.write_bytes(tls.make_self_signed("a")[0] + tls.make_self_signed("b")[0])
        CATrust(str(path))
