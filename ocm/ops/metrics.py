"""
The --metrics listener: Prometheus metrics at /metrics and a health check at
/healthz, over twisted.web, with the official prometheus_client.

The datagram path pays nothing for this: the room service, the relay and the
TCRP factory keep plain integers and Counters where things happen, and
L{OcmCollector} reads them when Prometheus scrapes. Only the join duration is
a prometheus_client Histogram, observed once per TCRP join.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ocm import __version__
from ocm.wire.tcrp import Op

if TYPE_CHECKING:
    from ocm.server.service import OcmService

# Labels every scrape shows, at 0 until they happen, so rate() and alerts
# see a series from the start.
DATAGRAM_DROP_REASONS = (
    "oversize", "malformed", "unknown", "address", "auth", "stale", "replay", "flood", "internal",
)
RATE_LIMITS = ("connections", "per_address", "request_rate", "password")
OPERATIONS = {0: "none", Op.CREATE_ROOM: "create_room", Op.JOIN_ROOM: "join_room", Op.LIST_ROOMS: "list_rooms"}
# The room service's RoomService.stats keys, and the metric each becomes.
STATS = (
    ("delivered", "ocm_deliveries_total", "Events sent to members over UDP (one per recipient)."),
    ("echo", "ocm_echoes_total", "ECHO events sent to the senders of SEND messages."),
    ("duplicate", "ocm_send_duplicates_total",
     "Retransmitted SENDs recognised and not relayed again (answered with ECHO only)."),
    ("history_request", "ocm_history_requests_total", "HISTORY requests served."),
    ("history_event", "ocm_history_events_total", "HISTORY events sent in answer to them."),
    ("expired", "ocm_history_expired_total", "EXPIRED events sent (a HISTORY range older than the room keeps)."),
    ("pong", "ocm_pongs_total", "PONGs sent in answer to 1.2 members' heartbeats."),
    ("tombstone", "ocm_tombstone_answers_total",
     "Removed 1.2 members answered with the event that removed them (tombstones)."),
    ("command", "ocm_commands_total", "Moderation COMMANDs carried out or refused (retransmissions not counted)."),
)
# Join durations on loopback are milliseconds; with a password hash or a
# slow link, up to the request timeout.
JOIN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OcmCollector(Collector):
    """Reads the daemon's own counters at scrape time."""

    def __init__(self, service: OcmService) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        svc = self.service
        rooms, tcrp = svc.rooms, svc.tcrp
        stats = getattr(rooms, "stats", {})
        drops = rooms.drops

        yield _gauge("ocm_build_info", "ocm's version; always 1.", ["version"], [([__version__], 1)])
        yield GaugeMetricFamily("ocm_up", "1 while both listeners are up and the daemon is not stopping.",
                                value=1 if svc.healthy() else 0)
        yield GaugeMetricFamily("ocm_rooms", "Rooms open now.", value=len(rooms.rooms))
        yield GaugeMetricFamily("ocm_members", "Members in all rooms now.", value=rooms.member_count)
        yield GaugeMetricFamily("ocm_tcrp_connections", "TCRP connections open now.", value=tcrp.active)

        requests = CounterMetricFamily(
            "ocm_tcrp_requests", "TCRP requests answered, by operation and status (none: refused before the header).",
            labels=["operation", "status"],
        )
        for (op, status), n in sorted(getattr(tcrp, "answered", {}).items()):
            requests.add_metric([OPERATIONS.get(op, str(op)), str(int(status))], n)
        yield requests

        dropped_conns = CounterMetricFamily(
            "ocm_tcrp_dropped", "TCRP connections closed without an answer, by reason.", labels=["reason"]
        )
        for reason in ("timeout", "shed"):
            dropped_conns.add_metric([reason], tcrp.refusals.get(reason, 0))
        yield dropped_conns

        yield CounterMetricFamily(
            "ocm_tls_handshake_failures", "TCRP connections whose TLS handshake failed.",
            value=getattr(tcrp, "tls_failures", 0),
        )

        limited = CounterMetricFamily("ocm_rate_limited", "Requests refused by a limit, by limit.", labels=["limit"])
        counts = getattr(tcrp, "limited", {})
        for limit in sorted(set(RATE_LIMITS) | set(counts)):
            limited.add_metric([limit], counts.get(limit, 0))
        yield limited

        dropped = CounterMetricFamily("ocm_datagrams_dropped", "Datagrams dropped, by reason.", labels=["reason"])
        for reason in sorted(set(DATAGRAM_DROP_REASONS) | set(drops)):
            if reason != "send":
                dropped.add_metric([reason], drops.get(reason, 0))
        yield dropped
        yield CounterMetricFamily(
            "ocm_datagrams_received", "Datagrams received from clients, dropped ones included.",
            value=stats.get("received", 0),
        )
        yield CounterMetricFamily(
            "ocm_send_errors", "Deliveries the socket refused (each one event lost for one member).",
            value=drops.get("send", 0),
        )
        for key, name, doc in STATS:
            yield CounterMetricFamily(name[: -len("_total")], doc, value=stats.get(key, 0))

        # Cluster mode: entries read from Redis and ignored as invalid (planted, or corrupt).
        store = getattr(getattr(svc, "directory", None), "store", None)
        if store is not None and hasattr(store, "invalid"):
            ignored = CounterMetricFamily(
                "ocm_cluster_entries_ignored",
                "Room entries read from Redis and ignored, by the field no node of ocm would write so.",
                labels=["field"],
            )
            for field in ("key", "name", "members", "password", "tcp", "node"):
                ignored.add_metric([field], store.invalid.get(field, 0))
            yield ignored

        # The password-hashing pool, where the daemon has one (OcmService.hashing).
        pool = getattr(svc, "hashing", None)
        if pool is not None:
            yield GaugeMetricFamily("ocm_password_hashes_running", "Password hashes running now.",
                                    value=getattr(pool, "running", 0))
            yield GaugeMetricFamily("ocm_password_hashes_queued", "Password hashes waiting for a thread now.",
                                    value=getattr(pool, "queued", 0))
            yield CounterMetricFamily("ocm_password_hashes", "Password hashes and checks done.",
                                      value=getattr(pool, "done", 0))
            yield CounterMetricFamily(
                "ocm_password_hashes_refused", "Password hashes refused with a full queue (503 with retry_after).",
                value=getattr(pool, "refused", 0),
            )


