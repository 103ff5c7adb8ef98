"""
A front desk for the IRC tests: ocm.server.desk.FrontDesk where it exists,
else one with its interface over today's policy code (tcrp_server.answer,
its buckets, ConnectionCaps), so the IRC listener is tested against the
same rules either way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from ocm.server.limits import ConnectionCaps, address_key
from ocm.wire.tcrp import ProtocolError, Status


def inline(f, *args):
    """Hash passwords on the spot (tests run on task.Clock)."""
    return defer.succeed(f(*args))


try:
    from ocm.server.desk import FrontDesk as _FrontDesk
except ImportError:  # before the desk is on main
    _FrontDesk = None


@dataclass(frozen=True)
class _Answer:
    member: Any
    body: dict


class _Door:
    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.caps = ConnectionCaps(max_total, max_per_address)
        self.refused: Counter[str] = Counter()

    @property
    def active(self) -> int:
        return self.caps.active

    def admit(self, ip: str) -> ProtocolError | None:
        full = self.caps.admit(ip)
        if full is None:
            return None
        self.refused[full] += 1
        if full == "connections":
            return ProtocolError(Status.UNAVAILABLE, "the server has all the connections it can take; try again soon", retry_after=1)
        return ProtocolError(Status.TOO_MANY, "too many open connections from your address", retry_after=1)

    def release(self, ip: str) -> None:
        self.caps.release(ip)


class _InterimDesk:
    def __init__(self, service, clock, request_rate=5.0, request_burst=50.0, offload=inline, **kw: Any) -> None:
        from ocm.server.tcrp_server import TCRPFactory

        self.service = service
        self.clock = clock
        self._tcrp = TCRPFactory(service, clock, request_rate=request_rate, request_burst=request_burst, offload=offload)
        self.doors: dict[str, _Door] = {}

    def door(self, name: str, max_total: int, max_per_address: int) -> _Door:
        door = self.doors[name] = _Door(max_total, max_per_address)
        return door

    def charge_request(self, ip: str) -> None:
        requests = self._tcrp.requests
        if not requests.rate:
            return
        now = self.clock.seconds()
        bucket = requests.get(address_key(ip), now)
        if not bucket.take(now):
            raise ProtocolError(Status.TOO_MANY, "too many requests from your address; slow down",
                                retry_after=bucket.wait(now))

    async def answer(self, request, ip, gone, transport=None):
        from ocm.server.tcrp_server import answer

        got = await answer(self._tcrp, request, ip, gone, transport)
        if got is None:
            return None
        return _Answer(*got)


def make_desk(service, clock, **kw: Any):
    if _FrontDesk is not None:
        kw.setdefault("offload", inline)
        return _FrontDesk(service, clock, **kw)
    return _InterimDesk(service, clock, **kw)
