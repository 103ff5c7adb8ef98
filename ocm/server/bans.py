"""
Daemon-wide address bans, the operator's (ocm-admin's ``ban-address``): an
address, or an IPv6 /64 as every limit counts one, refused for a time by
every way in (the front desk's doors for TCRP, WebSocket and IRC, at
accept). Datagrams need no check: ``ban-address`` also kicks the address's
members, so no token from it lives (ocm.admin.server). Bounded: at most C{max_bans} at once, expired ones pruned.
Plain arithmetic on times the caller passes in.
"""

from __future__ import annotations

import ipaddress

from ocm.server.limits import address_key

MAX_BANS = 10_000


class BanError(ValueError):
    """A ban that cannot be made: a bad address or duration, or too many bans."""


def ban_key(address: str) -> str:
    """The key a ban is held under: the address checked, an IPv6 one as its /64."""
    address = address.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise BanError(f"{address[:60]!r} is not an IP address")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address_key(str(ip))


class AddressBans:
    def __init__(self, max_bans: int = MAX_BANS) -> None:
        self.max_bans = max_bans
        self._until: dict[str, float] = {}  # key -> end, in clock seconds

    def __len__(self) -> int:
        return len(self._until)

    def ban(self, address: str, seconds: float, now: float) -> str:
        """Ban C{address} for C{seconds} from C{now}; returns the key banned (an IPv6 /64)."""
        if not 0 < seconds <= 366 * 86400:
            raise BanError("a ban lasts more than 0 seconds and at most a year")
        key = ban_key(address)
        if key not in self._until and len(self._until) >= self.max_bans:
            self.prune(now)
            if len(self._until) >= self.max_bans:
                raise BanError(f"there are already {self.max_bans} address bans")
        self._until[key] = now + seconds
        return key

    def unban(self, address: str) -> bool:
        return self._until.pop(ban_key(address), None) is not None

    def banned(self, ip: str, now: float) -> bool:
        """Whether C{ip} (as a peer's address is given) is banned now. On every way in: cheap when empty."""
        if not self._until:
            return False
        try:
            key = ban_key(ip)
        except BanError:
            return False
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def active(self, now: float) -> dict[str, float]:
        """Every ban in force: key -> seconds left."""
        self.prune(now)
        return {key: until - now for key, until in self._until.items()}

    def prune(self, now: float) -> None:
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]
