"""
The WebSocket binding of the protocol (docs/protocol.md, "The WebSocket
binding"): one JSON object per text frame, each way. Requests mirror TCRP's
and the datagram messages; answers mirror TCRP's RESPONSE and COMPLETE and
the datagram events. Pure functions: text in, values out, and back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ocm.wire.datagram import MAX_MSG_ID, MAX_TEXT, Event, EventKind
from ocm.wire.names import name_problem
from ocm.wire.tcrp import MAX_PASSWORD_BYTES, Op, ProtocolError, Status

MAX_SEQ = (1 << 64) - 1

# The binding's operation names, and the TCRP operations they stand for.
OPS = {"list": Op.LIST_ROOMS, "create": Op.CREATE_ROOM, "join": Op.JOIN_ROOM}
OP_NAMES = {op: name for name, op in OPS.items()}

EVENT_NAMES = {
    EventKind.MESSAGE: "message",
    EventKind.JOINED: "joined",
    EventKind.LEFT: "left",
    EventKind.TIMED_OUT: "timed_out",
    EventKind.CLOSED: "closed",
    EventKind.HISTORY: "history",
    EventKind.ECHO: "echo",
    EventKind.EXPIRED: "expired",
}

# COMPLETE keys that belong to the UDP channel: a browser member has none.
_UDP_ONLY = ("token", "key", "udp_port")


@dataclass(frozen=True)
class RoomRequest:
    """list, create or join: C{op} is the TCRP operation it mirrors."""

    op: Op
    room: str = ""
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class Say:
    """send: SEND's msg_id and text."""

    msg_id: int
    text: str


@dataclass(frozen=True)
class History:
    first: int
    last: int


@dataclass(frozen=True)
class Leave:
    pass


Frame = RoomRequest | Say | History | Leave


def _bad(message: str) -> ProtocolError:
    return ProtocolError(Status.BAD_REQUEST, message)


def _string(body: dict[str, Any], key: str, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{key} is missing or not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{key} is not valid Unicode (a lone surrogate)")
    return value


def _whole(body: dict[str, Any], key: str, low: int, high: int) -> int:
    value = body.get(key)
    # bool is an int in Python, and not a number here.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{key} is missing or not a whole number from {low} to {high}")
    return value


def parse_frame(text: str) -> Frame:
    """
    Validate one client frame, or raise L{ProtocolError}: 400 for anything
    malformed, 413 for chat text over the datagram limit (so a browser
    member can say no more than an ocm-client member).
    """
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise _bad("the frame is not valid JSON")
    if not isinstance(body, dict):
        raise _bad("the frame is not a JSON object")
    op = body.get("op")
    if not isinstance(op, str):
        # Before any lookup: a list or an object is unhashable (found by
        # tests/test_fuzz_binding.py: {"op": []} raised TypeError).
        raise _bad("op is missing or not a string")
    if op in OPS:
        if op == "list":
            return RoomRequest(Op.LIST_ROOMS)
        room = _string(body, "room")
        problem = name_problem(room, "room name")
        if problem:
            raise _bad(problem)
        username = _string(body, "username")
        problem = name_problem(username, "username")
        if problem:
            raise _bad(problem)
        password = _string(body, "password", required=False)
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise _bad(f"password is over {MAX_PASSWORD_BYTES} bytes")
        return RoomRequest(OPS[op], room, username, password)
    if op == "send":
        msg_id = _whole(body, "id", 1, MAX_MSG_ID)
        said = _string(body, "text")
        size = len(said.encode("utf-8"))
        if size == 0:
            raise _bad("text is empty")
        if size > MAX_TEXT:
            raise ProtocolError(
                Status.TOO_LARGE, f"a message is at most {MAX_TEXT} bytes; this one is {size}"
            )
        return Say(msg_id, said)
    if op == "history":
        first = _whole(body, "first", 1, MAX_SEQ)
        last = _whole(body, "last", 1, MAX_SEQ)
        if first > last:
            raise _bad(f"history range {first}..{last} is empty")
        return History(first, last)
    if op == "leave":
        return Leave()
    raise _bad(f"unknown op {op[:40]!r}")


def _encode(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_response(
    op: Op | None, room: str, status: int, message: str, **fields: Any
) -> str:
    """TCRP's RESPONSE: always the first answer to list, create and join."""
    return _encode({
        "type": "response", "op": OP_NAMES.get(op, ""), "room": room,
        "status": int(status), "message": message, **fields,
    })


def encode_complete(op: Op, room: str, body: dict[str, Any]) -> str:
    """TCRP's COMPLETE, without the UDP channel's token, key and port."""
    fields = {k: v for k, v in body.items() if k not in _UDP_ONLY}
    return _encode({"type": "complete", "op": OP_NAMES[op], "room": room, **fields})


def encode_error(error: ProtocolError) -> str:
    """A refused send, history or malformed frame (not a room request)."""
    return _encode({
        "type": "error", "status": error.status, "message": error.message,
        **error.response_fields(),
    })


def encode_event(event: Event) -> str | None:
    """A datagram event as a frame; None for a kind this binding does not know."""
    kind = EVENT_NAMES.get(event.kind)
    if kind is None:
        return None
    frame: dict[str, Any] = {"type": "event", "kind": kind, "seq": event.seq, "time": event.time_ms}
    if event.kind == EventKind.ECHO:
        frame["name"] = event.name
        frame["id"] = event.msg_id
    elif event.kind != EventKind.EXPIRED:
        frame["name"] = event.name
        frame["text"] = event.text
    return _encode(frame)
