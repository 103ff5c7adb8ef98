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

Each call is bounded by C{timeout}; a Redis that is down, unreachable or slow
raises L{DirectoryUnavailable} (at once when no connection is open), and the
reactor never waits on it. The one wait: for C{timeout} after start, while
the first connection is being made, a call waits for it, so the node's
first CREATE is not refused for being a few milliseconds early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime

from ocm.cluster.url import RedisAddress

DEFAULT_PREFIX = "ocm:"
# Most rooms a LIST returns, however many nodes there are.
LIST_LIMIT = 10_000
# Rooms refreshed by one script call (each call holds Redis for its length).
BATCH = 200

# ARGV: node, tcp, ttl_ms, then per room: key, name, password, members.
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
    out[i] = holder or '?'
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

# KEYS: index. ARGV: prefix of the hashes, limit. Returns flat
# name, members, password, tcp, node tuples; forgets expired names.
_LIST = """
local out = {}
local n = 0
local limit = tonumber(ARGV[2])
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', ARGV[1] .. key, 'name', 'members', 'password', 'tcp', 'node')
  if not f[1] then
    redis.call('SREM', KEYS[1], key)
  elseif n < limit then
    n = n + 1
    for j = 1, 5 do out[#out + 1] = f[j] end
  end
end
return out
"""


class DirectoryUnavailable(Exception):
    """Redis did not answer: down, unreachable, refusing, or too slow."""


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

    def _started(self, result: Any) -> None:
        """The first connection is made (or failed, or took too long): wake its waiters."""
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
                return defer.fail(DirectoryUnavailable("no connection to Redis"))
            first: defer.Deferred = defer.Deferred()
            self._starting.append(first)
            # Then connected, or failing at once: _starting is None by now.
            return first.addCallback(lambda _: self._call(method, *args))
        d = getattr(self._redis, method)(*args)
        d.addTimeout(self.timeout, self.clock)

        def unavailable(failure: Any) -> Any:
            failure.trap(*self._errors)
            raise DirectoryUnavailable(failure.getErrorMessage() or type(failure.value).__name__)

        return d.addErrback(unavailable)

    def _room(self, key: str) -> str:
        return f"{self.prefix}room:{key}"

    def assert_claims(self, node: str, tcp: str, claims: list[Claim], ttl: float) -> defer.Deferred:
        """Claim, re-claim or refresh each; per claim None (ours) or the holder's tcp."""

        async def run() -> list[str | None]:
            out: list[str | None] = []
            for start in range(0, len(claims), BATCH):
                batch = claims[start:start + BATCH]
                args: list[Any] = [node, tcp, str(max(1, int(ttl * 1000)))]
                for c in batch:
                    args += [c.key, c.name, "1" if c.password else "0", str(c.members)]
                keys = [self._room(c.key) for c in batch] + [self.index]
                result = await self._call("eval", _ASSERT, keys, args)
                out += [None if r == 0 else str(r) for r in result]
            return out

        return defer.ensureDeferred(run())

    def release(self, node: str, key: str) -> defer.Deferred:
        d = self._call("eval", _RELEASE, [self._room(key), self.index], [node, key])
        return d.addCallback(lambda n: n == 1)

    def owner(self, key: str) -> defer.Deferred:
        """(node, tcp, name as created) of the name's holder, or None."""
        d = self._call("hmget", self._room(key), ["node", "tcp", "name"])
        return d.addCallback(lambda f: (f[0], f[1], f[2] or key) if f and f[0] and f[1] else None)

    def list(self) -> defer.Deferred:
        def rows(flat: list[Any]) -> list[Listed]:
            out = []
            for i in range(0, len(flat) - 4, 5):
                name, members, password, tcp, node = flat[i:i + 5]
                try:
                    count = int(members)
                except (TypeError, ValueError):
                    count = 0
                out.append(Listed(str(name), count, password == "1", str(tcp), str(node)))
            return out

        d = self._call("eval", _LIST, [self.index], [self._room(""), str(LIST_LIMIT)])
        return d.addCallback(rows)

    def close(self) -> defer.Deferred:
        if self._starting is not None:
            self._started(None)
        return self._factory.disconnect()
