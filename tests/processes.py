"""
What the end-to-end tests share: real C{twistd} and C{ocm-client}
processes, each in a temporary directory of its own, with its output kept
in files the test reads, and killed by cleanup whatever the test's outcome.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from twisted.trial import unittest

import ocm
from ocm.bench.spawn import free_port

REPO = Path(ocm.__file__).resolve().parent.parent
LIMIT = 30.0  # seconds any one wait may take


class ProcessTestCase(unittest.TestCase):
    """A test that runs this checkout's programs as a user would."""

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
        """Start C{python ARGS}; its output goes to NAME.out and NAME.err."""
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=self.dir, env=self.env, stdin=subprocess.PIPE,
            stdout=open(self.dir / f"{name}.out", "wb"), stderr=open(self.dir / f"{name}.err", "wb"),
        )

        def cleanup() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(LIMIT)
            if proc.stdin:
                proc.stdin.close()

        self.addCleanup(cleanup)
        return proc

    def twistd(self, *args: str, ready: str) -> subprocess.Popen[bytes]:
        """
        C{twistd -n ocm} on free loopback ports (C{self.tcp}, C{self.udp}),
        logging to daemon.log; returns once the log says READY.
        """
        self.tcp = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.udp = free_port(socket.SOCK_DGRAM, "127.0.0.1")
        daemon = self.spawn("daemon", [
            "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.dir / "daemon.log"), "ocm",
            "--tcp", f"tcp:{self.tcp}:interface=127.0.0.1", "--udp", str(self.udp),
            "--interface", "127.0.0.1", "--data-dir", str(self.dir / "data"), *args,
        ])
        self.wait_for(lambda: ready in self.read("daemon.log") or daemon.poll() is not None, "the daemon to start")
        self.assertIsNone(daemon.poll(), self.read("daemon.log") + self.read("daemon.err"))
        return daemon

    def read(self, name: str) -> str:
        """A file of the test's directory as text; empty until it exists."""
        path = self.dir / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_for(self, check: Callable[[], Any], what: str | Callable[[], str], limit: float = LIMIT) -> Any:
        """Poll CHECK until it gives something true, and return that; fail after LIMIT seconds."""
        deadline = time.monotonic() + limit
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                self.fail(f"gave up waiting for {what() if callable(what) else what}")
            time.sleep(0.05)
