"""
Rate limits as token buckets (issues 4 and 13): requests per address, wrong
passwords per person and per address and room, datagrams per member. Plain
arithmetic on times the caller passes in, so a fake clock drives them in
tests.
"""

from __future__ import annotations

import ipaddress
from typing import Hashable


def address_key(ip: str) -> str:
    """
    What "one address" means to a limit: an IPv4 address, or an IPv6 /64.
    One IPv6 host or LAN gets a whole /64, so per-address limits keyed by
    the full address would give it 2**64 budgets.
    """
    if ":" not in ip:
        return ip
    try:
        net = ipaddress.IPv6Network((ip.split("%", 1)[0], 64), strict=False)
    except ValueError:
        return ip
    return str(net)


class TokenBucket:
    """
    Holds up to C{burst} tokens and gains C{rate} a second. A C{rate} of 0
    means no limit at all.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> float:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.tokens = tokens
        self.stamp = now
        return tokens

    def take(self, now: float) -> bool:
        if not self.rate:
            return True
        if self._refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def charge(self, now: float) -> None:
        """
        Pay for something after the fact, into debt if need be: checks that
        were in flight together all pay, and L{ready} stays false until the
        debt is repaid, so the long-run rate holds exactly.
        """
        if self.rate:
            self._refill(now)
            self.tokens -= 1.0

    def ready(self, now: float) -> bool:
        """
        Whether a token is there, without taking it; a rounding error short
        of one counts, so a client that waits exactly L{wait} is not early.
        """
        return not self.rate or self._refill(now) >= 1.0 - 1e-9

    def wait(self, now: float) -> float:
        """Seconds until the next token (a debt included)."""
        if not self.rate:
            return 0.0
        return max(0.0, (1.0 - self._refill(now)) / self.rate)

    def full(self, now: float) -> bool:
        return not self.rate or self._refill(now) >= self.burst


class Buckets:
    """
    One bucket per key, made on first use. Full buckets carry no state worth
    keeping, so L{prune} forgets them; past C{max_keys} after pruning, the
    map starts afresh rather than refusing newcomers (failing open on the
    rate limit, never on the service).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self.prune(now)
                if len(self._buckets) >= self.max_keys:
                    self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def take(self, key: Hashable, now: float) -> bool:
        return not self.rate or self.get(key, now).take(now)

    def prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]


class ConnectionCaps:
    """
    Open connections in all and per address, for one listener. It computes
    the address key itself on both L{admit} and L{release}, so what is
    counted in is what is counted out (an IPv6 /64 is one address: issue
    20's lockout came from admitting under the /64 and releasing under the
    full address); a count never goes below zero and a key at zero is gone.
    """

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.active = 0
        self.per_address: dict[str, int] = {}

    def full(self, ip: str) -> str | None:
        """Which cap a new connection from C{ip} would pass: "connections", "per_address", or None."""
        if self.active >= self.max_total:
            return "connections"
        if self.per_address.get(address_key(ip), 0) >= self.max_per_address:
            return "per_address"
        return None

    def admit(self, ip: str) -> str | None:
        """Count a connection in; if a cap is full, count nothing and say which (see L{full})."""
        refused = self.full(ip)
        if refused is None:
            key = address_key(ip)
            self.active += 1
            self.per_address[key] = self.per_address.get(key, 0) + 1
        return refused

    def release(self, ip: str) -> None:
        """Count out a connection L{admit} let in from C{ip}."""
        key = address_key(ip)
        count = self.per_address.get(key, 0)
        if count <= 0:
            return  # never admitted, or released twice: nothing to give back
        if count == 1:
            del self.per_address[key]
        else:
            self.per_address[key] = count - 1
        self.active = max(0, self.active - 1)
