"""
Password hashing on a pool of its own, bounded in threads and in memory.

scrypt (n=2**14, r=8) takes a 16 MiB buffer and tens of milliseconds of one
core. Run through the reactor's shared thread pool (up to 10 threads), a
burst of password requests grew the daemon by about 16 MiB per thread for
good: glibc raises its mmap threshold after the first 16 MiB buffer is freed,
so every later buffer came from that thread's malloc arena, which keeps it.

So here: at most C{workers} hashes run at once (one per CPU by default: more
threads do not hash faster), at most C{queue} more wait, and past that a
request is refused at once with 503 and C{retry_after}. And by default
(L{release_memory}, "arena") every thread allocates from glibc's one main
arena, and the pool trims it once it has been idle a quarter of a second:
within a burst the buffers are reused (no page faults), after it they go back
to the system.
docs/performance.md has the figures of this and the alternatives measured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import platform
from collections import deque
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ocm.wire.tcrp import ProtocolError, Status

log = Logger()

# Allocations this large or larger are mmapped and unmapped when freed
# (the "mmap" policy). Below the 16 MiB scrypt buffer.
MMAP_THRESHOLD = 1024 * 1024
_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3  # from glibc's malloc.h
DEFAULT_QUEUE = 64
# Seconds the pool stays idle before it trims: a burst is trimmed once, after
# it (malloc_trim walks the whole heap: about 3 ms at 100 MiB here). Short,
# so a daemon with a password join every second or two sits at its floor,
# not 16 MiB above it; an isolated hash then faults its buffer in afresh
# (1.28x the time of a hash in a burst, docs/performance.md).
TRIM_DELAY = 0.25
# What a hash is assumed to take until one has been timed (seconds).
_FIRST_GUESS = 0.05
# How the memory of a hash is given back (docs/performance.md, "Memory"):
# "arena": every thread allocates from glibc's main arena, and the pool
#   trims it (malloc_trim) whenever it goes idle: hashes in a burst reuse
#   the buffers, and they go back when the burst is over;
# "mmap": a fixed mmap threshold: each buffer is mapped and unmapped per
#   hash (16 MiB of page faults each time; slower in a burst);
# "keep": glibc as it is: each thread's arena keeps its 16 MiB for good.
MEMORY_POLICIES = ("arena", "mmap", "keep")

Run = Callable[..., defer.Deferred]


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Malloc:
    """glibc's allocator settings, through ctypes; does nothing off glibc."""

    def __init__(self) -> None:
        self.libc: Any = None
        if platform.libc_ver()[0] == "glibc":
            try:
                self.libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                self.libc = None

    def mallopt(self, param: int, value: int) -> bool:
        return self.libc is not None and bool(self.libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))

    def trim(self) -> bool:
        """Give free heap memory back to the system (malloc_trim(0))."""
        return self.libc is not None and bool(self.libc.malloc_trim(ctypes.c_size_t(0)))


def release_memory(policy: str, malloc: Malloc | None = None) -> bool:
    """
    Set glibc up for C{policy} (one of L{MEMORY_POLICIES}); process-wide,
    and to be done before the hash threads start. True if it took effect.
    """
    malloc = malloc or Malloc()
    if policy == "arena":
        return malloc.mallopt(_M_ARENA_MAX, 1)
    if policy == "mmap":
        return malloc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return False


