"""
Password hashing on its own bounded pool (ocm.server.hashing): at most N hashes at
once, a bounded queue, 503 with retry_after past it, no thread left after
stop; and against the daemon the plugin builds, a burst of password requests
all answered (200, or 503 with retry_after) on a bounded number of threads.
"""

from __future__ import annotations

import json
import threading

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ocm.server import passwords
from ocm.server.hashing import TRIM_DELAY, HashPool, cpus, release_memory
from ocm.server.rooms import RoomService
from ocm.wire.tcrp import ProtocolError, ReplyParser, Status, encode_request
from tests.listeners import tcrp_factory
from tests import wire
from tests.daemon import DaemonMixin


class Runner:
    """Stands in for the threads: each call waits until the test finishes it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[defer.Deferred, object, tuple]] = []
        self.started = 0

    def __call__(self, fn, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((d, fn, args))
        self.started += 1
        return d

    def finish(self, seconds: float = 0.0) -> None:
        """The oldest running call ends, C{seconds} after... now."""
        self.clock.advance(seconds)
        d, fn, args = self.calls.pop(0)
        try:
            result = fn(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "ocm-hash" in t.name]


class BoundTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.run = Runner(self.clock)
        self.pool = HashPool(self.clock, workers=2, queue=3, run=self.run)

    def submit(self, value):
        results = []
        self.pool.submit(lambda v: v, value).addBoth(results.append)
        return results

    def test_at_most_workers_at_once_the_rest_queued_in_order(self):
        results = [self.submit(i) for i in range(5)]
        self.assertEqual((self.pool.running, self.pool.queued, self.run.started), (2, 3, 2))
        self.run.finish()
        # The first is answered and the first waiting one starts in its place.
        self.assertEqual(results[0], [0])
        self.assertEqual((self.pool.running, self.pool.queued, self.run.started), (2, 2, 3))
        while self.run.calls:
            self.run.finish()
        self.assertEqual(results, [[0], [1], [2], [3], [4]])
        self.assertEqual((self.pool.running, self.pool.queued, self.pool.done), (0, 0, 5))

    def test_past_the_queue_503_with_retry_after_and_counted(self):
        for i in range(5):
            self.submit(i)
        refused = self.submit(5)
        self.assertEqual(len(refused), 1)
        error = refused[0].value
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual(error.status, Status.UNAVAILABLE)
        self.assertGreaterEqual(error.retry_after, 1)
        self.assertEqual(self.pool.refused, 1)
        # The refused call never ran, and the ones queued still do.
        self.assertEqual(self.pool.queued, 3)
        while self.run.calls:
            self.run.finish()
        self.assertEqual(self.run.started, 5)

    def test_retry_after_is_when_the_queue_should_have_drained(self):
        # Twenty hashes of 2 s each teach the pool what a hash takes...
        for i in range(20):
            self.submit(i)
            self.run.finish(2.0)
        for i in range(5):
            self.submit(i)
        refused = self.submit(5)[0].value
        # ...so six hashes ahead of a new one on two workers: about 6 s.
        self.assertEqual(refused.retry_after, 6)
        self.assertEqual(refused.response_fields(), {"retry_after": 6})

    def test_a_failing_hash_frees_its_slot(self):
        results = []
        self.pool.submit(lambda: 1 / 0).addBoth(results.append)
        self.run.finish()
        self.assertTrue(results[0].check(ZeroDivisionError))
        self.assertEqual(self.pool.running, 0)

    def test_stop_refuses_what_waits(self):
        results = [self.submit(i) for i in range(4)]
        self.pool.stop()
        self.assertEqual([r[0].value.status for r in results[2:]], [Status.UNAVAILABLE] * 2)
        self.assertEqual(self.pool.queued, 0)
        # What was running still answers; what comes after is refused at once.
        self.run.finish()
        self.assertEqual(results[0], [0])
        late = self.submit(9)
        self.assertEqual(late[0].value.status, Status.UNAVAILABLE)
        self.assertEqual(self.run.started, 2)

    def test_default_workers_one_per_cpu(self):
        self.assertEqual(HashPool(self.clock).workers, cpus())


class PasswordTriesTests(SynchronousTestCase):
    """A JOIN refused for a full hashing queue spends no password try."""

    def test_503_then_join(self):
        clock = Clock()
        run = Runner(clock)
        pool = HashPool(clock, workers=1, queue=0, run=run)
        service = RoomService(clock)
        service.create_room("R", "host", "10.0.0.9", passwords.hash_password("pw"))
        factory = tcrp_factory(service, clock, password_rate=3 / 60, password_burst=5, offload=pool.submit)

        def join(name):
            proto = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
            t = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
            proto.makeConnection(t)
            proto.dataReceived(encode_request(2, "R", {"username": name, "password": "pw"}))
            return proto, t

        def status(t):
            return json.loads(ReplyParser().feed(t.value())[0].payload)

        busy = join("first")  # takes the only worker
        answers = []
        for i in range(10):
            proto, t = join(f"u{i}")
            answers.append(status(t))
            proto.connectionLost(None)
        self.assertEqual({a["status"] for a in answers}, {503})
        self.assertTrue(all(a["retry_after"] >= 1 for a in answers))
        self.assertEqual(factory.refusals[503], 10)
        run.finish()
        self.assertEqual(status(busy[1])["status"], 200)
        proto, t = join("late")
        run.finish()
        self.assertEqual(status(t)["status"], 200)


class ThreadTests(TestCase):
    def test_hashes_on_its_own_threads_and_stop_leaves_none(self):
        pool = HashPool(reactor, workers=2, queue=10)
        pool.start()
        self.addCleanup(pool.stop)
        names = []

        def work(i):
            names.append(threading.current_thread().name)
            return passwords.hash_password(f"pw{i}")

        d = defer.gatherResults([pool.submit(work, i) for i in range(6)])

        def check(hashes):
            self.assertEqual(len(hashes), 6)
            self.assertTrue(passwords.verify_password("pw3", hashes[3]))
            self.assertLessEqual(len(set(names)), 2)
            self.assertTrue(all("ocm-hash" in n for n in names))
            self.assertLessEqual(len(hash_threads()), 2)
            pool.stop()
            self.assertEqual(hash_threads(), [])

        return d.addCallback(check)

    def test_one_arena_on_glibc(self):
        import platform

        if platform.libc_ver()[0] != "glibc":
            raise self.skipTest("not glibc: nothing to set")
        self.assertTrue(release_memory("arena"))
        self.assertFalse(release_memory("keep"))


class FakeMalloc:
    def __init__(self):
        self.options = []
        self.trims = 0

    def mallopt(self, param, value):
        self.options.append((param, value))
        return True

    def trim(self):
        self.trims += 1
        return True


class MemoryTests(SynchronousTestCase):
    def pool(self, memory):
        self.clock = Clock()
        self.run = Runner(self.clock)
        self.malloc = FakeMalloc()
        pool = HashPool(self.clock, workers=2, queue=10, run=self.run, memory=memory, malloc=self.malloc)
        pool.start()
        return pool

    def test_arena_trims_once_a_burst_is_over_not_during_it(self):
        pool = self.pool("arena")
        self.assertEqual(self.malloc.options, [(-8, 1)])  # M_ARENA_MAX = 1
        for i in range(6):
            pool.submit(lambda: i)
        for _ in range(6):
            self.run.finish(0.5)
        self.assertEqual(self.malloc.trims, 0)
        # Idle again, but another hash comes within the delay: no trim yet.
        self.clock.advance(TRIM_DELAY * 0.8)
        pool.submit(lambda: 7)
        self.clock.advance(5)
        self.assertEqual(self.malloc.trims, 0)
        self.run.finish()
        self.clock.advance(TRIM_DELAY * 0.9)
        self.assertEqual(self.malloc.trims, 0)
        self.clock.advance(TRIM_DELAY * 0.1)
        self.assertEqual(self.malloc.trims, 1)
        self.clock.advance(60)
        self.assertEqual(self.malloc.trims, 1)

    def test_stop_cancels_a_pending_trim(self):
        pool = self.pool("arena")
        pool.submit(lambda: 1)
        self.run.finish()
        pool.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_mmap_fixes_the_threshold_and_never_trims(self):
        pool = self.pool("mmap")
        self.assertEqual(self.malloc.options, [(-3, 1024 * 1024)])  # M_MMAP_THRESHOLD
        pool.submit(lambda: 1)
        self.run.finish()
        self.clock.advance(10)
        self.assertEqual(self.malloc.trims, 0)

    def test_keep_leaves_malloc_alone(self):
        pool = self.pool("keep")
        pool.submit(lambda: 1)
        self.run.finish()
        self.clock.advance(10)
        self.assertEqual((self.malloc.options, self.malloc.trims), ([], 0))

    def test_unknown_policy(self):
        self.assertRaises(ValueError, HashPool, Clock(), memory="forget")


class DaemonBurstTests(DaemonMixin, TestCase):
    """The plugin-built daemon under a burst of password requests."""

    async def _burst(self, creates: int):
        before = threading.active_count()
        answers = await defer.gatherResults([
            defer.ensureDeferred(self.tcrp(wire.request(
                wire.CREATE_ROOM, f"room{i}", {"username": "host", "password": f"pw{i}"})))
            for i in range(creates)
        ])
        return before, [a.frames[0].body for a in answers]

    @defer.inlineCallbacks
    def test_burst_answered_on_bounded_threads_and_refusals_retry(self):
        svc = self.start_daemon("--no-tls", "--hash-workers", "2", "--hash-queue", "3",
                                "--request-rate", "0", "--max-per-address", "100")
        before, bodies = yield defer.ensureDeferred(self._burst(24))
        statuses = [b["status"] for b in bodies]
        self.assertEqual(set(statuses) - {200, 503}, set())
        self.assertGreaterEqual(statuses.count(200), 5)  # 2 running + 3 queued at least
        refused = [i for i, b in enumerate(bodies) if b["status"] == 503]
        for i in refused:
            self.assertGreaterEqual(bodies[i]["retry_after"], 1)
        self.assertEqual(svc.tcrp.refusals[503], len(refused))
        self.assertEqual(svc.hashing.refused, len(refused))
        # Never more than two hash threads, and nothing else came along.
        self.assertLessEqual(len(hash_threads()), 2)
        self.assertLessEqual(threading.active_count(), before + 2)
        # The refused ones, asked again one at a time, get their rooms.
        for i in refused:
            status, _ = yield defer.ensureDeferred(self.ask(
                wire.CREATE_ROOM, f"room{i}", {"username": "host", "password": f"pw{i}"}))
            self.assertEqual(status, 200)
        self.assertEqual(len(svc.rooms.rooms), 24)
        yield svc.stopService()
        self.assertEqual(hash_threads(), [])

    @defer.inlineCallbacks
    def test_a_joiner_with_the_password_gets_in_while_the_service_runs(self):
        svc = self.start_daemon("--no-tls", "--hash-workers", "1")
        self.assertEqual(svc.hashing.workers, 1)
        status, _ = yield defer.ensureDeferred(self.ask(
            wire.CREATE_ROOM, "R", {"username": "host", "password": "pw"}))
        self.assertEqual(status, 200)
        status, complete = yield defer.ensureDeferred(self.ask(
            wire.JOIN_ROOM, "R", {"username": "guest", "password": "pw"}))
        self.assertEqual((status, complete["members"]), (200, ["host", "guest"]))
        status, _ = yield defer.ensureDeferred(self.ask(
            wire.JOIN_ROOM, "R", {"username": "other", "password": "no"}))
        self.assertEqual(status, 401)
        self.assertEqual(len(hash_threads()), 1)
        yield svc.stopService()
        self.assertEqual(hash_threads(), [])
