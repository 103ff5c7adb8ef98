"""
Protocol 1.2 in the room service, on a fake clock: one numbering of every
event, both views of one room, PONG, tombstones, and moderation (COMMAND).
"""

from __future__ import annotations

from ocm.server.tcrp_server import complete_body
from ocm.wire.datagram import HEARTBEAT, LEAVE, EventKind, chat, command, history, send
from ocm.wire.tcrp import Status
from tests.test_rooms import Peer, RoomFixture

K = EventKind


class NumberedFixture(RoomFixture):
    def setUp(self):
        super().setUp()
        self.service.max_members = 10

    def create(self, room="Lobby", user="alice", ip="10.0.0.1", port=5000, password=None, version="1.2"):
        m = self.service.create_room(room, user, ip, password, version=version)
        peer = Peer(self, complete_body(self.service, m), ip, port, room)
        peer.send(HEARTBEAT)
        peer.events()
        return peer

    def join(self, room="Lobby", user="bob", ip="10.0.0.2", port=5001, version="1.2"):
        m = self.service.join_room(room, user, ip, version=version)
        peer = Peer(self, complete_body(self.service, m), ip, port, room)
        peer.send(HEARTBEAT)
        peer.events()
        return peer

    def seen(self, peer):
        return [(e.kind, e.seq, e.name) for e in peer.events() if e.kind != K.PONG]


class NumberingTests(NumberedFixture):
    def test_every_event_that_changes_the_room_takes_the_next_seq(self):
        alice = self.create()
        self.assertEqual((alice.body["version"], alice.body["seq"]), ("1.2", 0))
        bob = self.join()  # event 1
        self.assertEqual(self.seen(alice), [(K.JOINED, 1, "bob")])
        alice.send(send(1, "hi"))  # event 2
        self.assertEqual(self.seen(bob), [(K.MESSAGE, 2, "alice")])
        self.assertEqual([(e.kind, e.seq, e.msg_id) for e in alice.events()], [(K.ECHO, 2, 1)])
        carol = self.join(user="carol", ip="10.0.0.3", port=5002)  # event 3
        self.assertEqual(carol.body["seq"], 3)
        carol.send(LEAVE)  # event 4
        self.assertEqual(self.seen(bob), [(K.JOINED, 3, "carol"), (K.LEFT, 4, "carol")])
        alice.send(LEAVE)  # event 5: the host left
        self.assertEqual(self.seen(bob), [(K.CLOSED, 5, "alice")])

    def test_a_11_member_is_served_the_11_view_of_the_same_room(self):
        alice = self.create()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")
        self.assertEqual((old.body["version"], old.body["seq"]), ("1.1", 0))
        self.assertNotIn("host_name", old.body)
        alice.events()
        bob = self.join()
        self.assertEqual(self.seen(old), [(K.JOINED, 0, "bob")])
        bob.send(send(1, "one"))
        alice.send(send(1, "two"))
        self.assertEqual(self.seen(old), [(K.MESSAGE, 1, "bob"), (K.MESSAGE, 2, "alice")])
        self.assertEqual([(e.kind, e.seq) for e in bob.events()], [(K.ECHO, 3), (K.MESSAGE, 4)])
        # A heartbeat from a 1.1 member is not answered; a 1.2 one's is.
        old.send(HEARTBEAT)
        self.assertEqual(old.events(), [])
        bob.send(HEARTBEAT)
        self.assertEqual([(e.kind, e.seq) for e in bob.events()], [(K.PONG, 4)])

    def test_history_repairs_every_event_for_12_and_messages_for_11(self):
        alice = self.create()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")  # 1
        bob = self.join()  # 2
        alice.send(send(1, "a"))  # 3, message 1
        carol = self.join(user="carol", ip="10.0.0.3", port=5002)  # 4
        carol.send(LEAVE)  # 5
        alice.send(send(2, "b"))  # 6, message 2
        for p in (alice, old, bob):
            p.events()
        bob.send(history(1, 100))
        self.assertEqual(
            [(e.kind, e.seq, e.name, e.resent) for e in bob.events()],
            [(K.JOINED, 1, "old", True), (K.JOINED, 2, "bob", True), (K.MESSAGE, 3, "alice", True),
             (K.JOINED, 4, "carol", True), (K.LEFT, 5, "carol", True), (K.MESSAGE, 6, "alice", True)],
        )
        old.send(history(1, 100))
        self.assertEqual([(e.kind, e.seq, e.text) for e in old.events()],
                         [(K.HISTORY, 1, "a"), (K.HISTORY, 2, "b")])

    def test_expired_counts_in_each_view(self):
        self.service.history = 3  # rooms made from now keep three events
        alice = self.create(room="Small")
        old = self.join(room="Small", user="old", ip="10.0.0.4", port=5004, version="1.1")  # 1
        for i in range(1, 5):
            alice.send(send(i, f"m{i}"))  # events 2..5, messages 1..4
        alice.events(), old.events()
        alice.send(history(1, 5))
        events = alice.events()
        self.assertEqual([(e.kind, e.seq) for e in events],
                         [(K.EXPIRED, 3), (K.MESSAGE, 3), (K.MESSAGE, 4), (K.MESSAGE, 5)])
        old.send(history(1, 4))
        self.assertEqual([(e.kind, e.seq) for e in old.events()],
                         [(K.EXPIRED, 2), (K.HISTORY, 2), (K.HISTORY, 3), (K.HISTORY, 4)])

    def test_a_version_1_chat_is_numbered_too(self):
        alice = self.create()
        bob = self.join()
        alice.send(chat("old style"))
        self.assertEqual(self.seen(bob), [(K.MESSAGE, 2, "alice")])


