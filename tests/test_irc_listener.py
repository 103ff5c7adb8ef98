"""
ocm.irc.listener: --irc's option checks and the listener built from them.
"""

from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.trial import unittest

from ocm.irc import listener
from ocm.server import tls
from ocm.server.rooms import RoomService
from tests.irc_desk import make_desk


def config(**kw):
    c = {"irc": None, "irc-no-tls": False, "irc-max-connections": 7, "irc-max-per-address": 3,
         "irc-playback": 20, "irc-send-queue": 8192, "interface": ""}
    c.update(kw)
    return c


class OptionTests(unittest.TestCase):
    def test_off_by_default(self):
        c = config()
        listener.check_options(c)
        self.assertNotIn("irc-endpoint", c)

    def test_a_bare_port_on_the_interface(self):
        c = config(irc="6697", interface="::1")
        listener.check_options(c)
        self.assertEqual(c["irc-endpoint"], r"tcp:6697:interface=\:\:1")

    def test_plain_only_on_loopback_or_unix(self):
        c = config(**{"irc": "6667", "irc-no-tls": True, "interface": "0.0.0.0"})
        listener.check_options(c)
        self.assertEqual(c["irc-endpoint"], "tcp:6667:interface=127.0.0.1")
        for endpoint in ("tcp:6667", "tcp:6667:interface=192.0.2.1"):
            with self.assertRaises(usage.UsageError):
                listener.check_options(config(**{"irc": endpoint, "irc-no-tls": True}))
        c = config(**{"irc": "unix:/tmp/ocm-irc.sock", "irc-no-tls": True})
        listener.check_options(c)
        with self.assertRaises(usage.UsageError):
            listener.check_options(config(**{"irc-no-tls": True}))

    def test_bad_values_name_the_option(self):
        for bad in ("", "99999", "nonsense:1"):
            with self.assertRaisesRegex(usage.UsageError, "--irc"):
                listener.check_options(config(irc=bad))
        coerce = dict((o[0], o[4]) for o in listener.OPTIONS if len(o) > 4)
        with self.assertRaisesRegex(ValueError, "--irc-playback"):
            coerce["irc-playback"]("101")
        self.assertEqual(coerce["irc-max-per-address"]("5"), 5)


class ListenerTests(unittest.TestCase):
    def setUp(self):
        self.service = RoomService(reactor)
        self.desk = make_desk(self.service, reactor)

    def test_tls_by_default_with_its_own_door(self):
        cert, key = tls.make_self_signed("localhost")
        c = config(irc="tcp:0:interface=127.0.0.1")
        listener.check_options(c)
        service, factory = listener.make_listener(c, self.desk, reactor, tls.server_options(cert, key), "AB")
        self.assertIsInstance(service.factory, TLSMemoryBIOFactory)
        self.assertEqual(service.name, "irc")
        self.assertIs(self.desk.doors["irc"], factory.door)
        self.assertEqual((factory.door.caps.max_total, factory.door.caps.max_per_address), (7, 3))
        self.assertEqual((factory.settings.playback, factory.settings.max_queue), (20, 8192))
        self.assertIn("TLS certificate fingerprint: SHA256:AB", factory.motd())

    def test_tls_needs_the_certificate(self):
        c = config(irc="tcp:0:interface=127.0.0.1")
        listener.check_options(c)
        with self.assertRaises(usage.UsageError):
            listener.make_listener(c, self.desk, reactor, None)
        c["irc-no-tls"] = True
        service, factory = listener.make_listener(c, self.desk, reactor, None)
        self.assertIs(service.factory, factory)

    def test_isupport_matches_the_name_rules(self):
        c = config(irc="tcp:0:interface=127.0.0.1", **{"irc-no-tls": True})
        listener.check_options(c)
        _, factory = listener.make_listener(c, self.desk, reactor, None)
        tokens = dict(t.partition("=")[::2] for t in factory.isupport())
        from ocm.irc import names

        self.assertEqual(tokens["NICKLEN"], str(names.NICKLEN))
        self.assertEqual(tokens["CHANNELLEN"], str(names.CHANNELLEN))
        self.assertEqual(tokens["CASEMAPPING"], "ascii")
        self.assertEqual(tokens["PREFIX"], "(o)@")
        self.assertEqual(tokens["CHANTYPES"], "#")
        self.assertEqual(tokens["CHATHISTORY"], "100")
