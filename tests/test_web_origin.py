"""
The WebSocket's Origin rule (issue 20, item 7): the scheme the page is
served with and the daemon's own names (--web-name), never the Host header.
"""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import TestCase

from ocm.server.tap import Options
from ocm.web.daemon import origin_rule
from ocm.web.origin import (
    Name, OriginRule, default_names, origin_key, origin_text, parse_names,
)
from tests.daemon import DaemonMixin

TLS = OriginRule(tls=True, names=parse_names("chat.example.org,localhost,127.0.0.1,::1"))
PROXY = OriginRule(tls=False, names=parse_names("chat.example.org,localhost,127.0.0.1,::1"))


class OriginKeyTests(TestCase):
    def test_default_ports_filled_in_and_left_out(self):
        self.assertEqual(origin_key("https://chat.example.org"), ("https", "chat.example.org", 443))
        self.assertEqual(origin_key("https://chat.example.org:443"), ("https", "chat.example.org", 443))
        self.assertEqual(origin_key("http://chat.example.org"), ("http", "chat.example.org", 80))
        self.assertEqual(origin_text(("https", "chat.example.org", 443)), "https://chat.example.org")
        self.assertEqual(origin_text(("https", "::1", 8443)), "https://[::1]:8443")

    def test_case_trailing_dot_and_ipv6_forms(self):
        self.assertEqual(origin_key("HTTPS://Chat.Example.ORG."), ("https", "chat.example.org", 443))
        self.assertEqual(origin_key("https://[0:0:0::1]:8443"), ("https", "::1", 8443))
        self.assertEqual(origin_key("https://[::FFFF:7f00:1]"), origin_key("https://[::ffff:127.0.0.1]"))

    def test_not_origins(self):
        for origin in ("", "null", "file://", "ftp://chat.example.org", "https://", "https://a b",
                       "https://user@chat.example.org", "https://chat.example.org/path",
                       "https://chat.example.org?q", "https://chat.example.org:99999",
                       "https://chat.example.org:x", "https://[::1", "https://[fe80::1%25eth0]",
                       "https://bad_name.example", "https://-x.example", "https://a..b",
                       "https://chat.example.org\r\nX: y", "https://" + "a" * 400):
            self.assertIsNone(origin_key(origin), origin)


class RuleTests(TestCase):
    def test_the_pages_own_names_at_their_ports(self):
        for origin in ("https://chat.example.org", "https://localhost:8443",
                       "https://127.0.0.1:8443", "https://[::1]:8443"):
            self.assertTrue(TLS.allows(origin), origin)

    def test_scheme_mismatch_refused(self):
        # Served over TLS: an http page on the same name is another origin.
        self.assertFalse(TLS.allows("http://chat.example.org"))
        self.assertFalse(TLS.allows("http://127.0.0.1:8443"))
        self.assertFalse(TLS.allows("http://localhost:8443"))
        # Behind a TLS proxy the page is https; plain http only on loopback.
        self.assertTrue(PROXY.allows("https://chat.example.org"))
        self.assertFalse(PROXY.allows("http://chat.example.org"))
        self.assertTrue(PROXY.allows("http://127.0.0.1:8080"))
        self.assertTrue(PROXY.allows("http://localhost:8080"))
        self.assertTrue(PROXY.allows("http://[::1]:8080"))

    def test_a_spoofed_host_header_is_not_trusted(self):
        # The old rule took Host as the page's own name: a page on any name
        # that resolves here (DNS rebinding) matched itself.
        self.assertFalse(TLS.allows("https://evil.example:8443"))
        self.assertFalse(TLS.allows("https://evil.example"))
        self.assertFalse(TLS.allows("https://chat.example.org.evil.example"))
        self.assertFalse(TLS.allows("https://evilchat.example.org"))

    def test_a_name_with_a_port_pins_it(self):
        # Without a port a name is that host on any port (a proxy, a port
        # forward, a container's published port); host:port pins the port.
        self.assertTrue(TLS.allows("https://chat.example.org:9443"))
        rule = OriginRule(tls=True, names=parse_names("chat.example.org:8443"))
        self.assertTrue(rule.allows("https://chat.example.org:8443"))
        self.assertFalse(rule.allows("https://chat.example.org"))
        self.assertFalse(rule.allows("https://chat.example.org:9000"))
        rule = OriginRule(tls=True, names=parse_names("chat.example.org:443"))
        self.assertTrue(rule.allows("https://chat.example.org"))

    def test_case_and_trailing_dot(self):
        self.assertTrue(TLS.allows("https://CHAT.example.org."))
        rule = OriginRule(tls=True, names=parse_names("Chat.Example.Org."))
        self.assertTrue(rule.allows("https://chat.example.org"))

    def test_ipv6_literals(self):
        rule = OriginRule(tls=True, names=parse_names("[2001:db8::5], 2001:0db8:0:0::6"))
        self.assertTrue(rule.allows("https://[2001:db8::5]"))
        self.assertTrue(rule.allows("https://[2001:DB8:0::6]:8443"))
        self.assertFalse(rule.allows("https://[2001:db8::7]"))

    def test_extra_origins_exactly(self):
        rule = OriginRule(tls=True, names=(), extra=frozenset({"https://intranet.example.org",
                                                               "http://other.example:8080"}))
        self.assertTrue(rule.allows("https://Intranet.example.org.:443"))
        self.assertTrue(rule.allows("http://other.example:8080"))  # listed: its own scheme
        self.assertFalse(rule.allows("http://other.example"))
        self.assertFalse(rule.allows("https://intranet.example.org:8443"))

    def test_missing_or_null_origin_refused(self):
        for origin in (None, "", "null"):
            self.assertFalse(PROXY.allows(origin))

    def test_csp_sources_for_the_names(self):
        rule = OriginRule(tls=True, names=parse_names("chat.example.org,localhost:8443,::1"))
        self.assertEqual(rule.connect_sources(), ["wss://chat.example.org:*", "wss://localhost:8443"])


