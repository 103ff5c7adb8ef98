"""ocm.admin.protocol: the admin socket's requests and replies, pure."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from ocm.admin.protocol import (
    COMMANDS,
    MAX_LINE,
    AdminError,
    Request,
    encode_refusal,
    encode_request,
    encode_result,
    format_duration,
    parse_duration,
    parse_reply,
    parse_request,
)


class RequestTests(SynchronousTestCase):
    def refused(self, line: bytes) -> AdminError:
        with self.assertRaises(AdminError) as cm:
            parse_request(line)
        return cm.exception

    def test_every_command_round_trips_from_the_clients_encoder(self):
        fields = {"room": "Lobby", "name": "bob", "reason": "spam", "address": "127.0.0.2", "duration": "10m"}
        for cmd, (required, optional) in COMMANDS.items():
            line = encode_request(cmd, **{f: fields[f] for f in (*required, *optional)})
            self.assertTrue(line.endswith(b"\n"))
            request = parse_request(line.rstrip(b"\n"))
            self.assertEqual(request.cmd, cmd)
            for f in (*required, *optional):
                if f == "duration":
                    self.assertEqual(request.seconds, 600)
                else:
                    self.assertEqual(getattr(request, f), fields[f])

    def test_optional_fields_may_be_left_out(self):
        self.assertEqual(parse_request(b'{"cmd": "kick", "room": "r", "name": "n"}'), Request("kick", "r", "n"))
        self.assertEqual(parse_request(encode_request("close", room="r", reason=None)), Request("close", "r"))

    def test_refusals_say_why(self):
        cases = {
            b"not json": "one JSON object",
            b"[1, 2]": "one JSON object",
            b"\xff\xfe": "one JSON object",
            b'{"cmd": "reboot"}': "unknown command 'reboot'",
            b'{"room": "r"}': "names no command",
            b'{"cmd": "members"}': "members needs room",
            b'{"cmd": "members", "room": "  "}': "members needs room",
            b'{"cmd": "kick", "room": "r"}': "kick needs name",
            b'{"cmd": "status", "room": "r"}': "status takes no 'room'",
            b'{"cmd": "members", "room": 5}': "room is not a string",
            b'{"cmd": "members", "room": "a\\u0007b"}': "control characters",
            b'{"cmd": "kick", "room": "r", "name": "n", "reason": "' + b"x" * 201 + b'"}': "over 200 bytes",
            b'{"cmd": "ban-address", "address": "1.2.3.4", "duration": "forever"}': "is not a duration",
        }
        for line, why in cases.items():
            error = self.refused(line)
            self.assertEqual(error.code, "bad-request", line)
            self.assertIn(why, error.message, line)

    def test_an_over_long_line_is_too_long(self):
        line = json.dumps({"cmd": "members", "room": "x" * MAX_LINE}).encode()
        self.assertEqual(self.refused(line).code, "too-long")


class DurationTests(SynchronousTestCase):
    def test_units(self):
        for text, seconds in (("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400),
                              ("1w", 604800), ("1.5h", 5400), (" 3 m ", 180)):
            self.assertEqual(parse_duration(text), seconds, text)

    def test_bounds(self):
        for text in ("0", "0s", "367d", "-1m", "1y", "", "1" * 40, "m"):
            with self.assertRaises(AdminError, msg=text):
                parse_duration(text)
        self.assertEqual(parse_duration("366d"), 366 * 86400)

    def test_shown_to_a_person(self):
        self.assertEqual([format_duration(s) for s in (0, 45, 60, 90, 3600, 7500, 86400, 3 * 86400 + 4 * 3600)],
                         ["0s", "45s", "1m", "1m30s", "1h", "2h5m", "1d", "3d4h"])


class ReplyTests(SynchronousTestCase):
    def test_a_result_and_a_refusal(self):
        self.assertEqual(parse_reply(encode_result({"rooms": 2}).rstrip(b"\n")), {"rooms": 2})
        with self.assertRaises(AdminError) as cm:
            parse_reply(encode_refusal(AdminError("not-found", "no room named 'x'")))
        self.assertEqual((cm.exception.code, cm.exception.message), ("not-found", "no room named 'x'"))

    def test_a_reply_that_is_not_one(self):
        for line in (b"garbage", b"[]", b'{"result": 1}'):
            with self.assertRaises(AdminError):
                parse_reply(line)

    def test_a_log_line_shows_the_request(self):
        r = parse_request(encode_request("ban-address", address="::1", duration="2h", reason="spam"))
        self.assertEqual(r.shown(), "ban-address address='::1' for=2h reason='spam'")
