"""
What the daemon's memory does, measured over the real protocol against a
daemon the bench starts: C{ocm-bench --memory} (idle, a password burst,
rooms, members, rounds of members joining and leaving) and
C{ocm-bench --soak MINUTES} (rooms and members churning for that long, the
daemon's RSS sampled from /proc into a CSV, and its slope).

Members here are light: one UDP socket for all of them (the daemon sends
each member's events to whatever address its last datagram came from), a
key and a counter each; what comes back is counted and thrown away.
"""

from __future__ import annotations

import base64
import csv
import glob
import json
import math
import os
import random
import secrets
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, protocol
from twisted.internet.task import LoopingCall, deferLater

from ocm.server import passwords
from ocm.bench.joins import Joiner, JoinRefused, bounded
from ocm.bench.spawn import Server
from ocm.wire.datagram import HEARTBEAT, LEAVE, history, seal_client, send
from ocm.wire.tcrp import Op

MIB = 1024 * 1024
BURST_CONCURRENCY = 12  # the burst of the issue that started this: 12 at a time


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (bytes) and Threads of a process, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def rss(pid: int) -> int:
    return proc_status(pid).get("VmRSS", 0)


def _fit(series: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares through (seconds, bytes): the slope and its standard error, bytes a second."""
    n = len(series)
    if n < 2:
        return 0.0, 0.0
    mx = statistics.fmean(t for t, _ in series)
    my = statistics.fmean(v for _, v in series)
    sxx = sum((t - mx) ** 2 for t, _ in series)
    if not sxx:
        return 0.0, 0.0
    b = sum((t - mx) * (v - my) for t, v in series) / sxx
    if n < 3:
        return b, 0.0
    residual = sum((v - my - b * (t - mx)) ** 2 for t, v in series)
    return b, math.sqrt(residual / (n - 2) / sxx)


def slope_per_hour(series: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, bytes) points, in MiB per hour."""
    return _fit(series)[0] * 3600 / MIB


def slope_error_per_hour(series: list[tuple[float, float]]) -> float:
    """The least-squares slope's standard error, in MiB per hour."""
    return _fit(series)[1] * 3600 / MIB


def pooled_slope_per_hour(groups: list[list[tuple[float, float]]]) -> float:
    """
    One slope through every sample of several levels, each level with its
    own offset (least squares with a per-group intercept), in MiB per hour:
    how RSS moves with time once it is known which level a sample is on.
    """
    sxy = sxx = 0.0
    for group in groups:
        if len(group) < 2:
            continue
        mx = statistics.fmean(t for t, _ in group)
        my = statistics.fmean(v for _, v in group)
        sxx += sum((t - mx) ** 2 for t, _ in group)
        sxy += sum((t - mx) * (v - my) for t, v in group)
    return sxy / sxx * 3600 / MIB if sxx else 0.0


def hash_seconds(samples: int = 9) -> float:
    """What one scrypt(2^14, 8, 1) takes here, on one thread (median)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        passwords.hash_password("a password")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class Sink(protocol.DatagramProtocol):
    """The one UDP socket every bench member sends from; events are counted."""

    def __init__(self) -> None:
        self.received = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1


@dataclass(eq=False)
class Member:
    room: str
    name: str
    token: bytes
    aead: AESGCM
    host: bool = False
    counter: int = 0
    msg_id: int = 0
    seq: int = 0  # the room's last message number when it joined
    leave_at: float = 0.0
    silent: bool = False  # leaves by going quiet (times out) instead of LEAVE
    next_send: float = 0.0
    guests: list["Member"] = field(default_factory=list)

    def seal(self, inner: bytes) -> bytes:
        self.counter += 1
        return seal_client(self.aead, self.room.encode(), self.token, self.counter, inner)


class Bench:
    """A spawned daemon, a TCRP joiner and the UDP sink, for one measurement."""

    def __init__(self, reactor: Any, options: Any, extra: list[str], traced: str | None = None) -> None:
        self.reactor = reactor
        self.options = options
        self.server = Server(
            reactor, "ocm", options["host"], not options["no-tls"], 1000, 250,
            extra=extra, source=options["daemon-source"], traced=traced,
        )
        self.sink = Sink()
        self.udp: Any = None
        self.joiner: Joiner | None = None

    async def start(self) -> None:
        await self.server.ready()
        self.joiner = Joiner(self.reactor, self.options["host"], self.server.tcp_port, self.server.tls)
        self.udp = self.reactor.listenUDP(0, self.sink, interface=self.options["host"])

    async def stop(self) -> None:
        if self.udp is not None:
            await self.udp.stopListening()
        await self.server.stop()

    @property
    def pid(self) -> int:
        return self.server.pid

    async def enter(self, op: Op, room: str, name: str, password: str | None = None) -> Member:
        body: dict[str, Any] = {"username": name}
        if password:
            body["password"] = password
        reply = await self.joiner.request(op, room, body)
        member = Member(room, name, reply["token"].encode(), AESGCM(base64.b64decode(reply["key"])),
                        host=reply.get("host", False), seq=int(reply.get("seq", 0)))
        self.udp_port = int(reply["udp_port"])
        return member

    def send(self, member: Member, inner: bytes) -> None:
        self.udp.write(member.seal(inner), (self.options["host"], self.udp_port))

    async def send_all(self, members: list[Member], inner: bytes, batch: int = 200) -> None:
        """One datagram each, in batches with a pause, so none are lost on loopback."""
        for i, m in enumerate(members):
            self.send(m, inner)
            if i % batch == batch - 1:
                await deferLater(self.reactor, 0.01, lambda: None)

    async def rooms(self) -> list[dict[str, Any]]:
        return (await self.joiner.request(Op.LIST_ROOMS, "", {}))["rooms"]

    async def close_all(self, hosts: list[Member], timeout: float = 60.0) -> None:
        """Hosts LEAVE (again, for any room still listed) until no room is left."""
        by_room = {h.room: h for h in hosts}
        await self.send_all(hosts, LEAVE)
        deadline = time.monotonic() + timeout
        while True:
            left = [r["name"] for r in await self.rooms()]
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(left)} rooms still open after {timeout} s")
            await deferLater(self.reactor, 0.5, lambda: None)
            await self.send_all([by_room[n] for n in left if n in by_room], LEAVE)

    async def settle(self, seconds: float = 2.0, samples: int = 5) -> int:
        """RSS after a pause: the median of a few samples."""
        await deferLater(self.reactor, seconds, lambda: None)
        values = []
        for _ in range(samples):
            values.append(rss(self.pid))
            await deferLater(self.reactor, 0.2, lambda: None)
        return int(statistics.median(values))


class Peak:
    """RSS and thread count sampled every C{interval} s while a phase runs."""

    def __init__(self, reactor: Any, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.rss = 0
        self.threads = 0
        self.loop = LoopingCall(self.sample)
        self.loop.clock = reactor
        self.loop.start(interval)

    def sample(self) -> None:
        s = proc_status(self.pid)
        self.rss = max(self.rss, s.get("VmRSS", 0))
        self.threads = max(self.threads, s.get("Threads", 0))

    def stop(self) -> None:
        self.sample()
        self.loop.stop()


def _mib(n: float) -> float:
    return round(n / MIB, 1)


async def memory(reactor: Any, options: Any, status: Callable[[str], None]) -> dict[str, Any]:
    """The figures of docs/performance.md's memory section, one daemon."""
    extra = list(options.get("daemon-args") or [])
    traced = None
    if options["tracemalloc"]:
        traced = options["out"] or f"ocm-memory-{time.strftime('%Y%m%d-%H%M%S')}-snapshots"
        os.makedirs(traced, exist_ok=True)
    bench = Bench(reactor, options, extra, traced=traced)
    result: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "daemon_args": extra,
                              "daemon_source": options["daemon-source"] or "this tree"}
    concurrency = options["concurrency"]
    try:
        await bench.start()
        pid = bench.pid
        idle = await bench.settle(3.0)
        result["idle_mib"] = _mib(idle)
        result["idle_threads"] = proc_status(pid).get("Threads")

        # A password burst: 36 CREATEs, then 12 JOINs, `concurrency` at a time.
        status("password burst")
        hash_s = hash_seconds()
        peak = Peak(reactor, pid)
        started = time.monotonic()
        creates = [f"pw{i}" for i in range(36)]
        hosts = await bounded(creates, lambda r: bench.enter(Op.CREATE_ROOM, r, "host", "pw-" + r),
                              BURST_CONCURRENCY)
        guests = await bounded(creates[:12], lambda r: bench.enter(Op.JOIN_ROOM, r, "guest", "pw-" + r),
                               BURST_CONCURRENCY)
        took = time.monotonic() - started
        peak.stop()
        await bench.send_all(hosts + guests, HEARTBEAT)
        with_rooms = await bench.settle(1.0)
        await bench.close_all(hosts)
        after = await bench.settle(3.0)
        cpus = result["cpus"]
        result["burst"] = {
            "requests": 48, "concurrency": BURST_CONCURRENCY, "seconds": round(took, 2),
            "hash_ms": round(hash_s * 1000, 1),
            "bound_seconds": round(2 * 48 * hash_s / cpus, 2),
            "peak_mib": _mib(peak.rss), "peak_threads": peak.threads,
            "rooms_open_mib": _mib(with_rooms), "closed_mib": _mib(after),
            "above_idle_mib": _mib(after - idle),
            "threads_after": proc_status(pid).get("Threads"),
        }

        # Rooms: a thousand rooms of one member each.
        status("1000 rooms")
        before = await bench.settle(1.0)
        hosts = await bounded([f"r{i}" for i in range(1000)],
                              lambda r: bench.enter(Op.CREATE_ROOM, r, "host"), concurrency)
        await bench.send_all(hosts, HEARTBEAT)
        full = await bench.settle(2.0)
        result["per_room_kib"] = round((full - before) / 1000 / 1024, 2)
        await bench.close_all(hosts)

        # Members: rounds of 400 rooms x 10 members joining, then leaving.
        rounds = []
        for n in range(options["memory-rounds"]):
            status(f"round {n + 1}: 4000 members joining")
            before = await bench.settle(1.0)
            names = [f"m{n}-{i}" for i in range(400)]
            hosts = await bounded(names, lambda r: bench.enter(Op.CREATE_ROOM, r, "u0"), concurrency)
            guests = await bounded([(r, k) for k in range(1, 10) for r in names],
                                   lambda p: bench.enter(Op.JOIN_ROOM, p[0], f"u{p[1]}"), concurrency)
            await bench.send_all(hosts + guests, HEARTBEAT)
            joined = await bench.settle(2.0)
            status(f"round {n + 1}: 4000 members leaving")
            await bench.send_all(guests, LEAVE)
            await bench.close_all(hosts)
            left = await bench.settle(3.0)
            rounds.append({"before_mib": _mib(before), "joined_mib": _mib(joined), "left_mib": _mib(left),
                           "per_member_kib": round((joined - before) / 4000 / 1024, 2)})
            if traced:
                os.kill(pid, signal.SIGUSR2)
                await deferLater(reactor, 5.0, lambda: None)
        result["rounds"] = rounds
        if rounds:
            lefts = [r["left_mib"] for r in rounds]
            result["rounds_spread_mib"] = round(max(lefts) - min(lefts), 1)
        result["final_threads"] = proc_status(pid).get("Threads")
        result["hwm_mib"] = _mib(proc_status(pid).get("VmHWM", 0))
    finally:
        await bench.stop()
    if traced:
        result["tracemalloc"] = compare_snapshots(traced)
    return result


