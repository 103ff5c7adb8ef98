"""
Room names and usernames as IRC channels and nicks, both ways.

ocm names (PROTOCOL §1, L{ocm.wire.names}) may hold spaces, commas, colons
and any printable character; IRC splits parameters on white space (and
Python's C{str.split}, which Twisted's C{parsemsg} uses, on every Unicode
space), lists on commas, and prefixes on C{!} and C{@}. So each form escapes
what IRC cannot carry, as percent-encoded UTF-8 bytes (C{%XX}, hex in either
case on the way in), and nothing else:

  channel = "#" + the room name with
      " "                                      -> "_"
      "_" "%" "," ":" BEL, every other space   -> %XX
  nick = the username with
      "%" " " "!" "@" "*" "?" "," "." every other space  -> %XX
      a leading "#" "&" "$" ":" "+" "~" "-"              -> %XX

(Spaces read as "_" in channels because rooms are often named in words;
in nicks "_" stays itself, because IRC clients append it to a taken nick.)

The mappings are injective and decode back exactly: C{room_name(channel(r))
== r} and C{username(nick(u)) == u} for every valid name (tests/test_irc_names
checks it for arbitrary names). Decoding is lenient only where IRC clients
are (hex case); a channel or nick that does not decode to a valid name is
refused. Names compare as ocm compares them (C{name_key}: Unicode
casefolding), which the room service does itself.
"""

from __future__ import annotations

import re

from ocm.wire.names import name_problem

# IRC forms longer than these are refused from IRC clients (ISUPPORT
# CHANNELLEN and NICKLEN). Rooms and members with longer names still exist;
# they are shown with their full forms, lines split around them.
CHANNELLEN = 200
NICKLEN = 64

_CHANNEL_ALWAYS = frozenset("_%,:\x07")
_NICK_ALWAYS = frozenset("% !@*?,.")
_NICK_LEADING = frozenset("#&$:+~-")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _needs(ch: str, always: frozenset[str]) -> bool:
    # Every character str.split() splits on, and anything unprintable.
    return ch in always or ch.isspace() or not ch.isprintable()


def _escape_char(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def channel(room: str) -> str:
    """The channel a room is on: C{#} and the escaped room name."""
    out = []
    for ch in room:
        if ch == " ":
            out.append("_")
        elif _needs(ch, _CHANNEL_ALWAYS):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "#" + "".join(out)


def nick(username: str) -> str:
    """The nick a member shows as on IRC."""
    out = []
    for i, ch in enumerate(username):
        if _needs(ch, _NICK_ALWAYS) or (i == 0 and ch in _NICK_LEADING):
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def _unescape(text: str, space: str | None) -> str | None:
    """Undo the escapes: runs of %XX are UTF-8; None if they are not."""
    if space is not None:
        text = text.replace(space, " ")
    if "%" not in text:
        return text
    out = []
    pos = 0
    pending = bytearray()
    while pos < len(text):
        match = _ESCAPE.match(text, pos)
        if match is not None:
            pending.append(int(match.group(1), 16))
            pos = match.end()
            continue
        if text[pos] == "%":
            return None  # a % that is not an escape
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                return None
            pending.clear()
        out.append(text[pos])
        pos += 1
    if pending:
        try:
            out.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return "".join(out)


def room_name(chan: str) -> str | None:
    """The room a channel name stands for, or None if it is no room's."""
    if not chan.startswith("#") or len(chan) < 2:
        return None
    body = chan[1:]
    if any(ch == " " or ch == "," or ch == "\x07" for ch in body):
        return None
    room = _unescape(body, "_")
    if room is None or name_problem(room) is not None:
        return None
    return room


def username(nickname: str) -> str | None:
    """The username a nick stands for, or None if it is nobody's."""
    if not nickname or nickname[0] in _NICK_LEADING:
        return None
    if any(ch in "!@ ," for ch in nickname):
        return None
    user = _unescape(nickname, None)
    if user is None or name_problem(user, "nick") is not None:
        return None
    return user


def nick_problem(nickname: str) -> str | None:
    """Why an IRC client may not take C{nickname}, or None."""
    if len(nickname.encode("utf-8", "surrogatepass")) > NICKLEN:
        return f"a nick is at most {NICKLEN} bytes"
    user = username(nickname)
    if user is None:
        return "not a valid nick: no spaces, control characters, '!', '@', ',', or a leading '#', '&', '$', ':', '+', '~', '-'"
    return None


def channel_problem(chan: str) -> str | None:
    """Why an IRC client may not name a room C{chan}, or None."""
    if len(chan.encode("utf-8", "surrogatepass")) > CHANNELLEN:
        return f"a channel name is at most {CHANNELLEN} bytes"
    if room_name(chan) is None:
        return "not a room's channel: '#' then the room name, spaces as '_', '%XX' escapes in UTF-8"
    return None
