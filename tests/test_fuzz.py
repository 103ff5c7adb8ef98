"""
Fuzzing a live daemon (issue 4), built by ocm.server.tap.makeService as twistd
builds it, on 127.0.0.1.

TCRP: thousands of random and mutated frames (bit flips, truncations, wrong
and huge declared sizes, trailing bytes, valid frames in pieces), mostly over
plain TCP and a smaller share over TLS (garbage before the handshake too).
Where the header alone decides the answer (PROTOCOL §1), the test checks it;
every other answer must still be well-formed. UDP: thousands of datagrams
mutated from valid sealed ones (bit flips, truncation, extension, replays,
stale counters, a wrong source address) and random ones, each of which must
be dropped and counted exactly once.

After each run a normal create, join and chat must work end to end.

The memory bound: when the fuzz is over and its rooms have timed out, no
TCRP connection, room or member object is left (not in the service, not
anywhere in the heap), no connection is left in the reactor, and over the
3000 plain connections the process's resident memory (the daemon runs in
this process) grows by less than 24 MiB over a warmed-up baseline (about
8 MiB when this was written; it stays flat on repeated rounds).

The generator is random.Random(SEED); set OCM_FUZZ_SEED to replay another run.
"""

from __future__ import annotations

import base64
import ctypes
import gc
import json
import os
import random
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, endpoints, reactor, ssl, task, tcp
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import TestCase

from ocm.wire.datagram import HEARTBEAT, LEAVE, EventKind, chat, open_server, seal_client
from ocm.server.rooms import Member, Room
from ocm.server.tap import Options, makeService
from ocm.wire.tcrp import HEADER_SIZE, Op, ReplyParser, State, encode_frame, encode_json
from ocm.server.tcrp_server import TCRPServerProtocol

SEED = int(os.environ.get("OCM_FUZZ_SEED", "4046"))

PLAIN_FRAMES = 3000
TLS_FRAMES = 200
DATAGRAMS = 6000
CONCURRENCY = 64
MAX_PAYLOAD = 4096
REQUEST_TIMEOUT = 0.5
MEMBER_TIMEOUT = 2.0
RSS_BOUND_MIB = 24
# Statuses PROTOCOL §1 allows at all.
STATUSES = {200, 400, 401, 404, 409, 413, 429, 503}