class Churn:
    """
    Rooms and members coming and going for as long as it runs: about
    C{target} rooms live, each with a host and up to 12 guests who join over
    the host's life, ask HISTORY for the last few messages, chat (1.1 SEND,
    answered by ECHO) every few seconds, and leave by LEAVE or by going silent
    (and timing out); a host's going closes the room. A quarter of the rooms
    have a password, and now and then someone gives a wrong one or a taken
    name, or lists the rooms.
    """

    def __init__(self, bench: Bench, target: int, rng: random.Random) -> None:
        self.bench = bench
        self.target = target
        self.rng = rng
        self.reactor = bench.reactor
        self.members: set[Member] = set()
        self.rooms: dict[str, Member] = {}  # room -> its host
        self.pending = 0
        self.counts = {"joins": 0, "leaves": 0, "silent": 0, "messages": 0, "refused": 0,
                       "errors": 0, "rooms": 0}
        self.serial = 0
        self.semaphore = defer.DeferredSemaphore(16)

    def _spawn(self, coro: Callable[[], Any]) -> defer.Deferred:
        d = self.semaphore.run(lambda: defer.ensureDeferred(coro()))
        d.addErrback(self._error)
        return d

    def _error(self, failure: Any) -> None:
        if failure.check(JoinRefused):
            self.counts["refused"] += 1
        else:
            self.counts["errors"] += 1

    def _lifetime(self, low: float, high: float) -> float:
        return time.monotonic() + self.rng.uniform(low, high)

    def tick(self) -> None:
        now = time.monotonic()
        rng = self.rng
        # Leaving, chatting and heartbeats.
        for m in list(self.members):
            if m.host and m.room not in self.rooms:
                self.members.discard(m)
                continue
            if not m.host and m.room not in self.rooms:
                self.members.discard(m)  # closed under it
                continue
            if now >= m.leave_at:
                self.members.discard(m)
                if m.silent:
                    self.counts["silent"] += 1
                else:
                    self.bench.send(m, LEAVE)
                    self.counts["leaves"] += 1
                if m.host:
                    del self.rooms[m.room]
                continue
            if now >= m.next_send:
                m.next_send = now + rng.uniform(1.0, 3.0)
                if rng.random() < 0.7:
                    m.msg_id += 1
                    text = f"{m.name} says {secrets.token_hex(rng.randint(4, 40))}"
                    self.bench.send(m, send(m.msg_id, text))
                    self.counts["messages"] += 1
                else:
                    self.bench.send(m, HEARTBEAT)
        # New rooms, up to the target.
        for _ in range(min(4, self.target - len(self.rooms) - self.pending)):
            self.serial += 1
            room = f"soak-{self.serial}-{secrets.token_hex(3)}"
            password = secrets.token_hex(6) if rng.random() < 0.25 else None
            self.pending += 1
            self._spawn(lambda room=room, password=password: self._room(room, password)).addBoth(
                self._created)
        if rng.random() < 0.05:
            self._spawn(self._list)

    def _created(self, _: Any) -> None:
        self.pending -= 1

    async def _list(self) -> None:
        await self.bench.rooms()

    async def _room(self, room: str, password: str | None) -> None:
        rng = self.rng
        host = await self.bench.enter(Op.CREATE_ROOM, room, "host", password)
        self._admit(host, 30, 180)
        self.rooms[room] = host
        self.counts["rooms"] += 1
        # Guests arrive over the host's life, so rooms stay about as full.
        life = host.leave_at - time.monotonic()
        for k in range(rng.randint(0, 12)):
            self.reactor.callLater(rng.uniform(0, 0.8 * life), self._guest_later, room, f"guest{k}", password)
        if rng.random() < 0.1:  # a taken name
            self.reactor.callLater(1, self._guest_later, room, "HOST", password)
        if password and rng.random() < 0.2:  # a wrong password
            self.reactor.callLater(1, self._guest_later, room, "intruder", "wrong")

    def _guest_later(self, room: str, name: str, password: str | None) -> None:
        if room in self.rooms:
            self._spawn(lambda: self._guest(room, name, password))

    async def _guest(self, room: str, name: str, password: str | None) -> None:
        guest = await self.bench.enter(Op.JOIN_ROOM, room, name, password)
        if room not in self.rooms:
            return
        self._admit(guest, 10, 90)

    def _admit(self, m: Member, low: float, high: float) -> None:
        self.counts["joins"] += 1
        m.leave_at = self._lifetime(low, high)
        m.silent = self.rng.random() < 0.3
        m.next_send = 0.0
        self.bench.send(m, HEARTBEAT)
        if m.seq:  # as a 1.1 client does: the last few messages before it joined
            self.bench.send(m, history(max(1, m.seq - 4), m.seq))
        self.members.add(m)


