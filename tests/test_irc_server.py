"""
ocm.irc.server: IRC lines to room requests and room events to IRC lines,
on task.Clock with StringTransports, tests named after the RFC 2812 /
Modern IRC / IRCv3 section they check.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from ocm.irc import lines
from ocm.irc.listener import IRCFactory
from ocm.irc.server import Settings, State
from ocm.server.rooms import RoomService
from ocm.wire.datagram import EventKind
from ocm.wire.names import name_key
from tests.irc_desk import make_desk


class Recorder:
    """An ocm member's transport that keeps what it is delivered."""

    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)

    def kinds(self):
        return [e.kind for e in self.events]


class Client:
    def __init__(self, test, ip):
        self.test = test
        self.proto = test.factory.buildProtocol(IPv4Address("TCP", ip, 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        self.proto.makeConnection(self.transport)

    def send(self, *raw):
        self.proto.dataReceived("".join(r + "\r\n" for r in raw).encode("utf-8"))

    def read(self):
        data = self.transport.value()
        self.transport.clear()
        out = []
        for raw in data.split(b"\r\n"):
            if raw:
                out.append(lines.parse(raw.decode("utf-8")))
        return out

    def commands(self):
        return [m.command for m in self.read()]

    def register(self, nick, caps=()):
        if caps:
            self.send("CAP LS 302", f"NICK {nick}", "USER u 0 * :Real Name", f"CAP REQ :{' '.join(caps)}", "CAP END")
        else:
            self.send(f"NICK {nick}", "USER u 0 * :Real Name")
        got = self.read()
        self.test.assertIn("001", [m.command for m in got])
        return got

    @property
    def closed(self):
        return self.transport.disconnecting or self.proto.state is State.CLOSED


class IRCTestCase(unittest.TestCase):
    timeout_s = 60.0

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_796_293_412)
        self.service = RoomService(self.clock, timeout=self.timeout_s, max_members=5)
        self.service.start()
        self.addCleanup(self.service.stop)
        self.desk = make_desk(self.service, self.clock, **self.desk_kw())
        self.factory = IRCFactory(self.desk, self.clock, self.settings(), max_per_address=3)

    def desk_kw(self):
        return {}

    def settings(self):
        return Settings(playback=10, fingerprint="AB:CD", max_queue=4096)

    def client(self, ip="192.0.2.1"):
        return Client(self, ip)

    def ocm_member(self, room, name):
        """A member from another way in (a browser, say), in an existing room."""
        rec = Recorder()
        member = self.service.join_room(room, name, "198.51.100.7", transport=rec)
        return member, rec

    def joined(self, nick="ada", chan="#study_group", caps=(), key=None):
        c = self.client()
        c.register(nick, caps)
        c.send(f"JOIN {chan}" + (f" {key}" if key else ""))
        return c


class RegistrationTests(IRCTestCase):
    def test_rfc2812_3_1_registration_sends_welcome_isupport_motd(self):
        c = self.client()
        got = c.register("ada")
        codes = [m.command for m in got]
        for code in ("001", "002", "003", "004", "005", "375", "372", "376"):
            self.assertIn(code, codes)
        tokens = {t for m in got if m.command == "005" for t in m.params[1:-1]}
        for token in ("CASEMAPPING=ascii", "CHANTYPES=#", "PREFIX=(o)@", "NICKLEN=64", "CHANNELLEN=200"):
            self.assertIn(token, tokens)
        motd = [m.params[-1] for m in got if m.command == "372"]
        self.assertIn("- TLS certificate fingerprint: SHA256:AB:CD", motd)
        self.assertTrue(all(m.params[0] == "ada" for m in got if m.command.isdigit()))

    def test_ircv3_capability_negotiation_302_holds_registration_until_end(self):
        c = self.client()
        c.send("CAP LS 302", "NICK ada", "USER u 0 * :R")
        got = c.read()
        self.assertEqual([m.command for m in got], ["CAP"])
        self.assertEqual(got[0].params[:2], ["*", "LS"])
        self.assertEqual(set(got[0].params[2].split()), {"server-time", "message-tags", "echo-message", "batch", "draft/chathistory"})
        c.send("CAP REQ :server-time nonsense")
        self.assertEqual(c.read()[0].params[1:], ["NAK", "server-time nonsense"])
        c.send("CAP REQ :server-time echo-message")
        self.assertEqual(c.read()[0].params[1:], ["ACK", "server-time echo-message"])
        c.send("CAP END")
        self.assertIn("001", c.commands())
        self.assertEqual(c.proto.caps, {"server-time", "echo-message"})

    def test_rfc2812_3_1_commands_before_registration_get_451(self):
        c = self.client()
        c.send("JOIN #a")
        self.assertEqual(c.commands(), ["451"])
        self.assertEqual(self.service.rooms, {})

    def test_rfc2812_3_1_2_bad_nick_432(self):
        c = self.client()
        c.send("NICK #ada", "NICK a!b", "NICK " + "a" * 65)
        self.assertEqual(c.commands(), ["432", "432", "432"])

    def test_registration_deadline_closes_and_frees_the_slot(self):
        c = self.client()
        c.send("NICK ada")
        self.clock.advance(31)
        self.assertTrue(c.closed)
        self.assertIn(b"ERROR :Closing link", c.transport.value())
        c.proto.connectionLost(None)
        self.assertEqual(self.factory.door.active, 0)

    def test_modern_ping_pong_before_and_after_registration(self):
        c = self.client()
        c.send("PING :abc")
        m = c.read()[0]
        self.assertEqual((m.command, m.params[-1]), ("PONG", "abc"))

    def test_connection_cap_per_address(self):
        clients = [self.client() for _ in range(3)]
        fourth = self.client()
        self.assertTrue(fourth.closed)
        self.assertIn(b"ERROR :Closing link: too many open connections", fourth.transport.value())
        clients[0].proto.connectionLost(None)
        self.assertFalse(self.client().closed)
        self.assertFalse(self.client("192.0.2.2").closed)


class JoinTests(IRCTestCase):
    def test_rfc2812_3_2_1_join_creates_room_with_creator_as_operator(self):
        c = self.joined()
        got = c.read()
        room = self.service.rooms[name_key("study group")]
        self.assertEqual(room.name, "study group")
        self.assertEqual(room.host.name, "ada")
        self.assertEqual(got[0].command, "JOIN")
        self.assertEqual(got[0].params, ["#study_group"])
        self.assertEqual(got[0].prefix.split("!")[0], "ada")
        names_ = [m for m in got if m.command == "353"]
        self.assertEqual(names_[0].params[-1], "@ada")
        self.assertEqual(got[-1].command, "366")
        self.assertIn("332", [m.command for m in got])

    def test_rfc2812_3_2_1_join_existing_room_sees_members_and_is_seen(self):
        host = self.joined()
        host.read()
        member, rec = self.ocm_member("study group", "Bob Smith")
        self.assertEqual(host.read()[0].command, "JOIN")
        c = self.joined("cy")
        got = c.read()
        self.assertEqual(got[0].command, "JOIN")
        names_ = " ".join(m.params[-1] for m in got if m.command == "353").split()
        self.assertEqual(sorted(names_), sorted(["@ada", "Bob%20Smith", "cy"]))
        self.assertEqual(rec.events[-1].kind, EventKind.JOINED)
        self.assertEqual(rec.events[-1].name, "cy")
        seen = host.read()
        self.assertEqual((seen[0].command, seen[0].prefix.split("!")[0]), ("JOIN", "cy"))

    def test_rfc2812_3_2_1_key_is_the_room_password_475(self):
        self.joined(key="sesame").read()
        self.assertIsNotNone(self.service.rooms[name_key("study group")].password)
        c = self.joined("cy")
        self.assertEqual(c.read()[0].command, "475")
        c.send("JOIN #study_group wrong")
        self.assertEqual(c.read()[0].command, "475")
        c.send("JOIN #study_group sesame")
        self.assertEqual(c.read()[0].command, "JOIN")

    def test_nick_taken_in_the_room_433(self):
        self.joined().read()
        c = self.joined("ADA")  # ocm folds case: ADA is ada
        m = c.read()[0]
        self.assertEqual(m.command, "433")
        self.assertIn("#study_group", m.params[-1])

    def test_full_room_471(self):
        self.joined().read()
        for i in range(4):
            self.ocm_member("study group", f"m{i}")
        c = self.joined("cy")
        self.assertEqual(c.read()[0].command, "471")

    def test_request_rate_263(self):
        self.desk = make_desk(self.service, self.clock, request_rate=1.0, request_burst=2)
        self.factory = IRCFactory(self.desk, self.clock, self.settings())
        c = self.client()
        c.register("ada")
        c.send("JOIN #a", "JOIN #b", "JOIN #c")
        got = c.read()
        self.assertEqual([m.command for m in got if m.command in ("JOIN", "263")], ["JOIN", "JOIN", "263"])
        self.assertIn("#c", [m for m in got if m.command == "263"][0].params[-1])

    def test_names_and_who_pay_the_request_rate(self):
        """Replies that grow with a room cost a request, as a LIST does."""
        self.desk = make_desk(self.service, self.clock, request_rate=1.0, request_burst=3)
        self.factory = IRCFactory(self.desk, self.clock, self.settings())
        c = self.joined()
        c.read()
        c.send("WHO #study_group", "NAMES #study_group", "WHO #study_group")
        got = [m.command for m in c.read()]
        self.assertEqual([g for g in got if g in ("315", "366", "263")], ["315", "366", "263"])

    def test_a_room_on_another_node_is_403_naming_it(self):
        """Cluster mode: the desk's 307 cannot be followed over IRC; the numeric says where the room is."""
        from ocm.wire.tcrp import ProtocolError, Status

        async def elsewhere(request, ip, gone, transport=None):
            raise ProtocolError(Status.REDIRECT, "room 'far' is on node 10.0.0.2:9001", extra={"tcp": "10.0.0.2:9001"})

        self.desk.answer = elsewhere
        c = self.client()
        c.register("ada")
        c.send("JOIN #far")
        m = c.read()[0]
        self.assertEqual((m.command, m.params[1]), ("403", "#far"))
        self.assertIn("10.0.0.2:9001", m.params[-1])
        self.assertIn("connect your IRC client to that node", m.params[-1])

    def test_bad_channel_name_479(self):
        c = self.client()
        c.register("ada")
        c.send("JOIN #a%zz", "JOIN #" + "x" * 250)
        self.assertEqual(c.commands(), ["479", "479"])

    def test_rfc2812_3_2_1_join_zero_parts_all(self):
        c = self.joined()
        c.send("JOIN #other")
        c.read()
        c.send("JOIN 0")
        self.assertEqual(c.commands(), ["PART", "PART"])
        self.assertEqual(self.service.rooms, {})

    def test_rfc2812_3_2_2_part_leaves_the_room(self):
        host = self.joined()
        c = self.joined("cy")
        host.read(), c.read()
        c.send("PART #study_group :bye")
        self.assertEqual(c.read()[0].command, "PART")
        self.assertNotIn("cy", self.service.rooms[name_key("study group")].members)
        m = host.read()[0]
        self.assertEqual((m.command, m.prefix.split("!")[0], m.params[0]), ("PART", "cy", "#study_group"))

    def test_host_part_closes_the_room_as_a_kick(self):
        host = self.joined()
        c = self.joined("cy")
        host.read(), c.read()
        host.send("PART #study_group")
        self.assertEqual(host.commands(), ["PART"])
        m = c.read()[0]
        self.assertEqual((m.command, m.params[:2]), ("KICK", ["#study_group", "cy"]))
        self.assertIn("the host left", m.params[-1])
        self.assertEqual(c.proto.seats, {})
        self.assertEqual(self.service.rooms, {})

    def test_one_connection_many_rooms(self):
        c = self.joined()
        c.send("JOIN #b,#c")
        self.assertEqual(len(c.proto.seats), 3)
        self.assertEqual(len(self.service.rooms), 3)
        c.send("QUIT :gone")
        self.assertEqual(self.service.rooms, {})
        self.assertIn(b"ERROR :Closing link", c.transport.value())

    def test_nick_change_refused_while_in_rooms(self):
        c = self.joined()
        c.read()
        c.send("NICK bea")
        self.assertEqual(c.commands(), ["400"])
        c.send("PART #study_group", "NICK bea")
        got = c.read()
        self.assertEqual(got[-1].command, "NICK")
        self.assertEqual(c.proto.nick, "bea")


class TalkTests(IRCTestCase):
    def test_rfc2812_3_3_1_privmsg_to_channel_reaches_every_member(self):
        host = self.joined()
        member, rec = self.ocm_member("study group", "bob")
        c = self.joined("cy")
        host.read(), c.read()
        c.send("PRIVMSG #study_group :hello there")
        said = [e for e in rec.events if e.kind == EventKind.MESSAGE]
        self.assertEqual([(e.name, e.text) for e in said], [("cy", "hello there")])
        m = host.read()[0]
        self.assertEqual((m.command, m.prefix, m.params), ("PRIVMSG", "cy!ocm@ocm", ["#study_group", "hello there"]))
        self.assertEqual(c.read(), [])  # no echo-message: nothing back

    def test_ocm_member_message_reaches_irc(self):
        c = self.joined(caps=("server-time",))
        c.read()
        member, rec = self.ocm_member("study group", "Bob Smith")
        c.read()
        self.assertTrue(self.service.say(member, "hi, irc", 1))
        m = c.read()[0]
        self.assertEqual((m.command, m.prefix, m.params), ("PRIVMSG", "Bob%20Smith!ocm@ocm", ["#study_group", "hi, irc"]))
        self.assertEqual(m.tags["time"], lines.server_time(int(self.clock.seconds() * 1000)))

    def test_ircv3_echo_message(self):
        c = self.joined(caps=("echo-message", "server-time"))
        c.read()
        c.send("PRIVMSG #study_group :mine", "NOTICE #study_group :also mine")
        got = c.read()
        self.assertEqual([(m.command, m.prefix, m.params[-1]) for m in got],
                         [("PRIVMSG", "ada!ocm@ocm", "mine"), ("NOTICE", "ada!ocm@ocm", "also mine")])
        self.assertIn("time", got[0].tags)

    def test_ctcp_action_is_said_as_words(self):
        c = self.joined()
        member, rec = self.ocm_member("study group", "bob")
        c.read()
        c.send("PRIVMSG #study_group :\x01ACTION waves\x01", "PRIVMSG #study_group :\x01VERSION\x01")
        self.assertEqual([e.text for e in rec.events if e.kind == EventKind.MESSAGE], ["* waves"])

    def test_long_ocm_message_split_for_irc(self):
        c = self.joined()
        member, rec = self.ocm_member("study group", "bob")
        c.read()
        text = ("été " * 700)[:2990]  # 3 bytes/char mostly, ~3000 chars
        self.service.say(member, text[: 1000], 1)
        got = c.transport.value().split(b"\r\n")
        c.transport.clear()
        pieces = [g for g in got if g]
        self.assertGreater(len(pieces), 2)
        for raw in pieces:
            self.assertLessEqual(len(raw) + 2, 512)
        joined = "".join(lines.parse(p.decode()).params[-1] for p in pieces)
        self.assertEqual(joined, text[:1000])

    def test_rfc2812_3_3_1_errors(self):
        c = self.client()
        c.register("ada")
        c.send("PRIVMSG", "PRIVMSG #a", "PRIVMSG #a :hi", "PRIVMSG bob :hi", "NOTICE #a :quiet")
        self.assertEqual(c.commands(), ["411", "412", "404", "401"])

    def test_flooding_a_room_is_404_not_relayed(self):
        """Past the member rate (40 at once), PRIVMSG gets 404 and nothing is relayed."""
        self.factory.settings.line_burst = 100
        c = self.joined()
        member, rec = self.ocm_member("study group", "bob")
        c.read()
        c.send(*[f"PRIVMSG #study_group :{i}" for i in range(50)])
        said = [e for e in rec.events if e.kind == EventKind.MESSAGE]
        self.assertEqual(len(said), 40)
        self.assertEqual(c.commands(), ["404"] * 10)


class EventTests(IRCTestCase):
    def test_left_and_timed_out_as_part(self):
        c = self.joined()
        bob, rec = self.ocm_member("study group", "bob")
        eve, rec2 = self.ocm_member("study group", "eve")
        c.read()
        self.service.leave(bob)
        m = c.read()[0]
        self.assertEqual((m.command, m.prefix.split("!")[0], m.params[-1]), ("PART", "bob", "left the room"))
        # eve never shows life again; the IRC client answers its PINGs.
        for _ in range(20):
            self.clock.advance(5)
            c.send("PONG :x")
        got = [m for m in c.read() if m.command == "PART"]
        self.assertEqual([(m.prefix.split("!")[0], m.params[-1]) for m in got], [("eve", "timed out")])
        self.assertIn("ada", self.service.rooms[name_key("study group")].members)

    def test_closed_room_is_a_kick_from_the_server(self):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        c = self.joined(chan="#lab")
        c.read()
        prof = self.service.rooms["lab"].host
        self.service.leave(prof)
        m = c.read()[0]
        self.assertEqual((m.command, m.prefix, m.params[:2]), ("KICK", "ocm", ["#lab", "ada"]))
        self.assertEqual(c.proto.seats, {})
        c.send("PRIVMSG #lab :anyone?")
        self.assertEqual(c.commands(), ["404"])

    def test_ircv3_batch_chathistory_playback_on_join(self):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        prof = self.service.rooms["lab"].host
        for i in range(1, 13):
            self.service.say(prof, f"message {i}", i)
        c = self.joined(chan="#lab", caps=("batch", "server-time"))
        got = c.read()
        i = [m.command for m in got].index("BATCH")
        self.assertEqual(got[i].params[1:], ["chathistory", "#lab"])
        ref = got[i].params[0][1:]
        played = got[i + 1 : i + 11]
        self.assertEqual([m.params[-1] for m in played], [f"message {n}" for n in range(3, 13)])
        self.assertTrue(all(m.tags.get("batch") == ref and "time" in m.tags for m in played))
        self.assertEqual(got[i + 11].params, [f"-{ref}"])

    def test_playback_without_server_time_carries_the_time_in_text(self):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        self.service.say(self.service.rooms["lab"].host, "old news", 1)
        c = self.joined(chan="#lab")
        said = [m for m in c.read() if m.command == "PRIVMSG"]
        self.assertEqual(len(said), 1)
        self.assertRegex(said[0].params[-1], r"^\[\d\d:\d\d:\d\d\] old news$")
        self.assertEqual(said[0].tags, {})




class ModerationTests(IRCTestCase):
    """The host's moderation (the room service's, protocol 1.2) as KICK and MODE."""

    def room(self):
        ada = self.joined()
        bob, rec = self.ocm_member("study group", "bob")  # a 1.1 member from another way in
        cy = self.joined("cy")
        ada.read(), cy.read()
        return ada, cy, rec

    def test_rfc2812_3_2_8_kick_by_the_host(self):
        ada, cy, rec = self.room()
        ada.send("KICK #study_group cy :enough")
        seen = [(m.command, m.prefix.split("!")[0], m.params) for m in cy.read()]
        self.assertEqual(seen, [("KICK", "ada", ["#study_group", "cy", "enough"])])
        self.assertEqual(cy.proto.seats, {})
        self.assertEqual([(m.command, m.params) for m in ada.read()], [("KICK", ["#study_group", "cy", "enough"])])
        self.assertNotIn("cy", self.service.rooms[name_key("study group")].members)
        self.assertEqual((rec.events[-1].kind, rec.events[-1].name), (EventKind.LEFT, "cy"))  # 1.1's view
        cy.send("JOIN #study_group")  # a kick is not a ban
        self.assertEqual(cy.read()[0].command, "JOIN")

    def test_kick_refusals(self):
        ada, cy, rec = self.room()
        cy.send("KICK #study_group ada", "KICK #elsewhere ada")
        self.assertEqual(cy.commands(), ["482", "442"])
        ada.send("KICK #study_group nobody", "KICK #study_group")
        self.assertEqual(ada.commands(), ["441", "461"])
        self.assertEqual(len(self.service.rooms[name_key("study group")].members), 3)

    def test_mode_b_bans_and_unbans_a_name(self):
        ada, cy, rec = self.room()
        ada.send("MODE #study_group +b cy!*@*")
        self.assertEqual([(m.command, m.params) for m in cy.read()], [
            ("MODE", ["#study_group", "+b", "cy!*@*"]), ("KICK", ["#study_group", "cy", "banned"]),
        ])
        cy.send("JOIN #study_group")
        self.assertEqual(cy.commands(), ["474"])
        ada.read()
        ada.send("MODE #study_group b")
        self.assertEqual([(m.command, m.params[1:]) for m in ada.read()],
                         [("367", ["#study_group", "cy!*@*"]), ("368", ["#study_group", "End of channel ban list"])])
        ada.send("MODE #study_group -b cy")
        self.assertEqual([(m.command, m.params) for m in ada.read()], [("MODE", ["#study_group", "-b", "cy!*@*"])])
        cy.send("JOIN #study_group")
        self.assertEqual(cy.read()[0].command, "JOIN")

    def test_mode_q_mutes_and_unmutes(self):
        ada, cy, rec = self.room()
        ada.send("MODE #study_group +q cy")
        self.assertEqual([(m.command, m.params) for m in cy.read()], [("MODE", ["#study_group", "+q", "cy!*@*"])])
        ada.read()
        ada.send("MODE #study_group q")
        self.assertEqual([m.command for m in ada.read()], ["728", "729"])
        heard = len(rec.events)
        cy.send("PRIVMSG #study_group :can you hear me?")
        got = cy.read()
        self.assertEqual([m.command for m in got], ["404"])
        self.assertIn("muted", got[0].params[-1])
        self.assertEqual(len(rec.events), heard)
        self.assertEqual(ada.read(), [])
        ada.send("MODE #study_group -q cy")
        cy.read()
        cy.send("PRIVMSG #study_group :and now?")
        self.assertEqual(rec.events[-1].text, "and now?")

    def test_mode_o_hands_the_room_over(self):
        ada, cy, rec = self.room()
        ada.send("MODE #study_group +o cy")
        for c in (ada, cy):
            m = c.read()[0]
            self.assertEqual((m.command, m.prefix.split("!")[0], m.params), ("MODE", "ada", ["#study_group", "-o+o", "ada", "cy"]))
        self.assertEqual(self.service.rooms[name_key("study group")].host.name, "cy")
        ada.send("KICK #study_group cy", "MODE #study_group -o cy", "NAMES #study_group")
        got = ada.read()
        self.assertEqual([m.command for m in got], ["482", "482", "353", "366"])
        self.assertIn("@cy", got[2].params[-1].split())

    def test_refused_commands_say_why(self):
        ada, cy, rec = self.room()
        ada.send("MODE #study_group +q ada", "MODE #study_group -q cy", "MODE #study_group -b nobody")
        got = ada.read()
        self.assertEqual([m.command for m in got], ["482", "482", "482"])
        self.assertEqual([m.params[-1] for m in got],
                         ["you cannot mute yourself", "'cy' is not muted", "'nobody' is not banned"])

    def test_commands_pay_the_member_rate(self):
        """A host's commands are its member's COMMANDs: past the member rate, 263 and nothing done."""
        self.factory.settings.line_burst = 200
        ada, cy, rec = self.room()
        ada.send(*[f"MODE #study_group {'+' if i % 2 == 0 else '-'}q cy" for i in range(50)])
        got = [m.command for m in ada.read()]
        self.assertEqual(got.count("MODE"), 40)
        self.assertEqual(got.count("263"), 10)

    def test_restarting_as_a_notice(self):
        from ocm.wire.datagram import Event

        ada, cy, rec = self.room()
        ada.proto.seats[name_key("study group")].deliver(Event(EventKind.RESTARTING, 0, 0, "", "back in 5 s"))
        m = ada.read()[0]
        self.assertEqual((m.command, m.params), ("NOTICE", ["#study_group", "restarting: back in 5 s"]))

    def test_unknown_modes_472(self):
        ada, cy, rec = self.room()
        ada.send("MODE #study_group +k newkey", "MODE #study_group +l 5")
        self.assertEqual(ada.commands(), ["472", "472"])


class ChatHistoryTests(IRCTestCase):
    """IRCv3 draft/chathistory and msgid over the room's history."""

    caps = ("batch", "server-time", "message-tags", "draft/chathistory")

    def room_with(self, count):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        prof = self.service.rooms["lab"].host
        for i in range(1, count + 1):
            self.service.say(prof, f"m{i}", i)
            self.clock.advance(1)
            prof.bucket.tokens = prof.bucket.burst  # a patient speaker
        return prof

    def history(self, c, *params):
        c.send("CHATHISTORY " + " ".join(params))
        got = c.read()
        self.assertEqual(got[0].command, "BATCH", got)
        self.assertEqual(got[0].params[1:], ["chathistory", "#lab"])
        self.assertEqual(got[-1].params, ["-" + got[0].params[0][1:]])
        return got[1:-1]

    def test_ircv3_chathistory_no_playback_and_latest(self):
        self.room_with(30)
        c = self.joined(chan="#lab", caps=self.caps)
        self.assertNotIn("PRIVMSG", [m.command for m in c.read()])  # the client asks itself
        latest = self.history(c, "LATEST", "#lab", "*", "5")
        self.assertEqual([m.params[-1] for m in latest], ["m26", "m27", "m28", "m29", "m30"])
        self.assertTrue(all(m.tags["batch"] and m.tags["msgid"] and m.tags["time"] for m in latest))

    def test_ircv3_chathistory_before_after_around_between(self):
        self.room_with(30)
        c = self.joined(chan="#lab", caps=self.caps)
        c.read()
        ids = {m.params[-1]: m.tags["msgid"] for m in self.history(c, "LATEST", "#lab", "*", "100")}
        self.assertEqual(len(ids), 30)
        texts = lambda got: [m.params[-1] for m in got]
        self.assertEqual(texts(self.history(c, "BEFORE", "#lab", f"msgid={ids['m10']}", "3")), ["m7", "m8", "m9"])
        self.assertEqual(texts(self.history(c, "AFTER", "#lab", f"msgid={ids['m10']}", "2")), ["m11", "m12"])
        self.assertEqual(texts(self.history(c, "AROUND", "#lab", f"msgid={ids['m10']}", "4")), ["m8", "m9", "m10", "m11"])
        self.assertEqual(texts(self.history(c, "BETWEEN", "#lab", f"msgid={ids['m20']}", f"msgid={ids['m25']}", "10")),
                         ["m21", "m22", "m23", "m24"])
        self.assertEqual(texts(self.history(c, "BETWEEN", "#lab", f"msgid={ids['m25']}", f"msgid={ids['m20']}", "2")),
                         ["m23", "m24"])
        # By time: m1 was said at the first second, each one a second later.
        first = self.history(c, "LATEST", "#lab", "*", "30")[0].tags["time"]
        self.assertEqual(texts(self.history(c, "AFTER", "#lab", f"timestamp={first}", "2")), ["m2", "m3"])
        self.assertEqual(texts(self.history(c, "LATEST", "#lab", f"msgid={ids['m28']}", "10")), ["m29", "m30"])

    def test_msgids_belong_to_one_room_incarnation(self):
        """A room closed and made again restarts its seqs: its old msgids match nothing."""
        prof = self.room_with(3)
        c = self.joined(chan="#lab", caps=self.caps)
        c.read()
        old = self.history(c, "LATEST", "#lab", "*", "1")[0].tags["msgid"]
        self.service.leave(prof)
        c.read()
        c.send("JOIN #lab")
        c.read()
        self.service.say(self.service.rooms["lab"].host, "new", 1)
        c.read()
        self.assertEqual(self.history(c, "BEFORE", "#lab", f"msgid={old}", "10"), [])
        self.assertNotEqual(self.history(c, "LATEST", "#lab", "*", "1")[0].tags["msgid"], old)

    def test_ircv3_chathistory_refusals_are_fail(self):
        self.room_with(2)
        c = self.joined(chan="#lab", caps=self.caps)
        c.read()
        for line in ("CHATHISTORY", "CHATHISTORY LATEST #lab", "CHATHISTORY LATEST #elsewhere * 5",
                     "CHATHISTORY BEFORE #lab * 5", "CHATHISTORY BEFORE #lab msgid=x 5",
                     "CHATHISTORY LATEST #lab * many", "CHATHISTORY FROB #lab * 5"):
            c.send(line)
            got = c.read()
            self.assertEqual([m.command for m in got], ["FAIL"], line)
            self.assertEqual(got[0].params[0], "CHATHISTORY")
        c.send("CHATHISTORY TARGETS timestamp=2026-01-01T00:00:00.000Z timestamp=2027-01-01T00:00:00.000Z 10")
        self.assertEqual(c.commands(), ["BATCH", "BATCH"])


class LivenessTests(IRCTestCase):
    def test_modern_ping_answered_keeps_member_unanswered_times_out(self):
        c = self.joined()
        bob, rec = self.ocm_member("study group", "bob")
        c.read()
        self.clock.advance(self.factory.ping_interval)
        pings = [m for m in c.read() if m.command == "PING"]
        self.assertEqual(len(pings), 1)
        # Other lines are no answer: only PONG touches the member.
        for _ in range(14):
            self.clock.advance(5)
            c.send("PONG :" + pings[0].params[0])
            self.service.touch(bob)
        self.assertIn("ada", self.service.rooms[name_key("study group")].members)
        for _ in range(14):
            self.clock.advance(5)
            c.send("PRIVMSG #nowhere :still here", "PING :x")
            self.service.touch(bob)
        # ada was the host: her silence closed the room.
        self.assertEqual(self.service.rooms, {})
        self.assertIn(EventKind.CLOSED, rec.kinds())
        self.clock.advance(self.factory.ping_interval * 3)
        self.assertTrue(c.closed)

    def test_sweep_removal_told_as_kick(self):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        prof = self.service.rooms["lab"].host
        c = self.joined(chan="#lab")
        c.read()
        for _ in range(14):
            self.clock.advance(5)
            self.service.touch(prof)
        got = c.read()
        self.assertIn("KICK", [m.command for m in got])
        self.assertEqual(c.proto.seats, {})


class LimitTests(IRCTestCase):
    def test_slow_reader_is_removed_and_closed(self):
        c = self.joined()
        bob, rec = self.ocm_member("study group", "bob")
        eve = self.joined("eve")
        c.read(), eve.read()
        eve.proto.pauseProducing()  # its socket's buffer is full
        for i in range(1, 20):
            self.service.say(bob, "x" * 400, i)
        self.assertFalse(eve.closed)
        self.clock.advance(0)
        self.assertTrue(eve.closed)
        self.assertIn(b"ERROR :Closing link", eve.transport.value())
        self.assertNotIn("eve", self.service.rooms[name_key("study group")].members)
        self.assertEqual(self.factory.refusals["slow_reader"], 1)
        # The others heard every message, and eve go as a silent member goes.
        self.assertEqual([(e.kind, e.name) for e in rec.events][-1], (EventKind.TIMED_OUT, "eve"))
        self.assertTrue(eve.transport.disconnecting)
        self.assertEqual([m.command for m in c.read()].count("PRIVMSG"), 19)

    def test_queue_drains_on_resume(self):
        c = self.joined()
        bob, rec = self.ocm_member("study group", "bob")
        c.read()
        c.proto.pauseProducing()
        self.service.say(bob, "one", 1)
        self.service.say(bob, "two", 2)
        self.assertEqual(c.transport.value(), b"")
        c.proto.resumeProducing()
        self.assertEqual([m.params[-1] for m in c.read()], ["one", "two"])

    def test_modern_417_input_too_long_is_dropped_not_fatal(self):
        c = self.joined()
        c.read()
        c.send("PRIVMSG #study_group :" + "x" * 600)
        self.assertEqual(c.commands(), ["417"])
        # Tags have a budget of their own, which does not lend to the rest.
        c.send("@+draft/x=" + "y" * 3000 + " PRIVMSG #study_group :" + "x" * 600)
        self.assertEqual(c.commands(), ["417"])
        c.send("@+draft/x=" + "y" * 3000 + " PING :tagged")
        self.assertEqual(c.commands(), ["PONG"])
        c.proto.dataReceived(b"x" * 10000)
        c.proto.dataReceived(b"y" * 10000 + b"\r\nPING :ok\r\n")
        self.assertEqual(c.commands(), ["417", "PONG"])

    def test_excess_flood_closes(self):
        c = self.client()
        c.register("ada")
        c.send(*["PING :x"] * 60)
        self.assertTrue(c.closed)
        self.assertIn(b"Excess Flood", c.transport.value())
        self.assertEqual(self.factory.refusals["flood"], 1)

    def test_not_utf8_is_ignored_with_a_notice(self):
        c = self.client()
        c.register("ada")
        c.proto.dataReceived(b"JOIN #caf\xe9\r\n")
        self.assertEqual(c.commands(), ["NOTICE"])
        self.assertEqual(self.service.rooms, {})

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=8))
    def test_bad_input_never_raises(self, chunks):
        c = self.client()
        c.register("ada")
        c.send("JOIN #fuzz")
        for chunk in chunks:
            c.proto.dataReceived(chunk + b"\r\n")
        c.proto.connectionLost(None)
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.factory.door.active, 0)


