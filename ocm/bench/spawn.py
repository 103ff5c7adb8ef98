"""
Servers the bench starts itself (C{--spawn}): the ocm daemon under
C{python -m twisted ocm} with its limits raised, or the floor, on free
loopback ports; and the CPU time a process has used, read from /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.internet.task import LoopingCall, deferLater

import ocm

# Where the ocm package the bench runs from lives, so children run the same code.
SOURCE_ROOT = str(Path(ocm.__file__).resolve().parent.parent)
_TICKS = os.sysconf("SC_CLK_TCK")


def child_env(source: str | None = None) -> dict[str, str]:
    """The environment for a child: this ocm first on its path (or C{source}'s)."""
    env = dict(os.environ)
    roots = [source, SOURCE_ROOT] if source else [SOURCE_ROOT]
    paths = roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU of a process (all its threads), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_ticks(cpu: int) -> tuple[int, int, int] | None:
    """(busy, softirq, total) clock ticks of one CPU from /proc/stat. On
    loopback much of a C{sendto}'s delivery work runs as softirq on the
    sender's CPU."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *values = line.split()
        if name == f"cpu{cpu}":
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system + irq + softirq
            return busy, softirq, busy + idle + iowait + steal
    return None


def free_port(kind: int, host: str) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_limits() -> set[str]:
    """The long option names C{twistd ocm} accepts in this version."""
    from ocm.server.tap import Options

    return {p[0] for p in Options.optParameters} | {f[0] for f in Options.optFlags}


class _Collector(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.output = bytearray()

    def outReceived(self, data: bytes) -> None:
        self.output += data[-4096:]
        del self.output[:-8192]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


class Server:
    """A spawned server process: its ports, pid, and how to stop it."""

    def __init__(
        self, reactor: Any, kind: str, host: str, tls: bool, rooms: int, members: int,
        extra: list[str] | tuple[str, ...] | None = None, source: str | None = None,
        traced: str | None = None, scrape: float | None = None,
    ) -> None:
        """
        @param extra: more C{twistd ocm} options (they win over the bench's),
            e.g. a cluster node's --redis.
        @param source: run the daemon from this source tree (its ocm first
            on the path), e.g. another checkout for a before/after figure.
        @param traced: run it under L{ocm.bench.traced}, snapshots to this
            directory.
        @param scrape: serve --metrics, to be scraped this often.
        """
        self.reactor = reactor
        self.kind = kind
        self.host = host
        self.tls = tls and kind == "ocm"
        self.tcp_port = free_port(socket.SOCK_STREAM, host)
        self.udp_port = free_port(socket.SOCK_DGRAM, host)
        self.dir = tempfile.mkdtemp(prefix=f"ocm-bench-{kind}-")
        self.scrape_every = scrape if kind == "ocm" else None
        self.scrapes = self.scrape_errors = 0
        self.scrape_ms: list[float] = []
        if kind in ("floor", "floor-twisted", "ocm-plain"):
            args = ["-m", "ocm.bench.floor", "--host", host,
                    "--tcp", str(self.tcp_port), "--udp", str(self.udp_port)]
            if kind == "floor-twisted":
                args.append("--twisted")
            if kind == "ocm-plain":
                args.append("--ocm-code")
        else:
            run = ["-m", "ocm.bench.traced", traced] if traced else ["-m", "twisted"]
            args = [*run, "--log-format", "text",
                    "--log-file", os.path.join(self.dir, "ocm.log"), "ocm",
                    "--tcp", f"tcp:{self.tcp_port}:interface={host}:backlog=1024",
                    "--udp", str(self.udp_port), "--interface", host,
                    "--data-dir", self.dir, "--timeout", "600"]
            known = server_limits()
            args += ["--max-rooms", str(max(1000, rooms)), "--max-members", str(max(250, members))]
            # Per-address limits (all the bench's joins come from one
            # address) lifted where this version has them; the per-member
            # datagram rate stays at its default, which the load is under.
            for option, value in (("request-rate", "0"), ("max-per-address", "100000"),
                                  ("max-connections", "100000"), ("max-rooms-per-address", "100000"),
                                  ("max-members-per-address", "1000000")):
                if option in known:
                    args += [f"--{option}", value]
            if not self.tls:
                args.append("--no-tls")
            # --scrape: serve --metrics and be scraped as Prometheus would.
            if scrape is not None:
                self.metrics_port = free_port(socket.SOCK_STREAM, host)
                args += ["--metrics", f"tcp:{self.metrics_port}:interface={host}"]
            args += list(extra or ())
        self.argv = [sys.executable, *args]
        self._proto = _Collector()
        self.process = reactor.spawnProcess(
            self._proto, sys.executable, self.argv, env=child_env(source), path=self.dir
        )
        self.pid: int = self.process.pid

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def log_tail(self) -> str:
        text = self._proto.output.decode(errors="replace")
        log = Path(self.dir, "ocm.log")
        if log.exists():
            text += log.read_text(errors="replace")[-4096:]
        return text.strip()

    async def ready(self, timeout: float = 20.0) -> None:
        """Wait until the TCP port accepts a connection."""
        endpoint = endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.tcp_port, timeout=1)
        deadline = self.reactor.seconds() + timeout
        while True:
            if self._proto.ended.called:
                raise RuntimeError(f"the {self.kind} server exited at start:\n{self.log_tail()}")
            try:
                proto = await endpoints.connectProtocol(endpoint, protocol.Protocol())
            except Exception:
                if self.reactor.seconds() > deadline:
                    raise RuntimeError(f"the {self.kind} server did not listen in {timeout} s:\n{self.log_tail()}")
                await deferLater(self.reactor, 0.1, lambda: None)
                continue
            proto.transport.abortConnection()
            if self.scrape_every is not None:
                self._scraper = LoopingCall(self._scrape)
                self._scraper.clock = self.reactor
                self._scraper.start(self.scrape_every, now=True)
            return

    async def _scrape(self) -> None:
        from twisted.web.client import Agent, readBody

        url = f"http://{self.host}:{self.metrics_port}/metrics".encode()
        start = self.reactor.seconds()
        try:
            response = await Agent(self.reactor).request(b"GET", url)
            body = await readBody(response)
            ok = response.code == 200 and b"ocm_datagrams_received_total" in body
        except Exception:
            ok = False
        if ok:
            self.scrapes += 1
            self.scrape_ms.append((self.reactor.seconds() - start) * 1000)
        else:
            self.scrape_errors += 1

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (SIGKILL after C{grace}), then remove its directory."""
        scraper = getattr(self, "_scraper", None)
        if scraper is not None and scraper.running:
            scraper.stop()
        if not self._proto.ended.called:
            self.process.signalProcess("TERM")
            timer = self.reactor.callLater(grace, self._kill)
            await self._proto.ended
            if timer.active():
                timer.cancel()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


class RedisProcess:
    """A redis-server for a spawned cluster (C{--cluster}): loopback, no disk."""

    def __init__(self, reactor: Any, host: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--cluster needs redis-server (apt-get install redis-server)")
        self.reactor = reactor
        self.host = host
        self.port = free_port(socket.SOCK_STREAM, host)
        self.dir = tempfile.mkdtemp(prefix="ocm-bench-redis-")
        self._proto = _Collector()
        argv = [binary, "--port", str(self.port), "--bind", host, "--dir", self.dir,
                "--save", "", "--appendonly", "no"]
        self.process = reactor.spawnProcess(self._proto, binary, argv, env=dict(os.environ), path=self.dir)
        self.pid: int = self.process.pid

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    async def ready(self, timeout: float = 10.0) -> None:
        endpoint = endpoints.TCP4ClientEndpoint(self.reactor, self.host, self.port, timeout=1)
        deadline = self.reactor.seconds() + timeout
        while True:
            try:
                proto = await endpoints.connectProtocol(endpoint, protocol.Protocol())
            except Exception:
                if self._proto.ended.called or self.reactor.seconds() > deadline:
                    raise RuntimeError("redis-server did not start:\n" + self._proto.output.decode(errors="replace"))
                await deferLater(self.reactor, 0.05, lambda: None)
                continue
            proto.transport.abortConnection()
            return

    async def stop(self) -> None:
        if not self._proto.ended.called:
            self.process.signalProcess("KILL")
            await self._proto.ended
        shutil.rmtree(self.dir, ignore_errors=True)
