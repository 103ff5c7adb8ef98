"""The front desk for the IRC tests: the daemon's own, hashing inline (task.Clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from ocm.server.desk import FrontDesk


def inline(f, *args):
    return defer.succeed(f(*args))


def make_desk(service, clock, **kw: Any) -> FrontDesk:
    kw.setdefault("offload", inline)
    return FrontDesk(service, clock, **kw)
