"""
Whom the client believes it is talking to (PROTOCOL §5).

Three policies, one per command-line choice:

 - L{CATrust} (C{--ca FILE}): the chain must lead to that CA and name the
   host, checked by Twisted's C{optionsForClientTLS} (C{service_identity}).
 - L{PinnedTrust} (the default): trust on first use, as ssh does. The SHA-256
   fingerprint of the certificate first seen at a host and port is kept in a
   known-servers file; a later, different certificate is refused.
 - L{NoTLS} (C{--no-tls}): plain TCP, when both sides were told so.

The TCRP client sends its request (which may carry a password) only after
L{Trust.verify} has accepted the certificate of the finished handshake.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from ocm.client.errors import ClientError, UsageError
from ocm.server.tls import fingerprint

FILE_HEADER = (
    "# ocm known servers: the certificate fingerprint first seen at each host:port.\n"
    "# Delete a line to accept that server's next certificate as new.\n"
)


def default_known_servers() -> Path:
    """$XDG_CONFIG_HOME/ocm/known_servers, or ~/.config/ocm/known_servers."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ocm" / "known_servers"


def server_key(host: str, port: int) -> str:
    """How a server is named in the file: host:port, [v6]:port."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KnownServers:
    """
    The pins file: one C{host:port SHA256:AB:CD:...} per line, C{#} comments.
    Read afresh on every look-up so two clients started at once agree.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise ClientError(f"Cannot read the known servers file {self.path}: {_why(e)}.")

    def lookup(self, key: str) -> str | None:
        for line in self._lines():
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#") and parts[0] == key:
                return parts[1].removeprefix("SHA256:")
        return None

    def remember(self, key: str, fp: str) -> None:
        """Pin C{fp} for C{key}, replacing any older pin, atomically."""
        kept = [
            line for line in self._lines()
            if not (line.split() and line.split()[0] == key)
        ]
        if not kept:
            kept = FILE_HEADER.splitlines()
        kept.append(f"{key} SHA256:{fp}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".known_servers.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write("\n".join(kept) + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            raise ClientError(f"Cannot write the known servers file {self.path}: {_why(e)}.")


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


class Trust:
    """A policy: how to open TLS (if at all) and whether to accept a peer."""

    tls = True
    description = ""

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator | None:
        raise NotImplementedError

    def verify(self, host: str, port: int, der: bytes) -> None:
        """Raise L{ClientError} to refuse the server before anything is sent."""

    def redirected(self, host: str, port: int) -> Trust:
        """The policy for the node a 307 from C{host}:C{port} sent us to."""
        return self


class NoTLS(Trust):
    tls = False
    description = "plain TCP (--no-tls)"

    def creator(self, host: str) -> None:
        return None


class CATrust(Trust):
    """Chain and host name checked against the certificates in C{path}."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"the CA in {path}"
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise UsageError(f"--ca: cannot read {path}: {_why(e)}.")
        certs = []
        marker = b"-----END CERTIFICATE-----"
        for chunk in data.split(marker)[:-1]:
            try:
                certs.append(ssl.Certificate.loadPEM(chunk + marker + b"\n"))
            except Exception:
                raise UsageError(f"--ca: {path} holds something that is not a PEM certificate.")
        if not certs:
            raise UsageError(f"--ca: {path} holds no PEM certificate.")
        self.root = ssl.trustRootFromCertificates(certs)

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        return ssl.optionsForClientTLS(host, trustRoot=self.root)


@implementer(IOpenSSLClientConnectionCreator)
class _AnyCertificate:
    """
    TLS that accepts whatever certificate the server shows (and still sends
    the host name by SNI), so that L{PinnedTrust} can judge it afterwards.
    """

    def __init__(self, host: str) -> None:
        self._options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._sni: bytes | None = None
        if not (isIPAddress(host) or isIPv6Address(host)):
            try:
                self._sni = host.encode("idna")
            except UnicodeError:
                pass

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


class PinnedTrust(Trust):
    """Trust on first use, one pin per host and port."""

    def __init__(
        self, known: KnownServers, notify: Callable[[str], None], accept_new: bool = False
    ) -> None:
        self.known = known
        self.notify = notify
        self.accept_new = accept_new
        self.description = f"the fingerprint pinned in {known.path}"
        # Pins this run has already checked or stored: one notice per server.
        self.seen: dict[str, str] = {}

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        return _AnyCertificate(host)

    def redirected(self, host: str, port: int) -> Trust:
        key = server_key(host, port)
        return RedirectedPin(self, key, self.seen.get(key))

    def verify(self, host: str, port: int, der: bytes) -> None:
        key = server_key(host, port)
        new = fingerprint(der)
        if self.seen.get(key) == new:
            return
        old = self.known.lookup(key)
        if old == new:
            self.seen[key] = new
            return
        if old is None:
            self.known.remember(key, new)
            self.notify(
                f"First connection to {key}: its certificate is now pinned in "
                f"{self.known.path}.\n"
                f"  TLS fingerprint SHA256:{new}\n"
                "The daemon logs its fingerprint when it starts; if that does not "
                "match, delete the line and do not trust this server."
            )
        elif self.accept_new:
            self.known.remember(key, new)
            self.notify(
                f"The certificate of {key} changed, and --accept-new-cert accepts it.\n"
                f"  was SHA256:{old}\n"
                f"  now SHA256:{new}"
            )
        else:
            raise CertificateChanged(key, old, new, self.known.path)
        self.seen[key] = new


class RedirectedPin(Trust):
    """
    PROTOCOL §5 (1.1): the nodes of one cluster present one certificate, so
    after a 307 from a node whose certificate was verified here, the same
    certificate is accepted at the new address (and pinned for it). Any
    other certificate there needs a pin of its own.
    """

    def __init__(self, pinned: PinnedTrust, origin: str, fp: str | None) -> None:
        self.pinned = pinned
        self.origin = origin
        self.fp = fp
        self.description = pinned.description

    def creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        return self.pinned.creator(host)

    def verify(self, host: str, port: int, der: bytes) -> None:
        key = server_key(host, port)
        new = fingerprint(der)
        if self.fp is not None and new == self.fp:
            if self.pinned.known.lookup(key) != new:
                self.pinned.known.remember(key, new)
            self.pinned.seen[key] = new
            return
        old = self.pinned.known.lookup(key)
        if old == new or self.pinned.accept_new:
            self.pinned.verify(host, port, der)
            return
        raise ClientError(
            f"{self.origin} redirected the request to {key}, which shows another certificate; "
            "nothing was sent there.\n"
            f"  {self.origin}: SHA256:{self.fp}\n"
            f"  {key}: SHA256:{new}\n"
            "The nodes of one cluster present one certificate. If this one is right, connect "
            f"to {key} once directly to pin it (or use --accept-new-cert)."
        )


class CertificateChanged(ClientError):
    def __init__(self, key: str, old: str, new: str, path: Path) -> None:
        super().__init__(
            f"The certificate of {key} has CHANGED since it was pinned; nothing was sent.\n"
            f"  pinned: SHA256:{old}\n"
            f"  now:    SHA256:{new}\n"
            "Someone may be impersonating the server, or its certificate was replaced.\n"
            "Compare the new fingerprint with the 'TLS fingerprint' line the daemon logs "
            "when it starts. If they match, connect again with --accept-new-cert "
            f"(or delete the line for {key} from {path})."
        )
        self.old = old
        self.new = new
