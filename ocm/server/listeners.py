"""
Listeners as Twisted services: a stream endpoint (TCRP, the web page, IRC,
metrics) or the UDP socket, each a child of the daemon's C{MultiService}.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory

from ocm.server.relay import enlarge_buffers


class StreamListener(internet.StreamServerEndpointService):
    """
    Twisted's endpoint service, binding at once (a failure raises where the
    daemon starts, not later in a log), keeping its port for the status
    line, and able to listen again after a stop.
    """

    _raiseSynchronously = True
    port: IListeningPort | None = None

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, factory: Factory) -> None:
        super().__init__(endpoint, factory)
        self.setName(name)

    def privilegedStartService(self) -> None:
        if self._waitingForPort is not None:
            return
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except BaseException:
            self._waitingForPort = None
            raise
        self._waitingForPort.addCallback(self._listening)
        if self.port is None:
            self._waitingForPort = None
            raise RuntimeError(f"the {self.name} endpoint did not listen at once")

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        return port

    def stopService(self) -> defer.Deferred:
        if self._waitingForPort is None:
            self.running = False
            return defer.succeed(None)
        d = super().stopService()
        self._waitingForPort = None
        self.port = None
        return d


class DatagramListener(service.Service):
    """The UDP relay's socket, with big buffers so bursts queue rather than drop."""

    port: Any = None

    def __init__(self, port: int | tuple[str, int], protocol: DatagramProtocol, interface: str, reactor: Any) -> None:
        """C{port}: a number to bind, or C{("fd", n)}: a socket systemd passed (socket activation)."""
        self.setName("udp")
        self.number = port
        self.protocol = protocol
        self.interface = interface
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        if self.port is None:
            if isinstance(self.number, tuple):
                fd = self.number[1]
                # systemd passes sockets blocking unless told NonBlocking=;
                # the reactor's read loop must never wait on one.
                os.set_blocking(fd, False)
                family = socket.socket(fileno=fd)
                try:
                    af = family.family
                finally:
                    family.detach()
                # Adopted, not bound: datagrams sent while no daemon ran
                # waited in this socket's queue, and are served now.
                self.port = self.reactor.adoptDatagramPort(fd, af, self.protocol, maxPacketSize=8192)
            else:
                self.port = self.reactor.listenUDP(
                    self.number, self.protocol, interface=self.interface, maxPacketSize=8192
                )
            enlarge_buffers(self.port.socket)
        super().privilegedStartService()

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
