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
from dataclasses import dataclass
from typing import Any, Protocol as Interface

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from ocm.client.errors import ClientError
from ocm.client.tcrp import Reply
from ocm.datagram import (
    HEARTBEAT,
    KEY_SIZE,
    LEAVE,
    DatagramError,
    Event,
    EventKind,
    chat,
    open_server,
    seal_client,
)
from ocm.limits import TokenBucket
from ocm.names import name_key
from ocm.replay import ReplayWindow

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
        )


class SessionListener(Interface):
    def event_received(self, event: Event) -> None:
        """A fresh, authentic event (replays and forgeries never get here)."""

    def messages_lost(self, count: int) -> None:
        """MESSAGE seq jumped: C{count} messages never arrived."""

    def server_unreachable(self) -> None:
        """The server's UDP port refused a datagram (ICMP port unreachable)."""


class ChatSession(DatagramProtocol):
    """
    One member's datagrams. Connected to the server's address, so the kernel
    drops datagrams from anyone else and reports an unreachable port.
    """

    noisy = False

    def __init__(self, membership: Membership, listener: SessionListener, clock: IReactorTime) -> None:
        self.membership = membership
        self.listener = listener
        self.clock = clock
        self.aead = AESGCM(membership.key)
        self.room_bytes = membership.room.encode("utf-8")
        self.members = list(membership.members)
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

    @property
    def heartbeat_interval(self) -> float:
        return self.membership.timeout / 3

    # -- life ---------------------------------------------------------------

    def startProtocol(self) -> None:
        self.transport.connect(self.membership.server_ip, self.membership.udp_port)
        # The first heartbeat, at once, registers our address with the server.
        self._heartbeat.start(self.heartbeat_interval, now=True)

    def stopProtocol(self) -> None:
        self._stop_sending()

    def _stop_sending(self) -> None:
        self._stop_heartbeat()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        self._drained()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()

    def leave(self) -> None:
        """Tell the server we go (once); the caller then closes the port."""
        if self.left or self.closed:
            return
        self.left = True
        self._stop_sending()
        self._send(LEAVE)

    # -- sending ------------------------------------------------------------

    def say(self, text: str) -> None:
        """Send C{text} now, or as soon as the pace allows, in order."""
        self._outbox.append(text)
        if self._pump_call is None:
            self._pump()

    @property
    def queued(self) -> int:
        return len(self._outbox)

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
        data = seal_client(self.aead, self.room_bytes, self.membership.token, self.counter, inner)
        try:
            self.transport.write(data)
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

    # -- receiving ----------------------------------------------------------

    def datagramReceived(self, data: bytes, address: Any) -> None:
        try:
            counter, event = open_server(self.aead, data)
        except DatagramError:
            self.dropped += 1
            return
        if self.window.check(counter):
            self.dropped += 1
            return
        self.window.accept(counter)
        kind = event.kind
        if kind == EventKind.MESSAGE:
            self._sequence(event.seq)
            if name_key(event.name) == name_key(self.membership.name):
                self.echoes += 1
                self._check_echoes()
        elif kind == EventKind.JOINED:
            if all(name_key(m) != name_key(event.name) for m in self.members):
                self.members.append(event.name)
        elif kind in (EventKind.LEFT, EventKind.TIMED_OUT):
            self.members = [m for m in self.members if name_key(m) != name_key(event.name)]
        elif kind == EventKind.CLOSED:
            self.closed = True
            self._stop_sending()
        self.listener.event_received(event)

    def _sequence(self, seq: int) -> None:
        last = self.last_seq
        if last is not None and seq > last + 1:
            self.listener.messages_lost(seq - last - 1)
        if last is None or seq > last:
            self.last_seq = seq

    def connectionRefused(self) -> None:
        self.listener.server_unreachable()

    # -- echoes -------------------------------------------------------------

    def wait_for_echoes(self, timeout: float) -> defer.Deferred[None]:
        """
        Fire once all queued lines were sent and the server echoed all we
        said, or C{timeout} seconds after the last line went out.
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
