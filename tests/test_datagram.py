"""The UDP codec and the replay window alone."""

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.trial.unittest import SynchronousTestCase

from ocm.wire.datagram import (
    HEARTBEAT,
    LEAVE,
    DatagramError,
    EventKind,
    Kind,
    chat,
    encode_event,
    open_envelope,
    open_server,
    parse_envelope,
    parse_event,
    history,
    parse_message,
    read_message,
    send,
    seal_client,
    seal_server,
)
from ocm.server.replay import ReplayWindow

KEY = bytes(range(32))


class ClientDatagramTests(SynchronousTestCase):
    def reason(self, f, *args):
        with self.assertRaises(DatagramError) as cm:
            f(*args)
        return cm.exception.reason

    def test_layout_matches_protocol(self):
        data = seal_client(AESGCM(KEY), b"Lobby", b"tok", 7, chat("hi"))
        self.assertEqual(data[:10], b"\x05\x03Lobbytok")
        self.assertEqual(data[10:22], b"\x00\x00\x00\x01" + (7).to_bytes(8, "big"))
        # AAD is the clear header: decrypting with it by hand works.
        self.assertEqual(AESGCM(KEY).decrypt(data[10:22], data[22:], data[:10]), b"\x01hi")

    def test_round_trip(self):
        data = seal_client(AESGCM(KEY), b"Lobby", b"tok", 7, chat("héllo"))
        env = parse_envelope(data)
        self.assertEqual((env.room, env.token, env.counter), (b"Lobby", b"tok", 7))
        self.assertEqual(parse_message(open_envelope(AESGCM(KEY), env))[:2], (Kind.CHAT, "héllo"))

    def test_malformed_envelopes(self):
        good = seal_client(AESGCM(KEY), b"Lobby", b"tok", 1, HEARTBEAT)
        self.assertEqual(self.reason(parse_envelope, b""), "malformed")
        self.assertEqual(self.reason(parse_envelope, b"\x05"), "malformed")
        self.assertEqual(self.reason(parse_envelope, good[:-1][:20]), "malformed")
        self.assertEqual(self.reason(parse_envelope, b"\xff\xff" + b"x" * 100), "malformed")
        self.assertEqual(self.reason(parse_envelope, good[:10] + b"\0\0\0\2" + good[14:]), "malformed")
        zero = seal_client(AESGCM(KEY), b"Lobby", b"tok", 0, HEARTBEAT)
        self.assertEqual(self.reason(parse_envelope, zero), "malformed")
        self.assertEqual(self.reason(parse_envelope, good + b"x" * 4096), "oversize")

    def test_largest_chat_fits(self):
        data = seal_client(AESGCM(KEY), b"r" * 255, b"t" * 255, 1, chat("x" * 3072))
        self.assertLessEqual(len(data), 4096)
        env = parse_envelope(data)
        self.assertEqual(parse_message(open_envelope(AESGCM(KEY), env))[1], "x" * 3072)

    def test_forgeries_fail_authentication(self):
        data = bytearray(seal_client(AESGCM(KEY), b"Lobby", b"tok", 1, chat("hello, world, and more")))
        for i in (0 + 2, len(data) - 1, len(data) - 20):  # header (AAD), tag, ciphertext
            forged = bytearray(data)
            forged[i] ^= 1
            self.assertEqual(self.reason(open_envelope, AESGCM(KEY), parse_envelope(bytes(forged))), "auth")
        other = AESGCM(bytes(32))
        self.assertEqual(self.reason(open_envelope, other, parse_envelope(bytes(data))), "auth")

    def test_messages(self):
        self.assertEqual(parse_message(HEARTBEAT)[:2], (Kind.HEARTBEAT, ""))
        self.assertEqual(parse_message(LEAVE)[:2], (Kind.LEAVE, ""))
        for bad in (b"", b"\x01", b"\x01" + b"x" * 3073, b"\x01\xff", b"\x02x", b"\x03x", b"\x04", b"\x00hi"):
            self.assertEqual(self.reason(parse_message, bad), "malformed", bad[:8])


    def test_send_and_history_messages(self):
        """Protocol 1.1's SEND carries a msg_id; HISTORY a seq range."""
        self.assertEqual(tuple(parse_message(send(7, "héllo"))), (Kind.SEND, "héllo", 7, 0, "héllo".encode()))
        self.assertEqual(read_message(send(2**32 - 1, "x")).number, 2**32 - 1)
        self.assertEqual(tuple(parse_message(history(3, 9))), (Kind.HISTORY, "", 3, 9, b""))
        self.assertEqual(parse_message(history(5, 5))[2:4], (5, 5))
        for bad in (
            send(0, "x"),  # msg_id starts at 1
            send(1, "x")[:5],  # no text
            b"\x05\x00\x01",  # shorter than a msg_id
            send(1, "x" * 3073),
            send(1, "x")[:-1] + b"\xff",
            history(0, 4),  # first starts at 1
            history(5, 4),  # first after last
            history(1, 2) + b"\x00",
            history(1, 2)[:-1],
        ):
            self.assertEqual(self.reason(parse_message, bad), "malformed", bad[:8])


