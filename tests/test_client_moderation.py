"""
Moderation end to end, as people type it: a real daemon (in process), and
real C{ocm-client} processes on pseudo-terminals (so they are interactive,
as at a keyboard): the host kicks, mutes, bans and hands the room over; a
guest cannot; the kicked and the banned are told why and exit 4 and 5; the
banned cannot join again, under its name or another from the same address;
after the hand-over the old host leaves and the room lives on. And at 15%
loss both ways (OCM_TEST_LOSS), every person's /who ends as the server's.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from ocm.wire.names import name_key
from tests.daemon import run_daemon
from tests.processes import REPO

LIMIT = 20.0
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Person(ProcessProtocol):
    """One ocm-client process: what it printed (terminal codes removed), its exit status."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw = b""
        self.code: int | None = None
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.raw += data

    errReceived = outReceived

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace")).replace("\r\n", "\n")

    def processEnded(self, reason: Failure) -> None:
        self.code = reason.value.exitCode
        self.ended.callback(self.code)

    def type(self, line: str) -> None:
        self.transport.write(line.encode("utf-8") + b"\n")


class People(unittest.TestCase):
    """A daemon, and people at ocm-client processes."""

    timeout = 120

    def setUp(self) -> None:
        self.svc = run_daemon(self, "--no-tls", data_dir=Path(self.mktemp()))
        home = Path(self.mktemp()).resolve()
        home.mkdir(parents=True)
        path = os.environ.get("PYTHONPATH")
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
                        PYTHONUNBUFFERED="1", XDG_CONFIG_HOME=str(home), TERM="dumb")
        self.env.pop("OCM_PASSWORD", None)
        self.env.pop("OCM_TEST_LOSS", None)

    def spawn(self, name: str, *args: str, pty: bool = True, loss: str | None = None) -> Person:
        person = Person(name)
        env = dict(self.env, OCM_TEST_LOSS=loss) if loss else self.env
        argv = [sys.executable, "-m", "ocm.client", "127.0.0.1", "--port", str(self.svc.tcp_port),
                "--no-tls", "--room", "Class", "--name", name, "--password", "pw", *args]
        process = reactor.spawnProcess(person, sys.executable, argv, env=env, usePTY=pty)

        def cleanup() -> defer.Deferred[int] | None:
            if person.code is None:
                process.signalProcess("KILL")
                return person.ended
            return None

        self.addCleanup(cleanup)
        return person

    async def until(self, check: Callable[[], bool], what: str | Callable[[], str]) -> None:
        deadline = reactor.seconds() + LIMIT
        while not check():
            if reactor.seconds() > deadline:
                self.fail(f"gave up waiting for {what() if callable(what) else what}")
            await task.deferLater(reactor, 0.02, lambda: None)

    async def sees(self, person: Person, text: str) -> None:
        await self.until(lambda: text in person.text, lambda: f"{person.name} to see {text!r}:\n{person.text}")

    def member(self, name: str) -> Any:
        room = self.svc.rooms.rooms.get(name_key("Class"))
        return room.members.get(name_key(name)) if room else None

    async def joined(self, person: Person) -> None:
        await self.until(lambda: (self.member(person.name) is not None
                                  and self.member(person.name).address is not None),
                         lambda: f"{person.name} in the room:\n{person.text}")



