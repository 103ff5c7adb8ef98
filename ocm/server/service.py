"""
The daemon as one Twisted service: the TCRP listener, the UDP relay and the
room service they share, started and stopped in the right order.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from collections import Counter

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ocm.server.hashing import HashPool
from ocm.server.relay import Relay, enlarge_buffers
from ocm.server.rooms import RoomService
from ocm.ops.systemd import Notifier
from ocm.server.tcrp_server import TCRPFactory


class OcmService(service.Service):
    """
    Binds both ports in C{privilegedStartService} (before twistd drops
    privileges), starts the liveness sweep, and on stop sends CLOSED to every
    member while the UDP socket is still open, then closes the ports.
    Tells systemd when it is ready and when it stops (L{Notifier}); with
    C{metrics_factory} set, serves it (ocm.ops.metrics) on C{metrics_endpoint}
    until both other ports are closed.
    """

    log = Logger()
    tcp: IListeningPort | None = None
    udp: IListeningPort | None = None
    # --web: (endpoint, factory, chat factory), set by makeService; its port.
    web: tuple[Any, Any, Any] | None = None
    web_port: IListeningPort | None = None
    metrics: IListeningPort | None = None
    metrics_endpoint: IStreamServerEndpoint | None = None
    metrics_factory: Any = None
    stopping = False

    def __init__(
        self,
        rooms: RoomService,
        tcrp: TCRPFactory,
        tcp_endpoint: IStreamServerEndpoint,
        tcp_factory: Any,
        udp_port: int,
        interface: str,
        reactor: Any,
        banner: list[str] | None = None,
        hashing: HashPool | None = None,
        directory: Any = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.rooms = rooms
        # Cluster mode: the room directory (ocm.cluster.directory), else None.
        self.directory = directory
        self.tcrp = tcrp
        self.relay = Relay(rooms)
        self._minutely = LoopingCall(self.minutely)
        self._minutely.clock = reactor
        self._reported: Counter[str] = Counter()
        self.tcp_endpoint = tcp_endpoint
        self.tcp_factory = tcp_factory
        self.udp_port_number = udp_port
        self.interface = interface
        self.reactor = reactor
        self.banner = banner or []
        self.hashing = hashing
        self.notifier = notifier or Notifier(None)

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
        if self.web is not None:
            results = []
            self.web[0].listen(self.web[1]).addBoth(results.append)
            if not results or isinstance(results[0], Failure):
                self.udp.stopListening()
                self.tcp.stopListening()
                self.udp = self.tcp = None
                if results:
                    results[0].raiseException()
                raise RuntimeError("the web endpoint did not listen at once")
            self.web_port = results[0]
        if self.metrics_factory is not None:
            results = []
            self.metrics_endpoint.listen(self.metrics_factory).addBoth(results.append)
            if not results or isinstance(results[0], Failure):
                for port in (self.tcp, self.udp, self.web_port):
                    if port is not None:
                        port.stopListening()
                self.tcp = self.udp = self.web_port = None
                if results:
                    results[0].raiseException()
                raise RuntimeError("the metrics endpoint did not listen at once")
            self.metrics = results[0]

    def startService(self) -> None:
        self._listen()
        self.stopping = False
        super().startService()
        if self.hashing is not None:
            self.hashing.start()
        self.rooms.start()
        self._minutely.start(60, now=False)
        tcp_host = self.tcp.getHost()
        self.log.info(
            "ocm listening: TCRP on {tcp}, UDP on port {udp}",
            tcp=f"{getattr(tcp_host, 'host', '')}:{getattr(tcp_host, 'port', tcp_host)}",
            udp=self.rooms.udp_port,
        )
        for line in self.banner:
            self.log.info("{line}", line=line)
        if self.directory is not None:
            self.directory.start(self.tcp_port)
        if self.metrics is not None:
            self.log.info("metrics on http://{where}/metrics", where=_where(self.metrics))
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        """Both ports listen and the reactor turns: tell systemd, start its watchdog."""
        if not self.running:
            return
        self.notifier.notify("READY=1", "STATUS=" + self.status())
        self.notifier.start_watchdog(self.reactor)

    def status(self) -> str:
        """One line for systemctl status: what is served, and how busy."""
        tls = "TLS" if self.tcp_factory is not self.tcrp else "plain TCP"
        metrics = f", metrics on {_where(self.metrics)}" if self.metrics is not None else ""
        return (
            f"TCRP ({tls}) on {_where(self.tcp)}, UDP on port {self.rooms.udp_port}{metrics}; "
            f"{len(self.rooms.rooms)} rooms, {self.rooms.member_count} members"
        )

    def healthy(self) -> bool:
        """Running, not stopping, and both chat listeners up."""
        return (
            self.running and not self.stopping
            and all(p is not None and getattr(p, "connected", True) for p in (self.tcp, self.udp))
        )

    def minutely(self) -> None:
        """Forget idle rate-limit state; log what was dropped, if anything."""
        self.tcrp.prune()
        counts = self.counts()
        moved = counts - self._reported
        self._reported = counts
        if self.notifier.enabled:
            self.notifier.notify("STATUS=" + self.status())
        if moved:
            self.log.info(
                "in the last minute, dropped or refused: {summary}",
                summary=", ".join(f"{k} {v}" for k, v in sorted(moved.items())),
            )

    def counts(self) -> Counter[str]:
        """Every drop and refusal since start, by reason."""
        counts: Counter[str] = Counter({f"datagram {k}": v for k, v in self.rooms.drops.items()})
        counts.update({f"request {k}": v for k, v in self.tcrp.refusals.items()})
        if self.web is not None:
            counts.update({f"web {k}": v for k, v in self.web[2].refusals.items()})
        return counts

    @property
    def tcp_port(self) -> int:
        return self.tcp.getHost().port

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.stopping = True
        self.notifier.stop_watchdog()
        self.notifier.notify("STOPPING=1", "STATUS=closing rooms")
        if self._minutely.running:
            self._minutely.stop()
        self.rooms.stop()
        if self.hashing is not None:
            self.hashing.stop()
        waits = []
        if self.directory is not None:
            # After rooms.stop(): their names are released first.
            waits.append(defer.ensureDeferred(self.directory.stop()))
        for port in (self.tcp, self.udp, self.web_port):
            if port is not None:
                waits.append(defer.maybeDeferred(port.stopListening))
        self.tcp = self.udp = self.web_port = None
        # /healthz says 503 until the chat ports are closed, then goes too.
        d = defer.gatherResults(waits)
        d.addBoth(self._close_metrics)
        return d

    def _close_metrics(self, result: Any) -> Any:
        port, self.metrics = self.metrics, None
        if port is None:
            return result
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: result)


def _where(port: IListeningPort | None) -> str:
    address = port.getHost() if port is not None else None
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", address))
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
