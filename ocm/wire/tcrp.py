"""
The Chat Room Protocol (TCRP) codec, PROTOCOL §1: bytes in, values out, and
back. No sockets and no clock, so the daemon, the client, the bench and the
tests all speak it through the same few functions.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any

from ocm.wire.names import name_problem

HEADER_SIZE = 32
MAX_PAYLOAD_FIELD = (1 << (29 * 8)) - 1
DEFAULT_MAX_PAYLOAD = 64 * 1024
MAX_PASSWORD_BYTES = 1024


class Op(enum.IntEnum):
    CREATE_ROOM = 1
    JOIN_ROOM = 2
    LIST_ROOMS = 3


class State(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    COMPLETE = 2


class Status(enum.IntEnum):
    OK = 200
    REDIRECT = 307
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403  # 1.2: banned from the room
    NOT_FOUND = 404
    CONFLICT = 409
    TOO_LARGE = 413
    TOO_MANY = 429
    UNAVAILABLE = 503


class ProtocolError(Exception):
    """
    A request the server must refuse. C{status} is the TCRP status to answer
    with; the message is for a person and never holds a secret.
    C{retry_after} (seconds, PROTOCOL 1.1) goes with a 429 or a momentary
    503; C{extra} carries other keys of the response (307's C{tcp}).
    """

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.retry_after = retry_after
        self.extra = extra

    def response_fields(self) -> dict[str, Any]:
        """The keys a RESPONSE carries besides status and message."""
        fields = dict(self.extra or {})
        if self.retry_after is not None:
            # Whole seconds up: a client that waits this long is not early.
            fields["retry_after"] = max(1, math.ceil(self.retry_after))
        return fields


@dataclass(frozen=True)
class Header:
    name_size: int
    op: int
    state: int
    payload_size: int

    @property
    def body_size(self) -> int:
        return self.name_size + self.payload_size


@dataclass(frozen=True)
class Frame:
    """One whole TCRP frame; C{room} and C{payload} are the raw bytes."""

    op: int
    state: int
    room: bytes
    payload: bytes


@dataclass(frozen=True)
class Request:
    """A validated client request."""

    op: Op
    room: str
    username: str = ""
    password: str = ""
    # (1.2) The version the member asked to be served: "1.2", or "1.1" for
    # anything else (absent, or a version this server does not know).
    version: str = "1.1"


# Versions a member may ask for (PROTOCOL §1, 1.2); any other is served 1.1.
VERSIONS = ("1.1", "1.2")


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise ValueError("a TCRP header is 32 bytes")
    return Header(
        name_size=data[0],
        op=data[1],
        state=data[2],
        payload_size=int.from_bytes(data[3:HEADER_SIZE], "big"),
    )


def encode_frame(op: int, state: int, room: bytes, payload: bytes) -> bytes:
    if len(room) > 255:
        raise ValueError("room name longer than 255 bytes")
    return (
        bytes((len(room), op, state))
        + len(payload).to_bytes(29, "big")
        + room
        + payload
    )


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_request(op: int, room: str, payload: dict[str, Any]) -> bytes:
    return encode_frame(op, State.REQUEST, room.encode(), encode_json(payload))


def encode_response(
    op: int, room: bytes, status: int, message: str, **fields: Any
) -> bytes:
    """A RESPONSE frame; C{fields} are extra keys (C{retry_after}, C{tcp})."""
    return encode_frame(
        op, State.RESPONSE, room,
        encode_json({"status": status, "message": message, **fields}),
    )


def encode_complete(op: int, room: bytes, body: dict[str, Any]) -> bytes:
    return encode_frame(op, State.COMPLETE, room, encode_json(body))


def decode_object(payload: bytes) -> dict[str, Any]:
    """Decode a payload that must be one JSON object, or raise 400."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Status.BAD_REQUEST, "payload is not valid UTF-8")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError(Status.BAD_REQUEST, "payload is not valid JSON")
    if not isinstance(value, dict):
        raise ProtocolError(Status.BAD_REQUEST, "payload is not a JSON object")
    return value


class RequestParser:
    """
    Incremental parser for the one request a TCRP connection carries.

    Feed it bytes in any split. It raises L{ProtocolError} as soon as the
    bytes so far are enough to refuse (a bad header, or a declared size over
    C{max_payload}, before any body arrives) and returns the L{Request} once
    the frame is whole. C{header} is kept so a refusal can echo the request's
    operation and room name.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.header: Header | None = None
        self.room_bytes = b""
        self._buffer = bytearray()
        self.done = False

    def feed(self, data: bytes) -> Request | None:
        if self.done:
            return None
        self._buffer += data
        if self.header is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            self.header = parse_header(bytes(self._buffer[:HEADER_SIZE]))
            del self._buffer[:HEADER_SIZE]
            self._keep_room()
            check_request_header(self.header, self.max_payload)
        header = self.header
        self._keep_room()
        if len(self._buffer) < header.body_size:
            return None
        self.done = True
        payload = bytes(self._buffer[header.name_size : header.body_size])
        self._buffer = bytearray()
        return parse_request(header.op, self.room_bytes, payload)


    def _keep_room(self) -> None:
        # A refusal echoes the room name only once all of it has arrived.
        size = self.header.name_size
        if not self.room_bytes and size and len(self._buffer) >= size:
            self.room_bytes = bytes(self._buffer[:size])


def check_request_header(header: Header, max_payload: int) -> None:
    """Refuse a header before its body is read: size first, then the rest."""
    if header.payload_size > max_payload:
        raise ProtocolError(
            Status.TOO_LARGE,
            f"payload of {header.payload_size} bytes is over the limit of {max_payload}",
        )
    if header.state != State.REQUEST:
        raise ProtocolError(Status.BAD_REQUEST, f"state {header.state} is not REQUEST")
    if header.op not in Op._value2member_map_:
        raise ProtocolError(Status.BAD_REQUEST, f"unknown operation {header.op}")


def parse_request(op: int, room_bytes: bytes, payload: bytes) -> Request:
    """Validate a whole request frame's room name and JSON payload."""
    body = decode_object(payload)
    if op == Op.LIST_ROOMS:
        if room_bytes:
            raise ProtocolError(Status.BAD_REQUEST, "LIST_ROOMS takes no room name")
        return Request(Op.LIST_ROOMS, "")
    try:
        room = room_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Status.BAD_REQUEST, "room name is not valid UTF-8")
    problem = name_problem(room, "room name")
    if problem:
        raise ProtocolError(Status.BAD_REQUEST, problem)
    username = body.get("username")
    if not isinstance(username, str):
        raise ProtocolError(Status.BAD_REQUEST, "username is missing or not a string")
    problem = name_problem(username, "username")
    if problem:
        raise ProtocolError(Status.BAD_REQUEST, problem)
    password = body.get("password")
    if password is None:
        password = ""
    if not isinstance(password, str):
        raise ProtocolError(Status.BAD_REQUEST, "password is not a string")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise ProtocolError(
            Status.BAD_REQUEST, f"password is over {MAX_PASSWORD_BYTES} bytes"
        )
    version = body.get("version")
    return Request(Op(op), room, username, password, version if version in VERSIONS else "1.1")


class ReplyParser:
    """
    Incremental parser for the server's side, as a client reads it: a
    RESPONSE frame and, after status 200, a COMPLETE frame.
    """

    def __init__(self, max_payload: int = 16 * 1024 * 1024) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER_SIZE:
            header = parse_header(bytes(self._buffer[:HEADER_SIZE]))
            if header.payload_size > self.max_payload:
                raise ProtocolError(Status.TOO_LARGE, "server frame too large")
            end = HEADER_SIZE + header.body_size
            if len(self._buffer) < end:
                break
            room = bytes(self._buffer[HEADER_SIZE : HEADER_SIZE + header.name_size])
            payload = bytes(self._buffer[HEADER_SIZE + header.name_size : end])
            del self._buffer[:end]
            frames.append(Frame(header.op, header.state, room, payload))
        return frames
