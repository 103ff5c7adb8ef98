"""
The daemon exactly as the twistd plugin builds it (ocm.server.tap), on loopback
ports, for the integration tests; and the few steps every such test takes
with the independent client in L{tests.wire}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, task

from ocm.server.service import OcmService
from ocm.server.tap import Options, makeService
from tests import wire


def run_daemon(test: Any, *args: str, data_dir: Path) -> OcmService:
    """Start the plugin-built daemon on loopback ports; stopped after C{test}."""
    options = Options()
    options.parseOptions([
        "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "0",
        "--interface", "127.0.0.1", "--data-dir", str(data_dir), *args,
    ])
    # No systemd variables: a test run under a systemd unit must not notify it.
    svc = makeService(options, environ={})
    svc.privilegedStartService()
    svc.startService()
    test.addCleanup(lambda: svc.running and svc.stopService())
    return svc


class DaemonMixin:
    """For a trial TestCase: start a daemon, talk to it, clean up after."""

    svc: OcmService
    pin: bytes | None

    def start_daemon(self, *args: str, data_dir: Path | None = None) -> OcmService:
        self.data_dir = data_dir or Path(self.mktemp())
        svc = self.svc = run_daemon(self, *args, data_dir=self.data_dir)
        self.pin = None if "--no-tls" in args else wire.pem_digest(
            (self.data_dir / "server.pem").read_bytes()
        )
        return svc

    @property
    def server(self) -> tuple[str, int]:
        return ("127.0.0.1", self.svc.rooms.udp_port)

    async def tcrp(self, data: bytes | list[bytes], **kw: Any) -> wire.Exchange:
        return await wire.tcrp(reactor, self.svc.tcp_port, data, pin=self.pin, **kw)

    async def ask(
        self, op: int, room: str | bytes, body: dict[str, Any] | bytes, **kw: Any
    ) -> tuple[int, dict[str, Any] | None]:
        """One request: its status and, after 200, the COMPLETE body."""
        return wire.answer(await self.tcrp(wire.request(op, room, body), **kw))

    async def enter(
        self,
        room: str,
        username: str,
        password: str | None = None,
        *,
        create: bool = False,
        tcp_bind: str | None = None,
        udp_bind: str = "127.0.0.1",
    ) -> wire.Member:
        """Create or join over TCRP, open a UDP socket, send the first HEARTBEAT."""
        body = {"username": username}
        if password is not None:
            body["password"] = password
        status, complete = await self.ask(
            wire.CREATE_ROOM if create else wire.JOIN_ROOM, room, body, bind=tcp_bind
        )
        self.assertEqual(status, 200)
        # A stranger sends where the COMPLETE body says, not where we know.
        server = ("127.0.0.1", complete["udp_port"])
        member = wire.Member(reactor, room.encode(), complete, server, bind=udp_bind)
        self.addCleanup(member.close)
        member.heartbeat()
        return member

    def keep_alive(self, member: wire.Member, every: float = 0.2) -> task.LoopingCall:
        """HEARTBEATs from C{member} until the test ends."""
        call = task.LoopingCall(member.heartbeat)
        call.start(every, now=False)
        self.addCleanup(lambda: call.running and call.stop())
        return call

    def assertEvent(
        self, event: wire.Event, kind: int, name: str, text: str | None = None, seq: int = 0
    ) -> None:
        self.assertEqual(
            (event.kind, event.name, event.seq),
            (kind, name, seq),
            f"unexpected event {event}",
        )
        if text is not None:
            self.assertEqual(event.text, text)

    def assertCountersGrow(self, *members: wire.Member) -> None:
        """PROTOCOL §3: each recipient's nonce counter grows with every datagram."""
        for m in members:
            c = m.server_counters
            self.assertTrue(c, "no events were read")
            self.assertEqual(c, sorted(set(c)), f"server nonce counters {c} do not grow")
