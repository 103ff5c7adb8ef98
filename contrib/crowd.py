"""
A classroom behind one address, measured: start C{twistd -n ocm} with its
default limits, let a teacher create a password room, optionally let one
student mistype the password, then start N C{ocm-client} processes at once,
each piping one line into the room. Prints how many got in and chatted
(their line came back), how long the last one took, and the daemon's CPU.

    python contrib/crowd.py --clients 30 [--typos 10] [--daemon-arg=--no-tls]

When comparing numbers, run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The script's own folder is on sys.path: the helpers burst.py measures with.
from burst import cpu_seconds, free_port  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=30)
    p.add_argument("--typos", type=int, default=0, help="wrong passwords one student types first")
    p.add_argument("--limit", type=float, default=120.0)
    p.add_argument("--daemon-arg", action="append", default=[])
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose daemon and client to run")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ocm-crowd-"))
    env = dict(os.environ, PYTHONPATH=str(args.repo.resolve()), XDG_CONFIG_HOME=str(work / "config"), PYTHONUNBUFFERED="1")
    env.pop("OCM_PASSWORD", None)
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    no_tls = ["--no-tls"] if "--no-tls" in args.daemon_arg else []
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile", str(work / "daemon.log"), "ocm",
         "--tcp", f"tcp:{tcp}:interface=127.0.0.1", "--udp", str(udp), "--interface", "127.0.0.1",
         "--data-dir", str(work / "data"), *args.daemon_arg],
        env=env, cwd=work,
    )
    procs: list[subprocess.Popen] = []
    try:
        log = work / "daemon.log"
        deadline = time.monotonic() + 30
        while not (log.exists() and "ocm listening" in log.read_text()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("daemon did not start:\n" + (log.read_text() if log.exists() else ""))
            time.sleep(0.1)
        time.sleep(0.5)

        def client(name: str, *extra: str, stdin=subprocess.PIPE) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "ocm.client", "127.0.0.1", "--port", str(tcp), "--name", name,
                 "--room", "Class", *no_tls, *extra],
                env=env, cwd=work, stdin=stdin,
                stdout=open(work / f"{name}.out", "wb"), stderr=open(work / f"{name}.err", "wb"),
            )

        teacher = client("teacher", "--create", "--password", "pw-of-the-class")
        procs.append(teacher)
        deadline = time.monotonic() + 30
        while "Created room" not in (work / "teacher.err").read_text():
            if time.monotonic() > deadline or teacher.poll() is not None:
                sys.exit("teacher could not create the room: " + (work / "teacher.err").read_text())
            time.sleep(0.05)
        for i in range(args.typos):
            # One student, one name, a wrong password each time. Once their
            # own budget is spent the client waits to try again: leave it
            # waiting (and typing) while the others join.
            typo = client("typist", "--join", "--password", f"wrong{i}", stdin=subprocess.DEVNULL)
            procs.append(typo)
            try:
                typo.wait(3)
            except subprocess.TimeoutExpired:
                pass
            lines = (work / "typist.err").read_text().strip().splitlines()
            print(f"typo {i}: {lines[-1] if lines else '(nothing yet)'}")
        cpu0 = cpu_seconds(daemon.pid)
        start = time.monotonic()
        students = []
        for i in range(args.clients):
            s = client(f"s{i:02d}", "--join", "--password", "pw-of-the-class")
            s.stdin.write(f"hello from s{i:02d}\n".encode())
            s.stdin.close()
            students.append(s)
        procs.extend(students)
        finished = {}
        while len(finished) < len(students) and time.monotonic() - start < args.limit:
            for i, s in enumerate(students):
                if i not in finished and s.poll() is not None:
                    finished[i] = time.monotonic() - start
            time.sleep(0.05)
        cpu = cpu_seconds(daemon.pid) - cpu0
        chatted, waited, reasons = 0, 0, {}
        for i in range(args.clients):
            out = (work / f"s{i:02d}.out").read_text()
            err = (work / f"s{i:02d}.err").read_text()
            if re.search(rf"\] s{i:02d}: hello from s{i:02d}$", out, re.M):
                chatted += 1
            else:
                last = err.strip().splitlines()[-1] if err.strip() else "(nothing)"
                reasons[last] = reasons.get(last, 0) + 1
            if "trying again" in err:
                waited += 1
        print(f"{chatted} of {args.clients} chatted; {waited} waited at least once; "
              f"last finished after {max(finished.values(), default=0):.1f} s; "
              f"daemon CPU for the burst {cpu:.2f} s")
        for reason, n in reasons.items():
            print(f"  {n}x {reason}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


if __name__ == "__main__":
    main()
