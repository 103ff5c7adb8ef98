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

from ocm.wire.datagram import (
    MAX_COMMAND, MAX_MSG_ID, MAX_TEXT, CommandRefused, Event, EventKind, parse_command,
)
from ocm.wire.names import name_problem
from ocm.wire.tcrp import MAX_PASSWORD_BYTES, VERSIONS, Op, ProtocolError, Status

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
    # 1.2: sent only to a page that asked for it (REFUSED also to a muted
    # 1.1 page's send: a page ignores kinds it does not know).
    EventKind.RESTARTING: "restarting",
    EventKind.KICKED: "kicked",
    EventKind.BANNED: "banned",
    EventKind.UNBANNED: "unbanned",
    EventKind.MUTED: "muted",
    EventKind.UNMUTED: "unmuted",
    EventKind.HOST: "host",
    EventKind.REFUSED: "refused",
}

# Events with an id (the msg_id of the send or command they answer) and no text.
_ANSWERS = frozenset({EventKind.ECHO})
# Events with neither name nor text.
_BARE = frozenset({EventKind.EXPIRED})

# COMPLETE keys that belong to the UDP channel: a browser member has none.
_UDP_ONLY = ("token", "key", "udp_port")


@dataclass(frozen=True)
class RoomRequest:
    """list, create or join: C{op} is the TCRP operation it mirrors."""

    op: Op
    room: str = ""
    username: str = ""
    password: str = ""
    # (1.2) The version asked for: "1.2", or "1.1" when absent.
    version: str = "1.1"


@dataclass(frozen=True)
class Resume:
    """
    (1.2) Back in a room kept across a restart, as the same member: the
    secret its last COMPLETE gave it (C{resume}).
    """

    room: str
    username: str
    secret: str


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


@dataclass(frozen=True)
class Order:
    """
    command (1.2): COMMAND's msg_id and its JSON body, as the datagram
    carries it. C{refused} says why the body breaks COMMAND's rules
    (L{parse_command}'s), to be answered with REFUSED as the server would.
    """

    msg_id: int
    body: bytes
    refused: str = ""


Frame = RoomRequest | Resume | Say | History | Leave | Order


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
        version = body.get("version", "1.1")
        if not isinstance(version, str) or version not in VERSIONS:
            raise _bad(f"version is not one of {', '.join(VERSIONS)}")
        return RoomRequest(OPS[op], room, username, password, version)
    if op == "resume":
        room, username = _string(body, "room"), _string(body, "username")
        for value, what in ((room, "room name"), (username, "username")):
            problem = name_problem(value, what)
            if problem:
                raise _bad(problem)
        secret = _string(body, "resume")
        if not 1 <= len(secret) <= 64:
            raise _bad("resume is not a membership's secret")
        return Resume(room, username, secret)
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
    if op == "command":
        return _order(body)
    raise _bad(f"unknown op {op[:40]!r}")


def _order(body: dict[str, Any]) -> Order:
    """
    The command frame as COMMAND's JSON body: its msg_id must be valid (or
    there is nothing to answer), the rest is judged by COMMAND's rules.
    """
    msg_id = _whole(body, "id", 1, MAX_MSG_ID)
    command = {"op": body.get("command"), "name": body.get("name")}
    if body.get("reason") is not None:
        command["reason"] = body["reason"]
    try:
        raw = json.dumps(command, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError, RecursionError):
        return Order(msg_id, b"", "the command is not valid Unicode")
    if len(raw) > MAX_COMMAND:
        return Order(msg_id, b"", f"the command is over {MAX_COMMAND} bytes")
    try:
        parse_command(raw)
    except CommandRefused as e:
        return Order(msg_id, b"", str(e))
    return Order(msg_id, raw)


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
    """
    A datagram event as a frame; None for a kind this binding does not
    carry (PONG: the WebSocket has its own liveness). A 1.2 event resent
    by history keeps its kind and is marked C{"resent": true}.
    """
    kind = EVENT_NAMES.get(event.kind)
    if kind is None:
        return None
    frame: dict[str, Any] = {"type": "event", "kind": kind, "seq": event.seq, "time": event.time_ms}
    if event.resent:
        frame["resent"] = True
    if event.kind in _ANSWERS and not event.resent:
        frame["name"] = event.name
        frame["id"] = event.msg_id
    elif event.kind == EventKind.REFUSED:
        frame["name"] = event.name
        frame["id"] = event.msg_id
        frame["text"] = event.text
    elif event.kind not in _BARE:
        frame["name"] = event.name
        frame["text"] = event.text
    return _encode(frame)


def refused_event(msg_id: int, name: str, why: str, time_ms: int) -> str:
    """REFUSED for a command the binding itself found malformed."""
    return encode_event(Event(EventKind.REFUSED, 0, time_ms, name, why, msg_id)) or ""
