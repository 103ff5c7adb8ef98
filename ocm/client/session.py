"""
The UDP side of one membership (PROTOCOL §2–§4): seal what the member says,
open what the server sends, keep the member alive with heartbeats.

It decides nothing about display: accepted events go to a listener, which
the console application implements (and tests replace).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol as Interface

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from ocm.client.errors import ClientError
from ocm.client.loss import Loss
from ocm.client.reliable import (
    GIVE_UP,
    PROBE_SPAN,
    Item,
    Liveness,
    Order,
    Outbox,
    Roster,
    RoundTrip,
    Sequencer,
    Shown,
    TailProbe,
)
from ocm.client.tcrp import Reply
from ocm.wire.datagram import (
    HEARTBEAT,
    KEY_SIZE,
    LEAVE,
    DatagramError,
    Event,
    EventKind,
    NUMBERED,
    chat,
    command,
    history,
    open_server,
    seal_client,
    send,
)
from ocm.server.limits import TokenBucket
from ocm.wire.names import name_key, name_problem
from ocm.server.replay import ReplayWindow

# Chat we send is paced to half the daemon's default flood limit (20 a
# second, bursts of 40), so a script piping many lines loses none of them.
SEND_RATE = 10.0
SEND_BURST = 20


@dataclass(frozen=True)
class Membership:
    """What a CREATE or JOIN granted, checked before any of it is used."""

    room: str
    name: str
    token: bytes
    key: bytes
    server_ip: str
    udp_port: int
    host: bool
    members: tuple[str, ...]
    timeout: float
    # 1.1: SEND/ECHO and HISTORY may be used; the room's last seq at the
    # join, and how many messages it keeps for HISTORY.
    reliable: bool = False
    seq: int = 0
    history: int = 0
    # 1.2: one numbering of every event (seq and history count events),
    # PONG, COMMAND; who hosts and who is muted at the join.
    numbered: bool = False
    host_name: str | None = None
    muted: tuple[str, ...] = ()

    @classmethod
    def from_reply(cls, room: str, name: str, reply: Reply) -> Membership:
        body = reply.body

        def bad(field: str) -> ClientError:
            return ClientError(f"The server's answer was not understood (its {field!r} is invalid).")

        token = body.get("token")
        if not isinstance(token, str) or not token or not token.isascii() or len(token) > 255:
            raise bad("token")
        try:
            key = base64.b64decode(body.get("key", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise bad("key")
        if len(key) != KEY_SIZE:
            raise bad("key")
        port = body.get("udp_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise bad("udp_port")
        timeout = body.get("timeout")
        if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                or not math.isfinite(timeout) or timeout <= 0):
            raise bad("timeout")
        members = body.get("members", [name])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise bad("members")
        version = _version(body.get("version"))
        reliable = version >= (1, 1)
        numbered = version >= (1, 2)
        host_name: str | None = name if body.get("host") is True else None
        muted: list[str] = []
        if numbered:
            given, muted = body.get("host_name", host_name or ""), body.get("muted", [])
            if not isinstance(given, str):
                raise bad("host_name")
            host_name = given or None
            if not isinstance(muted, list) or not all(isinstance(m, str) for m in muted):
                raise bad("muted")
        seq = history = 0
        if reliable:
            seq, history = body.get("seq"), body.get("history", 0)
            if not _count(seq):
                raise bad("seq")
            if not _count(history):
                raise bad("history")
            created = body.get("room")
            # The room's spelling as created, if it is the room we asked for.
            if isinstance(created, str) and not name_problem(created) and name_key(created) == name_key(room):
                room = created
        return cls(
            room=room,
            name=name,
            token=token.encode("ascii"),
            key=key,
            server_ip=reply.peer,
            udp_port=port,
            host=body.get("host") is True,
            members=tuple(members),
            timeout=float(timeout),
            reliable=reliable,
            seq=seq,
            history=history,
            numbered=numbered,
            host_name=host_name,
            muted=tuple(muted),
        )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _version(value: object) -> tuple[int, ...]:
    """COMPLETE's "version" as numbers; absent or unreadable is version 1."""
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split("."))
        except ValueError:
            pass
    return (1,)


