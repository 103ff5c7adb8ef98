"""
``ocm-admin``: the operator's command, one request to the running daemon
over its admin socket and the reply as a table for a person or ``--json``
for a script. A plain blocking socket: one line out, one line back, so a
reactor would only add start-up time.

Exit status: 0 done; 1 the daemon refused (the reason on stderr); 2 a bad
command line; 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, Sequence, TextIO

from ocm.admin.protocol import MAX_REPLY, AdminError, encode_request, format_duration, parse_reply

REFUSED, USAGE, UNREACHABLE = 1, 2, 3


def default_socket(environ: dict[str, str] | None = None) -> str:
    """
    Where the daemon puts its socket by default: $OCM_ADMIN_SOCKET, else
    admin.sock in the data directory the daemon would use as this user,
    else the systemd unit's (/var/lib/ocm) when that one is there.
    """
    env = os.environ if environ is None else environ
    if env.get("OCM_ADMIN_SOCKET"):
        return env["OCM_ADMIN_SOCKET"]
    if env.get("STATE_DIRECTORY"):
        return os.path.join(env["STATE_DIRECTORY"].split(":")[0], "admin.sock")
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    mine = os.path.join(base, "ocm", "admin.sock")
    unit = "/var/lib/ocm/admin.sock"
    if not os.path.exists(mine) and os.path.exists(unit):
        return unit
    return mine


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ocm-admin",
        description="Operate a running ocm daemon over its admin socket (no network port).",
        epilog="Exit status: 0 done, 1 refused by the daemon, 2 bad command line, 3 daemon unreachable.",
    )
    p.add_argument("--socket", "-s", default=None, help="the daemon's admin socket (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON, for scripts")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("status", help="version, uptime, ports, rooms, members, counts")
    sub.add_parser("rooms", help="every room: name, members, password, host, created")
    members = sub.add_parser("members", help="a room's members: address, since when, host, muted, transport")
    members.add_argument("room")
    for cmd, helptext, reason in (
        ("kick", "remove a member (they may join again)", True),
        ("ban", "remove a member and refuse their name and address in this room", True),
        ("unban", "lift a room's ban on a name", False),
        ("mute", "a member stays but may not speak", False),
        ("unmute", "let a muted member speak again", False),
    ):
        s = sub.add_parser(cmd, help=helptext)
        s.add_argument("room")
        s.add_argument("name")
        if reason:
            s.add_argument("--reason", "-r", default=None)
    close = sub.add_parser("close", help="close a room: every member gets CLOSED with the reason")
    close.add_argument("room")
    close.add_argument("--reason", "-r", default=None)
    ban = sub.add_parser("ban-address", help="refuse an address (an IPv6 /64) on every way in for a time")
    ban.add_argument("address")
    ban.add_argument("duration", help="e.g. 90s, 10m, 2h, 1d")
    ban.add_argument("--reason", "-r", default=None)
    unban = sub.add_parser("unban-address", help="lift an address ban")
    unban.add_argument("address")
    sub.add_parser("bans", help="the address bans in force")
    return p


def request_line(args: argparse.Namespace) -> bytes:
    fields = {k: getattr(args, k, None) for k in ("room", "name", "reason", "address", "duration")}
    return encode_request(args.cmd, **fields)


def ask(path: str, line: bytes, timeout: float) -> Any:
    """One request, its reply's result; L{AdminError} if refused, OSError if unreachable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at accept: the refusal waits to be read
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if b"\n" in chunk or size > MAX_REPLY:
                break
    data = b"".join(chunks)
    if not data:
        raise AdminError("reply", "the daemon closed the connection without a reply")
    return parse_reply(data.split(b"\n", 1)[0])


# -- tables ---------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns as wide as their widest cell, left-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render(cmd: str, result: Any) -> str:
    """The reply as a person reads it."""
    if cmd == "status":
        ports = result.get("ports") or {}
        lines = [
            f"ocm {result['version']}, up {format_duration(result['uptime'])} (since {when(result['started'])})",
            "ports: " + ", ".join(f"{k} {v}" for k, v in ports.items() if v is not None),
            f"rooms: {result['rooms']} of {result['max_rooms']}; members: {result['members']}; "
            f"address bans: {result['address_bans']}",
        ]
        stats = result.get("stats") or {}
        if stats:
            lines.append("datagrams: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
        counts = result.get("counts") or {}
        if counts:
            lines.append("dropped or refused: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return "\n".join(lines)
    if cmd == "rooms":
        if not result:
            return "no rooms"
        return table(
            ("ROOM", "MEMBERS", "PASSWORD", "HOST", "CREATED"),
            [(r["name"], r["members"], yes(r["password"]), r["host"] or "-", when(r["created"])) for r in result],
        )
    if cmd == "members":
        return f"room {result['room']}:\n" + table(
            ("NAME", "ADDRESS", "SINCE", "FOR", "HOST", "MUTED", "VERSION", "TRANSPORT"),
            [
                (m["name"], m["address"], when(m["since"]), format_duration(m["for"]), yes(m["host"]),
                 yes(m["muted"]), m["version"], m["transport"])
                for m in result["members"]
            ],
        )
    if cmd == "bans":
        if not result:
            return "no address bans"
        return table(
            ("ADDRESS", "LEFT", "UNTIL"),
            [(b["address"], format_duration(b["left"]), when(b["until"])) for b in result],
        )
    if cmd in ("kick", "ban", "unban", "mute", "unmute"):
        past = {"kick": "kicked", "ban": "banned", "unban": "unbanned", "mute": "muted", "unmute": "unmuted"}
        return f"{past[cmd]} {result['name']} in room {result['room']}"
    if cmd == "close":
        return f"closed room {result['room']} ({result['members']} members): {result['reason']}"
    if cmd == "ban-address":
        removed = ", ".join(f"{r['name']} in {r['room']}" for r in result["removed"]) or "nobody"
        return (f"banned {result['address']} for {format_duration(result['seconds'])} "
                f"(until {when(result['until'])}); removed: {removed}")
    if cmd == "unban-address":
        return f"lifted the ban on {result['address']}"
    return json.dumps(result)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser().parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else 0
    path = args.socket or default_socket()
    try:
        result = ask(path, request_line(args), args.timeout)
    except AdminError as e:
        print(f"ocm-admin: {e.message}", file=err)
        return REFUSED
    except OSError as e:
        print(f"ocm-admin: cannot reach the daemon at {path}: {e.strerror or e}", file=err)
        return UNREACHABLE
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else render(args.cmd, result), file=out)
    return 0


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
