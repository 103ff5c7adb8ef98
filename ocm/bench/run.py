"""
One bench run against one server: joins over TCRP, then the generator
processes, CPU samples at the edges of the measured window, and the figures.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall

from ocm.bench.joins import ClusterJoiner, Joiner, join_rooms
from ocm.bench.report import merge_histograms, percentile_of, percentiles
from ocm.bench.spawn import child_env, cpu_seconds, cpu_ticks


@dataclass(frozen=True)
class Load:
    rooms: int = 500
    members: int = 10
    rate: float = 2.0
    duration: float = 60.0
    warmup: float = 2.0
    drain: float = 2.0
    size: int = 64
    readers: int = 1
    workers: int = 1
    concurrency: int = 32


@dataclass(frozen=True)
class Target:
    kind: str  # "ocm" or "floor"
    host: str
    tcp_port: int
    tls: bool
    pid: int | None = None  # for CPU time from /proc
    cpu: int | None = None  # the CPU it is pinned to, if any
    # A cluster (--cluster): every node's TCRP port and pid (Redis's too).
    nodes: tuple[int, ...] = ()
    pids: tuple[int, ...] = ()


class WorkerProcess(protocol.ProcessProtocol):
    """A generator process, spoken to in JSON lines."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.result: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.progress: dict[str, int] = {"sent": 0, "read": 0}
        self._buffer = b""
        self._stderr = bytearray()

    def send(self, value: dict[str, Any]) -> None:
        self.transport.write(json.dumps(value).encode() + b"\n")

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "ready" in message:
                self.ready.callback(message["ready"])
            elif "progress" in message:
                self.progress = message["progress"]
            elif "result" in message:
                self.result.callback(message["result"])

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        del self._stderr[:-8192]

    def processEnded(self, reason: Any) -> None:
        error = RuntimeError(f"a generator process ended early:\n{self._stderr.decode(errors='replace')}")
        for d in (self.ready, self.result):
            if not d.called:
                d.errback(error)
        self.ended.callback(None)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run_once(
    reactor: Any,
    load: Load,
    target: Target,
    status: Callable[[str], None] = lambda line: None,
    pin: int | None = None,
) -> dict[str, Any]:
    """Load C{target} once and return the figures as a JSON-able dict."""
    run_id = secrets.token_hex(3)
    names = [f"bench-{run_id}-{i:05d}" for i in range(load.rooms)]
    joiner: Any = Joiner(reactor, target.host, target.tcp_port, target.tls)
    if target.nodes:
        joiner = ClusterJoiner(reactor, target.host, list(target.nodes), target.tls)
    status(f"{target.kind}: joining {load.rooms * load.members:,} members...")
    started, daemon_before, own_before = time.monotonic(), _server_cpu(target), _own_cpu()
    rooms = await join_rooms(joiner, names, load.members, load.concurrency)
    join_seconds = time.monotonic() - started
    daemon_after, own_after = _server_cpu(target), _own_cpu()
    joins = len(joiner.latencies)
    readers = min(load.readers, load.members)

    # One UDP port per node: each worker sends to one node's rooms.
    by_port: dict[int, list[Any]] = {}
    for creds in rooms:
        by_port.setdefault(creds[0].udp_port, []).append(creds)
    shares = []
    for group in by_port.values():
        count = max(1, min(load.workers // len(by_port), len(group)))
        shares += [group[i::count] for i in range(count)]
    workers = [WorkerProcess() for _ in shares]
    for worker, share in zip(workers, shares):
        process = reactor.spawnProcess(
            worker, sys.executable, [sys.executable, "-m", "ocm.bench.worker"],
            env=child_env(), childFDs={0: "w", 1: "r", 2: "r"},
        )
        if pin is not None:
            os.sched_setaffinity(process.pid, {pin})
        worker.send({
            "host": target.host,
            "udp_port": share[0][0].udp_port,
            "bind": target.host if target.host.startswith("127.") else "0.0.0.0",
            "rate": load.rate, "size": load.size, "warmup": load.warmup,
            "duration": load.duration, "drain": load.drain,
            "rooms": [[creds[0].room, [[c.token, c.key, i < readers] for i, c in enumerate(creds)]]
                      for creds in share],
        })
    await defer.gatherResults([w.ready for w in workers], consumeErrors=True)

    start_at = time.monotonic() + 0.3
    for worker in workers:
        worker.send({"start_at": start_at})
        worker.transport.closeStdin()
    samples: dict[str, tuple[float | None, float, Any]] = {}

    def sample(name: str) -> None:
        samples[name] = (
            _server_cpu(target),
            _own_cpu(),
            cpu_ticks(target.cpu) if target.cpu is not None else None,
        )

    reactor.callLater(start_at + load.warmup - time.monotonic(), sample, "start")
    reactor.callLater(start_at + load.warmup + load.duration - time.monotonic(), sample, "end")
    last = {"t": time.monotonic(), "sent": 0, "read": 0, "cpu": _server_cpu(target)}

    def progress() -> None:
        now = time.monotonic()
        sent = sum(w.progress["sent"] for w in workers)
        read = sum(w.progress["read"] for w in workers)
        cpu = _server_cpu(target)
        span = max(1e-6, now - last["t"])
        phase = "warm-up" if now < start_at + load.warmup else (
            "measuring" if now < start_at + load.warmup + load.duration else "draining")
        daemon = f"  daemon cpu {(cpu - last['cpu']) / span:4.0%}" if cpu is not None and last["cpu"] is not None else ""
        status(
            f"{target.kind} {phase} {now - start_at:5.1f}s  sent {(sent - last['sent']) / span:8,.0f}/s  "
            f"read {(read - last['read']) / span:8,.0f}/s  "
            f"(~{(read - last['read']) / span * load.members / readers:9,.0f} deliveries/s){daemon}"
        )
        last.update(t=now, sent=sent, read=read, cpu=cpu)

    ticker = LoopingCall(progress)
    ticker.start(1.0, now=False)
    try:
        results = await defer.gatherResults([w.result for w in workers], consumeErrors=True)
    finally:
        ticker.stop()
        await defer.gatherResults([w.ended for w in workers])

    sent = sum(r["sent"] for r in results)
    expected = sum(r["expected"] for r in results)
    received = sum(r["received"] for r in results)
    deliveries = received * load.members / readers
    hist = merge_histograms(r["histogram"] for r in results)
    (d0, g0, c0), (d1, g1, c1) = samples["start"], samples["end"]
    pinned = {}
    if c0 and c1 and c1[2] > c0[2]:
        span = c1[2] - c0[2]
        pinned = {
            "server_cpu": target.cpu,
            "server_cpu_busy_pct": round(100 * (c1[0] - c0[0]) / span, 1),
            "server_cpu_softirq_pct": round(100 * (c1[1] - c0[1]) / span, 1),
        }
    daemon_cpu = d1 - d0 if d0 is not None and d1 is not None else None
    generator_cpu = (g1 - g0) + sum(r["cpu"] for r in results)
    return {
        "server": target.kind,
        "load": asdict(load) | {"readers": readers, "workers": len(workers)},
        "joins": {
            "count": joins,
            "seconds": round(join_seconds, 3),
            "per_s": round(joins / join_seconds, 1) if join_seconds else None,
            "p50_ms": _ms(percentile_of(joiner.latencies, 0.5)),
            "p99_ms": _ms(percentile_of(joiner.latencies, 0.99)),
            "tls": target.tls,
            "concurrency": load.concurrency,
            "nodes": len(target.nodes) or 1,
            "redirects": getattr(joiner, "redirects", 0),
            "daemon_cpu_s": _round(daemon_after - daemon_before if daemon_after is not None and daemon_before is not None else None),
            "generator_cpu_s": round(own_after - own_before, 3),
        },
        "target_per_s": load.rooms * load.members * load.rate,
        "sent_per_s": round(sent / load.duration, 1),
        "deliveries_per_s": round(deliveries / load.duration, 1),
        "loss_pct": round(100 * (1 - received / expected), 4) if expected else 0.0,
        "counts": {
            "sent": sent, "expected": expected, "received": received,
            "undecodable": sum(r["undecodable"] for r in results),
            "send_errors": sum(r["send_errors"] for r in results),
        },
        "latency_ms": percentiles(hist, (0.5, 0.95, 0.99)),
        "cpu": {
            "daemon_s": _round(daemon_cpu),
            "daemon_pct": _round(100 * daemon_cpu / load.duration if daemon_cpu is not None else None),
            "daemon_us_per_delivery": _round(1e6 * daemon_cpu / deliveries if daemon_cpu is not None and deliveries else None),
            "generator_s": round(generator_cpu, 3),
            "generator_pct": round(100 * generator_cpu / load.duration, 1),
        } | pinned,
    }


def _server_cpu(target: Target) -> float | None:
    if target.pids:
        times = [cpu_seconds(pid) for pid in target.pids]
        return None if None in times else sum(times)  # type: ignore[arg-type]
    return cpu_seconds(target.pid) if target.pid else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
