"""
ocm-client: the command line, and one reactor run for the chat client.
Also runs as C{python -m ocm.client}.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from ocm.client.errors import EXIT_FAILURE, EXIT_USAGE, ClientError
from ocm.wire.names import name_problem

DEFAULT_PORT = 9001
DEFAULT_BACKLOG = 20
MAX_BACKLOG = 500

DESCRIPTION = """\
Chat in an ocm room from a terminal, or pipe lines into one from a script.
Without --create or --join, joins the room if it exists; at a terminal it
offers to create it otherwise. When standard input is not a terminal nothing
is asked: every line read is sent as a message, and at the end of input the
client leaves the room and exits."""

EPILOG = """\
trust: without --ca, the server's certificate is pinned on first use (its
SHA-256 fingerprint is stored in the known-servers file) and a different
certificate later is refused.
password: --password is visible to other local users in the process list;
prefer the prompt or the OCM_PASSWORD environment variable.
delivery: lines are retried until the server confirms them, for about ten
seconds each; at the end of input the client waits for that, then leaves.
server gone: when the server stops answering the client says so, keeps the
lines typed meanwhile and sends them when it is back; if it came back
without the room, the client joins again by itself (the host creates the
room again with the password it was entered with, kept in memory only).
moderation: at a terminal the host has /kick, /ban, /unban, /mute, /unmute
and /host (see /help).
exit status: 0 after leaving with every line delivered, 3 after leaving when
some line was not confirmed delivered, 1 when the room was closed by others
or on an error, 2 for usage errors, 4 when the host removed you (kicked),
5 when the host banned you."""


def build_parser() -> argparse.ArgumentParser:
    from ocm.client.trust import default_known_servers

    p = argparse.ArgumentParser(
        prog="ocm-client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("host", nargs="?", default="127.0.0.1",
                   help="the ocm server (default: %(default)s)")
    p.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT,
                   help="its TCRP port (default: %(default)s)")
    p.add_argument("-n", "--name", help="your username in the room")
    p.add_argument("-r", "--room", help="the room to join or create")
    p.add_argument("--password", help="the room's password (see below)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--create", dest="mode", action="store_const", const="create",
                      help="create the room (you become its host)")
    mode.add_argument("--join", dest="mode", action="store_const", const="join",
                      help="join an existing room")
    mode.add_argument("--list", action="store_true", help="print the server's rooms and exit")
    p.add_argument("--ca", metavar="FILE",
                   help="verify the server against this CA certificate (PEM) and its host name")
    p.add_argument("--no-tls", action="store_true",
                   help="plain TCP, only for a server started with --no-tls")
    p.add_argument("--known-servers", metavar="FILE", type=Path, default=default_known_servers(),
                   help="where pinned fingerprints are kept (default: %(default)s)")
    p.add_argument("--accept-new-cert", action="store_true",
                   help="accept and pin a server certificate that changed (compare it first)")
    p.add_argument("--backlog", metavar="N", type=_backlog, default=DEFAULT_BACKLOG,
                   help="on joining, show up to N of the room's earlier messages "
                        "(default: %(default)s; 0 for none)")
    return p


def _backlog(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not 0 <= count <= MAX_BACKLOG:
        raise argparse.ArgumentTypeError(f"{count} is not between 0 and {MAX_BACKLOG}")
    return count


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and 65535")
    return port


def parse_args(argv: Sequence[str] | None, interactive: bool, environ: Any = os.environ) -> argparse.Namespace:
    """Parse and check the command line; usage errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.host.strip():
        parser.error("the host is empty")
    if args.password is None and environ.get("OCM_PASSWORD"):
        args.password = environ["OCM_PASSWORD"]
    for option, what in (("name", "username"), ("room", "room name")):
        value = getattr(args, option)
        if value is not None:
            problem = name_problem(value, what)
            if problem:
                parser.error(f"--{option}: {problem}")
        elif not interactive and not args.list:
            parser.error(f"--{option} is required when standard input is not a terminal")
    if args.no_tls and args.ca:
        parser.error("--no-tls and --ca exclude each other")
    if args.accept_new_cert and (args.no_tls or args.ca):
        parser.error("--accept-new-cert is for pinned servers (without --ca or --no-tls)")
    return args


def write_stderr(text: str) -> None:
    """Write whole lines to stderr even if it shares a non-blocking file with stdout."""
    data = (text + "\n").encode("utf-8", "replace")
    while data:
        try:
            data = data[os.write(2, data):]
        except BlockingIOError:
            select.select([], [2], [], 1.0)
        except OSError:
            return


def run(reactor: Any, args: argparse.Namespace, interactive: bool) -> int:
    """Run the client on C{reactor} until it ends; return the exit status."""
    from twisted.internet.error import ReactorNotRunning
    from twisted.internet.stdio import StandardIO

    from ocm.client.app import ChatClient, Settings
    from ocm.client.console import Console, TerminalEcho
    from ocm.client.loss import loss_from
    from ocm.client.tcrp import Server
    from ocm.client.trust import CATrust, KnownServers, NoTLS, PinnedTrust, Trust

    trust: Trust
    if args.no_tls:
        trust = NoTLS()
    elif args.ca:
        trust = CATrust(args.ca)
    else:
        trust = PinnedTrust(KnownServers(args.known_servers), write_stderr, args.accept_new_cert)
    echo = None
    if interactive:
        try:
            echo = TerminalEcho(0)
        except Exception:
            echo = None
    settings = Settings(
        name=args.name, room=args.room, password=args.password, mode=args.mode,
        list_only=args.list, interactive=interactive,
        erase_typed=interactive and sys.stdout.isatty(),
        backlog=args.backlog, loss=loss_from(os.environ),
    )
    codes: list[int] = []

    def start() -> None:
        console = Console(echo.set_echo if echo else None)
        StandardIO(console, reactor=reactor)
        client = ChatClient(reactor, settings, Server(args.host, args.port, trust), console, write_stderr)
        signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(client.interrupt))
        reactor.addSystemEventTrigger("before", "shutdown", client.shutdown)
        client.run().addCallback(done)

    def done(code: int) -> None:
        codes.append(code)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping: SIGTERM, or a second Ctrl-C

    flags = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in (0, 1) if _valid(fd)}
    try:
        reactor.callWhenRunning(start)
        reactor.run()
    finally:
        if echo is not None:
            echo.restore()
        # StandardIO made stdin and stdout non-blocking; give them back as found.
        for fd, flag in flags.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flag)
            except OSError:
                pass
    return codes[0] if codes else EXIT_FAILURE


def _valid(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    interactive = sys.stdin is not None and sys.stdin.isatty()
    args = parse_args(argv, interactive)
    try:
        from twisted.internet import reactor

        code = run(reactor, args, interactive)
    except ClientError as e:
        write_stderr(f"ocm-client: {e.sentence}" if e.exit_code == EXIT_USAGE else e.sentence)
        code = e.exit_code
    except KeyboardInterrupt:
        code = EXIT_FAILURE
    sys.exit(code)


if __name__ == "__main__":
    main()
