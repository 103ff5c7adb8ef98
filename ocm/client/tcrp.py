"""
The client side of TCRP (PROTOCOL §1): one request per connection, answered
by a Deferred of the COMPLETE body, or failed with a L{ClientError} whose
sentence is ready to print.

Over TLS the request is written only after the handshake and after the
L{Trust} policy accepted the server's certificate, so a password never goes
to a server that was not verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ocm.client.display import quoted, sanitize, status_sentence
from ocm.client.errors import ClientError, RequestRefused
from ocm.client.trust import CATrust, Trust
from ocm.wire.tcrp import Op, ProtocolError, ReplyParser, State, Status, encode_request

# The protocol version asked for (PROTOCOL §1); COMPLETE says what is served.
VERSION = "1.2"
# A reply bigger than this is not an ocm server's (a LIST of many rooms fits).
MAX_REPLY_PAYLOAD = 8 * 1024 * 1024


@dataclass(frozen=True)
class Server:
    """Where the daemon is, and how far to trust it."""

    host: str
    port: int
    trust: Trust
    timeout: float = 15.0

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Reply:
    """A COMPLETE body, and the server address the connection reached."""

    body: dict[str, Any]
    peer: str


@implementer(IHandshakeListener)
class TCRPClientProtocol(Protocol):
    def __init__(self, server: Server, frame: bytes, refusal: Any) -> None:
        self.server = server
        self.frame = frame
        self.refusal = refusal
        self.result: defer.Deferred[Reply] = defer.Deferred(self._cancel)
        self.parser = ReplyParser(MAX_REPLY_PAYLOAD)
        self.status: int | None = None
        self.sent = False
        self.peer = ""

    def connectionMade(self) -> None:
        self.peer = getattr(self.transport.getPeer(), "host", "")
        if not self.server.trust.tls:
            self._send()

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()
        try:
            if cert is None:
                raise ClientError(f"{self.server.where} showed no TLS certificate.")
            der = cert.to_cryptography().public_bytes(Encoding.DER)
            self.server.trust.verify(self.server.host, self.server.port, der)
        except ClientError as e:
            self._finish(Failure(e))
            self.transport.abortConnection()
            return
        self._send()

    def _send(self) -> None:
        self.sent = True
        self.transport.write(self.frame)

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            for frame in self.parser.feed(data):
                self._frame(frame.state, frame.payload)
                if self.result.called:
                    break
        except (ProtocolError, ValueError):
            self._finish(Failure(ClientError(
                f"{self.server.where} answered with something that is not TCRP; "
                "is it an ocm server?"
            )))
        if self.result.called:
            self.transport.loseConnection()

    def _frame(self, state: int, payload: bytes) -> None:
        body = json.loads(payload.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("not an object")
        if state == State.RESPONSE and self.status is None:
            status = body.get("status")
            if not isinstance(status, int):
                raise ValueError("no status")
            self.status = status
            if status != Status.OK:
                message = body.get("message")
                refused = self.refusal(
                    status, message if isinstance(message, str) else "", retry_after(body),
                )
                refused.response = body
                self._finish(Failure(refused))
        elif state == State.COMPLETE and self.status == Status.OK:
            self._finish(Reply(body, self.peer))
        else:
            raise ValueError("unexpected frame")

    def _finish(self, result: Reply | Failure) -> None:
        if self.result.called:
            return
        if isinstance(result, Failure):
            self.result.errback(result)
        else:
            self.result.callback(result)

    def _cancel(self, d: defer.Deferred) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.result.called:
            self.result.errback(Failure(self._lost(reason)))

    def _lost(self, reason: Failure | None) -> ClientError:
        where = self.server.where
        trust = self.server.trust
        if reason is not None and reason.check(SSL.Error):
            detail = _ssl_detail(reason.value)
            if isinstance(trust, CATrust):
                return ClientError(
                    f"The certificate of {where} could not be verified with the CA in "
                    f"{trust.path} ({detail})."
                )
            return ClientError(
                f"The TLS handshake with {where} failed ({detail}). "
                "If the server runs with --no-tls, use --no-tls too."
            )
        if reason is not None and type(reason.value).__name__ == "VerificationError":
            return ClientError(
                f"The certificate of {where} is not valid for the name "
                f"{self.server.host!r}: {reason.value}."
            )
        if not trust.tls:
            return ClientError(
                f"{where} closed the connection without answering. If the server "
                "uses TLS (the default), leave out --no-tls."
            )
        if not self.sent:
            return ClientError(f"{where} closed the connection during the TLS handshake.")
        return ClientError(f"{where} closed the connection without answering.")


def retry_after(body: dict[str, Any]) -> float | None:
    """A RESPONSE's C{retry_after} (PROTOCOL 1.1), if it is a usable number of seconds."""
    value = body.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 < value < float("inf"):
        return None
    return float(value)


