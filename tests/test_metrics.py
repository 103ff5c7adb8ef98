"""
--metrics: /metrics and /healthz scraped with a real HTTP client from a
daemon built as twistd builds it, after real TCRP and UDP traffic.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.python import usage
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from ocm.ops import metrics as ocm_metrics
from ocm.server.tap import Options
from tests import wire
from tests.daemon import DaemonMixin

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# PROTOCOL §2 and §3, version 1.1
HISTORY, SEND = 0x04, 0x05
HISTORY_EVENT, ECHO, EXPIRED = 0x08, 0x09, 0x0A


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class _Closed(Protocol):
    """Sends C{data} (bytes that are no TLS) and fires C{done} when the server closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(None)


class MetricsTests(DaemonMixin, TestCase):
    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)

    def start(self, *args: str) -> None:
        self.start_daemon("--metrics", "tcp:0:interface=127.0.0.1", *args)
        self.http = f"http://127.0.0.1:{self.svc.metrics.getHost().port}"

    async def get(self, path: str, accept: str | None = None) -> tuple[int, str, bytes]:
        headers = Headers({"Accept": [accept]}) if accept else None
        response = await self.agent.request(b"GET", (self.http + path).encode(), headers)
        body = await readBody(response)
        content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
        return response.code, content_type, body

    async def scrape(self) -> Samples:
        code, content_type, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        samples: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            self.assertTrue(family.name.startswith(("ocm_", "process_", "python_")), family.name)
            for s in family.samples:
                samples[s.name, frozenset(s.labels.items())] = s.value
        return samples

    async def test_traffic_moves_the_figures(self) -> None:
        self.start()
        before = await self.scrape()
        self.assertEqual(sample(before, "ocm_build_info", version=ocm_metrics.__version__), 1)
        self.assertEqual(sample(before, "ocm_up"), 1)
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
            self.assertGreater(sample(before, name), 0, name)
        self.assertIn(("python_info", frozenset()), {(n, frozenset()) for n, _ in before})

        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        status, _ = await self.ask(wire.JOIN_ROOM, "Nowhere", {"username": "carol"})
        self.assertEqual(status, 404)
        # Two bad datagrams from alice's socket, then a chat: the socket is
        # read in order, so once bob has the message both were counted.
        alice.send(b"\x00")
        alice.send(alice.seal(bytes((wire.HEARTBEAT,)), token=b"f" * 32))
        await alice.event()  # JOINED bob
        alice.chat("hello")
        self.assertEvent(await bob.event(), wire.MESSAGE, "alice", "hello", seq=1)

        after = await self.scrape()
        self.assertEqual((sample(after, "ocm_rooms"), sample(after, "ocm_members")), (1, 2))
        self.assertEqual(
            sample(after, "ocm_datagrams_dropped_total", reason="malformed")
            - sample(before, "ocm_datagrams_dropped_total", reason="malformed"), 1,
        )
        self.assertEqual(sample(after, "ocm_datagrams_dropped_total", reason="unknown"), 1)
        self.assertEqual(sample(after, "ocm_datagrams_dropped_total", reason="auth"), 0)
        self.assertEqual(sample(after, "ocm_tcrp_requests_total", operation="create_room", status="200"), 1)
        self.assertEqual(sample(after, "ocm_tcrp_requests_total", operation="join_room", status="200"), 1)
        self.assertEqual(sample(after, "ocm_tcrp_requests_total", operation="join_room", status="404"), 1)
        for op in ("create_room", "join_room"):
            self.assertEqual(sample(after, "ocm_join_duration_seconds_count", operation=op), 1, op)
            self.assertEqual(sample(after, "ocm_join_duration_seconds_bucket", operation=op, le="+Inf"), 1, op)
            self.assertGreater(sample(after, "ocm_join_duration_seconds_sum", operation=op), 0, op)
            self.assertLess(sample(after, "ocm_join_duration_seconds_sum", operation=op), wire.WAIT, op)
        # Two HEARTBEATs, the two bad datagrams and the chat; JOINED to
        # alice, then the chat to both.
        self.assertEqual(sample(after, "ocm_datagrams_received_total"), 5)
        self.assertEqual(sample(after, "ocm_deliveries_total"), 3)

        # Members leave: the gauges come down.
        bob.leave()
        self.assertEvent(await alice.event(), wire.MESSAGE, "alice", "hello", seq=1)
        self.assertEvent(await alice.event(), wire.LEFT, "bob")
        later = await self.scrape()
        self.assertEqual((sample(later, "ocm_rooms"), sample(later, "ocm_members")), (1, 1))

    async def test_promtool_accepts_the_exposition(self) -> None:
        """What Prometheus's own checker says of a scrape after real traffic."""
        promtool = shutil.which("promtool")
        if promtool is None:
            if os.environ.get("CI"):
                self.fail("promtool is missing in CI (.ci/run installs Debian's prometheus package)")
            print("\n*** SKIPPING promtool check: promtool is not installed "
                  "(apt-get install prometheus) ***\n", file=sys.stderr)
            raise SkipTest("NO PROMTOOL: apt-get install prometheus")
        self.start()
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        alice.send(b"\x00")
        alice.chat("hello")
        self.assertEvent(await bob.event(), wire.MESSAGE, "alice", "hello", seq=1)
        code, _, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        exposition = Path(self.mktemp())
        exposition.write_bytes(body)
        out, err, status = await getProcessOutputAndValue(
            "/bin/sh", ["-c", 'exec "$0" check metrics < "$1"', promtool, str(exposition)], env=os.environ
        )
        self.assertEqual(status, 0, (out + err).decode(errors="replace"))
        self.assertEqual((out + err).strip(), b"", "promtool found problems")

    async def test_sends_echoes_and_history_repairs(self) -> None:
        """Protocol 1.1: a SEND, its retransmission, and a HISTORY partly expired."""
        self.start("--history", "1")
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        await alice.event()  # JOINED bob

        def send(msg_id: int, text: str) -> None:
            alice.send(alice.seal(bytes((SEND,)) + msg_id.to_bytes(4, "big") + text.encode()))

        send(1, "one")
        self.assertEqual((await alice.event()).kind, ECHO)
        self.assertEvent(await bob.event(), wire.MESSAGE, "alice", "one", seq=1)
        send(1, "one")  # a retransmission: echoed again, relayed to no one
        echo = await alice.event()
        self.assertEqual((echo.kind, echo.seq), (ECHO, 1))
        send(2, "two")
        self.assertEqual((await alice.event()).kind, ECHO)
        self.assertEvent(await bob.event(), wire.MESSAGE, "alice", "two", seq=2)
        bob.send(bob.seal(bytes((HISTORY,)) + (1).to_bytes(8, "big") + (2).to_bytes(8, "big")))
        self.assertEqual((await bob.event()).kind, EXPIRED)
        self.assertEvent(await bob.event(), HISTORY_EVENT, "alice", "two", seq=2)

        samples = await self.scrape()
        self.assertEqual(sample(samples, "ocm_echoes_total"), 3)
        self.assertEqual(sample(samples, "ocm_send_duplicates_total"), 1)
        self.assertEqual(sample(samples, "ocm_history_requests_total"), 1)
        self.assertEqual(sample(samples, "ocm_history_events_total"), 1)
        self.assertEqual(sample(samples, "ocm_history_expired_total"), 1)
        # JOINED, three ECHOs, two MESSAGEs, EXPIRED and HISTORY.
        self.assertEqual(sample(samples, "ocm_deliveries_total"), 8)

    async def test_tls_handshake_failure_counted(self) -> None:
        self.start()
        client = _Closed(b"GET / HTTP/1.0\r\n\r\n" * 4)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.svc.tcp_port)
        await endpoints.connectProtocol(endpoint, client)
        await client.done.addTimeout(wire.WAIT, reactor)
        after = await self.scrape()
        self.assertEqual(sample(after, "ocm_tls_handshake_failures_total"), 1)
        # A good TLS client is not counted.
        status, _ = await self.ask(wire.LIST_ROOMS, b"", {})
        self.assertEqual(status, 200)
        self.assertEqual(sample(await self.scrape(), "ocm_tls_handshake_failures_total"), 1)

    async def test_rate_limit_refusals_by_limit(self) -> None:
        self.start("--no-tls", "--request-rate", "0.01", "--request-burst", "1", "--max-per-address", "1")
        self.assertEqual((await self.ask(wire.LIST_ROOMS, b"", {}))[0], 200)
        self.assertEqual((await self.ask(wire.LIST_ROOMS, b"", {}))[0], 429)
        samples = await self.scrape()
        self.assertEqual(sample(samples, "ocm_rate_limited_total", limit="request_rate"), 1)
        self.assertEqual(sample(samples, "ocm_rate_limited_total", limit="per_address"), 0)
        self.assertEqual(sample(samples, "ocm_tcrp_requests_total", operation="list_rooms", status="429"), 1)
        self.assertEqual(sample(samples, "ocm_join_duration_seconds_count", operation="join_room"), 0)

    async def test_openmetrics_when_asked(self) -> None:
        self.start()
        code, content_type, body = await self.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))

    async def test_healthz_up_then_503_while_stopping(self) -> None:
        self.start()
        code, _, body = await self.get("/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        # A prober keeps its connection (the pool's): asked while the
        # daemon stops, it is told 503.
        stopped = self.svc.stopService()
        code, _, body = await self.get("/healthz")
        self.assertEqual((code, body), (503, b"stopping\n"))
        samples = await self.scrape()
        self.assertEqual(sample(samples, "ocm_up"), 0)
        await stopped
        await self.pool.closeCachedConnections()
        # Once stopped, the listener is gone too.
        with self.assertRaises(Exception):
            await self.get("/healthz")

    async def test_password_hashing_pool(self) -> None:
        """The daemon's hashing pool (OcmService.hashing) shows its load."""
        self.start()
        idle = await self.scrape()
        self.assertEqual([sample(idle, n) for n in ("ocm_password_hashes_running", "ocm_password_hashes_queued")],
                         [0, 0])

        class Pool:  # what the collector reads of one
            running, queued, done, refused = 2, 5, 40, 3

        real, self.svc.hashing = self.svc.hashing, Pool()
        self.addCleanup(setattr, self.svc, "hashing", real)  # stopped with the service
        samples = await self.scrape()
        self.assertEqual(
            [sample(samples, n) for n in ("ocm_password_hashes_running", "ocm_password_hashes_queued",
                                           "ocm_password_hashes_total", "ocm_password_hashes_refused_total")],
            [2, 5, 40, 3],
        )

    async def test_not_found(self) -> None:
        self.start()
        self.assertEqual((await self.get("/nothing"))[0], 404)


class MetricsOptionTests(TestCase):
    def parse(self, *args: str) -> Options:
        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), *args])
        return o

    def test_off_by_default(self) -> None:
        self.assertIsNone(self.parse()["metrics"])

    def test_endpoint_string(self) -> None:
        self.assertEqual(self.parse("--metrics", "tcp:9102:interface=127.0.0.1")["metrics"],
                         "tcp:9102:interface=127.0.0.1")
        self.assertEqual(self.parse("--metrics", "unix:/run/ocm/metrics.sock")["metrics"],
                         "unix:/run/ocm/metrics.sock")

    def test_bad_values_name_the_option(self) -> None:
        for value in ("9102", "", "nonsense:1", "tcp:notaport", "tcp:9001"):
            with self.assertRaises(usage.UsageError, msg=value) as cm:
                self.parse("--metrics", value)
            self.assertIn("--metrics", str(cm.exception), value)

    def test_missing_library_is_named(self) -> None:
        saved = sys.modules["prometheus_client"]
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]  # import fails
        self.addCleanup(sys.modules.__setitem__, "prometheus_client", saved)
        with self.assertRaises(usage.UsageError) as cm:
            self.parse("--metrics", "tcp:9102")
        self.assertIn("--metrics", str(cm.exception))
        self.assertIn("prometheus_client", str(cm.exception))


class ProcessCollectorTests(TestCase):
    def test_start_time_without_proc_stat(self) -> None:
        """Under the unit's ProcSubset=pid, /proc/stat is hidden; the process metrics stay."""
        proc = Path(self.mktemp())
        proc.mkdir()
        (proc / "self").symlink_to(f"/proc/{os.getpid()}")
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        ocm_metrics._ProcessCollector(registry=registry, proc=str(proc))
        start = registry.get_sample_value("process_start_time_seconds")
        self.assertIsNotNone(start)
        real = CollectorRegistry()
        ocm_metrics._ProcessCollector(registry=real)
        # /proc/stat's boot time is in whole seconds.
        self.assertLess(abs(start - real.get_sample_value("process_start_time_seconds")), 2)
