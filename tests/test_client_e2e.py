"""
End to end, as a newcomer would run it: C{twistd -n ocm} and two
C{ocm-client} processes, one piping lines in, one printing what arrives.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from twisted.trial import unittest

import ocm

REPO = Path(ocm.__file__).resolve().parent.parent
LIMIT = 30.0  # seconds any one wait may take


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EndToEndTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        path = os.environ.get("PYTHONPATH")
        self.env = dict(
            os.environ,
            PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
            XDG_CONFIG_HOME=str(self.dir / "config"),
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("OCM_PASSWORD", None)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=open(self.dir / f"{name}.out", "wb"),
            stderr=open(self.dir / f"{name}.err", "wb"),
        )

        def cleanup() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(LIMIT)
            if proc.stdin:
                proc.stdin.close()

        self.addCleanup(cleanup)
        return proc

    def read(self, name: str) -> str:
        return (self.dir / name).read_text(encoding="utf-8", errors="replace")

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + LIMIT
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"gave up waiting for {what}")
            time.sleep(0.05)

    def client(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp), *args])

    def test_two_terminals(self) -> None:
        self.tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        daemon = self.spawn("daemon", [
            "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.dir / "daemon.log"), "ocm",
            "--tcp", f"tcp:{self.tcp}:interface=127.0.0.1", "--udp", str(udp),
            "--interface", "127.0.0.1", "--data-dir", str(self.dir / "data"),
        ])
        log = self.dir / "daemon.log"
        self.wait_for(lambda: log.exists() and "TLS fingerprint SHA256:" in self.read("daemon.log")
                      or daemon.poll() is not None, "the daemon to start")
        match = re.search(r"TLS fingerprint SHA256:([0-9A-F:]{95})", self.read("daemon.log"))
        self.assertIsNotNone(match, self.read("daemon.log") + self.read("daemon.err"))
        fingerprint = match.group(1)

        # Terminal 1: alice creates the room and watches.
        alice = self.client("alice", "--name", "alice", "--room", "e2e", "--create")
        self.wait_for(lambda: "Created room 'e2e'" in self.read("alice.err") or alice.poll() is not None,
                      "alice to create the room")
        self.assertIn(f"TLS fingerprint SHA256:{fingerprint}", self.read("alice.err"))

        # Terminal 2: a script pipes two lines into the room.
        bob = self.client("bob", "--name", "bob", "--room", "e2e")
        bob.stdin.write("hello from bob\n\nsecond line\n".encode())
        bob.stdin.close()
        self.assertEqual(bob.wait(LIMIT), 0, self.read("bob.err"))
        self.assertRegex(self.read("bob.out"),
                         r"^\[\d\d:\d\d:\d\d\] bob: hello from bob\n\[\d\d:\d\d:\d\d\] bob: second line\n$")
        self.assertNotIn("First connection", self.read("bob.err"))  # alice pinned it already

        self.wait_for(lambda: "* bob left" in self.read("alice.out"), "alice to see bob leave")
        shown = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "[time] ", line) for line in self.read("alice.out").splitlines()]
        self.assertEqual(shown, [
            "* bob joined", "[time] bob: hello from bob", "[time] bob: second line", "* bob left",
        ])
        alice.stdin.close()
        self.assertEqual(alice.wait(LIMIT), 0, self.read("alice.err"))
        self.assertNotIn("Traceback", self.read("alice.err") + self.read("bob.err"))

        known = self.read("config/ocm/known_servers")
        self.assertIn(f"127.0.0.1:{self.tcp} SHA256:{fingerprint}\n", known)
        daemon.send_signal(signal.SIGTERM)
        self.assertIsNotNone(daemon.wait(LIMIT))
