"""
What the client prints: chat and event lines, room lists, and a plain
sentence for every TCRP status.

Pure functions, so the wording is tested without I/O. Everything that came
from the network passes through L{sanitize} first: a peer must not be able to
move the cursor, recolour, retitle or clear someone's terminal, nor forge a
line that looks like another member's message.
"""

from __future__ import annotations

import time
import unicodedata
from typing import Any, Iterable

from ocm.wire.datagram import Event, EventKind
from ocm.wire.tcrp import Op, Status

REPLACEMENT = "\ufffd"
# Controls (ESC, CR, LF, BEL, C1's CSI...), bidi overrides and other format
# characters, lone surrogates, line and paragraph separators.
_UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# Format characters that emoji and some scripts need, harmless on a terminal.
_SAFE_FORMAT = {"\u200c", "\u200d"}


def sanitize(text: str) -> str:
    """C{text} with every character that could steer a terminal replaced."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\t":
            out.append(" ")
        elif ch in _SAFE_FORMAT or unicodedata.category(ch) not in _UNSAFE:
            out.append(ch)
        else:
            out.append(REPLACEMENT)
    return "".join(out)


def quoted(name: str) -> str:
    return f"'{sanitize(name)}'"


def clock(time_ms: int) -> str:
    """The server's timestamp as local wall-clock time."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(time_ms / 1000))
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


def event_line(event: Event) -> str | None:
    """The line a server event shows as, or None for a kind we do not know."""
    name = sanitize(event.name)
    kind = event.kind
    if kind == EventKind.MESSAGE or kind == EventKind.HISTORY:
        return f"[{clock(event.time_ms)}] {name}: {sanitize(event.text)}"
    if kind == EventKind.JOINED:
        return f"* {name} joined"
    if kind == EventKind.LEFT:
        return f"* {name} left"
    if kind == EventKind.TIMED_OUT:
        return f"* {name} timed out"
    if kind == EventKind.CLOSED:
        return f"* room closed: {sanitize(event.text) or 'no reason given'}"
    who, why = _by(event)
    reason = f": {why}" if why else ""
    if kind == EventKind.KICKED:
        return f"* {name} was removed by {who}{reason}"
    if kind == EventKind.BANNED:
        return f"* {name} was banned by {who}{reason}"
    if kind == EventKind.UNBANNED:
        return f"* {name} is no longer banned"
    if kind == EventKind.MUTED:
        return f"* {name} is muted"
    if kind == EventKind.UNMUTED:
        return f"* {name} may speak again"
    if kind == EventKind.HOST:
        return f"* {name} is now the host"
    return None


# The text of a moderation event the daemon's operator caused starts so.
OPERATOR = "the server's operator"


def _by(event: Event) -> tuple[str, str]:
    """(who did it, the reason) of a KICKED or BANNED: the host, or the operator (ocm-admin)."""
    text = sanitize(event.text)
    if text == OPERATOR or text.startswith(OPERATOR + ": "):
        return OPERATOR, text[len(OPERATOR) + 2:]
    return "the host", text


def removed_line(event: Event, room: str) -> str:
    """What a kicked or banned person reads about itself (1.2)."""
    who, reason = _by(event)
    why = f" ({reason})" if reason else ""
    if event.kind == EventKind.BANNED:
        return f"You were banned from room {quoted(room)} by {who}{why}; you cannot join it again."
    return f"You were removed from room {quoted(room)} by {who}{why}; you may join it again."


# (1.2) The server's presence, in plain words (PROTOCOL §4a).
NOT_ANSWERING = "*** the server is not answering; your lines are kept and will be sent when it is back"
BACK = "*** the server is back"
RESTARTING = "*** the server is restarting; stay here"


def rejoined_line(room: str) -> str:
    return f"*** rejoined {sanitize(room)}; messages sent while the server was down may be missing"


def refused_line(what: str, why: str) -> str:
    """A REFUSED line or command (1.2): which, and the server's reason."""
    return f"Refused by the server ({sanitize(why).rstrip('.') or 'no reason given'}): {what}"


