"""
ocm-client against a real in-process daemon speaking protocol 1.2: the
member list, host and muted converge with the server's at 15% loss both
ways; the server's silence is told (idle, within two heartbeats; with a
line waiting, within 5 s) and its return too, no line lost; RESTARTING is
shown and the room carries on; a daemon that lost the room (a crash) gets
it back from the host, the guests joining again by themselves. The
moderation commands through a terminal are in L{tests.test_client_moderation}.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor, task

from ocm.client import tcrp as tcrp_module
from ocm.client.loss import Loss
from ocm.server.service import OcmService
from ocm.wire.names import name_key
from tests import wire
from tests.daemon import run_daemon
from tests.test_client import ClientTestCase, Runner


async def until(predicate: Callable[[], bool], what: str | Callable[[], str], limit: float = 20.0) -> None:
    await wire.until(predicate, what, limit)

NOT_ANSWERING = "*** the server is not answering; your lines are kept and will be sent when it is back"
BACK = "*** the server is back"


def said(runner: Runner, *lines: str) -> list[str]:
    """The chat lines on stdout without the clock."""
    return [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in runner.out.splitlines()]


class Restarts(ClientTestCase):
    """Helpers to stop the daemon and start it again on the same ports and data."""

    timeout = 120

    def ports(self) -> tuple[int, int]:
        return self.svc.tcp_port, self.svc.rooms.udp_port

    def again(self, ports: tuple[int, int]) -> OcmService:
        """A new daemon on the same ports and data directory (its certificate, its saved rooms)."""
        self.svc = run_daemon(
            self, "--tcp", f"tcp:{ports[0]}:interface=127.0.0.1", "--udp", str(ports[1]),
            data_dir=self.data_dir,
        )
        return self.svc

    def server_view(self, room: str) -> tuple[list[str], str | None, list[str]]:
        r = self.svc.rooms.rooms[name_key(room)]
        names = sorted(m.name for m in r.members.values())
        return names, r.host.name if r.host else None, sorted(m.name for m in r.members.values() if m.muted)

    @staticmethod
    def client_view(runner: Runner) -> tuple[list[str], str | None, list[str]]:
        roster = runner.client.session.roster
        return sorted(roster.members), roster.host, sorted(m for m in roster.members if roster.is_muted(m))


class ConvergenceTests(Restarts):
    async def test_member_lists_equal_the_servers_at_15_percent_loss(self) -> None:
        self.start_daemon()
        alice = await self.host(interactive=True, password="", loss=Loss(21, 0.15))
        lossy = {"alice": alice}
        for seed, name in ((22, "bob"), (23, "carol"), (24, "dave")):
            runner = self.client(name, "Lobby", mode="join", loss=Loss(seed, 0.15), interactive=True)
            await runner.joined()
            lossy[name] = runner
        # Moderation and comings and goings, each a numbered event some
        # clients miss at first.
        alice.type("/mute bob", "/kick dave noisy", "/mute carol", "/unmute bob")
        await until(lambda: self.svc.rooms.rooms[name_key("Lobby")].members.get("dave") is None,
                    lambda: f"dave kicked: {alice.out} {alice.err}")
        erin = self.client("erin", "Lobby", mode="join")
        await erin.joined()
        lossy["carol"].end_input()
        self.assertEqual(await lossy["carol"].exit_code(), 0)
        alice.type("/host bob", "a line after it all")
        self.assertEqual(await lossy["dave"].exit_code(), 4)
        await until(lambda: self.server_view("Lobby")[1] == "bob", "the hand-over")
        expected = self.server_view("Lobby")
        self.assertEqual(expected, (["alice", "bob", "erin"], "bob", []))
        for name in ("alice", "bob"):
            await until(lambda: self.client_view(lossy[name]) == expected,
                        f"{name}'s list to match the server's: {self.client_view(lossy[name])}")
        await until(lambda: self.client_view(erin) == expected, "erin's list")
        alice.type("/who")
        await alice.shows("Members of 'Lobby' (3): alice (you), bob (host), erin\n")
        self.assertIn("You were removed from room 'Lobby' by the host (noisy)", lossy["dave"].err)
        for runner in (*lossy.values(), erin):
            self.assertNoTraceback(runner)


class SilenceTests(Restarts):
    async def stop_udp(self) -> int:
        port = self.svc.rooms.udp_port
        await self.svc.udp_listener.stopService()
        return port

    def start_udp(self, port: int) -> None:
        self.svc.udp_listener.number = port
        self.svc.udp_listener.startService()

    async def test_idle_silence_told_within_two_heartbeats_and_return(self) -> None:
        self.start_daemon("--timeout", "6")  # heartbeats every 2 s
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        self.svc.rooms.timeout = 600  # the server keeps them while its UDP is away
        port = await self.stop_udp()
        stopped = reactor.seconds()
        await alice.says(NOT_ANSWERING)
        self.assertLess(reactor.seconds() - stopped, 2 * 2.0 + 1.5)  # slack for a loaded machine
        await bob.says(NOT_ANSWERING)
        self.assertEqual(alice.err.count(NOT_ANSWERING), 1)  # said once
        self.start_udp(port)
        await alice.says(BACK)
        await bob.says(BACK)
        bob.type("after the pause")
        await alice.shows("bob: after the pause\n")
        self.assertIsNone(alice.code)
        self.assertIsNone(bob.code)

    async def test_a_waiting_line_tells_within_five_seconds_and_is_kept(self) -> None:
        self.start_daemon()  # heartbeats every 20 s: only the line can tell
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        port = await self.stop_udp()
        bob.type("typed while it was away")
        typed = reactor.seconds()
        await bob.says(NOT_ANSWERING)
        self.assertLess(reactor.seconds() - typed, 5.0 + 1.0)
        self.assertNotIn(NOT_ANSWERING, alice.err)  # idle: not yet two heartbeats
        await task.deferLater(reactor, 3.0, lambda: None)
        self.start_udp(port)
        await alice.shows("bob: typed while it was away\n")
        await bob.says(BACK)
        self.assertEqual(said(alice).count("bob: typed while it was away"), 1)
        self.assertNotIn("Not delivered", bob.err)
        bob.end_input()
        self.assertEqual(await bob.exit_code(), 0)

    async def test_stopped_daemon_closes_the_room(self) -> None:
        self.start_daemon("--no-keep-rooms")
        alice = await self.host()
        await self.svc.stopService()
        await alice.shows("* room closed: the server is shutting down\n")
        self.assertEqual(await alice.exit_code(), 1)
        self.assertNotIn(NOT_ANSWERING, alice.err)


class RestartTests(Restarts):
    async def test_restart_keeps_the_room(self) -> None:
        self.start_daemon()
        alice = await self.host(password="pw")
        bob = self.client("bob", "Lobby", mode="join", password="pw")
        await bob.joined()
        bob.type("before")
        await alice.shows("bob: before\n")
        ports = self.ports()
        await self.svc.stopService()
        await alice.says("*** the server is restarting; stay here")
        await bob.says("*** the server is restarting; stay here")
        bob.type("during")
        await task.deferLater(reactor, 0.5, lambda: None)
        self.again(ports)
        await alice.shows("bob: during\n")
        alice.type("after")
        await bob.shows("alice: after\n")
        await bob.says(BACK)
        self.assertEqual([l for l in said(alice) if l.startswith("bob:") or l.startswith("alice:")],
                         ["bob: before", "bob: during", "alice: after"])
        self.assertNotIn("rejoined", alice.err + bob.err)  # the same membership carried on
        self.assertEqual(self.server_view("Lobby"), (["alice", "bob"], "alice", []))

    async def test_crash_the_host_recreates_and_the_guest_rejoins(self) -> None:
        self.start_daemon("--timeout", "6")
        alice = await self.host(password="s3cret", interactive=True)
        bob = self.client("bob", "Lobby", mode="join", password="s3cret")
        await bob.joined()
        ports = self.ports()
        # A crash: nothing is sent, nothing saved.
        self.svc.keep_rooms = None
        self.svc.rooms.freeze()
        await self.svc.stopService()
        crashed = reactor.seconds()
        alice.type("typed after the crash")
        await bob.says(NOT_ANSWERING)
        self.assertLess(reactor.seconds() - crashed, 2 * 2.0 + 1.0)
        await task.deferLater(reactor, 1.0, lambda: None)
        self.again(ports)
        await alice.shows("*** rejoined Lobby; messages sent while the server was down may be missing\n")
        await bob.says("*** rejoined Lobby; messages sent while the server was down may be missing")
        await until(lambda: self.server_view("Lobby") == (["alice", "bob"], "alice", []), "both back")
        # The room was created again with the password it had.
        room = self.svc.rooms.rooms[name_key("Lobby")]
        self.assertIsNotNone(room.password)
        await bob.shows("alice: typed after the crash\n")
        bob.type("and on we go")
        await alice.shows("bob: and on we go\n")
        self.assertIsNone(alice.code)
        self.assertIsNone(bob.code)


class FallbackTests(Restarts):
    async def test_a_client_served_1_1_in_the_same_room(self) -> None:
        """A server that answers 1.1 is served as before; a 1.1 member kicked is told CLOSED."""
        self.start_daemon()
        alice = await self.host(interactive=True, password="")
        self.patch(tcrp_module, "VERSION", "1.1")  # bob asks for 1.1 only
        bob = self.client("bob", "Lobby", mode="join", interactive=True)
        await bob.joined()
        self.assertEqual((alice.client.session.numbered, bob.client.session.numbered), (True, False))
        self.assertTrue(bob.client.session.reliable)
        bob.type("from 1.1")
        await alice.shows("bob: from 1.1\n")
        alice.type("to 1.1")
        await bob.shows("alice: to 1.1\n")
        bob.type("/mute alice")
        await bob.shows("/mute needs protocol 1.2; this server serves 1.1.\n")
        alice.type("/kick bob bye")
        await alice.shows("* bob was removed by the host: bye\n")
        await bob.shows("* room closed: bye\n")
        self.assertEqual(await bob.exit_code(), 1)

    async def test_a_lost_closed_is_learned_at_the_next_heartbeat(self) -> None:
        self.start_daemon("--timeout", "3")  # heartbeats every second
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        deaf = Loss(1, 1.0)
        deaf.outgoing = lambda: False  # type: ignore[method-assign]
        bob.client.session.loss = deaf  # bob hears nothing for a while
        alice.end_input()
        self.assertEqual(await alice.exit_code(), 0)  # the host left: CLOSED, which bob misses
        await task.deferLater(reactor, 0.3, lambda: None)
        bob.client.session.loss = None
        await bob.shows("* room closed: the host left\n")  # from the tombstone
        self.assertEqual(await bob.exit_code(), 1)
