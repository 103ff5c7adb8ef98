"""
Property tests (issue 4): every codec round-trips, no input makes a parser
raise anything but the codec's own error, and the replay window agrees with
a model simple enough to be obviously right.

Example counts are kept small enough that the whole module runs in a few
seconds; hypothesis remembers failures in its example database.
"""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ocm.wire.datagram import (
    HEARTBEAT,
    LEAVE,
    MAX_DATAGRAM,
    MAX_TEXT,
    DatagramError,
    Event,
    EventKind,
    chat,
    encode_event,
    open_envelope,
    open_server,
    parse_envelope,
    parse_event,
    parse_message,
    seal_client,
    seal_server,
)
from ocm.wire.names import name_problem
from ocm.server.replay import WINDOW, ReplayWindow
from ocm.wire.tcrp import (
    Frame,
    Op,
    ProtocolError,
    ReplyParser,
    Request,
    RequestParser,
    State,
    Status,
    decode_object,
    encode_complete,
    encode_frame,
    encode_json,
    encode_request,
    encode_response,
    parse_header,
    parse_request,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------

# Text that UTF-8 can encode (no lone surrogates).
encodable = st.characters(blacklist_categories=("Cs",))


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


# Valid names: mostly printable, sometimes with the zero-width joiner that
# emoji sequences need; the daemon's own rule decides.
names = (
    st.text(
        st.one_of(
            st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
            st.just("\u200d"),
        ),
        min_size=1,
        max_size=40,
    )
    .map(lambda s: s.strip())
    .filter(lambda s: name_problem(s) is None)
)
passwords = st.one_of(st.none(), st.just(""), st.text(encodable, max_size=60))
keys = st.binary(min_size=32, max_size=32)
counters = st.integers(1, 2**64 - 1)
chat_texts = st.text(encodable, min_size=1, max_size=400).filter(
    lambda s: utf8_size(s) <= MAX_TEXT
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(encodable),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(encodable, max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(encodable, max_size=10), json_values, max_size=5)


@st.composite
def splits(draw, data: bytes) -> list[bytes]:
    """C{data} cut at arbitrary points, empty pieces included."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, start = [], 0
    for cut in cuts + [len(data)]:
        pieces.append(data[start:cut])
        start = cut
    return pieces


# -- round trips --------------------------------------------------------------


class TCRPRoundTripTests(SynchronousTestCase):
    @FAST
    @given(st.sampled_from([Op.CREATE_ROOM, Op.JOIN_ROOM]), names, names, passwords, st.data())
    def test_request_in_any_split(self, op, room, username, password, data):
        """A request parses back to what was sent, however TCP splits it."""
        body = {"username": username}
        if password is not None:
            body["password"] = password
        wire = encode_request(op, room, body)
        parser = RequestParser()
        pieces = data.draw(splits(wire))
        results = [parser.feed(piece) for piece in pieces]
        self.assertEqual(
            [r for r in results if r is not None],
            [Request(op, room, username, password or "")],
        )
        last = max(i for i, piece in enumerate(pieces) if piece)
        self.assertIsNotNone(results[last], "the request is whole at its last byte, not before")

    @FAST
    @given(json_objects, st.data())
    def test_list_rooms_in_any_split(self, body, data):
        parser = RequestParser()
        results = [parser.feed(p) for p in data.draw(splits(encode_request(Op.LIST_ROOMS, "", body)))]
        self.assertEqual([r for r in results if r is not None], [Request(Op.LIST_ROOMS, "")])

    @FAST
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 255),
                st.integers(0, 255),
                st.binary(max_size=255),
                st.binary(max_size=300),
            ),
            max_size=4,
        ),
        st.data(),
    )
    def test_frames_in_any_split(self, frames, data):
        """The reply parser gives back every frame, whatever the bytes are."""
        wire = b"".join(encode_frame(*f) for f in frames)
        for op, state, room, payload in frames:
            header = parse_header(encode_frame(op, state, room, payload))
            self.assertEqual(
                (header.op, header.state, header.name_size, header.payload_size),
                (op, state, len(room), len(payload)),
            )
        parser = ReplyParser()
        got = []
        for piece in data.draw(splits(wire)):
            got.extend(parser.feed(piece))
        self.assertEqual(got, [Frame(*f) for f in frames])

    @FAST
    @given(
        st.sampled_from(list(Op)),
        names,
        st.sampled_from(list(Status)),
        st.text(encodable, max_size=80),
        json_objects,
    )
    def test_response_and_complete(self, op, room, status, message, body):
        wire = encode_response(op, room.encode(), status, message) + encode_complete(
            op, room.encode(), body
        )
        response, complete = ReplyParser().feed(wire)
        self.assertEqual((response.op, response.state, response.room), (op, State.RESPONSE, room.encode()))
        self.assertEqual(decode_object(response.payload), {"status": status, "message": message})
        self.assertEqual((complete.op, complete.state), (op, State.COMPLETE))
        self.assertEqual(decode_object(complete.payload), body)


class DatagramRoundTripTests(SynchronousTestCase):
    @FAST
    @given(
        keys,
        st.binary(min_size=1, max_size=255),
        st.binary(min_size=1, max_size=255),
        counters,
        st.one_of(chat_texts.map(chat), st.just(HEARTBEAT), st.just(LEAVE)),
    )
    def test_client_datagram(self, key, room, token, counter, inner):
        aead = AESGCM(key)
        data = seal_client(aead, room, token, counter, inner)
        self.assertLessEqual(len(data), MAX_DATAGRAM)
        envelope = parse_envelope(data)
        self.assertEqual((envelope.room, envelope.token, envelope.counter), (room, token, counter))
        opened = open_envelope(aead, envelope)
        self.assertEqual(opened, inner)
        kind, text = parse_message(opened)[:2]
        self.assertEqual(kind, inner[0])
        self.assertEqual(text, inner[1:].decode("utf-8"))

    @FAST
    @given(
        keys,
        counters,
        st.sampled_from([k for k in EventKind if k not in (EventKind.ECHO, EventKind.REFUSED)]),  # their text starts with a msg_id
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**64 - 1),
        names,
        st.text(encodable, max_size=400),
    )
    def test_server_event(self, key, counter, kind, seq, time_ms, name, text):
        aead = AESGCM(key)
        event = encode_event(kind, seq, time_ms, name.encode(), text.encode())
        self.assertEqual(parse_event(event), Event(kind, seq, time_ms, name, text))
        self.assertEqual(open_server(aead, seal_server(aead, counter, event)), (counter, Event(kind, seq, time_ms, name, text)))

    @FAST
    @given(json_objects)
    def test_json_objects(self, value):
        self.assertEqual(decode_object(encode_json(value)), value)


# -- arbitrary input ------------------------------------------------------------


class ArbitraryInputTests(SynchronousTestCase):
    """Garbage in: the codec's own error or a normal return, nothing else."""

    def only(self, error, f, *args):
        try:
            return f(*args)
        except error:
            return None

    @FAST
    @given(st.integers(0, 1024), st.binary(max_size=600), st.data())
    def test_request_parser(self, max_payload, garbage, data):
        parser = RequestParser(max_payload)
        for piece in data.draw(splits(garbage)):
            try:
                parser.feed(piece)
            except ProtocolError as e:
                self.assertIn(e.status, (Status.BAD_REQUEST, Status.TOO_LARGE))
                break

    @FAST
    @given(
        st.sampled_from([Op.CREATE_ROOM, Op.JOIN_ROOM, Op.LIST_ROOMS]),
        st.binary(max_size=40) | names.map(str.encode),
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"username": json_values | names, "password": json_values | passwords}
            ),
        ),
    )
    def test_request_fields(self, op, room, body):
        """Whatever JSON a request carries: a Request or a 400."""
        try:
            request = parse_request(op, room, json.dumps(body).encode())
        except ProtocolError as e:
            self.assertEqual(e.status, Status.BAD_REQUEST)
            return
        if op != Op.LIST_ROOMS:
            self.assertIsNone(name_problem(request.room))
            self.assertIsNone(name_problem(request.username))
            self.assertIsInstance(request.password, str)

    @FAST
    @given(st.binary(max_size=600), st.data())
    def test_reply_parser(self, garbage, data):
        parser = ReplyParser(max_payload=256)
        for piece in data.draw(splits(garbage)):
            try:
                frames = parser.feed(piece)
            except ProtocolError:
                break
            for frame in frames:
                self.assertIsInstance(frame, Frame)

    @FAST
    @given(st.binary(max_size=300))
    def test_decode_object(self, garbage):
        self.assertIsInstance(self.only(ProtocolError, decode_object, garbage) or {}, dict)

    @FAST
    @given(keys, st.binary(max_size=700))
    def test_client_datagram_parsers(self, key, garbage):
        envelope = self.only(DatagramError, parse_envelope, garbage)
        if envelope is not None:
            self.assertLessEqual(envelope.header_size, len(garbage))
            self.only(DatagramError, open_envelope, AESGCM(key), envelope)
        self.only(DatagramError, parse_message, garbage)

    @FEW
    @given(st.binary(min_size=MAX_DATAGRAM - 8, max_size=MAX_DATAGRAM + 8))
    def test_datagrams_around_the_size_limit(self, garbage):
        try:
            parse_envelope(garbage)
        except DatagramError as e:
            if len(garbage) > MAX_DATAGRAM:
                self.assertEqual(e.reason, "oversize")

    @FAST
    @given(keys, st.binary(max_size=500))
    def test_server_datagram_parsers(self, key, garbage):
        self.only(DatagramError, open_server, AESGCM(key), garbage)
        self.only(DatagramError, parse_event, garbage)

    @FAST
    @given(keys, chat_texts, counters, st.data())
    def test_tampered_datagram_never_opens(self, key, text, counter, data):
        """Any change to a sealed datagram is refused with DatagramError."""
        aead = AESGCM(key)
        good = seal_client(aead, b"Lobby", b"0123abcd", counter, chat(text))
        how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        if how == "flip":
            at = data.draw(st.integers(0, len(good) - 1))
            bit = data.draw(st.integers(0, 7))
            bad = good[:at] + bytes((good[at] ^ (1 << bit),)) + good[at + 1 :]
        elif how == "truncate":
            bad = good[: data.draw(st.integers(0, len(good) - 1))]
        else:
            bad = good + data.draw(st.binary(min_size=1, max_size=64))
        with self.assertRaises(DatagramError):
            parse_message(open_envelope(aead, parse_envelope(bad)))


