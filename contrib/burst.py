"""
A burst of TCRP requests from one address, in one process, through the
bundled client's request and retry code (ocm.client.tcrp, ocm.client.retry),
against C{twistd -n ocm} in its own process: how long until all are in, how
many waited, and the CPU the daemon spent on the burst.

    python contrib/burst.py --clients 50 [--op join|list|open] [--daemon-arg=--max-per-address=20]

--op join: JOIN a password room (scrypt per request); open: JOIN an open
room; list: LIST_ROOMS. --victim N: meanwhile another address (127.0.0.2)
makes N password JOINs one after another; their median time is reported, and
the same from an idle daemon first. --flood N: instead of the burst, N loops
from 127.0.0.1 send LIST_ROOMS without pause (a flooder that ignores
refusals) while the victim's joins run. Run it with nothing else measuring on the machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--op", choices=("join", "open", "list"), default="join")
    p.add_argument("--victim", type=int, default=0)
    p.add_argument("--flood", type=int, default=0)
    p.add_argument("--daemon-arg", action="append", default=[])
    args = p.parse_args()

    from twisted.internet import defer, reactor, task

    from ocm.client.errors import ClientError
    from ocm.client.retry import retrying
    from ocm.client.tcrp import Server, request
    from ocm.client.trust import KnownServers, PinnedTrust
    from ocm.wire.tcrp import Op
    from tests import wire

    work = Path(tempfile.mkdtemp(prefix="ocm-burst-"))
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile", str(work / "daemon.log"), "ocm",
         "--tcp", f"tcp:{tcp}:interface=127.0.0.1", "--udp", str(udp), "--interface", "127.0.0.1",
         "--data-dir", str(work / "data"), *args.daemon_arg],
        env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=work,
    )
    log = work / "daemon.log"
    deadline = time.monotonic() + 30
    while not (log.exists() and "ocm listening" in log.read_text()):
        if time.monotonic() > deadline or daemon.poll() is not None:
            sys.exit("daemon did not start")
        time.sleep(0.1)
    server = Server("127.0.0.1", tcp, PinnedTrust(KnownServers(work / "known"), lambda s: None))
    result: dict = {}

    pin = wire.pem_digest((work / "data" / "server.pem").read_bytes())

    async def victim(n: int, tag: str) -> list[float]:
        times = []
        for i in range(n):
            t0 = reactor.seconds()
            exchange = await wire.tcrp(reactor, tcp, wire.request(
                wire.JOIN_ROOM, "Other", {"username": f"{tag}{i}", "password": "pw2"}), pin=pin, bind="127.0.0.2")
            status = wire.answer(exchange)[0]
            times.append(reactor.seconds() - t0 if status == 200 else float("inf"))
        return times

    async def flooder(stop: list[bool], counts: dict) -> None:
        while not stop:
            try:
                await request(reactor, server, Op.LIST_ROOMS)
                counts["ok"] = counts.get("ok", 0) + 1
            except ClientError:
                counts["refused"] = counts.get("refused", 0) + 1

    async def run() -> None:
        password = "pw" if args.op == "join" else ""
        if args.op != "list":
            await request(reactor, server, Op.CREATE_ROOM, "Class", "teacher", password)
        if args.victim:
            await wire.tcrp(reactor, tcp, wire.request(
                wire.CREATE_ROOM, "Other", {"username": "host", "password": "pw2"}), pin=pin, bind="127.0.0.3")
            idle = sorted(await victim(args.victim, "idle"))
            result["idle"] = idle[len(idle) // 2]
        if args.flood:
            stop: list[bool] = []
            counts: dict = {}
            cpu0 = cpu_seconds(daemon.pid)
            start = reactor.seconds()
            loops = [defer.ensureDeferred(flooder(stop, counts)) for _ in range(args.flood)]
            busy = sorted(await victim(args.victim, "busy"))
            stop.append(True)
            await defer.DeferredList(loops)
            elapsed = reactor.seconds() - start
            result.update(flood=True, busy=busy[len(busy) // 2], counts=counts, elapsed=elapsed,
                          cpu=cpu_seconds(daemon.pid) - cpu0)
            return
        notes: list[str] = []
        cpu0 = cpu_seconds(daemon.pid)
        start = reactor.seconds()
        done: list[float] = []
        victims = defer.ensureDeferred(victim(args.victim, "busy"))

        async def one(i: int) -> None:
            if args.op == "list":
                attempt = lambda: request(reactor, server, Op.LIST_ROOMS)  # noqa: E731
            else:
                attempt = lambda: request(reactor, server, Op.JOIN_ROOM, "Class", f"s{i}", password)  # noqa: E731
            await retrying(reactor, attempt, lambda line: notes.append(f"{i}"))
            done.append(reactor.seconds() - start)

        outcomes = await defer.DeferredList(
            [defer.ensureDeferred(one(i)) for i in range(args.clients)], consumeErrors=True
        )
        busy = sorted(await victims)
        if busy:
            result["busy"] = busy[len(busy) // 2]
        # Let the daemon finish closing the connections before reading its CPU.
        await task.deferLater(reactor, 0.5, lambda: None)
        result.update(
            ok=sum(1 for ok, _ in outcomes if ok),
            failed=[f.value.sentence if f.check(ClientError) else repr(f.value) for ok, f in outcomes if not ok],
            waited=len(set(notes)), tries=len(notes) + args.clients,
            last=max(done, default=0.0), cpu=cpu_seconds(daemon.pid) - cpu0 - 0.0,
        )

    def go() -> None:
        d = defer.ensureDeferred(run())
        d.addErrback(lambda f: result.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)
    if "error" in result:
        sys.exit(result["error"])
    if args.victim:
        print(f"victim join from 127.0.0.2, median of {args.victim}: idle {1000 * result['idle']:.0f} ms, "
              f"during the {'flood' if args.flood else 'burst'} {1000 * result['busy']:.0f} ms")
    if args.flood:
        print(f"flood x{args.flood} for {result['elapsed']:.1f} s: {result['counts']}; "
              f"daemon CPU {result['cpu']:.2f} s ({100 * result['cpu'] / result['elapsed']:.0f}% of a core)")
        return
    print(f"{args.op} x{args.clients}: {result['ok']} in; {result['waited']} waited; "
          f"{result['tries']} tries; last in after {result['last']:.2f} s; "
          f"daemon CPU {result['cpu']:.2f} s ({1000 * result['cpu'] / result['tries']:.1f} ms a try)")
    for f in result["failed"][:3]:
        print("  failed:", f)


if __name__ == "__main__":
    main()
