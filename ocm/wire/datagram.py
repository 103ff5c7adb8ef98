"""
The UDP codec, PROTOCOL §2 and §3: sealed datagrams both ways, the inner
messages a member sends and the events the server sends back.

Pure functions over bytes and an C{AESGCM} object; the caller owns keys and
counters. A datagram that does not parse raises L{DatagramError}, whose
C{reason} names the drop counter it belongs to.
"""

from __future__ import annotations

import enum
import functools
import json
import struct
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_DATAGRAM = 4096
MAX_TEXT = 3072
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
_CLIENT_PREFIX_INT = 1
_SERVER_PREFIX_INT = 2

_nonce = struct.Struct(">IQ")
_event_head = struct.Struct(">BQQB")
_msg_id = struct.Struct(">I")
_range = struct.Struct(">QQ")
MAX_MSG_ID = (1 << 32) - 1


class Kind(enum.IntEnum):
    """Inner message kinds, client to server."""

    CHAT = 0x01
    HEARTBEAT = 0x02
    LEAVE = 0x03
    HISTORY = 0x04  # 1.1
    SEND = 0x05  # 1.1
    COMMAND = 0x06  # 1.2


class EventKind(enum.IntEnum):
    """Inner event kinds, server to client."""

    MESSAGE = 0x01
    JOINED = 0x04
    LEFT = 0x05
    TIMED_OUT = 0x06
    CLOSED = 0x07
    HISTORY = 0x08  # 1.1
    ECHO = 0x09  # 1.1
    EXPIRED = 0x0A  # 1.1
    PONG = 0x0B  # 1.2
    RESTARTING = 0x0C  # 1.2
    KICKED = 0x0D  # 1.2
    BANNED = 0x0E  # 1.2
    UNBANNED = 0x0F  # 1.2
    MUTED = 0x10  # 1.2
    UNMUTED = 0x11  # 1.2
    HOST = 0x12  # 1.2
    REFUSED = 0x13  # 1.2


# (1.2) A numbered event resent by HISTORY to a 1.2 member keeps its kind
# with this bit set: 0x81 a resent MESSAGE, 0x84 a resent JOINED, ...
RESENT = 0x80

# (1.2) The events that change a room and take its next seq (PROTOCOL §3,
# "Numbering").
NUMBERED = frozenset({
    EventKind.MESSAGE, EventKind.JOINED, EventKind.LEFT, EventKind.TIMED_OUT,
    EventKind.KICKED, EventKind.BANNED, EventKind.UNBANNED, EventKind.MUTED,
    EventKind.UNMUTED, EventKind.HOST, EventKind.CLOSED,
})

MAX_COMMAND = 1024  # bytes of COMMAND's JSON
MAX_REASON = 200  # bytes of a moderation reason


class CommandOp(str, enum.Enum):
    """COMMAND's ops (1.2)."""

    KICK = "kick"
    BAN = "ban"
    UNBAN = "unban"
    MUTE = "mute"
    UNMUTE = "unmute"
    HOST = "host"


# The ops whose name must be a member now (the others act on the name alone).
NEEDS_MEMBER = frozenset({CommandOp.KICK, CommandOp.MUTE, CommandOp.UNMUTE, CommandOp.HOST})


@dataclass(frozen=True)
class Command:
    op: CommandOp
    name: str
    reason: str = ""


class CommandRefused(Exception):
    """A COMMAND that is answered with REFUSED; C{args[0]} says why, for a person."""


class DatagramError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class Envelope(NamedTuple):
    """
    The clear part of a client datagram; C{data} is the whole datagram.
    A NamedTuple, not a frozen dataclass: one is built per datagram, and a
    frozen dataclass's __init__ costs about twice as much.
    """

    room: bytes
    token: bytes
    counter: int
    header_size: int
    data: bytes


class Message(NamedTuple):
    """
    A validated inner message, with names, from L{read_message}. C{text}
    is the chat text of CHAT and SEND, and C{raw} the same text as it came
    (UTF-8, checked), which the server relays without encoding it again;
    C{number} is SEND's msg_id, or HISTORY's first seq; C{last} is
    HISTORY's last seq. Unused fields are "", b"" and 0. L{parse_message}
    returns the same fields as a plain tuple: building a NamedTuple costs
    about 0.1 us more, once per datagram on the daemon's path.
    """

    kind: int
    text: str
    number: int
    last: int
    raw: bytes


@dataclass(frozen=True)
class Event:
    kind: int
    seq: int
    time_ms: int
    name: str
    text: str
    msg_id: int = 0  # ECHO's and REFUSED's: the 4 bytes at the head of its text
    resent: bool = False  # 1.2: a numbered event resent by HISTORY (kind | RESENT on the wire)


# Envelope(...) runs a Python __new__; this builds the same tuple in C, once
# per datagram.
_envelope = functools.partial(tuple.__new__, Envelope)