def rss_kib() -> int:
    """
    Resident memory after a full collection, with glibc asked to hand freed
    pages back first, so the figure follows live objects rather than what
    the allocator keeps cached (scrypt's 16 MiB blocks, per thread).
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def limit_args() -> list[str]:
    """
    Lift the rate and connection limits so the fuzz reaches the parser
    instead of meeting 429 (the limits have tests of their own). Only the
    options this daemon has are passed.
    """
    wanted = {
        "request-rate": "0", "member-rate": "0", "max-per-address": "1000",
        "max-connections": "1000", "request-burst": "1000",
    }
    known = {p[0] for p in Options.optParameters}
    args: list[str] = []
    for name, value in wanted.items():
        if name in known:
            args += [f"--{name}", value]
    return args


# -- generators ------------------------------------------------------------------


def random_name(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.é中🙂"
    return "n" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) + "z"


def valid_frame(rng: random.Random, passwords: bool) -> bytes:
    op = rng.choice([Op.CREATE_ROOM, Op.CREATE_ROOM, Op.JOIN_ROOM, Op.JOIN_ROOM, Op.LIST_ROOMS])
    if op == Op.LIST_ROOMS:
        return encode_frame(op, State.REQUEST, b"", b"{}")
    body: dict[str, Any] = {"username": random_name(rng)}
    if passwords and rng.random() < 0.03:  # scrypt is slow on purpose: only a few
        body["password"] = random_name(rng)
    elif rng.random() < 0.1:
        body["password"] = rng.choice([None, ""])
    return encode_frame(op, State.REQUEST, random_name(rng).encode(), encode_json(body))


def odd_json(rng: random.Random) -> bytes:
    """Payloads that are JSON, or nearly, of the wrong shape."""
    return rng.choice([
        b"", b"[]", b"null", b"1", b'"x"', b"{", b'{"username":1}', b'{"username":null}',
        b'{"username":"a","password":7}', b'{"username":"a","password":{}}',
        b'{"username":" a"}', b'{"username":"a\\u0000b"}', b'{"username":"\\ud800"}',
        b"[" * 5000, b'{"username":"' + b"a" * 300 + b'"}', b"\xff\xfe{}",
        b'{"username":"a","password":"' + b"p" * 1100 + b'"}',
        json.dumps({"username": "a" * rng.randint(1, 300)}).encode(),
    ])


def set_size(frame: bytes, size: int) -> bytes:
    return frame[:3] + size.to_bytes(29, "big") + frame[HEADER_SIZE:]


def mutated_frame(rng: random.Random, passwords: bool) -> tuple[str, bytes]:
    frame = valid_frame(rng, passwords)
    how = rng.choice([
        "valid", "flip", "flip", "truncate", "truncate", "smaller", "larger",
        "huge", "random", "random-header", "trailing", "odd-json", "name-size",
    ])
    if how == "flip":
        data = bytearray(frame)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        frame = bytes(data)
    elif how == "truncate":
        frame = frame[: rng.randrange(len(frame))]
    elif how == "smaller":
        size = int.from_bytes(frame[3:HEADER_SIZE], "big")
        frame = set_size(frame, rng.randrange(size))
    elif how == "larger":
        size = int.from_bytes(frame[3:HEADER_SIZE], "big")
        frame = set_size(frame, size + rng.randint(1, 100))
    elif how == "huge":
        frame = set_size(frame, rng.choice([
            MAX_PAYLOAD + 1, 2**31, 2**64, 2**232 - 1, rng.randrange(MAX_PAYLOAD + 1, 2**232)
        ]))
    elif how == "random":
        frame = rng.randbytes(rng.randint(0, 300))
    elif how == "random-header":
        frame = rng.randbytes(HEADER_SIZE) + frame[HEADER_SIZE:]
    elif how == "trailing":
        frame = frame + rng.randbytes(rng.randint(1, 200))
    elif how == "odd-json":
        frame = encode_frame(frame[1], State.REQUEST, frame[HEADER_SIZE : HEADER_SIZE + frame[0]], odd_json(rng))
    elif how == "name-size":
        frame = bytes((rng.randrange(256),)) + frame[1:]
    return how, frame


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    """Usually one write; sometimes the bytes in pieces, down to single bytes."""
    if len(data) < 2 or rng.random() < 0.6:
        return [data]
    if len(data) <= 200 and rng.random() < 0.1:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def expected_status(data: bytes) -> tuple[int | str | None, int]:
    """
    What PROTOCOL §1 and docs/protocol.md say the daemon answers to C{data}
    sent and then left open: a status decided by the header alone, "any"
    for a whole frame, or None for silence (the request never completes, so
    the deadline drops it); and how many bytes the daemon needs to decide.
    """
    if len(data) < HEADER_SIZE:
        return None, len(data)
    size = int.from_bytes(data[3:HEADER_SIZE], "big")
    if size > MAX_PAYLOAD:
        return 413, HEADER_SIZE
    if data[2] != State.REQUEST or data[1] not in (1, 2, 3):
        return 400, HEADER_SIZE
    end = HEADER_SIZE + data[0] + size
    if len(data) < end:
        return None, len(data)
    return "any", end


# -- TCRP client ------------------------------------------------------------------


class FuzzClient(Protocol):
    """Writes its pieces one reactor turn apart, then waits or hangs up."""

    def __init__(self, chunks: list[bytes], hang_up: bool) -> None:
        self.chunks = list(chunks)
        self.hang_up = hang_up
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._next: Any = None
        self.started = self.finished = 0.0

    def connectionMade(self) -> None:
        self.started = time.monotonic()
        self._send()

    def _send(self) -> None:
        self._next = None
        if not self.connected:
            return
        if self.chunks:
            self.transport.write(self.chunks.pop(0))
        if self.chunks:
            self._next = reactor.callLater(0, self._send)
            return
        self.finished = time.monotonic()
        if self.hang_up:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        if not self.done.called:
            self.done.callback(bytes(self.received))


async def exchange(
    port: int, chunks: list[bytes], *, tls: bool, hang_up: bool = False, limit: float = 5.0
) -> tuple[bytes, float] | None:
    """
    Everything the server sent before it closed, and how long the writing
    took; None if the server never closed.
    """
    client = FuzzClient(chunks, hang_up)
    endpoint: Any = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=limit)
    if tls:
        endpoint = endpoints.wrapClientTLS(ssl.CertificateOptions(), endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    hung: list[bool] = []

    def give_up(result: Any, seconds: float) -> None:
        hung.append(True)
        client.transport.abortConnection()

    received = await client.done.addTimeout(limit, reactor, onTimeoutCancel=give_up)
    took = client.finished - client.started if client.finished else float("inf")
    return None if hung else (received, took)


def reply_problems(sent: bytes, reply: bytes) -> list[str]:
    """What is wrong with one answer, judged as a client would."""
    try:
        frames = ReplyParser().feed(reply)
    except Exception as e:
        return [f"unparsable reply {reply[:80]!r}: {e}"]
    used = sum(HEADER_SIZE + len(f.room) + len(f.payload) for f in frames)
    problems = []
    if not frames or used != len(reply):
        return [f"reply is not whole frames: {reply[:80]!r}"]
    first = frames[0]
    try:
        body = json.loads(first.payload)
        status, message = body["status"], body["message"]
    except (ValueError, TypeError, KeyError):
        return [f"RESPONSE payload {first.payload[:80]!r}"]
    if not isinstance(message, str):
        problems.append(f"message {message!r} is not text")
    if first.state != State.RESPONSE or status not in STATUSES:
        problems.append(f"first frame state {first.state}, status {status}")
    if len(sent) >= HEADER_SIZE and status not in (429, 503) and first.op != sent[1]:
        problems.append(f"op {first.op} echoed for op {sent[1]}")
    if first.room and first.room != sent[HEADER_SIZE : HEADER_SIZE + sent[0]]:
        problems.append(f"room {first.room!r} echoed for {sent[:80]!r}")
    if status == 200:
        if len(frames) != 2 or frames[1].state != State.COMPLETE:
            problems.append("200 without exactly one COMPLETE after it")
        else:
            try:
                complete = json.loads(frames[1].payload)
            except ValueError:
                complete = None
            if not isinstance(complete, dict):
                problems.append(f"COMPLETE payload {frames[1].payload[:80]!r} is not an object")
    elif len(frames) != 1:
        problems.append(f"{len(frames)} frames after status {status}")
    return problems


# -- UDP member -----------------------------------------------------------------


class Inbox(DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagramReceived(self, data: bytes, address: Any) -> None:
        self.datagrams.append(data)


class Seat:
    """One member's UDP side: socket, key, token and nonce counter."""

    def __init__(self, room: bytes, body: dict[str, Any], server: tuple[str, int], bind: str = "127.0.0.1") -> None:
        self.room = room
        self.token = body["token"].encode()
        self.aead = AESGCM(base64.b64decode(body["key"]))
        self.server = server
        self.inbox = Inbox()
        self.port = reactor.listenUDP(0, self.inbox, interface=bind)
        self.counter = 0

    def seal(self, inner: bytes, counter: int | None = None) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        return seal_client(self.aead, self.room, self.token, counter, inner)

    def send(self, datagram: bytes) -> None:
        self.port.write(datagram, self.server)

    def events(self) -> list[Any]:
        return [open_server(self.aead, d)[1] for d in self.inbox.datagrams]