def lost_line(count: int) -> str:
    return f"* {count} message{'' if count == 1 else 's'} lost"


# Around the backlog: the room's messages from before the join.
EARLIER_BEGIN = "--- earlier messages ---"
EARLIER_END = "--- end of earlier messages ---"


def excerpt(text: str, limit: int = 60) -> str:
    """A line we sent, quoted and cut short, for a note about it."""
    text = sanitize(text)
    return "'" + (text if len(text) <= limit else text[: limit - 1] + "\u2026") + "'"


def undelivered_line(text: str, seconds: float) -> str:
    return f"Not delivered (no echo from the server in {seconds:g} s): {excerpt(text)}"


def late_line(text: str) -> str:
    return f"Delivered after all: {excerpt(text)}"


def silent_line(count: int, seconds: float) -> str:
    return (f"The server has not answered for {seconds:g} s; "
            f"{count} more line{'' if count == 1 else 's'} not sent.")


def rooms_lines(rooms: Iterable[Any]) -> list[str]:
    """A LIST_ROOMS answer for people; entries that are not rooms are skipped."""
    lines = []
    for room in rooms:
        if not isinstance(room, dict) or not isinstance(room.get("name"), str):
            continue
        members = room.get("members")
        count = f"{members} member{'' if members == 1 else 's'}" if isinstance(members, int) else "? members"
        lock = ", password" if room.get("password") is True else ""
        lines.append(f"  {sanitize(room['name'])} ({count}{lock})")
    if not lines:
        return ["No rooms on this server yet."]
    return [f"Rooms ({len(lines)}):"] + sorted(lines, key=str.casefold)


def members_line(room: str, members: Iterable[str], me: str, host: bool | str | None,
                 muted: Iterable[str] = ()) -> str:
    """
    /who: C{host} is the host's name (1.2), or whether we host (1.1, which
    tells only that); the host and the muted are marked.
    """
    from ocm.wire.names import name_key

    muted_keys = {name_key(m) for m in muted}
    if isinstance(host, bool):
        host = me if host else None
    names = []
    for m in members:
        marks = []
        if name_key(m) == name_key(me):
            marks.append("you")
        if host is not None and name_key(m) == name_key(host):
            marks.append("host")
        if name_key(m) in muted_keys:
            marks.append("muted")
        names.append(f"{sanitize(m)} ({', '.join(marks)})" if marks else sanitize(m))
    return f"Members of {quoted(room)} ({len(names)}): {', '.join(names)}"


def status_sentence(
    status: int,
    server_message: str,
    op: int,
    room: str,
    username: str,
    password_given: bool,
) -> str:
    """Turn a refusal into what a person should read, and what to do next."""
    why = sanitize(server_message).rstrip(".")
    if status == Status.UNAUTHORIZED:
        if password_given:
            return f"Wrong password for room {quoted(room)}."
        return f"Room {quoted(room)} needs a password."
    if status == Status.FORBIDDEN:
        return f"You are banned from room {quoted(room)}: the host banned this name or this address."
    if status == Status.NOT_FOUND:
        return f"Room {quoted(room)} does not exist."
    if status == Status.CONFLICT:
        if op == Op.CREATE_ROOM:
            return f"Room {quoted(room)} already exists."
        return f"The name {quoted(username)} is already taken in room {quoted(room)}."
    if status == Status.BAD_REQUEST:
        return f"The server refused the request as malformed: {why or 'no reason given'}."
    if status == Status.TOO_LARGE:
        return "The server refused the request as too large (is the password very long?)."
    if status == Status.TOO_MANY:
        return "The server is refusing requests from this address for now (too many); try again later."
    if status == Status.UNAVAILABLE:
        if op == Op.CREATE_ROOM:
            return "The server cannot hold any more rooms right now; try again later."
        if op == Op.JOIN_ROOM:
            return f"Room {quoted(room)} is full."
        return f"The server is at capacity: {why or 'no reason given'}."
    return f"The server refused the request with status {status}: {why or 'no reason given'}."
