"""Protocol 1.1 in the room service: SEND/ECHO, duplicates, HISTORY, EXPIRED, browser members."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ocm.server.tcrp_server import complete_body
from ocm.wire.datagram import HEARTBEAT, LEAVE, EventKind, chat, encode_event, history, parse_event, send
from ocm.server.history import ENTRY_OVERHEAD, History
from ocm.server.sends import NEW, STALE, WINDOW, SendWindow
from tests.test_rooms import RoomFixture

MESSAGE, ECHO, HISTORY, EXPIRED = EventKind.MESSAGE, EventKind.ECHO, EventKind.HISTORY, EventKind.EXPIRED


class ReliableRoomTests(RoomFixture):

    def pair(self):
        alice, bob = self.create(), self.join()
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        return alice, bob

    def test_complete_body_tells_version_room_seq_history(self):
        alice = self.create("Lobby")
        self.assertEqual(
            {k: alice.body[k] for k in ("version", "room", "seq", "history")},
            {"version": "1.1", "room": "Lobby", "seq": 0, "history": 100},
        )
        alice.send(HEARTBEAT)
        alice.send(send(1, "hi"))
        bob = self.join("LOBBY")
        self.assertEqual((bob.body["room"], bob.body["seq"]), ("Lobby", 1))

    def test_send_is_relayed_once_and_echoed(self):
        alice, bob = self.pair()
        alice.send(send(1, "hello"))
        [echo] = alice.events()
        self.assertEqual((echo.kind, echo.seq, echo.name, echo.msg_id), (ECHO, 1, "alice", 1))
        self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in bob.events()], [(MESSAGE, 1, "alice", "hello")])
        # The ECHO was lost: the retransmission (new counter, same msg_id)
        # gets the same seq back, and bob sees nothing twice.
        alice.send(send(1, "hello"))
        [again] = alice.events()
        self.assertEqual((again.kind, again.seq, again.msg_id), (ECHO, 1, 1))
        self.assertEqual(bob.events(), [])
        alice.send(send(2, "second"))
        self.assertEqual([(e.kind, e.seq, e.msg_id) for e in alice.events()], [(ECHO, 2, 2)])
        self.assertEqual([(e.seq, e.text) for e in bob.events()], [(2, "second")])
        stats = self.service.stats
        self.assertEqual((stats["echo"], stats["duplicate"]), (3, 1))

    def test_msg_ids_out_of_order_and_the_window(self):
        alice, bob = self.pair()
        alice.send(send(3, "three"))
        alice.send(send(2, "two"))  # arrived late: still new
        alice.send(send(3, "three"))  # a repeat
        self.assertEqual([(e.seq, e.text) for e in bob.events()], [(1, "three"), (2, "two")])
        self.assertEqual([(e.msg_id, e.seq) for e in alice.events()], [(3, 1), (2, 2), (3, 1)])
        alice.send(send(3 + WINDOW + 1, "far"))
        alice.send(send(3, "three"))  # 65 below the highest: dropped, no ECHO
        self.assertEqual(self.service.drops["stale"], 1)
        alice.send(send(5, "five"))  # 64 below: never relayed, so relayed now
        self.assertEqual([e.text for e in bob.events()], ["far", "five"])
        self.assertEqual([e.msg_id for e in alice.events()], [68, 5])

    def test_version_1_chat_still_echoes_as_message(self):
        alice, bob = self.pair()
        alice.send(chat("old client"))
        for peer in (alice, bob):
            self.assertEqual([(e.kind, e.text) for e in peer.events()], [(MESSAGE, "old client")])

    def test_history_resends_to_the_asker_only(self):
        alice, bob = self.pair()
        for i in range(1, 6):
            alice.send(send(i, f"line {i}"))
            self.clock.advance(1)
        alice.events(), bob.events()
        bob.send(history(2, 4))
        events = bob.events()
        self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in events],
                         [(HISTORY, i, "alice", f"line {i}") for i in (2, 3, 4)])
        self.assertEqual(events[0].time_ms, 1_700_000_001_000)  # the original time
        self.assertEqual(alice.events(), [])
        bob.send(history(4, 2**64 - 1))  # last is clamped to the room's seq
        self.assertEqual([e.seq for e in bob.events()], [4, 5])
        bob.send(history(9, 12))  # nothing there yet
        self.assertEqual(bob.events(), [])

    def unlimited(self):
        for m in self.service.rooms["lobby"].members.values():
            m.bucket.rate = 0

    def test_at_most_100_per_request(self):
        self.service.history = 200
        alice, bob = self.pair()
        self.unlimited()
        for i in range(1, 151):
            alice.send(send(i, str(i)))
        bob.events()
        bob.send(history(1, 150))
        self.assertEqual([e.seq for e in bob.events()], list(range(1, 101)))
        bob.send(history(101, 150))
        self.assertEqual([e.seq for e in bob.events()], list(range(101, 151)))

    def test_expired_when_older_than_held(self):
        self.service.history = 3
        alice, bob = self.create("Small"), self.join("Small")
        alice.send(HEARTBEAT)
        bob.send(HEARTBEAT)
        for i in range(1, 6):
            alice.send(send(i, str(i)))
        bob.events()
        bob.send(history(1, 5))
        self.assertEqual([(e.kind, e.seq) for e in bob.events()],
                         [(EXPIRED, 3), (HISTORY, 3), (HISTORY, 4), (HISTORY, 5)])
        bob.send(history(1, 2))
        self.assertEqual([(e.kind, e.seq, e.name, e.text) for e in bob.events()], [(EXPIRED, 3, "", "")])
        self.assertEqual(self.service.stats["expired"], 2)

    def test_history_off(self):
        self.service.history = 0
        alice = self.create("Quiet")
        self.assertEqual(alice.body["history"], 0)
        alice.send(HEARTBEAT)
        alice.send(send(1, "x"))
        alice.events()
        alice.send(history(1, 1))
        self.assertEqual([(e.kind, e.seq) for e in alice.events()], [(EXPIRED, 2)])

    def test_history_costs_the_askers_rate(self):
        """A member cannot make the server send more than 10 events per token."""
        alice, bob = self.pair()
        self.unlimited()
        for i in range(1, 101):
            alice.send(send(i, str(i)))
        for m in self.service.rooms["lobby"].members.values():
            m.bucket.rate, m.bucket.tokens = 20, 40
        bob.events()
        served = 0
        for _ in range(10):
            bob.send(history(1, 100))
            served += len(bob.events())
        # 40 tokens, 1 for each request and 10 more for each full answer:
        # four answers (the fourth runs the bucket into debt), then drops.
        self.assertEqual(served, 400)
        self.assertEqual(self.service.drops["flood"], 6)
        self.clock.advance(0.2)  # debt of 4 tokens: 0.2 s at 20/s is not enough
        bob.send(history(1, 1))
        self.assertEqual(bob.events(), [])

    def test_closing_forgets_history(self):
        alice, bob = self.pair()
        alice.send(send(1, "secret plans"))
        closed = []
        self.service.on_room_closed.append(lambda room: closed.append((room.name, len(room.history))))
        alice.send(LEAVE)
        self.assertEqual(closed, [("Lobby", 0)])
        self.assertEqual(self.service.rooms, {})
        alice2 = self.create()
        self.assertEqual(alice2.body["seq"], 0)

    def test_stats_count_deliveries(self):
        alice, bob = self.pair()
        alice.send(send(1, "a"))  # MESSAGE to bob, ECHO to alice
        alice.send(chat("b"))  # MESSAGE to both
        bob.send(LEAVE)  # LEFT to alice
        self.assertEqual(self.service.stats["delivered"], 5)
        self.assertEqual(self.service.stats["received"], 5)


class Transport:
    """A member transport that keeps what it is handed."""

    def __init__(self, deliver):
        self.deliver = deliver


class BrowserMemberTests(RoomFixture):
    """A member with a MemberTransport instead of a UDP address, beside UDP members."""

    def browser(self, room="Lobby", user="web", create=False):
        got = []
        transport = Transport(got.append)
        if create:
            m = self.service.create_room(room, user, "10.0.0.7", None, transport=transport)
        else:
            m = self.service.join_room(room, user, "10.0.0.7", transport=transport)
        self.assertEqual((m.token, m.key, m.aead), ("", b"", None))
        return m, got

    def test_browser_and_udp_members_chat(self):
        alice = self.create()
        alice.send(HEARTBEAT)
        web, got = self.browser()
        self.assertEqual([(e.kind, e.name) for e in alice.events()], [(EventKind.JOINED, "web")])
        self.assertTrue(self.service.say(web, "from the browser", 1))
        self.assertEqual([(e.kind, e.seq) for e in got], [(ECHO, 1)])
        self.assertEqual([(e.kind, e.text) for e in alice.events()], [(MESSAGE, "from the browser")])
        alice.send(send(1, "from the terminal"))
        self.assertEqual([(e.kind, e.text) for e in got[1:]],
                         [(MESSAGE, "from the terminal")])
        self.assertTrue(self.service.request_history(web, 1, 2))
        self.assertEqual([(e.kind, e.seq) for e in got[2:]], [(HISTORY, 1), (HISTORY, 2)])
        self.service.leave(web)
        self.assertEqual([(e.kind, e.name) for e in alice.events()], [(ECHO, "alice"), (EventKind.LEFT, "web")])
        self.assertFalse(self.service.say(web, "gone", 2))
        self.assertEqual(self.service.drops["unknown"], 1)

    def test_browser_limits(self):
        self.create()
        web, got = self.browser()
        self.assertFalse(self.service.say(web, "x" * 3073, 1))
        self.assertFalse(self.service.say(web, "x", 0))
        self.assertFalse(self.service.request_history(web, 3, 2))
        self.assertEqual(self.service.drops["malformed"], 3)
        for i in range(1, 41):
            self.assertTrue(self.service.say(web, "x", i))
        self.assertFalse(self.service.say(web, "x", 41))
        self.assertEqual(self.service.drops["flood"], 1)

    def test_browser_host_closes_room_and_times_out(self):
        web, got = self.browser("Web", "host", create=True)
        bob = self.join("Web")
        bob.send(HEARTBEAT)
        self.clock.advance(30)
        self.service.touch(web)
        bob.send(HEARTBEAT)
        self.clock.advance(40)
        self.service.sweep()
        self.assertIn("web", self.service.rooms)
        self.clock.advance(25)
        self.service.sweep()
        self.assertEqual([(e.kind, e.name) for e in bob.events()], [(EventKind.CLOSED, "host")])
        self.assertEqual(self.service.rooms, {})


class HistoryStoreTests(SynchronousTestCase):
    def event(self, seq, text="x"):
        return encode_event(MESSAGE, seq, 0, b"a", text.encode())

    def test_byte_budget(self):
        one = len(self.event(1, "y" * 100)) + ENTRY_OVERHEAD
        store = History(max_count=100, max_bytes=3 * one)
        for seq in range(1, 6):
            store.add(seq, self.event(seq, "y" * 100))
        self.assertEqual((len(store), store.first, store.size), (3, 3, 3 * one))
        expired, events = store.request(1, 5, 5)
        self.assertEqual((expired, [parse_event(e).seq for e in events]), (3, [3, 4, 5]))

    def test_a_message_over_the_budget_is_not_kept(self):
        store = History(max_count=10, max_bytes=50)
        store.add(1, self.event(1, "z" * 100))
        self.assertEqual((len(store), store.size), (0, 0))
        self.assertEqual(store.request(1, 1, 1), (2, []))

    @given(st.integers(1, 20), st.integers(1, 60), st.integers(1, 70), st.integers(0, 70))
    def test_model(self, keep, current, first, span):
        """Against the spec's words: clamp, EXPIRED seq, in order, at most 100."""
        store = History(max_count=keep, max_bytes=10**9)
        for seq in range(1, current + 1):
            store.add(seq, self.event(seq))
        last = first + span
        expired, events = store.request(first, last, current)
        oldest = max(1, current - keep + 1)
        want = [s for s in range(max(first, oldest), min(last, current) + 1)][:100]
        self.assertEqual([parse_event(e).seq for e in events], want)
        self.assertTrue(all(parse_event(e).kind == HISTORY for e in events))
        self.assertEqual(expired, oldest if first < oldest and first <= min(last, current) else None)


class SendWindowTests(SynchronousTestCase):
    @given(st.lists(st.integers(1, 300), max_size=200))
    def test_model(self, ids):
        """Same answers as a dict of every msg_id ever relayed, within the window."""
        window, relayed, highest, seq = SendWindow(), {}, 0, 0
        for msg_id in ids:
            got = window.check(msg_id)
            if highest - msg_id > WINDOW:
                self.assertEqual(got, STALE)
                continue
            self.assertEqual(got, relayed.get(msg_id, NEW))
            if got == NEW:
                seq += 1
                window.record(msg_id, seq)
                relayed[msg_id] = seq
                highest = max(highest, msg_id)
