"""
The headers on every response of the web port (issue 20, item 7): the page,
its files, 404, 405, C{/ws} shown to a plain GET, twisted.web's own 400s,
and autobahn's handshake refusals. A strict Content-Security-Policy (no
inline script or style, nothing from elsewhere, no HTML sinks: Trusted
Types), nosniff, no referrer, no framing, HSTS when the daemon serves TLS
itself, and no C{Server} banner with a version.
"""

from __future__ import annotations

from typing import Any

from ocm.web.origin import OriginRule

HSTS = b"max-age=31536000"


def csp(connect: list[str] | tuple[str, ...] = ()) -> str:
    """
    The policy: C{default-src 'none'} (stricter than C{'self'}: what is not
    named is refused), the page's scripts, style and icon from itself, its
    WebSocket at C{'self'} and at C{connect} (the C{wss:} URLs of its own
    names, for browsers whose C{'self'} does not cover C{wss:}).
    """
    sources = " ".join(("'self'", *connect))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src {sources}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'"
    )


class Policy:
    """The headers for one web listener: C{tls} when it serves TLS itself (HSTS)."""

    def __init__(self, tls: bool, rule: OriginRule | None = None) -> None:
        self.tls = tls
        connect = rule.connect_sources() if rule is not None else []
        self.pairs: list[tuple[bytes, bytes]] = [
            (b"Content-Security-Policy", csp(connect).encode()),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Referrer-Policy", b"no-referrer"),
            (b"X-Frame-Options", b"DENY"),
            (b"Cross-Origin-Opener-Policy", b"same-origin"),
            (b"Cross-Origin-Resource-Policy", b"same-origin"),
        ]
        if tls:
            self.pairs.append((b"Strict-Transport-Security", HSTS))


class HandshakeHeaders:
    """
    For an autobahn server protocol (chat.py's C{ChatSocket}): its own raw
    HTTP responses, the handshake refusals (403, 429, 503, 400...), carry
    the policy too, and say how long they are. The policy is the factory's
    C{http_policy} (set by L{ocm.web.site.make_site}).
    """

    factory: Any

    def sendHttpErrorResponse(self, code: Any, reason: Any, responseHeaders: Any = None) -> None:
        policy = getattr(self.factory, "http_policy", None)
        extra = list(responseHeaders or [])
        if policy is not None:
            extra += [(k.decode(), v.decode()) for k, v in policy.pairs]
        extra += [("Content-Length", "0"), ("Connection", "close")]
        # A reason phrase is one line of text (ConnectionDeny's is the server's own).
        reason = "".join(c for c in " ".join(str(reason).split()) if " " <= c <= "~")[:200]
        super().sendHttpErrorResponse(code, reason, extra)  # type: ignore[misc]
