"""
PROTOCOL §4a, the client's patience: on a 429, or a 503 with C{retry_after},
tell the person, wait C{retry_after} plus a random fraction of it, and try
again, for about a minute in all. The random part spreads a crowd refused
together (a class behind one address) so it does not come back together.
A refusal without C{retry_after} (a version 1 server, a full room) is final,
as before.
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable, TypeVar

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from ocm.client.display import sanitize
from ocm.client.errors import RequestRefused
from ocm.wire.tcrp import Status

T = TypeVar("T")

# Seconds from the first try after which no new wait starts.
PATIENCE = 60.0
RETRIED = (Status.TOO_MANY, Status.UNAVAILABLE)


def waiting_line(refusal: RequestRefused, delay: float) -> str:
    why = sanitize(refusal.server_message).rstrip(".") or f"status {refusal.status}"
    return f"The server refused for now ({why}); trying again in {delay:.0f} s."


async def retrying(
    clock: IReactorTime,
    attempt: Callable[[], Awaitable[T]],
    note: Callable[[str], None],
    *,
    patience: float = PATIENCE,
    jitter: Callable[[], float] = random.random,
) -> T:
    """
    Run C{attempt} until it succeeds, is refused for good, or the next wait
    would end more than C{patience} seconds after the first try; then the
    last refusal is raised. Cancelling the returned coroutine's Deferred
    cancels a wait in progress.
    """
    deadline = clock.seconds() + patience
    waited = 0.0
    while True:
        try:
            return await attempt()
        except RequestRefused as refusal:
            wait = refusal.retry_after
            if refusal.status not in RETRIED or wait is None:
                raise
            now = clock.seconds()
            if now + wait > deadline:
                if not waited:
                    raise
                raise RequestRefused(
                    f"{refusal.sentence} (Gave up after waiting {waited:.0f} s.)",
                    refusal.status, refusal.server_message, wait,
                ) from refusal
            delay = min(wait * (1.0 + jitter()), deadline - now)
            note(waiting_line(refusal, delay))
            await task.deferLater(clock, delay, lambda: None)
            waited += delay
