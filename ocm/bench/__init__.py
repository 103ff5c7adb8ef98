"""
ocm-bench: load an ocm daemon over the real protocol (TCRP joins, then
sealed UDP chat) and measure what it carries; with C{--compare}, measure the
floor (the least Python doing the same per-datagram work) on the same load,
alternating, and print the ratio.

Modules: L{ocm.bench.joins} (TCRP client), L{ocm.bench.worker} (the
plain-socket UDP generator, one process each), L{ocm.bench.floor} (the
floor server), L{ocm.bench.spawn} (starting servers, CPU from /proc),
L{ocm.bench.run} (one run), L{ocm.bench.report} (figures), and the command
line here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage


SERVERS = ("ocm", "floor", "floor-twisted", "ocm-plain")


def _positive(kind: type, low: float = 0):
    def coerce(value: str) -> Any:
        number = kind(value)
        if number <= low:
            raise ValueError(f"{value!r} must be above {low}")
        return number

    coerce.coerceDoc = f"({kind.__name__})"
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = __doc__.split("\n\n")[0].strip()
    optParameters = [
        ["rooms", "r", "500", "Rooms to create.", _positive(int)],
        ["members", "m", "10", "Members per room (the host included).", _positive(int)],
        ["rate", None, "2", "Messages per second each member sends.", _positive(float)],
        ["duration", "d", "60", "Seconds measured.", _positive(float)],
        ["warmup", None, "2", "Seconds of load before measuring.", _positive(float, -1)],
        ["drain", None, "2", "Seconds after the last send to wait for deliveries; later ones count as lost.",
         _positive(float, -1)],
        ["size", "s", "64", "Bytes of text per message (at least 17: the send time rides in it).",
         _positive(int, 16)],
        ["readers", None, "1", "Members per room whose deliveries are read and timed; the rest are scaled.",
         _positive(int)],
        ["workers", "w", "1", "Generator processes sending and reading UDP.", _positive(int)],
        ["concurrency", "c", "32", "TCRP joins in flight at once (1: sequential).", _positive(int)],
        ["host", None, "127.0.0.1", "Server address (IPv4)."],
        ["tcp", None, None, "Server TCRP port (not with --spawn).", _positive(int)],
        ["daemon-pid", None, None, "Pid of the server, to report its CPU time (not with --spawn).",
         _positive(int)],
        ["server", None, "ocm",
         "With --spawn: which server to start: ocm; floor; floor-twisted (the floor's loop under "
         "Twisted's reactor); ocm-plain (ocm's Relay and RoomService in the floor's plain loop)."],
        ["rounds", None, "3", "With --compare: rounds of floor then ocm.", _positive(int)],
        ["pin", None, None, "Pin the spawned server to this CPU and the generator to another.",
         _positive(int, -1)],
        ["soak", None, None,
         "Churn rooms and members for this many minutes against a spawned daemon, sampling its "
         "RSS into --out (CSV; a JSON summary beside it).", _positive(float)],
        ["sample", None, "10", "With --soak: seconds between RSS samples.", _positive(float)],
        ["out", "o", None, "With --soak: the CSV file (default ocm-soak-<time>.csv here); with "
         "--memory --tracemalloc, the snapshots' directory."],
        ["soak-rooms", None, "50", "With --soak: rooms kept open at once.", _positive(int)],
        ["soak-timeout", None, "10", "With --soak: the daemon's --timeout (silent members time out).",
         _positive(float)],
        ["tracemalloc", None, None,
         "Trace the daemon's allocations: with --soak, a snapshot every this many seconds; with "
         "--memory, one after each round (any value); prints what grew by line from the middle "
         "snapshot to the last.", _positive(float)],
        ["seed", None, "1", "With --soak: the churn's random seed.", int],
        ["memory-rounds", None, "4", "With --memory: rounds of 4,000 members joining and leaving.",
         _positive(int, -1)],
        ["series", None, None,
         "Summarize a --soak CSV (finished or not): samples, peaks, and slopes of its second half."],
        ["daemon-source", None, None,
         "With --memory or --soak: run the daemon from this source tree (e.g. another checkout)."],
        ["cluster", None, None,
         "Start a redis-server and this many ocm nodes sharing it (--spawn implied): room i is "
         "created on node i mod N, every guest joins through the next node (a 307 first); "
         "daemon CPU is the nodes' and Redis's.", _positive(int)],
        ["scrape", None, None,
         "With --spawn: the ocm server also serves --metrics, scraped every this many seconds "
         "while it runs (to measure what metrics cost).", _positive(float)],
    ]
    optFlags = [
        ["spawn", None, "Start the server (python -m twisted ocm, limits raised) on free loopback ports."],
        ["compare", None, "Alternate the floor and ocm (--spawn implied), print medians and ratios."],
        ["twisted-floor", None, "With --compare: also run floor-twisted and ocm-plain each round."],
        ["no-tls", None, "TCRP over plain TCP (the server must be told too; --spawn does)."],
        ["json", None, "Print the figures as JSON on stdout."],
        ["memory", None, "Measure the spawned daemon's memory: idle, a password burst, rooms, members, "
         "rounds of members joining and leaving (docs/performance.md)."],
        ["quiet", "q", "No progress line on stderr."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["daemon-args"] = []

    def opt_daemon_arg(self, value: str) -> None:
        """With --memory or --soak: one more option for the daemon (repeat it)."""
        self["daemon-args"].append(value)

    def postOptions(self) -> None:
        # usage.Options coerces what was typed, not the defaults.
        for long, _short, _default, _doc, *coerce in self.optParameters:
            if coerce and isinstance(self[long], str):
                try:
                    self[long] = coerce[0](self[long])
                except ValueError as e:
                    raise usage.UsageError(f"--{long}: {e}")
        if self["series"]:
            return
        if self["compare"] or self["memory"] or self["soak"]:
            self["spawn"] = True
        if self["memory"] and self["soak"]:
            raise usage.UsageError("--memory and --soak: one at a time")
        if self["cluster"] is not None:
            if self["compare"] or self["pin"] is not None or self["server"] != "ocm":
                raise usage.UsageError("--cluster runs ocm nodes alone: drop --compare, --pin and --server")
            self["spawn"] = True
        if self["server"] not in SERVERS:
            raise usage.UsageError(f"--server: one of {', '.join(SERVERS)}")
        if self["spawn"] and (self["tcp"] or self["daemon-pid"]):
            raise usage.UsageError("--spawn starts its own server: drop --tcp and --daemon-pid")
        if not self["spawn"] and not self["tcp"]:
            raise usage.UsageError("give --tcp PORT of a running server, or --spawn")
        if self["pin"] is not None and (os.cpu_count() or 1) < 2:
            raise usage.UsageError("--pin needs at least 2 CPUs")


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"{options}\nocm-bench: {e}", file=sys.stderr)
        raise SystemExit(2)
    from twisted.internet import defer, task

    from ocm.bench.cli import run

    task.react(lambda reactor: defer.ensureDeferred(run(reactor, options)))
