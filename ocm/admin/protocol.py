"""
The admin socket's protocol: one JSON object a line each way, request then
reply, as plain values and pure functions (the daemon's server and the
``ocm-admin`` command share them; neither side does I/O here).

A request is ``{"cmd": "kick", "room": "Lobby", "name": "bob", "reason": "spam"}``;
a reply is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "not-found", "message": "no room named 'x'"}``.
Everything a client controls is bounded: a line's length, the fields' sizes,
the requests on one connection and its time (the server holds those).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Bytes in one line, either way in (a reply to ``rooms`` or ``members`` may be
# longer: the client reads up to MAX_REPLY).
MAX_LINE = 4096
MAX_REPLY = 16 * 1024 * 1024
# Requests one connection may make, and seconds it may stay open.
MAX_REQUESTS = 100
DEADLINE = 60.0
# Connections open at once (a refused peer holds one for an instant).
MAX_CONNECTIONS = 16
MAX_FIELD = 255  # bytes in a room, a name or an address
MAX_REASON = 200  # as PROTOCOL 1.2's COMMAND reason
MAX_BAN_SECONDS = 366 * 86400

# Refusal codes, for scripts; the message is for a person.
BAD_REQUEST = "bad-request"
NOT_FOUND = "not-found"
REFUSED = "refused"
FORBIDDEN = "forbidden"
TOO_LONG = "too-long"
TOO_MANY = "too-many"
DEADLINE_PASSED = "deadline"

# Each command and its fields: required, then optional.
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "status": ((), ()),
    "rooms": ((), ()),
    "members": (("room",), ()),
    "kick": (("room", "name"), ("reason",)),
    "ban": (("room", "name"), ("reason",)),
    "unban": (("room", "name"), ()),
    "mute": (("room", "name"), ()),
    "unmute": (("room", "name"), ()),
    "close": (("room",), ("reason",)),
    "ban-address": (("address", "duration"), ("reason",)),
    "unban-address": (("address",), ()),
    "bans": ((), ()),
}

# What changes the daemon (logged as an action; the rest are reads).
ACTIONS = frozenset(
    {"kick", "ban", "unban", "mute", "unmute", "close", "ban-address", "unban-address"}
)


class AdminError(Exception):
    """A refused request: C{code} for scripts, C{message} for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    cmd: str
    room: str = ""
    name: str = ""
    reason: str = ""
    address: str = ""
    seconds: float = 0.0

    def shown(self) -> str:
        """The request for a log line: every field is the operator's own, none a secret."""
        parts = [self.cmd]
        for field in ("room", "name", "address"):
            value = getattr(self, field)
            if value:
                parts.append(f"{field}={value!r}")
        if self.seconds:
            parts.append(f"for={format_duration(self.seconds)}")
        if self.reason:
            parts.append(f"reason={self.reason!r}")
        return " ".join(parts)


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """C{"90"}, C{"10m"}, C{"2h"}, C{"1d"}, C{"1w"} as seconds; at most a year."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) and len(text) <= 32 else None
    if match is None:
        raise AdminError(BAD_REQUEST, f"{str(text)[:32]!r} is not a duration (e.g. 90s, 10m, 2h, 1d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_BAN_SECONDS:
        raise AdminError(BAD_REQUEST, "a ban lasts more than 0 seconds and at most 366 days")
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a person reads it: 45s, 10m, 2h5m, 3d4h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f"{s % 60}s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600}h" + (f"{s % 3600 // 60}m" if s % 3600 // 60 else "")
    return f"{s // 86400}d" + (f"{s % 86400 // 3600}h" if s % 86400 // 3600 else "")


def _text(field: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise AdminError(BAD_REQUEST, f"{field} is not a string")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise AdminError(BAD_REQUEST, f"{field} is over {limit} bytes")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise AdminError(BAD_REQUEST, f"{field} has control characters")
    return value


def parse_request(line: bytes) -> Request:
    """One request line as a L{Request}, or L{AdminError} (C{bad-request}) saying why not."""
    if len(line) > MAX_LINE:
        raise AdminError(TOO_LONG, f"a request is at most {MAX_LINE} bytes")
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AdminError(BAD_REQUEST, "a request is one JSON object on one line")
    if not isinstance(body, dict):
        raise AdminError(BAD_REQUEST, "a request is one JSON object on one line")
    cmd = body.get("cmd")
    if cmd is None:
        raise AdminError(BAD_REQUEST, "the request names no command (cmd)")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise AdminError(BAD_REQUEST, f"unknown command {str(cmd)[:40]!r}")
    required, optional = COMMANDS[cmd]
    unknown = set(body) - {"cmd", *required, *optional}
    if unknown:
        raise AdminError(BAD_REQUEST, f"{cmd} takes no {sorted(unknown)[0][:40]!r}")
    fields: dict[str, Any] = {}
    for field in (*required, *optional):
        if field not in body:
            if field in required:
                raise AdminError(BAD_REQUEST, f"{cmd} needs {field}")
            continue
        value = _text(field, body[field], MAX_REASON if field == "reason" else MAX_FIELD)
        if field in required and not value.strip():
            raise AdminError(BAD_REQUEST, f"{cmd} needs {field}")
        if field == "duration":
            fields["seconds"] = parse_duration(value)
        else:
            fields[field] = value.strip() if field == "address" else value
    return Request(cmd, **fields)


def encode_request(cmd: str, **fields: Any) -> bytes:
    """A request line (the client's side); fields left None are not sent."""
    body = {"cmd": cmd, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n"


def encode_result(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}, ensure_ascii=False).encode("utf-8") + b"\n"


def encode_refusal(error: AdminError) -> bytes:
    return json.dumps(
        {"ok": False, "error": error.code, "message": error.message}, ensure_ascii=False
    ).encode("utf-8") + b"\n"


def parse_reply(line: bytes) -> Any:
    """A reply line's result, or the daemon's refusal raised as L{AdminError}."""
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AdminError("reply", "the daemon's reply is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise AdminError("reply", "the daemon's reply is not an admin reply")
    if not body["ok"]:
        raise AdminError(str(body.get("error", "refused")), str(body.get("message", "refused")))
    return body.get("result")
