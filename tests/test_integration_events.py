"""
Chat and room life over UDP against the daemon the plugin builds (PROTOCOL
§2–§4): every event kind, liveness, and CLOSED when the daemon stops.
"""

from __future__ import annotations

import time
from collections import Counter

from twisted.trial.unittest import TestCase

from tests import wire
from tests.daemon import DaemonMixin
from tests.wire import CLOSED, JOIN_ROOM, JOINED, LEFT, LIST_ROOMS, MESSAGE, TIMED_OUT


class ChatTests(DaemonMixin, TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.start_daemon()

    async def test_message_to_everyone(self) -> None:
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")
        carol = await self.enter("Lobby", "carol")
        self.assertEvent(await alice.event(), JOINED, "carol")
        # bob hears of carol, never of himself
        self.assertEvent(await bob.event(), JOINED, "carol")

        said = [(alice, "alice", "one"), (bob, "bob", "twö ☃"), (carol, "carol", "x" * wire.MAX_TEXT)]
        for member, _, text in said:
            member.chat(text)
        for member in (alice, bob, carol):
            for seq, (_, name, text) in enumerate(said, 1):
                event = await member.event()
                self.assertEvent(event, MESSAGE, name, text, seq=seq)
                self.assertLess(abs(event.time_ms - time.time() * 1000), 30_000)
        self.assertCountersGrow(alice, bob, carol)

    async def test_leave_and_rejoin(self) -> None:
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")
        bob.leave()
        self.assertEvent(await alice.event(), LEFT, "bob")
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(body["rooms"][0]["members"], 1)

        # The old token is void at once: its chat is dropped, not relayed.
        drops = Counter(self.svc.rooms.drops)
        bob.chat("ghost")
        alice.chat("anyone?")
        self.assertEvent(await alice.event(), MESSAGE, "alice", "anyone?", seq=1)
        drops["unknown"] += 1
        self.assertEqual(self.svc.rooms.drops, drops)

        # The same username may join again, with a new token and key.
        bob2 = await self.enter("Lobby", "BOB")
        self.assertEvent(await alice.event(), JOINED, "BOB")
        self.assertNotEqual(bob2.token, bob.token)
        self.assertNotEqual(bob2.key, bob.key)
        bob2.chat("back")
        self.assertEvent(await alice.event(), MESSAGE, "BOB", "back", seq=2)
        self.assertEvent(await bob2.event(), MESSAGE, "BOB", "back", seq=2)
        self.assertCountersGrow(alice)

    async def test_host_leave_closes_room(self) -> None:
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")
        alice.leave()
        for member in (alice, bob):
            event = await member.event()
            self.assertEvent(event, CLOSED, "alice")
            self.assertTrue(event.text)
        status, body = await self.ask(LIST_ROOMS, b"", {})
        self.assertEqual(body, {"rooms": []})
        self.assertEqual((await self.ask(JOIN_ROOM, "Lobby", {"username": "carol"}))[0], 404)
        # Both tokens died with the room.
        drops = Counter(self.svc.rooms.drops)
        bob.chat("hello?")
        alice.chat("hello?")
        carol = await self.enter("Lobby", "carol", create=True)
        carol.chat("new room")
        self.assertEvent(await carol.event(), MESSAGE, "carol", "new room", seq=1)
        drops["unknown"] += 2
        self.assertEqual(self.svc.rooms.drops, drops)

    async def test_events_follow_the_latest_address(self) -> None:
        """Every accepted datagram sets where events go (PROTOCOL §2)."""
        alice = await self.enter("Lobby", "alice", create=True)
        moved = wire.Member(alice.reactor, alice.room, alice.body, alice.server, counter=alice.counter)
        self.addCleanup(moved.close)
        moved.chat("from my new port")
        self.assertEvent(await moved.event(), MESSAGE, "alice", "from my new port", seq=1)


class LivenessTests(DaemonMixin, TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.start_daemon("--timeout", "1")

    async def test_silent_guest_times_out(self) -> None:
        alice = await self.enter("Lobby", "alice", create=True)
        self.assertEqual(alice.body["timeout"], 1)
        self.keep_alive(alice)
        bob = await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")
        self.assertEvent(await alice.event(), TIMED_OUT, "bob")
        drops = Counter(self.svc.rooms.drops)
        bob.chat("still here")
        alice.chat("you were not")
        self.assertEvent(await alice.event(), MESSAGE, "alice", "you were not", seq=1)
        drops["unknown"] += 1
        self.assertEqual(self.svc.rooms.drops, drops)
        # Timed out, not banned: the same name joins again.
        await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")

    async def test_silent_host_closes_room(self) -> None:
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        self.keep_alive(bob)
        self.assertEvent(await alice.event(), JOINED, "bob")
        for member in (bob, alice):
            event = await member.event()
            self.assertEvent(event, CLOSED, "alice")
            self.assertTrue(event.text)
        self.assertEqual((await self.ask(JOIN_ROOM, "Lobby", {"username": "carol"}))[0], 404)

    async def test_chatting_keeps_members(self) -> None:
        """Any accepted datagram refreshes liveness, CHAT as well as HEARTBEAT."""
        alice = await self.enter("Lobby", "alice", create=True)
        self.keep_alive(alice)
        bob = await self.enter("Lobby", "bob")
        self.assertEvent(await alice.event(), JOINED, "bob")
        for n in range(1, 9):  # 8 x 0.3 s: well past the 1 s timeout
            bob.chat(f"{n}")
            self.assertEvent(await alice.event(), MESSAGE, "bob", f"{n}", seq=n)
            await wire.sleep(alice.reactor, 0.3)


class ShutdownTests(DaemonMixin, TestCase):
    timeout = 30

    async def test_stop_closes_every_room(self) -> None:
        svc = self.start_daemon()
        alice = await self.enter("Lobby", "alice", create=True)
        bob = await self.enter("Lobby", "bob")
        carol = await self.enter("Vault", "carol", "pw", create=True)
        dave = await self.enter("Vault", "dave", "pw")
        self.assertEvent(await alice.event(), JOINED, "bob")
        self.assertEvent(await carol.event(), JOINED, "dave")
        # Each guest's own MESSAGE back proves the server has its address.
        for guest, host in ((bob, alice), (dave, carol)):
            guest.chat("hi")
            for member in (guest, host):
                self.assertEqual((await member.event()).kind, MESSAGE)
        await svc.stopService()
        for member, host in ((alice, "alice"), (bob, "alice"), (carol, "carol"), (dave, "carol")):
            event = await member.event()
            self.assertEvent(event, CLOSED, host)
            self.assertTrue(event.text)
        self.assertCountersGrow(alice, carol)
