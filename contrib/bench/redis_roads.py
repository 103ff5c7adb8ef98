#!/usr/bin/env python3
"""
What the directory's Redis calls cost an ocm node, by two roads:

 - txredisapi under Twisted's default reactor (epoll), as ocm runs it;
 - redis-py's asyncio client under Twisted's asyncio reactor.

Each road runs in its own process (a reactor is chosen once per process)
against one redis-server this script starts on a free loopback port, and
does what the directory does per request: a CREATE's claim (one EVAL of the
claim script) and a redirected JOIN's look-up (one HMGET). Reported: the
process's CPU time per operation (what a node pays) and the wall time per
operation, one at a time (latency) and 32 in flight (throughput).

    python contrib/bench/redis_roads.py --rounds 5 --ops 4000

Needs redis-server, txredisapi and redis (pip install redis).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(HERE))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(claim, lookup, ops: int, inflight: int, sleep) -> dict[str, float]:
    """claim(i) and lookup(i) return awaitables; time them one by one and C at once."""
    out: dict[str, float] = {}
    for i in range(200):  # warm up: connection, script cache
        await claim(i)
        await lookup(i)
    for name, fn in (("claim", claim), ("lookup", lookup)):
        c0, t0 = cpu(), time.perf_counter()
        for i in range(ops):
            await fn(i)
        out[f"{name}_serial_us"] = (time.perf_counter() - t0) / ops * 1e6
        out[f"{name}_serial_cpu_us"] = (cpu() - c0) / ops * 1e6
        c0, t0 = cpu(), time.perf_counter()
        for start in range(0, ops, inflight):
            await gather([fn(i) for i in range(start, min(ops, start + inflight))])
        out[f"{name}_{inflight}_us"] = (time.perf_counter() - t0) / ops * 1e6
        out[f"{name}_{inflight}_cpu_us"] = (cpu() - c0) / ops * 1e6
    return out


gather = None  # set per road


def road_txredisapi(port: int, ops: int, inflight: int) -> dict[str, float]:
    from twisted.internet import defer, reactor, task

    from ocm.cluster.store import Claim, RedisStore
    from ocm.cluster.url import parse_redis_url

    global gather
    gather = lambda ds: defer.gatherResults(ds)
    store = RedisStore(parse_redis_url(f"redis://127.0.0.1:{port}/0"), reactor)
    result: dict[str, float] = {}

    async def main() -> None:
        while not store.connected:
            await task.deferLater(reactor, 0.01, lambda: None)
        claim = lambda i: store.assert_claims("node-a", "127.0.0.1:9001", [Claim(f"room {i}", f"Room {i}", False, 1)], 15.0)
        lookup = lambda i: store.owner(f"room {i}")
        result.update(await measure(claim, lookup, ops, inflight, None))
        result["reactor"] = type(reactor).__name__
        await store.close()

    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: (f.printTraceback(), None))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    return result


def road_redis_asyncio(port: int, ops: int, inflight: int) -> dict[str, float]:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    import asyncio

    import redis.asyncio as aredis
    from twisted.internet import defer, reactor

    from ocm.cluster.store import _ASSERT

    global gather
    gather = lambda ds: defer.gatherResults(ds)
    client = aredis.Redis(host="127.0.0.1", port=port, db=0, single_connection_client=True)
    script = client.register_script(_ASSERT)
    result: dict[str, float] = {}

    def claim(i: int):
        keys = [f"ocm:room:room {i}", "ocm:rooms"]
        args = ["node-a", "127.0.0.1:9001", "15000", f"room {i}", f"Room {i}", "0", "1"]
        return defer.Deferred.fromFuture(asyncio.ensure_future(script(keys=keys, args=args)))

    def lookup(i: int):
        return defer.Deferred.fromFuture(asyncio.ensure_future(client.hmget(f"ocm:room:room {i}", ["node", "tcp", "name"])))

    async def main() -> None:
        result.update(await measure(claim, lookup, ops, inflight, None))
        result["reactor"] = type(reactor).__name__
        await defer.Deferred.fromFuture(asyncio.ensure_future(client.aclose()))

    d = defer.ensureDeferred(main())
    d.addErrback(lambda f: (f.printTraceback(), None))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(args: argparse.Namespace) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ocm-roads-")
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--dir", tmp, "--save", "", "--appendonly", "no",
         "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        runs: dict[str, list[dict[str, float]]] = {"txredisapi": [], "redis-asyncio": []}
        for _ in range(args.rounds):
            for road in runs:
                out = subprocess.run(
                    [sys.executable, __file__, "--road", road, "--port", str(port),
                     "--ops", str(args.ops), "--inflight", str(args.inflight)],
                    capture_output=True, text=True, check=True,
                )
                runs[road].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        redis.kill()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    keys = [k for k in runs["txredisapi"][0] if k != "reactor"]
    print(f"medians of {args.rounds} rounds, {args.ops} operations each; microseconds per operation")
    print(f"{'':24} {'txredisapi/epoll':>18} {'redis-py/asyncio':>18} {'ratio':>7}")
    for k in keys:
        a = statistics.median(r[k] for r in runs["txredisapi"])
        b = statistics.median(r[k] for r in runs["redis-asyncio"])
        print(f"{k:24} {a:18.1f} {b:18.1f} {b / a:7.2f}")
    print("reactors:", runs["txredisapi"][0]["reactor"], "/", runs["redis-asyncio"][0]["reactor"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--road", choices=("txredisapi", "redis-asyncio"))
    p.add_argument("--port", type=int)
    p.add_argument("--ops", type=int, default=4000)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if args.road is None:
        drive(args)
        return
    run = road_txredisapi if args.road == "txredisapi" else road_redis_asyncio
    print(json.dumps(run(args.port, args.ops, args.inflight)))


if __name__ == "__main__":
    main()