_COMMANDS = ["JOIN", "PART", "PRIVMSG", "NOTICE", "NAMES", "WHO", "WHOIS", "LIST", "TOPIC", "MODE", "CAP",
             "NICK", "USER", "PING", "PONG", "CHATHISTORY", "MOTD", "PASS", "AWAY", "KICK"]
_WORDS = st.one_of(
    st.sampled_from(["#lab", "#lab,#x", "#", "*", "0", "ada", "LS", "REQ", "END", "LATEST", "BEFORE", "msgid=1-2",
                     "timestamp=2026-12-03T10:00:00Z", "+b", "-o", "b", "100", "-1", "%", "#a%zz", ":"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0 "), min_size=1, max_size=30),
)


class CommandFuzzTests(IRCTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(_COMMANDS), st.lists(_WORDS, max_size=5), st.one_of(st.none(), st.text(max_size=40))),
                    max_size=12))
    def test_any_command_with_any_parameters_is_answered_never_an_internal_error(self, commands):
        self.service.create_room("lab", "prof", "198.51.100.7", None, transport=Recorder())
        prof = self.service.rooms["lab"].host
        self.service.say(prof, "hi", 1)
        c = self.client()
        c.register("ada", ("batch", "server-time", "message-tags", "echo-message"))
        for command, words, trailing in commands:
            line = " ".join([command, *words]) + (f" :{trailing}" if trailing is not None else "")
            c.proto.dataReceived(line.replace("\r", " ").replace("\n", " ").encode("utf-8", "surrogatepass") + b"\r\n")
            if c.closed:
                break
        out = c.transport.value()
        self.assertNotIn(b"internal error", out)
        for raw in out.split(b"\r\n"):
            if raw:
                head, _, body = raw.partition(b" ") if raw.startswith(b"@") else (b"", b"", raw)
                self.assertLessEqual(len(body) + 2, 512, raw)
        c.proto.connectionLost(None)
        self.service.leave(prof)
        self.assertEqual(self.service.rooms, {})
        self.assertEqual(self.factory.door.active, 0)


