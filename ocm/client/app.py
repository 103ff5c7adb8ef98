"""
The chat client as one object: enter a room over TCRP (asking, when a person
is at the keyboard, for what the command line left out), then run the UDP
session and the console until the member leaves or the room goes away.

The exit status says how it ended: 0 after leaving on purpose (/leave,
/quit, end of input, Ctrl-C) with every line delivered, 3 after leaving on
purpose when some line was not confirmed delivered, 1 when the room was
closed by others or anything failed, 2 for usage errors, 4 when the host
removed us (kicked), 5 when the host banned us.

Against a 1.2 server the client also watches the server's presence (the
session says when it stops and starts answering) and, when the server came
back without the room, joins again by itself: see L{ChatClient._recover}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.python.failure import Failure

from ocm.client.console import Console, InputClosed
from ocm.client.display import (
    BACK,
    EARLIER_BEGIN,
    EARLIER_END,
    NOT_ANSWERING,
    RESTARTING,
    excerpt,
    refused_line,
    rejoined_line,
    removed_line,
    event_line,
    late_line,
    lost_line,
    members_line,
    quoted,
    rooms_lines,
    sanitize,
    silent_line,
    undelivered_line,
)
from ocm.client.errors import (
    EXIT_BANNED,
    EXIT_FAILURE,
    EXIT_KICKED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    ClientError,
    RequestRefused,
    UsageError,
)
from ocm.client.loss import Loss
from ocm.client.retry import retrying
from ocm.client.reliable import Item, Order
from ocm.client.session import ChatSession, Membership
from ocm.client.tcrp import Reply, Server, list_rooms, request_redirected
from ocm.wire.datagram import MAX_TEXT, Event, EventKind, reason_problem
from ocm.wire.names import name_key, name_problem
from ocm.wire.tcrp import Op, Status

HELP = [
    "Commands:",
    "  /help    this list",
    "  /who     who is in the room",
    "  /rooms   the rooms on this server",
    "  /leave   leave the room and exit (also /quit, Ctrl-D or Ctrl-C)",
    "  //text   send a message that starts with one /",
    f"Any other line is sent to the room (at most {MAX_TEXT} bytes).",
]
HOST_HELP = [
    "The host's commands:",
    "  /kick NAME [reason]   remove NAME from the room (NAME may join again)",
    "  /ban NAME [reason]    remove NAME, and refuse that name and its address",
    "  /unban NAME           lift a ban",
    "  /mute NAME            refuse what NAME says (NAME still reads)",
    "  /unmute NAME          let NAME speak again",
    "  /host NAME            hand the room over to NAME (then you may leave)",
]
GUEST_HELP = "  /kick, /ban, /unban, /mute, /unmute and /host are the host's commands."
MODERATION = {"/kick": "kick", "/ban": "ban", "/unban": "unban", "/mute": "mute",
              "/unmute": "unmute", "/host": "host"}

# (1.2) Finding the room again after the server stopped answering: TCRP
# looks every RECOVER_FIRST seconds, doubling up to RECOVER_CAP, for up to
# REJOIN_PATIENCE seconds from when the server fell silent.
RECOVER_FIRST = 1.0
RECOVER_CAP = 2.0
REJOIN_PATIENCE = 180.0

# How long the console may take to flush its output when the client ends.
FLUSH_TIMEOUT = 2.0
# Chances to type a right password or a free name before giving up.
ATTEMPTS = 3
# A script's input is read no further while this many lines wait to be sent,
# and again once fewer than QUEUE_LOW do: a long pipe costs bounded memory.
QUEUE_HIGH = 1000
QUEUE_LOW = 100


@dataclass
class Settings:
    name: str | None = None
    room: str | None = None
    password: str | None = None
    mode: str | None = None  # "create", "join", or None: join if it exists
    list_only: bool = False
    interactive: bool = False
    echo_wait: float = 2.0  # version 1: at end of input, how long to wait for our echoes
    backlog: int = 20  # 1.1: how many of the room's messages before the join to show
    loss: Loss | None = None  # the OCM_TEST_LOSS test hook
    # On a terminal, wipe the line just typed: the server's echo replaces it,
    # so each message shows once, stamped, and only once delivered.
    erase_typed: bool = False

ERASE_TYPED_LINE = "\x1b[1A\x1b[2K"


def _order_text(order: Order) -> str:
    """A command as it was typed, for a note about it."""
    return f"/{order.op} {sanitize(order.name)}" + (f" {sanitize(order.reason)}" if order.reason else "")


class ChatClient:
    """
    Implements the session's listener; C{err} takes messages for stderr.
    L{run} returns a Deferred of the exit status.
    """

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        server: Server,
        console: Console,
        err: Callable[[str], None],
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.server = server
        self.console = console
        self.err = err
        # Notes about our own doing: on the terminal in line with the chat for
        # a person, on stderr for a script, whose stdout holds only the chat.
        self.note: Callable[[str], None] = console.write_line if settings.interactive else err
        self.session: ChatSession | None = None
        self.membership: Membership | None = None
        self.port: Any = None
        self.code: int | None = None
        self.finished: defer.Deferred[int] = defer.Deferred()
        self._task: defer.Deferred[None] | None = None
        self._earlier_shown = False
        self._leaving = False
        self._input_paused = False
        # The password the room was entered with, kept in memory only, so
        # that the host can create the room again after a crash.
        self._password: str | None = None
        self._op = Op.JOIN_ROOM
        self._recovering: defer.Deferred[None] | None = None
        self._rejoining = False
        self._pending: list[Item] = []  # typed while rejoining
        self._quit_warned = False

    # -- start --------------------------------------------------------------

    def run(self) -> defer.Deferred[int]:
        self._task = defer.ensureDeferred(self._start())
        self._task.addErrback(self._start_failed)
        return self.finished

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(ClientError):
            self.err(failure.value.sentence)
            self.finish(failure.value.exit_code)
        elif failure.check(InputClosed):
            self.err("Input ended before a room was joined.")
            self.finish(EXIT_FAILURE)
        elif failure.check(defer.CancelledError):
            self.finish(EXIT_FAILURE)
        else:
            self.err("Internal error in ocm-client (please report it):\n" + failure.getTraceback())
            self.finish(EXIT_FAILURE)

    async def _start(self) -> None:
        s = self.settings
        if s.list_only:
            rooms = await retrying(self.reactor, lambda: list_rooms(self.reactor, self.server), self.note)
            for line in rooms_lines(rooms):
                self.console.write_line(line)
            self.finish(EXIT_OK)
            return
        name = s.name if s.name is not None else await self._ask_name("Your name: ", "username")
        room = s.room if s.room is not None else await self._ask_name("Room: ", "room name")
        reply, op, name = await self._enter(name, room)
        if self.code is not None:
            return
        self._joined(Membership.from_reply(room, name, reply), op)

    async def _ask_name(self, prompt: str, what: str) -> str:
        if not self.settings.interactive:
            raise UsageError(f"No {what} given.")
        while True:
            answer = (await self.console.ask(prompt)).strip()
            problem = name_problem(answer, what)
            if problem is None:
                return answer
            self.note(f"That {what} will not do: {problem}.")

    async def _enter(self, name: str, room: str) -> tuple[Reply, Op, str]:
        s = self.settings
        password = s.password
        mode = s.mode
        if mode is None and s.interactive:
            listed = await retrying(self.reactor, lambda: list_rooms(self.reactor, self.server), self.note)
            found = [
                r for r in listed
                if isinstance(r, dict) and isinstance(r.get("name"), str)
                and name_key(r["name"]) == name_key(room)
            ]
            if found:
                mode = "join"
                if found[0].get("password") is True and password is None:
                    password = await self.console.ask(f"Password for room {quoted(room)}: ", secret=True)
            else:
                answer = await self.console.ask(f"Room {quoted(room)} does not exist. Create it? [Y/n] ")
                if answer.strip().lower() not in ("", "y", "yes"):
                    raise ClientError("No room was joined.")
                mode = "create"
        if mode == "create" and password is None and s.interactive:
            password = await self.console.ask(
                "Password for the new room (Enter for an open room): ", secret=True
            )
        op = Op.CREATE_ROOM if mode == "create" else Op.JOIN_ROOM
        for attempt in range(1, ATTEMPTS + 1):
            try:
                reply = await retrying(
                    self.reactor,
                    lambda: request_redirected(
                        self.reactor, self.server, op, room, name, password or "", note=self.note
                    ),
                    self.note,
                )
                self._password = password or ""
                return reply, op, name
            except RequestRefused as e:
                retry = s.interactive and op == Op.JOIN_ROOM and attempt < ATTEMPTS
                if retry and e.status == Status.UNAUTHORIZED:
                    self.note(e.sentence)
                    password = await self.console.ask(f"Password for room {quoted(room)}: ", secret=True)
                elif retry and e.status == Status.CONFLICT:
                    self.note(e.sentence)
                    name = await self._ask_name("Choose another name: ", "username")
                else:
                    raise self._hint(e, op, bool(password))
        raise AssertionError("unreachable")

    def _hint(self, e: RequestRefused, op: Op, password_given: bool) -> ClientError:
        """In a script, add which option would have helped."""
        if self.settings.interactive:
            return e
        hint = {
            Status.NOT_FOUND: " Use --create to create it.",
            Status.UNAUTHORIZED: "" if password_given else " Give it with --password or the OCM_PASSWORD variable.",
            Status.CONFLICT: " Use --join to join it." if op == Op.CREATE_ROOM else " Choose another --name.",
        }.get(e.status, "")
        return RequestRefused(e.sentence + hint, e.status, e.server_message)

    def _open_session(self, membership: Membership, backlog: int) -> None:
        self.membership = membership
        self.session = ChatSession(membership, self, self.reactor, backlog=backlog, loss=self.settings.loss)
        interface = "::" if ":" in membership.server_ip else ""
        self.port = self.reactor.listenUDP(0, self.session, interface=interface)

    def _joined(self, membership: Membership, op: Op) -> None:
        self._op = op
        self._open_session(membership, self.settings.backlog)
        room, name = quoted(membership.room), quoted(membership.name)
        if op == Op.CREATE_ROOM:
            self.note(f"Created room {room} as {name}; you are its host, and it closes when you leave.")
        else:
            members = ", ".join(sanitize(m) for m in membership.members)
            self.note(f"Joined room {room} as {name}. Members: {members}.")
        if self.settings.interactive:
            self.note("Type a message and press Enter; /help lists the commands.")
        self.console.listen(self._line, self._end_of_input)

    # -- typing -------------------------------------------------------------

    def _line(self, raw: bytes, size: int) -> None:
        if self.code is not None or self.session is None:
            return
        if size > MAX_TEXT + 1:
            self.note(f"Not sent: the line is {size} bytes long; the limit is {MAX_TEXT} bytes.")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.note("Not sent: the line is not valid UTF-8.")
            return
        if not text.strip():
            return
        if self.settings.interactive and text.startswith("/"):
            if not text.startswith("//"):
                self._command(text)
                return
            text = text[1:]
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT:
            self.note(f"Not sent: the line is {size} bytes long; the limit is {MAX_TEXT} bytes.")
            return
        if self.settings.erase_typed:
            self.console.write(ERASE_TYPED_LINE)
        if self._rejoining:
            self._pending.append(text)
            return
        self.session.say(text)
        if self.session.queued >= QUEUE_HIGH and not self._input_paused:
            self._input_paused = True
            self.console.pause_input()
            self.session.when_queued_below(QUEUE_LOW, self._resume_input)

    def _resume_input(self) -> None:
        self._input_paused = False
        self.console.resume_input()

    def _command(self, text: str) -> None:
        word, _, rest = text.partition(" ")
        word = word.lower()
        session = self.session
        if word == "/help":
            for line in HELP:
                self.console.write_line(line)
            if session.numbered:
                for line in (HOST_HELP if session.is_host else [GUEST_HELP]):
                    self.console.write_line(line)
        elif word == "/who":
            m = self.membership
            if session.numbered:
                line = members_line(m.room, session.members, m.name, session.roster.host,
                                    [n for n in session.members if session.roster.is_muted(n)])
            else:
                line = members_line(m.room, session.members, m.name, m.host)
            self.console.write_line(line)
        elif word == "/rooms":
            defer.ensureDeferred(self._show_rooms())
        elif word in ("/leave", "/quit"):
            others = len(session.members) - 1
            if session.numbered and session.is_host and others > 0 and not self._quit_warned:
                self._quit_warned = True
                self.note(f"You are the host: leaving closes room {quoted(self.membership.room)} for "
                          f"{others} other{'' if others == 1 else 's'}. Hand it over first with /host NAME, "
                          f"or type {word} again to leave and close it.")
                return
            self._leave_when_sent()
        elif word in MODERATION:
            self._moderate(word, MODERATION[word], rest.strip())
        else:
            self.note(f"Unknown command {sanitize(word)}; /help lists the commands.")

    def _moderate(self, word: str, op: str, rest: str) -> None:
        """/kick NAME [reason] and the others: checked here, then sent as COMMAND."""
        session = self.session
        if not session.numbered:
            self.note(f"{word} needs protocol 1.2; this server serves "
                      f"{'1.1' if session.reliable else 'version 1'}.")
            return
        if not session.is_host:
            host = session.roster.host
            self.note(f"{word} is the host's command" + (f"; the host is {quoted(host)}." if host else "."))
            return
        name, reason = self._target(rest, op)
        if not name:
            self.note(f"Usage: {word} NAME" + (" [reason]" if op in ("kick", "ban") else "") + ".")
            return
        if reason and op not in ("kick", "ban"):
            self.note(f"Usage: {word} NAME ({quoted(name + ' ' + reason)} is not a member).")
            return
        problem = reason_problem(reason)
        if problem:
            self.note(f"Not sent: {problem}.")
            return
        if self._rejoining:
            self._pending.append(Order(op, name, reason))
            return
        session.order(op, name, reason)

    def _target(self, rest: str, op: str) -> tuple[str, str]:
        """
        NAME and the reason from what follows the command. Names may hold
        spaces: the longest start of C{rest} that names a member wins, else
        the first word (a ban or unban may name someone absent).
        """
        best = ""
        for member in self.session.members:
            if (name_key(rest) == name_key(member) or name_key(rest).startswith(name_key(member) + " ")) \
                    and len(member) > len(best):
                best = member
        if best:
            return best, rest[len(best):].strip()
        if op == "unban":
            return rest, ""
        word, _, reason = rest.partition(" ")
        return word, reason.strip()

    async def _show_rooms(self) -> None:
        try:
            # A crowd behind one address spends its request budget: /rooms
            # waits for it as a join does (PROTOCOL §4a), chat going on meanwhile.
            rooms = await retrying(self.reactor, lambda: list_rooms(self.reactor, self.server), self.note)
        except ClientError as e:
            self.note(e.sentence)
            return
        for line in rooms_lines(rooms):
            self.console.write_line(line)

    def _end_of_input(self) -> None:
        self._leave_when_sent()

    def _leave_when_sent(self) -> None:
        """
        Leave once what was said is through: lines just sent are still on
        their way, and leaving at once would close the room (or our port)
        before their echoes came back. With 1.1 that is when every line was
        echoed or given up (GIVE_UP seconds at most after it went out) and no
        message is missing; with version 1, at most C{echo_wait} seconds.
        """
        if self.code is not None or self.session is None or self._leaving:
            return
        self._leaving = True
        if self._rejoining:
            return  # leaves once back in the room, with what was typed
        waiting = self.session.unconfirmed
        if waiting and self.settings.interactive:
            self.note(f"Leaving once {'your last line is' if waiting == 1 else f'your last {waiting} lines are'} "
                      "confirmed (Ctrl-C leaves now).")
        if self.session.reliable:
            d = self.session.settled()
        elif self.session.queued or self.session.echoes < self.session.chats_sent:
            d = self.session.wait_for_echoes(self.settings.echo_wait)
        else:
            d = defer.succeed(None)
        d.addCallback(lambda _: self.leave())

    # -- the session's listener ---------------------------------------------

    def event_received(self, event: Event) -> None:
        if event.kind == EventKind.HISTORY and not self._earlier_shown:
            self._earlier_shown = True
            self.console.write_line(EARLIER_BEGIN)
        line = event_line(event)
        if line is not None:
            self.console.write_line(line)
        mine = name_key(event.name) == name_key(self.membership.name)
        if event.kind == EventKind.CLOSED and not self.session.left:
            self.finish(EXIT_FAILURE)
        elif event.kind in (EventKind.KICKED, EventKind.BANNED) and mine:
            self.err(removed_line(event, self.membership.room))
            self.finish(EXIT_BANNED if event.kind == EventKind.BANNED else EXIT_KICKED)
        elif event.kind == EventKind.HOST and mine:
            self.note("You are now the host of this room; /help lists the host's commands.")

    def messages_lost(self, count: int) -> None:
        self.console.write_line(lost_line(count))

    def earlier_done(self) -> None:
        if self._earlier_shown:
            self.console.write_line(EARLIER_END)

    def line_failed(self, text: Item) -> None:
        if isinstance(text, Order):
            self.note(f"Not done (no answer from the server in {self.session.outbox.give_up:g} s): "
                      f"{_order_text(text)}")
            return
        self.note(undelivered_line(text, self.session.outbox.give_up))

    def line_late(self, text: str) -> None:
        self.note(late_line(text))

    def server_silent(self, count: int) -> None:
        self.note(silent_line(count, self.session.outbox.give_up))

    def line_refused(self, item: Item, why: str) -> None:
        if isinstance(item, Order):
            what = _order_text(item)
        else:
            what = excerpt(item)
        self.note(refused_line(what, why))

    def server_not_answering(self) -> None:
        if not self.session.restarting:
            self.note(NOT_ANSWERING)
        self._watch_server()

    def _watch_server(self) -> None:
        if self._recovering is None:
            self._recovering = defer.ensureDeferred(self._recover(self.session))
            self._recovering.addErrback(self._start_failed)

    def server_back(self) -> None:
        self.note(BACK)

    def server_restarting(self) -> None:
        self.note(RESTARTING)
        self._watch_server()

    async def _recover(self, session: ChatSession) -> None:
        """
        While C{session}'s server is silent, ask over TCRP whether it is up
        and still has the room. It is up without the room (a crash, or a
        restart that lost it), or we were silent past the server's timeout
        (so it removed us): join again by ourselves. Bounded by
        L{REJOIN_PATIENCE}; the session's own heartbeats notice a server
        that comes back with the room.
        """
        try:
            started = self.reactor.seconds()
            delay = RECOVER_FIRST
            while self.session is session and session.liveness.silent and self.code is None:
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(RECOVER_CAP, delay * 2)
                if self.session is not session or not session.liveness.silent or self.code is not None:
                    return
                try:
                    rooms = await list_rooms(self.reactor, self.server)
                except ClientError:
                    rooms = None  # down still
                if rooms is not None:
                    listed = any(isinstance(r, dict) and isinstance(r.get("name"), str)
                                 and name_key(r["name"]) == name_key(session.membership.room) for r in rooms)
                    silent_for = self.reactor.seconds() - session.liveness.last_heard
                    if not listed or silent_for > session.membership.timeout:
                        await self._rejoin(session, started)
                        return
                if self.reactor.seconds() - started > REJOIN_PATIENCE:
                    self._give_up_server(started)
                    return
        finally:
            self._recovering = None

    async def _rejoin(self, session: ChatSession, started: float) -> None:
        """The room is gone from the server: the host creates it again, a guest joins it again."""
        m = session.membership
        self._rejoining = True
        host = session.is_host
        self._pending = session.retire() + self._pending
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        room = quoted(m.room)
        op = Op.CREATE_ROOM if host else Op.JOIN_ROOM
        self.note(f"*** room {room} is gone from the server; "
                  + ("creating it again (you were its host)." if host else "joining it again once it is there."))
        delay = RECOVER_FIRST
        waiting_said = False
        while self.code is None:
            try:
                reply = await request_redirected(self.reactor, self.server, op, m.room, m.name,
                                                 self._password or "", note=self.note)
                break
            except RequestRefused as e:
                if op == Op.CREATE_ROOM and e.status == Status.CONFLICT:
                    op = Op.JOIN_ROOM  # someone made it first: join it
                    continue
                if e.status == Status.NOT_FOUND:
                    if not waiting_said:
                        waiting_said = True
                        self.note(f"*** waiting for the host to create room {room} again.")
                elif e.status == Status.CONFLICT:
                    pass  # our old self is still there until it times out
                elif e.status in (Status.TOO_MANY, Status.UNAVAILABLE) and e.retry_after:
                    delay = max(delay, e.retry_after)
                else:
                    self._rejoining = False
                    self.err(f"Could not join room {room} again: {e.sentence}")
                    self.finish(EXIT_FAILURE)
                    return
            except ClientError:
                pass  # the server is not up yet
            if self.reactor.seconds() - started > REJOIN_PATIENCE:
                self._rejoining = False
                self._give_up_server(started)
                return
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(RECOVER_CAP, delay * 2)
        if self.code is not None:
            return
        self._op = op
        # What was said in the new room before we were back in it shows
        # as earlier messages.
        self._open_session(Membership.from_reply(m.room, m.name, reply), backlog=self.settings.backlog)
        self._rejoining = False
        pending, self._pending = self._pending, []
        for item in pending:
            if isinstance(item, Order):
                self.session.order(item.op, item.name, item.reason)
            else:
                self.session.say(item)
        self.note(rejoined_line(self.membership.room))
        if self._leaving:
            self._leaving = False
            self._leave_when_sent()

    def _give_up_server(self, started: float) -> None:
        waiting = len(self._pending) + (self.session.unconfirmed if self.session else 0)
        self.err(f"Gave up: the server has not answered for {self.reactor.seconds() - started:.0f} s"
                 + (f"; {waiting} line{'' if waiting == 1 else 's'} not delivered." if waiting else "."))
        self.finish(EXIT_FAILURE)

    def server_unreachable(self) -> None:
        if self.code is None:
            self.err(f"Lost contact with the server: nothing listens on its UDP port "
                     f"{self.membership.udp_port} any more.")
            self.finish(EXIT_FAILURE)

    # -- the end ------------------------------------------------------------

    def leave(self) -> None:
        """Leave on purpose: LEAVE to the server, exit status 0 (3 if a line was not delivered)."""
        for item in self._pending:
            if isinstance(item, str):
                self.note(undelivered_line(item, 0).replace(" (no echo from the server in 0 s)",
                                                            " (the room was being joined again)"))
        if self.session is not None:
            self.session.leave()
            if self.session.undelivered or self._pending:
                self.finish(EXIT_UNDELIVERED)
                return
        self.finish(EXIT_OK)

    def interrupt(self) -> None:
        """Ctrl-C: leave if in a room, else give up."""
        if self.settings.interactive:
            self.console.write("\n")  # past the ^C the terminal shows
        if self.session is not None:
            self.leave()
            return
        if self.code is None:
            self.note("Interrupted.")
            self.finish(EXIT_FAILURE)
        if self._task is not None:
            self._task.cancel()

    def shutdown(self) -> None:
        """The reactor is stopping (SIGTERM): still say goodbye."""
        if self.session is not None:
            self.leave()
        else:
            self.finish(EXIT_FAILURE)

    def finish(self, code: int) -> None:
        if self.code is not None:
            return
        self.code = code
        if self._recovering is not None:
            self._recovering.cancel()
        if self.port is not None:
            self.port.stopListening()
        closing = self.console.close()
        timer = self.reactor.callLater(FLUSH_TIMEOUT, lambda: done(None))

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not self.finished.called:
                self.finished.callback(code)

        closing.addBoth(done)