class SessionListener(Interface):
    def event_received(self, event: Event) -> None:
        """
        A fresh, authentic event to show (replays and forgeries never get
        here). With 1.1, MESSAGEs come in seq order, each once, our own from
        its ECHO; the backlog's come as kind HISTORY.
        """

    def messages_lost(self, count: int) -> None:
        """C{count} messages never arrived (1.1: and could not be repaired)."""

    def earlier_done(self) -> None:
        """1.1: the backlog (messages before the join) is all shown."""

    def line_failed(self, text: Item) -> None:
        """1.1: no ECHO for C{text} (a line, or a 1.2 L{Order}) in time: it was not delivered."""

    def line_late(self, text: str) -> None:
        """1.1: an ECHO came for C{text} after all, after it was given up."""

    def server_silent(self, count: int) -> None:
        """1.1: nothing from the server while a line was retried; C{count} more lines dropped."""

    def server_unreachable(self) -> None:
        """The server's UDP port refused a datagram (ICMP port unreachable)."""

    def server_not_answering(self) -> None:
        """1.2: nothing from the server for two heartbeats, or 5 s while a line waits."""

    def server_back(self) -> None:
        """1.2: the server answers again after L{server_not_answering}."""

    def server_restarting(self) -> None:
        """1.2: RESTARTING: the server stops for a moment and keeps the room."""

    def line_refused(self, item: Item, why: str) -> None:
        """1.2: REFUSED: C{item} (a line, or an L{Order}) was not done, because C{why}."""


