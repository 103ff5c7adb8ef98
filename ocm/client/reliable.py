"""
The bookkeeping behind "every line arrives exactly once" (PROTOCOL 1.1 §4a),
without I/O: callers pass the time in, send what these objects hand out, and
feed back what arrived. L{ChatSession} drives them on the reactor's clock;
tests drive them on a number.

- L{RoundTrip}: the retransmission timeout from measured round trips
  (RFC 6298's estimator, Karn's rule: no sample from a retransmitted line).
- L{Outbox}: lines sent with SEND until their ECHO comes back or they are
  given up, L{IN_FLIGHT} at a time (at most L{SEND_WINDOW}).
- L{Sequencer}: messages shown once each, in seq order; the seqs that are
  missing, when to ask HISTORY for them, and when to call them lost.
- L{TailProbe}: when to ask whether the room went on after the last message
  we saw (a lost last message leaves no gap to notice).
- L{Roster} (1.2): who is in the room, who hosts it and who is muted, from
  COMPLETE and the numbered events shown in order.
- L{Liveness} (1.2): when to send a HEARTBEAT, and whether the server has
  stopped answering (or is back).

Every structure is bounded: the outbox by its window (and the caller's
queue), the sequencer by L{MAX_SPAN} seqs.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, Iterable, TypeVar, Union

from ocm.wire.datagram import EventKind
from ocm.wire.names import name_key

# Retransmission timeouts, seconds. The floor keeps a loopback round trip of
# a millisecond from retransmitting on scheduling noise; the backoff cap keeps
# a line retried often enough to make it through heavy loss in GIVE_UP.
INITIAL_RTO = 0.5
MIN_RTO = 0.2
MAX_RTO = 3.0
BACKOFF_CAP = 1.0
# A line with no ECHO this long after it first went out is not delivered.
GIVE_UP = 10.0
# The server remembers 64 msg_ids below its highest (PROTOCOL §2): a line
# further behind than that would be refused, so never more are in flight.
SEND_WINDOW = 64
# But the server numbers lines as they arrive, so with two in flight a lost
# first one would be shown after the second. One at a time keeps a member's
# lines in the order typed, at one round trip a line: below the pace of
# SEND_RATE on any path under 100 ms.
IN_FLIGHT = 1
# Given-up lines remembered, so a late ECHO still shows the line.
LATE_MEMORY = 64

# Gap repair: wait this long for late datagrams before asking HISTORY, then
# ask up to HISTORY_TRIES times (backing off as sends do) before a gap is
# shown as lost.
REORDER_WAIT = 0.15
HISTORY_TRIES = 8
# The server answers at most 100 messages per HISTORY (PROTOCOL §2).
MAX_RANGE = 100
# Seqs held back or tracked at once; a jump further ahead than this gives
# the oldest missing seqs up.
MAX_SPAN = 1024

# Tail probes after the last message (seconds after it, then after each
# other), and how many seqs past the last known one each probe asks for.
PROBE_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)
PROBE_SPAN = 10


class RoundTrip:
    """Smoothed round trip and its variation; L{rto} is the base timeout."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO

    def sample(self, rtt: float) -> None:
        rtt = max(0.0, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def timeout(self, attempt: int) -> float:
        """How long to wait after the C{attempt}th try (1, 2, ...): doubling, capped."""
        cap = max(BACKOFF_CAP, self.rto)
        return min(cap, self.rto * 2 ** (attempt - 1))


@dataclass(frozen=True)
class Order:
    """A moderation command (1.2 COMMAND), sent and retried like a line."""

    op: str
    name: str
    reason: str = ""


# What the outbox carries: a chat line, or a command.
Item = Union[str, Order]


@dataclass
class Line:
    """One line (or command) in flight."""

    msg_id: int
    text: Item
    first_sent: float
    attempts: int
    due: float  # when to send it again


class Outbox:
    """
    Lines to send with SEND. L{take} hands out the next datagram to send
    (a retransmission that is due before a new line), L{acknowledge} takes
    an ECHO, L{give_ups} returns lines out of time.
    """

    def __init__(self, rtt: RoundTrip, give_up: float = GIVE_UP, window: int = IN_FLIGHT) -> None:
        if not 1 <= window <= SEND_WINDOW:
            raise ValueError(f"window {window} is not in 1..{SEND_WINDOW}")
        self.rtt = rtt
        self.give_up = give_up
        self.window = window
        self.queue: deque[Item] = deque()
        self.flight: OrderedDict[int, Line] = OrderedDict()  # by msg_id
        self.next_id = 1
        self.delivered = 0
        self.failed = 0
        self.refused = 0
        self._late: OrderedDict[int, Item] = OrderedDict()

    def add(self, text: Item) -> None:
        self.queue.append(text)

    @property
    def settled(self) -> bool:
        """Every line added was echoed or given up."""
        return not self.queue and not self.flight

    def _may_open(self) -> bool:
        if not self.queue:
            return False
        if not self.flight:
            return True
        oldest = next(iter(self.flight))
        return self.next_id - oldest < self.window

    def ready(self, now: float) -> bool:
        """Whether L{take} would hand something out now."""
        return self._may_open() or any(line.due <= now for line in self.flight.values())

    def take(self, now: float) -> Line | None:
        """The next SEND to put on the wire now, counted as sent; or None."""
        due = [line for line in self.flight.values() if line.due <= now]
        if due:
            line = min(due, key=lambda l: l.due)
        elif self._may_open():
            line = Line(self.next_id, self.queue.popleft(), now, 0, now)
            self.next_id += 1
            self.flight[line.msg_id] = line
        else:
            return None
        line.attempts += 1
        line.due = now + self.rtt.timeout(line.attempts)
        return line

    def acknowledge(self, msg_id: int, now: float) -> tuple[Item, bool] | None:
        """
        An ECHO for C{msg_id}: its text and whether it had been given up;
        None for one already acknowledged (a duplicate ECHO) or never sent.
        """
        line = self.flight.pop(msg_id, None)
        if line is not None:
            if line.attempts == 1:
                self.rtt.sample(now - line.first_sent)
            self.delivered += 1
            return line.text, False
        text = self._late.pop(msg_id, None)
        if text is not None:
            self.failed -= 1
            self.delivered += 1
            return text, True
        return None

    def refuse(self, msg_id: int, now: float) -> Item | None:
        """
        REFUSED (1.2) for C{msg_id}: the server answered, and said no. Its
        line or command, settled (neither delivered nor failed); None for a
        repeated REFUSED.
        """
        line = self.flight.pop(msg_id, None)
        if line is not None:
            if line.attempts == 1:
                self.rtt.sample(now - line.first_sent)
            self.refused += 1
            return line.text
        text = self._late.pop(msg_id, None)
        if text is not None:
            self.failed -= 1
            self.refused += 1
        return text

    def give_ups(self, now: float) -> list[Line]:
        """Lines whose time ran out, removed and counted as failed."""
        out = [line for line in self.flight.values() if now - line.first_sent >= self.give_up]
        for line in out:
            self._forget(line)
        return out

    def _forget(self, line: Line) -> None:
        del self.flight[line.msg_id]
        self.failed += 1
        self._late[line.msg_id] = line.text
        while len(self._late) > LATE_MEMORY:
            self._late.popitem(last=False)

    def unsettled(self) -> list[Item]:
        """Everything not echoed yet, in the order it was said (kept across a rejoin)."""
        return [line.text for line in self.flight.values()] + list(self.queue)

    def waiting_since(self) -> float | None:
        """When the oldest line still waiting for its ECHO first went out."""
        return min((line.first_sent for line in self.flight.values()), default=None)

    def abandon(self) -> list[Item]:
        """Give up on everything, sent or not (the room closed, the path is dead)."""
        lines = [line.text for line in self.flight.values()] + list(self.queue)
        for line in list(self.flight.values()):
            self._forget(line)
        self.failed += len(self.queue)
        self.queue.clear()
        return lines

    def deadline(self) -> float | None:
        """The next time something falls due (a retransmission or a give-up)."""
        times = [min(line.due, line.first_sent + self.give_up) for line in self.flight.values()]
        return min(times) if times else None


T = TypeVar("T")


@dataclass(frozen=True)
class Shown(Generic[T]):
    """An item to show now: C{item} is a message, or None for a lost run."""

    seq: int  # the first seq of the run for a lost run
    item: T | None
    earlier: bool  # before the join: part of the backlog
    lost: int = 0  # how many seqs the lost run covers


@dataclass
class _Ask:
    tries: int
    at: float  # when to ask (again), or to give up after the last try


_LOST = object()  # a missing seq given up (shown as a gap)
_SKIPPED = object()  # a backlog seq the room no longer keeps (not shown)


class Sequencer(Generic[T]):
    """
    Seqs from C{first} on, each shown once and in order. A message above a
    missing seq is held back until the missing one comes, is expired by the
    server, or is given up after L{HISTORY_TRIES} HISTORY requests.

    Seqs up to C{backlog_end} are the backlog (the room's messages before
    the join): asked for at once, shown as earlier messages, and, when the
    room no longer keeps them, skipped without a gap line.
    """

    def __init__(self, first: int, backlog_end: int, now: float, rtt: RoundTrip,
                 reorder_wait: float = REORDER_WAIT, tries: int = HISTORY_TRIES) -> None:
        self.next_seq = max(1, first)
        self.backlog_end = backlog_end
        self.top = self.next_seq - 1  # the highest seq known to exist
        self.rtt = rtt
        self.reorder_wait = reorder_wait
        self.tries = tries
        self.held: dict[int, object] = {}
        self.asks: dict[int, _Ask] = {}
        self.duplicates = 0
        self._out: list[Shown[T]] = []
        if backlog_end >= self.next_seq:
            self._extend(backlog_end, now, wait=0.0)

    # -- what arrives --------------------------------------------------------

    def receive(self, seq: int, item: T, now: float) -> bool:
        """A message (live, HISTORY or our own ECHO); False for a duplicate."""
        if seq < self.next_seq or seq in self.held:
            self.duplicates += 1
            return False
        if seq > self.top:
            self._extend(seq, now, wait=self.reorder_wait)
        self.asks.pop(seq, None)
        self.held[seq] = item
        self._flush()
        return True

    def known(self, seq: int, now: float) -> None:
        """
        (1.2) The room has reached C{seq} (a PONG, a COMMAND's ECHO): the
        seqs up to it that have not come are missing, and repaired as gaps.
        """
        if seq > self.top:
            self._extend(seq, now, wait=self.reorder_wait)

    def expired(self, oldest: int) -> None:
        """EXPIRED: the server no longer keeps the seqs below C{oldest}."""
        for seq in [s for s in self.asks if s < oldest]:
            del self.asks[seq]
            self.held[seq] = _SKIPPED if seq <= self.backlog_end else _LOST
        self._flush()

    def _extend(self, seq: int, now: float, wait: float) -> None:
        """Seqs up to C{seq} exist: those not here yet are missing."""
        if seq - self.next_seq >= MAX_SPAN:
            # Too far ahead to track: what lies below the span is given up,
            # the seqs we never heard of as one run.
            floor = seq - MAX_SPAN + 1
            for s in range(self.next_seq, self.top + 1):
                if s not in self.held:
                    self.asks.pop(s, None)
                    self.held[s] = _LOST
            self._flush()  # now next_seq == top + 1
            if floor > self.next_seq:
                self._lose(self.next_seq, floor - self.next_seq)
                self.next_seq = floor
                self.top = floor - 1
        for s in range(self.top + 1, seq + 1):
            if s not in self.held:
                self.asks[s] = _Ask(0, now + wait)
        self.top = seq

    # -- what to do ----------------------------------------------------------

    def poll(self, now: float, budget: int) -> list[tuple[int, int]]:
        """
        Give up seqs out of tries, and return up to C{budget} HISTORY ranges
        to ask for now (each counted as a try).
        """
        gone = [s for s, a in self.asks.items() if a.tries >= self.tries and a.at <= now]
        for s in gone:
            del self.asks[s]
            self.held[s] = _LOST
        if gone:
            self._flush()
        due = sorted(s for s, a in self.asks.items() if a.tries < self.tries and a.at <= now)
        ranges: list[tuple[int, int]] = []
        for s in due:
            if ranges and s == ranges[-1][1] + 1 and s - ranges[-1][0] < MAX_RANGE:
                ranges[-1] = (ranges[-1][0], s)
            elif len(ranges) < budget:
                ranges.append((s, s))
            else:
                break
        for first, last in ranges:
            for s in range(first, last + 1):
                ask = self.asks[s]
                ask.tries += 1
                ask.at = now + self.rtt.timeout(ask.tries)
        return ranges

    def deadline(self) -> float | None:
        return min((a.at for a in self.asks.values()), default=None)

    @property
    def idle(self) -> bool:
        """Nothing missing, nothing held back."""
        return not self.asks and not self.held

    def shown(self) -> list[Shown[T]]:
        """What became showable since the last call, in seq order."""
        out, self._out = self._out, []
        return out

    def flush_all(self) -> list[Shown[T]]:
        """At the end: show what is held, and what is still missing as lost."""
        for seq in list(self.asks):
            del self.asks[seq]
            self.held[seq] = _SKIPPED if seq <= self.backlog_end else _LOST
        self._flush()
        return self.shown()

    def _flush(self) -> None:
        while self.next_seq in self.held:
            seq = self.next_seq
            item = self.held.pop(seq)
            self.next_seq += 1
            earlier = seq <= self.backlog_end
            if item is _SKIPPED:
                continue
            if item is _LOST:
                self._lose(seq, 1)
                continue
            self._out.append(Shown(seq, item, earlier))  # type: ignore[arg-type]

    def _lose(self, seq: int, count: int) -> None:
        """A run of C{count} lost seqs from C{seq}: one gap line, merged with the one before."""
        earlier = seq + count - 1 <= self.backlog_end
        last = self._out[-1] if self._out else None
        if last is not None and last.item is None and last.seq + last.lost == seq and last.earlier == earlier:
            self._out[-1] = Shown(last.seq, None, earlier, last.lost + count)
        else:
            self._out.append(Shown(seq, None, earlier, count))



class TailProbe:
    """
    A message that is the last for a while leaves no later seq to reveal its
    loss. After each new message (or our join), ask for the seqs past the
    last known one at L{PROBE_DELAYS}; an empty answer costs one datagram.
    """

    def __init__(self, now: float, delays: tuple[float, ...] = PROBE_DELAYS) -> None:
        self.delays = delays
        self.touch(now)

    def touch(self, now: float) -> None:
        self._step = 0
        self.at: float | None = now + self.delays[0] if self.delays else None

    def due(self, now: float) -> bool:
        return self.at is not None and self.at <= now

    def fired(self, now: float) -> None:
        self._step += 1
        self.at = now + self.delays[self._step] if self._step < len(self.delays) else None


class Roster:
    """
    (1.2) The room's members in the order they came, its host and who is
    muted: from COMPLETE, then from each numbered event as it is shown (in
    seq order, once), so after repair it is the server's list.
    """

    def __init__(self, members: Iterable[str], host: str | None, muted: Iterable[str] = ()) -> None:
        self.members: list[str] = []
        for m in members:
            self._add(m)
        self.host = host
        self._muted = {name_key(m) for m in muted}

    def _add(self, name: str) -> None:
        if all(name_key(m) != name_key(name) for m in self.members):
            self.members.append(name)

    def _drop(self, name: str) -> None:
        key = name_key(name)
        self.members = [m for m in self.members if name_key(m) != key]
        self._muted.discard(key)
        if self.host is not None and name_key(self.host) == key:
            self.host = None

    def is_host(self, name: str) -> bool:
        return self.host is not None and name_key(self.host) == name_key(name)

    def is_muted(self, name: str) -> bool:
        return name_key(name) in self._muted

    def has(self, name: str) -> bool:
        return any(name_key(m) == name_key(name) for m in self.members)

    def apply(self, kind: int, name: str) -> None:
        """One event about C{name}, in the room's order."""
        if kind == EventKind.JOINED:
            self._add(name)
        elif kind in (EventKind.LEFT, EventKind.TIMED_OUT, EventKind.KICKED, EventKind.BANNED):
            self._drop(name)
        elif kind == EventKind.MUTED:
            if self.has(name):
                self._muted.add(name_key(name))
        elif kind == EventKind.UNMUTED:
            self._muted.discard(name_key(name))
        elif kind == EventKind.HOST:
            self._add(name)
            self.host = next(m for m in self.members if name_key(m) == name_key(name))
        elif kind == EventKind.CLOSED:
            self.members = []
            self._muted.clear()
            self.host = None


# Liveness (1.2, PROTOCOL §4a): a HEARTBEAT not answered by a PONG in this
# long is sent again (doubling up to the cap), so one lost datagram is not
# taken for a dead server; while the server is silent, one every SILENT_BEAT.
BEAT_RETRY = 1.0
SILENT_BEAT = 1.0
# Nothing from the server this long while a line waits for its ECHO: silent.
LINE_SILENCE = 5.0


class Liveness:
    """
    Whether the server is there: anything authentic from it counts. A
    HEARTBEAT goes every C{interval}, sent again sooner while unanswered;
    the server is silent after two intervals without a word, or
    L{LINE_SILENCE} seconds while a line waits for its ECHO; back at the
    next word. L{check} and L{heard} report each change once.
    """

    def __init__(self, now: float, interval: float, line_silence: float = LINE_SILENCE) -> None:
        self.interval = interval
        self.line_silence = line_silence
        self.last_heard = now
        self.silent = False
        self.last_beat: float | None = None  # none yet: the first goes at once
        self._tries = 0  # heartbeats since we last heard anything

    @property
    def next_beat(self) -> float:
        if self.last_beat is None:
            return float("-inf")
        if self.silent:
            return self.last_beat + SILENT_BEAT
        if self._tries:
            return self.last_beat + min(self.interval, BEAT_RETRY * 2 ** (self._tries - 1))
        return self.last_beat + self.interval

    def heard(self, now: float) -> bool:
        """An authentic datagram from the server; True if it was silent (so is back)."""
        self.last_heard = now
        self._tries = 0
        was, self.silent = self.silent, False
        return was

    def beat_due(self, now: float) -> bool:
        return now >= self.next_beat

    def beat_sent(self, now: float) -> None:
        self.last_beat = now
        self._tries += 1

    def silence_at(self, waiting_since: float | None) -> float:
        """When the server counts as silent, from what was heard and the oldest waiting line."""
        at = self.last_heard + 2 * self.interval
        if waiting_since is not None:
            at = min(at, max(self.last_heard, waiting_since) + self.line_silence)
        return at

    def check(self, now: float, waiting_since: float | None) -> bool:
        """True once, when the server turns silent."""
        if self.silent or now < self.silence_at(waiting_since):
            return False
        self.silent = True
        return True

    def deadline(self, waiting_since: float | None) -> float:
        if self.silent:
            return self.next_beat
        return min(self.next_beat, self.silence_at(waiting_since))
