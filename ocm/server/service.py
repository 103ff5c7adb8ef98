"""
The daemon as a tree of Twisted services: one L{OcmService} (a
C{MultiService}) whose children are the listeners (UDP relay, TCRP, and the
web page and metrics when asked for), all sharing one room service and one
front desk, started and stopped in the right order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ocm.ops.systemd import Notifier
from ocm.server.desk import FrontDesk
from ocm.server.hashing import HashPool
from ocm.server.listeners import DatagramListener, StreamListener
from ocm.server import state
from ocm.server.relay import Relay
from ocm.server.rooms import RoomService
from ocm.server.tcrp_server import TCRPFactory

if TYPE_CHECKING:
    from ocm.cluster.directory import Directory
    from ocm.irc.listener import IRCFactory
    from ocm.web.chat import WebChatFactory


class OcmService(service.MultiService):
    """
    Binds every listener in C{privilegedStartService} (before twistd drops
    privileges; a later bind that fails stops the earlier ones again),
    starts the liveness sweep, and on stop sends CLOSED to every member
    while the UDP socket is still open, then closes the chat listeners, and
    the metrics listener last (/healthz says 503 until the others are
    closed). Tells systemd when it is ready and when it stops (L{Notifier}).
    """

    log = Logger()
    stopping = False

    def __init__(
        self,
        rooms: RoomService,
        desk: FrontDesk,
        tcrp: TCRPFactory,
        tcrp_listener: StreamListener,
        udp_port: int | tuple[str, int],
        interface: str,
        reactor: Any,
        *,
        banner: list[str] | None = None,
        hashing: HashPool | None = None,
        directory: Directory | None = None,
        notifier: Notifier | None = None,
        web: tuple[StreamListener, WebChatFactory] | None = None,
        irc: tuple[StreamListener, IRCFactory] | None = None,
        metrics_endpoint: IStreamServerEndpoint | None = None,
        tls: bool = True,
        keep_rooms: Path | None = None,
        admin: StreamListener | None = None,
    ) -> None:
        super().__init__()
        self.rooms = rooms
        self.desk = desk
        self.directory = directory
        self.tcrp = tcrp
        self.tls = tls
        # --keep-rooms: where rooms are saved at stop and restored at start.
        self.keep_rooms = keep_rooms
        self._restored = False
        self.relay = Relay(rooms)
        self._minutely = LoopingCall(self.minutely)
        self._minutely.clock = reactor
        self._reported: Counter[str] = Counter()
        self.reactor = reactor
        self.banner = banner or []
        self.hashing = hashing
        self.notifier = notifier or Notifier(None)
        # The children, in the order they bind; the chat ones stop first.
        self.udp_listener = DatagramListener(udp_port, self.relay, interface, reactor)
        self.tcrp_listener = tcrp_listener
        self.chat_listeners: list[service.Service] = [self.udp_listener, tcrp_listener]
        self.web_chat: WebChatFactory | None = None
        self.web_listener: StreamListener | None = None
        if web is not None:
            self.web_listener, self.web_chat = web
            self.chat_listeners.append(self.web_listener)
        self.irc_factory: IRCFactory | None = None
        self.irc_listener: StreamListener | None = None
        if irc is not None:
            self.irc_listener, self.irc_factory = irc
            self.chat_listeners.append(self.irc_listener)
        # The operator's admin socket (ocm-admin): bound last, stopped first.
        self.admin_listener = admin
        if admin is not None:
            self.chat_listeners.append(admin)
        self.metrics_listener: StreamListener | None = None
        for child in self.chat_listeners:
            child.setServiceParent(self)
        if metrics_endpoint is not None:
            from ocm.ops import metrics

            self.metrics_listener = StreamListener("metrics", metrics_endpoint, metrics.site(self))
            self.metrics_listener.setServiceParent(self)

    # -- the ports, for the status line, tests and metrics ---------------------

    @property
    def tcp(self) -> IListeningPort | None:
        return self.tcrp_listener.port

    @property
    def udp(self) -> Any:
        return self.udp_listener.port

    @property
    def web_port(self) -> IListeningPort | None:
        return self.web_listener.port if self.web_listener is not None else None

    @property
    def metrics(self) -> IListeningPort | None:
        return self.metrics_listener.port if self.metrics_listener is not None else None

    @property
    def tcp_port(self) -> int:
        return self.tcp.getHost().port

    # -- life -------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Before any listener: a CREATE must not take a kept room's name.
        self._restore()
        started: list[service.IService] = []
        try:
            for child in self:
                child.privilegedStartService()
                started.append(child)
        except BaseException:
            for child in reversed(started):
                child.stopService()
            raise
        service.Service.privilegedStartService(self)

    def _restore(self) -> None:
        if self.keep_rooms is None or self._restored:
            return
        self._restored = True
        now = self.reactor.seconds()
        try:
            saved = state.take(self.keep_rooms, now)
        except (state.StateError, OSError) as e:
            self.log.warn("saved rooms not restored: {why}", why=str(e))
            return
        if saved is None:
            return
        rooms, members = state.restore(self.rooms, saved, now)
        self.log.info(
            "restored {rooms} rooms with {members} members, saved {age:.1f} s ago",
            rooms=rooms, members=members, age=now - saved["saved_at"],
        )

    def startService(self) -> None:
        self.privilegedStartService()
        self.stopping = False
        super().startService()
        if self.hashing is not None:
            self.hashing.start()
        self.rooms.start()
        self._minutely.start(60, now=False)
        self.log.info(
            "ocm listening: TCRP on {tcp}, UDP on port {udp}",
            tcp=_where(self.tcp), udp=self.rooms.udp_port,
        )
        for line in self.banner:
            self.log.info("{line}", line=line)
        if self.directory is not None:
            self.directory.start(self.tcp_port)
        if self.metrics is not None:
            self.log.info("metrics on http://{where}/metrics", where=_where(self.metrics))
        self.reactor.callWhenRunning(self._ready)

    def _ready(self) -> None:
        """Every port listens and the reactor turns: tell systemd, start its watchdog."""
        if not self.running:
            return
        self.notifier.notify("READY=1", "STATUS=" + self.status())
        self.notifier.start_watchdog(self.reactor)

    def status(self) -> str:
        """One line for systemctl status: what is served, and how busy."""
        tls = "TLS" if self.tls else "plain TCP"
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
        self.desk.prune()
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
        if self.web_chat is not None:
            counts.update({f"web {k}": v for k, v in self.web_chat.refusals.items()})
        if self.irc_factory is not None:
            counts.update({f"irc {k}": v for k, v in self.irc_factory.refusals.items()})
        return counts

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        self.stopping = True
        self.notifier.stop_watchdog()
        self.notifier.notify("STOPPING=1", "STATUS=closing rooms")
        if self._minutely.running:
            self._minutely.stop()
        # CLOSED, or RESTARTING, goes out while the UDP socket is still open;
        # then the kept rooms are saved, and nothing more is sent.
        self.rooms.stop(keep=self.keep_rooms is not None)
        if self.keep_rooms is not None:
            self._save()
        if self.hashing is not None:
            self.hashing.stop()
        waits = []
        if self.directory is not None:
            # After rooms.stop(): their names are released first.
            waits.append(defer.ensureDeferred(self.directory.stop()))
        waits.extend(defer.maybeDeferred(child.stopService) for child in reversed(self.chat_listeners))
        try:
            yield defer.gatherResults(waits, consumeErrors=True)
        finally:
            # /healthz says 503 until the chat ports are closed, then goes too.
            if self.metrics_listener is not None:
                yield self.metrics_listener.stopService()


    def _save(self) -> None:
        try:
            rooms, members = state.save(self.rooms, self.keep_rooms, self.reactor.seconds())
        except OSError as e:
            self.log.error("could not save the rooms for the restart: {why}", why=str(e))
            return
        if rooms:
            self.log.info("saved {rooms} rooms with {members} members for the restart",
                          rooms=rooms, members=members)
        self._restored = False


def _where(port: IListeningPort | None) -> str:
    address = port.getHost() if port is not None else None
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", address))
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
