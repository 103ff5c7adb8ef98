"""What C{ocm-bench} does with its options: one run, or a comparison."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ocm.bench.report import format_compare, format_run, summarize
from ocm.bench.run import Load, Target, run_once
from ocm.bench.spawn import RedisProcess, Server


class StatusLine:
    """The live progress line: rewritten in place on a terminal, else one line each."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, line: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def load_from(options: Any) -> Load:
    return Load(
        rooms=options["rooms"], members=options["members"], rate=options["rate"],
        duration=options["duration"], warmup=options["warmup"], drain=options["drain"],
        size=options["size"], readers=options["readers"], workers=options["workers"],
        concurrency=options["concurrency"],
    )


async def cluster_run(reactor: Any, load: Load, options: Any, status: StatusLine) -> dict[str, Any]:
    """C{--cluster N}: a redis-server and N ocm nodes, rooms spread over them."""
    tls = not options["no-tls"]
    host = options["host"]
    redis = RedisProcess(reactor, host)
    nodes: list[Server] = []
    try:
        await redis.ready()
        for _ in range(options["cluster"]):
            nodes.append(Server(
                reactor, "ocm", host, tls, load.rooms, load.members,
                extra=["--redis", redis.url, "--advertise", host],
            ))
        for node in nodes:
            await node.ready()
        target = Target(
            f"ocm x{len(nodes)}", host, nodes[0].tcp_port, nodes[0].tls,
            nodes=tuple(n.tcp_port for n in nodes), pids=tuple(n.pid for n in nodes) + (redis.pid,),
        )
        return await run_once(reactor, load, target, status)
    finally:
        for node in nodes:
            await node.stop()
        await redis.stop()


async def spawned_run(reactor: Any, load: Load, kind: str, options: Any, status: StatusLine) -> dict[str, Any]:
    tls = not options["no-tls"]
    server = Server(reactor, kind, options["host"], tls, load.rooms, load.members, scrape=options["scrape"])
    pin = options["pin"]
    try:
        if pin is not None:
            cpus = sorted(os.sched_getaffinity(0))
            other = next(c for c in cpus if c != pin)
            os.sched_setaffinity(server.pid, {pin})
            os.sched_setaffinity(0, {other})
        await server.ready()
        target = Target(kind, options["host"], server.tcp_port, server.tls, server.pid, pin)
        result = await run_once(reactor, load, target, status, pin=None if pin is None else other)
        if kind == "ocm" and options["scrape"] is not None:
            times = sorted(server.scrape_ms)
            result["scrapes"] = {
                "ok": server.scrapes, "failed": server.scrape_errors,
                "p50_ms": times[len(times) // 2] if times else None,
            }
        return result
    finally:
        await server.stop()


async def run(reactor: Any, options: Any) -> None:
    load = load_from(options)
    status = StatusLine(options["quiet"])
    if options["series"]:
        from ocm.bench import memory

        print(json.dumps(memory.summarize_series(memory.read_series(options["series"])), indent=2))
        return
    if options["memory"] or options["soak"]:
        from ocm.bench import memory

        measure = memory.memory if options["memory"] else memory.soak
        result = await measure(reactor, options, status)
        status.done()
        print(json.dumps(result, indent=2) if options["json"] or options["soak"]
              else memory.format_memory(result))
        return
    if options["compare"]:
        runs = []
        for round_ in range(options["rounds"]):
            kinds = ("floor", "floor-twisted", "ocm-plain", "ocm") if options["twisted-floor"] else ("floor", "ocm")
            for kind in kinds:
                result = await spawned_run(reactor, load, kind, options, status)
                status.done()
                if not options["json"]:
                    print(f"round {round_ + 1}: " + format_run(result), flush=True)
                runs.append(result)
        summary = summarize(runs)
        if options["json"]:
            print(json.dumps(summary | {"runs": runs}, indent=2))
        else:
            print(format_compare(summary))
        return
    if options["cluster"]:
        result = await cluster_run(reactor, load, options, status)
    elif options["spawn"]:
        result = await spawned_run(reactor, load, options["server"], options, status)
    else:
        target = Target("ocm", options["host"], options["tcp"], not options["no-tls"], options["daemon-pid"])
        result = await run_once(reactor, load, target, status)
    status.done()
    print(json.dumps(result, indent=2) if options["json"] else format_run(result))
