"""
The daemon's TLS settings as a client meets them (issue 20, item 6): real
listeners on loopback with tls.server_options, and clients (Python's ssl
module, openssl s_client, sslyze when installed) that offer one suite or one
group at a time. Mozilla's intermediate profile: TLS 1.2 with ECDHE and
AES-GCM or ChaCha20-Poly1305 only, TLS 1.3, groups X25519, P-256, P-384.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, reactor, threads, utils
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SkipTest, TestCase

from ocm.server import tls
from tests.daemon import run_daemon

# Seconds any one handshake may take on loopback.
HANDSHAKE = 10.0


def rsa_operator_certificate() -> tuple[bytes, bytes]:
    """What an operator might give --tls-cert/--tls-key: RSA 2048, PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chat.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )


def handshake(
    port: int, *, ciphers: str | None = None, group: str | None = None,
    tls12: bool = False, oldest: ssl.TLSVersion | None = None,
) -> tuple[str, str]:
    """
    A blocking handshake (run in a thread) offering only C{ciphers} (TLS
    1.2 suites; TLS 1.2 only then) and only C{group}: (version, suite), or
    ssl.SSLError when the server refuses. No verification: not the point.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ciphers is not None:
        # SECLEVEL=0: the client offers what it is told, so refusal is the server's.
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    if tls12 or ciphers is not None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if oldest is not None:
        ctx.minimum_version = ctx.maximum_version = oldest
    if group is not None:
        ctx.set_ecdh_curve(group)  # OpenSSL 3: the only group offered
    with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE) as raw:
        with ctx.wrap_socket(raw) as conn:
            suite = conn.cipher()
            return str(conn.version()), suite[0] if suite else ""


class Silent(protocol.Protocol):
    """The application behind the listener: TLS is all these tests look at."""


class TLSProfile(TestCase):
    """The settings themselves, on a bare listener: every suite and group a client might offer."""

    timeout = 60

    def listen(self, cert_pem: bytes, key_pem: bytes) -> int:
        factory = TLSMemoryBIOFactory(
            tls.server_options(cert_pem, key_pem), False, protocol.Factory.forProtocol(Silent)
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def setUp(self) -> None:
        self.ecdsa = self.listen(*tls.make_self_signed("localhost"))
        self.rsa = self.listen(*rsa_operator_certificate())

    async def accepted(self, port: int, **offer: Any) -> tuple[str, str]:
        return await threads.deferToThread(handshake, port, **offer)

    async def refused(self, port: int, **offer: Any) -> None:
        try:
            got = await threads.deferToThread(handshake, port, **offer)
        except (ssl.SSLError, ConnectionError) as e:
            return e
        self.fail(f"offering {offer} was accepted: {got}")

    async def test_forward_secret_aead_suites_of_tls_1_2_are_accepted(self):
        for port, suites in (
            (self.ecdsa, ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                          "ECDHE-ECDSA-CHACHA20-POLY1305"]),
            (self.rsa, ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                        "ECDHE-RSA-CHACHA20-POLY1305"]),
        ):
            for suite in suites:
                self.assertEqual(await self.accepted(port, ciphers=suite), ("TLSv1.2", suite))

    async def test_cbc_suites_are_refused(self):
        for port, suite in ((self.ecdsa, "ECDHE-ECDSA-AES128-SHA"), (self.ecdsa, "ECDHE-ECDSA-AES256-SHA384"),
                            (self.rsa, "ECDHE-RSA-AES128-SHA256"), (self.rsa, "ECDHE-RSA-AES256-SHA")):
            await self.refused(port, ciphers=suite)

    async def test_ccm_suites_are_refused(self):
        for suite in ("ECDHE-ECDSA-AES128-CCM", "ECDHE-ECDSA-AES256-CCM", "ECDHE-ECDSA-AES128-CCM8"):
            await self.refused(self.ecdsa, ciphers=suite)

    async def test_static_rsa_is_refused_with_an_operators_rsa_certificate(self):
        for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256", "AES128-SHA"):
            await self.refused(self.rsa, ciphers=suite)
        # Nor finite-field DHE: Mozilla's intermediate has it, this profile does not.
        await self.refused(self.rsa, ciphers="DHE-RSA-AES128-GCM-SHA256")

    async def test_tls_1_3_is_kept(self):
        for port in (self.ecdsa, self.rsa):
            version, suite = await self.accepted(port)
            self.assertEqual(version, "TLSv1.3")
            self.assertIn(suite, tls.TLS13_CIPHERS.split(":"))

    async def test_below_tls_1_2_is_refused(self):
        for oldest in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            await self.refused(self.ecdsa, ciphers="ECDHE-ECDSA-AES128-SHA", oldest=oldest)

    async def test_groups_x25519_p256_p384_only(self):
        # TLS 1.2 on the RSA port: in 1.2 an ECDSA certificate's own curve
        # (P-256) must be among the client's groups, so only RSA lets a
        # client offer X25519 or X448 alone.
        for port, tls12 in ((self.ecdsa, False), (self.rsa, False), (self.rsa, True)):
            for group in ("X25519", "prime256v1", "secp384r1"):
                version, _ = await self.accepted(port, group=group, tls12=tls12)
                self.assertEqual(version, "TLSv1.2" if tls12 else "TLSv1.3")
            for group in ("X448", "secp521r1"):
                await self.refused(port, group=group, tls12=tls12)

    async def test_tls_1_3_ccm_is_refused(self):
        """Python's ssl cannot pick TLS 1.3 suites: openssl s_client can."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("openssl is not installed: TLS 1.3 CCM is checked with s_client")
        args = ["s_client", "-connect", f"127.0.0.1:{self.ecdsa}", "-tls1_3", "-brief"]
        out, err, code = await utils.getProcessOutputAndValue(
            openssl, [*args, "-ciphersuites", "TLS_AES_128_CCM_SHA256"], env=os.environ, stdinBytes=b""
        )
        self.assertNotEqual(code, 0, (out, err))
        out, err, code = await utils.getProcessOutputAndValue(
            openssl, [*args, "-ciphersuites", "TLS_AES_256_GCM_SHA384"], env=os.environ, stdinBytes=b""
        )
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"TLS_AES_256_GCM_SHA384", out + err)


