"""
C{--web} for the daemon: checking its options, and building its listener
(the Site, wrapped in TLS unless C{--web-no-tls}). Kept here so that
ocm/server/tap.py only calls in, and so that autobahn is imported only when the
page is asked for.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import endpoints
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
        desk.door("web", config["web-max-connections"], config["web-max-per-address"]),
        origins=config["web-origin-set"],
        behind_proxy=config["web-no-tls"],
        max_payload=config["max-payload"],
        request_timeout=config["request-timeout"],
        send_queue=config["web-send-queue"],
    )
    # An HTTP connection with no request in flight closes after the room
    # timeout; an upgraded WebSocket is no longer the Site's.
    factory: Any = make_site(chat, idle_timeout=max(config["request-timeout"], desk.service.timeout))
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    endpoint = endpoints.serverFromString(reactor, config["web-endpoint"])
    return StreamListener("web", endpoint, factory), chat