def _gauge(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class _ProcessCollector(ProcessCollector):
    """
    The standard process metrics, also under the unit's ProcSubset=pid,
    which hides /proc/stat (the boot time): then it comes from CLOCK_BOOTTIME.
    """

    def _boot_time(self) -> float:
        try:
            btime = super()._boot_time()
            if btime:
                return btime
        except OSError:
            pass
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Metrics:
    """One daemon's registry: its collector, the join histogram, the standard ones."""

    def __init__(self, service: OcmService, proc: str = "/proc") -> None:
        self.registry = CollectorRegistry()
        self.registry.register(OcmCollector(service))
        _ProcessCollector(registry=self.registry, proc=proc)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.joins = Histogram(
            "ocm_join_duration_seconds",
            "Seconds from accepting a TCRP connection (TLS handshake included) to writing COMPLETE, by operation.",
            ["operation"], registry=self.registry, buckets=JOIN_BUCKETS,
        )
        observers = {
            op: self.joins.labels(OPERATIONS[op]).observe for op in (Op.CREATE_ROOM, Op.JOIN_ROOM)
        }
        service.tcrp.on_joined = lambda op, seconds: observers[op](seconds)


class MetricsPage(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        encode, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader("Content-Type", content_type)
        return encode(self.registry)


class HealthPage(Resource):
    """200 while both listeners are up (and the reactor answers); 503 once stopping."""

    isLeaf = True

    def __init__(self, service: OcmService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        if self.service.healthy():
            return b"ok\n"
        request.setResponseCode(503)
        return b"stopping\n" if self.service.stopping else b"not listening\n"


class Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader("Content-Type", "text/plain; charset=utf-8")
        return b"ocm: /metrics (Prometheus), /healthz\n"


class QuietSite(Site):
    """No access log line per scrape, no factory start/stop lines."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def site(service: OcmService) -> QuietSite:
    """The HTTP site for --metrics, wired to C{service}."""
    metrics = Metrics(service)
    root = Index()
    root.putChild(b"", root)
    root.putChild(b"metrics", MetricsPage(metrics.registry))
    root.putChild(b"healthz", HealthPage(service))
    result = QuietSite(root, timeout=60)
    result.metrics = metrics  # type: ignore[attr-defined]
    return result
