"""
The WebSocket binding's codec (pure), the Origin rule, the client address
behind a proxy, and the --web options.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import TestCase

from ocm.server.desk import FrontDesk
from ocm.server.rooms import RoomService
from ocm.wire.datagram import Event, EventKind
from ocm.server.tap import Options
from ocm.wire.tcrp import Op, ProtocolError
from ocm.wire import binding
from ocm.web.chat import WebChatFactory


class ParseTests(TestCase):
    def parse(self, frame):
        return binding.parse_frame(frame if isinstance(frame, str) else json.dumps(frame))

    def refused(self, frame, status=400):
        with self.assertRaises(ProtocolError) as caught:
            self.parse(frame)
        self.assertEqual(caught.exception.status, status, frame)
        return caught.exception.message

    def test_room_requests(self):
        self.assertEqual(self.parse({"op": "list"}), binding.RoomRequest(Op.LIST_ROOMS))
        self.assertEqual(
            self.parse({"op": "create", "room": "Lobby", "username": "ann", "password": "pw"}),
            binding.RoomRequest(Op.CREATE_ROOM, "Lobby", "ann", "pw"),
        )
        for password in (None, ""):
            self.assertEqual(
                self.parse({"op": "join", "room": "Lobby", "username": "ann", "password": password}),
                binding.RoomRequest(Op.JOIN_ROOM, "Lobby", "ann", ""),
            )

    def test_member_frames(self):
        self.assertEqual(self.parse({"op": "send", "id": 7, "text": "hi"}), binding.Say(7, "hi"))
        self.assertEqual(self.parse({"op": "send", "id": 1, "text": "é" * 1536}).text, "é" * 1536)
        self.assertEqual(self.parse({"op": "history", "first": 2, "last": 9}), binding.History(2, 9))
        self.assertEqual(self.parse({"op": "leave"}), binding.Leave())

    def test_names_follow_the_protocols_rules(self):
        self.assertIn("white space", self.refused({"op": "create", "room": "Lobby ", "username": "a"}))
        self.assertIn("control character", self.refused({"op": "join", "room": "L", "username": "a\u202eb"}))
        self.assertIn("255", self.refused({"op": "join", "room": "x" * 256, "username": "a"}))
        self.assertIn("username", self.refused({"op": "join", "room": "L"}))
        self.assertIn("password", self.refused({"op": "join", "room": "L", "username": "a", "password": 5}))
        self.assertIn("1024", self.refused({"op": "join", "room": "L", "username": "a", "password": "p" * 1025}))

    def test_malformed(self):
        for frame in ("", "nope", "[]", "1", '"list"', json.dumps({}), json.dumps({"op": 3}),
                      json.dumps({"op": "dance"}), "[" * 100_000):
            self.refused(frame)
        for bad in ({"id": 0}, {"id": -1}, {"id": 2**32}, {"id": True}, {"id": 1.5}, {"id": "1"}):
            self.refused({"op": "send", "text": "x", **bad})
        self.refused({"op": "send", "id": 1, "text": ""})
        self.refused({"op": "send", "id": 1})
        self.refused({"op": "history", "first": 3, "last": 2})
        self.refused({"op": "history", "first": 0, "last": 2})
        self.refused({"op": "history", "first": 1, "last": 2**64})

    def test_lone_surrogates_are_refused_not_crashed_on(self):
        self.assertIn("surrogate", self.refused('{"op": "send", "id": 1, "text": "\\ud800"}'))
        self.refused('{"op": "create", "room": "\\udfff", "username": "a"}')

    def test_text_over_the_datagram_limit_is_413(self):
        self.assertIn("3072", self.refused({"op": "send", "id": 1, "text": "é" * 1537}, 413))

    def test_version_12_is_asked_for_in_the_room_request(self):
        self.assertEqual(
            self.parse({"op": "join", "room": "L", "username": "a", "version": "1.2"}),
            binding.RoomRequest(Op.JOIN_ROOM, "L", "a", "", "1.2"),
        )
        self.assertEqual(self.parse({"op": "create", "room": "L", "username": "a"}).version, "1.1")
        for bad in ("2.0", 1.2, None, ["1.2"]):
            self.assertIn("version", self.refused({"op": "join", "room": "L", "username": "a", "version": bad}))

    def test_command_frames_become_commands_json(self):
        order = self.parse({"op": "command", "id": 4, "command": "kick", "name": "bob", "reason": "spam"})
        self.assertEqual(order.msg_id, 4)
        self.assertEqual(order.refused, "")
        self.assertEqual(json.loads(order.body), {"op": "kick", "name": "bob", "reason": "spam"})
        self.assertEqual(json.loads(self.parse({"op": "command", "id": 5, "command": "host", "name": "é"}).body),
                         {"op": "host", "name": "é"})

    def test_commands_breaking_commands_rules_are_refused_with_their_id(self):
        # As the datagram's: answered REFUSED (the page can tell which), not dropped.
        for frame, why in (
            ({"command": "dance", "name": "bob"}, "unknown command"),
            ({"command": "kick"}, "names no member"),
            ({"command": "kick", "name": ""}, "names no member"),
            ({"command": "kick", "name": "b" * 256}, "names no member"),
            ({"command": "kick", "name": "bob", "reason": "r" * 201}, "200 bytes"),
            ({"command": "kick", "name": "bob", "reason": "a\nb"}, "control characters"),
            ({"command": "kick", "name": "bob", "reason": 5}, "not a string"),
            ({"command": "kick", "name": "x" * 200, "reason": ["y" * 300] * 4}, "1024"),
            ({"command": "kick", "name": "\ud800"}, "Unicode"),
        ):
            order = self.parse({"op": "command", "id": 9, **frame})
            self.assertEqual(order.msg_id, 9)
            self.assertIn(why, order.refused, frame)
            self.assertEqual(order.body, b"")

    def test_a_command_without_a_valid_id_is_malformed(self):
        for bad in ({}, {"id": 0}, {"id": 2**32}, {"id": "3"}, {"id": False}):
            self.assertIn("id", self.refused({"op": "command", "command": "kick", "name": "bob", **bad}))


class EncodeTests(TestCase):
    def test_response_and_complete(self):
        self.assertEqual(
            json.loads(binding.encode_response(Op.JOIN_ROOM, "Lobby", 429, "slow down", retry_after=3)),
            {"type": "response", "op": "join", "room": "Lobby", "status": 429, "message": "slow down", "retry_after": 3},
        )
        body = {"token": "t", "key": "k", "udp_port": 9002, "host": False, "members": ["a"], "seq": 4}
        self.assertEqual(
            json.loads(binding.encode_complete(Op.JOIN_ROOM, "Lobby", body)),
            {"type": "complete", "op": "join", "room": "Lobby", "host": False, "members": ["a"], "seq": 4},
        )

    def test_error_carries_retry_after(self):
        error = ProtocolError(429, "wait", retry_after=0.2)
        self.assertEqual(json.loads(binding.encode_error(error)),
                         {"type": "error", "status": 429, "message": "wait", "retry_after": 1})

    def test_events(self):
        def encoded(*args, **kw):
            return json.loads(binding.encode_event(Event(*args, **kw)))

        self.assertEqual(encoded(EventKind.MESSAGE, 5, 1000, "bob", "<b>hi</b>"),
                         {"type": "event", "kind": "message", "seq": 5, "time": 1000, "name": "bob", "text": "<b>hi</b>"})
        self.assertEqual(encoded(EventKind.ECHO, 6, 1001, "ann", "", 3),
                         {"type": "event", "kind": "echo", "seq": 6, "time": 1001, "name": "ann", "id": 3})
        self.assertEqual(encoded(EventKind.EXPIRED, 2, 1002, "", ""),
                         {"type": "event", "kind": "expired", "seq": 2, "time": 1002})
        for kind, name in ((EventKind.JOINED, "joined"), (EventKind.LEFT, "left"),
                           (EventKind.TIMED_OUT, "timed_out"), (EventKind.CLOSED, "closed"),
                           (EventKind.HISTORY, "history")):
            self.assertEqual(encoded(kind, 0, 1, "x", "")["kind"], name)
        self.assertIsNone(binding.encode_event(Event(0x7F, 0, 0, "", "")))
        self.assertIsNone(binding.encode_event(Event(EventKind.PONG, 3, 0, "", "")))

    def test_events_of_12(self):
        def encoded(*args, **kw):
            return json.loads(binding.encode_event(Event(*args, **kw)))

        for kind, name in ((EventKind.KICKED, "kicked"), (EventKind.BANNED, "banned"),
                           (EventKind.UNBANNED, "unbanned"), (EventKind.MUTED, "muted"),
                           (EventKind.UNMUTED, "unmuted"), (EventKind.HOST, "host")):
            self.assertEqual(encoded(kind, 7, 5, "bob", "spam"),
                             {"type": "event", "kind": name, "seq": 7, "time": 5, "name": "bob", "text": "spam"})
        self.assertEqual(encoded(EventKind.REFUSED, 0, 5, "ann", "only the host may kick", 12),
                         {"type": "event", "kind": "refused", "seq": 0, "time": 5, "name": "ann",
                          "id": 12, "text": "only the host may kick"})
        self.assertEqual(encoded(EventKind.RESTARTING, 40, 5, "", "the server is restarting"),
                         {"type": "event", "kind": "restarting", "seq": 40, "time": 5, "name": "",
                          "text": "the server is restarting"})
        # Resent by history: its own kind and seq, marked.
        self.assertEqual(encoded(EventKind.MESSAGE, 3, 5, "bob", "hi", resent=True),
                         {"type": "event", "kind": "message", "seq": 3, "time": 5, "name": "bob",
                          "text": "hi", "resent": True})
        self.assertTrue(encoded(EventKind.KICKED, 4, 5, "eve", "", resent=True)["resent"])
        self.assertNotIn("resent", encoded(EventKind.MESSAGE, 3, 5, "bob", "hi"))
        self.assertEqual(json.loads(binding.refused_event(3, "ann", "why", 9)),
                         {"type": "event", "kind": "refused", "seq": 0, "time": 9, "name": "ann", "id": 3, "text": "why"})

    def test_text_is_json_escaped_never_raw(self):
        frame = binding.encode_event(Event(EventKind.MESSAGE, 1, 1, "a", '"}\n</script>\u2028'))
        self.assertEqual(json.loads(frame)["text"], '"}\n</script>\u2028')
        self.assertNotIn("\n", frame)


class ClientAddressTests(TestCase):
    def factory(self, behind_proxy):
        desk = FrontDesk(RoomService(Clock()), Clock())
        return WebChatFactory(desk, desk.door("web", 10, 10), behind_proxy=behind_proxy)

    def test_forwarded_for_only_behind_a_local_proxy(self):
        direct, proxied = self.factory(False), self.factory(True)
        self.assertEqual(direct.client_ip("203.0.113.9", "198.51.100.1"), "203.0.113.9")
        self.assertEqual(proxied.client_ip("127.0.0.1", "10.9.9.9, 198.51.100.1"), "198.51.100.1")
        self.assertEqual(proxied.client_ip("::ffff:127.0.0.1", "198.51.100.1"), "198.51.100.1")
        self.assertEqual(proxied.client_ip("127.0.0.1", "not an address"), "127.0.0.1")
        self.assertEqual(proxied.client_ip("203.0.113.9", "198.51.100.1"), "203.0.113.9")


class PingTests(TestCase):
    def test_pongs_come_well_within_the_timeout(self):
        # autobahn sends the next ping an interval after the last pong, on a
        # timer of 0.2 s buckets: even at the shortest --timeout (0.5 s) two
        # pongs must come closer together than the timeout, with room for a
        # round trip, or the sweep removes a browser that is answering.
        for timeout in (0.5, 1.0, 60.0):
            desk = FrontDesk(RoomService(Clock(), timeout=timeout), Clock())
            factory = WebChatFactory(desk, desk.door("web", 10, 10))
            self.assertLess(factory.autoPingInterval + 0.2, timeout * 0.8, timeout)


class WebOptionsTests(TestCase):
    def parse(self, *args):
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_off_by_default(self):
        self.assertIsNone(self.parse()["web"])

    def test_a_bare_port(self):
        self.assertEqual(self.parse("--web", "8443")["web-endpoint"], "tcp:8443")
        self.assertEqual(self.parse("--web", "8443", "--interface", "10.0.0.5")["web-endpoint"],
                         "tcp:8443:interface=10.0.0.5")
        # Plain HTTP on a bare port stays on loopback.
        self.assertEqual(self.parse("--web", "8080", "--web-no-tls")["web-endpoint"],
                         "tcp:8080:interface=127.0.0.1")

    def test_plain_http_only_locally(self):
        for endpoint in ("tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp6:8080:interface=\\:\\:"):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--web", endpoint, "--web-no-tls")
            self.assertIn("--web-no-tls", str(caught.exception))
        self.parse("--web", "tcp:8080:interface=127.0.0.1", "--web-no-tls")
        self.parse("--web", "tcp6:8080:interface=\\:\\:1", "--web-no-tls")
        self.parse("--web", "unix:/run/ocm/web.sock", "--web-no-tls")

    def test_bad_values_name_the_option(self):
        for args, option in ((["--web", "99999"], "--web"), (["--web", "nonsense:1"], "--web"),
                             (["--web-no-tls"], "--web-no-tls"),
                             (["--web-origin", "chat.example.org"], "--web-origin"),
                             (["--web-origin", "https://x.example/path"], "--web-origin"),
                             (["--web-max-connections", "0"], "--web-max-connections")):
            with self.assertRaises(usage.UsageError, msg=args) as caught:
                self.parse(*args)
            self.assertIn(option, str(caught.exception))

    def test_origins_normalised(self):
        self.assertEqual(
            self.parse("--web-origin", "https://Chat.Example.org:443, http://x.example:8080")["web-origin-set"],
            frozenset({"https://chat.example.org", "http://x.example:8080"}),
        )

    def test_web_tls_needs_a_certificate_even_with_plain_tcrp(self):
        o = self.parse("--no-tls", "--web", "8443", "--tls-cert", __file__, "--tls-key", __file__)
        self.assertTrue(o["no-tls"])
        with self.assertRaises(usage.UsageError):
            self.parse("--no-tls", "--tls-cert", __file__, "--tls-key", __file__)