async def soak(reactor: Any, options: Any, status: Callable[[str], None]) -> dict[str, Any]:
    """Churn for --soak minutes, sampling the daemon's RSS every --sample s."""
    minutes = options["soak"]
    every = options["sample"]
    out = Path(options["out"] or f"ocm-soak-{time.strftime('%Y%m%d-%H%M%S')}.csv").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    traced = None
    if options["tracemalloc"]:
        traced = str(out.with_suffix("")) + "-snapshots"
        os.makedirs(traced, exist_ok=True)
    extra = ["--timeout", str(options["soak-timeout"]), *(options.get("daemon-args") or [])]
    bench = Bench(reactor, options, extra, traced=traced)
    rng = random.Random(options["seed"])
    series: list[tuple[float, int]] = []
    result: dict[str, Any] = {"minutes": minutes, "sample_s": every, "csv": str(out),
                              "daemon_args": extra, "rooms_target": options["soak-rooms"],
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        await bench.start()
        churn = Churn(bench, options["soak-rooms"], rng)
        ticker = LoopingCall(churn.tick)
        ticker.clock = reactor
        ticker.start(0.25)
        started = time.monotonic()
        snaps = 0
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["t_s", "rss_kib", "threads", "rooms", "members", "joins", "leaves",
                             "timeouts", "messages", "refused", "errors", "events_in"])
            next_snap = started + (options["tracemalloc"] or 0)
            while True:
                t = time.monotonic() - started
                s = proc_status(bench.pid)
                if not s:
                    raise RuntimeError(f"the daemon is gone:\n{bench.server.log_tail()}")
                series.append((t, s["VmRSS"]))
                c = churn.counts
                writer.writerow([round(t, 1), s["VmRSS"] // 1024, s["Threads"], len(churn.rooms),
                                 len(churn.members), c["joins"], c["leaves"], c["silent"],
                                 c["messages"], c["refused"], c["errors"], bench.sink.received])
                f.flush()
                status(f"soak {t / 60:.1f}/{minutes} min: RSS {s['VmRSS'] / MIB:.1f} MiB, "
                       f"{len(churn.rooms)} rooms, {len(churn.members)} members, {c['joins']} joins")
                if traced and time.monotonic() >= next_snap:
                    os.kill(bench.pid, signal.SIGUSR2)
                    snaps += 1
                    next_snap += options["tracemalloc"]
                if t >= minutes * 60:
                    break
                await deferLater(reactor, every, lambda: None)
        ticker.stop()
        result["counts"] = dict(churn.counts)
    finally:
        await bench.stop()
    result.update(summarize_series(series))
    if traced:
        result["tracemalloc"] = compare_snapshots(traced)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def floor_series(series: list[tuple[float, int]], window: float = 300.0) -> list[tuple[float, int]]:
    """
    The least RSS of each C{window} seconds: what the daemon holds between
    password hashes (a hash in flight adds its 16 MiB for a moment, and a
    sample that lands on one says little about what stays).
    """
    out: dict[int, tuple[float, int]] = {}
    span: dict[int, list[float]] = {}
    for t, v in series:
        k = int(t // window)
        if k not in out or v < out[k][1]:
            out[k] = (t, v)
        span.setdefault(k, [t, t])[1] = t
    # A window cut short (the last sample alone, say) has no least to speak of.
    keys = [k for k in sorted(out) if span[k][1] - span[k][0] >= window / 2] or sorted(out)
    return [out[k] for k in keys]


def summarize_series(series: list[tuple[float, int]]) -> dict[str, Any]:
    """
    First, last, peak, and the slope over the whole run and its second half:
    of every sample, of each five minutes' least (the floor), and of the two
    levels the samples of a churn with passwords fall in: "low", within
    8 MiB of the second half's least (no hash buffer held), and "high" (one
    or two 16 MiB hash buffers held: a hash ran in the last second); and
    the slope of every sample with each level's offset taken out, beside
    the plain slope's standard error (samples 16 MiB apart at random make
    the plain slope swing by several MiB an hour either way).
    """
    if not series:
        return {}
    end = series[-1][0]
    second = [p for p in series if p[0] >= end / 2]
    floor = floor_series(second)
    least = min(v for _, v in second)
    low = [p for p in second if p[1] < least + 8 * MIB]
    high = [p for p in second if p[1] >= least + 8 * MIB]
    return {
        "samples": len(series),
        "first_mib": _mib(series[0][1]),
        "last_mib": _mib(series[-1][1]),
        "max_mib": _mib(max(v for _, v in series)),
        "second_half_min_mib": _mib(min(v for _, v in second)),
        "second_half_max_mib": _mib(max(v for _, v in second)),
        "slope_mib_per_hour": round(slope_per_hour(series), 2),
        "second_half_slope_mib_per_hour": round(slope_per_hour(second), 2),
        "second_half_slope_error_mib_per_hour": round(slope_error_per_hour(second), 2),
        "second_half_slope_within_levels_mib_per_hour": round(pooled_slope_per_hour([low, high]), 2),
        "second_half_floor_slope_mib_per_hour": round(slope_per_hour(floor), 2),
        "second_half_floor_min_mib": _mib(min(v for _, v in floor)),
        "second_half_floor_max_mib": _mib(max(v for _, v in floor)),
        "second_half_low_samples": len(low),
        "second_half_low_slope_mib_per_hour": round(slope_per_hour(low), 2),
        "second_half_high_samples": len(high),
        "second_half_high_slope_mib_per_hour": round(slope_per_hour(high), 2),
    }


def read_series(path: str) -> list[tuple[float, int]]:
    """A soak CSV's (seconds, RSS bytes) points."""
    with open(path, newline="") as f:
        return [(float(row["t_s"]), int(row["rss_kib"]) * 1024) for row in csv.DictReader(f)]


def compare_snapshots(directory: str, top: int = 15) -> list[str]:
    """What grew by line between the snapshot at half time and the last."""
    import tracemalloc

    snaps = sorted(glob.glob(os.path.join(directory, "snap-*.tracemalloc")))
    if len(snaps) < 2:
        return []
    first = tracemalloc.Snapshot.load(snaps[(len(snaps) - 1) // 2])
    last = tracemalloc.Snapshot.load(snaps[-1])
    return [str(s) for s in last.compare_to(first, "lineno")[:top]]


def format_memory(r: dict[str, Any]) -> str:
    """C{--memory}'s figures for a person."""
    b = r["burst"]
    lines = [
        f"daemon: {r['daemon_source']} {' '.join(r['daemon_args'])}".rstrip() + f", {r['cpus']} CPUs",
        f"idle: {r['idle_mib']} MiB, {r['idle_threads']} threads",
        f"password burst ({b['requests']} requests, {b['concurrency']} at a time): {b['seconds']} s "
        f"(bound {b['bound_seconds']} s at {b['hash_ms']} ms a hash); peak {b['peak_mib']} MiB and "
        f"{b['peak_threads']} threads; {b['rooms_open_mib']} MiB with its rooms open, "
        f"{b['closed_mib']} MiB once closed ({b['above_idle_mib']:+} MiB on idle), "
        f"{b['threads_after']} threads",
        f"per room (1000 rooms of one member): {r['per_room_kib']} KiB",
    ]
    for i, n in enumerate(r["rounds"], 1):
        lines.append(f"round {i}: {n['before_mib']} -> {n['joined_mib']} MiB with 4000 members "
                     f"({n['per_member_kib']} KiB each) -> {n['left_mib']} MiB after they left")
    if r["rounds"]:
        lines.append(f"spread of the rounds' ends: {r['rounds_spread_mib']} MiB")
    if r.get("tracemalloc"):
        lines.append("grew by line, from the middle round's end to the last's (tracemalloc):")
        lines += ["  " + line for line in r["tracemalloc"]]
    lines.append(f"peak RSS (VmHWM): {r['hwm_mib']} MiB, threads at the end: {r['final_threads']}")
    return "\n".join(lines)
