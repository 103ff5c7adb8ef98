"""
The web port's gate (issue 20, item 3): every TCP connection is counted at
accept, outside TLS and before any HTTP parsing, and has a whole-request
deadline.

twisted.web's own idle timeout restarts on every byte, and the WebSocket
caps apply only once a handshake is parsed, so 30 connections trickling a
header byte every 3 s all stayed open, and one address could take every
file descriptor. Here, as for TCRP:

- caps on open connections in all and per address (an IPv6 /64 is one
  address: L{ocm.server.limits.ConnectionCaps}, through the front desk's
  door, which also holds the daemon's address bans); past a cap, or from a
  banned address, the connection is closed at once, before TLS (nothing is
  written: a TLS handshake would cost more than the refusal), and counted;
- from accept, a connection has C{request_timeout} seconds to complete its
  request: for a page, its response written (then the next request on a
  kept-alive connection gets its own deadline, from there); for C{/ws},
  the WebSocket upgrade done (then the WebSocket's own liveness applies,
  and the gate only forwards bytes). A connection past its deadline in the
  middle of a request is aborted, however it trickles; one idle between
  requests is closed, and aborted if it still has not gone a deadline
  later (a client that does not read its response).

The HTTP side tells the gate with L{find} and L{GateProtocol.answered} /
L{GateProtocol.upgrading} (see L{ocm.web.site}).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from ocm.server.limits import ConnectionCaps
from ocm.server.rooms import normalize_ip


class GateProtocol(ProtocolWrapper):
    """One accepted connection: its address (as counted) and its deadline."""

    factory: "Gate"
    ip = ""
    _counted = False
    _upgraded = False
    _busy = False  # bytes came in since the last answered request
    _closing = False
    _deadline: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        self._arm()
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._upgraded:
            self._busy = True
        super().dataReceived(data)

    # -- what the HTTP side reports -----------------------------------------

    def answered(self) -> None:
        """A response was written: the next request has its own deadline, from now."""
        if not self._upgraded and not self._closing:
            self._busy = False
            self._arm()

    def upgrading(self, socket: Any) -> None:
        """
        C{/ws} handed the connection to C{socket} (an autobahn protocol):
        the deadline stops once its handshake is done (autobahn's
        C{is_open}, which fires only on success), at once if it already is.
        """
        is_open = getattr(socket, "is_open", None)
        if is_open is not None and hasattr(is_open, "addCallback"):
            is_open.addCallback(lambda _: self.upgraded())

    def upgraded(self) -> None:
        """The WebSocket is open: its own liveness rules from now on."""
        self._upgraded = True
        self._cancel()

    # -- the deadline ---------------------------------------------------------

    def _arm(self) -> None:
        self._cancel()
        self._deadline = self.factory.clock.callLater(self.factory.request_timeout, self._expired)

    def _cancel(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        if self._busy or self._closing:
            # In the middle of a request (or still not gone after a close):
            # whatever it trickles, it is over.
            self.factory.counts["deadline"] += 1
            transport.abortConnection()
            return
        # Kept alive with nothing asked: a clean close, and an abort if the
        # peer does not let it happen (a response it never reads).
        self._closing = True
        self.factory.idle_closed += 1
        self._deadline = self.factory.clock.callLater(self.factory.request_timeout, self._expired)
        transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._cancel()
        if self._counted:
            self._counted = False
            self.factory.door.release(self.ip)
        super().connectionLost(reason)


class Gate(WrappingFactory):
    """
    Wraps the web listener's factory (the Site, or TLS around it), so what
    it counts is TCP connections, through C{door}: anything with
    C{admit(ip)} (None, or why not) and C{release(ip)}, such as the front
    desk's L{ocm.server.desk.Door} (caps and address bans) or a bare
    L{ConnectionCaps} (the default, from C{max_connections} and
    C{max_per_address}). C{counts} gets one per refusal, keyed
    "connections" / "per_address" (the cap that was full), "banned", and
    "deadline" (aborted mid-request); C{idle_closed} counts kept-alive
    connections closed between requests, which is no refusal.
    """

    protocol = GateProtocol

    def __init__(
        self,
        wrapped: Any,
        *,
        clock: IReactorTime,
        request_timeout: float = 10.0,
        max_connections: int = 1000,
        max_per_address: int = 50,
        door: Any = None,
        counts: Counter[Any] | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.request_timeout = request_timeout
        self.door = door if door is not None else ConnectionCaps(max_connections, max_per_address)
        self.counts: Counter[Any] = counts if counts is not None else Counter()
        self.idle_closed = 0

    @property
    def caps(self) -> ConnectionCaps:
        """The counts themselves (the door's, or the gate's own)."""
        return getattr(self.door, "caps", self.door)

    def buildProtocol(self, addr: IAddress | None) -> GateProtocol | None:  # type: ignore[override]
        # A Unix socket's peer has no host: all of them are one address.
        ip = normalize_ip(str(getattr(addr, "host", "") or ""))
        refused = self.door.admit(ip)
        if refused is not None:
            self.counts[_reason(refused)] += 1
            return None  # the port closes the socket at once
        try:
            inner = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            self.door.release(ip)
            raise
        if inner is None:
            self.door.release(ip)
            return None
        gate = self.protocol(self, inner)
        gate.ip = ip
        gate._counted = True
        return gate


# A door's refusal is a ProtocolError whose status says which limit it was.
_BY_STATUS = {403: "banned", 429: "per_address", 503: "connections"}


def _reason(refusal: Any) -> str:
    if isinstance(refusal, str):
        return refusal  # ConnectionCaps: the cap's name
    status = int(getattr(refusal, "status", 0))
    return _BY_STATUS.get(status, str(status))


def find(transport: Any) -> GateProtocol | None:
    """
    The gate under a protocol's transport (itself, or a TLS layer above
    it), or None when the listener has no gate (a test's bare Site).
    """
    for _ in range(4):  # the gate, TLS: a couple of layers at most
        if transport is None:
            return None
        if isinstance(transport, GateProtocol):
            return transport
        transport = getattr(transport, "transport", None)
    return None