def parse_envelope(data: bytes) -> Envelope:
    """Split a client datagram into its header fields without decrypting."""
    size = len(data)
    if size > MAX_DATAGRAM:
        raise DatagramError("oversize", f"{size} bytes")
    if size < 2:
        raise DatagramError("malformed", "shorter than its header")
    room_size = data[0]
    token_size = data[1]
    header_size = 2 + room_size + token_size
    # header, nonce, at least the kind byte, tag
    if size < header_size + NONCE_SIZE + 1 + TAG_SIZE:
        raise DatagramError("malformed", "too short for its declared sizes")
    if room_size == 0 or token_size == 0:
        raise DatagramError("malformed", "empty room name or token")
    prefix, counter = _nonce.unpack_from(data, header_size)
    if prefix != _CLIENT_PREFIX_INT:
        raise DatagramError("malformed", "nonce prefix is not 00000001")
    if counter == 0:
        raise DatagramError("malformed", "counter 0")
    return _envelope((data[2 : 2 + room_size], data[2 + room_size : header_size], counter, header_size, data))


def open_envelope(aead: AESGCM, envelope: Envelope) -> bytes:
    """Authenticate and decrypt, returning the inner message."""
    data = envelope.data
    h = envelope.header_size
    try:
        return aead.decrypt(data[h : h + NONCE_SIZE], data[h + NONCE_SIZE :], data[:h])
    except InvalidTag:
        raise DatagramError("auth", "authentication failed")


# Enum members as plain module names: on Python 3.11 each Kind.X lookup
# costs about 0.35 us, and the datagram path made several per datagram.
_CHAT, _HEARTBEAT, _LEAVE = Kind.CHAT, Kind.HEARTBEAT, Kind.LEAVE
_HISTORY, _SEND, _COMMAND = Kind.HISTORY, Kind.SEND, Kind.COMMAND
_HEARTBEAT_MESSAGE = (_HEARTBEAT, "", 0, 0, b"")
_LEAVE_MESSAGE = (_LEAVE, "", 0, 0, b"")


def parse_message(inner: bytes) -> tuple[int, str, int, int, bytes]:
    """
    Validate an inner message (PROTOCOL §2's table). Once per datagram: the
    text checks are written out in each branch rather than called.
    """
    if not inner:
        raise DatagramError("malformed", "empty message")
    kind = inner[0]
    if kind == _SEND:
        size = len(inner)
        if size < 6 or size > MAX_TEXT + 5:
            raise DatagramError("malformed", f"SEND of {size} bytes")
        msg_id = _msg_id.unpack_from(inner, 1)[0]
        if not msg_id:
            raise DatagramError("malformed", "msg_id 0")
        raw = inner[5:]
        try:
            return _SEND, raw.decode("utf-8"), msg_id, 0, raw
        except UnicodeDecodeError:
            raise DatagramError("malformed", "SEND text is not UTF-8")
    if kind == _CHAT:
        size = len(inner)
        if size < 2 or size > MAX_TEXT + 1:
            raise DatagramError("malformed", f"chat text of {size - 1} bytes")
        raw = inner[1:]
        try:
            return _CHAT, raw.decode("utf-8"), 0, 0, raw
        except UnicodeDecodeError:
            raise DatagramError("malformed", "chat text is not UTF-8")
    if kind == _HEARTBEAT or kind == _LEAVE:
        if len(inner) != 1:
            raise DatagramError("malformed", "body on an empty message kind")
        return _HEARTBEAT_MESSAGE if kind == _HEARTBEAT else _LEAVE_MESSAGE
    if kind == _HISTORY:
        if len(inner) != 1 + _range.size:
            raise DatagramError("malformed", "HISTORY body is not two seqs")
        first, last = _range.unpack_from(inner, 1)
        if not 1 <= first <= last:
            raise DatagramError("malformed", f"HISTORY range {first}..{last}")
        return _HISTORY, "", first, last, b""
    if kind == _COMMAND:
        # Only the frame is checked here: a COMMAND whose JSON is wrong is
        # still answered (REFUSED), so parse_command judges the body.
        size = len(inner)
        if size < 6 or size > MAX_COMMAND + 5:
            raise DatagramError("malformed", f"COMMAND of {size} bytes")
        msg_id = _msg_id.unpack_from(inner, 1)[0]
        if not msg_id:
            raise DatagramError("malformed", "msg_id 0")
        return _COMMAND, "", msg_id, 0, inner[5:]
    raise DatagramError("malformed", f"unknown kind {kind}")


def reason_problem(reason: str) -> str | None:
    """Why a moderation reason is refused, or None: at most 200 bytes, no control characters."""
    if len(reason.encode("utf-8", "surrogatepass")) > MAX_REASON:
        return f"the reason is over {MAX_REASON} bytes"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in reason):
        return "the reason has control characters"
    return None


