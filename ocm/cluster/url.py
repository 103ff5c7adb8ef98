"""
The C{--redis} address: C{redis://[[user]:password@]host[:port][/db]},
C{rediss://...} for TLS (C{?ssl_ca_certs=FILE} for a private CA), or
C{unix:///path/to/redis.sock[?db=N]}. Parsed without I/O; the password is
kept apart so the address can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    scheme: str  # "redis", "rediss" or "unix"
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def shown(self) -> str:
        """The address for logs: never the password."""
        if self.scheme == "unix":
            return f"unix://{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        who = ""
        if self.username or self.password:
            who = (self.username or "") + (":***" if self.password else "") + "@"
        return f"{self.scheme}://{who}{host}:{self.port}/{self.db}"


def parse_redis_url(text: str) -> RedisAddress:
    """Raise ValueError with a sentence naming --redis for anything unusable."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"--redis: {text!r} is not a Redis URL ({e})")
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0]
    if parts.scheme in ("redis", "rediss"):
        path_db = parts.path.strip("/")
        db_text = path_db or db_text
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        db = -1
    if not 0 <= db <= 65535:
        raise ValueError(f"--redis: database {db_text!r} is not a number from 0")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError(f"--redis: {text!r}: a Unix socket is unix:///absolute/path")
        password = password or query.get("password", [None])[0]
        return RedisAddress("unix", path=parts.path, db=db, username=username, password=password)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"--redis: {text!r} is not redis://host:port/db, rediss://host:port/db "
            "or unix:///path/to/socket"
        )
    if not parts.hostname:
        raise ValueError(f"--redis: {text!r} names no host")
    ca = query.get("ssl_ca_certs", [None])[0]
    if ca and parts.scheme != "rediss":
        raise ValueError("--redis: ssl_ca_certs goes with rediss:// only")
    return RedisAddress(
        parts.scheme, host=parts.hostname, port=port or DEFAULT_PORT, db=db,
        username=username, password=password, ca=ca,
    )


# Longest password file read (Redis ACL passwords are any length; this is a
# bound on what a wrong path, such as a log file, makes the daemon hold).
MAX_PASSWORD_FILE = 4096


def with_password_file(address: RedisAddress, path: str) -> RedisAddress:
    """
    C{address} with the password read from C{path} (once, at start): kept
    out of argv, so out of C{ps}, and out of the URL the log shows. One line;
    its line ending is not part of the password. ValueError naming the
    option for anything unusable; the message never holds the file's text.
    """
    if address.password is not None:
        raise ValueError("--redis-password-file: the --redis URL has a password too; give one")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_FILE + 1)
    except OSError as e:
        raise ValueError(f"--redis-password-file: cannot read {path!r}: {e.strerror}")
    if len(data) > MAX_PASSWORD_FILE:
        raise ValueError(f"--redis-password-file: {path!r} is longer than {MAX_PASSWORD_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--redis-password-file: {path!r} is not UTF-8 text")
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if not text or "\n" in text or "\r" in text:
        raise ValueError(f"--redis-password-file: {path!r} must hold the password on one line")
    return replace(address, password=text)
