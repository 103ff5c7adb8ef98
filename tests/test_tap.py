"""The twistd command line and the daemon's own certificate."""

import os
import stat
from pathlib import Path

from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase

from ocm.server import tls
from ocm.server.tap import Options, default_data_dir, makeService


class OptionsTests(TestCase):
    def parse(self, *args):
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_defaults(self):
        o = self.parse()
        self.assertEqual((o["udp"], o["timeout"], o["max-payload"], o["request-timeout"]), (9002, 60.0, 65536, 10.0))
        self.assertEqual(o["tcp-endpoint"], "tcp:9001")
        self.assertFalse(o["no-tls"])

    def test_limit_defaults_fit_a_class_behind_one_address(self):
        o = self.parse()
        self.assertEqual(
            (o["max-per-address"], o["request-rate"], o["request-burst"], o["password-rate"],
             o["password-burst"], o["address-password-rate"], o["address-password-burst"]),
            (50, 5.0, 50, 3.0, 5, 5.0, 50),
        )
        tcrp = makeService(self.parse("--data-dir", self.mktemp())).desk
        self.assertEqual((tcrp.password_tries.rate, tcrp.password_tries.burst), (3 / 60, 5))
        self.assertEqual((tcrp.address_password_tries.rate, tcrp.address_password_tries.burst), (5 / 60, 50))

    def test_port_and_interface_make_an_endpoint(self):
        self.assertEqual(self.parse("--tcp", "9101", "--interface", "127.0.0.1")["tcp-endpoint"],
                         "tcp:9101:interface=127.0.0.1")
        self.assertEqual(self.parse("--tcp", "9101", "--interface", "::1")["tcp-endpoint"],
                         r"tcp:9101:interface=\:\:1")

    def test_endpoint_string(self):
        self.assertEqual(self.parse("--tcp", "tcp6:9001")["tcp-endpoint"], "tcp6:9001")

    def test_bad_values_name_the_option(self):
        for args, option in [
            (["--udp", "x"], "--udp"), (["--udp", "70000"], "--udp"), (["--tcp", "99999"], "--tcp"),
            (["--tcp", "nonsense:1"], "--tcp"), (["--timeout", "0"], "--timeout"),
            (["--timeout", "nan"], "--timeout"), (["--max-payload", "12"], "--max-payload"),
            (["--request-timeout", "-1"], "--request-timeout"), (["--max-rooms", "0"], "--max-rooms"),
            (["--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"], "--tls-cert"),
            (["--tls-cert", "/etc/hostname"], "--tls-key"),
            (["--address-password-rate", "-1"], "--address-password-rate"),
            (["--address-password-burst", "0"], "--address-password-burst"),
        ]:
            with self.assertRaises(usage.UsageError) as cm:
                self.parse(*args)
            self.assertIn(option, str(cm.exception), args)

    def test_data_dir_default_follows_systemd(self):
        self.patch(os, "environ", {"STATE_DIRECTORY": "/var/lib/ocm", "HOME": "/home/x"})
        self.assertEqual(default_data_dir(), "/var/lib/ocm")
        self.patch(os, "environ", {"HOME": "/home/x"})
        self.assertEqual(default_data_dir(), "/home/x/.local/state/ocm")


class CertificateTests(TestCase):
    def test_made_once_private_and_reused(self):
        d = Path(self.mktemp())
        cert, key, made = tls.ensure_certificate(d)
        self.assertTrue(made)
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        first = cert.read_bytes()
        cert2, _, made2 = tls.ensure_certificate(d)
        self.assertFalse(made2)
        self.assertEqual(cert2.read_bytes(), first)

    def test_fingerprint_form(self):
        cert, _ = tls.make_self_signed("example")
        fp = tls.pem_fingerprint(cert)
        self.assertRegex(fp, r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def test_start_logs_fingerprint_and_no_secrets(self):
        d = self.mktemp()
        o = Options()
        o.parseOptions(["--tcp", "tcp:0:interface=127.0.0.1", "--udp", "0", "--interface", "127.0.0.1",
                        "--data-dir", d])
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        svc = makeService(o)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(e) for e in events if e.get("log_level") == LogLevel.info)
        fp = tls.pem_fingerprint(Path(d, "server.pem").read_bytes())
        self.assertIn(f"SHA256:{fp}", text)
        key_pem = Path(d, "server.key").read_bytes().decode()
        self.assertNotIn(key_pem.splitlines()[1], text)

    def test_unusable_certificate_is_a_usage_error(self):
        d = Path(self.mktemp())
        d.mkdir()
        (d / "c.pem").write_text("not a certificate")
        (d / "k.pem").write_text("not a key")
        o = Options()
        o.parseOptions(["--tls-cert", str(d / "c.pem"), "--tls-key", str(d / "k.pem")])
        self.assertRaises(usage.UsageError, makeService, o)


class AdminOptionsTests(TestCase):
    """--admin, --admin-group, --no-admin (ocm-admin's socket)."""

    def parse(self, *args):
        o = Options()
        o.parseOptions(list(args))
        return o

    def test_the_socket_is_in_the_data_dir_by_default(self):
        o = self.parse("--data-dir", "/var/lib/ocm")
        self.assertEqual((o["admin-path"], o["admin-gid"]), ("/var/lib/ocm/admin.sock", None))
        self.assertEqual(self.parse("--admin", "/run/ocm/a.sock")["admin-path"], "/run/ocm/a.sock")
        self.assertIsNone(self.parse("--no-admin")["admin-path"])

    def test_a_group_by_name_or_number(self):
        import grp

        root = grp.getgrgid(0).gr_name
        self.assertEqual(self.parse("--admin-group", root)["admin-gid"], 0)
        self.assertEqual(self.parse("--admin-group", "4242")["admin-gid"], 4242)

    def test_refusals(self):
        for args, words in [
            (["--admin-group", "no-such-group-here"], "--admin-group: no group named"),
            (["--no-admin", "--admin", "/tmp/a.sock"], "--no-admin"),
            (["--no-admin", "--admin-group", "0"], "--no-admin"),
            (["--admin", "/" + "x" * 120], "--admin: "),
        ]:
            with self.assertRaises(usage.UsageError) as cm:
                self.parse(*args)
            self.assertIn(words, str(cm.exception), args)

    def test_a_default_path_too_long_is_skipped_with_a_warning(self):
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        o = self.parse("--data-dir", "/" + "d" * 120)
        self.assertIsNone(o["admin-path"])
        self.assertTrue(any(e.get("log_level") == LogLevel.warn and "no admin socket" in e["log_format"]
                            for e in seen))
        self.assertIsNone(makeService(self.parse("--no-tls", "--data-dir", "/" + "d" * 120)).admin_listener)
