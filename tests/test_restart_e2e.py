"""
Issue 22's first Done-when, end to end: two real ocm-client processes
(over a seeded 15% loss, both ways) and a browser member chat while
C{twistd -n ocm} is stopped with SIGTERM and started again three times.
Nobody exits; every line typed before, during and after each restart
arrives exactly once, in order; the room keeps its password, host and
numbering; a late joiner sees the whole conversation.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from typing import Any, Callable

from twisted.internet import reactor, task

from ocm.bench.spawn import free_port
from tests import wire
from tests.processes import LIMIT, ProcessTestCase
from tests.websocket import Browser, open_browser

ROUNDS = 3


async def until(check: Callable[[], Any], what: Callable[[], str], limit: float = LIMIT) -> Any:
    """Poll CHECK on the reactor (the browser must go on) until true; fail after LIMIT s."""
    return await wire.until(check, what, limit, every=0.05)


class Page:
    """A browser member at the protocol level: 1.2, resuming after each restart, every line seen once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[int, tuple[str, str]] = {}  # seq -> (name, text) of every message
        self.socket: Browser | None = None
        self.secret = ""
        self.last = 0
        self.next_id = 1

    async def enter(self, op: str, **frame: Any) -> dict[str, Any]:
        self.socket = await open_browser(self.port)
        response, complete = await self.socket.ask({"op": op, "room": "Study", "username": "wanda", **frame})
        assert response["status"] == 200, response
        self.secret = complete["resume"]
        if complete["seq"] > self.last:
            self.socket.send({"op": "history", "first": self.last + 1, "last": complete["seq"]})
        self.last = max(self.last, complete["seq"])
        reactor.callLater(0, self.pump, self.socket)
        return complete

    def pump(self, socket: Browser) -> None:
        def take(frame: dict[str, Any]) -> None:
            if frame.get("type") == "event" and frame["kind"] == "message":
                self.seen.setdefault(frame["seq"], (frame["name"], frame["text"]))
            if frame.get("type") == "event" and frame.get("seq"):
                self.last = max(self.last, frame["seq"])
            if socket.close_info is None:
                socket.inbox.get().addCallback(take)

        socket.inbox.get().addCallback(take)

    def say(self, text: str) -> None:
        self.socket.send({"op": "send", "id": self.next_id, "text": text})
        self.next_id += 1

    def lines(self) -> list[str]:
        return [f"{name}: {text}" for _, (name, text) in sorted(self.seen.items())]


