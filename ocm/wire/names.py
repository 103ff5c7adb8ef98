"""
The rules for room names and usernames (PROTOCOL §1), shared by the daemon
and the client so that both refuse the same names with the same words.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 255

# Zero-width joiner: a format character, but emoji sequences need it.
_ALLOWED_FORMAT = {"\u200d"}
# Control characters, line/paragraph separators, and format characters such as
# the bidi overrides that let one name masquerade as another.
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def name_problem(name: str, what: str = "name") -> str | None:
    """Say why C{name} is not a valid room name or username, or None if it is."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        return f"{what} is empty"
    if size > MAX_NAME_BYTES:
        return f"{what} is {size} bytes long; the limit is {MAX_NAME_BYTES}"
    if name != name.strip():
        return f"{what} starts or ends with white space"
    for ch in name:
        if ch in _ALLOWED_FORMAT:
            continue
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return f"{what} contains a control character (U+{ord(ch):04X})"
    return None


def name_key(name: str) -> str:
    """The case-insensitive identity of a name: two names with one key clash."""
    return name.casefold()