class QueryTests(IRCTestCase):
    def test_rfc2812_3_2_6_list_every_room(self):
        self.joined(key="k").read()
        self.service.create_room("open room", "x", "198.51.100.7", None, transport=Recorder())
        c = self.client("192.0.2.9")
        c.register("cy")
        c.send("LIST")
        got = c.read()
        self.assertEqual(got[0].command, "321")
        rows = {m.params[1]: m.params[2:] for m in got if m.command == "322"}
        self.assertEqual(rows, {"#study_group": ["1", "password"], "#open_room": ["1", ""]})
        self.assertEqual(got[-1].command, "323")

    def test_rfc2812_3_6_1_who_names_topic_mode(self):
        c = self.joined(key="k")
        c.read()
        c.send("WHO #study_group", "NAMES #study_group", "TOPIC #study_group", "MODE #study_group", "MODE #study_group b")
        got = c.read()
        self.assertEqual([m.command for m in got], ["352", "315", "353", "366", "332", "324", "368"])
        self.assertEqual(got[0].params[5:7], ["ada", "H@"])
        self.assertIn("study group", got[4].params[-1])
        self.assertEqual(got[5].params[-1], "+ntk")
        c.send("TOPIC #study_group :new", "MODE #study_group +x", "NAMES #nowhere")
        self.assertEqual(c.commands(), ["482", "472", "366"])

    def test_unknown_command_421(self):
        c = self.client()
        c.register("ada")
        c.send("FROBNICATE now", "irc_unknown x")
        self.assertEqual(c.commands(), ["421", "421"])