def _ssl_detail(e: Exception) -> str:
    """The most telling part of an OpenSSL error stack."""
    try:
        return str(e.args[0][-1][-1]) or "TLS error"
    except (IndexError, TypeError):
        return str(e) or "TLS error"


async def request(
    reactor: IReactorTCP,
    server: Server,
    op: Op,
    room: str = "",
    username: str = "",
    password: str = "",
) -> Reply:
    """Send one request and wait for its COMPLETE; refusals raise."""
    if op == Op.LIST_ROOMS:
        payload: dict[str, Any] = {}
    else:
        # (1.2) Asked for in every request; a 1.1 server ignores the key.
        payload = {"username": username, "version": VERSION}
        if password:
            payload["password"] = password

    def refusal(status: int, message: str, wait: float | None = None) -> RequestRefused:
        sentence = status_sentence(status, message, op, room, username, bool(password))
        return RequestRefused(sentence, status, message, wait)

    protocol = TCRPClientProtocol(server, encode_request(op, room, payload), refusal)
    endpoint: Any = HostnameEndpoint(reactor, server.host, server.port, timeout=server.timeout)
    creator = server.trust.creator(server.host)
    if creator is not None:
        endpoint = wrapClientTLS(creator, endpoint)
    connecting = connectProtocol(endpoint, protocol)
    clock: IReactorTime = reactor  # type: ignore[assignment]
    connecting.addTimeout(server.timeout, clock)
    try:
        await connecting
    except defer.TimeoutError:
        raise ClientError(f"Could not reach {server.where} within {server.timeout:g} seconds.")
    except error.DNSLookupError:
        raise ClientError(f"Cannot find the host {server.host!r}.")
    except error.ConnectionRefusedError:
        raise ClientError(
            f"Could not connect to {server.where}: connection refused. "
            "Is the ocm daemon running there, on that port?"
        )
    except (error.ConnectError, OSError) as e:
        raise ClientError(f"Could not connect to {server.where}: {_connect_detail(e)}.")
    protocol.result.addTimeout(server.timeout, clock)
    try:
        return await protocol.result
    except defer.TimeoutError:
        raise ClientError(f"No answer from {server.where} within {server.timeout:g} seconds.")


def redirect_target(value: Any) -> tuple[str, int] | None:
    """The host and port of a 307's C{"tcp"}: host:port or [v6]:port, else None."""
    if not isinstance(value, str) or len(value) > 300:
        return None
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if any(c.isspace() or c in "/@[]" for c in host) or not host.isprintable():
        return None
    return host, int(port)


async def request_redirected(
    reactor: IReactorTCP,
    server: Server,
    op: Op,
    room: str = "",
    username: str = "",
    password: str = "",
    note: Callable[[str], None] | None = None,
) -> Reply:
    """
    L{request}, following at most one 307 (a cluster's node that does not
    hold the room names the one that does). The node sent to is verified as
    the cluster rule of PROTOCOL §5 says: see L{Trust.redirected}.
    """
    try:
        return await request(reactor, server, op, room, username, password)
    except RequestRefused as e:
        if e.status != Status.REDIRECT:
            raise
        tcp = e.response.get("tcp")
    target = redirect_target(tcp)
    if target is None:
        raise ClientError(f"{server.where} redirected the request to {tcp!r}, which is not host:port.")
    there = replace(
        server, host=target[0], port=target[1], trust=server.trust.redirected(server.host, server.port)
    )
    if note is not None:
        note(f"Room {quoted(room)} is on {there.where} (a node of the same cluster); going there.")
    try:
        return await request(reactor, there, op, room, username, password)
    except RequestRefused as e:
        if e.status != Status.REDIRECT:
            raise
        raise ClientError(
            f"{there.where} redirected the request again (to {sanitize(str(e.response.get('tcp')))}); "
            "a client follows one redirect. The cluster may be changing; try again."
        )


def _connect_detail(e: Exception) -> str:
    os_error = getattr(e, "osError", None)
    text = getattr(os_error, "strerror", None) or getattr(e, "strerror", None)
    if not text:
        text = str(e).split(": ", 1)[-1].strip(" .") or type(e).__name__
    return text


async def list_rooms(reactor: IReactorTCP, server: Server) -> list[Any]:
    reply = await request(reactor, server, Op.LIST_ROOMS)
    rooms = reply.body.get("rooms")
    if not isinstance(rooms, list):
        raise ClientError(f"{server.where} sent a room list that is not a list.")
    return rooms
