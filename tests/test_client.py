"""
ocm-client against a real daemon on loopback, built as the twistd plugin
builds it, with the client's stdin and stdout in memory: what a person (or a
script) would see for joining, chatting, every event, every refusal, the
commands, and certificate pinning.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from ocm.server import tls
from ocm.client.__main__ import main, parse_args
from ocm.client import app as app_module
from ocm.client import tcrp as tcrp_module
from ocm.client.app import ERASE_TYPED_LINE, ChatClient, Settings
from ocm.client.display import EARLIER_BEGIN, EARLIER_END
from ocm.client.loss import Loss, loss_from
from ocm.client.console import Console
from ocm.client.errors import RequestRefused, UsageError
from ocm.client.tcrp import Server, request
from ocm.client.trust import CATrust, KnownServers, NoTLS, PinnedTrust, Trust
from ocm.wire.datagram import MAX_TEXT, EventKind, encode_event, seal_server
from ocm.wire.names import name_key
from ocm.server.service import OcmService
from ocm.wire.tcrp import Op, encode_response
from tests import wire
from tests.daemon import run_daemon

LIMIT = 10.0  # seconds any one wait may take before the test fails


async def until(predicate: Callable[[], bool], what: str) -> None:
    await wire.until(predicate, what, LIMIT, every=0.01)


class FakeStdio(StringTransport):
    """Standard input and output in memory; closing flushes at once."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        console.makeConnection(self)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            self.console.connectionLost(Failure(ConnectionDone()))


class Runner:
    """One ocm-client run, driven as its user would drive it."""

    def __init__(self, settings: Settings, server: Server, svc: OcmService | None = None) -> None:
        self.svc = svc
        self.echo: list[bool] = []
        self.console = Console(self.echo.append)
        self.stdio = FakeStdio(self.console)
        self.errors: list[str] = []
        self.client = ChatClient(reactor, settings, server, self.console, self.errors.append)
        self.code: int | None = None
        self.exited = self.client.run()
        self.exited.addCallback(self._exited)

    def _exited(self, code: int) -> int:
        self.code = code
        return code

    @property
    def out(self) -> str:
        return self.stdio.value().decode("utf-8")

    @property
    def err(self) -> str:
        return "\n".join(self.errors)

    def type(self, *lines: str) -> None:
        for line in lines:
            self.console.dataReceived(line.encode("utf-8") + b"\n")

    def end_input(self) -> None:
        self.console.readConnectionLost()

    async def shows(self, text: str) -> None:
        """Wait until stdout holds C{text}."""
        await until(lambda: text in self.out, f"{text!r} on stdout; got:\n{self.out}\n{self.err}")

    async def says(self, text: str) -> None:
        """Wait until stderr holds C{text}."""
        await until(lambda: text in self.err, f"{text!r} on stderr; got:\n{self.err}")

    async def exit_code(self) -> int:
        await until(lambda: self.code is not None, f"exit; stderr:\n{self.err}")
        return self.code  # type: ignore[return-value]

    async def joined(self) -> None:
        """Wait until in the room, and the daemon knows where to send events."""
        await until(lambda: self.client.session is not None or self.code is not None, "joining")
        if self.code is not None:
            raise AssertionError(f"did not join: {self.err}")
        m = self.client.membership

        def registered() -> bool:
            room = self.svc.rooms.rooms.get(name_key(m.room))
            member = room.members.get(name_key(m.name)) if room else None
            return member is not None and member.address is not None

        if self.svc is not None:
            await until(registered, "the first heartbeat to register our address")

    def stop(self) -> defer.Deferred[int]:
        if self.code is None:
            self.client.leave()
        return self.exited


class ClientTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.known = Path(self.mktemp()) / "known_servers"
        self.pin_notices: list[str] = []

    def start_daemon(self, *args: str, data_dir: Path | None = None) -> OcmService:
        self.data_dir = data_dir or Path(self.mktemp())
        self.svc = run_daemon(self, *args, data_dir=self.data_dir)
        return self.svc

    def trust(self, accept_new: bool = False) -> PinnedTrust:
        return PinnedTrust(KnownServers(self.known), self.pin_notices.append, accept_new)

    def server(self, trust: Trust | None = None, port: int | None = None) -> Server:
        return Server("127.0.0.1", port or self.svc.tcp_port, trust or self.trust(), timeout=LIMIT)

    def client(self, name: str | None = None, room: str | None = None, *,
               server: Server | None = None, **settings: Any) -> Runner:
        runner = Runner(Settings(name=name, room=room, **settings), server or self.server(),
                        getattr(self, "svc", None))
        self.addCleanup(runner.stop)
        return runner

    async def host(self, room: str = "Lobby", name: str = "alice", **settings: Any) -> Runner:
        alice = self.client(name, room, mode="create", **settings)
        await alice.joined()
        return alice

    def assertNoTraceback(self, runner: Runner) -> None:
        self.assertNotIn("Traceback", runner.err + runner.out)