async def until(predicate: Any, limit: float = 5.0) -> bool:
    """Let the reactor run until C{predicate()} holds, at most C{limit} s."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await task.deferLater(reactor, 0.01, lambda: None)
    return True


# -- the tests ----------------------------------------------------------------------


class FuzzTests(TestCase):
    timeout = 60

    def start_daemon(self, *extra: str) -> Any:
        print(f"ocm fuzz seed: {SEED} (set OCM_FUZZ_SEED to change it)")
        options = Options()
        options.parseOptions([
            "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "0", "--interface", "127.0.0.1",
            "--data-dir", self.mktemp(), "--max-payload", str(MAX_PAYLOAD),
            "--request-timeout", str(REQUEST_TIMEOUT), "--timeout", str(MEMBER_TIMEOUT),
            *limit_args(), *extra,
        ])
        svc = makeService(options)
        svc.privilegedStartService()
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    async def enter(self, svc: Any, op: int, room: str, user: str, tls: bool, bind: str = "127.0.0.1") -> Seat:
        result = await exchange(
            svc.tcp_port, [encode_frame(op, 0, room.encode(), encode_json({"username": user}))], tls=tls
        )
        reply = result[0] if result else b""
        frames = ReplyParser().feed(reply)
        self.assertEqual(json.loads(frames[0].payload)["status"], 200, f"seed {SEED}: {reply!r}")
        seat = Seat(room.encode(), json.loads(frames[1].payload), ("127.0.0.1", svc.rooms.udp_port), bind)
        self.addCleanup(seat.port.stopListening)
        return seat

    async def still_chats(self, svc: Any, tls: bool) -> None:
        """A normal create, join and chat, end to end, after the fuzz."""
        alice = await self.enter(svc, Op.CREATE_ROOM, "After the fuzz", "alice", tls)
        alice.send(alice.seal(HEARTBEAT))
        self.assertTrue(await until(lambda: svc.rooms.rooms["after the fuzz"].host.address))
        bob = await self.enter(svc, Op.JOIN_ROOM, "after the FUZZ", "bob", tls)
        bob.send(bob.seal(HEARTBEAT))
        bob.send(bob.seal(chat("still here")))
        self.assertTrue(await until(lambda: len(alice.inbox.datagrams) >= 2 and bob.inbox.datagrams))
        seen = [(e.kind, e.name, e.text, e.seq) for e in alice.events()]
        self.assertEqual(seen, [(EventKind.JOINED, "bob", "", 0), (EventKind.MESSAGE, "bob", "still here", 1)])
        self.assertEqual([(e.kind, e.text) for e in bob.events()], [(EventKind.MESSAGE, "still here")])
        alice.send(alice.seal(LEAVE))
        self.assertTrue(await until(lambda: not svc.rooms.rooms))

    async def assert_nothing_left(self, svc: Any) -> None:
        """Every fuzz room timed out, and no state outlived its connection."""
        self.assertTrue(
            await until(lambda: not svc.rooms.rooms, MEMBER_TIMEOUT + 3),
            f"seed {SEED}: rooms left: {list(svc.rooms.rooms)[:5]}",
        )
        self.assertEqual(len(svc.rooms.tokens), 0)
        tcrp = getattr(svc, "tcrp", None)
        if tcrp is not None and hasattr(tcrp, "active"):
            self.assertEqual((tcrp.active, dict(tcrp.door.caps.per_address)), (0, {}))
        def connections() -> list[Any]:
            return [s for s in reactor.getReaders() + reactor.getWriters()
                    if isinstance(s, (tcp.Server, tcp.Client))]

        self.assertTrue(await until(lambda: not connections()), f"seed {SEED}: left open: {connections()}")

        def left() -> list[str]:
            # A request whose password is still being hashed keeps its
            # protocol until the thread is done, even if it was dropped.
            gc.collect()
            return [type(o).__name__ for o in gc.get_objects() if isinstance(o, (TCRPServerProtocol, Room, Member))]

        self.assertTrue(await until(lambda: not left()), f"seed {SEED}: objects left over: {left()}")

    async def fuzz_frames(
        self, svc: Any, rng: random.Random, count: int, tls: bool, passwords: bool = True
    ) -> dict[str, int]:
        """Send C{count} fuzz connections, C{CONCURRENCY} at a time; check each answer."""
        problems: list[str] = []
        kinds: dict[str, int] = {}
        limit = REQUEST_TIMEOUT + 4.0
        gate = defer.DeferredSemaphore(CONCURRENCY)

        async def one(how: str, data: bytes, chunks: list[bytes], hang_up: bool, raw: bool) -> None:
            result = await exchange(svc.tcp_port, chunks, tls=tls and not raw, hang_up=hang_up, limit=limit)
            expected, decided_at = expected_status(data)
            reply, took = result if result is not None else (None, 0.0)
            if reply is None:
                problems.append(f"{how}: server kept the connection open past its deadline: {data[:64]!r}")
            elif hang_up or raw:
                return
            elif not reply:
                # Bytes written after the daemon answered and closed meet a
                # reset, which may destroy the answer on its way: TCP's
                # lingering-close problem, a client's own doing.
                # And a request still unsent near the deadline may miss it.
                late = sum(map(len, chunks[:-1])) >= decided_at or took > REQUEST_TIMEOUT / 2
                if expected is not None and not late:
                    problems.append(f"{how}: no answer to {data[:64]!r} in {len(chunks)} pieces, {took:.3f} s")
            else:
                found = reply_problems(data, reply)
                if found:
                    problems.extend(f"{how}: {p}" for p in found)
                    return
                status = json.loads(ReplyParser().feed(reply)[0].payload)["status"]
                if expected is None:
                    problems.append(f"{how}: status {status} to an incomplete request {data[:64]!r}")
                elif expected != "any" and status != expected:
                    problems.append(f"{how}: status {status}, not {expected}, for {data[:64]!r}")

        jobs = []
        for _ in range(count):
            how, data = mutated_frame(rng, passwords)
            # Over TLS, some connections send garbage instead of a handshake.
            raw = tls and rng.random() < 0.25
            hang_up = rng.random() < 0.15
            kinds[how] = kinds.get(how, 0) + 1
            jobs.append(gate.run(lambda *a: defer.ensureDeferred(one(*a)), how, data, pieces(rng, data), hang_up, raw))
        await defer.gatherResults(jobs, consumeErrors=True)
        self.assertEqual(problems[:10], [], f"seed {SEED}: {len(problems)} bad answers; refusals {dict((getattr(svc, 'tcrp', None) or svc.tcp_factory).refusals)}")
        return kinds

    async def test_tcrp_plain(self) -> None:
        """The bulk: thousands of fuzz connections over plain TCP."""
        rng = random.Random(SEED)
        svc = self.start_daemon("--no-tls")
        # Warm up first (reactor and allocator state that stays for good).
        # No passwords here: scrypt's 16 MiB blocks, one per thread, would
        # drown the figure in allocator noise; the TLS test has them.
        await self.fuzz_frames(svc, rng, 200, tls=False, passwords=False)
        await self.assert_nothing_left(svc)
        before = rss_kib()
        kinds = await self.fuzz_frames(svc, rng, PLAIN_FRAMES, tls=False, passwords=False)
        refusals = (getattr(svc, "tcrp", None) or svc.tcp_factory).refusals
        self.assertGreater(refusals[400], 0)
        self.assertGreater(refusals[413], 0)
        self.assertGreater(refusals["timeout"], 0)
        await self.assert_nothing_left(svc)
        growth = (rss_kib() - before) / 1024
        print(f"ocm fuzz: {PLAIN_FRAMES} TCRP connections {kinds}; RSS grew {growth:.1f} MiB")
        self.assertLess(growth, RSS_BOUND_MIB, f"seed {SEED}: RSS grew {growth:.1f} MiB")
        await self.still_chats(svc, tls=False)

    async def test_tcrp_tls(self) -> None:
        """A smaller share over TLS, with garbage in place of some handshakes."""
        rng = random.Random(SEED + 1)
        svc = self.start_daemon()
        await self.fuzz_frames(svc, rng, TLS_FRAMES, tls=True)
        await self.assert_nothing_left(svc)
        await self.still_chats(svc, tls=True)

    async def test_datagrams(self) -> None:
        """Every fuzz datagram is dropped and counted once; chat goes on."""
        rng = random.Random(SEED + 2)
        svc = self.start_daemon("--no-tls")
        host = await self.enter(svc, Op.CREATE_ROOM, "Fuzz", "host", tls=False)
        guest = await self.enter(svc, Op.JOIN_ROOM, "Fuzz", "guest", tls=False)
        elsewhere = reactor.listenUDP(0, Inbox(), interface="127.0.0.2")
        early = {}
        for seat in (host, guest):
            early[seat] = [seat.seal(HEARTBEAT) for _ in range(3)]
            for datagram in early[seat]:
                seat.send(datagram)
            # Jump far ahead: counters 1..3 are now stale, and the latest is
            # the one a replay repeats.
            seat.counter = 2**63
            latest = seat.seal(HEARTBEAT)
            seat.send(latest)
            early[seat].append(latest)
        members = svc.rooms.rooms["fuzz"].members.values()
        self.assertTrue(await until(lambda: all(m.window.highest == 2**63 + 1 for m in members)))

        def dropped() -> int:
            return sum(n for reason, n in svc.rooms.drops.items() if reason != "send")

        def fuzz_datagram() -> tuple[Any, bytes]:
            seat = rng.choice((host, guest))
            # A counter above the window and never used, so that only the
            # mutation can make the datagram fail.
            good = seat.seal(chat("x" * rng.randint(1, 600)), rng.randint(2**63 + 100, 2**64 - 1))
            how = rng.choice(["flip", "flip", "truncate", "extend", "random", "header+random",
                              "replay", "stale", "oversize", "address"])
            if how == "flip":
                data = bytearray(good)
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                return seat.port, bytes(data)
            if how == "truncate":
                return seat.port, good[: rng.randrange(len(good))]
            if how == "extend":
                return seat.port, good + rng.randbytes(rng.randint(1, 200))
            if how == "random":
                return seat.port, rng.randbytes(rng.randint(0, 700))
            if how == "header+random":
                head = 2 + len(seat.room) + len(seat.token)
                return seat.port, good[:head] + rng.randbytes(rng.randint(0, 300))
            if how == "replay":
                return seat.port, early[seat][-1]
            if how == "stale":
                return seat.port, rng.choice(early[seat][:3])
            if how == "oversize":
                return seat.port, rng.randbytes(rng.randint(4097, 9000))
            return elsewhere, good  # valid, from the wrong IP

        before = dropped()
        sent = 0
        while sent < DATAGRAMS:
            batch = min(200, DATAGRAMS - sent)
            for _ in range(batch):
                port, data = fuzz_datagram()
                port.write(data, host.server)
            sent += batch
            # Let the relay catch up, so that no socket buffer overflows.
            self.assertTrue(
                await until(lambda: dropped() - before >= sent),
                f"seed {SEED}: {sent} sent, {dropped() - before} counted",
            )
        self.assertEqual(dropped() - before, DATAGRAMS, f"seed {SEED}: {dict(svc.rooms.drops)}")
        self.assertEqual(svc.rooms.drops.get("internal", 0), 0)
        for reason in ("malformed", "auth", "replay", "stale", "oversize", "address"):
            self.assertGreater(svc.rooms.drops[reason], 0, reason)
        # Nothing of it was relayed: no MESSAGE reached either member.
        for seat in (host, guest):
            self.assertNotIn(EventKind.MESSAGE, [e.kind for e in seat.events()], f"seed {SEED}")
        print(f"ocm fuzz: {DATAGRAMS} datagrams, drops {dict(svc.rooms.drops)}")
        host.send(host.seal(LEAVE))
        self.assertTrue(await until(lambda: not svc.rooms.rooms))
        for port in (host.port, guest.port, elsewhere):
            await port.stopListening()
        await self.assert_nothing_left(svc)
        await self.still_chats(svc, tls=False)
