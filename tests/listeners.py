"""Listeners over a real front desk, for the unit tests that drive one by hand."""

from __future__ import annotations

from typing import Any

from ocm.server.desk import FrontDesk
from ocm.server.tcrp_server import TCRPFactory


def tcrp_factory(
    service: Any,
    clock: Any,
    *,
    max_connections: int = 1000,
    max_per_address: int = 50,
    max_payload: int | None = None,
    request_timeout: float = 10.0,
    **desk: Any,
) -> TCRPFactory:
    """A TCRP factory as makeService builds it: its own door on a desk of its own."""
    front = FrontDesk(service, clock, **desk)
    kw: dict[str, Any] = {"request_timeout": request_timeout}
    if max_payload is not None:
        kw["max_payload"] = max_payload
    return TCRPFactory(front, front.door("tcrp", max_connections, max_per_address), **kw)
