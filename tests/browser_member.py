"""
A browser member as a process, for tests whose waits block (real IRC
clients at a pty): C{python -m tests.browser_member PORT ROOM NAME LINE}
joins ROOM over the daemon's WebSocket (plain HTTP on loopback), prints
every message as C{name: text} on stdout, says LINE once joined, and runs
until its stdin closes.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, reactor, stdio
from twisted.protocols.basic import LineReceiver

from tests.websocket import open_browser


class Stdin(LineReceiver):
    delimiter = b"\n"

    def connectionLost(self, reason: object = None) -> None:
        if reactor.running:
            reactor.stop()


async def main(port: int, room: str, name: str, line: str) -> None:
    b = await open_browser(port)
    response, _ = await b.ask({"op": "join", "room": room, "username": name, "version": "1.2"})
    print(f"joined {response['status']}", flush=True)
    b.send({"op": "send", "id": 1, "text": line})
    while True:
        frame = await b.next(timeout=3600)
        if frame.get("type") == "event" and frame["kind"] == "message":
            print(f"{frame['name']}: {frame['text']}", flush=True)


if __name__ == "__main__":
    port, room, name, line = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    stdio.StandardIO(Stdin())
    defer.ensureDeferred(main(port, room, name, line)).addErrback(lambda f: (print(f, file=sys.stderr), reactor.stop()))
    reactor.run()