class TombstoneTests(NumberedFixture):
    def test_a_member_that_missed_its_time_out_learns_it_at_its_next_heartbeat(self):
        alice = self.create()
        bob = self.join()
        alice.events()
        for _ in range(7):
            self.clock.advance(10)
            alice.send(HEARTBEAT)
        self.assertEqual([e for e in self.seen(alice) if e[0] != K.PONG], [(K.TIMED_OUT, 2, "bob")])
        bob.send(HEARTBEAT)  # its network came back
        self.assertEqual([(e.kind, e.seq, e.name) for e in bob.events()], [(K.TIMED_OUT, 2, "bob")])
        bob.send(HEARTBEAT)  # at most one answer a second
        self.assertEqual(bob.events(), [])
        self.assertEqual(self.service.drops["removed"], 1)
        self.clock.advance(1)
        bob.send(send(1, "anyone?"))  # nothing is served, the removal is said again
        self.assertEqual([e.kind for e in bob.events()], [K.TIMED_OUT])
        self.assertEqual(self.seen(alice), [])
        # After a timeout, the token is simply unknown.
        self.clock.advance(61)
        bob.send(HEARTBEAT)
        self.assertEqual((bob.events(), self.service.drops["unknown"]), ([], 1))

    def test_a_lost_closed_is_learned_and_a_11_member_gets_no_tombstone(self):
        alice = self.create()
        bob = self.join()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")
        alice.send(LEAVE)
        bob.events(), old.events()
        bob.send(HEARTBEAT)
        self.assertEqual([(e.kind, e.name, e.text) for e in bob.events()], [(K.CLOSED, "alice", "the host left")])
        old.send(HEARTBEAT)
        self.assertEqual(old.events(), [])
        self.assertEqual(len(self.service.tombstones), 1)

    def test_a_forged_datagram_under_a_tombstone_is_dropped(self):
        alice = self.create()
        bob = self.join()
        bob.send(HEARTBEAT)
        self.service.moderate(self.service.rooms["lobby"], _kick("bob"))
        bob.events()
        self.service.datagram_received(bob.datagram(HEARTBEAT)[:-1] + b"\x00", ("10.0.0.2", 5001))
        self.assertEqual((bob.events(), self.service.drops["auth"]), ([], 1))
        self.service.datagram_received(bob.datagram(HEARTBEAT), ("10.0.0.9", 5001))
        self.assertEqual((bob.events(), self.service.drops["address"]), ([], 1))


def _kick(name, reason=""):
    from ocm.wire.datagram import Command, CommandOp

    return Command(CommandOp.KICK, name, reason)