class ChatTests(ClientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.start_daemon()

    async def test_join_chat_and_leave(self) -> None:
        alice = await self.host()
        self.assertIn("Created room 'Lobby' as 'alice'; you are its host", alice.err)
        bob = self.client("bob", "Lobby")  # no --create/--join: joins what exists
        await bob.joined()
        self.assertIn("Joined room 'Lobby' as 'bob'. Members: alice, bob.", bob.err)
        await alice.shows("* bob joined\n")
        bob.type("hello there")
        await alice.shows("bob: hello there\n")
        await bob.shows("bob: hello there\n")
        self.assertRegex(alice.out, re.compile(r"^\[\d\d:\d\d:\d\d\] bob: hello there$", re.M))
        alice.type("hi bob")
        await bob.shows("alice: hi bob\n")
        bob.end_input()
        self.assertEqual(await bob.exit_code(), 0)
        await alice.shows("* bob left\n")
        # Each message appears once, from the server's echo.
        self.assertEqual(bob.out.count("hello there"), 1)
        self.assertEqual(alice.out.count("hi bob"), 1)
        self.assertEqual(bob.out, "".join(
            line + "\n" for line in bob.out.splitlines() if "bob: hello there" in line or "alice: hi bob" in line
        ))

    async def test_terminal_line_replaced_by_the_echo(self) -> None:
        alice = await self.host(interactive=True, password="", erase_typed=True)
        alice.type("/who", "hello")
        await alice.shows("alice: hello\n")
        # The typed line is wiped just before sending, so it shows once, from
        # the echo; a command's line stays.
        self.assertEqual(alice.out.count(ERASE_TYPED_LINE), 1)
        self.assertLess(alice.out.index(ERASE_TYPED_LINE), alice.out.index("alice: hello"))

    async def test_host_leaving_closes_the_room(self) -> None:
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        await alice.shows("* bob joined")
        alice.end_input()
        self.assertEqual(await alice.exit_code(), 0)
        await bob.shows("* room closed: the host left\n")
        self.assertEqual(await bob.exit_code(), 1)
        self.assertEqual(self.svc.rooms.rooms, {})

    async def test_timed_out_member_shown(self) -> None:
        self.svc.rooms.timeout = 1.0
        alice = await self.host(interactive=True, password="")
        # carol joins over TCRP but never speaks UDP: the server times her out.
        await request(reactor, self.server(), Op.JOIN_ROOM, "Lobby", "carol")
        await alice.shows("* carol joined\n")
        await alice.shows("* carol timed out\n")
        alice.type("/who")
        await alice.shows("Members of 'Lobby' (1): alice (you, host)\n")
        self.assertIsNone(alice.code)  # alice's heartbeats kept her in

    async def test_server_shutdown_shown(self) -> None:
        alice = await self.host()
        self.svc.keep_rooms = None  # as with --no-keep-rooms: the rooms end with the daemon
        await self.svc.stopService()
        await alice.shows("* room closed: the server is shutting down\n")
        self.assertEqual(await alice.exit_code(), 1)

    async def test_commands(self) -> None:
        alice = await self.host(interactive=True, password="")
        bob = self.client("bob", "Lobby", interactive=True, mode="join")
        await bob.joined()
        bob.type("/help")
        await bob.shows("/rooms   the rooms on this server\n")
        bob.type("/who")
        await bob.shows("Members of 'Lobby' (2): alice (host), bob (you)\n")
        bob.type("/rooms")
        await bob.shows("Rooms (1):\n  Lobby (2 members)\n")
        bob.type("/nope")
        await bob.shows("Unknown command /nope; /help lists the commands.\n")
        bob.type("//slash at the start")
        await alice.shows("bob: /slash at the start\n")
        bob.type("/quit")
        self.assertEqual(await bob.exit_code(), 0)
        await alice.shows("* bob left\n")
        alice.type("/leave")
        self.assertEqual(await alice.exit_code(), 0)

    async def test_script_pipes_lines_then_leaves(self) -> None:
        alice = await self.host("ops")
        bot = self.client("bot", "ops")
        # Piped lines arrive before the room is joined; they wait for it.
        bot.type("deploy done", "", "   ", "/quit is just text here", "x" * (MAX_TEXT + 1), "last")
        bot.end_input()
        self.assertEqual(await bot.exit_code(), 0)
        for text in ("deploy done", "/quit is just text here", "last"):
            self.assertIn(f"bot: {text}\n", bot.out)  # waited for its echoes
            await alice.shows(f"bot: {text}\n")
        await alice.shows("* bot left\n")
        self.assertEqual(bot.out.count("bot: "), 3)
        self.assertIn(f"Not sent: the line is {MAX_TEXT + 1} bytes long; the limit is {MAX_TEXT} bytes.", bot.err)

    async def test_many_piped_lines_all_arrive(self) -> None:
        # More than the daemon's flood limit lets through at once: paced.
        alice = await self.host("logs")
        bot = self.client("bot", "logs")
        lines = [f"log line {i}" for i in range(50)]
        bot.type(*lines)
        bot.end_input()
        self.assertEqual(await bot.exit_code(), 0)
        await alice.shows("bot: log line 49\n")
        got = [line.split("bot: ", 1)[1] for line in alice.out.splitlines() if "bot: " in line]
        self.assertEqual(got, lines)
        self.assertNotIn("lost", alice.out)

    async def test_line_rules(self) -> None:
        alice = await self.host()
        alice.type("y" * MAX_TEXT)
        await alice.shows("alice: " + "y" * MAX_TEXT + "\n")
        alice.console.dataReceived(b"z" * 200_000 + b"\n")
        await alice.says("Not sent: the line is 200000 bytes long; the limit is 3072 bytes.")
        alice.console.dataReceived(b"\xff\xfe broken\n")
        await alice.says("Not sent: the line is not valid UTF-8.")
        alice.type("", "after")
        await alice.shows("alice: after\n")
        self.assertEqual(alice.out.count("alice: "), 2)

    async def test_lost_message_repaired_from_the_daemon(self) -> None:
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        await alice.shows("* bob joined\n")

        class DropNextIncoming:
            dropped = 0

            def outgoing(self) -> bool:
                return False

            def incoming(self) -> bool:
                self.dropped += 1
                return self.dropped == 1

        bob.client.session.loss = DropNextIncoming()
        alice.type("lost on the way")
        await alice.shows("alice: lost on the way\n")
        alice.type("then this")
        await bob.shows("alice: then this\n")
        self.assertEqual([line.split("] ", 1)[1] for line in bob.out.splitlines()],
                         ["alice: lost on the way", "alice: then this"])

    async def test_gap_in_messages_shown(self) -> None:
        alice = await self.host()
        session = alice.client.session
        session.sequencer.tries = 1  # the daemon never said these: one HISTORY, then the gap
        key = alice.client.membership.key
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(key)
        for counter, seq in ((1001, 1), (1002, 5), (1003, 6)):
            event = encode_event(EventKind.MESSAGE, seq, 1_700_000_000_000, b"zed", f"m{seq}".encode())
            session.datagramReceived(seal_server(aead, counter, event),
                                     ("127.0.0.1", session.membership.udp_port))
        await alice.shows("zed: m1\n* 3 messages lost\n[")
        await alice.shows("zed: m5\n")
        self.assertNotIn("lost", alice.out.split("zed: m5")[1])

    async def test_backlog_shown_as_earlier_messages(self) -> None:
        alice = await self.host()
        alice.type("one", "two", "three")
        await alice.shows("alice: three\n")
        bob = self.client("bob", "Lobby", mode="join", backlog=2)
        await bob.joined()
        await bob.shows(EARLIER_END + "\n")
        alice.type("four")
        await bob.shows("alice: four\n")
        shown = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in bob.out.splitlines()]
        self.assertEqual(shown, [EARLIER_BEGIN, "alice: two", "alice: three", EARLIER_END, "alice: four"])
        carol = self.client("carol", "Lobby", mode="join", backlog=0)
        await carol.joined()
        alice.type("five")
        await carol.shows("alice: five\n")
        self.assertNotIn("earlier", carol.out)
        self.assertNotIn("four", carol.out)

    async def test_script_exit_status_says_a_line_was_not_delivered(self) -> None:
        alice = await self.host()
        bot = self.client("bot", "Lobby", mode="join")
        await bot.joined()
        session = bot.client.session
        session.outbox.give_up = 0.5  # not ten seconds, in a test
        session.loss = Loss(1, 1.0)  # from now on, nothing gets out
        bot.type("into the void", "and this")
        bot.end_input()
        self.assertEqual(await bot.exit_code(), 3)
        self.assertIn("Not delivered (no echo from the server in 0.5 s): 'into the void'", bot.err)
        # 1.2: the rest is kept and tried in turn, and each line not
        # delivered is named (1.1 gave the rest up at once: SimServer tests).
        self.assertIn("Not delivered (no echo from the server in 0.5 s): 'and this'", bot.err)
        self.assertNotIn("into the void", alice.out + bot.out)

    async def test_room_closing_while_lines_wait_is_a_failure(self) -> None:
        alice = await self.host()
        bot = self.client("bot", "Lobby", mode="join")
        await bot.joined()
        bot.client.session.loss = Loss(1, 1.0)  # its lines never get out
        bot.client.session.loss.incoming = lambda: False  # but it hears the room
        bot.type("stuck")
        bot.end_input()
        alice.end_input()
        self.assertEqual(await bot.exit_code(), 1)
        await bot.shows("* room closed: the host left\n")

    async def test_a_long_pipe_is_read_as_lines_go_out(self) -> None:
        self.patch(app_module, "QUEUE_HIGH", 30)
        self.patch(app_module, "QUEUE_LOW", 25)
        alice = await self.host()
        bot = self.client("bot", "Lobby", mode="join")
        states: list[str] = []
        pause, resume = bot.stdio.pauseProducing, bot.stdio.resumeProducing
        bot.stdio.pauseProducing = lambda: (states.append("paused"), pause())[1]
        bot.stdio.resumeProducing = lambda: (states.append("resumed"), resume())[1]
        lines = [f"log {i}" for i in range(40)]
        bot.type(*lines)  # read before the room is joined: all said at once
        await bot.joined()
        await until(lambda: states == ["paused", "resumed"], f"input paused and resumed: {states}")
        bot.end_input()
        self.assertEqual(await bot.exit_code(), 0, bot.err)
        await alice.shows("bot: log 39\n")
        self.assertEqual([line.split("bot: ", 1)[1] for line in alice.out.splitlines() if "bot: " in line], lines)

    async def test_quit_waits_for_lines_on_their_way(self) -> None:
        alice = await self.host(interactive=True, password="")
        alice.client.session.loss = Loss(1, 1.0)
        alice.type("unheard", "/quit")
        await alice.shows("Leaving once your last line is confirmed (Ctrl-C leaves now).\n")
        self.assertIsNone(alice.code)
        alice.client.interrupt()
        self.assertEqual(await alice.exit_code(), 3)  # left with a line unconfirmed

    async def test_version_1_server_path_sends_chat(self) -> None:
        # The client as a version 1 server would answer it: no "version".
        async def version_1(*args: Any, **kw: Any) -> Any:
            reply = await request(*args, **kw)
            reply.body.pop("version")
            return reply

        alice = await self.host()
        self.patch(tcrp_module, "request", version_1)
        bot = self.client("bot", "Lobby", mode="join", backlog=20)
        bot.type("plain chat", "still plain")
        bot.end_input()
        self.assertEqual(await bot.exit_code(), 0, bot.err)
        self.assertFalse(bot.client.session.reliable)
        self.assertEqual(bot.client.session.chats_sent, 2)
        self.assertEqual([line.split("] ", 1)[1] for line in bot.out.splitlines()],
                         ["bot: plain chat", "bot: still plain"])  # its CHAT echoed as MESSAGE
        await alice.shows("bot: still plain\n")

    async def test_terminal_escapes_from_peers_are_defused(self) -> None:
        alice = await self.host()
        bob = self.client("bob", "Lobby", mode="join")
        await bob.joined()
        bob.type("\x1b[2J\x1b]0;owned\x07 hi\rfake")
        await alice.shows("owned")
        self.assertNotIn("\x1b", alice.out)
        self.assertNotIn("\x07", alice.out)
        self.assertNotIn("\r", alice.out)


