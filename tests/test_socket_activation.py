"""
Sockets that outlive the process (issue 22 part 3): the daemon takes its
listeners from systemd's LISTEN_FDS, and a datagram sent while it restarts
waits in the kernel and is served by the next process. The test itself is
the holder of the sockets, as systemd would be (ocm.socket).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from twisted.internet import reactor

from ocm.wire.datagram import EventKind, send
from tests import wire
from tests.processes import LIMIT, ProcessTestCase

# Put the two held sockets at descriptors 3 and 4 and say so as systemd
# does (LISTEN_PID is the exec'd process's own pid), then exec twistd.
WRAP = """
import fcntl, os, sys
a, b = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])  # out of the way of 3 and 4
os.dup2(a, 3); os.dup2(b, 4)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="tcrp:udp")
os.execv(sys.executable, [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *sys.argv[3:]])
"""


class SocketActivationTests(ProcessTestCase):
    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        self.stream = socket.socket()
        self.stream.bind(("127.0.0.1", 0))
        self.stream.listen(64)
        self.datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.datagram.bind(("127.0.0.1", 0))
        for s in (self.stream, self.datagram):
            self.addCleanup(s.close)
        self.tcp, self.udp = self.stream.getsockname()[1], self.datagram.getsockname()[1]
        self.starts = 0

    def daemon(self, *tcp_udp: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        log = self.dir / f"daemon{self.starts}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAP, str(self.stream.fileno()), str(self.datagram.fileno()),
             "-n", "--pidfile=", "--logfile", str(log), "ocm", "--no-tls", *tcp_udp,
             "--data-dir", str(self.dir / "data")],
            cwd=self.dir, env=self.env, pass_fds=(self.stream.fileno(), self.datagram.fileno()),
            stdout=subprocess.DEVNULL, stderr=open(self.dir / f"daemon{self.starts}.err", "wb"),
        )
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(LIMIT)))
        self.wait_for(lambda: "ocm listening" in self.read(log.name) or proc.poll() is not None,
                      "the daemon to start")
        self.assertIsNone(proc.poll(), self.read(log.name) + self.read(f"daemon{self.starts}.err"))
        return proc

    async def test_a_datagram_sent_during_the_restart_is_served_after_it(self):
        args = ("--tcp", "systemd:index=0", "--udp", "systemd:name=udp")
        first = self.daemon(*args)
        self.assertIn(f"127.0.0.1:{self.tcp}", self.read("daemon1.log"))
        exchange = await wire.tcrp(reactor, self.tcp, wire.request(
            wire.CREATE_ROOM, "Lobby", {"username": "alice", "version": "1.2"}), pin=None)
        status, complete = wire.answer(exchange)
        self.assertEqual((status, complete["udp_port"]), (200, self.udp))
        alice = wire.Member(reactor, b"Lobby", complete, ("127.0.0.1", self.udp))
        self.addCleanup(alice.close)
        alice.heartbeat()
        self.assertEqual((await alice.event()).kind, EventKind.PONG)

        first.send_signal(signal.SIGTERM)
        first.wait(LIMIT)  # twistd ends a SIGTERM by raising it again, as systemd expects
        self.assertEqual((await alice.event()).kind, EventKind.RESTARTING)
        # No daemon runs now: the datagram waits in the held socket's queue.
        alice.send(alice.seal(send(1, "typed during the restart")))

        self.daemon(*args)
        self.assertIn("restored 1 rooms with 1 members", self.read("daemon2.log"))
        echo = await alice.event()
        self.assertEqual((echo.kind, echo.text), (EventKind.ECHO, "\x00\x00\x00\x01"))
        # And a new TCRP connection is accepted on the same held socket.
        exchange = await wire.tcrp(reactor, self.tcp, wire.request(
            wire.JOIN_ROOM, "Lobby", {"username": "bob"}), pin=None)
        self.assertEqual(wire.answer(exchange)[0], 200)

    def test_a_missing_socket_is_refused_with_a_sentence(self):
        log = self.dir / "refused.log"
        proc = subprocess.run(
            [sys.executable, "-c", WRAP, str(self.stream.fileno()), str(self.datagram.fileno()),
             "-n", "--pidfile=", "--logfile", str(log), "ocm", "--no-tls",
             "--tcp", "systemd:index=0", "--udp", "systemd:name=chat", "--data-dir", str(self.dir / "d")],
            cwd=self.dir, env=self.env, pass_fds=(self.stream.fileno(), self.datagram.fileno()),
            capture_output=True, text=True, timeout=LIMIT,
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("--udp: systemd passed no socket named 'chat' (names: tcrp, udp)", proc.stdout + proc.stderr)
