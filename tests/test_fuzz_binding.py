"""
A fuzz pass on the WebSocket JSON binding (issue 20): C{parse_frame} is
what a browser's every frame meets first. Arbitrary text, arbitrary
JSON-ish structures (the binding's keys with values of every type, deep
nesting, huge numbers, NaN, duplicate keys) and mutations of valid frames
never raise anything but L{ProtocolError}, with a status the binding
defines (400, or 413 for long text) and a bounded message that encodes as
an error frame; valid frames round-trip, however their JSON is spelled.
Pure: no daemon (the live daemon's TCRP and UDP fuzz is tests/test_fuzz.py).
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ocm.wire import binding
from ocm.wire.binding import MAX_SEQ, History, Leave, Order, RoomRequest, Say, parse_frame
from ocm.wire.datagram import MAX_MSG_ID, MAX_TEXT
from ocm.wire.names import name_problem
from ocm.wire.tcrp import MAX_PASSWORD_BYTES, Op, ProtocolError, Status

MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ("op", "room", "username", "password", "id", "text", "first", "last", "type", "version", "command", "name", "reason", "")
OPS = ("list", "create", "join", "send", "history", "leave", "command", "LIST", "", "nope")

encodable = st.characters(blacklist_categories=("Cs",))
names = st.text(encodable, min_size=1, max_size=30).map(str.strip).filter(lambda s: name_problem(s) is None)
texts = st.text(encodable, min_size=1, max_size=300).filter(lambda s: len(s.encode()) <= MAX_TEXT)
passwords = st.text(encodable, max_size=40)

# Values of every JSON type, odd numbers included.
scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
    | st.floats() | st.text(max_size=40) | st.sampled_from(OPS)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
structures = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), values, max_size=8)


def refused_properly(test: SynchronousTestCase, text: str) -> None:
    """parse_frame(text) either returns a frame or raises a well-formed ProtocolError."""
    try:
        frame = parse_frame(text)
    except ProtocolError as e:
        test.assertIn(e.status, (Status.BAD_REQUEST, Status.TOO_LARGE))
        test.assertLessEqual(len(e.message), 200, e.message)
        json.loads(binding.encode_error(e))  # the answer is a frame the page can read
        return
    test.assertIsInstance(frame, (RoomRequest, Say, History, Leave, Order))


def spelled(body: dict, how: int) -> str:
    """One frame's JSON, spelled several ways a client may spell it."""
    if how == 0:
        return json.dumps(body)
    if how == 1:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if how == 2:
        return json.dumps(body, indent=2, sort_keys=True)
    return "\t" + json.dumps(dict(reversed(list(body.items())))) + "\n"


class ArbitraryInputTests(SynchronousTestCase):
    @MANY
    @given(st.text(max_size=400))  # lone surrogates included
    @example("")
    @example("[" * 100_000 + "]" * 100_000)
    @example('{"op":' * 50_000)
    @example('{"op": "send", "id": ' + "9" * 5000 + ', "text": "x"}')
    @example('{"op": "history", "first": 1e400, "last": NaN}')
    @example('{"op": "send", "id": 1, "text": "\\ud800"}')
    @example('{"op": "join", "room": "r", "username": "\\u0000"}')
    @example('{"op": "send", "op": "leave"}')
    @example('{"op": []}')  # once a TypeError: an unhashable op
    @example('{"op": {"a": 1}, "room": "r"}')
    @example('"just a string"')
    @example("null")
    def test_arbitrary_text(self, text):
        refused_properly(self, text)

    @MANY
    @given(structures, st.integers(0, 3))
    def test_arbitrary_structures(self, body, how):
        try:
            text = spelled(body, how)
        except (TypeError, ValueError):  # keys json cannot sort, say
            text = json.dumps(body)
        refused_properly(self, text)

    @SOME
    @given(st.sampled_from(OPS), st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
    def test_each_op_with_wrong_types(self, op, rest):
        refused_properly(self, json.dumps({**rest, "op": op}))

    @SOME
    @given(st.data())
    def test_mutated_valid_frames(self, data):
        body = data.draw(valid_bodies())
        text = json.dumps(body)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(text)))
            kind = data.draw(st.integers(0, 2))
            if kind == 0:
                text = text[:i] + data.draw(st.text(max_size=3)) + text[i:]
            elif kind == 1:
                text = text[:i] + text[i + 1:]
            else:
                text = text[:i] + data.draw(st.characters()) + text[i + 1:]
        refused_properly(self, text)

    def test_the_bounds_are_the_bindings(self):
        """The few edges a generator hits rarely, each with its status."""
        cases = [
            ({"op": "send", "id": 0, "text": "x"}, Status.BAD_REQUEST),
            ({"op": "send", "id": MAX_MSG_ID + 1, "text": "x"}, Status.BAD_REQUEST),
            ({"op": "send", "id": True, "text": "x"}, Status.BAD_REQUEST),
            ({"op": "send", "id": 1.0, "text": "x"}, Status.BAD_REQUEST),
            ({"op": "send", "id": 1, "text": ""}, Status.BAD_REQUEST),
            ({"op": "send", "id": 1, "text": "x" * (MAX_TEXT + 1)}, Status.TOO_LARGE),
            ({"op": "history", "first": 2, "last": 1}, Status.BAD_REQUEST),
            ({"op": "history", "first": 1, "last": MAX_SEQ + 1}, Status.BAD_REQUEST),
            ({"op": "join", "room": "r", "username": "u", "password": "p" * (MAX_PASSWORD_BYTES + 1)},
             Status.BAD_REQUEST),
            ({"op": "join", "room": " r", "username": "u"}, Status.BAD_REQUEST),
            ({"op": "x" * 10_000}, Status.BAD_REQUEST),
        ]
        for body, status in cases:
            with self.assertRaises(ProtocolError, msg=body) as caught:
                parse_frame(json.dumps(body))
            self.assertEqual(caught.exception.status, status, body)
            self.assertLessEqual(len(caught.exception.message), 200)


@st.composite
def valid_bodies(draw) -> dict:
    kind = draw(st.sampled_from(("list", "create", "join", "send", "history", "leave")))
    if kind in ("create", "join"):
        body = {"op": kind, "room": draw(names), "username": draw(names)}
        password = draw(st.none() | passwords)
        if password is not None:
            body["password"] = password
        return body
    if kind == "send":
        return {"op": "send", "id": draw(st.integers(1, MAX_MSG_ID)), "text": draw(texts)}
    if kind == "history":
        first = draw(st.integers(1, MAX_SEQ))
        return {"op": "history", "first": first, "last": draw(st.integers(first, MAX_SEQ))}
    return {"op": kind}


def expected(body: dict) -> object:
    op = body["op"]
    if op == "list":
        return RoomRequest(Op.LIST_ROOMS)
    if op in ("create", "join"):
        return RoomRequest(binding.OPS[op], body["room"], body["username"], body.get("password", ""))
    if op == "send":
        return Say(body["id"], body["text"])
    if op == "history":
        return History(body["first"], body["last"])
    return Leave()


class RoundTripTests(SynchronousTestCase):
    @MANY
    @given(valid_bodies(), st.integers(0, 3), st.dictionaries(st.sampled_from(("extra", "type", "x")), values,
                                                               max_size=2))
    def test_valid_frames_round_trip(self, body, how, unknown):
        # Unknown keys are ignored, as the binding says; the spelling of the
        # JSON (escapes, spacing, key order) does not matter.
        frame = parse_frame(spelled({**unknown, **body}, how))
        self.assertEqual(frame, expected(body))
