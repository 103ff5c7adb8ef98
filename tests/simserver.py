"""
An in-memory ocm server that behaves as PROTOCOL 1.1 says, and a network of
seeded (or hypothesis-drawn) fates between it and client sessions, all on a
C{task.Clock}: for testing the client's delivery logic under any loss,
duplication and reordering without sockets or the daemon.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import task

from ocm.client.session import ChatSession, Membership
from ocm.client.tcrp import Reply
from ocm.wire.datagram import (
    DatagramError,
    EventKind,
    Kind,
    encode_event,
    open_envelope,
    parse_envelope,
    read_message,
    seal_server,
)
from ocm.server.replay import ReplayWindow

SEND_WINDOW = 64
MAX_HISTORY_ANSWER = 100

# Fates of a datagram on the simulated network.
DELIVER, DROP, DUPLICATE, DELAY = 0, 1, 2, 3
LATENCY = 0.002  # one way
LATE = 0.3  # a delayed datagram arrives this much later: reordered


class Network:
    """
    Carries datagrams both ways after LATENCY; the next fate in C{fates}
    decides each one's (after the list, all are delivered).
    """

    def __init__(self, clock: task.Clock, fates: list[int] | None = None) -> None:
        self.clock = clock
        self.fates: Iterator[int] = iter(fates or [])
        self.carried = 0

    def carry(self, deliver: Callable[[], None]) -> None:
        self.carried += 1
        fate = next(self.fates, DELIVER)
        if fate == DROP:
            return
        self.clock.callLater(LATE if fate == DELAY else LATENCY, deliver)
        if fate == DUPLICATE:
            self.clock.callLater(LATENCY * 2, deliver)


class ClientPort:
    """The session's transport: writes go over the network to the server."""

    def __init__(self, server: SimServer, token: bytes) -> None:
        self.server = server
        self.token = token

    def connect(self, host: str, port: int) -> None:
        pass

    def write(self, data: bytes, addr: Any = None) -> None:
        self.server.network.carry(lambda: self.server.receive(data, self))


@dataclass
class SimMember:
    name: str
    token: bytes
    aead: AESGCM
    session: ChatSession | None = None
    port: ClientPort | None = None
    registered: bool = False
    window: ReplayWindow = field(default_factory=ReplayWindow)
    sent: int = 0
    sends: dict[int, int] = field(default_factory=dict)  # msg_id -> seq
    highest_id: int = 0