class PromptTests(ClientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.start_daemon()

    async def test_asks_for_everything_and_offers_to_create(self) -> None:
        alice = self.client(interactive=True)
        await alice.shows("Your name: ")
        alice.type(" alice")  # stripped, like any typed answer
        await alice.shows("Room: ")
        alice.type("bad\tname")
        await alice.shows("That room name will not do: room name contains a control character (U+0009).\n")
        alice.type("Vault")
        await alice.shows("Room 'Vault' does not exist. Create it? [Y/n] ")
        alice.type("")
        await alice.shows("Password for the new room (Enter for an open room): ")
        self.assertEqual(alice.echo, [False])  # typed unseen
        alice.type("s3cret")
        await alice.shows("Created room 'Vault' as 'alice'")
        self.assertEqual(alice.echo, [False, True])
        self.assertNotIn("s3cret", alice.out + alice.err)

        bob = self.client("bob", "vault", interactive=True)  # found case-insensitively
        await bob.shows("Password for room 'vault': ")
        bob.type("wrong")
        await bob.shows("Wrong password for room 'vault'.\nPassword for room 'vault': ")
        bob.type("s3cret")
        # The room's name as it was created (1.1's COMPLETE says it).
        await bob.shows("Joined room 'Vault' as 'bob'. Members: alice, bob.\n")
        await alice.shows("* bob joined\n")

    async def test_taken_name_asked_again(self) -> None:
        await self.host()
        al = self.client("ALICE", "Lobby", interactive=True, mode="join")
        await al.shows("The name 'ALICE' is already taken in room 'Lobby'.\nChoose another name: ")
        al.type("al")
        await al.shows("Joined room 'Lobby' as 'al'.")

    async def test_declining_to_create(self) -> None:
        r = self.client("alice", "Nowhere", interactive=True)
        await r.shows("Create it? [Y/n] ")
        r.type("n")
        self.assertEqual(await r.exit_code(), 1)
        self.assertIn("No room was joined.", r.err)
        self.assertEqual(self.svc.rooms.rooms, {})

    async def test_input_ends_at_a_prompt(self) -> None:
        r = self.client(interactive=True)
        await r.shows("Your name: ")
        r.end_input()
        self.assertEqual(await r.exit_code(), 1)
        self.assertIn("Input ended before a room was joined.", r.err)

    async def test_ctrl_c_at_a_prompt_and_in_a_room(self) -> None:
        r = self.client(interactive=True)
        await r.shows("Your name: ")
        r.client.interrupt()
        self.assertEqual(await r.exit_code(), 1)
        alice = await self.host()
        alice.client.interrupt()
        self.assertEqual(await alice.exit_code(), 0)
        await until(lambda: not self.svc.rooms.rooms, "the room to close after LEAVE")


class StatusTests(ClientTestCase):
    """Every refusal becomes one plain sentence on stderr and exit status 1."""

    async def refused(self, runner: Runner, sentence: str) -> None:
        self.assertEqual(await runner.exit_code(), 1)
        self.assertEqual(runner.errors[-1], sentence)
        self.assertNoTraceback(runner)

    async def test_not_found(self) -> None:
        self.start_daemon()
        await self.refused(self.client("bob", "nope"),
                           "Room 'nope' does not exist. Use --create to create it.")

    async def test_wrong_and_missing_password(self) -> None:
        self.start_daemon()
        await self.host("Vault", password="right")
        await self.refused(self.client("bob", "Vault", password="wrong"), "Wrong password for room 'Vault'.")
        await self.refused(
            self.client("bob", "Vault"),
            "Room 'Vault' needs a password. Give it with --password or the OCM_PASSWORD variable.",
        )

    async def test_conflicts(self) -> None:
        self.start_daemon()
        await self.host()
        await self.refused(self.client("bob", "LOBBY", mode="create"),
                           "Room 'LOBBY' already exists. Use --join to join it.")
        await self.refused(self.client("ALICE", "Lobby"),
                           "The name 'ALICE' is already taken in room 'Lobby'. Choose another --name.")

    async def test_capacity(self) -> None:
        self.start_daemon("--max-rooms", "1", "--max-members", "1")
        await self.host()
        await self.refused(self.client("bob", "Other", mode="create"),
                           "The server cannot hold any more rooms right now; try again later.")
        await self.refused(self.client("bob", "Lobby"), "Room 'Lobby' is full.")

    async def test_too_large(self) -> None:
        self.start_daemon("--max-payload", "256")
        await self.refused(self.client("bob", "Big", mode="create", password="p" * 300),
                           "The server refused the request as too large (is the password very long?).")

    async def test_malformed(self) -> None:
        # The client checks names itself, so only another client sends this.
        self.start_daemon()
        e = await self.assertFailure(
            defer.ensureDeferred(request(reactor, self.server(), Op.JOIN_ROOM, "Lobby", " bob")),
            RequestRefused,
        )
        self.assertEqual((e.status, e.sentence), (
            400, "The server refused the request as malformed: username starts or ends with white space.",
        ))

    async def test_too_many_requests(self) -> None:
        class Busy(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(encode_response(data[1], data[32:32 + data[0]], 429, "slow down"))
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Busy), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server = self.server(NoTLS(), port.getHost().port)
        await self.refused(
            self.client("bob", "Lobby", server=server),
            "The server is refusing requests from this address for now (too many); try again later.",
        )

    async def test_a_busy_server_is_waited_for(self) -> None:
        # PROTOCOL 1.1: a 429 with retry_after is waited for, and said so.
        self.start_daemon("--request-burst", "1", "--request-rate", "1")
        await self.host()  # spends the address's one request
        bob = self.client("bob", "Lobby")
        await bob.joined()
        self.assertRegex(bob.errors[0], r"^The server refused for now \(too many requests from your "
                                        r"address; slow down\); trying again in [12] s\.$")
        self.assertIn("Joined room 'Lobby' as 'bob'", bob.errors[1])
        self.assertEqual(self.svc.tcrp.limited["request_rate"], 1)

    async def test_rooms_command_waits_for_a_busy_server(self) -> None:
        # In a room, /rooms meets the same 429 and waits it out, said so.
        self.start_daemon("--request-burst", "2", "--request-rate", "1")
        await self.host(interactive=True, password="")
        bob = self.client("bob", "Lobby", interactive=True, mode="join")
        await bob.joined()
        bob.type("/rooms")
        await bob.shows("Rooms (1):\n  Lobby (2 members)\n")
        # In a room, notes are part of the conversation, on stdout.
        self.assertRegex(bob.out, r"(?m)^The server refused for now \(too many requests from your address; "
                                  r"slow down\); trying again in [12] s\.\nRooms \(1\):")
        self.assertEqual(self.svc.tcrp.limited["request_rate"], 1)

    async def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        r = self.client("bob", "Lobby", server=self.server(port=number))
        await self.refused(r, f"Could not connect to 127.0.0.1:{number}: connection refused. "
                              "Is the ocm daemon running there, on that port?")


class TrustTests(ClientTestCase):
    async def test_first_connection_pins_second_verifies(self) -> None:
        self.start_daemon()
        expected = tls.pem_fingerprint((self.data_dir / "server.pem").read_bytes())
        first = self.client(list_only=True)
        self.assertEqual(await first.exit_code(), 0)
        self.assertEqual(first.out, "No rooms on this server yet.\n")
        self.assertEqual(len(self.pin_notices), 1)
        self.assertIn(f"TLS fingerprint SHA256:{expected}", self.pin_notices[0])
        self.assertIn(f"127.0.0.1:{self.svc.tcp_port} SHA256:{expected}\n", self.known.read_text())
        second = self.client(list_only=True)  # a new run: a new trust object
        self.assertEqual(await second.exit_code(), 0)
        self.assertEqual(len(self.pin_notices), 1)

    async def test_changed_certificate_refused_before_sending(self) -> None:
        self.start_daemon()
        old = tls.pem_fingerprint((self.data_dir / "server.pem").read_bytes())
        # A second daemon with another certificate, where the first was pinned.
        cert, key = tls.make_self_signed("localhost")
        cert_path, key_path = Path(self.mktemp()), Path(self.mktemp())
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        other = self.start_daemon("--tls-cert", str(cert_path), "--tls-key", str(key_path))
        KnownServers(self.known).remember(f"127.0.0.1:{other.tcp_port}", old)
        r = self.client("alice", "Secret", mode="create", password="hunter2")
        self.assertEqual(await r.exit_code(), 1)
        new = tls.pem_fingerprint(cert)
        self.assertIn(f"The certificate of 127.0.0.1:{other.tcp_port} has CHANGED", r.err)
        self.assertIn(f"pinned: SHA256:{old}", r.err)
        self.assertIn(f"now:    SHA256:{new}", r.err)
        self.assertIn("--accept-new-cert", r.err)
        self.assertEqual(other.rooms.rooms, {})  # the request never went out
        self.assertNoTraceback(r)
        # Accepting it on purpose re-pins it.
        ok = self.client(list_only=True, server=self.server(self.trust(accept_new=True)))
        self.assertEqual(await ok.exit_code(), 0)
        self.assertIn(new, self.known.read_text())
        self.assertNotIn(old, self.known.read_text())

    async def test_ca_verifies_chain_and_name(self) -> None:
        self.start_daemon()
        r = self.client(list_only=True, server=self.server(CATrust(str(self.data_dir / "server.pem"))))
        self.assertEqual(await r.exit_code(), 0)
        self.assertFalse(self.known.exists())  # no pinning with a CA
        stranger = Path(self.mktemp())
        stranger.write_bytes(tls.make_self_signed("localhost")[0])
        bad = self.client(list_only=True, server=self.server(CATrust(str(stranger))))
        self.assertEqual(await bad.exit_code(), 1)
        self.assertIn("could not be verified with the CA in", bad.err)

    async def test_tls_mismatch_explained(self) -> None:
        self.start_daemon()
        plain = self.client(list_only=True, server=self.server(NoTLS()))
        self.assertEqual(await plain.exit_code(), 1)
        self.assertIn("leave out --no-tls", plain.err)
        self.start_daemon("--no-tls")
        tls_client = self.client(list_only=True)
        self.assertEqual(await tls_client.exit_code(), 1)
        self.assertIn("If the server runs with --no-tls, use --no-tls too.", tls_client.err)
        ok = self.client("alice", "Open", mode="create", server=self.server(NoTLS()))
        await ok.joined()


class CommandLineTests(unittest.TestCase):
    def usage_error(self, argv: list[str], interactive: bool = False) -> str:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, parse_args, argv, interactive, {})
        self.assertEqual(e.code, 2)
        return err.getvalue()

    def test_script_needs_name_and_room(self) -> None:
        self.assertIn("--name is required when standard input is not a terminal",
                      self.usage_error(["--room", "r"]))
        self.assertIn("--room is required", self.usage_error(["--name", "n"]))
        parse_args([], True, {})  # a person is asked instead
        parse_args(["--list"], False, {})

    def test_bad_values_name_the_option(self) -> None:
        self.assertIn("--port: 70000 is not between 1 and 65535", self.usage_error(["-p", "70000"]))
        self.assertIn("--name: username starts or ends with white space",
                      self.usage_error(["--name", " bob", "--room", "r"]))
        self.assertIn("--room: room name is 256 bytes long", self.usage_error(["--name", "b", "--room", "r" * 256]))
        self.assertIn("not allowed with argument", self.usage_error(["--create", "--join"], True))
        self.assertIn("--no-tls and --ca", self.usage_error(["--no-tls", "--ca", "x"], True))

    def test_backlog_option(self) -> None:
        self.assertEqual(parse_args(["--name", "b", "--room", "r"], False, {}).backlog, 20)
        self.assertEqual(parse_args(["--backlog", "0"], True, {}).backlog, 0)
        self.assertIn("--backlog: 501 is not between 0 and 500", self.usage_error(["--backlog", "501"], True))
        self.assertIn("--backlog: 'many' is not a number", self.usage_error(["--backlog", "many"], True))

    def test_loss_hook_setting(self) -> None:
        self.assertIsNone(loss_from({}))
        loss = loss_from({"OCM_TEST_LOSS": "7:0.25"})
        drops = [loss.outgoing() for _ in range(1000)]
        self.assertTrue(200 < sum(drops) < 300)
        again = loss_from({"OCM_TEST_LOSS": "7:0.25"})
        self.assertEqual([again.outgoing() for _ in range(1000)], drops)  # seeded: the same drops
        for bad in ("7", "x:0.1", "7:1.5", "7:nan"):
            e = self.assertRaises(UsageError, loss_from, {"OCM_TEST_LOSS": bad})
            self.assertIn("OCM_TEST_LOSS", e.sentence)

    def test_defaults_and_password_variable(self) -> None:
        args = parse_args(["--name", "b", "--room", "r"], False, {"OCM_PASSWORD": "pw"})
        self.assertEqual((args.host, args.port, args.password, args.mode), ("127.0.0.1", 9001, "pw", None))
        args = parse_args(["h", "--password", "given"], True, {"OCM_PASSWORD": "pw"})
        self.assertEqual(args.password, "given")

    def test_unreadable_ca_is_a_usage_error(self) -> None:
        err: list[str] = []
        self.patch(sys.modules["ocm.client.__main__"], "write_stderr", err.append)
        e = self.assertRaises(SystemExit, main, ["--list", "--ca", "/nonexistent/ca.pem"])
        self.assertEqual(e.code, 2)
        self.assertIn("--ca: cannot read /nonexistent/ca.pem", err[0])
