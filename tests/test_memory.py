"""
What a room costs is given back when it closes, at once: nothing of a closed
room waits for Python's cyclic collector (whose full passes are rare in a
long-running daemon, so such garbage piled up for several rounds of members).
Also the bench's slope and RSS helpers that docs/performance.md relies on.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import sys

from twisted.internet import defer, utils
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ocm.bench.spawn import SOURCE_ROOT, child_env
from ocm.bench.memory import floor_series, pooled_slope_per_hour, proc_status, slope_per_hour, summarize_series
from ocm.server.rooms import Member, Room, RoomService


def alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


class FreedAtOnceTests(SynchronousTestCase):
    def setUp(self):
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        self.clock = Clock()
        self.service = RoomService(self.clock, timeout=10)
        self.rooms, self.members = alive(Room), alive(Member)

    def fill(self, rooms=20, guests=4):
        for i in range(rooms):
            self.service.create_room(f"room{i}", "host", "10.0.0.1", None)
            for k in range(guests):
                self.service.join_room(f"room{i}", f"guest{k}", "10.0.0.1")
        self.assertEqual(alive(Room) - self.rooms, rooms)
        self.assertEqual(alive(Member) - self.members, rooms * (guests + 1))

    def assert_all_gone(self):
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.service.tokens, {})
        self.assertEqual((alive(Room) - self.rooms, alive(Member) - self.members), (0, 0))

    def test_closed_by_the_host_leaving(self):
        self.fill()
        for host in [room.host for room in self.service.rooms.values()]:
            self.service._remove(host, timed_out=False)
        del host
        self.assert_all_gone()

    def test_closed_by_the_host_timing_out(self):
        self.fill()
        self.clock.advance(11)
        self.service.sweep()
        self.assert_all_gone()

    def test_closed_at_shutdown(self):
        self.fill()
        self.service.stop()
        self.assert_all_gone()


class SeriesTests(SynchronousTestCase):
    def test_slope_in_mib_per_hour(self):
        mib = 1024 * 1024
        flat = [(t, 50 * mib) for t in range(0, 3600, 10)]
        self.assertEqual(slope_per_hour(flat), 0.0)
        # 1 MiB more every 10 minutes is 6 MiB an hour.
        rising = [(t, 50 * mib + t * mib / 600) for t in range(0, 3600, 10)]
        self.assertAlmostEqual(slope_per_hour(rising), 6.0)
        # The second half of a series that levels off is flat.
        levelled = [(t, min(t, 1800) * mib / 600) for t in range(0, 3601, 10)]
        summary = summarize_series(levelled)
        self.assertAlmostEqual(summary["second_half_slope_mib_per_hour"], 0.0)
        self.assertGreater(summary["slope_mib_per_hour"], 1.0)

    def test_floor_is_each_minutes_least(self):
        # A hash in flight (a moment of +16 MiB) does not move the floor.
        mib = 1024 * 1024
        series = [(t, 50 * mib + (16 * mib if t % 70 == 0 else 0)) for t in range(0, 600, 10)]
        floor = floor_series(series, 60)
        self.assertEqual(len(floor), 10)
        self.assertEqual({v for _, v in floor}, {50 * mib})
        summary = summarize_series(series)
        self.assertEqual(summary["second_half_floor_slope_mib_per_hour"], 0.0)
        # The two levels: the samples with a hash in flight apart.
        self.assertEqual(summary["second_half_high_samples"], 4)
        self.assertEqual(summary["second_half_low_slope_mib_per_hour"], 0.0)
        # A last window of one sample, on a hash, is no floor.
        self.assertEqual(floor_series(series + [(600, 66 * mib)], 60), floor)

    def test_slope_within_levels(self):
        # Flat levels 16 MiB apart, the upper one more often late in the
        # run: the plain slope rises, the slope within the levels is flat.
        mib = 1024 * 1024
        series = [(t, 50 * mib + (16 * mib if (t % 30 == 0 or t > 3000) else 0)) for t in range(0, 3600, 10)]
        summary = summarize_series(series)
        self.assertGreater(summary["second_half_slope_mib_per_hour"], 2.0)
        self.assertGreater(summary["second_half_slope_error_mib_per_hour"], 0.0)
        self.assertEqual(summary["second_half_slope_within_levels_mib_per_hour"], 0.0)
        # A real leak under the same mixing still shows: 3 MiB an hour on both levels.
        leaking = [(t, v + t * mib / 1200) for t, v in series]
        summary = summarize_series(leaking)
        self.assertAlmostEqual(summary["second_half_slope_within_levels_mib_per_hour"], 3.0, places=6)
        self.assertAlmostEqual(pooled_slope_per_hour([[(0, 0), (3600, 3 * mib)], [(0, 9 * mib), (1800, 10.5 * mib)]]), 3.0)

    def test_rss_and_threads_of_this_process(self):
        status = proc_status(os.getpid())
        self.assertGreater(status["VmRSS"], 1024 * 1024)
        self.assertGreaterEqual(status["Threads"], 1)
        self.assertEqual(proc_status(2**22 + 12345), {})


class SoakCommandTests(TestCase):
    """ocm-bench --soak, briefly: the daemon churned, RSS sampled into a CSV."""

    def bench(self, *args: str) -> defer.Deferred:
        return utils.getProcessOutputAndValue(
            sys.executable, ["-m", "ocm.bench", *args], env=child_env(), path=SOURCE_ROOT,
        )

    @defer.inlineCallbacks
    def test_a_short_soak_writes_its_series_and_summary(self):
        out_dir = os.path.abspath(self.mktemp())
        os.makedirs(out_dir)
        csv_path = os.path.join(out_dir, "soak.csv")
        out, err, code = yield self.bench(
            "--soak", "0.07", "--sample", "1", "--soak-rooms", "3", "--no-tls", "--quiet", "--out", csv_path,
        )
        self.assertEqual(code, 0, err.decode())
        summary = json.loads(out)
        self.assertEqual(summary, json.loads(open(csv_path[:-4] + ".json").read()))
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        self.assertGreaterEqual(len(rows), 4)
        self.assertEqual(summary["samples"], len(rows))
        last = rows[-1]
        self.assertGreater(int(last["rss_kib"]), 1024)
        self.assertGreaterEqual(int(last["joins"]), 3)  # every room's host at least
        self.assertEqual(int(last["errors"]), 0)
        self.assertGreater(int(last["messages"]), 0)
        self.assertGreater(int(last["events_in"]), 0)  # the daemon answered over UDP
        self.assertIn("second_half_slope_mib_per_hour", summary)
        # --series reads the same CSV back to the same figures.
        out, err, code = yield self.bench("--series", csv_path)
        self.assertEqual(code, 0, err.decode())
        self.assertEqual(json.loads(out)["samples"], len(rows))

    @defer.inlineCallbacks
    def test_memory_and_soak_are_one_at_a_time(self):
        out, err, code = yield self.bench("--memory", "--soak", "1")
        self.assertEqual(code, 2)
        self.assertIn(b"--memory and --soak", err)
