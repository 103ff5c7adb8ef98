"""
The daemon as one Twisted service: the TCRP listener, the UDP relay and the
room service they share, started and stopped in the right order.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.relay import Relay, enlarge_buffers
from ocm.rooms import RoomService


class OcmService(service.Service):
    """
    Binds both ports in C{privilegedStartService} (before twistd drops
    privileges), starts the liveness sweep, and on stop sends CLOSED to every
    member while the UDP socket is still open, then closes the ports.
    """

    log = Logger()
    tcp: IListeningPort | None = None
    udp: IListeningPort | None = None

    def __init__(
        self,
        rooms: RoomService,
        tcp_endpoint: IStreamServerEndpoint,
        tcp_factory: Any,
        udp_port: int,
        interface: str,
        reactor: Any,
        banner: list[str] | None = None,
    ) -> None:
        self.rooms = rooms
        self.relay = Relay(rooms)
        self.tcp_endpoint = tcp_endpoint
        self.tcp_factory = tcp_factory
        self.udp_port_number = udp_port
        self.interface = interface
        self.reactor = reactor
        self.banner = banner or []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def _listen(self) -> None:
        if self.udp is not None:
            return
        self.udp = self.reactor.listenUDP(
            self.udp_port_number, self.relay, interface=self.interface, maxPacketSize=8192
        )
        enlarge_buffers(self.udp.socket)
        results: list[Any] = []
        self.tcp_endpoint.listen(self.tcp_factory).addBoth(results.append)
        if not results:
            raise RuntimeError("the TCP endpoint did not listen at once")
        if isinstance(results[0], Failure):
            self.udp.stopListening()
            self.udp = None
            results[0].raiseException()
        self.tcp = results[0]

    def startService(self) -> None:
        self._listen()
        super().startService()
        self.rooms.start()
        tcp_host = self.tcp.getHost()
        self.log.info(
            "ocm listening: TCRP on {tcp}, UDP on port {udp}",
            tcp=f"{getattr(tcp_host, 'host', '')}:{getattr(tcp_host, 'port', tcp_host)}",
            udp=self.rooms.udp_port,
        )
        for line in self.banner:
            self.log.info("{line}", line=line)

    @property
    def tcp_port(self) -> int:
        return self.tcp.getHost().port

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.rooms.stop()
        waits = []
        for port in (self.tcp, self.udp):
            if port is not None:
                waits.append(defer.maybeDeferred(port.stopListening))
        self.tcp = self.udp = None
        return defer.gatherResults(waits)
