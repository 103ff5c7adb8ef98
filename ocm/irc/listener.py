"""
C{--irc}: the factory every IRC connection shares (the front desk, its own
L{Door}, the settings), the daemon's options for it, and the listener built
from them (TLS with the daemon's certificate unless C{--irc-no-tls}, which
is allowed only on loopback or a Unix socket, for a bouncer or a test).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from ocm.irc import names
from ocm.irc.server import CAPABILITIES, CHATHISTORY_MAX, IRCConnection, Settings
from ocm.server.history import MAX_PER_REQUEST
from ocm.server.listeners import StreamListener

if TYPE_CHECKING:
    from ocm.server.desk import Door, FrontDesk
    from ocm.server.rooms import Room

DEFAULT_PORT = 6697  # IRC over TLS (RFC 7194)


class IRCFactory(Factory):
    """What every IRC connection of one listener shares."""

    protocol = IRCConnection
    noisy = False  # no "Starting factory" line per listener start

    def __init__(
        self,
        desk: FrontDesk,
        clock: IReactorTime,
        settings: Settings | None = None,
        *,
        max_connections: int = 1000,
        max_per_address: int = 50,
        door: Door | None = None,
    ) -> None:
        self.desk = desk
        self.service = desk.service
        self.clock = clock
        self.settings = settings or Settings()
        self.door = door if door is not None else desk.door("irc", max_connections, max_per_address)
        # Refusals and closes by reason (statuses, "flood", "slow_reader", ...), for the minutely log.
        self.refusals: Counter[Any] = Counter()
        started = datetime.datetime.fromtimestamp(clock.seconds(), datetime.timezone.utc)
        self.created = started.strftime("%Y-%m-%d %H:%M:%S UTC")
        # A random token per open room for msgids (token-seq): a room closed
        # and made again starts its seqs anew, and must not reuse msgids.
        self._room_tokens: dict[int, tuple[Room, str]] = {}
        self.service.on_room_closed.append(self._room_closed)

    def room_token(self, room: Room) -> str:
        entry = self._room_tokens.get(id(room))
        if entry is None or entry[0] is not room:
            entry = self._room_tokens[id(room)] = (room, secrets.token_hex(4))
        return entry[1]

    def msgid(self, room: Room, seq: int) -> str:
        """IRCv3 msgid of a room's message C{seq}."""
        return f"{self.room_token(room)}-{seq}"

    def _room_closed(self, room: Room) -> None:
        self._room_tokens.pop(id(room), None)

    @property
    def ping_interval(self) -> float:
        # A third of the room timeout: two PINGs may go unanswered before the sweep.
        return self.settings.ping_interval or max(0.05, self.service.timeout / 3)

    def isupport(self) -> list[str]:
        """RPL_ISUPPORT's tokens (Modern IRC); CASEMAPPING: see docs/irc.md."""
        s = self.settings
        return [
            # ocm folds names with Unicode casefolding; on ASCII that is
            # exactly "ascii", and the rfc1459 that clients assume for any
            # other value would merge rooms ocm tells apart ([a] and {a}).
            "CASEMAPPING=ascii",
            "CHANTYPES=#",
            "PREFIX=(o)@",
            "CHANMODES=bq,k,,nt",
            "MODES=4",
            f"CHANLIMIT=#:{s.max_channels}",
            f"CHANNELLEN={names.CHANNELLEN}",
            f"NICKLEN={names.NICKLEN}",
            "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:",
            f"NETWORK={s.network}",
            "UTF8ONLY",
            "SAFELIST",
            "TOPICLEN=0",
            f"CHATHISTORY={CHATHISTORY_MAX}",
            "MSGREFTYPES=msgid,timestamp",
        ]

    def motd(self) -> list[str]:
        out = [
            "Rooms are channels: /join #room joins it, or makes it (you are then its host, @).",
            "A room name's spaces are _ in its channel: room \u201cstudy group\u201d is #study_group.",
            "A room's password is its channel key: /join #room password.",
            "Your nick is your name in every room you join; /part your rooms to change it.",
        ]
        if self.settings.playback:
            out.append(f"On joining you get the room's last {self.settings.playback} messages.")
        if self.settings.fingerprint:
            out.append(f"TLS certificate fingerprint: SHA256:{self.settings.fingerprint}")
        return out


# -- the daemon's options -----------------------------------------------------


