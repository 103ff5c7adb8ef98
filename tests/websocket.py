"""
A browser's side of the WebSocket binding for integration tests: autobahn's
Twisted client, with JSON frames built by hand (not with ocm.wire.binding),
and every wait bounded.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, reactor, ssl

WAIT = 5.0


class Browser(WebSocketClientProtocol):
    """Frames in arrive in C{inbox}; C{opened} fires once open, or fails."""

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.inbox: defer.DeferredQueue = defer.DeferredQueue()
        self.opened: defer.Deferred = defer.Deferred()
        self.close_info: tuple[int | None, str | None] | None = None
        self._close_waiters: list[defer.Deferred] = []

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.inbox.put(json.loads(payload.decode("utf-8")))

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (code, reason)
        if getattr(self, "closeHandshakeTimeoutCall", None) is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"refused: {reason}"))
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(self.close_info)

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            self.sendMessage(json.dumps(frame).encode(), isBinary=False)
        elif isinstance(frame, str):
            self.sendMessage(frame.encode(), isBinary=False)
        else:
            self.sendMessage(frame, isBinary=True)

    async def next(self, timeout: float = WAIT) -> dict[str, Any]:
        d = self.inbox.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_event(self, timeout: float = WAIT) -> dict[str, Any]:
        frame = await self.next(timeout)
        assert frame["type"] == "event", f"expected an event, got {frame}"
        return frame

    async def ask(self, frame: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A room request: its response and, after 200, its complete."""
        self.send(frame)
        response = await self.next()
        assert response["type"] == "response", f"expected a response, got {response}"
        if response["status"] != 200:
            return response, None
        complete = await self.next()
        assert complete["type"] == "complete", f"expected a complete, got {complete}"
        return response, complete

    async def wait_closed(self, timeout: float = WAIT) -> tuple[int | None, str | None]:
        """The close code and reason, once the connection has closed."""
        if self.close_info is not None:
            return self.close_info
        d: defer.Deferred = defer.Deferred()
        self._close_waiters.append(d)
        d.addTimeout(timeout, reactor)
        return await d

    def assertQuiet(self) -> None:
        """Nothing arrived that was not read."""
        pending = list(self.inbox.pending)
        assert not pending, f"unexpected frames: {pending}"


async def open_browser(
    port: int,
    *,
    origin: str | None = "same",
    tls: bool = False,
    headers: dict[str, str] | None = None,
    cls: type[Browser] = Browser,
) -> Browser:
    """Open /ws like a page from C{origin} would ("same": the page's own)."""
    scheme = "wss" if tls else "ws"
    page = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    factory = WebSocketClientFactory(
        f"{scheme}://127.0.0.1:{port}/ws",
        origin=page if origin == "same" else origin,
        headers=headers or {},
    )
    factory.protocol = cls
    if tls:
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, ssl.CertificateOptions())
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connecting = endpoint.connect(factory)
    connecting.addTimeout(WAIT, reactor)
    browser = await connecting
    opened = browser.opened
    opened.addTimeout(WAIT, reactor)
    await opened
    return browser
