"""
The headers on every kind of response of the web port (issue 20, item 7),
over real connections to the daemon as twistd builds it: the page, its
files, 404, 405, /ws shown to a plain GET, twisted.web's own 400, and
autobahn's handshake refusal and 101. HSTS over TLS only; no version banner.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.python.failure import Failure
from twisted.trial import unittest

from ocm.web.headers import HSTS
from tests.daemon import DaemonMixin

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


class Raw(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()
        self.head: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.head.called:
            self.head.callback(self.received)

    def connectionLost(self, reason: Failure) -> None:
        if not self.head.called:
            self.head.callback(self.received)
        self.closed.callback(None)


def parse(raw: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return code, headers, body


class HeaderTests(DaemonMixin, unittest.TestCase):
    timeout = 30
    tls = True

    def setUp(self) -> None:
        args = ["--web", "tcp:0:interface=127.0.0.1", "--web-name", "chat.example.org,127.0.0.1"]
        if not self.tls:
            args.append("--web-no-tls")
        self.start_daemon(*args)
        self.port = self.svc.web_port.getHost().port

    async def exchange(self, data: str | bytes) -> tuple[int, dict[str, list[str]], bytes]:
        if self.tls:
            endpoint: Any = endpoints.SSL4ClientEndpoint(
                reactor, "127.0.0.1", self.port, ssl.CertificateOptions(), timeout=5)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=5)
        conn = await endpoints.connectProtocol(endpoint, Raw())
        self.addCleanup(lambda: conn.closed.called or conn.transport.abortConnection())
        conn.transport.write(data if isinstance(data, bytes) else data.encode())
        head = conn.head
        head.addTimeout(5, reactor)
        return parse(await head)

    async def request(self, method: str, path: str, extra: str = "") -> tuple[int, dict[str, list[str]], bytes]:
        return await self.exchange(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")

    def assertSecured(self, what: str, headers: dict[str, list[str]]) -> None:
        csp = headers.get("content-security-policy", [""])
        self.assertEqual(len(csp), 1, what)
        for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                     "frame-ancestors 'none'", "base-uri 'none'", "require-trusted-types-for 'script'"):
            self.assertIn(rule, csp[0], what)
        self.assertIn("connect-src 'self' wss://chat.example.org:* wss://127.0.0.1:*;", csp[0], what)
        self.assertNotIn("unsafe", csp[0], what)
        self.assertEqual(headers.get("x-content-type-options"), ["nosniff"], what)
        self.assertEqual(headers.get("referrer-policy"), ["no-referrer"], what)
        self.assertNotIn("server", headers, what)
        hsts = headers.get("strict-transport-security")
        self.assertEqual(hsts, [HSTS.decode()] if self.tls else None, what)

    async def test_every_kind_of_response(self):
        kinds = [
            ("page", "GET", "/", "", 200),
            ("a script", "GET", "/app.js", "", 200),
            ("the style", "GET", "/style.css", "", 200),
            ("the icon", "GET", "/icon.svg", "", 200),
            ("HEAD of the page", "HEAD", "/", "", 200),
            ("404", "GET", "/nothing", "", 404),
            ("404 below a file", "GET", "/app.js/x", "", 404),
            ("405", "POST", "/", "Content-Length: 0\r\n", 405),
            ("/ws to a plain GET", "GET", "/ws", "", 426),
            ("/ws to a POST", "POST", "/ws", "Content-Length: 0\r\n", 405),
        ]
        for what, method, path, extra, status in kinds:
            code, headers, body = await self.request(method, path, extra)
            self.assertEqual(code, status, what)
            self.assertSecured(what, headers)
            self.assertNotIn(b"Autobahn", body, what)
            self.assertNotIn(b"Twisted", body, what)

    async def test_twisted_webs_own_400(self):
        for what, data in (("a bad request line", b"NONSENSE\r\n\r\n"),
                           ("a bad header", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")):
            code, headers, _ = await self.exchange(data)
            self.assertEqual(code, 400, what)
            self.assertSecured(what, headers)
            self.assertEqual(headers.get("content-length"), ["0"], what)

    async def test_autobahns_handshake_refusal(self):
        # An upgrade from a foreign origin: refused by chat.py's onConnect,
        # in autobahn's raw HTTP.
        code, headers, _ = await self.exchange(UPGRADE + "Origin: https://evil.example\r\n\r\n")
        self.assertEqual(code, 403)
        self.assertSecured("403 from autobahn", headers)
        # A malformed handshake: autobahn's own 400.
        code, headers, _ = await self.exchange(
            UPGRADE.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 99") + "\r\n")
        self.assertEqual(code, 400)
        self.assertSecured("400 from autobahn", headers)

    async def test_the_upgrade_has_no_banner(self):
        scheme = "https" if self.tls else "http"
        code, headers, _ = await self.exchange(
            UPGRADE.replace("Host: 127.0.0.1", f"Host: 127.0.0.1:{self.port}")
            + f"Origin: {scheme}://127.0.0.1:{self.port}\r\n\r\n")
        self.assertEqual(code, 101)
        self.assertNotIn("server", headers)


class PlainHeaderTests(HeaderTests):
    """Behind a proxy (--web-no-tls): the same, without HSTS (the proxy's to send)."""

    tls = False
