"""
The C{twistd ocm} command line: options, and the service they build.
Shaped like Twisted Names' tap: one room service handed to both listeners.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from ocm.admin import server as admin
from ocm.server import tls
from ocm.cluster.url import parse_redis_url, with_password_file
from ocm.server.hashing import DEFAULT_QUEUE, MEMORY_POLICIES, HashPool
from ocm.server.desk import DEFAULT_MEMBERS_PER_ADDRESS, DEFAULT_ROOMS_PER_ADDRESS, FrontDesk
from ocm.server.rooms import RoomService
from ocm.server.service import OcmService, StreamListener
from ocm.ops import systemd
from ocm.ops.systemd import Notifier
from ocm.server.tcrp_server import TCRPFactory
from ocm.web import daemon as web
from ocm.irc import listener as irc

log = Logger()


def default_data_dir() -> str:
    """systemd's StateDirectory when run as a unit, else the XDG state dir."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ocm")


def _number(option: str, kind: type, low: float, high: float | None = None):
    """A coercer for usage.Options whose errors name the option and its range."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"--{option}: {value!r} is not a {'whole ' if kind is int else ''}number")
        if number != number or number < low or (high is not None and number > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"--{option}: {value!r} is not {bounds}")
        return number

    coerce.coerceDoc = f"({kind.__name__}, at least {low}{'' if high is None else f', at most {high}'})"
    return coerce


def _endpoint(option: str, value: str, interface: str) -> str:
    """A server endpoint string from a bare port (on C{interface}) or a string."""
    value = value.strip()
    if not value:
        raise usage.UsageError(f"--{option}: give a port number or an endpoint string")
    if value.startswith("systemd:") and "domain=" not in value:
        # Socket activation: the family is the inherited socket's own.
        try:
            fd = systemd.inherited_fd(value)
        except ValueError as e:
            raise usage.UsageError(f"--{option}: {e}")
        value += f":domain={systemd.domain_name(fd)}"
    if value.startswith("systemd:"):
        try:
            # The reactor's accept loop must never wait on a blocking socket.
            os.set_blocking(systemd.inherited_fd(value), False)
        except (ValueError, OSError):
            pass  # Twisted's own parse below says what is wrong
    if value.isdigit():
        if not 0 <= int(value) <= 65535:
            raise usage.UsageError(f"--{option}: port {value} is not between 0 and 65535")
        interface = interface.replace(":", r"\:")
        value = f"tcp:{value}" + (f":interface={interface}" if interface else "")
    try:
        endpoints._parseServer(value, None)
    except Exception as e:
        raise usage.UsageError(f"--{option}: {value!r} is not a server endpoint string ({e})")
    return value


def _choice(option: str, choices: tuple[str, ...]):
    """A coercer for one of a few words, whose error names the option."""

    def coerce(value: str) -> str:
        if value not in choices:
            raise ValueError(f"--{option}: {value!r} is not one of {', '.join(choices)}")
        return value

    coerce.coerceDoc = f"(one of {', '.join(choices)})"
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "ocm: the Online Chat Messenger daemon. Rooms are created and joined "
        "over TCRP (TLS unless --no-tls); chat travels over UDP, sealed per "
        "member with AES-256-GCM."
    )
    optParameters = [
        ["tcp", "t", "9001",
         "TCRP listener: a port number, or a Twisted server endpoint string "
         "such as tcp:9001:interface=127.0.0.1 (TLS is added unless --no-tls)."],
        ["udp", "u", "9002",
         "UDP port for chat, or systemd:index=N or systemd:name=NAME for a socket systemd "
         "passes (socket activation: contrib/systemd/ocm.socket)."],
        ["interface", "i", "", "Address to bind to (default: all IPv4 addresses)."],
        ["timeout", None, "60",
         "Seconds of silence after which a member is removed.", _number("timeout", float, 0.5, 86400)],
        ["max-payload", None, "65536",
         "Largest TCRP payload in bytes; larger requests get 413.", _number("max-payload", int, 256, 16 * 1024 * 1024)],
        ["request-timeout", None, "10",
         "Seconds a TCRP connection has to deliver its whole request (TLS handshake included).",
         _number("request-timeout", float, 0.1, 600)],
        ["data-dir", "d", None,
         "Where the generated TLS certificate lives "
         "(default: $STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/ocm or ~/.local/state/ocm)."],
        ["tls-cert", None, None, "PEM certificate (chain) for TCRP; needs --tls-key."],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
        ["max-rooms", None, "1000", "Most rooms at once; past it CREATE gets 503.", _number("max-rooms", int, 1)],
        ["max-members", None, "250", "Most members in one room; past it JOIN gets 503.", _number("max-members", int, 1)],
        ["max-rooms-per-address", None, str(DEFAULT_ROOMS_PER_ADDRESS),
         "Most rooms hosted from one address (an IPv6 /64 is one); past it CREATE gets 429.",
         _number("max-rooms-per-address", int, 1)],
        ["max-members-per-address", None, str(DEFAULT_MEMBERS_PER_ADDRESS),
         "Most members in all rooms from one address; past it CREATE and JOIN get 429.",
         _number("max-members-per-address", int, 1)],
        ["max-connections", None, "1000",
         "Most TCRP connections open at once; past it a connection gets 503.", _number("max-connections", int, 1)],
        ["max-per-address", None, "50",
         "Most TCRP connections open at once from one address; past it 429.", _number("max-per-address", int, 1)],
        ["request-rate", None, "5",
         "TCRP requests a second per address, on average (0: no limit); past it 429.",
         _number("request-rate", float, 0)],
        ["request-burst", None, "50", "TCRP requests one address may make at once.", _number("request-burst", int, 1)],
        ["password-rate", None, "3",
         "Wrong room passwords a minute per person (address, room and username), "
         "once the burst is spent (0: no limit); past it 429.",
         _number("password-rate", float, 0)],
        ["password-burst", None, "5",
         "Wrong passwords per person (address, room and username) before the rate applies.",
         _number("password-burst", int, 1)],
        ["address-password-rate", None, "5",
         "Wrong room passwords a minute per address and room, whatever the username, "
         "once the burst is spent (0: no limit); past it 429.",
         _number("address-password-rate", float, 0)],
        ["address-password-burst", None, "50",
         "Wrong passwords per address and room before the rate applies.",
         _number("address-password-burst", int, 1)],
        ["member-rate", None, "20",
         "Datagrams a second per member, on average (0: no limit); the rest are dropped.",
         _number("member-rate", float, 0)],
        ["member-burst", None, "40", "Datagrams one member may send at once.", _number("member-burst", int, 1)],
        ["hash-workers", None, "0",
         "Threads hashing room passwords, at most one hash each at a time (0: one per CPU).",
         _number("hash-workers", int, 0, 256)],
        ["hash-queue", None, str(DEFAULT_QUEUE),
         "Password hashes that may wait for a thread; past it a request with a password "
         "gets 503 with retry_after.", _number("hash-queue", int, 0, 100000)],
        ["hash-memory", None, "arena",
         "How hashing gives its memory back (glibc): arena (one arena, trimmed when the hashing "
         "pool is idle), mmap (each 16 MiB buffer mapped per hash: slower), keep (glibc's default: "
         "16 MiB kept per thread).", _choice("hash-memory", MEMORY_POLICIES)],
        ["history", None, "100",
         "Recent messages each room keeps for HISTORY (protocol 1.1; 0: none).",
         _number("history", int, 0, 100_000)],
        ["history-bytes", None, "65536",
         "Bytes of recent messages each room keeps at most, overhead included.",
         _number("history-bytes", int, 4096, 64 * 1024 * 1024)],
        ["web", None, None,
         "Serve the chat page and its WebSocket: a port, or a Twisted server endpoint string "
         "(TLS with the daemon's certificate unless --web-no-tls). Off by default."],
        ["web-origin", None, "",
         "More origins that may use the chat WebSocket, comma-separated "
         "(e.g. https://chat.example.org); by default only the page's own."],
        ["web-name", None, "",
         "The host names the page is served at, comma-separated host[:port] "
         "(e.g. chat.example.org); the WebSocket accepts pages from these only, plus --web-origin "
         "(default: localhost, 127.0.0.1, ::1, the --web or --interface address, --advertise).",
         web.parse_names],
        ["web-max-connections", None, "1000",
         "Most connections open at once to the web port (WebSockets included); past it "
         "a connection is closed at once.", _number("web-max-connections", int, 1)],
        ["web-max-per-address", None, "50",
         "Most connections open at once to the web port from one address (an IPv6 /64); "
         "past it a connection is closed at once.",
         _number("web-max-per-address", int, 1)],
        ["web-send-queue", None, "262144",
         "Bytes a browser may leave unread (beyond the socket's own buffer) before it is "
         "removed from its room as a slow reader.", _number("web-send-queue", int, 4096, 64 * 1024 * 1024)],
        ["redis", None, None,
         "Cluster mode: share the room directory with other nodes through this Redis "
         "(redis://host:port/db, rediss://... for TLS, unix:///path/to/socket). Needs ocm[cluster]."],
        ["advertise", None, None,
         "With --redis: the host name or address clients reach this node at "
         "(default: --interface, when it is one address)."],
        ["redis-password-file", None, None,
         "With --redis: a file holding Redis's password (AUTH), read once at start; "
         "keeps it out of argv and ps."],
        ["redis-ttl", None, "15",
         "With --redis: seconds the directory keeps this node's rooms unless refreshed "
         "(every third of it); a dead node's rooms are forgotten within this.",
         _number("redis-ttl", float, 0.3, 3600)],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics and a health check at /healthz on this "
         "Twisted server endpoint, e.g. tcp:9102:interface=127.0.0.1 (default: off; "
         "needs the metrics extra, pip install 'ocm[metrics]')."],
        ["admin", None, None,
         "The operator's admin socket (ocm-admin), a Unix socket path (default: admin.sock in --data-dir)."],
        ["admin-group", None, None,
         "A group whose members may use the admin socket too (it is then 0660, not 0600)."],
        *irc.OPTIONS,
    ]
    optFlags = [
        ["no-admin", None, "Open no admin socket (ocm-admin cannot reach this daemon)."],
        ["no-tls", None, "Serve TCRP over plain TCP (clients must be told too)."],
        ["no-keep-rooms", None,
         "Close every room when the daemon stops, instead of saving the rooms 1.2 clients are in "
         "(in --data-dir, mode 0600) and restoring them when it starts again within --timeout."],
        ["web-no-tls", None,
         "Serve the page over plain HTTP, only on a loopback address or a Unix socket, "
         "for a reverse proxy that adds TLS (its X-Forwarded-For is trusted)."],
        *irc.FLAGS,
    ]

    def postOptions(self) -> None:
        # usage.Options coerces what was typed, not the defaults.
        for long, _short, _default, _doc, *coerce in self.optParameters:
            if coerce and isinstance(self[long], str):
                try:
                    self[long] = coerce[0](self[long])
                except ValueError as e:
                    raise usage.UsageError(str(e))
        self["tcp-endpoint"] = _endpoint("tcp", self["tcp"], self["interface"])
        self._udp_option()
        if self["web"] is not None:
            web.need_autobahn()
            # Plain HTTP on a bare port stays on loopback, for a local proxy.
            interface = "127.0.0.1" if self["web-no-tls"] else self["interface"]
            self["web-endpoint"] = _endpoint("web", self["web"], interface)
            if self["web-no-tls"]:
                web.check_plain_is_local(self["web-endpoint"])
        elif self["web-no-tls"]:
            raise usage.UsageError("--web-no-tls goes with --web")
        self["web-origin-set"] = web.parse_origins(self["web-origin"])
        irc.check_options(self)
        if self["data-dir"] is None:
            self["data-dir"] = default_data_dir()
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["no-tls"] and self["tls-cert"] and (self["web"] is None or self["web-no-tls"]) and (
            self["irc"] is None or self["irc-no-tls"]
        ):
            raise usage.UsageError("--no-tls: a certificate was also given; choose one")
        for option in ("tls-cert", "tls-key"):
            path = self[option]
            if path and not os.access(path, os.R_OK):
                raise usage.UsageError(f"--{option}: cannot read {path!r}")
        self._cluster_options()
        self._check_metrics()
        self._admin_options()

    def _admin_options(self) -> None:
        """The admin socket's path (None: none), its group; a default path too long is skipped, not fatal."""
        self["admin-path"] = self["admin-gid"] = None
        if self["no-admin"]:
            if self["admin"] is not None or self["admin-group"] is not None:
                raise usage.UsageError("--no-admin: --admin and --admin-group go without it")
            return
        if self["admin-group"] is not None:
            try:
                self["admin-gid"] = admin.group_id(self["admin-group"])
            except ValueError as e:
                raise usage.UsageError(f"--admin-group: {e}")
        path = os.path.abspath(self["admin"] or os.path.join(self["data-dir"], "admin.sock"))
        try:
            admin.check_path(path)
        except admin.SocketPathError as e:
            if self["admin"] is not None:
                raise usage.UsageError(f"--admin: {e}")
            log.warn("no admin socket: {why}; give --admin a shorter path", why=e)
            return
        self["admin-path"] = path

    def _udp_option(self) -> None:
        value = str(self["udp"]).strip()
        self["udp-fd"] = None
        if value.startswith("systemd:"):
            try:
                self["udp-fd"] = systemd.inherited_fd(value)
            except ValueError as e:
                raise usage.UsageError(f"--udp: {e}")
            if systemd.socket_family(self["udp-fd"]) not in (socket.AF_INET, socket.AF_INET6):
                raise usage.UsageError("--udp: the socket systemd passed is not an IP socket")
            self["udp"] = 0
            return
        try:
            self["udp"] = _number("udp", int, 0, 65535)(value)
        except ValueError as e:
            raise usage.UsageError(str(e))

    def _cluster_options(self) -> None:
        if self["redis"] is None:
            for option in ("advertise", "redis-password-file"):
                if self[option] is not None:
                    raise usage.UsageError(f"--{option} goes with --redis")
            return
        try:
            self["redis-address"] = parse_redis_url(self["redis"])
            if self["redis-password-file"] is not None:
                self["redis-address"] = with_password_file(self["redis-address"], self["redis-password-file"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        try:
            import txredisapi  # noqa: F401
        except ImportError:
            raise usage.UsageError("--redis: cluster mode needs the Redis client: pip install 'ocm[cluster]'")
        advertise = (self["advertise"] or "").strip().strip("[]")
        if not advertise:
            interface = self["interface"].strip("[]")
            if interface in ("", "0.0.0.0", "::"):
                raise usage.UsageError(
                    "--advertise: with --redis, give the host name or address clients "
                    "reach this node at (other nodes redirect clients there)"
                )
            advertise = interface
        if any(c.isspace() for c in advertise) or "/" in advertise:
            raise usage.UsageError(f"--advertise: {advertise!r} is not a host name or address")
        self["advertise"] = advertise

    def _check_metrics(self) -> None:
        metrics = self["metrics"]
        if metrics is None:
            return
        metrics = self["metrics"] = metrics.strip()
        if not metrics or metrics.isdigit():
            raise usage.UsageError(
                f"--metrics: {metrics!r} is not an endpoint string; "
                "give one such as tcp:9102:interface=127.0.0.1"
            )
        try:
            parsed = endpoints._parseServer(metrics, None)
        except Exception as e:
            raise usage.UsageError(f"--metrics: {metrics!r} is not a server endpoint string ({e})")
        if parsed == endpoints._parseServer(self["tcp-endpoint"], None) and parsed[1][:1] != (0,):
            raise usage.UsageError(f"--metrics: {metrics!r} is the TCRP listener's endpoint (--tcp)")
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise usage.UsageError(
                "--metrics: the prometheus_client package is not installed (pip install 'ocm[metrics]')"
            )


def makeService(config: Options, reactor: Any = None, environ: Any = None) -> OcmService:
    """The daemon; C{environ} (default os.environ) is where systemd's variables are read."""
    if reactor is None:
        from twisted.internet import reactor
    banner: list[str] = []
    rooms = RoomService(
        reactor,
        timeout=config["timeout"],
        max_rooms=config["max-rooms"],
        max_members=config["max-members"],
        member_rate=config["member-rate"],
        member_burst=config["member-burst"],
        history=config["history"],
        history_bytes=config["history-bytes"],
    )
    hashing = HashPool(
        reactor, workers=config["hash-workers"], queue=config["hash-queue"], memory=config["hash-memory"]
    )
    directory = _directory(config, rooms, reactor) if config["redis"] is not None else None
    desk = FrontDesk(
        rooms,
        reactor,
        request_rate=config["request-rate"],
        request_burst=config["request-burst"],
        password_rate=config["password-rate"] / 60,
        password_burst=config["password-burst"],
        address_password_rate=config["address-password-rate"] / 60,
        address_password_burst=config["address-password-burst"],
        max_rooms_per_address=config["max-rooms-per-address"],
        max_members_per_address=config["max-members-per-address"],
        offload=hashing.submit,
        directory=directory,
    )
    tcrp = TCRPFactory(
        desk,
        desk.door("tcrp", config["max-connections"], config["max-per-address"]),
        max_payload=config["max-payload"],
        request_timeout=config["request-timeout"],
    )
    factory: Any = tcrp
    tls_options = None
    if config["no-tls"]:
        banner.append("TLS is OFF: TCRP (tokens and keys included) travels in clear text")
    fp = None
    if (
        not config["no-tls"] or (config["web"] is not None and not config["web-no-tls"])
        or (config["irc"] is not None and not config["irc-no-tls"])
    ):
        if config["tls-cert"]:
            cert_pem = Path(config["tls-cert"]).read_bytes()
            key_pem = Path(config["tls-key"]).read_bytes()
            source = f"certificate {config['tls-cert']}"
        else:
            cert_path, key_path, made = tls.ensure_certificate(Path(config["data-dir"]))
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            source = f"{'new ' if made else ''}self-signed certificate {cert_path}"
        try:
            options = tls.server_options(cert_pem, key_pem)
            fp = tls.pem_fingerprint(cert_pem)
        except Exception as e:
            raise usage.UsageError(f"TLS certificate or key unusable: {e}")
        banner.append(f"TLS with {source}")
        banner.append(f"TLS fingerprint SHA256:{fp}")
        tls_options = options
    if not config["no-tls"]:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    endpoint = endpoints.serverFromString(reactor, config["tcp-endpoint"])
    if directory is not None:
        banner.append(f"cluster mode: room directory in {config['redis-address'].shown}")
    web_listener = None
    if config["web"] is not None:
        web_listener = web.make_listener(
            config, desk, reactor, None if config["web-no-tls"] else tls_options
        )
        banner.append(
            "web chat page: " + ("plain HTTP, for a reverse proxy" if config["web-no-tls"] else "HTTPS")
            + f" on {config['web-endpoint']}"
        )
    irc_listener = None
    if config["irc"] is not None:
        irc_listener = irc.make_listener(
            config, desk, reactor, None if config["irc-no-tls"] else tls_options, fp
        )
        banner.append(("IRC in plain text" if config["irc-no-tls"] else "IRC over TLS") + f" on {config['irc-endpoint']}")
    metrics_endpoint = None
    if config["metrics"]:
        metrics_endpoint = endpoints.serverFromString(reactor, config["metrics"])
    admin_listener = None
    if config.get("admin-path"):
        admin_listener = admin.make_listener(config["admin-path"], rooms, desk, reactor, config["admin-gid"])
    return OcmService(
        rooms, desk, tcrp, StreamListener("tcrp", endpoint, factory),
        config["udp"] if config.get("udp-fd") is None else ("fd", config["udp-fd"]), config["interface"],
        reactor, banner=banner, hashing=hashing, directory=directory,
        notifier=Notifier.from_environ(environ), web=web_listener, irc=irc_listener, metrics_endpoint=metrics_endpoint,
        tls=not config["no-tls"], admin=admin_listener,
        keep_rooms=None if config["no-keep-rooms"] else Path(config["data-dir"]),
    )


def _directory(config: Options, rooms: RoomService, reactor: Any) -> Any:
    from ocm.cluster.directory import Directory
    from ocm.cluster.store import RedisStore

    try:
        store = RedisStore(config["redis-address"], reactor, reactor=reactor)
    except OSError as e:
        raise usage.UsageError(f"--redis: {e}")
    return Directory(rooms, store, reactor, advertise=config["advertise"], ttl=config["redis-ttl"])
