"""
A room's moderation state (PROTOCOL 1.2 §2 COMMAND, §4): who is banned, by
username and by the address they joined from, for the room's life or until
unbanned. Mutes live on the member (it is one flag on the datagram path);
the events and their numbering are the room service's.
"""

from __future__ import annotations

from ocm.server.limits import address_key
from ocm.wire.names import name_key

# Bans one room may hold: a host cannot grow the daemon's memory by banning
# names without end; past it a ban is refused (REFUSED says so).
MAX_BANS = 256


class BanList:
    """
    Banned usernames (casefolded), each with the address keys banned with
    it (an IPv4 address, or an IPv6 /64): a banned person cannot come back
    under another name from the same address.
    """

    __slots__ = ("_names",)

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, username: str) -> bool:
        return name_key(username) in self._names

    def ban(self, username: str, ip: str | None) -> bool:
        """Ban C{username} (and C{ip}'s key, if given); False if the list is full."""
        key = name_key(username)
        if key not in self._names and len(self._names) >= MAX_BANS:
            return False
        keys = self._names.get(key, frozenset())
        if ip:
            keys = keys | {address_key(ip)}
        self._names[key] = keys
        return True

    def unban(self, username: str) -> bool:
        """Lift the ban on C{username} and the addresses banned with it."""
        return self._names.pop(name_key(username), None) is not None

    def refuses(self, username: str, ip: str) -> bool:
        if not self._names:
            return False
        if name_key(username) in self._names:
            return True
        key = address_key(ip)
        return any(key in keys for keys in self._names.values())

    def names(self) -> list[str]:
        return sorted(self._names)

    def state(self) -> dict[str, list[str]]:
        """As saved across a restart."""
        return {name: sorted(keys) for name, keys in self._names.items()}

    @classmethod
    def from_state(cls, state: dict[str, list[str]]) -> BanList:
        bans = cls()
        for name, keys in list(state.items())[:MAX_BANS]:
            bans._names[name] = frozenset(keys)
        return bans
