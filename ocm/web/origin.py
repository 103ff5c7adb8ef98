"""
Who may open the chat WebSocket (issue 20, item 7): a browser's C{Origin},
checked against how the page is served and the daemon's own configured
names (C{--web-name}), never against the request's C{Host} header (which
whoever sends the request writes, so "Origin matches Host" is no check at
all against a page on a name that resolves here, DNS rebinding included).
Pure: strings in, a yes or no out.

The rule:

- The scheme is how the browser got the page. Served over TLS by the
  daemon, that is C{https} only. With C{--web-no-tls} the daemon sits behind
  a TLS-terminating proxy on this machine, so the browser's page is the
  proxy's and its scheme is still C{https}; C{http} is accepted only for a
  loopback host (localhost, 127.0.0.0/8, ::1): a browser on this machine
  talking to the loopback listener directly, which browsers treat as a
  secure context anyway. A plain-HTTP proxy is not supported (room
  passwords would cross the network in clear).
- The host is one of the configured names (case and a trailing dot do not
  matter; IPv6 literals compare as addresses). A name with a port matches
  that port only; a name without one matches it on any port, because the
  port a browser sees is often not the daemon's (a proxy, a port forward,
  a container's published port): the host names are the operator's, and
  a name given as host:port pins the port.
- Or the whole origin is one of C{--web-origin}'s extras.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Name:
    """One name the page is served at: a host, and a port or None for "its usual ones"."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def normalize_host(host: str) -> str | None:
    """
    A host as compared: lower case, no trailing dot, an IP literal in its
    canonical form (IPv6 without brackets); None if it is neither a DNS
    name (letters, digits, hyphens) nor an IP address.
    """
    host = host.strip().lower()
    if "%" in host:  # an IPv6 zone: no page is served at one
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or len(host) > 253:
        return None
    if all(_LABEL.match(label) for label in host.split(".")):
        return host
    return None


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """
    (scheme, host, port) of an http(s) origin as a browser sends it, the
    default port filled in; None for anything else ("null", a path, a user,
    a bad port, another scheme).
    """
    origin = origin.strip()
    if not origin or len(origin) > 300 or any(c.isspace() or ord(c) < 0x21 for c in origin):
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc or parts.hostname is None:
        return None
    host = normalize_host(parts.hostname)  # lower case, brackets gone
    if host is None:
        return None
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port


def origin_text(key: tuple[str, str, int]) -> str:
    """An origin key back as text, the default port left out."""
    scheme, host, port = key
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_names(value: str) -> tuple[Name, ...]:
    """
    C{--web-name}: comma-separated C{host}, C{host:port}, C{[v6]} or
    C{[v6]:port} (a bare IPv6 address works too). Raises ValueError naming
    the option, as the daemon's option coercers do.
    """
    names: list[Name] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, port = item, None
        if item.startswith("["):
            end = item.find("]")
            host, rest = item[: end + 1], item[end + 1:]
            if end < 0 or (rest and not rest.startswith(":")):
                host = ""
            elif rest:
                port = rest[1:]
        elif item.count(":") == 1:
            host, port = item.split(":")
        normalized = normalize_host(host)
        number = None
        if port is not None:
            number = int(port) if port.isdigit() and len(port) <= 5 else -1
        if normalized is None or (number is not None and not 0 < number < 65536):
            raise ValueError(
                f"--web-name: {item!r} is not a host name or address, with an optional :port "
                "(e.g. chat.example.org or chat.example.org:8443)"
            )
        name = Name(normalized, number)
        if name not in names:
            names.append(name)
    return tuple(names)


parse_names.coerceDoc = "(host[:port], comma-separated)"  # type: ignore[attr-defined]


def default_names(*hosts: str | None) -> tuple[Name, ...]:
    """
    Without C{--web-name}: the page's local names, plus each of C{hosts}
    (the listener's address, C{--interface}, C{--advertise}) that is one
    host rather than "all addresses".
    """
    names = [Name(h) for h in LOCAL_NAMES]
    for host in hosts:
        if not host:
            continue
        normalized = normalize_host(host)
        if normalized is None or normalized in ("0.0.0.0", "::"):
            continue
        if Name(normalized) not in names:
            names.append(Name(normalized))
    return tuple(names)


@dataclass(frozen=True)
class OriginRule:
    """
    The check, built once from the options: C{tls} is whether the daemon
    serves the page over TLS itself (not C{--web-no-tls}), C{names} the
    host names it is served at, C{extra} C{--web-origin}'s origins.
    """

    tls: bool
    names: tuple[Name, ...]
    extra: frozenset[str] = field(default_factory=frozenset)
    # The extras as keys, normalised as a browser's origin is.
    _extra_keys: frozenset[tuple[str, str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = (origin_key(origin) for origin in self.extra)
        object.__setattr__(self, "_extra_keys", frozenset(k for k in keys if k is not None))

    def allows(self, origin: str | None) -> bool:
        """Whether a page at C{origin} may open the WebSocket."""
        key = origin_key(origin or "")
        if key is None:
            return False
        if key in self._extra_keys:
            return True
        scheme, host, port = key
        if scheme != "https" and (self.tls or not is_loopback(host)):
            return False
        for name in self.names:
            if name.host == host and (name.port is None or name.port == port):
                return True
        return False

    def connect_sources(self) -> list[str]:
        """
        The page's own WebSocket URLs for a CSP C{connect-src}, beside
        C{'self'}: C{wss://} at each name, on its port or any (IPv6
        literals left out: a CSP source cannot hold one, and C{'self'}
        covers them).
        """
        sources: list[str] = []
        for name in self.names:
            if ":" in name.host:
                continue
            port = "*" if name.port is None else str(name.port)
            source = f"wss://{name.host}:{port}"
            if source not in sources:
                sources.append(source)
        return sources


def allowed(origin: str | None, rule: OriginRule) -> bool:
    """L{OriginRule.allows}, as a function."""
    return rule.allows(origin)