def _whole(option: str, low: int, high: int) -> Callable[[str], int]:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--{option}: {value!r} is not a whole number")
        if not low <= number <= high:
            raise ValueError(f"--{option}: {value!r} is not between {low} and {high}")
        return number

    coerce.coerceDoc = f"(int, {low} to {high})"  # type: ignore[attr-defined]
    return coerce


# For ocm.server.tap.Options: optParameters += OPTIONS, optFlags += FLAGS,
# and check_options(self) in postOptions (after the coercion loop).
OPTIONS = [
    ["irc", None, None,
     f"Serve IRC: a port (e.g. {DEFAULT_PORT}) or a Twisted server endpoint string "
     "(TLS with the daemon's certificate unless --irc-no-tls). Off by default."],
    ["irc-max-connections", None, "1000",
     "Most IRC connections open at once; past it a connection is refused.",
     _whole("irc-max-connections", 1, 1_000_000)],
    ["irc-max-per-address", None, "50",
     "Most IRC connections open at once from one address.", _whole("irc-max-per-address", 1, 1_000_000)],
    ["irc-send-queue", None, "262144",
     "Bytes an IRC client may leave unread (beyond the socket's own buffer) before it is "
     "removed from its rooms as a slow reader.", _whole("irc-send-queue", 4096, 64 * 1024 * 1024)],
    ["irc-playback", None, "50",
     "Recent messages an IRC client gets on JOIN (0: none).", _whole("irc-playback", 0, MAX_PER_REQUEST)],
]
FLAGS = [
    ["irc-no-tls", None,
     "Serve IRC in plain text, only on a loopback address or a Unix socket (a bouncer, a test)."],
]


def check_options(config: Any) -> None:
    """Check the --irc options and set config["irc-endpoint"]; raise usage.UsageError."""
    value = config.get("irc")
    if value is None:
        if config.get("irc-no-tls"):
            raise usage.UsageError("--irc-no-tls goes with --irc")
        return
    value = value.strip()
    if not value:
        raise usage.UsageError("--irc: give a port number or an endpoint string")
    if value.isdigit():
        if not 0 <= int(value) <= 65535:
            raise usage.UsageError(f"--irc: port {value} is not between 0 and 65535")
        interface = "127.0.0.1" if config.get("irc-no-tls") else config.get("interface", "")
        interface = interface.replace(":", r"\:")
        value = f"tcp:{value}" + (f":interface={interface}" if interface else "")
    try:
        parsed = endpoints._parseServer(value, None)
    except Exception as e:
        raise usage.UsageError(f"--irc: {value!r} is not a server endpoint string ({e})")
    if config.get("irc-no-tls"):
        kind, kwargs = parsed[0], parsed[-1]
        interface = kwargs.get("interface", "") if isinstance(kwargs, dict) else ""
        try:
            local = kind == "UNIX" or ipaddress.ip_address(interface).is_loopback
        except ValueError:
            local = False
        if not local:
            raise usage.UsageError(
                f"--irc-no-tls: {value!r} is not on a loopback address or a Unix socket; "
                "plain IRC carries room passwords in clear (e.g. tcp:6667:interface=127.0.0.1)"
            )
    config["irc-endpoint"] = value


def make_listener(
    config: Any,
    desk: FrontDesk,
    reactor: Any,
    tls_options: Any | None,
    fingerprint: str | None = None,
) -> tuple[StreamListener, IRCFactory]:
    """
    C{--irc}'s listener (a child of the daemon's service) and its factory
    (for counts): TLS with C{tls_options} unless C{--irc-no-tls}, the
    certificate's C{fingerprint} in the MOTD.
    """
    settings = Settings(
        playback=config["irc-playback"], fingerprint=fingerprint,
        max_queue=config.get("irc-send-queue", Settings.max_queue),
    )
    factory = IRCFactory(
        desk, reactor, settings,
        max_connections=config["irc-max-connections"],
        max_per_address=config["irc-max-per-address"],
    )
    wrapped: Any = factory
    if not config["irc-no-tls"]:
        if tls_options is None:
            raise usage.UsageError("--irc: TLS needs the daemon's certificate (or --irc-no-tls)")
        wrapped = TLSMemoryBIOFactory(tls_options, False, factory)
    endpoint = endpoints.serverFromString(reactor, config["irc-endpoint"])
    return StreamListener("irc", endpoint, wrapped), factory


__all__ = ["CAPABILITIES", "FLAGS", "IRCFactory", "OPTIONS", "Settings", "check_options", "make_listener"]
