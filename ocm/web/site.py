"""
The twisted.web side: the page's few files, read once from the package, and
the WebSocket at C{/ws}. Every response, whoever writes it (a resource,
twisted.web's own 400/404/405/500, autobahn's handshake refusals), carries
the headers of L{ocm.web.headers}: a strict Content-Security-Policy (no
inline script, nothing from elsewhere, no HTML sinks: Trusted Types),
HSTS over TLS, and no C{Server} banner. Each finished request is reported
to the gate (L{ocm.web.gate}) that gives the next its own deadline.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import http, server
from twisted.web.resource import Resource

from ocm.web import gate
from ocm.web.chat import WebChatFactory
from ocm.web.headers import HandshakeHeaders, Policy
from ocm.web.origin import OriginRule

# The page, as shipped in the package: URL path -> (file, content type).
FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"connection.js": ("connection.js", b"text/javascript; charset=utf-8"),
    b"sentences.js": ("sentences.js", b"text/javascript; charset=utf-8"),
    b"style.css": ("style.css", b"text/css; charset=utf-8"),
    b"icon.svg": ("icon.svg", b"image/svg+xml"),
}


class Channel(http.HTTPChannel):
    """
    HTTP/1.1 only (no HTTP/2: one code path under the gate). It writes
    every response's headers, so the policy goes on all of them here, and
    the Server banner comes off; each finished response is reported to the
    gate, so that the next request on a kept-alive connection gets its own
    whole-request deadline.
    """

    site: "server.Site"

    def _policy(self) -> list[tuple[bytes, bytes]]:
        policy = getattr(self.site, "policy", None)
        return policy.pairs if policy is not None else []

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        headers.removeHeader(b"server")
        for name, value in self._policy():
            headers.setRawHeaders(name, [value])
        super().writeHeaders(version, code, reason, headers)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own answer to an unparsable request, written raw.
        lines = [b"HTTP/1.1 400 Bad Request"]
        lines += [name + b": " + value for name, value in self._policy()]
        lines += [b"Content-Length: 0", b"Connection: close", b"", b""]
        self.transport.write(b"\r\n".join(lines))
        self.loseConnection()

    def requestDone(self, request: Any) -> None:
        door = gate.find(self.transport)
        if door is not None:
            door.answered()
        super().requestDone(request)


class _File(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found. The chat is at /.\n"


class _Upgrade(WebSocketResource):
    """
    C{/ws}: autobahn's resource for an upgrade, telling the gate which
    socket took the connection over. A request that is no upgrade gets 426
    here, under the policy, instead of autobahn's status page (which names
    its version and has no headers).
    """

    def render(self, request: Any) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.method != b"GET" or b"websocket" not in upgrade:
            return self._not_an_upgrade(request)
        transport = request.channel.transport
        door = gate.find(transport)
        result = super().render(request)
        if door is not None and request.channel.transport is None and transport is not None:
            # autobahn swapped its protocol in where the HTTP channel was.
            if isinstance(transport, ProtocolWrapper):
                door.upgrading(transport.wrappedProtocol)
            else:
                door.upgrading(getattr(transport, "protocol", None))
        return result

    def _not_an_upgrade(self, request: Any) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET")
        else:
            request.setResponseCode(426)
            request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"connection", b"close")
        return b"This is the chat's WebSocket. The chat is at /.\n"


class Root(Resource):
    """C{/} and its files, C{/ws}; every other path is 404 (no listing)."""

    def __init__(self, chat: WebChatFactory) -> None:
        super().__init__()
        static = resources.files("ocm.web") / "static"
        self.files = {
            path: _File((static / name).read_bytes(), kind) for path, (name, kind) in FILES.items()
        }
        self.websocket = _Upgrade(chat)

    def getChild(self, path: bytes, request: Any) -> Any:
        if request.postpath:
            return _NotFound()
        if path == b"ws":
            return self.websocket
        return self.files.get(path, _NotFound())


def secure_chat(chat: WebChatFactory, policy: Policy) -> None:
    """
    The WebSocket factory's own HTTP: no C{Server} banner (autobahn's is
    C{AutobahnPython/<version>}, on the 101 and its HTML pages), its
    status page off, and its handshake refusals under the policy (its
    protocol is a L{HandshakeHeaders}).
    """
    chat.server = None
    chat.http_policy = policy
    chat.setProtocolOptions(webStatus=False)


def make_site(
    chat: WebChatFactory, idle_timeout: float, *, tls: bool = True, rule: OriginRule | None = None
) -> server.Site:
    """
    The Site: C{idle_timeout} closes HTTP connections with nothing to do;
    C{tls} when the daemon serves TLS itself (then HSTS); C{rule}'s names
    go into the CSP's C{connect-src}.
    """
    policy = Policy(tls, rule)
    secure_chat(chat, policy)
    site = server.Site(Root(chat), timeout=idle_timeout)
    site.protocol = Channel
    site.policy = policy
    site.displayTracebacks = False
    # No access log: a page load is six requests, and a reverse proxy keeps
    # its own. Refusals are logged by the chat, with the address.
    site.log = lambda request: None
    return site