class ThreeRestartsTests(ProcessTestCase):
    timeout = 240

    def start(self) -> subprocess.Popen[bytes]:
        self.starts = getattr(self, "starts", 0) + 1
        log = f"daemon{self.starts}.log"
        daemon = self.spawn(f"daemon{self.starts}", [
            "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.dir / log), "ocm",
            "--tcp", f"tcp:{self.tcp}:interface=127.0.0.1", "--udp", str(self.udp),
            "--web", f"tcp:{self.web}:interface=127.0.0.1", "--web-no-tls",
            "--interface", "127.0.0.1", "--data-dir", str(self.dir / "data"), "--timeout", "30",
        ])
        deadline = time.monotonic() + LIMIT
        while "TLS fingerprint SHA256:" not in self.read(log) and daemon.poll() is None:
            assert time.monotonic() < deadline, self.read(log)
            time.sleep(0.05)
        self.assertIsNone(daemon.poll(), self.read(log))
        return daemon

    def type(self, proc: subprocess.Popen[bytes], line: str) -> None:
        proc.stdin.write(f"{line}\n".encode())
        proc.stdin.flush()

    async def test_two_clients_and_a_browser_through_three_restarts(self):
        self.tcp = free_port(socket.SOCK_STREAM, "127.0.0.1")
        self.udp = free_port(socket.SOCK_DGRAM, "127.0.0.1")
        self.web = free_port(socket.SOCK_STREAM, "127.0.0.1")
        daemon = self.start()
        self.env["OCM_TEST_LOSS"] = "22:0.15"
        base = ["-m", "ocm.client", "127.0.0.1", "--port", str(self.tcp), "--room", "Study",
                "--password", "pw", "--accept-new-cert"]
        alice = self.spawn("alice", [*base, "--name", "alice", "--create"])
        await until(lambda: "Created room 'Study'" in self.read("alice.err"), lambda: self.read("alice.err"))
        bob = self.spawn("bob", [*base, "--name", "bob", "--join"])
        await until(lambda: "* bob joined" in self.read("alice.out"), lambda: self.read("alice.out"))
        page = Page(self.web)
        await page.enter("join", password="pw", version="1.2")
        await until(lambda: "* wanda joined" in self.read("bob.out"), lambda: self.read("bob.out"))

        typed: dict[str, list[str]] = {"alice": [], "bob": [], "wanda": []}

        def say(who: str, text: str) -> None:
            typed[who].append(text)
            if who == "wanda":
                page.say(text)
            else:
                self.type(alice if who == "alice" else bob, text)

        for round in range(1, ROUNDS + 1):
            for who in ("alice", "bob", "wanda"):
                say(who, f"{who} before restart {round}")
            await until(lambda: f"wanda before restart {round}" in self.read("alice.out")
                        and f"alice before restart {round}" in self.read("bob.out"),
                        lambda: self.read("alice.out") + self.read("bob.out"))
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(LIMIT)
            # Typed while no daemon runs: kept and sent when it is back.
            say("alice", f"alice during restart {round}")
            say("bob", f"bob during restart {round}")
            await task.deferLater(reactor, 1.0, lambda: None)
            daemon = self.start()
            self.assertIn("restored 1 rooms with 3 members", self.read(f"daemon{self.starts}.log"))
            await until(lambda: page.socket.close_info is not None, lambda: "the page told to come back")
            self.assertEqual(page.socket.close_info[0], 4004)
            complete = await page.enter("resume", resume=page.secret)
            self.assertTrue(complete["resumed"])
            self.assertEqual(complete["host_name"], "alice")
            for who in ("alice", "bob", "wanda"):
                say(who, f"{who} after restart {round}")

        def want(reader: str) -> list[str]:
            return [f"{who}: {line}" for who in ("alice", "bob", "wanda") if who != reader for line in typed[who]]

        def shown(name: str) -> list[str]:
            lines = [line.split("] ", 1)[1] for line in self.read(f"{name}.out").splitlines() if line.startswith("[")]
            return [line for line in lines if not line.startswith(name + ": ")]

        for name in ("alice", "bob"):
            await until(lambda: sorted(shown(name)) == sorted(want(name)),
                        lambda: f"{name} to show every line once: {shown(name)} vs {want(name)}", limit=60)
            # In order: each person's lines in the order typed.
            for who in ("alice", "bob", "wanda"):
                if who != name:
                    mine = [line for line in shown(name) if line.startswith(who + ": ")]
                    self.assertEqual(mine, [f"{who}: {line}" for line in typed[who]])
        await until(lambda: sorted(line for line in page.lines() if not line.startswith("wanda: "))
                    == sorted(want("wanda")), lambda: f"the page: {page.lines()}", limit=60)
        for name, proc in (("alice", alice), ("bob", bob)):
            self.assertIsNone(proc.poll(), f"{name} exited: {self.read(name + '.err')}")
            self.assertNotIn("Traceback", self.read(f"{name}.err"))

        # A late joiner sees the whole conversation; the password still holds.
        self.env.pop("OCM_TEST_LOSS")
        carol = self.spawn("carol", [*base, "--name", "carol", "--join", "--backlog", "100"])
        carol.stdin.close()
        carol.wait(LIMIT)
        everything = [f"{who}: {line}" for who in ("alice", "bob", "wanda") for line in typed[who]]
        shown_carol = [line.split("] ", 1)[1] for line in self.read("carol.out").splitlines() if line.startswith("[")]
        self.assertEqual(sorted(shown_carol), sorted(everything), self.read("carol.err"))
        bob.stdin.close()
        self.assertEqual(bob.wait(LIMIT), 0, self.read("bob.err"))
        alice.stdin.close()
        alice.wait(LIMIT)
