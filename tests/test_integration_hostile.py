"""
Hostile and broken datagrams against the daemon the plugin builds (PROTOCOL
§2): each is dropped without a reply and counted under its reason in
C{service.rooms.drops}, and normal chat goes on right after it.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Callable

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests import wire
from tests.daemon import DaemonMixin
from tests.wire import CHAT, HEARTBEAT, LEAVE, MESSAGE


class HostileDatagramTests(DaemonMixin, TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.start_daemon()
        self.alice = await self.enter("Lobby", "alice", create=True)
        self.bob = await self.enter("Lobby", "bob")
        self.assertEqual((await self.alice.event()).name, "bob")  # JOINED
        self.seq = 0

    async def dropped(self, reason: str, bad: Callable[[], None]) -> None:
        """
        C{bad()} sends datagrams and returns how many; each must be dropped
        under C{reason}. Alice's next chat must then be the next MESSAGE both
        members see: nothing of the bad ones was relayed, and chat goes on.
        """
        before = Counter(self.svc.rooms.drops)
        sent = bad()
        self.seq += 1
        text = f"still fine {self.seq}"
        self.alice.chat(text)
        for member in (self.alice, self.bob):
            self.assertEvent(await member.event(), MESSAGE, "alice", text, seq=self.seq)
        before[reason] += sent
        self.assertEqual(self.svc.rooms.drops, before, f"after a {reason!r} datagram")
        self.assertCountersGrow(self.alice, self.bob)

    def send_raw(self, *datagrams: bytes, source: wire.Member | None = None) -> int:
        for d in datagrams:
            (source or self.alice).send(d)
        return len(datagrams)

    async def test_replay(self) -> None:
        data = self.alice.chat("once")
        for member in (self.alice, self.bob):
            self.assertEvent(await member.event(), MESSAGE, "alice", "once", seq=1)
        self.seq = 1
        await self.dropped("replay", lambda: self.send_raw(data, data))
        # A replayed HEARTBEAT is no better.
        hb = self.alice.heartbeat()
        await self.dropped("replay", lambda: self.send_raw(hb))

    async def test_counter_window(self) -> None:
        """Out of order is fine within 64 below the highest; further is stale."""
        a = self.alice
        a.send(a.seal(bytes((HEARTBEAT,)), 100))
        a.counter = 100
        before = Counter(self.svc.rooms.drops)
        a.send(a.seal(b"\x01too old", 35))  # 65 below: stale
        a.send(a.seal(b"\x01late but fine", 36))  # 64 below, never seen
        a.send(a.seal(b"\x01again", 36))  # replay
        a.chat("in order again")
        for member in (self.alice, self.bob):
            self.assertEvent(await member.event(), MESSAGE, "alice", "late but fine", seq=1)
            self.assertEvent(await member.event(), MESSAGE, "alice", "in order again", seq=2)
        before.update(stale=1, replay=1)
        self.assertEqual(self.svc.rooms.drops, before)
        self.seq = 2
        await self.dropped("stale", lambda: self.send_raw(a.seal(b"\x01old", 1)))

    async def test_forgery(self) -> None:
        a = self.alice

        def flipped() -> int:
            data = bytearray(a.seal(b"\x01forged"))
            data[-20] ^= 0x01  # a ciphertext byte
            return self.send_raw(bytes(data))

        def tag_flipped() -> int:
            data = bytearray(a.seal(b"\x01forged"))
            data[-1] ^= 0x80
            return self.send_raw(bytes(data))

        def wrong_key() -> int:
            return self.send_raw(a.seal(b"\x01forged", key=secrets.token_bytes(32)))

        def bobs_key() -> int:
            return self.send_raw(a.seal(b"\x01forged", key=self.bob.key))

        def header_tampered() -> int:
            # The room name is case-insensitive for lookup, but it is part of
            # the associated data: sealed for "Lobby", sent as "LOBBY".
            data = a.seal(b"\x01forged")
            return self.send_raw(data[:2] + b"LOBBY" + data[7:])

        def counter_tampered() -> int:
            data = bytearray(a.seal(b"\x01forged"))
            data[2 + 5 + len(a.token) + 11] ^= 0x40  # the nonce's counter
            return self.send_raw(bytes(data))

        for bad in (flipped, tag_flipped, wrong_key, bobs_key, header_tampered, counter_tampered):
            await self.dropped("auth", bad)

    async def test_oversize(self) -> None:
        a = self.alice
        data = a.seal(b"\x01" + b"x" * wire.MAX_DATAGRAM)
        self.assertGreater(len(data), wire.MAX_DATAGRAM)
        await self.dropped("oversize", lambda: self.send_raw(data))
        await self.dropped("oversize", lambda: self.send_raw(b"\x05" * (wire.MAX_DATAGRAM + 1)))

    async def test_garbage(self) -> None:
        a = self.alice
        header = bytes((5, len(a.token))) + b"Lobby" + a.token
        for junk in (
            b"",
            b"\x05",
            b"GET / HTTP/1.0\r\n\r\n",
            b"\xff\xff" + b"x" * 100,
            b"\x00\x00" + bytes(40),
            header,  # no nonce, no ciphertext
            header + bytes(12),  # no ciphertext
            a.seal(b"\x01wrong prefix", prefix=3),
            a.seal(b"\x01server's prefix", prefix=2),
            a.seal(b"\x01counter zero", 0),
        ):
            await self.dropped("malformed", lambda: self.send_raw(junk))

    async def test_bad_inner_message(self) -> None:
        """Sealed correctly, but no message PROTOCOL §2 knows."""
        a = self.alice
        for inner in (
            b"",
            b"\x09hello",
            b"\x00",
            bytes((CHAT,)),  # empty text
            bytes((CHAT,)) + b"caf\xc3",  # not UTF-8
            bytes((CHAT,)) + b"x" * (wire.MAX_TEXT + 1),
            bytes((HEARTBEAT,)) + b"x",
            bytes((LEAVE,)) + b"x",
        ):
            await self.dropped("malformed", lambda: self.send_raw(a.seal(inner)))
        # A LEAVE with a body was dropped, so alice is still in the room.
        self.assertEqual(len(self.svc.rooms.rooms), 1)

    async def test_unknown_token_or_room(self) -> None:
        a = self.alice
        stranger = secrets.token_hex(16).encode()
        await self.dropped("unknown", lambda: self.send_raw(a.seal(b"\x01hi", token=stranger)))
        await self.dropped("unknown", lambda: self.send_raw(a.seal(b"\x01hi", token=a.token[:-1])))
        # A valid token under another room's name, existing or not.
        await self.enter("Other", "carol", create=True)
        await self.dropped("unknown", lambda: self.send_raw(a.seal(b"\x01hi", room=b"Other")))
        await self.dropped("unknown", lambda: self.send_raw(a.seal(b"\x01hi", room=b"Nowhere")))

    async def test_token_bound_to_ip(self) -> None:
        """
        Alice's token came over TCP from 127.0.0.1: the very datagram she
        would send, sent from 127.0.0.2, is dropped, moves neither her counter
        window nor her event address, and is relayed to nobody.
        """
        a = self.alice
        thief = wire.Member(reactor, a.room, a.body, a.server, bind="127.0.0.2")
        self.addCleanup(thief.close)
        data = a.seal(b"\x01stolen")
        await self.dropped("address", lambda: self.send_raw(data, source=thief))
        # The same datagram from alice's own address: not a replay.
        self.seq += 1
        a.send(data)
        for member in (self.alice, self.bob):
            self.assertEvent(await member.event(), MESSAGE, "alice", "stolen", seq=self.seq)

    async def test_second_host(self) -> None:
        """A member whose TCRP came from 127.0.0.2 chats from 127.0.0.2."""
        carol = await self.enter("Lobby", "carol", tcp_bind="127.0.0.2", udp_bind="127.0.0.2")
        self.assertEqual((await self.alice.event()).name, "carol")  # JOINED
        self.assertEqual((await self.bob.event()).name, "carol")  # JOINED
        carol.chat("from afar")
        for member in (self.alice, self.bob, carol):
            self.assertEvent(await member.event(), MESSAGE, "carol", "from afar", seq=1)
        # ... and her token is bound to 127.0.0.2, not to the server's view of us.
        self.seq = 1
        await self.dropped("address", lambda: self.send_raw(carol.seal(b"\x01x")))
