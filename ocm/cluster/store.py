"""
The room directory as kept in Redis: a claim per room name, atomic and
owned by one node, that expires unless its node refreshes it.

Keys (C{prefix} is C{ocm:} by default):

 - C{ocm:room:<name key>}: a hash C{node, tcp, name, password, members},
   with a TTL. C{node} is the owning process's random id, C{tcp} the
   address clients are redirected to.
 - C{ocm:rooms}: the set of name keys, for LIST; entries whose hash has
   expired are removed by the LIST script itself.

Every change is one Lua script, so a claim, a refresh or a release is atomic
and compares the owner first: a node can only refresh or delete its own
claims. Standalone Redis (or a Sentinel-managed primary) is assumed, not
Redis Cluster: the LIST script reads keys it was not given.

Everything read back is checked as if a client had sent it (L{check_row},
L{check_tcp}): a value someone planted in Redis that breaks the name rules,
is too long, or names no sane host:port is skipped, counted in C{invalid}
and logged once, repr'd and cut short (L{shown}). The scripts cut every
value they return to L{MAX_FIELD} bytes, so a planted 200 KB name costs a
kilobyte on the wire, not 200 KB per request.

Each call is bounded by C{timeout}; a Redis that is down, unreachable or slow
raises L{DirectoryUnavailable} (at once when no connection is open), and the
reactor never waits on it. The one wait: for C{timeout} after start, while
the first connection is being made, a call waits for it, so the node's
first CREATE is not refused for being a few milliseconds early.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.logger import Logger

from ocm.cluster.url import RedisAddress
from ocm.wire.names import MAX_NAME_BYTES, name_key, name_problem

DEFAULT_PREFIX = "ocm:"
# Most rooms a LIST returns, however many nodes there are.
LIST_LIMIT = 10_000
# Rooms refreshed by one script call (each call holds Redis for its length).
BATCH = 200
# Longest value the scripts return (longer ones are cut to this, and so
# refused): above any valid name (255 bytes), host:port or node id.
MAX_FIELD = 1024
# Characters of a refused value shown in the log.
SHOWN = 60
# Distinct refused entries remembered so that each is logged once.
LOGGED = 1024
# Most members a listed room may claim: above any --max-members.
MAX_MEMBERS = 1_000_000

# ARGV: node, tcp, ttl_ms, then per room: key, name, password, members; last MAX_FIELD.
# KEYS: the rooms' hashes, then the index set. Returns per room 0 (ours now)
# or the tcp of the node that holds the name.
_ASSERT = """
local node, tcp, ttl = ARGV[1], ARGV[2], ARGV[3]
local index = KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 1 do
  local a = 3 + (i - 1) * 4
  local owner = redis.call('HGET', KEYS[i], 'node')
  local holder = redis.call('HGET', KEYS[i], 'tcp')
  -- Another node's claim stands, unless it is this address's: that is the
  -- claim of a process that had this node's port before, now dead.
  if owner and owner ~= node and holder ~= tcp then
    out[i] = string.sub(holder or '?', 1, tonumber(ARGV[4 + (#KEYS - 1) * 4]))
  else
    redis.call('HSET', KEYS[i], 'node', node, 'tcp', tcp, 'name', ARGV[a + 2],
               'password', ARGV[a + 3], 'members', ARGV[a + 4])
    redis.call('PEXPIRE', KEYS[i], ttl)
    redis.call('SADD', index, ARGV[a + 1])
    out[i] = 0
  end
end
return out
"""

# KEYS: hash, index. ARGV: node, key. Compare-and-delete.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: index. ARGV: prefix of the hashes, limit, MAX_FIELD. Returns flat
# key, name, members, password, tcp, node tuples, each value cut to
# MAX_FIELD bytes; forgets expired names.
_LIST = """
local out = {}
local n = 0
local limit, cut = tonumber(ARGV[2]), tonumber(ARGV[3])
local function short(v)
  if type(v) == 'string' then return string.sub(v, 1, cut) end
  return v
end
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. key, 'name', 'members', 'password', 'tcp', 'node')
  if not f[1] then
    redis.call('SREM', KEYS[1], key)
  elseif n < limit then
    n = n + 1
    out[#out + 1] = short(key)
    for j = 1, 5 do out[#out + 1] = short(f[j]) end
  end
end
return out
"""

# KEYS: the room's hash. ARGV: MAX_FIELD. node, tcp, name, each cut short.
_OWNER = """
local f = redis.call('HMGET', KEYS[1], 'node', 'tcp', 'name')
for j = 1, 3 do
  if type(f[j]) == 'string' then f[j] = string.sub(f[j], 1, tonumber(ARGV[1])) end
end
return f
"""


class DirectoryUnavailable(Exception):
    """Redis did not answer: down, unreachable, refusing, or too slow."""


class Invalid(ValueError):
    """A value read from Redis that no node of ocm writes: planted, or corrupt."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field  # which one: name, tcp, members, password, node, key


def shown(value: Any, limit: int = SHOWN) -> str:
    """
    A value from Redis fit for a log line: repr'd (no control character
    reaches the log as itself) and cut to C{limit} characters, with its
    full length said.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({size} long)"


_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PORT = re.compile(r"[0-9]{1,5}")
_COUNT = re.compile(r"[0-9]{1,7}")


def check_tcp(value: Any) -> str:
    """
    A node's address as the directory holds it: host:port or [v6]:port,
    the host an IP address or an ASCII host name, the port 1-65535.
    """
    if not isinstance(value, str) or len(value) > 300:
        raise Invalid("tcp", "tcp is not a host:port")
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise Invalid("tcp", "tcp has no port from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid("tcp", "tcp's [host] is not an IPv6 address")
        return value
    labels = host.removesuffix(".").split(".")  # a trailing dot: a fully qualified name
    if len(host) > 254 or not all(_HOST.fullmatch(label) for label in labels):
        raise Invalid("tcp", "tcp's host is not a host name or address")
    if all(label.isdigit() for label in labels):
        try:
            IPv4Address(host)
        except ValueError:
            raise Invalid("tcp", "tcp's host is not an IPv4 address")
    return value


def check_node(value: Any) -> str:
    if not isinstance(value, str) or not _NODE.fullmatch(value):
        raise Invalid("node", "node is not a node id")
    return value


def check_name(value: Any, key: str) -> str:
    """A room name by the rules a client's CREATE meets, and filed under its own key."""
    if not isinstance(value, str):
        raise Invalid("name", "name is not UTF-8 text")
    if len(value.encode("utf-8", "surrogatepass")) >= MAX_FIELD:
        raise Invalid("name", f"name is over {MAX_FIELD} bytes long; the limit is {MAX_NAME_BYTES}")
    problem = name_problem(value, "name")
    if problem is not None:
        raise Invalid("name", problem)
    if name_key(value) != key:
        raise Invalid("name", "name is filed under another name's key")
    return value


def check_row(key: Any, name: Any, members: Any, password: Any, tcp: Any, node: Any) -> Listed:
    """One LIST entry as read from Redis, checked field by field."""
    if not isinstance(key, str) or len(key.encode("utf-8", "surrogatepass")) > 4 * MAX_NAME_BYTES:
        raise Invalid("key", "key is not a name key")
    check_name(name, key)
    if not isinstance(members, str) or not _COUNT.fullmatch(members) or int(members) > MAX_MEMBERS:
        raise Invalid("members", "members is not a count")
    if password not in ("0", "1"):
        raise Invalid("password", "password is not 0 or 1")
    return Listed(name, int(members), password == "1", check_tcp(tcp), check_node(node))


@dataclass(frozen=True)
class Claim:
    """What the directory holds about one room."""

    key: str  # ocm.wire.names.name_key of the name
    name: str  # the spelling it was created with
    password: bool
    members: int


@dataclass(frozen=True)
class Listed:
    name: str
    members: int
    password: bool
    tcp: str
    node: str


class Store(Protocol):
    """What the directory needs from its back end (Redis, or a test's fake)."""

    @property
    def connected(self) -> bool: ...

    def assert_claims(self, node: str, tcp: str, claims: list[Claim], ttl: float) -> defer.Deferred: ...

    def release(self, node: str, key: str) -> defer.Deferred: ...

    def owner(self, key: str) -> defer.Deferred: ...

    def list(self) -> defer.Deferred: ...

    def close(self) -> defer.Deferred: ...


class RedisStore:
    """L{Store} on one txredisapi connection, reconnected in the background."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        clock: IReactorTime,
        *,
        timeout: float = 2.0,
        prefix: str = DEFAULT_PREFIX,
        reactor: Any = None,
    ) -> None:
        import txredisapi  # the [cluster] extra

        if reactor is None:
            from twisted.internet import reactor
        self.clock = clock
        self.timeout = timeout
        self.prefix = prefix
        self.index = prefix + "rooms"
        self.shown = address.shown
        # Entries read from Redis and refused, by the field that was wrong.
        self.invalid: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        # Why Redis refused this node (AUTH or SELECT failed), once it has.
        self.refused: str | None = None
        self._errors = (txredisapi.RedisError, defer.TimeoutError, defer.CancelledError, ConnectionError)
        factory = txredisapi.RedisFactory(
            address.shown, address.db or None, 1, isLazy=True,
            password=address.password, username=address.username,
            replyTimeout=timeout, convertNumbers=False,
        )
        # Back off to at most 2 s between reconnections: the directory is
        # back soon after Redis is.
        factory.initialDelay = 0.5
        factory.maxDelay = 2.0
        factory.startConnecting(self._endpoint(reactor, address))
        self._factory = factory
        self._redis = factory.handler
        # Calls waiting for the first connection; None once it is made or
        # C{timeout} has passed without it.
        self._starting: list[defer.Deferred] | None = []
        factory.deferred.addBoth(self._started)
        self._start_over = clock.callLater(timeout, self._started, None)

    def _refused_by_redis(self, why: str, *, for_good: bool) -> None:
        """Redis refused this node's credentials: say so once, naming the fix."""
        if why == self.refused:
            return
        self.refused = why
        self.log.error(
            "Redis at {redis} refused this node: {why}. Check --redis-password-file, the URL's "
            "user and database, and that user's ACL (docs/scaling.md); until then CREATE, LIST "
            "and redirected JOINs get 503{more}",
            redis=self.shown, why=shown(why, 200),
            more=" (the node does not try again: restart it)" if for_good else "",
        )

    def _started(self, result: Any) -> None:
        """The first connection is made (or failed, or took too long): wake its waiters."""
        if isinstance(result, Failure):
            # txredisapi gives up for good when AUTH or SELECT is refused.
            self._refused_by_redis(result.getErrorMessage(), for_good=True)
        waiting, self._starting = self._starting, None
        if self._start_over.active():
            self._start_over.cancel()
        for d in waiting or ():
            if not d.called:
                d.callback(None)

    def _endpoint(self, reactor: Any, address: RedisAddress) -> Any:
        if address.scheme == "unix":
            return UNIXClientEndpoint(reactor, address.path, timeout=self.timeout)
        endpoint: Any = HostnameEndpoint(reactor, address.host, address.port, timeout=self.timeout)
        if address.tls:
            if address.ca:
                with open(address.ca, "rb") as f:
                    root = ssl.trustRootFromCertificates(
                        [ssl.Certificate.loadPEM(f.read())]
                    )
            else:
                root = ssl.platformTrust()
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(address.host, trustRoot=root), endpoint)
        return endpoint

    @property
    def connected(self) -> bool:
        return self._factory.size > 0

    def _call(self, method: str, *args: Any) -> defer.Deferred:
        if not self.connected:
            if self._starting is None:
                why = "no connection to Redis"
                if self.refused is not None:
                    why = f"Redis refused this node ({self.refused})"
                return defer.fail(DirectoryUnavailable(why))
            first: defer.Deferred = defer.Deferred()
            self._starting.append(first)
            # Then connected, or failing at once: _starting is None by now.
            return first.addCallback(lambda _: self._call(method, *args))
        d = getattr(self._redis, method)(*args)
        d.addTimeout(self.timeout, self.clock)

        def unavailable(failure: Any) -> Any:
            failure.trap(*self._errors)
            why = failure.getErrorMessage() or type(failure.value).__name__
            if why.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                self._refused_by_redis(why, for_good=False)
            raise DirectoryUnavailable(why)

        return d.addErrback(unavailable)

    def _room(self, key: str) -> str:
        return f"{self.prefix}room:{key}"

    def _refuse(self, where: str, key: Any, problem: Invalid) -> None:
        """
        Count an entry refused, and log it the first time (its key bounded
        and repr'd; C{problem}'s words are this module's, never the value).
        """
        why = str(problem)
        self.invalid[problem.field] += 1
        seen = (shown(key), why)
        if seen in self._logged:
            return
        if len(self._logged) >= LOGGED:
            self._logged.clear()
        self._logged.add(seen)
        self.log.warn(
            "ignored a room entry in Redis ({where}, key {key}): {why}; no node of ocm writes "
            "that, so someone else can write to this Redis (docs/scaling.md)",
            where=where, key=seen[0], why=why,
        )

    def assert_claims(self, node: str, tcp: str, claims: list[Claim], ttl: float) -> defer.Deferred:
        """Claim, re-claim or refresh each; per claim None (ours) or the holder's tcp."""

        async def run() -> list[str | None]:
            out: list[str | None] = []
            for start in range(0, len(claims), BATCH):
                batch = claims[start:start + BATCH]
                args: list[Any] = [node, tcp, str(max(1, int(ttl * 1000)))]
                for c in batch:
                    args += [c.key, c.name, "1" if c.password else "0", str(c.members)]
                args.append(str(MAX_FIELD))
                keys = [self._room(c.key) for c in batch] + [self.index]
                result = await self._call("eval", _ASSERT, keys, args)
                for c, holder in zip(batch, result):
                    out.append(None if holder == 0 else self._holder(c.key, holder))
            return out

        return defer.ensureDeferred(run())

    def release(self, node: str, key: str) -> defer.Deferred:
        d = self._call("eval", _RELEASE, [self._room(key), self.index], [node, key])
        return d.addCallback(lambda n: n == 1)

    def _holder(self, key: str, holder: Any) -> str:
        """Another node's claim on a name this node asserts: its tcp, or "?" if unreadable."""
        try:
            return check_tcp(holder)
        except Invalid as e:
            self._refuse("claim", key, e)
            return "?"

    def owner(self, key: str) -> defer.Deferred:
        """(node, tcp, name as created) of the name's holder, or None (also for an invalid entry)."""

        def checked(f: list[Any]) -> tuple[str, str, str] | None:
            if not f or not f[0]:
                return None
            node, tcp, name = f
            try:
                return check_node(node), check_tcp(tcp), key if not name else check_name(name, key)
            except Invalid as e:
                self._refuse("owner", key, e)
                return None

        d = self._call("eval", _OWNER, [self._room(key)], [str(MAX_FIELD)])
        return d.addCallback(checked)

    def list(self) -> defer.Deferred:
        def rows(flat: list[Any]) -> list[Listed]:
            out = []
            for i in range(0, len(flat) - 5, 6):
                key = flat[i]
                try:
                    out.append(check_row(*flat[i:i + 6]))
                except Invalid as e:
                    self._refuse("list", key, e)
            return out

        d = self._call("eval", _LIST, [self.index], [self._room(""), str(LIST_LIMIT), str(MAX_FIELD)])
        return d.addCallback(rows)

    def close(self) -> defer.Deferred:
        if self._starting is not None:
            self._started(None)
        return self._factory.disconnect()