def parse_command(raw: bytes) -> Command:
    """
    COMMAND's JSON body (1.2) as a value, or L{CommandRefused} saying why
    not. The name is checked only for its type and size here: whether it
    names a member is the room's to say.
    """
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CommandRefused("the command is not a JSON object")
    if not isinstance(body, dict):
        raise CommandRefused("the command is not a JSON object")
    op = body.get("op")
    try:
        op = CommandOp(op)
    except ValueError:
        raise CommandRefused(f"unknown command {str(op)[:40]!r}")
    name = body.get("name")
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > 255:
        raise CommandRefused("the command names no member")
    reason = body.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise CommandRefused("the reason is not a string")
    problem = reason_problem(reason)
    if problem:
        raise CommandRefused(problem)
    return Command(op, name, reason)


def read_message(inner: bytes) -> Message:
    """L{parse_message}, with the fields named: for tools and tests."""
    return Message._make(parse_message(inner))


def seal_client(
    aead: AESGCM, room: bytes, token: bytes, counter: int, inner: bytes
) -> bytes:
    """Build a client-to-server datagram (what a client sends)."""
    header = bytes((len(room), len(token))) + room + token
    nonce = _nonce.pack(_CLIENT_PREFIX_INT, counter)
    return header + nonce + aead.encrypt(nonce, inner, header)


def chat(text: str) -> bytes:
    return bytes((Kind.CHAT,)) + text.encode("utf-8")


def send(msg_id: int, text: str) -> bytes:
    """SEND (1.1): chat with a msg_id the server acknowledges with ECHO."""
    return bytes((Kind.SEND,)) + _msg_id.pack(msg_id) + text.encode("utf-8")


def history(first: int, last: int) -> bytes:
    """HISTORY (1.1): ask for the room's messages first..last again."""
    return bytes((Kind.HISTORY,)) + _range.pack(first, last)


def command(msg_id: int, op: str, name: str, reason: str = "") -> bytes:
    """COMMAND (1.2): a moderation request from the host."""
    body: dict[str, str] = {"op": op, "name": name}
    if reason:
        body["reason"] = reason
    return bytes((Kind.COMMAND,)) + _msg_id.pack(msg_id) + json.dumps(body, ensure_ascii=False).encode("utf-8")


def refused_text(msg_id: int, why: str) -> bytes:
    """REFUSED's text (1.2): the refused request's msg_id, then why."""
    return _msg_id.pack(msg_id) + why.encode("utf-8")


HEARTBEAT = bytes((Kind.HEARTBEAT,))
LEAVE = bytes((Kind.LEAVE,))


def encode_event(kind: int, seq: int, time_ms: int, name: bytes, text: bytes) -> bytes:
    return _event_head.pack(kind, seq, time_ms, len(name)) + name + text


# server_nonce(counter): the nonce of a server-to-client datagram, as a C call
# for loops that seal once per member.
server_nonce = functools.partial(_nonce.pack, _SERVER_PREFIX_INT)


def seal_server(aead: AESGCM, counter: int, event: bytes) -> bytes:
    nonce = _nonce.pack(_SERVER_PREFIX_INT, counter)
    return nonce + aead.encrypt(nonce, event, None)


def open_server(aead: AESGCM, data: bytes) -> tuple[int, Event]:
    """Decrypt and parse a server-to-client datagram: (counter, event)."""
    if len(data) > MAX_DATAGRAM:
        raise DatagramError("oversize")
    if len(data) < NONCE_SIZE + TAG_SIZE + _event_head.size:
        raise DatagramError("malformed", "too short")
    prefix, counter = _nonce.unpack_from(data)
    if prefix != _SERVER_PREFIX_INT:
        raise DatagramError("malformed", "nonce prefix is not 00000002")
    try:
        inner = aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
    except InvalidTag:
        raise DatagramError("auth", "authentication failed")
    return counter, parse_event(inner)


def parse_event(inner: bytes) -> Event:
    if len(inner) < _event_head.size:
        raise DatagramError("malformed", "event too short")
    kind, seq, time_ms, name_size = _event_head.unpack_from(inner)
    end = _event_head.size + name_size
    if len(inner) < end:
        raise DatagramError("malformed", "event name overruns")
    resent = False
    if kind & RESENT:
        kind &= ~RESENT
        resent = True
    try:
        name = inner[_event_head.size : end].decode("utf-8")
        if kind == EventKind.ECHO and not resent:
            if len(inner) - end != _msg_id.size:
                raise DatagramError("malformed", "ECHO text is not a msg_id")
            return Event(kind, seq, time_ms, name, "", _msg_id.unpack_from(inner, end)[0])
        if kind == EventKind.REFUSED and not resent:
            if len(inner) - end < _msg_id.size:
                raise DatagramError("malformed", "REFUSED text has no msg_id")
            why = inner[end + _msg_id.size :].decode("utf-8")
            return Event(kind, seq, time_ms, name, why, _msg_id.unpack_from(inner, end)[0])
        text = inner[end:].decode("utf-8")
    except UnicodeDecodeError:
        raise DatagramError("malformed", "event text is not UTF-8")
    return Event(kind, seq, time_ms, name, text, 0, resent)