class NameOptionTests(TestCase):
    def test_parse_names(self):
        self.assertEqual(parse_names(" chat.example.org , Chat.example.org:8443,[::1]:9,10.0.0.5,"), (
            Name("chat.example.org"), Name("chat.example.org", 8443), Name("::1", 9), Name("10.0.0.5"),
        ))
        self.assertEqual(parse_names(""), ())

    def test_bad_names_name_the_option(self):
        for value in ("https://chat.example.org", "chat.example.org:0", "chat.example.org:70000",
                      "chat example", "[::1]x", "a:b:c:d:e:f:g:h:i", "host:", "[::1]:"):
            with self.assertRaises(ValueError, msg=value) as caught:
                parse_names(value)
            self.assertIn("--web-name", str(caught.exception))

    def test_defaults(self):
        self.assertEqual(default_names("", "0.0.0.0", None),
                         (Name("localhost"), Name("127.0.0.1"), Name("::1")))
        self.assertEqual(default_names("10.0.0.5", "::", "Chat.Example.org")[3:],
                         (Name("10.0.0.5"), Name("chat.example.org")))

    def options(self, *args: str) -> Options:
        o = Options()
        o.parseOptions(["--data-dir", str(Path(self.mktemp())), *args])
        return o

    def test_option_and_rule(self):
        o = self.options("--web", "8443", "--web-name", "chat.example.org")
        rule = origin_rule(o)
        self.assertTrue(rule.tls)
        self.assertEqual(rule.names, (Name("chat.example.org"),))
        self.assertFalse(rule.allows("https://localhost:8443"))  # given names replace the defaults

    def test_default_rule_from_the_listener(self):
        o = self.options("--web", "tcp:8080:interface=127.0.0.5", "--web-no-tls", "--interface", "0.0.0.0")
        rule = origin_rule(o)
        self.assertFalse(rule.tls)
        self.assertIn(Name("127.0.0.5"), rule.names)
        self.assertTrue(rule.allows("http://127.0.0.5:8080"))
        self.assertTrue(rule.allows("http://localhost:8080"))

    def test_bad_option_is_a_usage_error(self):
        with self.assertRaises(usage.UsageError) as caught:
            self.options("--web", "8443", "--web-name", "not a name")
        self.assertIn("--web-name", str(caught.exception))


class ListenerTests(DaemonMixin, TestCase):
    timeout = 30

    def test_the_daemon_hands_the_rule_to_the_chat(self):
        self.start_daemon("--web", "tcp:0:interface=127.0.0.1", "--web-name", "chat.example.org:8443")
        port = self.svc.web_port.getHost().port
        rule = self.svc.web_chat.origin_rule
        self.assertTrue(rule.tls)
        self.assertTrue(rule.allows("https://chat.example.org:8443"))
        self.assertFalse(rule.allows(f"https://127.0.0.1:{port}"))
