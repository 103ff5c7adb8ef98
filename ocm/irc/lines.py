"""
IRC lines, both ways, as pure functions (no connection, no clock).

Out: L{line} formats one message (IRCv3 message tags, a prefix, the last
parameter as a trailing one where it must be); L{text_lines} splits an ocm
message, which may be 3072 bytes and hold newlines, into PRIVMSG lines
that fit IRC: the part after the tags within 512 bytes with its CRLF
(RFC 1459 §2.3, Modern IRC "Message format"), the tags within their own
budget (IRCv3 message-tags: 8191 bytes), cut only between characters and
never before a combining mark. L{isupport_lines} and L{server_time}.

In: L{parse} splits a line into its tags and what Twisted's
C{irc.parsemsg} makes of the rest, and says why a line is not one.
"""

from __future__ import annotations

import datetime
import unicodedata
from dataclasses import dataclass, field

from twisted.words.protocols import irc

MAX_LINE = irc.MAX_COMMAND_LENGTH  # 512, CRLF included, tags excluded
MAX_TAGS = 8191  # a server's tags, "@" and the space after them included
MAX_CLIENT_TAGS = 4096  # a client's (4094 bytes of tag data, "@" and a space)
MAX_INPUT = MAX_LINE + MAX_CLIENT_TAGS

_ZWJ = "\u200d"


class BadLine(ValueError):
    """A line that is not an IRC message; C{args[0]} says why."""


@dataclass(frozen=True)
class Message:
    command: str
    params: list[str]
    prefix: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def escape_tag_value(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace(";", "\\:").replace(" ", "\\s")
        .replace("\r", "\\r").replace("\n", "\\n")
    )


def unescape_tag_value(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}.get(nxt, nxt))
            i += 2
            continue
        if ch != "\\":  # a trailing lone backslash is dropped
            out.append(ch)
        i += 1
    return "".join(out)


def format_tags(tags: dict[str, str]) -> str:
    """C{@a=b;c } for C{{"a": "b", "c": ""}}, or "" for no tags."""
    if not tags:
        return ""
    parts = [f"{k}={escape_tag_value(v)}" if v else k for k, v in tags.items()]
    return "@" + ";".join(parts) + " "


def _body(command: str, params: list[str], prefix: str) -> str:
    parts = [f":{prefix}"] if prefix else []
    parts.append(command)
    for i, p in enumerate(params):
        last = i == len(params) - 1
        if last and (not p or " " in p or p.startswith(":")):
            parts.append(":" + p)
        else:
            # A middle parameter is one word: what a client sent is echoed
            # in numerics, and must not split or end the line.
            if not p or " " in p or p.startswith(":"):
                p = p.replace(" ", "_").lstrip(":") or "*"
            parts.append(p)
    return " ".join(parts)


def _clean(text: str) -> str:
    # CR, LF and NUL end or corrupt a line wherever they are.
    return text.replace("\r", " ").replace("\n", " ").replace("\0", "")


def line(command: str, params: list[str], prefix: str = "", tags: dict[str, str] | None = None) -> bytes:
    """One message as bytes with its CRLF. Parameters are cleaned of CR, LF and NUL."""
    body = _body(command, [_clean(p) for p in params], _clean(prefix))
    return (format_tags(tags or {}) + body).encode("utf-8", "replace") + b"\r\n"


def _cut(text: str, budget: int) -> int:
    """
    How many characters of C{text} fit in C{budget} UTF-8 bytes, cut where
    a reader sees a boundary: not before a combining mark, a zero-width
    joiner or a variation selector (nor after a joiner), and at the last
    space if one is in the second half.
    """
    size = 0
    end = 0
    for i, ch in enumerate(text):
        size += len(ch.encode("utf-8", "surrogatepass"))
        if size > budget:
            break
        end = i + 1
    else:
        return len(text)
    cut = end
    while cut > 1 and _joined(text, cut):
        cut -= 1
    if cut <= 1 and end >= 1:
        cut = end  # one huge cluster: cut inside it rather than not at all
    space = text.rfind(" ", 0, cut)
    if space >= cut // 2 and space > 0:
        return space + 1
    return max(cut, 1)


def _joined(text: str, i: int) -> bool:
    """Whether a cut before text[i] would split a visible character."""
    if i >= len(text):
        return False
    ch = text[i]
    if unicodedata.category(ch).startswith("M") or ch == _ZWJ or "\ufe00" <= ch <= "\ufe0f":
        return True
    if text[i - 1] == _ZWJ:
        return True
    # A regional-indicator pair (a flag) is one character to a reader.
    if "\U0001f1e6" <= ch <= "\U0001f1ff":
        run = 0
        j = i - 1
        while j >= 0 and "\U0001f1e6" <= text[j] <= "\U0001f1ff":
            run += 1
            j -= 1
        return run % 2 == 1
    return False


def split_text(text: str, budget: int) -> list[str]:
    """
    C{text} as pieces of at most C{budget} UTF-8 bytes each: a piece per
    line of it (blank lines dropped), long lines cut by L{_cut}. Joining
    the pieces of one line gives the line back.
    """
    budget = max(budget, 4)  # one character always fits
    pieces: list[str] = []
    for part in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        part = part.replace("\0", "")
        if not part.strip():
            continue
        while part:
            n = _cut(part, budget)
            pieces.append(part[:n])
            part = part[n:]
    return pieces


def text_lines(
    command: str, target: str, text: str, prefix: str, tags: dict[str, str] | None = None,
    max_line: int = MAX_LINE,
) -> list[bytes]:
    """
    An ocm message as C{command} (PRIVMSG, NOTICE) lines to C{target},
    each within C{max_line} bytes after its tags. A message of nothing but
    white space is sent as one line of a space, so that it is not lost.
    """
    fixed = len(_body(command, [target, "x"], prefix).encode("utf-8")) - 1 + 2  # + CRLF
    # Room for text: at least 64 bytes even after a pathologically long name.
    budget = max(64, max_line - fixed)
    pieces = split_text(text, budget) or [" "]
    return [line(command, [target, piece], prefix, tags) for piece in pieces]


def server_time(time_ms: int) -> str:
    """IRCv3 server-time: UTC to the millisecond, e.g. 2026-12-03T10:23:32.123Z."""
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def isupport_lines(nick: str, tokens: list[str], server: str, per_line: int = 13) -> list[bytes]:
    """RPL_ISUPPORT (005): at most 13 tokens a line (Modern IRC)."""
    out = []
    for i in range(0, len(tokens), per_line):
        params = [nick, *tokens[i : i + per_line], "are supported by this server"]
        out.append(line(irc.RPL_ISUPPORT, params, server))
    return out


def parse(raw: str) -> Message:
    """One line without its CRLF: its tags, prefix, command and parameters."""
    tags: dict[str, str] = {}
    rest = raw
    if rest.startswith("@"):
        head, sep, rest = rest.partition(" ")
        if not sep:
            raise BadLine("a line of tags and no command")
        for item in head[1:].split(";"):
            if not item:
                continue
            key, _, value = item.partition("=")
            tags[key] = unescape_tag_value(value)
        rest = rest.lstrip(" ")
    # Trailing white space other than a trailing parameter's is not part of it.
    if " :" not in rest:
        rest = rest.rstrip(" ")
    if not rest:
        raise BadLine("an empty line")
    try:
        prefix, command, params = irc.parsemsg(rest)
    except (ValueError, IndexError):
        raise BadLine("no command")
    if not command:
        raise BadLine("no command")
    return Message(command.upper(), params, prefix, tags)
