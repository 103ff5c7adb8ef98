"""
The UDP relay: a thin C{DatagramProtocol} between the socket and the room
service, PROTOCOL §2–§3.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from ocm.server.rooms import RoomService

# Send errors that mean "this one datagram is lost", never "stop serving".
_TRANSIENT = {
    errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ECONNREFUSED,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EINVAL,
    errno.EPERM, errno.EACCES,
}


class Relay(DatagramProtocol):
    log = Logger()
    noisy = False

    def __init__(self, service: RoomService) -> None:
        self.service = service
        self.send_errors = 0
        # DatagramProtocol.datagramReceived is the service's own method: no
        # frame of ours per datagram. The service catches its own bugs
        # (drops "internal").
        self.datagramReceived = service.datagram_received  # type: ignore[method-assign]

    def startProtocol(self) -> None:
        self.service.udp_port = self.transport.getHost().port
        # udp.Port.write re-validates the address string on every call; the
        # addresses here came from recvfrom, so the socket's own sendto is
        # safe, and it halves the cost of a delivery. The service calls it
        # directly (no frame of ours per delivery) and reports failures.
        self.service.send = self.transport.socket.sendto
        self.service.send_failed = self.send_failed

    def stopProtocol(self) -> None:
        self.service.send = lambda data, address: None

    def send_failed(self, error: OSError, address: Any) -> None:
        if error.errno not in _TRANSIENT:
            self.log.warn("UDP send to {address} failed: {error}", address=address, error=error)
        self.send_errors += 1


def enlarge_buffers(sock: socket.socket, size: int = 4 * 1024 * 1024) -> None:
    """Ask for big socket buffers so bursts queue instead of being dropped."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass
