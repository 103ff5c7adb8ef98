"""
C{--web} for the daemon: checking its options, and building its listener
(the Site, wrapped in TLS unless C{--web-no-tls}). Kept here so that
ocm/server/tap.py only calls in, and so that autobahn is imported only when the
page is asked for.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from typing import TYPE_CHECKING

from ocm.server.desk import FrontDesk
from ocm.server.listeners import StreamListener

if TYPE_CHECKING:
    from ocm.web.chat import WebChatFactory


def check_plain_is_local(endpoint: str) -> None:
    """
    Plain HTTP carries room passwords in clear: allow it only where a
    reverse proxy on this machine can reach it (loopback, Unix socket).
    """
    parsed = endpoints._parseServer(endpoint, None)
    kind, kwargs = parsed[0], parsed[-1]
    if kind == "UNIX":
        return
    interface = kwargs.get("interface", "") if isinstance(kwargs, dict) else ""
    try:
        local = ipaddress.ip_address(interface).is_loopback
    except ValueError:
        local = False
    if not local:
        raise usage.UsageError(
            f"--web-no-tls: {endpoint!r} is not on a loopback address or a Unix socket; "
            "plain HTTP is only for a reverse proxy on this machine "
            "(e.g. tcp:8080:interface=127.0.0.1)"
        )


def parse_origins(value: str) -> frozenset[str]:
    """--web-origin: comma-separated http(s)://host[:port], checked and normalised."""
    from urllib.parse import urlsplit

    origins = set()
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            parts = urlsplit(item.lower())
            port = parts.port
        except ValueError:
            port, parts = -1, None
        if (
            parts is None or port == -1 or parts.scheme not in ("http", "https")
            or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username
        ):
            raise usage.UsageError(
                f"--web-origin: {item!r} is not an origin such as https://chat.example.org"
            )
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port is not None and port != {"http": 80, "https": 443}[parts.scheme]:
            host = f"{host}:{port}"
        origins.add(f"{parts.scheme}://{host}")
    return frozenset(origins)


def web_gate(config: Any, factory: Any, desk: FrontDesk, reactor: Any, counts: Any = None) -> Any:
    """
    The gate around the web listener (L{ocm.web.gate}), outermost, so it
    counts TCP connections before TLS and HTTP, through the desk's door
    "web" (its caps, and the daemon's address bans, at accept).
    C{--web-max-connections} and C{--web-max-per-address} cap open
    connections to the web port (a WebSocket is one of them; the sockets'
    own door, "websocket", stays as a second line). With C{--web-no-tls}
    every peer is the local proxy, so only the total applies here: per
    address is X-Forwarded-For's, at the sockets' door.
    """
    from ocm.web.gate import Gate

    total = config["web-max-connections"]
    per_address = total if config["web-no-tls"] else config["web-max-per-address"]
    return Gate(
        factory,
        clock=reactor,
        request_timeout=config["request-timeout"],
        door=desk.door("web", total, per_address),
        counts=counts,
    )


def parse_names(value: str) -> Any:
    """--web-name: see L{ocm.web.origin.parse_names} (an option coercer: ValueError)."""
    from ocm.web.origin import parse_names as parse

    return parse(value)


parse_names.coerceDoc = "(host[:port], comma-separated)"  # type: ignore[attr-defined]


def endpoint_interface(endpoint: str) -> str:
    """The address a server endpoint string binds, or "" (all of them, a Unix socket)."""
    try:
        parsed = endpoints._parseServer(endpoint, None)
    except Exception:
        return ""
    kwargs = parsed[-1]
    return str(kwargs.get("interface", "")) if isinstance(kwargs, dict) else ""


def origin_rule(config: Any) -> Any:
    """
    The Origin rule (L{ocm.web.origin.OriginRule}) for the options:
    C{--web-name}, or by default the local names, the web listener's
    address, C{--interface} and C{--advertise}; C{--web-origin}'s extras.
    """
    from ocm.web.origin import OriginRule, default_names

    names = config.get("web-name") or ()
    if isinstance(names, str):
        names = parse_names(names)
    if not names:
        names = default_names(
            endpoint_interface(config.get("web-endpoint", "")),
            config.get("interface"),
            config.get("advertise"),
        )
    return OriginRule(
        tls=not config["web-no-tls"], names=tuple(names), extra=frozenset(config["web-origin-set"])
    )


def need_autobahn() -> None:
    try:
        import autobahn  # noqa: F401
    except ImportError:
        raise usage.UsageError(
            "--web needs the web extra (autobahn): pip install 'ocm[web]'"
        )


def make_listener(
    config: Any,
    desk: FrontDesk,
    reactor: Any,
    tls_options: Any | None,
) -> tuple[StreamListener, WebChatFactory]:
    """C{--web}'s listener and its chat factory; TLS unless C{tls_options} is None."""
    from ocm.web.chat import WebChatFactory
    from ocm.web.site import make_site

    chat = WebChatFactory(
        desk,
        # The sockets' own caps, a second line behind the gate's: behind a
        # proxy this is where one address (X-Forwarded-For's) is capped.
        desk.door("websocket", config["web-max-connections"], config["web-max-per-address"]),
        origin_rule=origin_rule(config),
        behind_proxy=config["web-no-tls"],
        max_payload=config["max-payload"],
        request_timeout=config["request-timeout"],
        send_queue=config["web-send-queue"],
    )
    # The Origin rule for chat.py's onConnect (ocm.web.origin): the daemon's
    # own names and scheme, not the Host header; its names go into the CSP.
    rule = chat.origin_rule
    # An HTTP connection with no request in flight closes after the room
    # timeout (the gate's deadline comes first); an upgraded WebSocket is
    # no longer the Site's.
    factory: Any = make_site(
        chat, idle_timeout=max(config["request-timeout"], desk.service.timeout),
        tls=tls_options is not None, rule=rule,
    )
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    factory = web_gate(config, factory, desk, reactor, getattr(chat, "refusals", None))
    endpoint = endpoints.serverFromString(reactor, config["web-endpoint"])
    return WebListener("web", endpoint, factory, chat), chat


class WebListener(StreamListener):
    """
    C{--web}'s listener: stopped after the room service (its CLOSED sent),
    it lets the browsers' sockets finish closing first (L{WebChatFactory.drain}).
    """

    def __init__(self, name: str, endpoint: Any, factory: Any, chat: "WebChatFactory") -> None:
        super().__init__(name, endpoint, factory)
        self.chat = chat

    async def _stop(self) -> None:
        try:
            await self.chat.drain()
        finally:
            await StreamListener.stopService(self)

    def stopService(self) -> Any:
        return defer.ensureDeferred(self._stop())