class ChatSession(DatagramProtocol):
    """
    One member's datagrams. Connected to the server's address, so the kernel
    drops datagrams from anyone else and reports an unreachable port.

    Against a 1.1 server (L{Membership.reliable}) lines go out as SEND and
    are retried until echoed (L{Outbox}), messages are shown once each in seq
    order with gaps repaired by HISTORY (L{Sequencer}), and C{backlog} of the
    room's messages before the join are fetched first. Against a version 1
    server lines go out as CHAT, and a gap is shown as soon as it is seen.
    """

    noisy = False

    def __init__(self, membership: Membership, listener: SessionListener, clock: IReactorTime,
                 backlog: int = 0, loss: Loss | None = None) -> None:
        self.membership = membership
        self.listener = listener
        self.clock = clock
        self.loss = loss
        self.aead = AESGCM(membership.key)
        self.room_bytes = membership.room.encode("utf-8")
        self.my_key = name_key(membership.name)
        self.roster = Roster(membership.members, membership.host_name, membership.muted)
        self.counter = 0  # our nonce counter; the first datagram uses 1
        self.window = ReplayWindow()  # on the server's counters
        self.last_seq: int | None = None
        self.chats_sent = 0
        self.echoes = 0
        self.dropped = 0
        self.closed = False
        self.left = False
        self._sent_since_beat = False
        self._echo_waiters: list[defer.Deferred[None]] = []
        self._outbox: list[str] = []
        self._bucket = TokenBucket(SEND_RATE, SEND_BURST, clock.seconds())
        self._pump_call: Any = None
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        # 1.1 only.
        self.reliable = membership.reliable
        self.numbered = membership.numbered
        now = clock.seconds()
        self.rtt = RoundTrip()
        # 1.2: a typed line is kept while the server may come back (its
        # timeout), not only GIVE_UP seconds.
        self.outbox = Outbox(self.rtt, give_up=max(GIVE_UP, membership.timeout) if self.numbered else GIVE_UP)
        self.backlog = max(0, backlog)
        if self.numbered:
            # The backlog counts messages, the numbering events: ask for
            # more, show the last `backlog` messages among them.
            want = 2 * self.backlog + 10 if self.backlog else 0
        else:
            want = self.backlog
        count = min(want, membership.history, membership.seq) if self.reliable else 0
        self.sequencer: Sequencer[Event] = Sequencer(membership.seq - count + 1, membership.seq, now, self.rtt)
        self.probe = TailProbe(now)
        self.last_heard = now
        self.liveness = Liveness(now, self.heartbeat_interval)
        self.restarting = False
        self.retired = False
        # 1.2: where datagrams go (and must come from); None when connected.
        self._server: tuple[str, int] | None = None
        self._earlier: list[Event] = []
        self._earlier_open = count > 0
        self._wake: Any = None
        self._settle_waiters: list[defer.Deferred[None]] = []
        self._serving = False
        self._queue_low: tuple[int, Callable[[], None]] | None = None

    @property
    def heartbeat_interval(self) -> float:
        return self.membership.timeout / 3

    @property
    def members(self) -> list[str]:
        return self.roster.members

    @property
    def is_host(self) -> bool:
        """Whether we host the room now (1.2: it may have been handed to us)."""
        if self.numbered:
            return self.roster.is_host(self.membership.name)
        return self.membership.host

    # -- life ---------------------------------------------------------------

    def startProtocol(self) -> None:
        if self.numbered:
            # 1.2: not connected. On a connected socket the kernel reports
            # the ICMP of a port that is gone, and the reactor then closes
            # ours; a 1.2 client waits for the server through a restart or a
            # crash, so it sends to the address and checks what comes back.
            self._server = (self.membership.server_ip, self.membership.udp_port)
            self._service()  # the first heartbeat, and the backlog's HISTORY
            return
        self.transport.connect(self.membership.server_ip, self.membership.udp_port)
        # The first heartbeat, at once, registers our address with the server.
        self._heartbeat.start(self.heartbeat_interval, now=True)
        if self.reliable:
            self._service()  # the backlog's HISTORY

    def stopProtocol(self) -> None:
        self._stop_sending()

    def _stop_sending(self) -> None:
        self._stop_heartbeat()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        self._drained()
        self._settled()
        self._check_queue()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()

    def retire(self) -> list[Item]:
        """
        1.2: this membership is gone without a word from the server (the
        room was lost): stop, say nothing to it, and hand back what was
        said and not echoed, in order, for the next membership.
        """
        kept = self.outbox.unsettled()
        self.outbox.flight.clear()
        self.outbox.queue.clear()
        self.retired = True
        self.closed = True
        self._stop_sending()
        return kept

    def leave(self) -> None:
        """Tell the server we go (once); the caller then closes the port."""
        if self.left or self.closed:
            return
        self.left = True
        if self.reliable:
            self.outbox.abandon()  # unconfirmed lines count as not delivered
            self._show(self.sequencer.flush_all())
        self._stop_sending()
        self._send(LEAVE)

    @property
    def unconfirmed(self) -> int:
        """Lines said that are still on their way (not echoed, not given up)."""
        if self.reliable:
            return len(self.outbox.queue) + len(self.outbox.flight)
        return max(0, self.chats_sent - self.echoes) + len(self._outbox)

    @property
    def undelivered(self) -> int:
        """Lines said that were not confirmed delivered (so far)."""
        return self.unconfirmed + (self.outbox.failed if self.reliable else 0)

    # -- sending ------------------------------------------------------------

    def order(self, op: str, name: str, reason: str = "") -> None:
        """1.2: a moderation COMMAND, sent and retried in turn with the lines."""
        self.outbox.add(Order(op, name, reason))
        self._service()

    def say(self, text: str) -> None:
        """Send C{text} now, or as soon as the pace allows, in order."""
        if self.reliable:
            self.outbox.add(text)
            self._service()
            return
        self._outbox.append(text)
        if self._pump_call is None:
            self._pump()

    @property
    def queued(self) -> int:
        """Lines said and not sent yet."""
        return len(self.outbox.queue) if self.reliable else len(self._outbox)

    def when_queued_below(self, count: int, callback: Callable[[], None]) -> None:
        """Call C{callback} once, when fewer than C{count} lines wait (or we stop)."""
        self._queue_low = (count, callback)
        self._check_queue()

    def _check_queue(self) -> None:
        if self._queue_low is None:
            return
        count, callback = self._queue_low
        if self.queued < count or self.left or self.closed:
            self._queue_low = None
            callback()

    def _pump(self) -> None:
        self._pump_call = None
        while self._outbox and not self.left and not self.closed:
            if not self._bucket.take(self.clock.seconds()):
                # At least a tick: rounding can leave a token a hair short.
                wait = max(0.01, self._bucket.wait(self.clock.seconds()))
                self._pump_call = self.clock.callLater(wait, self._pump)
                return
            self.chats_sent += 1
            self._send(chat(self._outbox.pop(0)))
            self._check_queue()
        self._drained()

    def _drained(self) -> None:
        """Nothing more will be sent from the outbox: release its waiters."""
        waiters, self._drain_waiters = self._drain_waiters, []
        for d in waiters:
            d.callback(None)

    def _send(self, inner: bytes) -> None:
        if self.transport is None:
            return
        self.counter += 1
        self._sent_since_beat = True
        if self.loss is not None and self.loss.outgoing():
            return  # the test hook's lossy path
        data = seal_client(self.aead, self.room_bytes, self.membership.token, self.counter, inner)
        try:
            self.transport.write(data, self._server)
        except OSError:
            # A full buffer or a route that comes and goes: one datagram lost,
            # as UDP may lose any; the heartbeats carry on.
            pass

    def _beat(self) -> None:
        # Heartbeat only after a whole interval without sending anything, so
        # silence never reaches two thirds of the timeout.
        if self._sent_since_beat:
            self._sent_since_beat = False
            return
        self._send(HEARTBEAT)
        self._sent_since_beat = False

    # -- 1.1: one pass over what is due ---------------------------------------

    def _service(self) -> None:
        """
        Give up what ran out of time, show what became showable, send what is
        due as the pace allows (retransmissions and new lines, HISTORY
        requests, tail probes, in turn), and wake again when something next
        falls due.
        """
        if self._serving or self.transport is None:
            return
        self._serving = True
        try:
            self._serve(self.clock.seconds())
        finally:
            self._serving = False
        self._settled()

    def _serve(self, now: float) -> None:
        for line in self.outbox.give_ups(now):
            self.listener.line_failed(line.text)  # a line, or (1.2) an Order
            if self.last_heard < line.first_sent and not self.numbered:
                # Not a datagram from the server in all that time: the path
                # or the server is gone, and the rest would only wait as long.
                rest = self.outbox.abandon()
                if rest:
                    self.listener.server_silent(len(rest))
        sending = not self.left and not self.closed
        if sending and self.numbered:
            if self.liveness.beat_due(now):
                # Outside the pace: at most one an interval, more only while
                # unanswered, and the server answers each with a PONG.
                self._send(HEARTBEAT)
                self.liveness.beat_sent(now)
            if self.liveness.check(now, self.outbox.waiting_since()):
                self.listener.server_not_answering()
        while sending:
            sent = False
            if self._bucket.ready(now):
                line = self.outbox.take(now)
                if line is not None:
                    self._bucket.take(now)
                    item = line.text
                    if isinstance(item, Order):
                        self._send(command(line.msg_id, item.op, item.name, item.reason))
                    else:
                        self._send(send(line.msg_id, item))
                    sent = True
            if self._bucket.ready(now):
                for first, last in self.sequencer.poll(now, 1):
                    self._bucket.take(now)
                    self._send(history(first, last))
                    sent = True
            if not sent:
                break
        self.sequencer.poll(now, 0)  # gives up seqs out of tries
        if sending and self.probe.due(now) and self._bucket.ready(now):
            self._bucket.take(now)
            top = self.sequencer.top
            self._send(history(top + 1, top + PROBE_SPAN))
            self.probe.fired(now)
        self._show(self.sequencer.shown())
        self._check_queue()
        if not sending:
            return
        times = [t for t in (self.outbox.deadline(), self.sequencer.deadline(), self.probe.at) if t is not None]
        if self.numbered:
            times.append(max(now, self.liveness.deadline(self.outbox.waiting_since())))
        later = [t for t in times if t > now]
        if self.outbox.ready(now) or len(later) < len(times):
            # Due now but held back by the pace: at least a tick, as rounding
            # can leave a token a hair short.
            later.append(now + max(0.01, self._bucket.wait(now)))
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        if later:
            self._wake = self.clock.callLater(min(later) - now, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._service()

    def _show(self, shown: list[Shown[Event]]) -> None:
        if self.numbered:
            self._show_numbered(shown)
            return
        for s in shown:
            if self._earlier_open and not s.earlier:
                self._earlier_open = False
                self.listener.earlier_done()
            if s.item is None:
                self.listener.messages_lost(s.lost)
            else:
                kind = EventKind.HISTORY if s.earlier else EventKind.MESSAGE
                self.listener.event_received(replace(s.item, kind=kind))
        if self._earlier_open and self.sequencer.next_seq > self.sequencer.backlog_end:
            self._earlier_open = False
            self.listener.earlier_done()

    def _show_numbered(self, shown: list[Shown[Event]]) -> None:
        """
        1.2: events in the room's order. The backlog's messages are held
        until it ends, then its last C{backlog} are shown as earlier; its
        other events are history the COMPLETE's lists already hold. Every
        later event updates the roster before it is shown.
        """
        for s in shown:
            if s.earlier:
                if s.item is not None and s.item.kind == EventKind.MESSAGE:
                    self._earlier.append(s.item)
                continue
            self._end_earlier()
            if s.item is None:
                self.listener.messages_lost(s.lost)
                continue
            event = replace(s.item, resent=False)
            self.roster.apply(event.kind, event.name)
            if event.kind == EventKind.CLOSED or (
                event.kind in (EventKind.KICKED, EventKind.BANNED) and name_key(event.name) == self.my_key
            ):
                self.closed = True
                self.outbox.abandon()
            self.listener.event_received(event)
            if self.closed:
                return  # nothing after the end is shown
        if self._earlier_open and self.sequencer.next_seq > self.sequencer.backlog_end:
            self._end_earlier()

    def _end_earlier(self) -> None:
        if not self._earlier_open:
            return
        self._earlier_open = False
        earlier, self._earlier = self._earlier[-self.backlog:] if self.backlog else [], []
        for event in earlier:
            self.listener.event_received(replace(event, kind=EventKind.HISTORY, resent=False))
        self.listener.earlier_done()

    def settled(self) -> defer.Deferred[None]:
        """
        1.1: fire once every line said was echoed or given up and no seq is
        missing or held back (each bounded in time), or once we stop sending.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._settle_waiters.append(d)
        self._settled()
        return d

    def _settled(self) -> None:
        if not self._settle_waiters:
            return
        stopped = self.left or self.closed or self.transport is None
        if stopped or (self.outbox.settled and self.sequencer.idle):
            waiters, self._settle_waiters = self._settle_waiters, []
            for d in waiters:
                d.callback(None)

    # -- receiving ----------------------------------------------------------

    def datagramReceived(self, data: bytes, address: Any) -> None:
        if self._server is not None and tuple(address[:2]) != self._server:
            self.dropped += 1  # 1.2: not from the server (the socket is not connected)
            return
        if self.loss is not None and self.loss.incoming():
            return  # the test hook's lossy path
        try:
            counter, event = open_server(self.aead, data)
        except DatagramError:
            self.dropped += 1
            return
        if self.window.check(counter):
            self.dropped += 1
            return
        self.window.accept(counter)
        if self.numbered:
            self._received_numbered(event)
            return
        if self.reliable:
            self._received(event)
            return
        kind = event.kind
        if kind == EventKind.MESSAGE:
            self._sequence(event.seq)
            if name_key(event.name) == self.my_key:
                self.echoes += 1
                self._check_echoes()
        self._membership_event(event)
        self.listener.event_received(event)

    def _membership_event(self, event: Event) -> None:
        kind = event.kind
        if kind in (EventKind.JOINED, EventKind.LEFT, EventKind.TIMED_OUT):
            self.roster.apply(kind, event.name)
        elif kind == EventKind.CLOSED:
            self.closed = True
            self._stop_sending()

    def _received(self, event: Event) -> None:
        """1.1: an authentic event."""
        now = self.clock.seconds()
        self.last_heard = now
        kind = event.kind
        top = self.sequencer.top
        if kind in (EventKind.MESSAGE, EventKind.HISTORY):
            self.sequencer.receive(event.seq, event, now)
        elif kind == EventKind.ECHO:
            acked = self.outbox.acknowledge(event.msg_id, now)
            if acked is not None:
                text, late = acked
                if late:
                    self.listener.line_late(text)
                mine = Event(EventKind.MESSAGE, event.seq, event.time_ms, event.name or self.membership.name, text)
                self.sequencer.receive(event.seq, mine, now)
        elif kind == EventKind.EXPIRED:
            self.sequencer.expired(event.seq)
        else:
            if kind == EventKind.CLOSED:
                # What came before the room closed is shown before it closes.
                self._show(self.sequencer.flush_all())
                self.outbox.abandon()
            # The listener first: it learns the room closed before anyone
            # waiting for the lines to settle does.
            self.listener.event_received(event)
            self._membership_event(event)
        if self.sequencer.top > top:
            self.probe.touch(now)
        self._service()

    def _received_numbered(self, event: Event) -> None:
        """1.2: an authentic event; every numbered one goes through the sequencer."""
        if self.closed:
            return
        now = self.clock.seconds()
        self.last_heard = now
        if self.liveness.heard(now):
            self.restarting = False
            self.listener.server_back()
        kind = event.kind
        top = self.sequencer.top
        if kind in NUMBERED:
            self.sequencer.receive(event.seq, event, now)
            if kind == EventKind.CLOSED or (
                kind in (EventKind.KICKED, EventKind.BANNED) and name_key(event.name) == self.my_key
            ):
                # The membership is over: nothing more will be repaired, so
                # what came before is shown now, then this.
                self.outbox.abandon()
                self._show(self.sequencer.flush_all())
                self._stop_sending()
                self._settled()
                return
        elif kind == EventKind.ECHO:
            acked = self.outbox.acknowledge(event.msg_id, now)
            if acked is not None:
                item, late = acked
                if isinstance(item, Order):
                    self.sequencer.known(event.seq, now)  # the event itself comes, or is repaired
                else:
                    if late:
                        self.listener.line_late(item)
                    mine = Event(EventKind.MESSAGE, event.seq, event.time_ms,
                                 event.name or self.membership.name, item)
                    self.sequencer.receive(event.seq, mine, now)
        elif kind == EventKind.REFUSED:
            item = self.outbox.refuse(event.msg_id, now)
            if item is not None:
                self.listener.line_refused(item, event.text)
        elif kind == EventKind.EXPIRED:
            self.sequencer.expired(event.seq)
        elif kind == EventKind.PONG:
            self.sequencer.known(event.seq, now)
        elif kind == EventKind.RESTARTING:
            self.sequencer.known(event.seq, now)
            # Away until it answers again, which is then said.
            self.liveness.silent = True
            if not self.restarting:
                self.restarting = True
                self.listener.server_restarting()
        if self.sequencer.top > top:
            self.probe.touch(now)
        self._service()

    def _sequence(self, seq: int) -> None:
        last = self.last_seq
        if last is not None and seq > last + 1:
            self.listener.messages_lost(seq - last - 1)
        if last is None or seq > last:
            self.last_seq = seq

    def connectionRefused(self) -> None:
        if self.numbered:
            # 1.2: a port that refuses now may listen again in a moment (a
            # restart, a crash): the liveness timer tells the person.
            return
        self.listener.server_unreachable()

    # -- version 1: echoes ----------------------------------------------------

    def wait_for_echoes(self, timeout: float) -> defer.Deferred[None]:
        """
        Version 1: fire once all queued lines were sent and the server echoed
        all we said, or C{timeout} seconds after the last line went out.
        """
        done: defer.Deferred[None] = defer.Deferred()

        def echoes(_: object = None) -> None:
            self._echo_waiters.append(done)
            done.addTimeout(timeout, self.clock, onTimeoutCancel=lambda result, t: None)
            self._check_echoes()

        if self._outbox and not self.left and not self.closed:
            drained: defer.Deferred[None] = defer.Deferred()
            drained.addCallback(echoes)
            self._drain_waiters.append(drained)
        else:
            echoes()
        return done

    def _check_echoes(self) -> None:
        if self.echoes < self.chats_sent:
            return
        waiters, self._echo_waiters = self._echo_waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)
