"""
ocm-bench, quickly: a few rooms for about a second at a low rate over real
loopback sockets. What a user of the bench relies on: every member joins,
every message reaches every reader (zero loss on loopback), and the report,
human or --json, carries the figures it promises. No timing assertions.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial.unittest import TestCase

from ocm.bench import Options
from ocm.bench.report import format_run, percentiles
from ocm.bench.run import Load, Target, run_once
from ocm.bench.spawn import SOURCE_ROOT, child_env, cpu_seconds, server_limits
from tests.daemon import DaemonMixin

SMALL = ["--rooms", "3", "--members", "3", "--rate", "4", "--duration", "1",
         "--warmup", "0.3", "--drain", "0.5", "--quiet"]


def assert_clean_run(test: TestCase, result: dict, rooms: int = 3, members: int = 3) -> None:
    test.assertEqual(result["joins"]["count"], rooms * members)
    counts = result["counts"]
    test.assertGreater(counts["sent"], 0)
    # Each reader (one per room) gets every message sent in its room.
    test.assertEqual(counts["received"], counts["expected"])
    test.assertEqual(result["loss_pct"], 0.0)
    test.assertEqual(counts["undecodable"], 0)
    for q in ("p50", "p95", "p99"):
        test.assertIsInstance(result["latency_ms"][q], float)
    test.assertGreater(result["deliveries_per_s"], 0)


class RunAgainstTheDaemonTests(DaemonMixin, TestCase):
    """The generator against the daemon the plugin builds, in this process."""

    async def _bench(self, tls: bool) -> dict:
        # All joins come from one address: lift the per-address request rate.
        lift = ["--request-rate", "0"] if "request-rate" in server_limits() else []
        svc = self.start_daemon(*lift, *([] if tls else ["--no-tls"]))
        load = Load(rooms=3, members=3, rate=4, duration=1, warmup=0.3, drain=0.5)
        target = Target("ocm", "127.0.0.1", svc.tcp_port, tls, os.getpid())
        return await run_once(reactor, load, target)

    @defer.inlineCallbacks
    def test_tls_joins_then_chat_without_loss(self):
        result = yield defer.ensureDeferred(self._bench(tls=True))
        assert_clean_run(self, result)
        self.assertTrue(result["joins"]["tls"])
        # Every room the bench made is still there, full.
        self.assertEqual(sorted(r["members"] for r in self.svc.rooms.list_rooms()), [3, 3, 3])
        # The report is plain JSON and its human form shows the key figures.
        self.assertEqual(json.loads(json.dumps(result)), result)
        text = format_run(result)
        for word in ("joins", "deliveries", "loss 0.000%", "p99", "daemon"):
            self.assertIn(word, text)


class CommandLineTests(TestCase):
    def bench(self, *args: str) -> defer.Deferred:
        return utils.getProcessOutputAndValue(
            sys.executable, ["-m", "ocm.bench", *args], env=child_env(), path=SOURCE_ROOT,
        )

    @defer.inlineCallbacks
    def test_compare_json(self):
        """--compare runs the floor and ocm on the same load and gives ratios."""
        out, err, code = yield self.bench("--compare", "--rounds", "1", "--no-tls", "--json", *SMALL)
        self.assertEqual(code, 0, err.decode())
        report = json.loads(out)
        self.assertEqual([r["server"] for r in report["runs"]], ["floor", "ocm"])
        for run in report["runs"]:
            assert_clean_run(self, run)
            # Reported from /proc (a second at a low rate may round to 0 ticks).
            self.assertIsInstance(run["cpu"]["daemon_s"], float)
        self.assertGreater(report["ratio"]["deliveries_per_s"], 0)

    @defer.inlineCallbacks
    def test_scrape_serves_and_reads_metrics(self):
        """--scrape: the spawned daemon serves --metrics and is scraped during the run."""
        out, err, code = yield self.bench("--spawn", "--no-tls", "--json", "--scrape", "0.2", *SMALL)
        self.assertEqual(code, 0, err.decode())
        result = json.loads(out)
        assert_clean_run(self, result)
        self.assertGreater(result["scrapes"]["ok"], 0)
        self.assertEqual(result["scrapes"]["failed"], 0)

    @defer.inlineCallbacks
    def test_usage_error_names_what_is_missing(self):
        out, err, code = yield self.bench("--rooms", "2")
        self.assertEqual(code, 2)
        self.assertIn(b"--spawn", err)
        out, err, code = yield self.bench("--spawn", "--rate", "-1")
        self.assertEqual(code, 2)
        self.assertIn(b"--rate", err)


class FigureTests(TestCase):
    def test_percentiles_from_histogram(self):
        # 100 deliveries: 90 in the 0.1-0.2 ms bucket, 10 at 5.0-5.1 ms.
        p = percentiles({1: 90, 50: 10}, (0.5, 0.95, 0.99))
        self.assertEqual(p, {"p50": 0.15, "p95": 5.05, "p99": 5.05})
        self.assertEqual(percentiles({}, (0.5,)), {"p50": None})

    def test_cpu_of_this_process(self):
        self.assertGreater(cpu_seconds(os.getpid()), 0)
        self.assertIsNone(cpu_seconds(2**22 + 12345))

    def test_options_defaults_are_the_reference_profile(self):
        o = Options()
        o.parseOptions(["--spawn"])
        self.assertEqual((o["rooms"], o["members"], o["rate"], o["duration"]), (500, 10, 2.0, 60.0))