class SimServer:
    """One room, PROTOCOL 1.1: SEND/ECHO with a 64-wide msg_id window, HISTORY/EXPIRED."""

    def __init__(self, clock: task.Clock, network: Network, keep: int = 100) -> None:
        self.clock = clock
        self.network = network
        self.keep = keep
        self.seq = 0
        self.history: dict[int, tuple[str, str]] = {}
        self.members: dict[bytes, SimMember] = {}
        self.relayed: list[int] = []  # seqs, in order

    def join(self, name: str, listener: Any, backlog: int = 0, version: str | None = "1.1") -> ChatSession:
        key = secrets.token_bytes(32)
        token = secrets.token_hex(16).encode()
        member = SimMember(name, token, AESGCM(key))
        self.members[token] = member
        body = {
            "token": token.decode(), "key": base64.b64encode(key).decode(), "udp_port": 9002,
            "host": len(self.members) == 1, "members": [m.name for m in self.members.values()],
            "timeout": 60.0, "room": "Room", "seq": self.seq, "history": self.keep,
        }
        if version is not None:
            body["version"] = version
        membership = Membership.from_reply("room", name, Reply(body, "127.0.0.1"))
        session = ChatSession(membership, listener, self.clock, backlog=backlog)
        member.session, member.port = session, ClientPort(self, token)
        session.makeConnection(member.port)
        return session

    # -- client to server ----------------------------------------------------

    def receive(self, data: bytes, port: ClientPort) -> None:
        env = parse_envelope(data)
        member = self.members.get(env.token)
        if member is None or member.window.check(env.counter):
            return
        try:
            message = read_message(open_envelope(member.aead, env))
        except DatagramError:
            return
        member.window.accept(env.counter)
        member.registered = True
        if message.kind == Kind.SEND:
            self._send(member, message.number, message.text)
        elif message.kind == Kind.CHAT:
            self._relay(member, message.text, exclude=None)
        elif message.kind == Kind.HISTORY:
            self._history(member, message.number, message.last)
        elif message.kind == Kind.LEAVE:
            del self.members[member.token]

    def _send(self, member: SimMember, msg_id: int, text: str) -> None:
        seq = member.sends.get(msg_id)
        if seq is None:
            if msg_id < member.highest_id - SEND_WINDOW:
                return  # stale
            seq = self._relay(member, text, exclude=member)
            member.sends[msg_id] = seq
            member.highest_id = max(member.highest_id, msg_id)
        self._event(member, EventKind.ECHO, seq, member.name, msg_id.to_bytes(4, "big"))

    def _relay(self, sender: SimMember, text: str, exclude: SimMember | None) -> int:
        self.seq += 1
        self.relayed.append(self.seq)
        self.history[self.seq] = (sender.name, text)
        self.history.pop(self.seq - self.keep, None)
        for m in list(self.members.values()):
            if m is not exclude:
                self._event(m, EventKind.MESSAGE, self.seq, sender.name, text.encode())
        return self.seq

    def _history(self, member: SimMember, first: int, last: int) -> None:
        last = min(last, self.seq)
        if first > last:
            return
        oldest = min(self.history, default=self.seq + 1)
        if first < oldest:
            self._event(member, EventKind.EXPIRED, oldest, "", b"")
        for seq in range(max(first, oldest), last + 1)[:MAX_HISTORY_ANSWER]:
            name, text = self.history[seq]
            self._event(member, EventKind.HISTORY, seq, name, text.encode())

    def _event(self, member: SimMember, kind: int, seq: int, name: str, text: bytes) -> None:
        if not member.registered or member.session is None:
            return
        member.sent += 1
        data = seal_server(member.aead, member.sent, encode_event(kind, seq, 1_700_000_000_000, name.encode(), text))
        session = member.session
        self.network.carry(lambda: session.datagramReceived(data, ("127.0.0.1", 9002)))


class Screen:
    """A session's listener: what its person would see."""

    def __init__(self) -> None:
        self.lines: list[tuple[Any, ...]] = []
        self.failed: list[str] = []
        self.late: list[str] = []

    def event_received(self, event: Any) -> None:
        if event.kind in (EventKind.MESSAGE, EventKind.HISTORY):
            self.lines.append((EventKind(event.kind).name, event.seq, event.name, event.text))
        else:
            self.lines.append((EventKind(event.kind).name, event.name))

    def messages_lost(self, count: int) -> None:
        self.lines.append(("lost", count))

    def earlier_done(self) -> None:
        self.lines.append(("earlier done",))

    def line_failed(self, text: str) -> None:
        self.failed.append(text)

    def line_late(self, text: str) -> None:
        self.late.append(text)

    def server_silent(self, count: int) -> None:
        self.lines.append(("silent", count))

    def server_unreachable(self) -> None:
        self.lines.append(("unreachable",))

    def server_not_answering(self) -> None:
        self.lines.append(("not answering",))

    def server_back(self) -> None:
        self.lines.append(("back",))

    def server_restarting(self) -> None:
        self.lines.append(("restarting",))

    def line_refused(self, item: Any, why: str) -> None:
        self.lines.append(("refused", item, why))

    def messages(self) -> list[tuple[int, str, str]]:
        return [(seq, name, text) for kind, seq, name, text in
                (line for line in self.lines if line[0] in ("MESSAGE", "HISTORY"))]


def run_until(clock: task.Clock, done: Callable[[], bool], limit: float) -> None:
    """Advance C{clock} from one scheduled call to the next until C{done} or C{limit} seconds."""
    end = clock.seconds() + limit
    while not done() and clock.seconds() < end:
        calls = clock.getDelayedCalls()
        if not calls:
            break
        step = min(c.getTime() for c in calls) - clock.seconds()
        clock.advance(max(0.0, min(step, end - clock.seconds())))
