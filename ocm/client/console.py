"""
The terminal side of the client: lines in (in any split), lines out, and
questions asked on the same stream, so typing never blocks receiving.

Run on C{StandardIO}, which reads stdin and writes stdout through the
reactor; tests connect it to an in-memory transport instead.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

LineHandler = Callable[[bytes, int], None]


class InputClosed(Exception):
    """Standard input ended while a question waited for its answer."""


@implementer(IHalfCloseableProtocol)
class Console(Protocol):
    """
    Lines go, in order, to the question being asked, else to the handler set
    by L{listen}; until there is one they wait in a queue, so lines piped in
    before the room is joined are sent once it is.

    A line longer than C{max_line} is not buffered whole: its head and its
    full size are handed on, and the handler refuses it by size.
    """

    max_line = 64 * 1024

    def __init__(self, set_echo: Callable[[bool], None] | None = None) -> None:
        self.set_echo = set_echo
        self._buffer = bytearray()
        self._overlong: tuple[bytes, int] | None = None
        self._question: tuple[defer.Deferred[str], bool] | None = None
        self._handler: LineHandler | None = None
        self._on_eof: Callable[[], None] | None = None
        self._queue: list[tuple[bytes, int]] = []
        self.input_closed = False
        self.output_closed = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._complete(line)
        if len(self._buffer) > self.max_line:
            head, size = self._overlong or (bytes(self._buffer[: self.max_line]), 0)
            self._overlong = (head, size + len(self._buffer))
            self._buffer.clear()

    def _complete(self, line: bytes) -> None:
        if self._overlong is not None:
            head, size = self._overlong
            self._overlong = None
            self._line(head, size + len(line))
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        self._line(line, len(line))

    def _line(self, line: bytes, size: int) -> None:
        if self._question is not None:
            self._answer(line.decode("utf-8", "replace"))
        elif self._handler is not None:
            self._handler(line, size)
        else:
            self._queue.append((line, size))

    def readConnectionLost(self) -> None:
        if self._buffer or self._overlong:
            self._complete(bytes(self._buffer))
            self._buffer.clear()
        self.input_closed = True
        if self._question is not None:
            d, secret = self._question
            self._question = None
            self._end_secret(secret)
            d.errback(Failure(InputClosed()))
        elif self._handler is not None and self._on_eof is not None:
            self._on_eof()

    def listen(self, handler: LineHandler, on_eof: Callable[[], None]) -> None:
        """From now on lines go to C{handler}, starting with queued ones."""
        self._handler, self._on_eof = handler, on_eof
        queued, self._queue = self._queue, []
        for line, size in queued:
            handler(line, size)
        if self.input_closed:
            on_eof()

    def pause_input(self) -> None:
        """Stop reading standard input (lines already read still come)."""
        if self.transport is not None and not self.input_closed:
            self.transport.pauseProducing()

    def resume_input(self) -> None:
        if self.transport is not None and not self.input_closed:
            self.transport.resumeProducing()

    # -- questions ----------------------------------------------------------

    def ask(self, prompt: str, secret: bool = False) -> defer.Deferred[str]:
        """Show C{prompt} and fire with the next line (typed unseen if secret)."""
        if self._queue:
            line, _ = self._queue.pop(0)
            return defer.succeed(line.decode("utf-8", "replace"))
        if self.input_closed:
            return defer.fail(InputClosed())
        d: defer.Deferred[str] = defer.Deferred(self._cancel_question)
        self._question = (d, secret)
        if secret and self.set_echo is not None:
            self.set_echo(False)
        self.write(prompt)
        return d

    def _answer(self, text: str) -> None:
        d, secret = self._question  # type: ignore[misc]
        self._question = None
        self._end_secret(secret)
        d.callback(text)

    def _end_secret(self, secret: bool) -> None:
        if secret and self.set_echo is not None:
            self.set_echo(True)
            # The Enter key was not echoed either.
            self.write("\n")

    def _cancel_question(self, d: defer.Deferred[str]) -> None:
        if self._question is not None and self._question[0] is d:
            secret = self._question[1]
            self._question = None
            self._end_secret(secret)

    # -- output -------------------------------------------------------------

    def write(self, text: str) -> None:
        if self.transport is not None and not self.output_closed:
            self.transport.write(text.encode("utf-8", "replace"))

    def write_line(self, text: str) -> None:
        self.write(text + "\n")

    def writeConnectionLost(self) -> None:
        # Whoever read our stdout went away (| head): keep chatting silently.
        self.output_closed = True

    def close(self) -> defer.Deferred[None]:
        """Flush what was written and let go of the terminal."""
        if self._question is not None:
            self._question[0].cancel()
        if not self.closed.called and self.transport is not None:
            self.transport.loseConnection()
        return self.closed

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class TerminalEcho:
    """Turns a TTY's echo off for a password and back on, like getpass."""

    def __init__(self, fd: int = 0) -> None:
        import termios

        self.fd = fd
        self._termios = termios
        self.saved = termios.tcgetattr(fd)

    def set_echo(self, on: bool) -> None:
        termios = self._termios
        try:
            attrs = termios.tcgetattr(self.fd)
            if on:
                attrs[3] |= termios.ECHO
            else:
                attrs[3] &= ~termios.ECHO
            termios.tcsetattr(self.fd, termios.TCSADRAIN, attrs)
        except (termios.error, OSError):
            pass

    def restore(self) -> None:
        try:
            self._termios.tcsetattr(self.fd, self._termios.TCSADRAIN, self.saved)
        except (self._termios.error, OSError):
            pass