class ModerationTests(People):
    async def test_kick_mute_ban_and_hand_over(self) -> None:
        alice = self.spawn("alice", "--create")
        await self.joined(alice)
        bob = self.spawn("bob", "--join")
        await self.joined(bob)
        carol = self.spawn("carol", "--join")  # after bob: the member list's order is known
        await self.joined(carol)
        await self.sees(alice, "* carol joined")

        bob.type("/kick carol")  # a guest cannot
        await self.sees(bob, "/kick is the host's command; the host is 'alice'.")
        self.assertIsNotNone(self.member("carol"))
        alice.type("/help")
        await self.sees(alice, "/kick NAME [reason]")

        alice.type("/mute bob")
        await self.sees(bob, "* bob is muted")
        await self.sees(carol, "* bob is muted")
        bob.type("anyone there?")
        await self.sees(bob, "Refused by the server (")
        self.assertIn("'anyone there?'", bob.text.split("Refused by the server (", 1)[1])
        alice.type("/who")
        await self.sees(alice, "Members of 'Class' (3): alice (you, host), bob (muted), carol")
        alice.type("/unmute bob")
        await self.sees(bob, "* bob may speak again")

        alice.type("/kick carol spam")
        await self.sees(bob, "* carol was removed by the host: spam")
        self.assertEqual(await carol.ended, 4)
        self.assertIn("You were removed from room 'Class' by the host (spam); you may join it again.", carol.text)

        alice.type("/ban bob flooding")
        await self.sees(alice, "* bob was banned by the host: flooding")
        self.assertEqual(await bob.ended, 5)
        self.assertIn("You were banned from room 'Class' by the host (flooding)", bob.text)
        for name in ("bob", "bobby"):  # the name, and the address under another name
            again = self.spawn(name, "--join", pty=False)
            self.assertEqual(await again.ended, 1, again.text)
            self.assertIn("You are banned from room 'Class'", again.text)
        alice.type("/unban bob")
        await self.sees(alice, "* bob is no longer banned")

        dave = self.spawn("dave", "--join")
        await self.joined(dave)
        await self.sees(alice, "* dave joined")
        alice.type("/quit")  # the host, with others: warned first
        await self.sees(alice, "You are the host: leaving closes room 'Class' for 1 other.")
        self.assertIsNone(alice.code)
        alice.type("/host dave")
        await self.sees(dave, "* dave is now the host")
        await self.sees(dave, "You are now the host of this room")
        alice.type("/quit")
        self.assertEqual(await alice.ended, 0, alice.text)
        await self.sees(dave, "* alice left")
        room = self.svc.rooms.rooms[name_key("Class")]
        self.assertEqual(room.host.name, "dave")  # the room lives on
        dave.type("/who")
        await self.sees(dave, "Members of 'Class' (1): dave (you, host)")
        dave.type("/quit")  # alone: no warning
        self.assertEqual(await dave.ended, 0, dave.text)
        for person in (alice, bob, carol, dave):
            self.assertNotIn("Traceback", person.text)


class LossyMembersTests(People):
    """At 15% loss both ways (OCM_TEST_LOSS) every person's /who ends as the server's list."""

    def who(self, person: Person) -> str | None:
        lines = [line for line in person.text.splitlines() if line.startswith("Members of 'Class'")]
        return lines[-1] if lines else None

    def expected(self, me: str) -> str:
        room = self.svc.rooms.rooms[name_key("Class")]
        names = []
        for m in room.members.values():
            marks = [mark for mark, on in (("you", m.name == me), ("host", m is room.host), ("muted", m.muted)) if on]
            names.append(f"{m.name} ({', '.join(marks)})" if marks else m.name)
        return f"Members of 'Class' ({len(names)}): {', '.join(names)}"

    async def test_every_who_ends_as_the_servers_list(self) -> None:
        people = {}
        for seed, name in enumerate(("alice", "bob", "carol", "dave", "erin")):
            people[name] = self.spawn(name, "--create" if name == "alice" else "--join", loss=f"{40 + seed}:0.15")
            await self.joined(people[name])
        alice = people["alice"]
        for line in ("/mute bob", "/kick carol", "/mute erin", "/unmute bob", "/ban dave spam", "/host bob"):
            alice.type(line)
        await self.until(lambda: self.svc.rooms.rooms[name_key("Class")].host.name == "bob",
                         lambda: f"the hand-over: {alice.text}")
        self.assertEqual(await people["carol"].ended, 4)
        self.assertEqual(await people["dave"].ended, 5)
        for name in ("alice", "bob", "erin"):
            person = people[name]

            async def asked(person: Person = person, name: str = name) -> bool:
                person.type("/who")
                await task.deferLater(reactor, 1.0, lambda: None)
                return self.who(person) == self.expected(name)

            deadline = reactor.seconds() + LIMIT
            while not await asked():
                if reactor.seconds() > deadline:
                    self.fail(f"{name}'s /who {self.who(person)!r} is not {self.expected(name)!r}")
        self.assertEqual(self.expected("bob"), "Members of 'Class' (3): alice, bob (you, host), erin (muted)")
        for person in people.values():
            self.assertNotIn("Traceback", person.text)