class HashPool:
    """
    Runs blocking hash functions on at most C{workers} threads of its own,
    with at most C{queue} more waiting; L{submit} has C{deferToThread}'s
    signature, so it is the TCRP factory's C{offload}.

    For metrics: C{running} and C{queued} are the hashes in flight and
    waiting now, C{refused} and C{done} count since start.

    @param run: how one call is run off the reactor thread (tests inject one
        that returns Deferreds they fire); by default, on this pool's threads.
    """

    def __init__(
        self,
        clock: Any,
        workers: int = 0,
        queue: int = DEFAULT_QUEUE,
        run: Run | None = None,
        memory: str = "arena",
        malloc: Malloc | None = None,
    ) -> None:
        if memory not in MEMORY_POLICIES:
            raise ValueError(f"memory policy {memory!r} is not one of {MEMORY_POLICIES}")
        self.clock = clock
        self.workers = workers if workers > 0 else cpus()
        self.limit = queue
        self.running = 0
        self.refused = 0
        self.done = 0
        self.mean = _FIRST_GUESS  # seconds a hash takes, smoothed
        self._waiting: deque[tuple[defer.Deferred, Callable[..., Any], tuple[Any, ...]]] = deque()
        self.threadpool: ThreadPool | None = None
        if run is None:
            self.threadpool = ThreadPool(minthreads=0, maxthreads=self.workers, name="ocm-hash")
            run = lambda fn, *args: deferToThreadPool(clock, self.threadpool, fn, *args)  # noqa: E731
        self._run = run
        self.memory = memory
        self.malloc = malloc or Malloc()
        self.released = False
        self.trims = 0
        self.stopped = False
        self._trim_call: Any = None

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self.stopped = False
        self.released = release_memory(self.memory, self.malloc)
        if self.threadpool is not None and not self.threadpool.started:
            self.threadpool.start()
        log.info(
            "password hashing: {workers} thread(s), up to {queue} waiting, memory: {memory}{note}",
            workers=self.workers, queue=self.limit, memory=self.memory,
            note="" if self.released or self.memory == "keep" else " (not glibc: left as it is)",
        )

    def stop(self) -> None:
        """Refuse what is waiting, then stop the threads (a running hash ends first)."""
        self.stopped = True
        self._cancel_trim()
        waiting, self._waiting = self._waiting, deque()
        for d, _fn, _args in waiting:
            d.errback(ProtocolError(Status.UNAVAILABLE, "the server is shutting down"))
        if self.threadpool is not None and self.threadpool.started:
            self.threadpool.stop()

    def retry_after(self) -> float:
        """Seconds until what is queued now should have been hashed."""
        return max(1.0, math.ceil((self.running + self.queued + 1) * self.mean / self.workers))

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        Run C{fn(*args)} on a hash thread; the Deferred fires with its
        result. With every thread busy and the queue full, it fails at once
        with L{ProtocolError} 503 carrying C{retry_after}.
        """
        d: defer.Deferred = defer.Deferred()
        if self.stopped:
            d.errback(ProtocolError(Status.UNAVAILABLE, "the server is shutting down"))
        elif self.running < self.workers:
            self._start(d, fn, args)
        elif self.queued < self.limit:
            self._waiting.append((d, fn, args))
        else:
            self.refused += 1
            d.errback(ProtocolError(
                Status.UNAVAILABLE,
                "the server is busy checking passwords; try again shortly",
                retry_after=self.retry_after(),
            ))
        return d

    def _trim(self) -> None:
        """Idle for a while: the buffers of the last burst go back to the system."""
        self._trim_call = None
        self.trims += 1
        self.malloc.trim()

    def _cancel_trim(self) -> None:
        if self._trim_call is not None and self._trim_call.active():
            self._trim_call.cancel()
        self._trim_call = None

    def _start(self, d: defer.Deferred, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._cancel_trim()
        self.running += 1
        started = self.clock.seconds()

        def finished(result: Any) -> Any:
            self.running -= 1
            self.done += 1
            self.mean += (max(0.0, self.clock.seconds() - started) - self.mean) / 8
            self._next()
            if not self.running and self.released and self.memory == "arena" and not self.stopped:
                self._trim_call = self.clock.callLater(TRIM_DELAY, self._trim)
            return result

        self._run(fn, *args).addBoth(finished).chainDeferred(d)

    def _next(self) -> None:
        while self._waiting and self.running < self.workers:
            d, fn, args = self._waiting.popleft()
            self._start(d, fn, args)
