"""
The twisted.web side: the page's few files, read once from the package, and
the WebSocket at C{/ws}, every response under a strict Content-Security-Policy
(no inline script, nothing from elsewhere, no HTML sinks: Trusted Types).
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

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)

HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
    b"cache-control": b"no-cache",
}

# The page, as shipped in the package: URL path -> (file, content type).
FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"connection.js": ("connection.js", b"text/javascript; charset=utf-8"),
    b"sentences.js": ("sentences.js", b"text/javascript; charset=utf-8"),
    b"style.css": ("style.css", b"text/css; charset=utf-8"),
    b"icon.svg": ("icon.svg", b"image/svg+xml"),
}


def _secure(request: Any) -> None:
    for name, value in HEADERS.items():
        request.setHeader(name, value)


class _File(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Any) -> bytes:
        _secure(request)
        request.setHeader(b"content-type", self.content_type)
        return self.body


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        _secure(request)
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found. The chat is at /.\n"


class Channel(http.HTTPChannel):
    """
    HTTP/1.1 only (no HTTP/2: one code path under the gate), and each
    finished response reported to the gate, so that the next request on a
    kept-alive connection gets its own whole-request deadline.
    """

    def requestDone(self, request: Any) -> None:
        door = gate.find(self.transport)
        if door is not None:
            door.answered()
        super().requestDone(request)


class _Upgrade(WebSocketResource):
    """C{/ws}: autobahn's resource, telling the gate which socket took the connection over."""

    def render(self, request: Any) -> Any:
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


def make_site(chat: WebChatFactory, idle_timeout: float) -> server.Site:
    """The Site: C{idle_timeout} closes HTTP connections with nothing to do."""
    site = server.Site(Root(chat), timeout=idle_timeout)
    site.protocol = Channel
    site.displayTracebacks = False
    # No access log: a page load is six requests, and a reverse proxy keeps
    # its own. Refusals are logged by the chat, with the address.
    site.log = lambda request: None
    return site