class GeneratedCertificate(TestCase):
    def test_key_identifiers_and_a_long_life(self):
        cert = x509.load_pem_x509_certificate(tls.make_self_signed("localhost")[0])
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        # Self-signed: its authority is its own key.
        self.assertEqual(aki.key_identifier, ski.digest)
        # Clients pin it: it lives ten years.
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertGreaterEqual(life, datetime.timedelta(days=3650))


def sslyze_path() -> str:
    """sslyze's CLI: $OCM_SSLYZE, or on PATH. It lives in a venv of its own (docs/security.md)."""
    path = os.environ.get("OCM_SSLYZE") or shutil.which("sslyze")
    if not path:
        raise SkipTest(
            "sslyze is not installed (it pins cryptography<47, below what pyOpenSSL needs, so it "
            "is not in [test]): python3 -m venv V && V/bin/pip install sslyze && OCM_SSLYZE=V/bin/sslyze"
        )
    return path


class DaemonPorts(TestCase):
    """The daemon as the plugin builds it: TCRP's port and the web port use the profile."""

    timeout = 120

    def setUp(self) -> None:
        self.svc = run_daemon(self, "--web", "tcp:0:interface=127.0.0.1", data_dir=Path(self.mktemp()))
        self.ports = {"TCRP": self.svc.tcp_port, "web": self.svc.web_port.getHost().port}

    async def test_both_ports_refuse_cbc_and_x448_and_accept_the_profile(self):
        for where, port in self.ports.items():
            for offer in ({"ciphers": "ECDHE-ECDSA-AES128-SHA"}, {"ciphers": "ECDHE-ECDSA-AES128-CCM"},
                          {"group": "X448"}, {"group": "secp521r1", "tls12": True}):
                try:
                    got = await threads.deferToThread(handshake, port, **offer)
                except ssl.SSLError:
                    continue
                self.fail(f"{where} port accepted {offer}: {got}")
            self.assertEqual(
                await threads.deferToThread(handshake, port, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"),
                ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), where,
            )
            self.assertEqual((await threads.deferToThread(handshake, port, group="X25519"))[0], "TLSv1.3")

    async def test_an_sslyze_scan_finds_only_the_profile(self):
        sslyze = sslyze_path()
        out = Path(self.mktemp() + ".json")
        targets = [f"127.0.0.1:{port}" for port in self.ports.values()]
        _, err, code = await utils.getProcessOutputAndValue(
            sslyze, ["--quiet", "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3",
                     "--elliptic_curves", f"--json_out={out}", *targets],
            env=os.environ,
        )
        self.assertTrue(out.exists(), err)
        report = json.loads(out.read_text())
        allowed12 = {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                     "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}
        allowed13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
        self.assertEqual(len(report["server_scan_results"]), 2)
        for server in report["server_scan_results"]:
            where = server["server_location"]["port"]
            self.assertEqual(server["scan_status"], "COMPLETED", where)
            result = server["scan_result"]

            def suites(scan: str) -> set[str]:
                return {s["cipher_suite"]["name"] for s in result[scan]["result"]["accepted_cipher_suites"]}

            for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites",
                        "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
                self.assertEqual(suites(old), set(), (where, old))
            self.assertEqual(suites("tls_1_2_cipher_suites"), allowed12, where)
            self.assertEqual(suites("tls_1_3_cipher_suites"), allowed13, where)
            curves = result["elliptic_curves"]["result"]
            self.assertEqual({c["name"] for c in curves["supported_curves"]},
                             {"X25519", "secp256r1", "secp384r1"}, where)