class ServerDatagramTests(SynchronousTestCase):
    def test_echo_event_carries_msg_id(self):
        """ECHO's text is 4 raw bytes that need not be UTF-8."""
        event = encode_event(EventKind.ECHO, 12, 5, b"bob", struct.pack(">I", 0xFFFFFFFE))
        parsed = parse_event(event)
        self.assertEqual((parsed.kind, parsed.seq, parsed.name, parsed.msg_id), (EventKind.ECHO, 12, "bob", 0xFFFFFFFE))
        self.assertRaises(DatagramError, parse_event, event[:-1])

    def test_event_layout(self):
        event = encode_event(EventKind.MESSAGE, 3, 1700000000123, b"alice", b"hi")
        self.assertEqual(event, struct.pack(">BQQB", 1, 3, 1700000000123, 5) + b"alicehi")
        data = seal_server(AESGCM(KEY), 9, event)
        self.assertEqual(data[:12], b"\x00\x00\x00\x02" + (9).to_bytes(8, "big"))
        counter, ev = open_server(AESGCM(KEY), data)
        self.assertEqual((counter, ev.kind, ev.seq, ev.time_ms, ev.name, ev.text),
                         (9, 1, 3, 1700000000123, "alice", "hi"))

    def test_bad_events(self):
        self.assertRaises(DatagramError, parse_event, b"\x01" * 10)
        self.assertRaises(DatagramError, parse_event, struct.pack(">BQQB", 1, 0, 0, 9) + b"abc")
        self.assertRaises(DatagramError, parse_event, struct.pack(">BQQB", 1, 0, 0, 1) + b"a\xff")
        self.assertRaises(DatagramError, open_server, AESGCM(KEY), b"\0" * 40)
        good = seal_server(AESGCM(KEY), 1, encode_event(7, 0, 0, b"h", b"bye"))
        self.assertRaises(DatagramError, open_server, AESGCM(bytes(32)), good)
        self.assertRaises(DatagramError, open_server, AESGCM(KEY), b"\0\0\0\1" + good[4:])


class ReplayWindowTests(SynchronousTestCase):
    def test_in_order_and_repeats(self):
        w = ReplayWindow()
        for c in (1, 2, 3):
            self.assertIsNone(w.check(c))
            w.accept(c)
        self.assertEqual(w.check(2), "replay")
        self.assertEqual(w.check(3), "replay")

    def test_reordering_inside_the_window(self):
        w = ReplayWindow()
        w.accept(100)
        self.assertIsNone(w.check(99))
        self.assertIsNone(w.check(36))  # exactly 64 below: still inside
        w.accept(36)
        self.assertEqual(w.check(36), "replay")
        self.assertEqual(w.check(35), "stale")  # 65 below

    def test_jump_forgets_old_bits(self):
        w = ReplayWindow()
        w.accept(1)
        w.accept(1000)
        self.assertEqual(w.check(1), "stale")
        self.assertIsNone(w.check(999))
        self.assertEqual(w.check(1000), "replay")

    def test_check_does_not_accept(self):
        w = ReplayWindow()
        self.assertIsNone(w.check(5))
        self.assertIsNone(w.check(5))
        self.assertEqual(w.highest, 0)
