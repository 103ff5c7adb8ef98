"""
PROTOCOL §4a's patience, on a fake clock: the client waits retry_after plus
a random fraction of it after a 429 or a momentary 503, says so, gives up
after about a minute, and treats a refusal without retry_after as before.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ocm.client.errors import RequestRefused
from ocm.client.retry import retrying
from ocm.client.tcrp import retry_after


class Server:
    """Answers each attempt with the next of C{answers} (a refusal or a value)."""

    def __init__(self, clock: Clock, *answers: object) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.tried_at: list[float] = []

    async def attempt(self) -> object:
        self.tried_at.append(self.clock.seconds())
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def busy(status: int = 429, after: float | None = 2.0, message: str = "too many requests from your address; slow down") -> RequestRefused:
    return RequestRefused("The server is refusing requests.", status, message, after)


class RetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.notes: list[str] = []

    def run_retrying(self, server: Server, jitter: float = 0.5) -> defer.Deferred:
        return defer.ensureDeferred(retrying(self.clock, server.attempt, self.notes.append, jitter=lambda: jitter))

    def test_waits_retry_after_plus_jitter_and_says_so(self) -> None:
        server = Server(self.clock, busy(), busy(503, 1.0, "hashing queue full"), "joined")
        d = self.run_retrying(server)
        self.assertNoResult(d)
        self.assertEqual(self.notes, ["The server refused for now (too many requests from your address; "
                                      "slow down); trying again in 3 s."])
        self.clock.advance(2.9)
        self.assertEqual(server.tried_at, [0])
        self.clock.advance(0.1)
        self.assertEqual(server.tried_at, [0, 3.0])
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d), "joined")
        self.assertEqual(server.tried_at, [0, 3.0, 4.5])
        self.assertEqual(len(self.notes), 2)

    def test_jitter_spreads_a_crowd(self) -> None:
        servers = [Server(self.clock, busy(after=1.0), "in") for _ in range(10)]
        ds = [self.run_retrying(s, jitter=i / 10) for i, s in enumerate(servers)]
        comebacks = sorted(round(call.getTime(), 6) for call in self.clock.getDelayedCalls())
        self.assertEqual(comebacks, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9])
        self.clock.advance(2)
        self.assertEqual([self.successResultOf(d) for d in ds], ["in"] * 10)

    def test_without_retry_after_refusals_are_final(self) -> None:
        for refusal in (busy(after=None), busy(503, None, "room full"), RequestRefused("Wrong password.", 401, "", 5)):
            server = Server(self.clock, refusal, "never")
            f = self.failureResultOf(self.run_retrying(server), RequestRefused)
            self.assertIs(f.value, refusal)
            self.assertEqual(server.tried_at, [0])
        self.assertEqual(self.notes, [])

    def test_gives_up_after_about_a_minute(self) -> None:
        server = Server(self.clock, *[busy(after=20.0)] * 10)
        d = self.run_retrying(server, jitter=0.25)
        self.clock.pump([1.0] * 120)
        f = self.failureResultOf(d, RequestRefused)
        # Waits of 25 s at 0 and 25; at 50 a wait of 20 would end past 60.
        self.assertEqual(server.tried_at, [0, 25.0, 50.0])
        self.assertEqual(f.value.status, 429)
        self.assertIn("Gave up after waiting 50 s", f.value.sentence)

    def test_a_long_retry_after_is_not_waited_for(self) -> None:
        server = Server(self.clock, busy(after=3600.0), "never")
        f = self.failureResultOf(self.run_retrying(server), RequestRefused)
        self.assertEqual(f.value.retry_after, 3600.0)
        self.assertEqual(self.notes, [])

    def test_last_wait_is_cut_to_the_minute(self) -> None:
        server = Server(self.clock, busy(after=45.0), "in")
        d = self.run_retrying(server, jitter=0.5)  # 67.5 s, cut to 60
        self.clock.pump([1.0] * 70)
        self.assertEqual(self.successResultOf(d), "in")
        self.assertEqual(server.tried_at, [0, 60.0])

    def test_cancel_stops_a_wait(self) -> None:
        server = Server(self.clock, busy(), "never")
        d = self.run_retrying(server)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(10)
        self.assertEqual(server.tried_at, [0])


class RetryAfterFieldTests(SynchronousTestCase):
    def test_only_a_positive_finite_number_counts(self) -> None:
        self.assertEqual(retry_after({"retry_after": 3}), 3.0)
        self.assertEqual(retry_after({"retry_after": 0.5}), 0.5)
        for bad in (None, True, "3", 0, -1, float("inf"), float("nan"), [3]):
            self.assertIsNone(retry_after({"retry_after": bad}), bad)
        self.assertIsNone(retry_after({}))