class ModerationTests(NumberedFixture):
    def room(self):
        alice = self.create()
        bob = self.join()
        old = self.join(user="old", ip="10.0.0.4", port=5004, version="1.1")
        for p in (alice, bob, old):
            p.events()
        return alice, bob, old

    def test_kick_is_seen_by_all_in_order_and_acts_once(self):
        alice, bob, old = self.room()
        alice.send(command(1, "kick", "bob", "spam"))
        self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in bob.events()], [(K.KICKED, 3, "bob", "spam")])
        self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in alice.events()],
                         [(K.KICKED, 3, "bob", "spam"), (K.ECHO, 3, "alice", "")])
        self.assertEqual([(e.kind, e.name) for e in old.events()], [(K.LEFT, "bob")])
        alice.send(command(1, "kick", "bob", "spam"))  # a retransmission: same ECHO, no act
        self.assertEqual([(e.kind, e.seq) for e in alice.events()], [(K.ECHO, 3)])
        self.assertEqual(old.events(), [])
        # A kicked member may join again.
        self.join()

    def test_a_11_member_kicked_is_told_as_closed(self):
        alice, bob, old = self.room()
        alice.send(command(1, "kick", "old", "enough"))
        self.assertEqual([(e.kind, e.text) for e in old.events()], [(K.CLOSED, "enough")])
        self.assertEqual([(e.kind, e.name) for e in bob.events()], [(K.KICKED, "old")])

    def test_ban_refuses_the_name_and_the_address(self):
        alice, bob, old = self.room()
        alice.send(command(1, "ban", "bob"))
        self.assertEqual([e.kind for e in bob.events()], [K.BANNED])
        self.assertEqual([e.kind for e in alice.events()], [K.BANNED, K.ECHO])
        self.assertEqual([(e.kind, e.name) for e in old.events()], [(K.LEFT, "bob")])
        self.assertEqual(self.status(self.service.join_room, "Lobby", "bob", "10.0.0.77"), Status.FORBIDDEN)
        self.assertEqual(self.status(self.service.join_room, "Lobby", "robert", "10.0.0.2"), Status.FORBIDDEN)
        alice.send(command(2, "unban", "BOB"))
        self.assertEqual([(e.kind, e.name) for e in alice.events()], [(K.UNBANNED, "BOB"), (K.ECHO, "alice")])
        self.assertEqual(old.events(), [])  # no 1.1 counterpart
        self.join()

    def test_mute_refuses_what_the_member_says(self):
        alice, bob, old = self.room()
        alice.send(command(1, "mute", "bob"))
        self.assertEqual([(e.kind, e.name) for e in bob.events()], [(K.MUTED, "bob")])
        bob.send(send(1, "let me speak"))
        [refused] = bob.events()
        self.assertEqual((refused.kind, refused.seq, refused.msg_id, refused.text),
                         (K.REFUSED, 0, 1, "you are muted in this room"))
        bob.send(send(1, "let me speak"))  # retransmitted: refused again, never relayed
        self.assertEqual([e.kind for e in bob.events()], [K.REFUSED])
        self.assertEqual([e.kind for e in alice.events()], [K.MUTED, K.ECHO])
        old_mute = command(2, "mute", "old")
        alice.send(old_mute)
        old.send(send(1, "me too"))
        self.assertEqual((old.events(), self.service.drops["muted"]), ([], 1))
        alice.send(command(3, "unmute", "bob"))
        bob.events()
        bob.send(send(2, "thanks"))
        self.assertEqual([e.kind for e in bob.events()], [K.ECHO])

    def test_host_hand_over_then_the_old_host_leaves_and_the_room_lives(self):
        alice, bob, old = self.room()
        alice.send(command(1, "host", "bob"))
        self.assertEqual([(e.kind, e.name) for e in bob.events()], [(K.HOST, "bob")])
        alice.send(LEAVE)
        self.assertEqual([(e.kind, e.name) for e in bob.events()], [(K.LEFT, "alice")])
        self.assertEqual(self.service.rooms["lobby"].host.name, "bob")
        self.assertEqual(complete_body(self.service, self.service.join_room(
            "Lobby", "carol", "10.0.0.3", version="1.2"))["host_name"], "bob")

    def test_refusals(self):
        alice, bob, old = self.room()
        cases = [
            (bob, command(1, "kick", "alice"), "only the host may kick"),
            (alice, command(1, "kick", "alice"), "you cannot kick yourself"),
            (alice, command(2, "mute", "nobody"), "'nobody' is not in the room"),
            (alice, command(3, "dance", "bob"), "unknown command 'dance'"),
            (alice, command(4, "unban", "bob"), "'bob' is not banned"),
        ]
        for peer, datagram, why in cases:
            peer.send(datagram)
            [refused] = [e for e in peer.events() if e.kind == K.REFUSED]
            self.assertTrue(refused.text.startswith(why), (refused.text, why))
        alice.send(command(2, "mute", "nobody"))  # the same msg_id: the same refusal
        self.assertEqual([e.text for e in alice.events()], ["'nobody' is not in the room"])
        # A 1.1 member's COMMAND is not a 1.1 datagram: dropped, counted.
        old.send(command(1, "kick", "bob"))
        self.assertEqual((old.events(), self.service.drops["version"]), ([], 1))