# -- the replay window against its model -----------------------------------------


class ReplayModel:
    """The rule in words: each counter once, none more than 64 below the highest."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest = 0

    def check(self, counter: int) -> str | None:
        if counter > self.highest:
            return None
        if self.highest - counter > WINDOW:
            return "stale"
        if counter in self.seen:
            return "replay"
        return None

    def accept(self, counter: int) -> None:
        self.seen.add(counter)
        self.highest = max(self.highest, counter)


class ReplayWindowModelTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                # Mostly near the highest so far, sometimes a long jump,
                # now and then one as long as a hostile client makes it.
                st.one_of(
                    st.integers(-WINDOW - 3, 8),
                    st.integers(-1000, 1000),
                    st.integers(2**40, 2**63),
                ),
                st.booleans(),  # whether the datagram authenticated
            ),
            max_size=200,
        ),
        st.sampled_from([0, 2**64 - 1100]),
    )
    def test_agrees_with_model(self, steps, base):
        window, model = ReplayWindow(), ReplayModel()
        for offset, authentic in steps:
            counter = max(1, min(2**64 - 1, max(model.highest, base) + offset))
            verdict = window.check(counter)
            self.assertEqual(verdict, model.check(counter), f"counter {counter}")
            if verdict is None and authentic:
                window.accept(counter)
                model.accept(counter)
            self.assertEqual(window.highest, model.highest)
