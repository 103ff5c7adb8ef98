"""
ocm.irc.lines: formatting, splitting and parsing IRC lines.
"""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from ocm.irc import lines
from ocm.wire.datagram import MAX_TEXT


def _text():
    alphabet = st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(list(" \n\u0301\u200d\ufe0f🇫🇷😀é")),
    )
    return st.text(alphabet, min_size=1, max_size=400).filter(lambda t: len(t.encode()) <= MAX_TEXT)


class SplitTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(_text(), st.sampled_from(["ada", "x" * 300]), st.sampled_from(["#a", "#" + "r" * 150]))
    def test_rfc1459_2_3_every_line_within_512_bytes(self, text, nick, chan):
        """Each PRIVMSG line after its tags is at most 512 bytes with CRLF, and none is empty."""
        tags = {"time": "2026-12-03T10:00:00.000Z", "batch": "1"}
        out = lines.text_lines("PRIVMSG", chan, text, f"{nick}!ocm@ocm", tags)
        self.assertTrue(out)
        for raw in out:
            self.assertTrue(raw.endswith(b"\r\n"))
            self.assertNotIn(b"\n", raw[:-2])
            self.assertNotIn(b"\r", raw[:-2])
            head, _, body = raw.partition(b" ")
            self.assertLessEqual(len(head) + 1, lines.MAX_TAGS)
            if len(nick) + len(chan) < 400:
                self.assertLessEqual(len(body), 512)
            raw.decode("utf-8")  # whole characters only

    @settings(max_examples=500, deadline=None)
    @given(_text())
    def test_split_keeps_every_character(self, text):
        """Cut at character boundaries: the pieces of each line join back to it."""
        text = text.replace("\r", "").replace("\0", "")  # never sent: CR ends a line, NUL is dropped
        for part in text.split("\n"):
            if part.strip():
                pieces = lines.split_text(part, 100)
                self.assertEqual("".join(pieces), part)
                for p in pieces:
                    self.assertLessEqual(len(p.encode("utf-8")), 100)
        self.assertEqual(len(lines.split_text(text, 100)) == 0, not text.strip())

    def test_long_message_split_at_spaces(self):
        text = " ".join(["word"] * 300)  # 1499 bytes
        out = lines.text_lines("PRIVMSG", "#a", text, "ada!ocm@ocm")
        self.assertGreater(len(out), 2)
        self.assertEqual(" ".join(o.decode()[len(":ada!ocm@ocm PRIVMSG #a :"):-2].strip() for o in out), text)

    def test_no_cut_inside_a_combined_character(self):
        text = "e\u0301" * 600  # é as e + combining acute, 3 bytes each
        for piece in lines.split_text(text, 100):
            self.assertNotEqual(piece[0], "\u0301")
        flags = "🇫🇷" * 100
        for piece in lines.split_text(flags, 30):
            self.assertEqual(len(piece) % 2, 0)

    def test_newlines_become_lines(self):
        out = lines.text_lines("PRIVMSG", "#a", "one\n\ntwo\r\nthree", "ada!ocm@ocm")
        self.assertEqual(out, [
            b":ada!ocm@ocm PRIVMSG #a one\r\n", b":ada!ocm@ocm PRIVMSG #a two\r\n",
            b":ada!ocm@ocm PRIVMSG #a three\r\n",
        ])

    def test_blank_message_still_a_line(self):
        self.assertEqual(lines.text_lines("PRIVMSG", "#a", "   ", "a!o@o"), [b":a!o@o PRIVMSG #a : \r\n"])


class FormatTests(unittest.TestCase):
    def test_ircv3_message_tags_escaping(self):
        raw = lines.line("PRIVMSG", ["#a", "hi there"], "a!o@o", {"time": "t", "x": "a b;c\\d", "flag": ""})
        self.assertEqual(raw, b"@time=t;x=a\\sb\\:c\\\\d;flag :a!o@o PRIVMSG #a :hi there\r\n")
        parsed = lines.parse(raw.decode()[:-2])
        self.assertEqual(parsed.tags, {"time": "t", "x": "a b;c\\d", "flag": ""})
        self.assertEqual(parsed.params, ["#a", "hi there"])

    def test_ircv3_server_time_format(self):
        self.assertEqual(lines.server_time(1_796_293_412_123), "2026-12-03T10:23:32.123Z")

    def test_modern_isupport_at_most_13_tokens(self):
        tokens = [f"T{i}" for i in range(30)]
        out = lines.isupport_lines("ada", tokens, "ocm")
        self.assertEqual(len(out), 3)
        self.assertTrue(all(o.decode().count(" T") <= 13 for o in out))
        self.assertTrue(out[0].startswith(b":ocm 005 ada T0 "))

    def test_cr_lf_nul_never_reach_the_wire(self):
        raw = lines.line("NOTICE", ["ada", "a\r\nQUIT :x\0"], "ocm")
        self.assertEqual(raw.count(b"\r\n"), 1)
        self.assertNotIn(b"\0", raw)


class ParseTests(unittest.TestCase):
    def test_rfc1459_2_3_1_message_parts(self):
        m = lines.parse(":ada!u@h PRIVMSG #a :hello there")
        self.assertEqual((m.prefix, m.command, m.params), ("ada!u@h", "PRIVMSG", ["#a", "hello there"]))
        self.assertEqual(lines.parse("join #a key").command, "JOIN")

    def test_bad_lines_are_refused_not_raised_wildly(self):
        for raw in ["", "   ", ":onlyprefix", "@tags-only", "@a=b  "]:
            with self.assertRaises(lines.BadLine):
                lines.parse(raw)
