"""
ocm.irc.names: room names as channels and usernames as nicks, reversibly.
"""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest
from twisted.words.protocols import irc

from ocm.irc import names
from ocm.wire.names import name_key, name_problem

# Every valid ocm name: any text that name_problem accepts, with a bias
# towards the characters IRC cannot carry.
_tricky = st.sampled_from(list(" _%,:!@*?.#&$+~-\u00a0\u3000\u200d\u0301é😀🇫🇷ß"))
valid_names = st.lists(st.one_of(_tricky, st.characters()), min_size=1, max_size=40).map("".join).filter(
    lambda n: name_problem(n) is None
)


class ChannelTests(unittest.TestCase):
    @settings(max_examples=2000, deadline=None)
    @given(valid_names)
    def test_every_room_name_round_trips(self, room):
        chan = names.channel(room)
        self.assertEqual(names.room_name(chan), room)

    @settings(max_examples=1000, deadline=None)
    @given(valid_names)
    def test_channel_is_one_irc_parameter(self, room):
        """A channel survives Twisted's parser as one middle parameter, in a list too."""
        chan = names.channel(room)
        self.assertTrue(chan.startswith("#"))
        self.assertNotIn(",", chan)
        self.assertEqual(irc.parsemsg(f"JOIN {chan},#other key")[2], [f"{chan},#other", "key"])

    @settings(max_examples=1000, deadline=None)
    @given(valid_names, valid_names)
    def test_distinct_rooms_distinct_channels(self, a, b):
        if a != b:
            self.assertNotEqual(names.channel(a), names.channel(b))

    def test_spaces_read_as_underscores(self):
        self.assertEqual(names.channel("study group"), "#study_group")
        self.assertEqual(names.channel("study_group"), "#study%5Fgroup")
        self.assertEqual(names.room_name("#study_group"), "study group")
        self.assertEqual(names.channel("a, b: c"), "#a%2C_b%3A_c")
        self.assertEqual(names.channel("#ops"), "##ops")
        self.assertEqual(names.room_name("##ops"), "#ops")

    def test_hex_case_is_either(self):
        """Clients that fold channel names to lower case still reach the room."""
        self.assertEqual(names.room_name("#a%5fb"), "a_b")
        self.assertEqual(name_key(names.room_name("#CAFÉ")), name_key("café"))

    def test_not_a_room(self):
        for chan in ["", "#", "room", "&room", "#a%", "#a%zz", "#a%FF", "#_a", "#a_", "#a%07b", "#a,b"]:
            self.assertIsNone(names.room_name(chan), chan)
        self.assertIsNotNone(names.channel_problem("#" + "a" * names.CHANNELLEN))
        self.assertIsNone(names.channel_problem("#" + "a" * (names.CHANNELLEN - 1)))


class NickTests(unittest.TestCase):
    @settings(max_examples=2000, deadline=None)
    @given(valid_names)
    def test_every_username_round_trips(self, user):
        self.assertEqual(names.username(names.nick(user)), user)

    @settings(max_examples=1000, deadline=None)
    @given(valid_names)
    def test_nick_fits_a_prefix(self, user):
        """nick!user@host parses back to the nick, and NAMES' @ prefix is never the nick's."""
        n = names.nick(user)
        prefix, command, params = irc.parsemsg(f":{n}!ocm@ocm PRIVMSG #a :hi")
        self.assertEqual(prefix.split("!")[0], n)
        self.assertNotIn(n[0], "@+#&:$~")

    def test_underscores_stay(self):
        """Clients append _ to a taken nick: it must stay a plain nick."""
        self.assertEqual(names.nick("ada_"), "ada_")
        self.assertEqual(names.username("ada__"), "ada__")
        self.assertEqual(names.nick("Ada Lovelace"), "Ada%20Lovelace")
        self.assertEqual(names.nick("-x"), "%2Dx")

    def test_bad_nicks(self):
        for n in ["", "#a", "a b", "a!b", "a@b", ":a", "a%", "-a", "a%0A"]:
            self.assertIsNotNone(names.nick_problem(n), n)
        self.assertIsNotNone(names.nick_problem("a" * (names.NICKLEN + 1)))
        self.assertIsNone(names.nick_problem("a" * names.NICKLEN))
        self.assertIsNone(names.nick_problem("[ada]|`^{}"))
