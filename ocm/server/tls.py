"""
TLS for TCRP (PROTOCOL §5) and the web page: the daemon's certificate, made
on first start when none is configured, the fingerprint people compare by
eye, and the server's TLS settings (Mozilla's "intermediate" profile).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _openssl
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

CERT_FILE = "server.pem"
KEY_FILE = "server.key"

# Mozilla's "intermediate" profile (v5.7) for TLS 1.2, without its DHE
# suites: ECDHE only (forward secrecy), AEAD only (no CBC, no CCM, no static
# RSA). ECDSA suites serve the generated certificate, RSA ones an operator's.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# TLS 1.3's AEAD suites, named so that a build enabling CCM does not offer it.
TLS13_CIPHERS = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# Key exchange groups, both versions: no X448, no P-521 (and no FFDHE).
GROUPS = "X25519:P-256:P-384"
# The generated certificate's life: clients pin its fingerprint (PROTOCOL
# §5), so a new one means every client confirming a new fingerprint.
CERT_DAYS = 3650


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as colon-separated hex pairs, as ssh and
    browsers show it."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def pem_fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def make_self_signed(hostname: str | None = None) -> tuple[bytes, bytes]:
    """
    A new P-256 key and a ten-year self-signed certificate, both PEM. Long
    lived on purpose: clients pin it. Its key identifiers let tools that
    build chains (and browsers told to trust it) match it to itself.
    """
    hostname = hostname or socket.gethostname() or "localhost"
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ocm on {hostname}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ip_address("127.0.0.1")),
                                     x509.IPAddress(ip_address("::1"))]
    if hostname != "localhost":
        names.insert(0, x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(data_dir: Path) -> tuple[Path, Path, bool]:
    """
    The certificate and key in C{data_dir}, made there if absent.
    Returns (cert path, key path, whether they were just made).
    """
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, False
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = make_self_signed()
    # Key first, created 0600 so it is never readable by others, even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path, True


def _context_setting(ctx: SSL.Context, call: str, value: str) -> None:
    """
    One OpenSSL setting pyOpenSSL has no method for (groups), or will not
    take once Twisted has checked its cipher list (TLS 1.3 suites); raises
    rather than serve weaker TLS than this module says.
    """
    function = getattr(_openssl, call, None)
    if function is None or function(ctx._context, value.encode("ascii")) != 1:
        raise SSL.Error(f"OpenSSL refused {call}({value!r})")


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """
    Twisted's CertificateOptions (TLS 1.2 minimum, the ciphers above), plus
    the key exchange groups and TLS 1.3 suites it has no option for. One
    context, made on first use and shared by every connection.
    """

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self._options = options
        self._context: SSL.Context | None = None

    def getContext(self) -> SSL.Context:
        if self._context is None:
            ctx = self._options.getContext()
            _context_setting(ctx, "SSL_CTX_set1_curves_list", GROUPS)
            _context_setting(ctx, "SSL_CTX_set_ciphersuites", TLS13_CIPHERS)
            self._context = ctx
        return self._context


def server_options(cert_pem: bytes, key_pem: bytes) -> ServerTLS:
    """The TLS settings of every listener (TCRP and the web page), checked now."""
    cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    options = ServerTLS(ssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
    ))
    # Made here, so that a setting OpenSSL refuses stops the start, not a client.
    options.getContext()
    return options
