"""The TCRP codec alone: framing, incremental parsing, every refusal."""

import json

from twisted.trial.unittest import SynchronousTestCase

from ocm.wire.tcrp import (
    HEADER_SIZE,
    Op,
    ProtocolError,
    ReplyParser,
    RequestParser,
    State,
    Status,
    decode_object,
    encode_complete,
    encode_frame,
    encode_request,
    encode_response,
    parse_header,
)


def frame(op=1, state=0, room=b"Lobby", payload=b'{"username":"alice"}', size=None):
    head = bytes((len(room), op, state))
    head += (len(payload) if size is None else size).to_bytes(29, "big")
    return head + room + payload


class HeaderTests(SynchronousTestCase):
    def test_layout(self):
        data = encode_frame(2, 1, b"abc", b"{}")
        self.assertEqual(data[:3], bytes((3, 2, 1)))
        self.assertEqual(int.from_bytes(data[3:32], "big"), 2)
        self.assertEqual(data[32:], b"abc{}")
        h = parse_header(data)
        self.assertEqual((h.name_size, h.op, h.state, h.payload_size), (3, 2, 1, 2))

    def test_huge_size_field(self):
        h = parse_header(frame(size=(1 << 232) - 1))
        self.assertEqual(h.payload_size, (1 << 232) - 1)

    def test_room_name_limit(self):
        self.assertRaises(ValueError, encode_frame, 1, 0, b"x" * 256, b"{}")


class RequestParserTests(SynchronousTestCase):
    def parse(self, data, max_payload=65536):
        return RequestParser(max_payload).feed(data)

    def refusal(self, data, max_payload=65536):
        parser = RequestParser(max_payload)
        with self.assertRaises(ProtocolError) as cm:
            parser.feed(data)
        return cm.exception.status, parser

    def test_create(self):
        r = self.parse(frame(payload=b'{"username":"alice","password":"pw"}'))
        self.assertEqual((r.op, r.room, r.username, r.password), (Op.CREATE_ROOM, "Lobby", "alice", "pw"))

    def test_one_byte_at_a_time(self):
        parser = RequestParser()
        data = encode_request(Op.JOIN_ROOM, "Café", {"username": "zoë"})
        results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
        self.assertEqual(results[:-1], [None] * (len(data) - 1))
        self.assertEqual((results[-1].room, results[-1].username), ("Café", "zoë"))

    def test_list(self):
        r = self.parse(frame(op=3, room=b"", payload=b"{}"))
        self.assertEqual(r.op, Op.LIST_ROOMS)

    def test_list_with_room_name(self):
        self.assertEqual(self.refusal(frame(op=3, payload=b"{}"))[0], 400)

    def test_oversize_refused_from_header_alone(self):
        status, parser = self.refusal(frame(size=65537)[:HEADER_SIZE])
        self.assertEqual(status, Status.TOO_LARGE)
        self.assertEqual(parser.room_bytes, b"")

    def test_oversize_echoes_a_whole_room_name(self):
        status, parser = self.refusal(frame(size=10**9, payload=b""))
        self.assertEqual((status, parser.room_bytes), (413, b"Lobby"))

    def test_configurable_limit(self):
        payload = json.dumps({"username": "a" * 100}).encode()
        self.assertEqual(self.refusal(frame(payload=payload), max_payload=50)[0], 413)

    def test_bad_header_fields(self):
        for data in (frame(op=0), frame(op=4), frame(op=255), frame(state=1), frame(state=2), frame(state=9)):
            self.assertEqual(self.refusal(data)[0], 400, data[:3])

    def test_bad_payloads(self):
        for payload in (
            b"", b"not json", b"[1, 2]", b'"alice"', b"\xff\xfe", b'{"username": 5}',
            b"{}", b'{"username": ""}', b'{"username": " alice"}', b'{"username": "alice "}',
            b'{"username": "a\\u0000b"}', b'{"username": "a\\nb"}', b'{"username": "a\\u202eb"}',
            json.dumps({"username": "é" * 128}).encode(),
            b'{"username": "alice", "password": 5}',
            json.dumps({"username": "alice", "password": "p" * 1025}).encode(),
            b"[" * 60000,
        ):
            self.assertEqual(self.refusal(frame(payload=payload))[0], 400, payload[:40])

    def test_bad_room_names(self):
        for room in (b"", b"\xff", b" Lobby", b"Lob\x07by", b"Lobby\t"):
            self.assertEqual(self.refusal(frame(room=room))[0], 400, room)

    def test_longest_names(self):
        r = self.parse(frame(room=b"r" * 255, payload=json.dumps({"username": "u" * 255}).encode()))
        self.assertEqual((len(r.room), len(r.username)), (255, 255))

    def test_emoji_with_joiner_is_a_name(self):
        r = self.parse(encode_request(1, "👨\u200d👩\u200d👧 family", {"username": "ok"}))
        self.assertEqual(r.room, "👨\u200d👩\u200d👧 family")

    def test_null_or_empty_password_is_open(self):
        for payload in (b'{"username":"a","password":null}', b'{"username":"a","password":""}'):
            self.assertEqual(self.parse(frame(payload=payload)).password, "")

    def test_unknown_keys_ignored(self):
        self.assertEqual(self.parse(frame(payload=b'{"username":"a","colour":"red"}')).username, "a")

    def test_bytes_after_the_request_ignored(self):
        parser = RequestParser()
        self.assertIsNotNone(parser.feed(frame() + b"trailing"))
        self.assertIsNone(parser.feed(b"more"))


class ReplyTests(SynchronousTestCase):
    def test_response_and_complete(self):
        data = encode_response(1, b"Lobby", 200, "ok") + encode_complete(1, b"Lobby", {"token": "t"})
        parser = ReplyParser()
        frames = [f for i in range(len(data)) for f in parser.feed(data[i : i + 1])]
        self.assertEqual([(f.op, f.state, f.room) for f in frames],
                         [(1, State.RESPONSE, b"Lobby"), (1, State.COMPLETE, b"Lobby")])
        self.assertEqual(decode_object(frames[0].payload), {"status": 200, "message": "ok"})
        self.assertEqual(decode_object(frames[1].payload), {"token": "t"})

    def test_reply_too_large(self):
        self.assertRaises(ProtocolError, ReplyParser(10).feed, frame(size=11))
